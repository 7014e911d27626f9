//! The telemetry contract, over real sockets: what a collector receives when requests go
//! through ragscope, and what the upstream and the client see of trace context.
//!
//! Sections, in order:
//! 1. spans: one SERVER span per request with a CLIENT child, named and attributed per the HTTP
//!    semantic conventions, and the resource that names the service;
//! 2. trace context: continuing a caller's trace, refusing invalid ones, injecting ours,
//!    `traceresponse`, and the `OTEL_PROPAGATORS` / `OTEL_SDK_DISABLED` switches;
//! 3. span status and `error.type`, for upstream and proxy-made errors;
//! 4. the HTTP metrics;
//! 5. export over OTLP/HTTP and OTLP/gRPC, and `OTEL_TRACES_EXPORTER=none`;
//! 6. a dead, black-holed, slow or failing collector never hurts the data path, and what it
//!    costs is counted;
//! 7. secrets are never recorded;
//! 8. span timing: a streamed response's span ends with its body, a client cancel is not an
//!    error.
//!
//! Each test ends with `proxy.shutdown().await`: telemetry is flushed while the collector is
//! still there, instead of when the test's runtime is torn down (which costs about a second).

mod support;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use http::{Method, StatusCode};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Longest wait for telemetry to arrive. The builder flushes spans every 50 ms and metrics every
/// 200 ms, so this is only reached when something is wrong.
const WAIT: Duration = Duration::from_secs(10);

/// A well-formed W3C `traceparent`, sampled.
const CALLER_TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN_ID: &str = "00f067aa0ba902b7";
const CALLER_TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const CALLER_TRACESTATE: &str = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";

/// The advised buckets for `http.*.request.duration`, seconds.
const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Attributes that would make a metric's cardinality unbounded (or leak who called).
const NEVER_ON_METRICS: [&str; 10] = [
    "url.path",
    "url.query",
    "url.full",
    "client.address",
    "server.address",
    "server.port",
    "network.peer.address",
    "network.peer.port",
    "user_agent.original",
    "http.request.method_original",
];

/// Pre-stable HTTP attribute names that must not appear (the stable names replaced them).
const DEPRECATED_HTTP_NAMES: [&str; 10] = [
    "http.method",
    "http.status_code",
    "http.target",
    "http.url",
    "http.scheme",
    "http.flavor",
    "http.user_agent",
    "net.peer.ip",
    "net.host.name",
    "net.host.port",
];

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

