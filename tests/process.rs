//! The real `ragscope` binary as an operator meets it: start-up refuses bad configuration, every
//! request leaves one access-log line (never a secret), the admin probes tell the truth, SIGTERM
//! and SIGINT drain gracefully within a bound whatever the collector does, and large bodies
//! stream through without growing the process.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use http_body_util::{BodyExt, Full};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---------------------------------------------------------------------------------------------
// Start-up
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_setting_stops_start_up_with_one_line_and_exit_code_2() {
    for (var, value, accepted_form) in [
        ("RAGSCOPE_CONNECT_TIMEOUT", "5x", "250ms"),
        ("RAGSCOPE_LISTEN", "nope", "0.0.0.0:8080"),
        ("RAGSCOPE_UPSTREAM", "ftp://x", "http://"),
        ("RAGSCOPE_MAX_REQUEST_BODY", "lots", "16MiB"),
        ("RAGSCOPE_LOG_FORMAT", "xml", "json or text"),
        ("RAGSCOPE_TAIL_SAMPLING", "slow=fast", "errors, refused"),
    ] {
        let mut ragscope = Proxy::builder().env(var, value).spawn();
        let started = Instant::now();
        let status = ragscope
            .wait_exit(Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("{var}={value}: ragscope kept running"));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{var}: took {:?} to give up",
            started.elapsed()
        );
        assert_eq!(status.code(), Some(2), "{var}={value}: {status}");

        ragscope.wait_output_closed(Duration::from_secs(5)).await;
        let stderr = ragscope.stderr_lines();
        assert_eq!(
            stderr.len(),
            1,
            "{var}: exactly one line on stderr: {stderr:#?}"
        );
        let line = &stderr[0];
        assert!(line.contains(var), "the line names the variable: {line}");
        assert!(
            line.contains(&format!("{value:?}")),
            "the line shows the bad value: {line}"
        );
        assert!(
            line.contains(accepted_form),
            "the line shows the accepted form: {line}"
        );
        assert!(
            ragscope.lines().is_empty(),
            "{var}: nothing else is printed: {:?}",
            ragscope.lines()
        );
    }
}

