//! Export over OTLP/HTTP and OTLP/gRPC, and `OTEL_TRACES_EXPORTER=none`.

use super::*;

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
