//! Access control by API key: who may use the proxy.
//!
//! `RAGSCOPE_API_KEYS_FILE` lists the accepted keys, one per line as `name sha256:<hex>` (the
//! SHA-256 of the key, never the key itself), with `#` comments and blank lines. A request
//! must carry a listed key in `Authorization: Bearer <key>` or `X-Api-Key: <key>`. The
//! presented key is hashed and compared with every listed digest in constant time. The
//! accepted key's name goes into the request's extensions as [`ApiKeyName`] (rate limiting
//! and telemetry read it there); the key itself is never recorded.
//!
//! The file is reloaded when it changes ([`crate::reload`]); a broken new file keeps the old
//! list in service. [`hash_key_command`] is the `ragscope hash-key` subcommand that prints
//! the line to add for a key.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http::{HeaderMap, HeaderName, header};
use subtle::ConstantTimeEq;
use tokio::task::JoinHandle;

use crate::identity::ApiKeyName;

/// The header a key may come in besides `Authorization: Bearer`.
pub const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// An API-key file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file could not be read.
    #[error("cannot read RAGSCOPE_API_KEYS_FILE {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A line is not `name sha256:<64 hex digits>`.
    #[error("RAGSCOPE_API_KEYS_FILE {path} line {line}: {detail}")]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong, for a person.
        detail: String,
    },
}

/// One accepted key: its name and the SHA-256 of the key.
#[derive(Debug, Clone)]
struct Entry {
    name: ApiKeyName,
    digest: [u8; 32],
}

/// Parses the key file's text. Errors name the 1-based line; the line's content is not
/// repeated in case someone pasted a raw key into the file.
fn parse_keys(text: &str) -> Result<Vec<Entry>, (usize, String)> {
    let mut entries = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(name), Some(digest), None) = (fields.next(), fields.next(), fields.next()) else {
            return Err((
                i + 1,
                "expected `name sha256:<64 hex digits>` (run `ragscope hash-key NAME` to make one)"
                    .to_owned(),
            ));
        };
        let hex = digest
            .strip_prefix("sha256:")
            .ok_or_else(|| (i + 1, "the digest must start with `sha256:`".to_owned()))?;
        let digest = decode_sha256_hex(hex).ok_or_else(|| {
            (
                i + 1,
                "the digest must be 64 hex digits after `sha256:`".to_owned(),
            )
        })?;
        if entries.iter().any(|e: &Entry| e.digest == digest) {
            return Err((i + 1, "this digest is already listed above".to_owned()));
        }
        entries.push(Entry {
            name: ApiKeyName(Arc::from(name)),
            digest,
        });
    }
    Ok(entries)
}

fn decode_sha256_hex(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    out
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The line to put in the key file for `key` named `name`.
pub fn key_line(name: &str, key: &str) -> String {
    format!("{name} sha256:{}", to_hex(&sha256(key.as_bytes())))
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Neither `Authorization: Bearer` nor `X-Api-Key` was sent.
    Missing,
    /// A key was sent but it is not listed.
    Invalid,
}

/// A request's key was accepted.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The key's name.
    pub name: ApiKeyName,
    /// The header that carried it (stripped before forwarding unless configured otherwise).
    pub header: HeaderName,
}

/// The accepted keys, swapped atomically when the file is reloaded.
#[derive(Debug)]
pub struct ApiKeys {
    path: PathBuf,
    entries: Arc<RwLock<Arc<Vec<Entry>>>>,
    initial: [u8; 32],
}

