//! The telemetry contract, over real sockets: what a collector receives when requests go
//! through ragscope, and what the upstream and the client see of trace context.
//!
//! This file holds the helpers that find spans and metric points; the tests are in one module
//! per concern, in order:
//! 1. `spans`: one SERVER span per request with a CLIENT child, named and attributed per the
//!    HTTP semantic conventions, and the resource that names the service;
//! 2. `trace_context`: continuing a caller's trace, refusing invalid ones, injecting ours,
//!    `traceresponse`, and the `OTEL_PROPAGATORS` / `OTEL_SDK_DISABLED` switches;
//! 3. `status`: span status and `error.type`, for upstream and proxy-made errors;
//! 4. `metrics`: the HTTP metrics;
//! 5. `export`: export over OTLP/HTTP and OTLP/gRPC, and `OTEL_TRACES_EXPORTER=none`;
//! 6. `collector`: a dead, black-holed, slow or failing collector never hurts the data path,
//!    and what it costs is counted;
//! 7. `secrets`: secrets are never recorded;
//! 8. `timing`: a streamed response's span ends with its body, a client cancel is not an
//!    error.
//!
//! Each test ends with `proxy.shutdown().await`: telemetry is flushed while the collector is
//! still there, instead of when the test's runtime is torn down (which costs about a second).

#[path = "../support/mod.rs"]
mod support;

mod collector;
mod export;
mod metrics;
mod secrets;
mod spans;
mod status;
mod timing;
mod trace_context;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use http::{Method, StatusCode};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Longest wait for telemetry to arrive. The builder flushes spans every 50 ms and metrics every
/// 200 ms, so this is only reached when something is wrong.
const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// The parts of a W3C `traceresponse` header.
#[derive(Debug)]
struct TraceResponse {
    trace_id: String,
    span_id: String,
    flags: String,
}

/// Parses and checks the response's `traceresponse` (`00-<trace id>-<span id>-<flags>`).
fn trace_response(reply: &Reply) -> TraceResponse {
    let value = reply.header("traceresponse").unwrap_or_else(|| {
        panic!(
            "a {} response without traceresponse: {:?}",
            reply.status, reply.headers
        )
    });
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "traceresponse {value:?}");
    assert_eq!(parts[0], "00", "traceresponse version: {value:?}");
    assert!(
        is_valid_id(parts[1], 32),
        "traceresponse trace id: {value:?}"
    );
    assert!(
        is_valid_id(parts[2], 16),
        "traceresponse span id: {value:?}"
    );
    assert!(is_lower_hex(parts[3], 2), "traceresponse flags: {value:?}");
    TraceResponse {
        trace_id: parts[1].to_owned(),
        span_id: parts[2].to_owned(),
        flags: parts[3].to_owned(),
    }
}

/// The SERVER and CLIENT spans of one trace: exactly one of each.
async fn exchange_spans(otlp: &OtlpReceiver, trace_id: &str) -> (CollectedSpan, CollectedSpan) {
    let spans = otlp
        .wait_for_spans(|s| s.trace_id == trace_id, 2, WAIT)
        .await;
    let of_kind = |kind: SpanKind| {
        let found: Vec<&CollectedSpan> = spans.iter().filter(|s| s.kind == kind).collect();
        assert_eq!(
            found.len(),
            1,
            "one {kind:?} span in trace {trace_id}: {spans:#?}"
        );
        found[0].clone()
    };
    let server = of_kind(SpanKind::Server);
    let client = of_kind(SpanKind::Client);
    assert_eq!(
        spans.len(),
        2,
        "exactly a SERVER and a CLIENT span: {spans:#?}"
    );
    (server, client)
}

/// The SERVER and CLIENT spans of the exchange that answered `reply`, found through its
/// `traceresponse` (which must name the SERVER span).
async fn server_span_of(otlp: &OtlpReceiver, reply: &Reply) -> (CollectedSpan, CollectedSpan) {
    let tr = trace_response(reply);
    let (server, client) = exchange_spans(otlp, &tr.trace_id).await;
    assert_eq!(
        server.span_id, tr.span_id,
        "traceresponse names the SERVER span"
    );
    (server, client)
}

/// The attribute keys of a metric point.
fn keys(attributes: &[(String, Value)]) -> Vec<&str> {
    attributes.iter().map(|(k, _)| k.as_str()).collect()
}

/// Waits for the latest export of histogram `name` to have a point with `attributes` and at
/// least `count` measurements, and returns that point.
async fn wait_histogram(
    otlp: &OtlpReceiver,
    name: &str,
    attributes: &[(&str, Value)],
    count: u64,
) -> (CollectedMetric, HistogramPoint) {
    let metric = otlp
        .wait_for_metric_where(
            name,
            |m| {
                m.histogram_point_with(attributes)
                    .is_some_and(|p| p.count >= count)
            },
            WAIT,
        )
        .await;
    let point = metric
        .histogram_point_with(attributes)
        .expect("point")
        .clone();
    (metric, point)
}

/// Waits for the latest export of sum `name` to have a point with `attributes` whose value
/// satisfies `pred`, and returns the value.
async fn wait_sum(
    otlp: &OtlpReceiver,
    name: &str,
    attributes: &[(&str, Value)],
    pred: impl Fn(f64) -> bool,
) -> (CollectedMetric, f64) {
    let metric = otlp
        .wait_for_metric_where(
            name,
            |m| m.point_with(attributes).is_some_and(|p| pred(p.as_f64())),
            WAIT,
        )
        .await;
    let value = metric.point_with(attributes).expect("point").as_f64();
    (metric, value)
}

fn str_value(s: &str) -> Value {
    Value::from(s)
}