/// mimalloc madvises its arenas for transparent huge pages, which makes RSS move in 2 MiB steps;
/// the binary turns them off for its process unless the operator set mimalloc's own switch.
#[tokio::test(flavor = "multi_thread")]
async fn transparent_huge_pages_are_off_unless_the_operator_asks_for_them() {
    let thp_enabled = |pid: u32| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("THP_enabled:"))
            .map(|v| v.trim().to_string())
    };
    let up = Upstream::start().await;
    for (setting, expected) in [(None, "0"), (Some("1"), "1")] {
        let mut builder = Proxy::builder()
            .upstream(&up)
            .env("RAGSCOPE_LISTEN", "127.0.0.1:0");
        if let Some(v) = setting {
            builder = builder.env("MIMALLOC_ALLOW_THP", v);
        }
        let ragscope = builder.spawn();
        ragscope.wait_serving().await;
        match thp_enabled(ragscope.pid()) {
            // Kernels before 6.x do not report it: nothing to check there.
            None => return,
            Some(v) => assert_eq!(v, expected, "MIMALLOC_ALLOW_THP={setting:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_otel_setting_is_warned_about_and_start_up_goes_on() {
    let up = Upstream::start().await;
    let ragscope = Proxy::builder()
        .upstream(&up)
        .env("OTEL_TRACES_SAMPLER", "bogus")
        .spawn();
    let (proxy, _) = ragscope.wait_serving().await;

    let warning = ragscope
        .lines()
        .into_iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
        .find(|v| {
            v["level"] == "WARN"
                && v["message"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("OTEL_TRACES_SAMPLER")
        })
        .unwrap_or_else(|| {
            panic!(
                "a warning names OTEL_TRACES_SAMPLER: {:#?}",
                ragscope.lines()
            )
        });
    assert!(
        warning["message"]
            .as_str()
            .unwrap_or_default()
            .contains("bogus"),
        "{warning}"
    );

    let reply = Client::http1().get(format!("http://{proxy}/json")).await;
    assert_eq!(
        reply.status, 200,
        "the proxy serves with the default sampler"
    );
}

// ---------------------------------------------------------------------------------------------
// Logs
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn every_request_leaves_one_json_access_line_tied_to_its_trace() {
    let up = Upstream::start().await;
    let otlp = OtlpReceiver::start().await;
    let ragscope = Proxy::builder().upstream(&up).otlp(&otlp).spawn();
    let (proxy, _) = ragscope.wait_serving().await;
    let client = Client::http1();

    let get = client.get(format!("http://{proxy}/echo?x=1")).await;
    let post = client
        .request(
            request(Method::POST, &format!("http://{proxy}/upload"))
                .body(Full::new(Bytes::from(vec![7u8; 1000])))
                .expect("request"),
        )
        .await;
    assert_eq!((get.status.as_u16(), post.status.as_u16()), (200, 200));

    assert!(
        wait_until(Duration::from_secs(5), || ragscope.access_log().len() >= 2).await,
        "two access lines: {:#?}",
        ragscope.lines()
    );
    for (reply, method, path, request_bytes) in
        [(&get, "GET", "/echo", 0), (&post, "POST", "/upload", 1000)]
    {
        let traceresponse = reply.header("traceresponse").expect("traceresponse header");
        let parts: Vec<&str> = traceresponse.split('-').collect();
        assert_eq!(parts.len(), 4, "{traceresponse}");
        let (trace_id, span_id) = (parts[1], parts[2]);

        let lines: Vec<_> = ragscope
            .access_log()
            .into_iter()
            .filter(|l| l["trace_id"] == trace_id)
            .collect();
        assert_eq!(
            lines.len(),
            1,
            "one line for {method} {path}: {:#?}",
            ragscope.access_log()
        );
        let line = &lines[0];
        assert!(
            is_valid_id(line["trace_id"].as_str().unwrap_or_default(), 32),
            "{line}"
        );
        assert!(
            is_valid_id(line["span_id"].as_str().unwrap_or_default(), 16),
            "{line}"
        );
        assert_eq!(
            line["span_id"], span_id,
            "the line's span is the server span of traceresponse"
        );
        assert_eq!(line["method"], method);
        assert_eq!(
            line["path"], path,
            "the path alone: query values stay out of logs"
        );
        assert_eq!(line["status"], 200);
        assert!(
            line["duration_ms"].as_f64().is_some_and(|d| d >= 0.0),
            "{line}"
        );
        assert_eq!(line["request_bytes"], request_bytes);
        assert_eq!(line["response_bytes"], reply.body.len() as u64);
    }
    assert_eq!(
        ragscope.access_log().len(),
        2,
        "one line per request, no more"
    );
    for line in ragscope.lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(&line).is_ok(),
            "every stdout line is JSON: {line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn text_log_format_gives_plain_human_lines() {
    let up = Upstream::start().await;
    let (listen, admin) = (dead_addr(), dead_addr());
    let ragscope = Proxy::builder()
        .upstream(&up)
        .env("RAGSCOPE_LISTEN", listen.to_string())
        .env("RAGSCOPE_ADMIN_LISTEN", admin.to_string())
        .env("RAGSCOPE_LOG_FORMAT", "text")
        .spawn();
    assert!(
        wait_until(Duration::from_secs(10), || ragscope
            .lines()
            .iter()
            .any(|l| l.contains("ragscope is serving")))
        .await,
        "ragscope starts: {:?}",
        ragscope.stderr_lines()
    );
    let reply = Client::http1().get(format!("http://{listen}/echo")).await;
    assert_eq!(reply.status, 200);
    assert!(
        wait_until(Duration::from_secs(5), || ragscope
            .lines()
            .iter()
            .any(|l| l.contains("ragscope::access")))
        .await,
        "an access line: {:#?}",
        ragscope.lines()
    );

    let lines = ragscope.lines();
    let access = lines
        .iter()
        .find(|l| l.contains("ragscope::access"))
        .expect("access line");
    assert!(
        access.contains("/echo") && access.contains("200"),
        "{access}"
    );
    for line in &lines {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_err(),
            "not JSON: {line}"
        );
        // stdout is a pipe here, as under systemd, Docker or Kubernetes: colour codes would
        // end up verbatim in every log store.
        assert!(
            !line.contains('\u{1b}'),
            "no ANSI escape codes when stdout is not a terminal: {line:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_never_reach_the_logs_even_at_debug() {
    let up = Upstream::start().await;
    let otlp = OtlpReceiver::start().await;
    let ragscope = Proxy::builder()
        .upstream(&up)
        .otlp(&otlp)
        .env("RAGSCOPE_LOG", "debug")
        .spawn();
    let (proxy, _) = ragscope.wait_serving().await;
    let client = Client::http1();

    for (name, value) in [
        ("authorization", "Bearer sk-secret-1"),
        ("cookie", "s=sk-secret-2"),
        ("x-api-key", "sk-secret-3"),
        ("proxy-authorization", "Basic sk-secret-5"),
    ] {
        let reply = client
            .request(
                request(Method::GET, &format!("http://{proxy}/echo"))
                    .header(name, value)
                    .body(Full::default())
                    .expect("request"),
            )
            .await;
        assert_eq!(reply.status, 200, "{name}");
    }
    let reply = client
        .get(format!("http://{proxy}/echo?token=sk-secret-4&q=rag"))
        .await;
    assert_eq!(reply.status, 200);
    let reply = client
        .get(format!("http://{proxy}/echo/sk-secret-6?token=sk-secret-7"))
        .await;
    assert_eq!(reply.status, 404);

    assert!(
        wait_until(Duration::from_secs(5), || ragscope.access_log().len() >= 6).await,
        "six access lines: {:#?}",
        ragscope.lines()
    );
    // The exporters must have run (and logged, at debug) with these requests' data before
    // the logs are searched: wait for the collector to hold all six server spans, then for
    // two more successful exports to be logged, so at least one metrics export of these
    // requests and the span export's own log lines are in.
    otlp.wait_for_spans(|s| s.kind == SpanKind::Server, 6, Duration::from_secs(5))
        .await;
    let exports_logged = || {
        ragscope
            .lines()
            .iter()
            .filter(|l| l.contains("\"HttpClient.ExportSucceeded\""))
            .count()
    };
    let before = exports_logged();
    assert!(
        wait_until(Duration::from_secs(5), || exports_logged() >= before + 2).await,
        "the exporters logged no export after the requests: {:#?}",
        ragscope.lines()
    );
    assert!(
        !otlp.metrics().is_empty(),
        "metrics were exported, so their logging was exercised"
    );

    for line in ragscope
        .lines()
        .iter()
        .chain(ragscope.stderr_lines().iter())
    {
        // The path itself is not a secret store: only header and query values are protected.
        let line = line.replace("/echo/sk-secret-6", "/echo/PATH");
        assert!(!line.contains("sk-secret"), "a secret was logged: {line}");
    }
    for span in otlp.spans() {
        for (key, value) in &span.attributes {
            let value = format!("{value:?}").replace("/echo/sk-secret-6", "/echo/PATH");
            assert!(
                !value.contains("sk-secret"),
                "a secret in span attribute {key}: {value}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn connection_level_errors_are_logged_since_they_have_no_request_span() {
    let up = Upstream::start().await;
    let ragscope = Proxy::builder()
        .upstream(&up)
        .env("RAGSCOPE_MAX_HEADER_BYTES", "8KiB")
        .spawn();
    let (proxy, _) = ragscope.wait_serving().await;

    let malformed = raw_exchange(proxy, b"THIS IS NOT HTTP\r\n\r\n", Duration::from_secs(5)).await;
    assert!(malformed.starts_with("HTTP/1.1 400"), "{malformed}");
    let huge = format!(
        "GET /json HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    let too_large = raw_exchange(proxy, huge.as_bytes(), Duration::from_secs(5)).await;
    assert!(too_large.starts_with("HTTP/1.1 431"), "{too_large}");

    let connection_errors = || {
        ragscope
            .lines()
            .into_iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
            .filter(|v| v["target"] == "ragscope::connection")
            .collect::<Vec<_>>()
    };
    assert!(
        wait_until(Duration::from_secs(5), || connection_errors().len() >= 2).await,
        "two connection-error lines: {:#?}",
        ragscope.lines()
    );
    let kinds: Vec<String> = connection_errors()
        .iter()
        .map(|v| v["error_type"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(kinds.iter().any(|k| k == "malformed_request"), "{kinds:?}");
    assert!(
        kinds.iter().any(|k| k == "request_header_too_large"),
        "{kinds:?}"
    );
    assert!(
        ragscope.access_log().is_empty(),
        "no request existed, so no access line"
    );
    assert_eq!(up.request_count(), 0);
}

// ---------------------------------------------------------------------------------------------
// Admin
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn admin_probes_tell_liveness_readiness_and_nothing_else() {
    let up = Upstream::start().await;
    let ragscope = Proxy::builder().upstream(&up).spawn();
    let (_, admin) = ragscope.wait_serving().await;
    let admin = admin.expect("admin listener is on");
    let client = Client::http1();

    assert_eq!(
        client.get(format!("http://{admin}/healthz")).await.status,
        200
    );
    let ready = client.get(format!("http://{admin}/readyz")).await;
    assert_eq!(ready.status, 200, "the upstream is live: {:?}", ready.body);
    assert_eq!(client.get(format!("http://{admin}/nope")).await.status, 404);

    let dead = dead_addr();
    let orphan = Proxy::builder().upstream(&dead).spawn();
    let (_, admin) = orphan.wait_serving().await;
    let admin = admin.expect("admin listener is on");
    assert_eq!(
        client.get(format!("http://{admin}/healthz")).await.status,
        200,
        "alive all the same"
    );
    let ready = client.get(format!("http://{admin}/readyz")).await;
    assert_eq!(ready.status, 503, "the upstream refuses: {:?}", ready.body);
}

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

// ---------------------------------------------------------------------------------------------
// Memory
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn large_bodies_stream_through_without_growing_the_process() {
    const SIZE: usize = 64 << 20;
    let up = Upstream::start().await;
    let mut ragscope = Proxy::builder()
        .upstream(&up)
        .env("RAGSCOPE_MAX_REQUEST_BODY", "128MiB")
        .spawn();
    let (proxy, _) = ragscope.wait_serving().await;
    let client = Client::http1();

    // Warm up: pools, buffers and the allocator's arenas exist before the baseline.
    for _ in 0..2 {
        let reply = client
            .request(
                request(Method::POST, &format!("http://{proxy}/upload"))
                    .body(Full::new(Bytes::from(vec![1u8; 1 << 20])))
                    .expect("request"),
            )
            .await;
        assert_eq!(reply.json()["bytes"], 1 << 20);
        assert_eq!(
            client.get(format!("http://{proxy}/large")).await.body.len(),
            1 << 20
        );
    }
    let baseline = ragscope.rss_kib();
    let sampler = RssSampler::start(ragscope.pid());

    let reply = client
        .request(
            request(Method::POST, &format!("http://{proxy}/upload"))
                .body(Full::new(Bytes::from(vec![42u8; SIZE])))
                .expect("request"),
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.json()["bytes"],
        SIZE as u64,
        "the whole upload arrived"
    );

    let res = client
        .get_streaming(format!("http://{proxy}/large?bytes={SIZE}"))
        .await;
    assert_eq!(res.status(), 200);
    let mut body = res.into_body();
    let mut received = 0usize;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame.expect("download frame").data_ref() {
            received += data.len();
        }
    }
    assert_eq!(received, SIZE, "the whole download arrived");

    let peak = sampler.stop().max(ragscope.rss_kib());
    let growth = peak.saturating_sub(baseline);
    assert!(
        growth < 24 * 1024,
        "RSS grew {growth} KiB (baseline {baseline} KiB, peak {peak} KiB) moving 2 x 64 MiB: bodies are buffered"
    );
    ragscope.signal("TERM");
    let status = ragscope
        .wait_exit(Duration::from_secs(8))
        .await
        .expect("exits");
    assert!(status.success(), "{status}");
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

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

/// Samples a process's resident memory every 10 ms on its own thread and keeps the peak.
struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let (s, p) = (stop.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(kib) = std::fs::read_to_string(format!("/proc/{pid}/status"))
                    .ok()
                    .and_then(|status| {
                        status
                            .lines()
                            .find_map(|l| l.strip_prefix("VmRSS:"))
                            .and_then(|v| {
                                v.trim().trim_end_matches("kB").trim().parse::<u64>().ok()
                            })
                    })
                {
                    p.fetch_max(kib, Ordering::Relaxed);
                }
                // The sampling period, not a synchronisation: the peak is what is measured.
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        RssSampler { stop, peak, thread }
    }

    /// Stops sampling and returns the peak in KiB.
    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        self.peak.load(Ordering::Relaxed)
    }
}