impl ApiKeys {
    /// Loads the key file; any bad line stops start-up.
    pub fn load(path: &Path) -> Result<ApiKeys, KeyFileError> {
        let bytes = std::fs::read(path).map_err(|source| KeyFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        let entries = parse_bytes(&bytes).map_err(|(line, detail)| KeyFileError::Line {
            path: path.to_owned(),
            line,
            detail,
        })?;
        if entries.is_empty() {
            tracing::warn!(file = %path.display(), "RAGSCOPE_API_KEYS_FILE lists no key: every request will get 401");
        }
        Ok(ApiKeys {
            path: path.to_owned(),
            entries: Arc::new(RwLock::new(Arc::new(entries))),
            initial: crate::reload::fingerprint(&[bytes]),
        })
    }

    /// Starts polling the key file; a valid new version replaces the list.
    pub fn watch(&self, interval: Duration) -> JoinHandle<()> {
        crate::reload::watch_file(
            "API key file",
            self.path.clone(),
            interval,
            self.initial,
            self.entries.clone(),
            |bytes| parse_bytes(bytes).map_err(|(line, d)| format!("line {line}: {d}")),
        )
    }

    /// Checks a request's headers: the first of `Authorization: Bearer <key>` and
    /// `X-Api-Key: <key>` that holds a listed key admits it.
    pub fn check(&self, headers: &HeaderMap) -> Result<Accepted, Refusal> {
        let entries = self
            .entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut presented = false;
        let candidates = [
            (header::AUTHORIZATION, bearer(headers)),
            (
                X_API_KEY,
                headers.get(&X_API_KEY).map(|v| trim(v.as_bytes())),
            ),
        ];
        for (header, key) in candidates {
            let Some(key) = key.filter(|k| !k.is_empty()) else {
                continue;
            };
            presented = true;
            if let Some(name) = lookup(&entries, key) {
                return Ok(Accepted { name, header });
            }
        }
        Err(if presented {
            Refusal::Invalid
        } else {
            Refusal::Missing
        })
    }
}

fn parse_bytes(bytes: &[u8]) -> Result<Vec<Entry>, (usize, String)> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = bytes[..e.valid_up_to()]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1;
        (line, "not UTF-8 text".to_owned())
    })?;
    parse_keys(text)
}

/// The key's name if its digest is listed. Every digest is compared, in constant time, so
/// the time taken does not depend on which (or whether any) entry matched.
fn lookup(entries: &[Entry], key: &[u8]) -> Option<ApiKeyName> {
    let digest = sha256(key);
    let mut found = None;
    for entry in entries {
        let equal: bool = entry.digest.ct_eq(&digest).into();
        if equal && found.is_none() {
            found = Some(entry.name.clone());
        }
    }
    found
}

/// The token of `Authorization: Bearer <token>` (scheme case-insensitive, RFC 6750).
fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    let value = trim(value);
    if value.len() > 7 && value[..7].eq_ignore_ascii_case(b"bearer ") {
        Some(trim(&value[7..]))
    } else {
        None
    }
}

fn trim(bytes: &[u8]) -> &[u8] {
    bytes.trim_ascii()
}

