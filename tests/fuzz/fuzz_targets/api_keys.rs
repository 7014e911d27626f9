//! The `RAGSCOPE_API_KEYS_FILE` reader on arbitrary file contents, loaded from a real file as
//! at start-up: it accepts the file or names a line (never panics), and a key whose line
//! `ragscope hash-key` printed is then admitted under its name, by either header.
#![no_main]

use std::path::PathBuf;
use std::sync::LazyLock;

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use ragscope::auth::{ApiKeys, KeyFileError, X_API_KEY, key_line};

/// One file per fuzzing process, rewritten for every input.
static FILE: LazyLock<PathBuf> = LazyLock::new(|| {
    std::env::temp_dir().join(format!("ragscope-fuzz-keys-{}", std::process::id()))
});

fuzz_target!(|data: &[u8]| {
    // Input: `name NUL key NUL file contents`; the name and key make one extra, valid line.
    let mut parts = data.splitn(3, |b| *b == 0);
    let (Some(name), Some(key), Some(contents)) = (parts.next(), parts.next(), parts.next()) else {
        return;
    };
    let (Ok(name), Ok(key)) = (std::str::from_utf8(name), std::str::from_utf8(key)) else {
        return;
    };
    // `ragscope hash-key` refuses such names; a key is read trimmed from its header.
    let usable_name =
        !name.is_empty() && !name.contains('#') && !name.contains(char::is_whitespace);
    let usable_key =
        !key.is_empty() && key.trim_ascii() == key && HeaderValue::from_str(key).is_ok();

    let mut file = contents.to_vec();
    if usable_name && usable_key {
        file.extend_from_slice(format!("\n{}\n", key_line(name, key)).as_bytes());
    }
    std::fs::write(&*FILE, &file).expect("write the fuzz key file");
    let lines = file.split(|b| *b == b'\n').count();
    let keys = match ApiKeys::load(&FILE) {
        Ok(keys) => keys,
        Err(KeyFileError::Line { line, .. }) => {
            assert!((1..=lines).contains(&line), "line {line} of {lines}");
            return;
        }
        Err(e @ KeyFileError::Read { .. }) => panic!("{e}"),
    };
    if !(usable_name && usable_key) {
        let _ = keys.check(&HeaderMap::new());
        return;
    }
    for (header, value) in [
        (http::header::AUTHORIZATION, format!("Bearer {key}")),
        (X_API_KEY, format!(" {key} ")),
    ] {
        let mut headers = HeaderMap::new();
        headers.insert(
            header.clone(),
            HeaderValue::from_str(&value).expect("checked above"),
        );
        let accepted = keys.check(&headers).expect("a listed key is admitted");
        assert_eq!(&*accepted.name.0, name);
        assert_eq!(accepted.header, header);
    }
});
