//! `RAGSCOPE_STREAM_USAGE=inject` on arbitrary bytes. The request side: an injected body is the
//! client's JSON object with `stream_options.include_usage` added and nothing else changed. The
//! response side: the usage filter never panics, never hands on more than it was given, leaves
//! a stream without `"usage"` byte for byte as it was, and filters the same however the stream
//! is split (with its bound out of reach).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use ragscope::proxy::stream_usage::{UsageFilter, inject};
use serde_json::Value;

fuzz_target!(|input: &[u8]| {
    let Some((&split, data)) = input.split_first() else {
        return;
    };
    if let Some(out) = inject(data) {
        let mut injected: Value = serde_json::from_slice(&out).expect("injected body is JSON");
        let original: Value = serde_json::from_slice(data).expect("original was JSON");
        let object = injected.as_object_mut().expect("an object");
        let options = object.remove("stream_options").expect("stream_options added");
        assert_eq!(options["include_usage"], Value::Bool(true));
        assert_eq!(injected, original);
    }

    let split = usize::from(split).min(data.len());
    let run = |chunks: &[&[u8]], max: usize| {
        let mut filter = UsageFilter::new(max);
        let mut out = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len();
            out.extend_from_slice(&filter.filter(Bytes::copy_from_slice(c), last));
        }
        if let Some(rest) = filter.flush() {
            out.extend_from_slice(&rest);
        }
        out
    };
    let whole = run(&[data], usize::MAX);
    assert!(whole.len() <= data.len());
    if !data.windows(7).any(|w| w == b"\"usage\"") {
        assert_eq!(whole, data);
    }
    assert_eq!(run(&[&data[..split], &data[split..]], usize::MAX), whole);
    let bounded = run(&[&data[..split], &data[split..]], 16);
    assert!(bounded.len() <= data.len());
});
