//! Request and response readers on arbitrary bytes: an error is fine, a panic is not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ragscope::genai::openai::{parse_body, parse_request};

fuzz_target!(|data: &[u8]| {
    let _ = parse_request(data, true);
    if let Ok(info) = parse_body(data, Some(32)) {
        assert!(info.output.iter().all(|s| s.len() <= 32));
    }
});
