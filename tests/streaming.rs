//! Streaming: SSE events pass through as the upstream sends them, long streams are never cut
//! while they keep talking, a silent one is cut after the idle timeout, and a client that goes
//! away closes the upstream request at once.

mod support;

use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use support::*;

/// Reads a streaming body, returning each non-empty data frame with the time it arrived.
async fn frames_with_times(body: &mut hyper::body::Incoming) -> Vec<(Instant, bytes::Bytes)> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("stream completes cleanly");
        if let Ok(data) = frame.into_data()
            && !data.is_empty()
        {
            out.push((Instant::now(), data));
        }
    }
    out
}

async fn sse_arrives_spaced(client: Client) {
    let up = Upstream::start().await;
    let proxy = Proxy::builder().upstream(&up).run().await;
    let response = client
        .get_streaming(proxy.url("/sse?events=5&gap_ms=150"))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    let frames = frames_with_times(&mut body).await;

    let text: String = frames
        .iter()
        .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
        .collect();
    assert_eq!(
        text.matches("data: ").count(),
        6,
        "five events and [DONE]: {text}"
    );
    assert!(text.ends_with("data: [DONE]\n\n"));
    // Each event is its own frame, arriving about when the upstream sent it: not bunched.
    assert!(
        frames.len() >= 5,
        "events were coalesced: {} frames",
        frames.len()
    );
    let gaps: Vec<Duration> = frames.windows(2).take(4).map(|w| w[1].0 - w[0].0).collect();
    for gap in &gaps {
        assert!(
            *gap >= Duration::from_millis(100),
            "events bunched together: gaps {gaps:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sse_events_arrive_spaced_over_http1() {
    sse_arrives_spaced(Client::http1()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sse_events_arrive_spaced_over_http2() {
    sse_arrives_spaced(Client::http2()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn first_event_is_not_held_back() {
    let up = Upstream::start().await;
    let proxy = Proxy::builder().upstream(&up).run().await;
    // Direct to the upstream, then through the proxy: time to the first event must match.
    let direct = time_to_first_frame(&format!("{}/sse?events=2&gap_ms=200", up.url())).await;
    let proxied = time_to_first_frame(&proxy.url("/sse?events=2&gap_ms=200")).await;
    assert!(
        proxied < direct + Duration::from_millis(100),
        "proxy added {:?} to the first event (direct {direct:?}, proxied {proxied:?})",
        proxied.saturating_sub(direct)
    );
}

async fn time_to_first_frame(url: &str) -> Duration {
    let started = Instant::now();
    let response = Client::http1().get_streaming(url).await;
    let mut body = response.into_body();
    loop {
        let frame = body.frame().await.expect("a frame").expect("no error");
        if frame.data_ref().is_some_and(|d| !d.is_empty()) {
            return started.elapsed();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_long_stream_that_keeps_talking_is_never_cut() {
    let up = Upstream::start().await;
    // Idle timeout shorter than the whole stream, longer than any gap in it.
    let proxy = Proxy::builder()
        .upstream(&up)
        .env("RAGSCOPE_IDLE_TIMEOUT", "400ms")
        .env("RAGSCOPE_RESPONSE_TIMEOUT", "400ms")
        .run()
        .await;
    let started = Instant::now();
    let reply = Client::http1()
        .get(proxy.url("/sse?events=12&gap_ms=150"))
        .await;
    assert!(started.elapsed() >= Duration::from_millis(1500));
    let text = String::from_utf8_lossy(&reply.body);
    assert_eq!(text.matches("data: ").count(), 13, "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_stream_is_ended_after_the_idle_timeout() {
    let up = Upstream::start().await;
    let proxy = Proxy::builder()
        .upstream(&up)
        .env("RAGSCOPE_IDLE_TIMEOUT", "300ms")
        .run()
        .await;
    let response = Client::http1()
        .get_streaming(proxy.url("/stall?after_bytes=10"))
        .await;
    assert_eq!(response.status(), 200, "headers were already on their way");
    let started = Instant::now();
    let mut body = response.into_body();
    let mut received = 0;
    let ended_with_error = loop {
        match tokio::time::timeout(Duration::from_secs(5), body.frame()).await {
            Err(_) => panic!("the stalled stream was not ended"),
            Ok(None) => break false,
            Ok(Some(Err(_))) => break true,
            Ok(Some(Ok(frame))) => received += frame.data_ref().map_or(0, |d| d.len()),
        }
    };
    assert_eq!(received, 10, "what the upstream sent arrived");
    assert!(
        ended_with_error,
        "a cut stream must look cut (no clean end), so clients do not trust it"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(
        up.wait_aborted(1, Duration::from_secs(2)).await,
        "the upstream request is dropped too"
    );
}

async fn disconnect_closes_upstream(client: Client) {
    let up = Upstream::start().await;
    let proxy = Proxy::builder().upstream(&up).run().await;
    let response = client
        .get_streaming(proxy.url("/sse?events=50&gap_ms=100"))
        .await;
    let mut body = response.into_body();
    let first = body.frame().await.expect("first event").expect("ok");
    assert!(first.data_ref().is_some());
    // The client goes away mid-stream.
    drop(body);
    drop(client);
    assert!(
        up.wait_aborted(1, Duration::from_secs(2)).await,
        "the upstream stream must be dropped at once when the client leaves"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn client_disconnect_mid_stream_drops_the_upstream_request_http1() {
    disconnect_closes_upstream(Client::http1()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn client_disconnect_mid_stream_drops_the_upstream_request_http2() {
    disconnect_closes_upstream(Client::http2()).await;
}
