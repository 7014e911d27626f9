//! The drain timeout closes what is left (issue 11): after SIGTERM, streams still open at
//! `RAGSCOPE_DRAIN_TIMEOUT` are closed, their requests are recorded as cancelled by shutdown
//! (on the span and in a log line) and their spans reach the collector before the process
//! exits, within the drain timeout plus the telemetry flush bound.

mod support;

use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use support::*;

const WAIT: Duration = Duration::from_secs(10);
/// `RAGSCOPE_DRAIN_TIMEOUT` of the test.
const DRAIN: Duration = Duration::from_secs(1);
/// The server's bound on the telemetry flush at exit (`TELEMETRY_FLUSH_TIMEOUT`).
const FLUSH: Duration = Duration::from_secs(5);

/// Opens a stream that sends a few bytes and then nothing, forever, and waits for its first
/// bytes: the request is then in flight for sure.
async fn open_stall(client: &Client, url: &str) -> hyper::body::Incoming {
    let response = client.get_streaming(url).await;
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let first = tokio::time::timeout(WAIT, body.frame())
        .await
        .expect("the first bytes within the deadline")
        .expect("a frame")
        .expect("not an error");
    assert!(first.data_ref().is_some_and(|d| !d.is_empty()));
    body
}

/// Reads `body` until it ends or fails; true when it ended (either way) within the deadline.
async fn ends(mut body: hyper::body::Incoming) -> bool {
    tokio::time::timeout(WAIT, async {
        while let Some(Ok(_)) = body.frame().await {}
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn streams_open_at_the_drain_timeout_are_closed_recorded_as_shutdown_and_flushed() {
    let up = Upstream::start().await;
    let otlp = OtlpReceiver::start().await;
    let mut ragscope = Proxy::builder()
        .upstream(&up)
        .otlp(&otlp)
        .env("RAGSCOPE_DRAIN_TIMEOUT", "1s")
        .env("RAGSCOPE_WORKERS", "2")
        // Far past the drain timeout: only the drain can end these streams.
        .env("OTEL_BSP_SCHEDULE_DELAY", "60000")
        .spawn();
    let (proxy, _) = ragscope.wait_serving().await;

    // One HTTP/1.1 stream (its body lives in the connection task) and one HTTP/2 stream (its
    // body lives in a task of its own that hyper spawned).
    let h1 = open_stall(
        &Client::http1(),
        &format!("http://{proxy}/stall?after_bytes=16"),
    )
    .await;
    let h2 = open_stall(
        &Client::http2(),
        &format!("http://{proxy}/stall?after_bytes=16&h2"),
    )
    .await;

    let signalled = Instant::now();
    ragscope.signal("TERM");
    let (h1_ended, h2_ended) = tokio::join!(ends(h1), ends(h2));
    assert!(h1_ended && h2_ended, "both streams are closed by the drain");

    let status = ragscope
        .wait_exit(DRAIN + FLUSH + Duration::from_secs(2))
        .await
        .expect("ragscope exits within the drain timeout plus the flush bound");
    let took = signalled.elapsed();
    assert!(status.success(), "{status}");
    assert!(took >= DRAIN - Duration::from_millis(100), "{took:?}");

    // Both spans were exported before the exit (the batch delay alone would hold them a
    // minute): the flush came after the streams were recorded.
    let spans = otlp
        .wait_for_spans(
            |s| s.kind == SpanKind::Server && s.str_attr("url.path") == Some("/stall"),
            2,
            Duration::from_secs(1),
        )
        .await;
    for span in &spans {
        assert_eq!(span.bool_attr("ragscope.cancelled"), Some(true), "{span:?}");
        assert_eq!(
            span.str_attr("ragscope.cancelled_by"),
            Some("shutdown"),
            "{span:?}"
        );
        assert_eq!(span.status_code, SpanStatusCode::Unset, "not an error");
    }
    let versions: Vec<_> = spans
        .iter()
        .filter_map(|s| s.str_attr("network.protocol.version"))
        .collect();
    assert!(
        versions.contains(&"1.1") && versions.contains(&"2"),
        "{versions:?}"
    );

    ragscope.wait_output_closed(WAIT).await;
    let lines = ragscope.lines();
    let closing = lines
        .iter()
        .filter(|l| l.contains("request cancelled by shutdown"))
        .count();
    assert_eq!(closing, 2, "one log line per closed request: {lines:#?}");
    assert!(
        lines.iter().any(|l| l.contains("drain timeout reached")),
        "{lines:#?}"
    );
    let access: Vec<_> = ragscope
        .access_log()
        .into_iter()
        .filter(|l| l["path"] == "/stall")
        .collect();
    assert_eq!(access.len(), 2, "{access:?}");
    assert!(access.iter().all(|l| l["cancelled"] == true), "{access:?}");
}
