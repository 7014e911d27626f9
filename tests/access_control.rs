//! Access control: API keys from a file of SHA-256 digests, in `Authorization: Bearer` or
//! `X-Api-Key`; 401 with a challenge otherwise and the upstream never called; the key's name
//! (never the key) on the span; key headers stripped unless forwarding is on; the file
//! reloaded on change; `ragscope hash-key` to make the lines.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use http::StatusCode;
use support::*;

const WAIT: Duration = Duration::from_secs(15);
const ALICE: &str = "rsk_alice_0123456789";
const BOB: &str = "rsk_bob_9876543210";

/// The key-file line for `key`, made by the real `ragscope hash-key` command.
fn hash_key(name: &str, key: &str) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ragscope"))
        .args(["hash-key", name])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ragscope hash-key runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{key}\n").as_bytes())
        .expect("write key");
    let out = child.wait_with_output().expect("exits");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

struct KeyFile {
    dir: tempfile::TempDir,
}

impl KeyFile {
    fn new(text: &str) -> KeyFile {
        let file = KeyFile {
            dir: tempfile::tempdir().expect("dir"),
        };
        file.replace(text);
        file
    }

    fn path(&self) -> String {
        self.dir.path().join("keys.txt").display().to_string()
    }

    /// Replaces the file atomically.
    fn replace(&self, text: &str) {
        let tmp = self.dir.path().join(".keys.tmp");
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, self.dir.path().join("keys.txt")).expect("rename");
    }
}

