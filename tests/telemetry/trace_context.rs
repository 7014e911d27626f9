//! Trace context: continuing a caller's trace, refusing invalid ones, injecting ours,
//! `traceresponse`, and the `OTEL_PROPAGATORS` / `OTEL_SDK_DISABLED` switches.

use super::*;

/// A well-formed W3C `traceparent`, sampled.
const CALLER_TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN_ID: &str = "00f067aa0ba902b7";
const CALLER_TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const CALLER_TRACESTATE: &str = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";

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