/// `ragscope hash-key NAME [--generate]`: prints the key-file line for a key.
///
/// Without `--generate` the key is read from standard input (one line; a trailing newline is
/// not part of the key). With `--generate` a new random key is made; it is printed on standard
/// error (for the person to hand over) and only the line goes to standard output, so
/// `ragscope hash-key alice --generate >> keys.txt` never writes the key itself to the file.
pub fn hash_key_command(args: &[String]) -> ExitCode {
    const USAGE: &str = "usage: ragscope hash-key NAME [--generate]\n  \
        reads the key from standard input, or with --generate makes a new one (printed on stderr);\n  \
        prints the line to add to RAGSCOPE_API_KEYS_FILE";
    let mut name = None;
    let mut generate = false;
    for arg in args {
        match arg.as_str() {
            "--generate" | "-g" => generate = true,
            "--help" | "-h" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            a if a.starts_with('-') => {
                eprintln!("ragscope hash-key: unknown option {a}\n{USAGE}");
                return ExitCode::from(2);
            }
            a if name.is_none() => name = Some(a.to_owned()),
            _ => {
                eprintln!("ragscope hash-key: one NAME only\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let Some(name) = name else {
        eprintln!("ragscope hash-key: a NAME is needed\n{USAGE}");
        return ExitCode::from(2);
    };
    if name.contains('#') || name.chars().any(char::is_whitespace) {
        eprintln!("ragscope hash-key: the NAME may not contain spaces or '#'");
        return ExitCode::from(2);
    }
    let key = if generate {
        match generate_key() {
            Some(k) => {
                eprintln!("new API key for {name} (hand it over now; it is not stored): {k}");
                k
            }
            None => {
                eprintln!("ragscope hash-key: the system random generator failed");
                return ExitCode::FAILURE;
            }
        }
    } else {
        let stdin = std::io::stdin();
        if stdin.is_terminal() {
            eprintln!("paste the key, then press Enter:");
        }
        let mut input = String::new();
        if let Err(e) = stdin.lock().read_to_string(&mut input) {
            eprintln!("ragscope hash-key: cannot read the key from standard input: {e}");
            return ExitCode::FAILURE;
        }
        let key = input.lines().next().unwrap_or_default().trim().to_owned();
        if key.is_empty() {
            eprintln!("ragscope hash-key: no key on standard input (or use --generate)");
            return ExitCode::from(2);
        }
        key
    };
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{}", key_line(&name, &key)).is_err() {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// 32 random bytes from the OS, hex, with a recognisable prefix (so secret scanners and
/// people can tell what it is).
fn generate_key() -> Option<String> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut bytes).ok()?;
    Some(format!("rsk_{}", to_hex(&bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const ALICE_KEY: &str = "rsk_alice";

    fn keys(text: &str) -> ApiKeys {
        ApiKeys {
            path: PathBuf::new(),
            entries: Arc::new(RwLock::new(Arc::new(parse_keys(text).expect("parses")))),
            initial: [0; 32],
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn key_line_is_sha256_hex() {
        // sha256("abc"), a published test vector.
        assert_eq!(
            key_line("n", "abc"),
            "n sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn parses_lines_comments_and_blank_lines() {
        let text = format!(
            "# team keys\n\n{}   # added 2025-01-01\n  {}\n",
            key_line("alice", ALICE_KEY),
            key_line("bob", "rsk_bob")
        );
        let entries = parse_keys(&text).expect("parses");
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].name.as_str(), "alice");
        assert_eq!(entries[1].name.as_str(), "bob");
    }

    #[test]
    fn bad_lines_name_their_number() {
        for (text, line) in [
            ("alice\n", 1),
            ("# c\nalice sha256:abc\n", 2),
            ("alice md5:d41d8cd98f00b204e9800998ecf8427e\n", 1),
            (
                "alice sha256:zz7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\n",
                1,
            ),
            ("a sha256:00 extra\n", 1),
        ] {
            let (n, _) = parse_keys(text).expect_err(text);
            assert_eq!(n, line, "{text}");
        }
        assert_eq!(parse_bytes(b"# ok\n\xff\n").expect_err("binary").0, 2);
        let dup = format!("{}\n{}\n", key_line("a", "k"), key_line("b", "k"));
        assert_eq!(parse_keys(&dup).expect_err("duplicate").0, 2);
    }

    #[test]
    fn bearer_and_x_api_key_are_accepted() {
        let k = keys(&key_line("alice", ALICE_KEY));
        let ok = k
            .check(&headers(&[("authorization", "Bearer rsk_alice")]))
            .expect("bearer");
        assert_eq!(ok.name.as_str(), "alice");
        assert_eq!(ok.header, header::AUTHORIZATION);
        let ok = k
            .check(&headers(&[("authorization", "bearer   rsk_alice ")]))
            .expect("scheme is case-insensitive");
        assert_eq!(ok.name.as_str(), "alice");
        let ok = k
            .check(&headers(&[("x-api-key", "rsk_alice")]))
            .expect("x-api-key");
        assert_eq!(ok.header, X_API_KEY);
        // The upstream's own credentials in Authorization do not hide a valid X-Api-Key.
        let ok = k
            .check(&headers(&[
                ("authorization", "Basic dXNlcjpwYXNz"),
                ("x-api-key", "rsk_alice"),
            ]))
            .expect("x-api-key beside basic auth");
        assert_eq!(ok.header, X_API_KEY);
    }

    #[test]
    fn missing_and_invalid_are_told_apart() {
        let k = keys(&key_line("alice", ALICE_KEY));
        assert_eq!(k.check(&headers(&[])).err(), Some(Refusal::Missing));
        assert_eq!(
            k.check(&headers(&[("authorization", "Basic dXNlcjpwYXNz")]))
                .err(),
            Some(Refusal::Missing)
        );
        assert_eq!(
            k.check(&headers(&[("authorization", "Bearer ")])).err(),
            Some(Refusal::Missing)
        );
        assert_eq!(
            k.check(&headers(&[("authorization", "Bearer rsk_alicE")]))
                .err(),
            Some(Refusal::Invalid)
        );
        assert_eq!(
            k.check(&headers(&[("x-api-key", "rsk_alice2")])).err(),
            Some(Refusal::Invalid)
        );
        // The digest itself is not a key.
        let digest = key_line("x", ALICE_KEY);
        let hex = digest.split("sha256:").nth(1).expect("hex");
        assert_eq!(
            k.check(&headers(&[("x-api-key", hex)])).err(),
            Some(Refusal::Invalid)
        );
    }

    #[test]
    fn generated_keys_are_random_and_prefixed() {
        let a = generate_key().expect("key");
        let b = generate_key().expect("key");
        assert_ne!(a, b);
        assert!(a.starts_with("rsk_") && a.len() == 4 + 64, "{a}");
    }
}
