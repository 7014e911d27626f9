//! Incoming `traceparent`/`tracestate` through the strict reader and the W3C propagator, as a
//! request's headers reach them: a trace is continued only from a valid `traceparent`, the
//! continued ids are the header's, and nothing panics.
#![no_main]

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use ragscope::telemetry::trace_context::{StrictExtractor, valid_traceparent};

fuzz_target!(|data: &[u8]| {
    // Input: header values separated by NUL; the first is `traceparent`, the second
    // `tracestate`, a third is a second `traceparent` (which makes both invalid).
    let mut parts = data.split(|b| *b == 0);
    let mut headers = HeaderMap::new();
    let mut parents = Vec::new();
    for name in ["traceparent", "tracestate", "traceparent"] {
        let Some(raw) = parts.next() else { break };
        // Bytes hyper would not accept as a header value never reach the reader.
        let Ok(value) = HeaderValue::from_bytes(raw) else {
            return;
        };
        if name == "traceparent" {
            parents.push(value.clone());
        }
        headers.append(name, value);
    }

    let extractor = StrictExtractor::new(&headers);
    let lone_valid = match parents.as_slice() {
        [one] => one.to_str().ok().filter(|v| valid_traceparent(v)),
        _ => None,
    };
    assert_eq!(extractor.get("traceparent").is_some(), lone_valid.is_some());
    if let Some(state) = extractor.get("tracestate") {
        assert!(
            lone_valid.is_some(),
            "tracestate read without a valid traceparent"
        );
        assert!(state.split(',').filter(|m| !m.trim().is_empty()).count() <= 32);
    }
    let _ = extractor.keys();

    let context = TraceContextPropagator::new().extract(&extractor);
    let span = context.span();
    let remote = span.span_context();
    match lone_valid {
        None => assert!(!remote.is_valid(), "continued an invalid traceparent"),
        Some(header) if remote.is_valid() => {
            let header = header.trim_matches([' ', '\t']);
            let ids = format!("{}-{}", remote.trace_id(), remote.span_id());
            assert_eq!(header.get(3..52), Some(ids.as_str()), "continued other ids");
            assert!(remote.is_remote());
        }
        // The SDK may still refuse a header that is valid per W3C (for example a future
        // version it does not read): a new trace is the safe outcome.
        Some(_) => {}
    }
});
