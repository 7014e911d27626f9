//! Logs: one access line per request tied to its trace (JSON or text), no secret even at
//! debug, and connection-level errors logged since they have no request span.

use super::*;

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
