//! Span timing: a streamed response's span ends with its body, a client cancel is not an
//! error.

use super::*;

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
