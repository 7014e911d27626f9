//! Span status and `error.type`, for upstream and proxy-made errors.

use super::*;

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
