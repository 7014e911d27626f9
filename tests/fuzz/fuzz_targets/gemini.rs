//! The gemini reader on arbitrary bytes, as a request, a body and a stream event: an error is
//! fine, a panic is not, and captured text stays within its bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ragscope::genai::gemini::{on_event, parse_body, parse_request};

fuzz_target!(|data: &[u8]| {
    let _ = parse_request(data, true);
    if let Ok(info) = parse_body(data, Some(32)) {
        assert!(info.output.iter().all(|s| s.len() <= 32));
    }
    let mut info = Default::default();
    for line in data.split(|b| *b == b'\n') {
        let _ = on_event(&mut info, line, Some(32));
    }
    assert!(info.output.iter().all(|s| s.len() <= 32));
    assert!(info.tool_parts.iter().all(|p| p.arguments.len() <= 32));
});
