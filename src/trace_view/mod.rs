//! `/traces`, `/traces/{trace id}` and `/traces.json`: the recent requests kept by
//! [`RecentTraces`](crate::telemetry::RecentTraces), as a self-contained page (inline CSS and
//! JavaScript, no external assets, so it works on an air-gapped host) and as JSON.
//!
//! The page gets its data embedded as JSON and renders it in the browser, so the filters (errors,
//! slow requests) work without a round trip and the same code draws the list and the waterfall.

use std::time::Duration;

use serde_json::{Value, json};

use crate::telemetry::{RecentTraces, TraceFilter};

const PAGE: &str = include_str!("page.html");

/// Reads `errors=1`, `slow_ms=N`, `limit=N` and `trace_id=HEX` from a query string; anything
/// else, or a value that does not parse, is ignored (this is a viewer, not an API contract).
pub fn filter_from_query(query: Option<&str>) -> TraceFilter {
    let mut filter = TraceFilter::default();
    for pair in query.unwrap_or_default().split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "errors" => filter.errors = matches!(v, "1" | "true"),
            "slow_ms" => {
                filter.slow = v
                    .parse::<f64>()
                    .ok()
                    .filter(|ms| ms.is_finite() && *ms >= 0.0)
                    .map(|ms| Duration::from_secs_f64(ms / 1000.0))
            }
            "limit" => filter.limit = v.parse().ok(),
            "trace_id" if is_trace_id(v) => filter.trace_id = Some(v.to_owned()),
            _ => {}
        }
    }
    filter
}

/// 32 lowercase hex digits.
pub fn is_trace_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `/traces.json`: the matching requests, newest first, each with its spans.
pub fn json(ring: &RecentTraces, filter: &TraceFilter) -> Value {
    let traces: Vec<Value> = ring.snapshot(filter).iter().map(|t| t.detail()).collect();
    json!({ "capacity": ring.capacity(), "traces": traces })
}

/// `/traces`: the list page (summaries only, the filters run in the page).
pub fn list_page(ring: &RecentTraces) -> String {
    let traces: Vec<Value> = ring
        .snapshot(&TraceFilter::default())
        .iter()
        .map(|t| t.summary())
        .collect();
    page(&json!({ "view": "list", "capacity": ring.capacity(), "traces": traces }))
}

/// `/traces/{trace id}`: every recent request of that trace, with its waterfall, attributes,
/// retrieved documents and the `feedback` given about it.
pub fn trace_page(
    ring: &RecentTraces,
    trace_id: &str,
    feedback: &[crate::overview::FeedbackEntry],
) -> String {
    let feedback: Vec<Value> = feedback.iter().map(crate::overview::entry_json).collect();
    let filter = TraceFilter {
        trace_id: Some(trace_id.to_owned()),
        ..TraceFilter::default()
    };
    let traces: Vec<Value> = ring.snapshot(&filter).iter().map(|t| t.detail()).collect();
    page(
        &json!({ "view": "trace", "trace_id": trace_id, "capacity": ring.capacity(), "traces": traces, "feedback": feedback }),
    )
}

fn page(data: &Value) -> String {
    // Inside <script>, only `</script` (or `<!--`) could end the element early; `<` appears in
    // JSON only inside strings, where \u003c means the same.
    let embedded = data.to_string().replace('<', "\\u003c");
    PAGE.replacen("__DATA__", &embedded, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_filters() {
        let f = filter_from_query(Some("errors=1&slow_ms=250&limit=5&x=y"));
        assert!(f.errors);
        assert_eq!(f.slow, Some(Duration::from_millis(250)));
        assert_eq!(f.limit, Some(5));
        let f = filter_from_query(Some("slow_ms=-1&trace_id=XYZ&errors=0"));
        assert_eq!(f, TraceFilter::default());
        assert_eq!(filter_from_query(None), TraceFilter::default());
    }

    #[test]
    fn embedded_data_cannot_close_the_script() {
        let html = page(
            &json!({"view": "list", "traces": [{"path": "/</script><script>alert(1)</script>"}]}),
        );
        assert_eq!(
            html.matches("</script>").count(),
            2,
            "only the page's own two scripts end"
        );
    }
}