async fn guarded_proxy(up: &Upstream, keys: &KeyFile, extra: &[(&str, &str)]) -> Proxy {
    let mut builder = Proxy::builder()
        .upstream(up)
        .env("RAGSCOPE_API_KEYS_FILE", keys.path());
    for (k, v) in extra {
        builder = builder.env(k, *v);
    }
    builder.run().await
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_without_a_valid_key_get_401_and_never_reach_the_upstream() {
    let up = Upstream::start().await;
    let keys = KeyFile::new(&format!("# keys\n{}\n", hash_key("alice", ALICE)));
    let proxy = guarded_proxy(&up, &keys, &[]).await;
    let url = proxy.url("/json");

    let missing = Client::http1().get_with(&url, &[]).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.error_type(), "missing_api_key");
    assert_eq!(
        missing.header("www-authenticate"),
        Some("Bearer realm=\"ragscope\"")
    );
    assert_eq!(missing.header("content-type"), Some("application/json"));

    for headers in [
        vec![("authorization", "Bearer rsk_wrong")],
        vec![("x-api-key", "rsk_wrong")],
        // A digest from the file is not a key.
        vec![("x-api-key", "sha256:0000")],
        // The right key in the wrong scheme is not accepted.
        vec![("authorization", "Basic rsk_alice_0123456789")],
        vec![
            ("authorization", "Token rsk_alice_0123456789"),
            ("x-api-key", "nope"),
        ],
    ] {
        let reply = Client::http1().get_with(&url, &headers).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{headers:?}");
        let challenge = reply.header("www-authenticate").expect("challenge");
        assert!(
            challenge.starts_with("Bearer realm=\"ragscope\""),
            "{challenge}"
        );
        if reply.error_type() == "invalid_api_key" {
            assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
        } else {
            assert_eq!(reply.error_type(), "missing_api_key", "{headers:?}");
        }
    }
    let wrong = Client::http1()
        .get_with(&url, &[("x-api-key", "rsk_wrong")])
        .await;
    assert_eq!(wrong.error_type(), "invalid_api_key");
    assert_eq!(wrong.json()["error"]["message"], "the API key is not valid");

    // HTTP/2 is guarded the same way.
    let h2 = Client::http2().get_with(&url, &[]).await;
    assert_eq!(h2.status, StatusCode::UNAUTHORIZED);

    assert_eq!(up.request_count(), 0, "the upstream was never called");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_listed_key_is_admitted_its_name_recorded_and_its_header_stripped() {
    let up = Upstream::start().await;
    let otlp = OtlpReceiver::start().await;
    let keys = KeyFile::new(&format!(
        "{}\n{}  # second team\n",
        hash_key("alice", ALICE),
        hash_key("bob", BOB)
    ));
    let proxy = Proxy::builder()
        .upstream(&up)
        .otlp(&otlp)
        .env("RAGSCOPE_API_KEYS_FILE", keys.path())
        .run()
        .await;

    let bearer = format!("Bearer {ALICE}");
    let reply = Client::http1()
        .get_with(
            &proxy.url("/echo?via=bearer"),
            &[("authorization", &bearer)],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        up.last_request().header("authorization").is_none(),
        "the key does not reach the upstream"
    );

    // X-Api-Key, beside the upstream's own credentials in Authorization (which pass on).
    let reply = Client::http2()
        .get_with(
            &proxy.url("/echo?via=header"),
            &[("x-api-key", BOB), ("authorization", "Basic dXNlcjpwYXNz")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let seen = up.last_request();
    assert!(seen.header("x-api-key").is_none());
    assert_eq!(seen.header("authorization"), Some("Basic dXNlcjpwYXNz"));

    let spans = otlp
        .wait_for_spans(|s| s.kind == SpanKind::Server, 2, WAIT)
        .await;
    let mut names: Vec<&str> = spans
        .iter()
        .filter_map(|s| s.str_attr("ragscope.api_key.name"))
        .collect();
    names.sort();
    assert_eq!(names, ["alice", "bob"]);
    for span in otlp.spans() {
        for (key, value) in &span.attributes {
            let text = value.as_str().unwrap_or_default();
            assert!(
                !text.contains(ALICE) && !text.contains(BOB),
                "key leaked in {key}={text}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarding_the_key_header_can_be_turned_on() {
    let up = Upstream::start().await;
    let keys = KeyFile::new(&hash_key("alice", ALICE));
    let proxy = guarded_proxy(&up, &keys, &[("RAGSCOPE_API_KEYS_FORWARD", "true")]).await;
    let bearer = format!("Bearer {ALICE}");
    let reply = Client::http1()
        .get_with(&proxy.url("/echo"), &[("authorization", &bearer)])
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        up.last_request().header("authorization"),
        Some(bearer.as_str())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_key_file_is_reloaded_and_a_broken_one_keeps_the_old_keys() {
    let up = Upstream::start().await;
    let keys = KeyFile::new(&hash_key("alice", ALICE));
    // The real binary, so the watcher's log lines tell when it has looked at the file.
    let ragscope = Proxy::builder()
        .upstream(&up)
        .env("RAGSCOPE_API_KEYS_FILE", keys.path())
        .spawn();
    let (proxy, _) = ragscope.wait_serving().await;
    let url = format!("http://{proxy}/json");
    let status = |key: &'static str| {
        let url = url.clone();
        async move {
            Client::http1()
                .get_with(&url, &[("x-api-key", key)])
                .await
                .status
        }
    };
    assert_eq!(status(ALICE).await, StatusCode::OK);
    assert_eq!(status(BOB).await, StatusCode::UNAUTHORIZED);

    // Bob added, Alice revoked.
    keys.replace(&format!("# rotated\n{}\n", hash_key("bob", BOB)));
    ragscope.wait_line("reloaded the API key file", WAIT).await;
    assert_eq!(status(BOB).await, StatusCode::OK, "bob's key was picked up");
    assert_eq!(
        status(ALICE).await,
        StatusCode::UNAUTHORIZED,
        "alice revoked"
    );

    // A broken file keeps the keys in service: once the watcher has said it refused the
    // file, Bob is still admitted.
    keys.replace("bob sha256:not-hex\n");
    let refused = ragscope
        .wait_line("the changed API key file is not valid", WAIT)
        .await;
    assert!(
        refused.contains("line 1"),
        "the error names the line: {refused}"
    );
    assert_eq!(status(BOB).await, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn hash_key_generates_a_key_and_the_line_that_admits_it() {
    // --generate: the new key on stderr, only the line on stdout.
    let out = Command::new(env!("CARGO_BIN_EXE_ragscope"))
        .args(["hash-key", "carol", "--generate"])
        .stdin(Stdio::null())
        .output()
        .expect("runs");
    assert!(out.status.success(), "{out:?}");
    let line = String::from_utf8(out.stdout).expect("utf-8");
    let stderr = String::from_utf8(out.stderr).expect("utf-8");
    let key = stderr
        .split_whitespace()
        .find(|w| w.starts_with("rsk_"))
        .expect("generated key on stderr")
        .to_owned();
    assert!(line.starts_with("carol sha256:"), "{line}");
    assert!(!line.contains(&key), "the key is never in the line");
    assert_eq!(
        line.trim(),
        hash_key("carol", &key),
        "same digest either way"
    );

    let up = Upstream::start().await;
    let keys = KeyFile::new(&line);
    let proxy = guarded_proxy(&up, &keys, &[]).await;
    let reply = Client::http1()
        .get_with(
            &proxy.url("/json"),
            &[("authorization", &format!("Bearer {key}"))],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);

    // Usage mistakes exit 2.
    for args in [
        vec!["hash-key"],
        vec!["hash-key", "two words"],
        vec!["hash-key", "a", "--bogus"],
    ] {
        let status = Command::new(env!("CARGO_BIN_EXE_ragscope"))
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("runs");
        assert_eq!(status.code(), Some(2), "{args:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_key_file_stops_start_up_naming_the_line() {
    let keys = KeyFile::new(&format!("{}\nalice sha256:abc\n", hash_key("bob", BOB)));
    let mut ragscope = Proxy::builder()
        .env("RAGSCOPE_API_KEYS_FILE", keys.path())
        .spawn();
    let status = ragscope.wait_exit(WAIT).await.expect("exits");
    assert!(!status.success());
    let stderr = ragscope.stderr_lines().join("\n");
    assert!(stderr.contains("RAGSCOPE_API_KEYS_FILE"), "{stderr}");
    assert!(stderr.contains("line 2"), "{stderr}");

    let mut missing = Proxy::builder()
        .env("RAGSCOPE_API_KEYS_FILE", "/nonexistent/keys.txt")
        .spawn();
    assert!(!missing.wait_exit(WAIT).await.expect("exits").success());
    assert!(
        missing
            .stderr_lines()
            .join("\n")
            .contains("/nonexistent/keys.txt"),
        "{:?}",
        missing.stderr_lines()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limits_can_follow_the_key_name_access_control_admitted() {
    let up = Upstream::start().await;
    let keys = KeyFile::new(&format!(
        "{}\n{}\n",
        hash_key("alice", ALICE),
        hash_key("bob", BOB)
    ));
    let proxy = guarded_proxy(
        &up,
        &keys,
        &[
            ("RAGSCOPE_RATE_LIMIT", "2/m"),
            ("RAGSCOPE_RATE_BURST", "2"),
            ("RAGSCOPE_RATE_KEY", "api-key"),
        ],
    )
    .await;
    let client = Client::http1();
    let alice = format!("Bearer {ALICE}");

    // Alice spends her budget from one address...
    for _ in 0..2 {
        let reply = client
            .get_with(&proxy.url("/json"), &[("authorization", &alice)])
            .await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    let reply = client
        .get_with(&proxy.url("/json"), &[("authorization", &alice)])
        .await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.error_type(), "rate_limited");

    // ...while Bob, from the very same address, still has his own.
    let reply = client
        .get_with(&proxy.url("/json"), &[("x-api-key", BOB)])
        .await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "budgets follow the key name, not the IP"
    );
    proxy.shutdown().await;
}
