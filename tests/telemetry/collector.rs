//! A dead, black-holed, slow or failing collector never hurts the data path, and what it costs
//! (spans dropped or refused) is counted.

use super::*;

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