/// Sends `n` GETs to `/json`, 16 at a time; returns every status and the time it took.
async fn burst(proxy: &Proxy, n: usize) -> (Vec<StatusCode>, Duration) {
    let client = Client::http1();
    let url = proxy.url("/json");
    let started = Instant::now();
    let statuses: Vec<StatusCode> = futures_util::stream::iter(0..n)
        .map(|_| {
            let client = client.clone();
            let url = url.clone();
            async move { client.get(url).await.status }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    (statuses, started.elapsed())
}

/// Proves the data path does not care what the collector does: 200 more requests all succeed,
/// and quickly (a path waiting on export would take seconds per batch).
async fn assert_requests_unaffected(up: &Upstream, proxy: &Proxy) {
    let before = up.request_count();
    let (statuses, elapsed) = burst(proxy, 200).await;
    assert_eq!(statuses.len(), 200);
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "every request succeeds whatever the collector does: {statuses:?}"
    );
    assert_eq!(up.request_count() - before, 200);
    assert!(
        elapsed < Duration::from_secs(5),
        "200 requests took {elapsed:?}: export is on the data path"
    );
}

/// Shuts the proxy down, asserting that a collector in trouble cannot hold it.
async fn assert_shutdown_bounded(proxy: Proxy) {
    tokio::time::timeout(Duration::from_secs(10), proxy.shutdown())
        .await
        .expect("shutdown is bounded whatever the collector does");
}

// ---------------------------------------------------------------------------
// 1. Spans: one SERVER span per request, one CLIENT child per upstream call
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_get_makes_a_server_span_and_a_client_child_named_per_semconv() {
    let up = Upstream::start().await;
    let otlp = OtlpReceiver::start().await;
    let proxy = Proxy::builder().upstream(&up).otlp(&otlp).run().await;

    let reply = Client::http1()
        .get_with(
            &proxy.url("/echo?a=1&flag"),
            &[("user-agent", "telemetry-test/1.0")],
        )
        .await;
    assert_eq!(reply.status, 200);
    let (server, client) = server_span_of(&otlp, &reply).await;

    // The SERVER span: a new trace, named after the method alone (no route is known).
    assert_eq!(server.name, "GET");
    assert_eq!(server.kind, SpanKind::Server);
    assert!(server.is_root(), "no incoming traceparent: a new trace");
    assert_eq!(server.str_attr("http.request.method"), Some("GET"));
    assert_eq!(server.str_attr("url.path"), Some("/echo"));
    assert_eq!(
        server.str_attr("url.query"),
        Some("a=REDACTED&flag"),
        "query values are redacted"
    );
    assert_eq!(server.str_attr("url.scheme"), Some("http"));
    assert_eq!(
        server.attr("http.response.status_code"),
        Some(&Value::Int(200))
    );
    assert_eq!(server.str_attr("server.address"), Some("127.0.0.1"));
    assert_eq!(
        server.int_attr("server.port"),
        Some(i64::from(proxy.addr().port()))
    );
    assert_eq!(server.str_attr("client.address"), Some("127.0.0.1"));
    assert_eq!(
        server.str_attr("user_agent.original"),
        Some("telemetry-test/1.0")
    );
    assert_eq!(server.str_attr("network.protocol.version"), Some("1.1"));
    assert!(
        !server.has_attr("http.request.method_original"),
        "only for unknown methods"
    );
    assert!(!server.has_attr("error.type"));
    assert_eq!(server.status_code, SpanStatusCode::Unset);

    // The CLIENT span: the upstream call, a child of the SERVER span in the same trace.
    assert_eq!(client.name, "GET");
    assert_eq!(client.kind, SpanKind::Client);
    assert_eq!(client.trace_id, server.trace_id);
    assert_eq!(client.parent_span_id, server.span_id);
    assert_eq!(client.str_attr("http.request.method"), Some("GET"));
    assert_eq!(
        client.str_attr("url.full"),
        Some(format!("{}/echo?a=REDACTED&flag", up.url()).as_str())
    );
    assert_eq!(client.str_attr("server.address"), Some("127.0.0.1"));
    assert_eq!(
        client.int_attr("server.port"),
        Some(i64::from(up.addr().port()))
    );
    assert_eq!(
        client.attr("http.response.status_code"),
        Some(&Value::Int(200))
    );
    assert_eq!(client.status_code, SpanStatusCode::Unset);
    assert!(
        client.start_unix_nanos >= server.start_unix_nanos
            && client.end_unix_nanos <= server.end_unix_nanos,
        "the CLIENT span lies within its parent: {client:#?} {server:#?}"
    );

    // The upstream's own spans nest under our CLIENT span.
    assert_eq!(
        up.last_request().header("traceparent"),
        Some(format!("00-{}-{}-01", server.trace_id, client.span_id).as_str())
    );

    for span in [&server, &client] {
        for old in DEPRECATED_HTTP_NAMES {
            assert!(
                !span.has_attr(old),
                "{old} is the pre-stable name: {span:#?}"
            );
        }
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_post_over_http2_is_named_post_with_protocol_version_2() {
    let up = Upstream::start().await;
    let otlp = OtlpReceiver::start().await;
    let proxy = Proxy::builder().upstream(&up).otlp(&otlp).run().await;

    let reply = Client::http2()
        .send_body(Method::POST, &proxy.url("/upload"), "hello")
        .await;
    assert_eq!(reply.status, 200);
    let (server, client) = server_span_of(&otlp, &reply).await;

    assert_eq!(server.name, "POST");
    assert_eq!(server.str_attr("http.request.method"), Some("POST"));
    assert_eq!(server.str_attr("network.protocol.version"), Some("2"));
    assert_eq!(server.str_attr("url.path"), Some("/upload"));
    assert!(!server.has_attr("url.query"), "no query, no url.query");
    assert_eq!(
        server.str_attr("server.address"),
        Some("127.0.0.1"),
        "from :authority"
    );
    assert_eq!(
        server.int_attr("server.port"),
        Some(i64::from(proxy.addr().port()))
    );
    assert_eq!(
        server.attr("http.response.status_code"),
        Some(&Value::Int(200))
    );
    assert_eq!(client.name, "POST");
    assert_eq!(client.str_attr("http.request.method"), Some("POST"));
    assert_eq!(client.parent_span_id, server.span_id);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_method_is_named_http_with_other_and_the_original() {
    let up = Upstream::start().await;
    let otlp = OtlpReceiver::start().await;
    let proxy = Proxy::builder().upstream(&up).otlp(&otlp).run().await;

    let purge = Method::from_bytes(b"PURGE").expect("method");
    let reply = Client::http1()
        .send_body(purge, &proxy.url("/echo"), "")
        .await;
    assert_eq!(reply.status, 200);
    let (server, client) = server_span_of(&otlp, &reply).await;

    assert_eq!(server.name, "HTTP");
    assert_eq!(server.str_attr("http.request.method"), Some("_OTHER"));
    assert_eq!(
        server.str_attr("http.request.method_original"),
        Some("PURGE")
    );
    assert_eq!(client.name, "HTTP");
    assert_eq!(client.str_attr("http.request.method"), Some("_OTHER"));
    // The semantic conventions require the original on HTTP client spans too.
    assert_eq!(
        client.str_attr("http.request.method_original"),
        Some("PURGE"),
        "CLIENT span: http.request.method_original is required when the method is _OTHER"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_resource_names_the_service_ragscope_by_default() {
    let up = Upstream::start().await;
    let otlp = OtlpReceiver::start().await;
    let proxy = Proxy::builder().upstream(&up).otlp(&otlp).run().await;

    let reply = Client::http1().get(proxy.url("/json")).await;
    let (server, client) = server_span_of(&otlp, &reply).await;
    for span in [&server, &client] {
        assert_eq!(span.resource_str("service.name"), Some("ragscope"));
    }
    let metric = otlp
        .wait_for_metric("http.server.request.duration", WAIT)
        .await;
    assert_eq!(
        metric
            .resource
            .iter()
            .find(|(k, _)| k == "service.name")
            .map(|(_, v)| v),
        Some(&str_value("ragscope"))
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn otel_service_name_and_resource_attributes_shape_the_resource() {
    let up = Upstream::start().await;
    let otlp = OtlpReceiver::start().await;
    let proxy = Proxy::builder()
        .upstream(&up)
        .otlp(&otlp)
        .env("OTEL_SERVICE_NAME", "rag-gateway")
        .env(
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment=test,team=rag%20ops,service.name=overridden",
        )
        .run()
        .await;

    let reply = Client::http1().get(proxy.url("/json")).await;
    let (server, _) = server_span_of(&otlp, &reply).await;
    let metric = otlp
        .wait_for_metric("http.server.request.duration", WAIT)
        .await;
    for resource in [&server.resource, &metric.resource] {
        let get = |key: &str| {
            resource
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(
            get("service.name"),
            Some(str_value("rag-gateway")),
            "OTEL_SERVICE_NAME wins"
        );
        assert_eq!(get("deployment.environment"), Some(str_value("test")));
        assert_eq!(
            get("team"),
            Some(str_value("rag ops")),
            "values are percent-decoded"
        );
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn otel_service_name_wins_even_when_it_spells_the_default() {
    let up = Upstream::start().await;
    let otlp = OtlpReceiver::start().await;
    let service_name_of = |proxy: Proxy| {
        let otlp = &otlp;
        async move {
            let reply = Client::http1().get(proxy.url("/json")).await;
            let (server, _) = server_span_of(otlp, &reply).await;
            proxy.shutdown().await;
            server.resource_str("service.name").map(str::to_owned)
        }
    };

    // Without OTEL_SERVICE_NAME, service.name from OTEL_RESOURCE_ATTRIBUTES is used.
    let proxy = Proxy::builder()
        .upstream(&up)
        .otlp(&otlp)
        .env("OTEL_RESOURCE_ATTRIBUTES", "service.name=other")
        .run()
        .await;
    assert_eq!(service_name_of(proxy).await.as_deref(), Some("other"));

    // The specification: OTEL_SERVICE_NAME takes precedence over service.name in
    // OTEL_RESOURCE_ATTRIBUTES, whatever its value (even the default's spelling).
    otlp.clear();
    let proxy = Proxy::builder()
        .upstream(&up)
        .otlp(&otlp)
        .env("OTEL_SERVICE_NAME", "ragscope")
        .env("OTEL_RESOURCE_ATTRIBUTES", "service.name=other")
        .run()
        .await;
    assert_eq!(
        service_name_of(proxy).await.as_deref(),
        Some("ragscope"),
        "an explicit OTEL_SERVICE_NAME=ragscope must win over service.name=other"
    );
}

// ---------------------------------------------------------------------------
// 2. Trace context
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_valid_traceparent_is_continued_and_tracestate_kept() {
    let up = Upstream::start().await;
    let otlp = OtlpReceiver::start().await;
    let proxy = Proxy::builder().upstream(&up).otlp(&otlp).run().await;

    let reply = Client::http1()
        .get_with(
            &proxy.url("/echo"),
            &[
                ("traceparent", CALLER_TRACEPARENT),
                ("tracestate", CALLER_TRACESTATE),
            ],
        )
        .await;
    assert_eq!(reply.status, 200);
    let tr = trace_response(&reply);
    assert_eq!(tr.trace_id, CALLER_TRACE_ID, "the caller's trace goes on");
    assert_eq!(tr.flags, "01");

    let (server, client) = exchange_spans(&otlp, CALLER_TRACE_ID).await;
    assert_eq!(server.span_id, tr.span_id);
    assert_eq!(
        server.parent_span_id, CALLER_SPAN_ID,
        "our SERVER span is the caller's child"
    );
    assert_eq!(client.parent_span_id, server.span_id);

    let seen = up.last_request();
    assert_eq!(
        seen.header("traceparent"),
        Some(format!("00-{CALLER_TRACE_ID}-{}-01", client.span_id).as_str()),
        "the upstream is told its parent is our CLIENT span"
    );
    assert_eq!(seen.header("tracestate"), Some(CALLER_TRACESTATE));
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_traceparent_starts_a_new_trace() {
    let up = Upstream::start().await;
    let otlp = OtlpReceiver::start().await;
    let proxy = Proxy::builder().upstream(&up).otlp(&otlp).run().await;
    let client = Client::http1();

    for bad in [
        // all-zero trace id
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        // uppercase hex
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
        // version ff
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        // short trace id
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        // all-zero parent id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
    ] {
        let reply = client
            .get_with(
                &proxy.url("/echo"),
                &[("traceparent", bad), ("tracestate", "congo=t61rcWkgMzE")],
            )
            .await;
        assert_eq!(reply.status, 200, "{bad}");
        let tr = trace_response(&reply);
        assert_ne!(tr.trace_id, CALLER_TRACE_ID, "{bad} must not be continued");
        assert_ne!(tr.trace_id, "0".repeat(32), "{bad}");

        let (server, client_span) = exchange_spans(&otlp, &tr.trace_id).await;
        assert!(
            server.is_root(),
            "{bad}: a new trace has no parent, got {}",
            server.parent_span_id
        );
        let seen = up.last_request();
        assert_eq!(
            seen.header("traceparent"),
            Some(format!("00-{}-{}-01", tr.trace_id, client_span.span_id).as_str()),
            "{bad} is replaced by ours"
        );
        // (The SDK's propagator writes an empty `tracestate` beside its traceparent.)
        assert_eq!(
            seen.header("tracestate").unwrap_or_default(),
            "",
            "{bad}: its tracestate is not forwarded"
        );
    }
    proxy.shutdown().await;
}

/// What else a setting that turns trace propagation off must do.
#[derive(Debug, Clone, Copy)]
enum PropagationOff {
    /// `OTEL_PROPAGATORS=none`: spans are still exported, each in a trace of its own.
    OwnTraces,
    /// `OTEL_SDK_DISABLED=true`: nothing is exported and no `traceresponse` is sent.
    NothingExported,
}

#[tokio::test(flavor = "multi_thread")]
async fn with_propagation_off_trace_headers_pass_untouched() {
    for (var, value, off) in [
        ("OTEL_PROPAGATORS", "none", PropagationOff::OwnTraces),
        ("OTEL_SDK_DISABLED", "true", PropagationOff::NothingExported),
    ] {
        let case = format!("{var}={value}");
        let up = Upstream::start().await;
        let otlp = OtlpReceiver::start().await;
        let proxy = Proxy::builder()
            .upstream(&up)
            .otlp(&otlp)
            .env(var, value)
            .run()
            .await;
        let client = Client::http1();

        let reply = client
            .get_with(
                proxy.url("/echo"),
                &[
                    ("traceparent", CALLER_TRACEPARENT),
                    ("tracestate", CALLER_TRACESTATE),
                ],
            )
            .await;
        assert_eq!(reply.status, 200, "{case}");
        let seen = up.last_request();
        assert_eq!(
            seen.header("traceparent"),
            Some(CALLER_TRACEPARENT),
            "{case}: no injection"
        );
        assert_eq!(seen.header("tracestate"), Some(CALLER_TRACESTATE), "{case}");
        if let PropagationOff::NothingExported = off {
            assert_eq!(reply.header("traceresponse"), None, "{case}");
        }
        if let PropagationOff::OwnTraces = off {
            // Nothing is extracted either: our span starts its own trace.
            let server = otlp.wait_span("GET", WAIT).await;
            assert_ne!(server.trace_id, CALLER_TRACE_ID, "{case}");
        }

        let reply = client.get(proxy.url("/echo")).await;
        assert_eq!(
            up.last_request().header("traceparent"),
            None,
            "{case}: none added"
        );
        if let PropagationOff::NothingExported = off {
            assert_eq!(reply.header("traceresponse"), None, "{case}");
            // Metrics would be pushed every 200 ms and spans every 50 ms if anything were on.
            // (A bounded wait for something that must not happen.)
            assert!(
                !otlp.wait_exports(1, Duration::from_millis(1500)).await,
                "{case} exports nothing: {:?}",
                otlp.exports()
            );
        }
        proxy.shutdown().await;
    }
}

// ---------------------------------------------------------------------------
// 3. Status and error.type
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_5xx_is_an_error_with_the_status_as_error_type() {
    let up = Upstream::start().await;
    let otlp = OtlpReceiver::start().await;
    let proxy = Proxy::builder().upstream(&up).otlp(&otlp).run().await;
    let client = Client::http1();

    for status in [500u16, 503] {
        let reply = client
            .get(proxy.url(&format!("/json?status={status}")))
            .await;
        assert_eq!(reply.status, status);
        let (server, client_span) = server_span_of(&otlp, &reply).await;
        for span in [&server, &client_span] {
            assert_eq!(
                span.status_code,
                SpanStatusCode::Error,
                "{status}: {span:#?}"
            );
            assert_eq!(
                span.str_attr("error.type"),
                Some(status.to_string().as_str())
            );
            assert_eq!(
                span.attr("http.response.status_code"),
                Some(&Value::Int(i64::from(status)))
            );
        }
    }

    let (_, point) = wait_histogram(
        &otlp,
        "http.server.request.duration",
        &[("http.response.status_code", Value::Int(500))],
        1,
    )
    .await;
    assert_eq!(point.attr("error.type"), Some(&str_value("500")));
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_4xx_leaves_the_server_span_unset_and_fails_the_client_span() {
    let up = Upstream::start().await;
    let otlp = OtlpReceiver::start().await;
    let proxy = Proxy::builder().upstream(&up).otlp(&otlp).run().await;

    let reply = Client::http1().get(proxy.url("/status/404")).await;
    assert_eq!(reply.status, 404);
    let (server, client) = server_span_of(&otlp, &reply).await;

    assert_eq!(
        server.status_code,
        SpanStatusCode::Unset,
        "a 4xx is the client's problem"
    );
    assert!(!server.has_attr("error.type"));
    assert_eq!(
        server.attr("http.response.status_code"),
        Some(&Value::Int(404))
    );
    assert_eq!(
        client.status_code,
        SpanStatusCode::Error,
        "for the caller of the upstream it failed"
    );
    assert_eq!(
        client.attr("http.response.status_code"),
        Some(&Value::Int(404))
    );

    let (_, point) = wait_histogram(
        &otlp,
        "http.server.request.duration",
        &[("http.response.status_code", Value::Int(404))],
        1,
    )
    .await;
    assert_eq!(
        point.attr("error.type"),
        None,
        "a 4xx is not a server error"
    );

    // Semconv: for an HTTP client a 4xx is an error, and error.type SHOULD then be the status
    // code, on the CLIENT span and on http.client.request.duration.
    assert_eq!(
        client.str_attr("error.type"),
        Some("404"),
        "CLIENT span error.type for a 4xx"
    );
    let (_, point) = wait_histogram(
        &otlp,
        "http.client.request.duration",
        &[("http.response.status_code", Value::Int(404))],
        1,
    )
    .await;
    assert_eq!(
        point.attr("error.type"),
        Some(&str_value("404")),
        "http.client.request.duration error.type for a 4xx"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_upstream_is_a_502_with_error_type_on_span_and_metrics() {
    let otlp = OtlpReceiver::start().await;
    let proxy = Proxy::builder()
        .upstream(&dead_addr())
        .otlp(&otlp)
        .run()
        .await;

    let reply = Client::http1().get(proxy.url("/json")).await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.error_type(), "upstream_unreachable");
    let (server, client) = server_span_of(&otlp, &reply).await;

    assert_eq!(server.status_code, SpanStatusCode::Error);
    assert_eq!(server.str_attr("error.type"), Some("upstream_unreachable"));
    assert_eq!(
        server.attr("http.response.status_code"),
        Some(&Value::Int(502))
    );
    assert_eq!(client.status_code, SpanStatusCode::Error);
    assert_eq!(client.str_attr("error.type"), Some("upstream_unreachable"));
    assert!(
        !client.has_attr("http.response.status_code"),
        "the upstream never answered"
    );

    let (_, point) = wait_histogram(
        &otlp,
        "http.server.request.duration",
        &[("error.type", str_value("upstream_unreachable"))],
        1,
    )
    .await;
    assert_eq!(
        point.attr("http.response.status_code"),
        Some(&Value::Int(502))
    );
    wait_histogram(
        &otlp,
        "http.client.request.duration",
        &[("error.type", str_value("upstream_unreachable"))],
        1,
    )
    .await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_response_timeout_is_a_504_with_error_type_on_span_and_metrics() {
    let hole = BlackHole::start().await;
    let otlp = OtlpReceiver::start().await;
    let proxy = Proxy::builder()
        .upstream(&hole)
        .otlp(&otlp)
        .env("RAGSCOPE_RESPONSE_TIMEOUT", "300ms")
        .run()
        .await;

    let started = Instant::now();
    let reply = Client::http1().get(proxy.url("/json")).await;
    let elapsed = started.elapsed();
    assert_eq!(reply.status, 504);
    assert_eq!(reply.error_type(), "upstream_timeout");
    assert!(
        elapsed < Duration::from_secs(3),
        "answered at the timeout, took {elapsed:?}"
    );
    let (server, client) = server_span_of(&otlp, &reply).await;

    assert_eq!(server.status_code, SpanStatusCode::Error);
    assert_eq!(server.str_attr("error.type"), Some("upstream_timeout"));
    assert_eq!(
        server.attr("http.response.status_code"),
        Some(&Value::Int(504))
    );
    assert!(
        server.duration() >= Duration::from_millis(290),
        "{:?}",
        server.duration()
    );
    assert_eq!(client.str_attr("error.type"), Some("upstream_timeout"));
    assert_eq!(client.status_code, SpanStatusCode::Error);

    let (_, point) = wait_histogram(
        &otlp,
        "http.server.request.duration",
        &[("error.type", str_value("upstream_timeout"))],
        1,
    )
    .await;
    assert_eq!(
        point.attr("http.response.status_code"),
        Some(&Value::Int(504))
    );
    assert!(point.sum.expect("sum") >= 0.29, "seconds: {point:?}");
    proxy.shutdown().await;
}

// ---------------------------------------------------------------------------
// 4. Metrics
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn server_request_duration_follows_semconv_without_high_cardinality() {
    let up = Upstream::start().await;
    let otlp = OtlpReceiver::start().await;
    let proxy = Proxy::builder().upstream(&up).otlp(&otlp).run().await;

    let h1 = Client::http1();
    for i in 0..3 {
        let reply = h1.get(proxy.url(&format!("/slow?delay_ms=60&n={i}"))).await;
        assert_eq!(reply.status, 200);
    }
    assert_eq!(Client::http2().get(proxy.url("/json")).await.status, 200);

    let get_200 = |version: &str| {
        vec![
            ("http.request.method", str_value("GET")),
            ("url.scheme", str_value("http")),
            ("http.response.status_code", Value::Int(200)),
            ("network.protocol.version", str_value(version)),
        ]
    };
    let (metric, h1_point) =
        wait_histogram(&otlp, "http.server.request.duration", &get_200("1.1"), 3).await;
    let (metric2, h2_point) =
        wait_histogram(&otlp, "http.server.request.duration", &get_200("2"), 1).await;
    assert_eq!(
        h1_point.count, 3,
        "one measurement per request, whatever the path or query"
    );
    assert_eq!(h2_point.count, 1);

    assert_eq!(metric.unit, "s");
    assert!(matches!(metric.data, MetricData::Histogram { .. }));
    assert_eq!(
        h1_point.explicit_bounds,
        DURATION_BUCKETS.to_vec(),
        "the advised buckets"
    );
    assert_eq!(h1_point.bucket_counts.len(), DURATION_BUCKETS.len() + 1);
    let sum = h1_point.sum.expect("sum");
    assert!(
        (0.18..3.0).contains(&sum),
        "three 60 ms requests, in seconds: {sum}"
    );
    assert_eq!(
        h1_point.bucket_counts[..4].iter().sum::<u64>(),
        0,
        "no 60 ms request lands in a bucket at or below 0.05 s: {h1_point:?}"
    );

    for m in [&metric, &metric2] {
        for point in m.histogram_points() {
            let keys = keys(&point.attributes);
            for never in NEVER_ON_METRICS {
                assert!(!keys.contains(&never), "{never} on {}: {keys:?}", m.name);
            }
        }
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn active_requests_counts_requests_in_flight() {
    let up = Upstream::start().await;
    let otlp = OtlpReceiver::start().await;
    let proxy = Proxy::builder().upstream(&up).otlp(&otlp).run().await;
    let attributes = [
        ("http.request.method", str_value("GET")),
        ("url.scheme", str_value("http")),
    ];

    // A stream that stays open for about 1.6 s.
    let url = proxy.url("/sse?events=2&gap_ms=800");
    let in_flight = tokio::spawn(async move { Client::http1().get(url).await });
    let (metric, value) = wait_sum(&otlp, "http.server.active_requests", &attributes, |v| {
        v == 1.0
    })
    .await;
    assert_eq!(value, 1.0);
    assert_eq!(metric.unit, "{request}");
    assert!(
        matches!(
            metric.data,
            MetricData::Sum {
                monotonic: false,
                ..
            }
        ),
        "an UpDownCounter: {metric:?}"
    );
    for point in metric.number_points() {
        let keys = keys(&point.attributes);
        for never in NEVER_ON_METRICS {
            assert!(
                !keys.contains(&never),
                "{never} on active_requests: {keys:?}"
            );
        }
    }

    let reply = in_flight.await.expect("request task");
    assert_eq!(reply.status, 200);
    wait_sum(&otlp, "http.server.active_requests", &attributes, |v| {
        v == 0.0
    })
    .await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn body_size_metrics_sum_the_bytes_sent() {
    let up = Upstream::start().await;
    let otlp = OtlpReceiver::start().await;
    let proxy = Proxy::builder().upstream(&up).otlp(&otlp).run().await;
    let client = Client::http1();

    let upload = client
        .send_body(Method::POST, &proxy.url("/upload"), vec![b'x'; 1000])
        .await;
    assert_eq!(upload.json()["bytes"], 1000);
    let large = client.get(proxy.url("/large?bytes=5000&chunk=1000")).await;
    assert_eq!(large.body.len(), 5000);

    let post = [("http.request.method", str_value("POST"))];
    let get = [("http.request.method", str_value("GET"))];
    let (request_size, post_in) =
        wait_histogram(&otlp, "http.server.request.body.size", &post, 1).await;
    let (response_size, post_out) =
        wait_histogram(&otlp, "http.server.response.body.size", &post, 1).await;
    let (_, get_in) = wait_histogram(&otlp, "http.server.request.body.size", &get, 1).await;
    let (_, get_out) = wait_histogram(&otlp, "http.server.response.body.size", &get, 1).await;

    assert_eq!(request_size.unit, "By");
    assert_eq!(response_size.unit, "By");
    assert_eq!((post_in.count, post_in.sum), (1, Some(1000.0)));
    assert_eq!(
        (post_out.count, post_out.sum),
        (1, Some(upload.body.len() as f64))
    );
    assert_eq!((get_in.count, get_in.sum), (1, Some(0.0)));
    assert_eq!((get_out.count, get_out.sum), (1, Some(5000.0)));

    // The same sizes are on the spans.
    let (server, _) = server_span_of(&otlp, &upload).await;
    assert_eq!(server.int_attr("http.request.body.size"), Some(1000));
    assert_eq!(
        server.int_attr("http.response.body.size"),
        Some(upload.body.len() as i64)
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn client_request_duration_measures_the_upstream_call() {
    let up = Upstream::start().await;
    let otlp = OtlpReceiver::start().await;
    let proxy = Proxy::builder().upstream(&up).otlp(&otlp).run().await;

    let reply = Client::http1().get(proxy.url("/slow?delay_ms=100")).await;
    assert_eq!(reply.status, 200);
    let (metric, point) = wait_histogram(
        &otlp,
        "http.client.request.duration",
        &[
            ("http.request.method", str_value("GET")),
            ("http.response.status_code", Value::Int(200)),
        ],
        1,
    )
    .await;
    assert_eq!(metric.unit, "s");
    assert_eq!(point.count, 1);
    assert_eq!(point.explicit_bounds, DURATION_BUCKETS.to_vec());
    let sum = point.sum.expect("sum");
    assert!(
        (0.1..3.0).contains(&sum),
        "a 100 ms upstream call, in seconds: {sum}"
    );
    let keys = keys(&point.attributes);
    for never in ["url.full", "url.path", "client.address"] {
        assert!(!keys.contains(&never), "{never}: {keys:?}");
    }

    // Semconv: server.address and server.port are Required on http.client.request.duration
    // (the upstream is one fixed address, so they cost no cardinality).
    assert_eq!(
        point.attr("server.address"),
        Some(&str_value("127.0.0.1")),
        "{keys:?}"
    );
    assert_eq!(
        point.attr("server.port"),
        Some(&Value::Int(i64::from(up.addr().port()))),
        "{keys:?}"
    );
    proxy.shutdown().await;
}

// ---------------------------------------------------------------------------
// 5. Export protocols
// ---------------------------------------------------------------------------

/// Sends a request, then checks spans and metrics arrived, every export over `protocol`.
async fn assert_exports_over(otlp: &OtlpReceiver, proxy: &Proxy, protocol: Protocol) {
    let reply = Client::http1().get(proxy.url("/json")).await;
    server_span_of(otlp, &reply).await;
    otlp.wait_for_metric("http.server.request.duration", WAIT)
        .await;

    let exports = otlp.exports();
    assert!(
        exports.iter().any(|e| e.signal == Signal::Traces),
        "{exports:?}"
    );
    assert!(
        exports.iter().any(|e| e.signal == Signal::Metrics),
        "{exports:?}"
    );
    for export in &exports {
        assert_eq!(export.protocol, protocol, "{export:?}");
        assert!(export.accepted, "the receiver accepted it: {export:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_and_metrics_are_exported_over_otlp_http() {
    let up = Upstream::start().await;
    let otlp = OtlpReceiver::start().await;
    let proxy = Proxy::builder().upstream(&up).otlp(&otlp).run().await;
    assert_exports_over(&otlp, &proxy, Protocol::HttpProtobuf).await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_and_metrics_are_exported_over_otlp_grpc() {
    let up = Upstream::start().await;
    let otlp = OtlpReceiver::start().await;
    let proxy = Proxy::builder().upstream(&up).otlp_grpc(&otlp).run().await;
    assert_exports_over(&otlp, &proxy, Protocol::Grpc).await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn traces_exporter_none_exports_metrics_only() {
    let up = Upstream::start().await;
    let otlp = OtlpReceiver::start().await;
    let proxy = Proxy::builder()
        .upstream(&up)
        .otlp(&otlp)
        .env("OTEL_TRACES_EXPORTER", "none")
        .run()
        .await;

    let client = Client::http1();
    for _ in 0..3 {
        assert_eq!(client.get(proxy.url("/json")).await.status, 200);
    }
    wait_histogram(
        &otlp,
        "http.server.request.duration",
        &[("http.request.method", str_value("GET"))],
        3,
    )
    .await;
    // Spans would have gone out every 50 ms; give the metric reader two more rounds.
    let metric_exports = || {
        otlp.exports()
            .iter()
            .filter(|e| e.signal == Signal::Metrics)
            .count()
    };
    let seen = metric_exports();
    assert!(wait_until(WAIT, || metric_exports() >= seen + 2).await);
    let traces: Vec<ExportRecord> = otlp
        .exports()
        .into_iter()
        .filter(|e| e.signal == Signal::Traces)
        .collect();
    assert!(traces.is_empty(), "OTEL_TRACES_EXPORTER=none: {traces:?}");
    assert!(otlp.spans().is_empty());
    proxy.shutdown().await;
}

// ---------------------------------------------------------------------------
// 6. A failing collector never hurts the data path
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_collector_never_hurts_the_data_path() {
    let up = Upstream::start().await;
    let dead = format!("http://{}", dead_addr());
    let proxy = Proxy::builder()
        .upstream(&up)
        .otlp_endpoint(&dead, "http/protobuf")
        .run()
        .await;
    assert_requests_unaffected(&up, &proxy).await;
    assert_shutdown_bounded(proxy).await;
}

/// A collector that accepts connections and never answers, over `protocol`: every export
/// hangs until the exporter's timeout.
async fn black_hole_case(protocol: &str) {
    let up = Upstream::start().await;
    let hole = BlackHole::start().await;
    let proxy = Proxy::builder()
        .upstream(&up)
        .otlp_endpoint(&hole.url(), protocol)
        // Each stuck export gives up after 1 s (this only shortens the shutdown's flush).
        .env("OTEL_EXPORTER_OTLP_TIMEOUT", "1000")
        .run()
        .await;
    // The first export is stuck in the black hole before the burst starts.
    assert_eq!(Client::http1().get(proxy.url("/json")).await.status, 200);
    assert!(
        wait_until(WAIT, || hole.connections_accepted() > 0).await,
        "the exporter is trying the black hole"
    );
    assert_requests_unaffected(&up, &proxy).await;
    assert_shutdown_bounded(proxy).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_black_holed_collector_never_hurts_the_data_path() {
    black_hole_case("http/protobuf").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_black_holed_grpc_collector_never_hurts_the_data_path() {
    black_hole_case("grpc").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_collector_never_hurts_the_data_path() {
    let up = Upstream::start().await;
    let otlp = OtlpReceiver::builder()
        .respond_after(Duration::from_millis(800))
        .start()
        .await;
    let proxy = Proxy::builder().upstream(&up).otlp(&otlp).run().await;
    // The first export is waiting for its answer (0.8 s) before the burst starts.
    assert_eq!(Client::http1().get(proxy.url("/json")).await.status, 200);
    otlp.wait_for_spans(|s| s.kind == SpanKind::Server, 1, WAIT)
        .await;
    assert_requests_unaffected(&up, &proxy).await;
    assert_shutdown_bounded(proxy).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_dropped_on_a_full_export_queue_are_counted() {
    let up = Upstream::start().await;
    let hole = BlackHole::start().await;
    let otlp = OtlpReceiver::start().await;
    let proxy = Proxy::builder()
        .upstream(&up)
        .otlp(&otlp)
        .env(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            format!("{}/v1/traces", hole.url()),
        )
        .env(
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            format!("{}/v1/metrics", otlp.endpoint()),
        )
        .env("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "500")
        .env("OTEL_BSP_MAX_QUEUE_SIZE", "16")
        .env("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4")
        .run()
        .await;

    let (statuses, elapsed) = burst(&proxy, 200).await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");

    // 400 spans; each 4-span batch hangs for the 0.5 s export timeout, so only the 16 queued
    // and a few batches get through: the rest are dropped, and counted.
    let queue_full = [("reason", str_value("queue_full"))];
    let (metric, dropped) = wait_sum(
        &otlp,
        "ragscope.telemetry.spans.dropped",
        &queue_full,
        |v| v >= 200.0,
    )
    .await;
    assert!(
        dropped <= 400.0,
        "never more than the spans made: {dropped}"
    );
    assert!(metric.is_monotonic_sum(), "a counter: {metric:?}");
    assert_eq!(metric.unit, "{span}");
    // The batches that did leave timed out against the black hole: also counted.
    wait_sum(
        &otlp,
        "ragscope.telemetry.spans.dropped",
        &[("reason", str_value("export_failed"))],
        |v| v >= 4.0,
    )
    .await;
    assert_shutdown_bounded(proxy).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_a_failing_collector_refuses_are_counted() {
    let up = Upstream::start().await;
    let refusing = OtlpReceiver::start().await;
    refusing.set_failing(true);
    let otlp = OtlpReceiver::start().await;
    let proxy = Proxy::builder()
        .upstream(&up)
        .otlp(&otlp)
        .env(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            format!("{}/v1/traces", refusing.endpoint()),
        )
        .env(
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            format!("{}/v1/metrics", otlp.endpoint()),
        )
        .run()
        .await;

    let client = Client::http1();
    for _ in 0..5 {
        assert_eq!(client.get(proxy.url("/json")).await.status, 200);
    }
    // Five exchanges, two spans each, all refused.
    let failed = [("reason", str_value("export_failed"))];
    let (metric, dropped) = wait_sum(&otlp, "ragscope.telemetry.spans.dropped", &failed, |v| {
        v >= 10.0
    })
    .await;
    assert_eq!(dropped, 10.0, "every refused span once: {metric:?}");
    assert!(
        metric
            .point_with(&[("reason", str_value("queue_full"))])
            .is_none()
    );
    let exports = refusing.exports();
    assert!(
        !exports.is_empty() && exports.iter().all(|e| !e.accepted),
        "{exports:?}"
    );
    assert!(
        otlp.spans().is_empty(),
        "the metrics receiver gets no spans"
    );
    proxy.shutdown().await;
}

// ---------------------------------------------------------------------------
// 7. Secrets are never recorded
// ---------------------------------------------------------------------------

/// Every place a secret could hide in what the collector received, as `(where, text)`.
fn everything_recorded(otlp: &OtlpReceiver) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut attributes = |place: String, attributes: &[(String, Value)]| {
        for (k, v) in attributes {
            out.push((format!("{place} attribute {k}"), format!("{k}={v:?}")));
        }
    };
    for span in otlp.spans() {
        let place = format!("span {} ({:?})", span.name, span.kind);
        attributes(format!("{place} resource"), &span.resource);
        attributes(place.clone(), &span.attributes);
        for event in &span.events {
            attributes(format!("{place} event {}", event.name), &event.attributes);
        }
    }
    for metric in otlp.metrics() {
        attributes(format!("metric {} resource", metric.name), &metric.resource);
        for point in metric.number_points() {
            attributes(format!("metric {}", metric.name), &point.attributes);
        }
        for point in metric.histogram_points() {
            attributes(format!("metric {}", metric.name), &point.attributes);
        }
    }
    for span in otlp.spans() {
        out.push((
            format!("span {} name/status", span.name),
            format!("{} {}", span.name, span.status_message),
        ));
        for event in &span.events {
            out.push((format!("span {} event name", span.name), event.name.clone()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_never_reach_spans_or_metrics() {
    let up = Upstream::start().await;
    let otlp = OtlpReceiver::start().await;
    let proxy = Proxy::builder().upstream(&up).otlp(&otlp).run().await;
    let secret_headers = [
        ("authorization", "Bearer sk-secret-1"),
        ("proxy-authorization", "Basic sk-secret-1b"),
        ("cookie", "session=sk-secret-2"),
        ("x-api-key", "sk-secret-3"),
        ("api-key", "sk-secret-3b"),
        ("user-agent", "telemetry-test/1.0"),
    ];
    // The upstream also answers with a Set-Cookie carrying a secret.
    let path = "/echo?api_key=sk-secret-4&set_header=set-cookie:token=sk-secret-5";

    let h1 = Client::http1()
        .get_with(&proxy.url(path), &secret_headers)
        .await;
    let h2 = Client::http2()
        .get_with(&proxy.url(path), &secret_headers)
        .await;
    let failed = Client::http1()
        .get_with(
            &proxy.url("/json?status=500&token=sk-secret-6"),
            &secret_headers,
        )
        .await;
    assert_eq!(
        (
            h1.status.as_u16(),
            h2.status.as_u16(),
            failed.status.as_u16()
        ),
        (200, 200, 500)
    );
    assert!(
        h1.header("set-cookie")
            .is_some_and(|c| c.contains("sk-secret-5")),
        "the test is real"
    );
    assert_eq!(
        up.last_request().header("authorization"),
        Some("Bearer sk-secret-1"),
        "forwarded, not recorded"
    );

    for reply in [&h1, &h2, &failed] {
        let (server, client) = server_span_of(&otlp, reply).await;
        assert!(
            server
                .str_attr("url.query")
                .is_some_and(|q| q.contains("=REDACTED")),
            "{server:#?}"
        );
        assert!(
            client
                .str_attr("url.full")
                .is_some_and(|u| u.contains("=REDACTED")),
            "{client:#?}"
        );
    }
    // Three exchanges measured (two 200s over HTTP/1.1 and HTTP/2, one 500).
    otlp.wait_for_metric_where(
        "http.server.request.duration",
        |m| m.histogram_points().iter().map(|p| p.count).sum::<u64>() >= 3,
        WAIT,
    )
    .await;

    let leaks: Vec<(String, String)> = everything_recorded(&otlp)
        .into_iter()
        .filter(|(_, text)| text.contains("sk-secret"))
        .collect();
    assert!(leaks.is_empty(), "secrets recorded: {leaks:#?}");
    // And anywhere else in what was received, whatever its shape.
    assert!(!format!("{:?}{:?}", otlp.spans(), otlp.metrics()).contains("sk-secret"));
    proxy.shutdown().await;
}

// ---------------------------------------------------------------------------
// 8. Span timing
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_streamed_response_span_ends_with_the_body_not_the_headers() {
    let up = Upstream::start().await;
    let otlp = OtlpReceiver::start().await;
    let proxy = Proxy::builder().upstream(&up).otlp(&otlp).run().await;

    let reply = Client::http1()
        .get(proxy.url("/sse?events=4&gap_ms=150"))
        .await;
    assert_eq!(reply.status, 200);
    assert!(
        reply.body.ends_with(b"data: [DONE]\n\n"),
        "{:?}",
        reply.body
    );
    let (server, client) = server_span_of(&otlp, &reply).await;

    // Four 150 ms gaps before the last event: the headers came at once, the body 600 ms later.
    assert!(
        server.duration() >= Duration::from_millis(590),
        "SERVER span {:?}",
        server.duration()
    );
    assert!(
        client.duration() >= Duration::from_millis(590),
        "CLIENT span {:?}",
        client.duration()
    );
    assert_eq!(server.status_code, SpanStatusCode::Unset);
    assert!(
        !server.has_attr("ragscope.cancelled"),
        "a complete response is not a cancel"
    );

    let (_, point) = wait_histogram(&otlp, "http.server.request.duration", &[], 1).await;
    assert!(
        point.sum.expect("sum") >= 0.59,
        "the metric measures to the last byte too: {point:?}"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_gone_mid_stream_is_a_cancel_not_an_error() {
    let up = Upstream::start().await;
    let otlp = OtlpReceiver::start().await;
    let proxy = Proxy::builder().upstream(&up).otlp(&otlp).run().await;

    // A 5 s stream; the client reads the first event and hangs up.
    let mut stream = tokio::net::TcpStream::connect(proxy.addr())
        .await
        .expect("connect");
    stream
        .write_all(b"GET /sse?events=50&gap_ms=100 HTTP/1.1\r\nHost: rag.example\r\n\r\n")
        .await
        .expect("write");
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("data: {\"i\":0}") {
        let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("the first event arrives")
            .expect("read");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    drop(stream);

    let spans = otlp
        .wait_for_spans(
            |s| s.str_attr("url.path") == Some("/sse") || s.kind == SpanKind::Client,
            2,
            WAIT,
        )
        .await;
    let server = spans
        .iter()
        .find(|s| s.kind == SpanKind::Server)
        .expect("SERVER span")
        .clone();
    let client = spans
        .iter()
        .find(|s| s.kind == SpanKind::Client)
        .expect("CLIENT span")
        .clone();
    assert_eq!(
        server.bool_attr("ragscope.cancelled"),
        Some(true),
        "{server:#?}"
    );
    assert_eq!(
        server.status_code,
        SpanStatusCode::Unset,
        "a cancel is not an error"
    );
    assert!(!server.has_attr("error.type"), "{server:#?}");
    assert_eq!(
        server.attr("http.response.status_code"),
        Some(&Value::Int(200)),
        "headers were sent"
    );
    assert!(
        server.duration() < Duration::from_secs(2),
        "ended when the client left, not with the 5 s stream: {:?}",
        server.duration()
    );
    assert_eq!(client.parent_span_id, server.span_id);
    assert_ne!(client.status_code, SpanStatusCode::Error, "{client:#?}");
    assert!(
        up.wait_aborted(1, WAIT).await,
        "the upstream stream is released too"
    );

    wait_sum(
        &otlp,
        "http.server.active_requests",
        &[("http.request.method", str_value("GET"))],
        |v| v == 0.0,
    )
    .await;
    proxy.shutdown().await;
}
