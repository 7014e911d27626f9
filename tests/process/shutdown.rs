//! Shutdown: SIGTERM and SIGINT drain live streams, the drain timeout bounds it, and a
//! black-holed collector cannot hold it.

use super::*;

// ---------------------------------------------------------------------------------------------
// Shutdown
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_a_live_stream_then_exits_zero() {
    let up = Upstream::start().await;
    let mut ragscope = Proxy::builder().upstream(&up).spawn(); // drain timeout 5s
    let (proxy, admin) = ragscope.wait_serving().await;
    let admin = admin.expect("admin listener is on");

    let mut stream = SseReader::open(&format!("http://{proxy}/sse?events=10&gap_ms=200")).await;
    stream.read_until("data: {\"i\":0}").await;

    let signalled = Instant::now();
    ragscope.signal("TERM");

    // The listener closes at once: a new client is refused, not queued.
    let refused = wait_until_async(Duration::from_secs(1), || async {
        tokio::net::TcpStream::connect(proxy).await.is_err()
    })
    .await;
    assert!(refused, "new connections are refused shortly after SIGTERM");
    let ready = http_status(admin, "/readyz").await;
    assert!(
        ready.is_none_or(|s| s == 503),
        "readyz while draining: {ready:?}"
    );

    // The stream in flight finishes whole.
    let body = stream
        .read_to_end()
        .await
        .expect("the drained stream ends cleanly");
    for i in 0..10 {
        assert!(
            body.contains(&format!("data: {{\"i\":{i}}}")),
            "event {i} missing: {body}"
        );
    }
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");

    let status = ragscope
        .wait_exit(Duration::from_secs(5 + 3))
        .await
        .expect("ragscope exits within the drain timeout and a little");
    assert!(status.success(), "{status}");
    assert!(signalled.elapsed() < Duration::from_secs(8));
    ragscope.wait_output_closed(Duration::from_secs(5)).await;
    let sse_lines = ragscope.access_log();
    let sse_line = sse_lines
        .iter()
        .find(|l| l["path"] == "/sse")
        .expect("the drained request is logged");
    assert_eq!(sse_line["status"], 200);
    assert_eq!(sse_line["cancelled"], false);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_drain_timeout_bounds_shutdown_and_cuts_what_is_left() {
    let up = Upstream::start().await;
    let mut ragscope = Proxy::builder()
        .upstream(&up)
        .env("RAGSCOPE_DRAIN_TIMEOUT", "1s")
        .spawn();
    let (proxy, _) = ragscope.wait_serving().await;

    // 25 events 200 ms apart: five seconds, far past the drain timeout.
    let mut stream = SseReader::open(&format!("http://{proxy}/sse?events=25&gap_ms=200")).await;
    stream.read_until("data: {\"i\":0}").await;
    let signalled = Instant::now();
    ragscope.signal("TERM");

    let status = ragscope
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("ragscope exits after the drain timeout");
    let took = signalled.elapsed();
    assert!(status.success(), "{status}");
    assert!(
        took >= Duration::from_millis(900),
        "the stream got its drain time: {took:?}"
    );
    assert!(
        took < Duration::from_secs(3),
        "shutdown is bounded by the drain timeout: {took:?}"
    );

    let text = match stream.read_to_end().await {
        Ok(all) | Err(all) => all,
    };
    assert!(!text.contains("[DONE]"), "the stream was cut: {text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigint_drains_like_sigterm() {
    let up = Upstream::start().await;
    let mut ragscope = Proxy::builder().upstream(&up).spawn();
    let (proxy, _) = ragscope.wait_serving().await;

    let mut stream = SseReader::open(&format!("http://{proxy}/sse?events=4&gap_ms=150")).await;
    stream.read_until("data: {\"i\":0}").await;
    ragscope.signal("INT");

    let body = stream.read_to_end().await.expect("the stream ends cleanly");
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    let status = ragscope
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("ragscope exits on SIGINT");
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_black_holed_collector_cannot_hold_shutdown() {
    let up = Upstream::start().await;
    let collector = BlackHole::start().await;
    let mut ragscope = Proxy::builder()
        .upstream(&up)
        .otlp_endpoint(&collector.url(), "http/protobuf")
        // The default export timeout: the shutdown bound must hold without help from it.
        .env("OTEL_EXPORTER_OTLP_TIMEOUT", "10000")
        .spawn();
    let (proxy, _) = ragscope.wait_serving().await;

    let client = Client::http1();
    for _ in 0..5 {
        assert_eq!(client.get(format!("http://{proxy}/json")).await.status, 200);
    }
    assert!(
        wait_until(Duration::from_secs(5), || collector.connections_accepted()
            >= 1)
        .await,
        "the exporter tried the collector"
    );

    let signalled = Instant::now();
    ragscope.signal("TERM");
    let status = ragscope.wait_exit(Duration::from_secs(15)).await;
    let took = signalled.elapsed();
    let status = status.unwrap_or_else(|| {
        panic!(
            "still running {took:?} after SIGTERM; stdout: {:#?}",
            ragscope.lines()
        )
    });
    assert!(status.success(), "{status}");
    // The drain is instant (nothing in flight); telemetry gets its 5 s flush budget
    // (TELEMETRY_FLUSH_TIMEOUT in src/server.rs), and nothing may outlast it.
    assert!(
        took < Duration::from_secs(8),
        "exit took {took:?}; stdout: {:#?}",
        ragscope.lines()
    );
}

/// The status of `GET path` on a fresh connection, or `None` when the connection is refused
/// or closed without an answer.
async fn http_status(addr: std::net::SocketAddr, path: &str) -> Option<u16> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.ok()?;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    let head = String::from_utf8_lossy(&out);
    head.split_whitespace().nth(1)?.parse().ok()
}

/// A streaming response read incrementally.
struct SseReader {
    body: hyper::body::Incoming,
    text: String,
}

impl SseReader {
    async fn open(url: &str) -> SseReader {
        let res = Client::http1().get_streaming(url).await;
        assert_eq!(res.status(), 200, "{url}");
        SseReader {
            body: res.into_body(),
            text: String::new(),
        }
    }

    /// Reads until `needle` has arrived (within 5 s).
    async fn read_until(&mut self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.text.contains(needle) {
            assert!(
                Instant::now() < deadline,
                "{needle:?} never arrived: {}",
                self.text
            );
            match tokio::time::timeout(Duration::from_secs(5), self.body.frame()).await {
                Ok(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        self.text.push_str(&String::from_utf8_lossy(data));
                    }
                }
                other => panic!(
                    "stream ended before {needle:?}: {other:?}; got {}",
                    self.text
                ),
            }
        }
    }

    /// Reads to the end: `Ok(all text)` when the body completed, `Err(text so far)` when it
    /// broke off or stalled for 10 s.
    async fn read_to_end(mut self) -> Result<String, String> {
        loop {
            match tokio::time::timeout(Duration::from_secs(10), self.body.frame()).await {
                Ok(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        self.text.push_str(&String::from_utf8_lossy(data));
                    }
                }
                Ok(None) => return Ok(self.text),
                Ok(Some(Err(_))) | Err(_) => return Err(self.text),
            }
        }
    }
}
