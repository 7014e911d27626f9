//! The SSE parser on arbitrary bytes, split at an arbitrary point: it never panics, never
//! holds more than its bound, and reads the same events however the stream is split.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ragscope::genai::openai::ResponseInfo;
use ragscope::genai::sse::SseParser;

fuzz_target!(|input: &[u8]| {
    let Some((&split, data)) = input.split_first() else {
        return;
    };
    let split = usize::from(split).min(data.len());
    let run = |chunks: &[&[u8]]| {
        let mut parser = SseParser::new(256);
        let mut info = ResponseInfo::default();
        let mut events = Vec::new();
        for c in chunks {
            parser.feed(c, |e| {
                assert!(e.data.len() <= 256);
                let _ = ragscope::genai::openai::on_event(&mut info, &e.data, Some(64));
                events.push(e.data);
            });
        }
        (events, info)
    };
    let (whole, info_whole) = run(&[data]);
    let (parts, info_parts) = run(&[&data[..split], &data[split..]]);
    assert_eq!(whole, parts);
    assert_eq!(info_whole, info_parts);
});
