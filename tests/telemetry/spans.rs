//! Spans: one SERVER span per request with a CLIENT child, named and attributed per the HTTP
//! semantic conventions, and the resource that names the service.

use super::*;

/// Pre-stable HTTP attribute names that must not appear (the stable names replaced them).
const DEPRECATED_HTTP_NAMES: [&str; 10] = [
    "http.method",
    "http.status_code",
    "http.target",
    "http.url",
    "http.scheme",
    "http.flavor",
    "http.user_agent",
    "net.peer.ip",
    "net.host.name",
    "net.host.port",
];

// ---------------------------------------------------------------------------
// 1. Spans: one SERVER span per request, one CLIENT child per upstream call
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_get_makes_a_server_span_and_a_client_child_named_per_semconv() {
    let up = Upstream::start().await;
    let otlp = OtlpReceiver::start().await;
    let proxy = Proxy::builder().upstream(&up).otlp(&otlp).run().await;

    let reply = Client::http1()
        .get_with(
            &proxy.url("/echo?a=1&flag"),
            &[("user-agent", "telemetry-test/1.0")],
        )
        .await;
    assert_eq!(reply.status, 200);
    let (server, client) = server_span_of(&otlp, &reply).await;

    // The SERVER span: a new trace, named after the method alone (no route is known).
    assert_eq!(server.name, "GET");
    assert_eq!(server.kind, SpanKind::Server);
    assert!(server.is_root(), "no incoming traceparent: a new trace");
    assert_eq!(server.str_attr("http.request.method"), Some("GET"));
    assert_eq!(server.str_attr("url.path"), Some("/echo"));
    assert_eq!(
        server.str_attr("url.query"),
        Some("a=REDACTED&flag"),
        "query values are redacted"
    );
    assert_eq!(server.str_attr("url.scheme"), Some("http"));
    assert_eq!(
        server.attr("http.response.status_code"),
        Some(&Value::Int(200))
    );
    assert_eq!(server.str_attr("server.address"), Some("127.0.0.1"));
    assert_eq!(
        server.int_attr("server.port"),
        Some(i64::from(proxy.addr().port()))
    );
    assert_eq!(server.str_attr("client.address"), Some("127.0.0.1"));
    assert_eq!(
        server.str_attr("user_agent.original"),
        Some("telemetry-test/1.0")
    );
    assert_eq!(server.str_attr("network.protocol.version"), Some("1.1"));
    assert!(
        !server.has_attr("http.request.method_original"),
        "only for unknown methods"
    );
    assert!(!server.has_attr("error.type"));
    assert_eq!(server.status_code, SpanStatusCode::Unset);

    // The CLIENT span: the upstream call, a child of the SERVER span in the same trace.
    assert_eq!(client.name, "GET");
    assert_eq!(client.kind, SpanKind::Client);
    assert_eq!(client.trace_id, server.trace_id);
    assert_eq!(client.parent_span_id, server.span_id);
    assert_eq!(client.str_attr("http.request.method"), Some("GET"));
    assert_eq!(
        client.str_attr("url.full"),
        Some(format!("{}/echo?a=REDACTED&flag", up.url()).as_str())
    );
    assert_eq!(client.str_attr("server.address"), Some("127.0.0.1"));
    assert_eq!(
        client.int_attr("server.port"),
        Some(i64::from(up.addr().port()))
    );
    assert_eq!(
        client.attr("http.response.status_code"),
        Some(&Value::Int(200))
    );
    assert_eq!(client.status_code, SpanStatusCode::Unset);
    assert!(
        client.start_unix_nanos >= server.start_unix_nanos
            && client.end_unix_nanos <= server.end_unix_nanos,
        "the CLIENT span lies within its parent: {client:#?} {server:#?}"
    );

    // The upstream's own spans nest under our CLIENT span.
    assert_eq!(
        up.last_request().header("traceparent"),
        Some(format!("00-{}-{}-01", server.trace_id, client.span_id).as_str())
    );

    for span in [&server, &client] {
        for old in DEPRECATED_HTTP_NAMES {
            assert!(
                !span.has_attr(old),
                "{old} is the pre-stable name: {span:#?}"
            );
        }
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_post_over_http2_is_named_post_with_protocol_version_2() {
    let up = Upstream::start().await;
    let otlp = OtlpReceiver::start().await;
    let proxy = Proxy::builder().upstream(&up).otlp(&otlp).run().await;

    let reply = Client::http2()
        .send_body(Method::POST, &proxy.url("/upload"), "hello")
        .await;
    assert_eq!(reply.status, 200);
    let (server, client) = server_span_of(&otlp, &reply).await;

    assert_eq!(server.name, "POST");
    assert_eq!(server.str_attr("http.request.method"), Some("POST"));
    assert_eq!(server.str_attr("network.protocol.version"), Some("2"));
    assert_eq!(server.str_attr("url.path"), Some("/upload"));
    assert!(!server.has_attr("url.query"), "no query, no url.query");
    assert_eq!(
        server.str_attr("server.address"),
        Some("127.0.0.1"),
        "from :authority"
    );
    assert_eq!(
        server.int_attr("server.port"),
        Some(i64::from(proxy.addr().port()))
    );
    assert_eq!(
        server.attr("http.response.status_code"),
        Some(&Value::Int(200))
    );
    assert_eq!(client.name, "POST");
    assert_eq!(client.str_attr("http.request.method"), Some("POST"));
    assert_eq!(client.parent_span_id, server.span_id);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_method_is_named_http_with_other_and_the_original() {
    let up = Upstream::start().await;
    let otlp = OtlpReceiver::start().await;
    let proxy = Proxy::builder().upstream(&up).otlp(&otlp).run().await;

    let purge = Method::from_bytes(b"PURGE").expect("method");
    let reply = Client::http1()
        .send_body(purge, &proxy.url("/echo"), "")
        .await;
    assert_eq!(reply.status, 200);
    let (server, client) = server_span_of(&otlp, &reply).await;

    assert_eq!(server.name, "HTTP");
    assert_eq!(server.str_attr("http.request.method"), Some("_OTHER"));
    assert_eq!(
        server.str_attr("http.request.method_original"),
        Some("PURGE")
    );
    assert_eq!(client.name, "HTTP");
    assert_eq!(client.str_attr("http.request.method"), Some("_OTHER"));
    // The semantic conventions require the original on HTTP client spans too.
    assert_eq!(
        client.str_attr("http.request.method_original"),
        Some("PURGE"),
        "CLIENT span: http.request.method_original is required when the method is _OTHER"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_resource_names_the_service_ragscope_by_default() {
    let up = Upstream::start().await;
    let otlp = OtlpReceiver::start().await;
    let proxy = Proxy::builder().upstream(&up).otlp(&otlp).run().await;

    let reply = Client::http1().get(proxy.url("/json")).await;
    let (server, client) = server_span_of(&otlp, &reply).await;
    for span in [&server, &client] {
        assert_eq!(span.resource_str("service.name"), Some("ragscope"));
    }
    let metric = otlp
        .wait_for_metric("http.server.request.duration", WAIT)
        .await;
    assert_eq!(
        metric
            .resource
            .iter()
            .find(|(k, _)| k == "service.name")
            .map(|(_, v)| v),
        Some(&str_value("ragscope"))
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn otel_service_name_and_resource_attributes_shape_the_resource() {
    let up = Upstream::start().await;
    let otlp = OtlpReceiver::start().await;
    let proxy = Proxy::builder()
        .upstream(&up)
        .otlp(&otlp)
        .env("OTEL_SERVICE_NAME", "rag-gateway")
        .env(
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment=test,team=rag%20ops,service.name=overridden",
        )
        .run()
        .await;

    let reply = Client::http1().get(proxy.url("/json")).await;
    let (server, _) = server_span_of(&otlp, &reply).await;
    let metric = otlp
        .wait_for_metric("http.server.request.duration", WAIT)
        .await;
    for resource in [&server.resource, &metric.resource] {
        let get = |key: &str| {
            resource
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(
            get("service.name"),
            Some(str_value("rag-gateway")),
            "OTEL_SERVICE_NAME wins"
        );
        assert_eq!(get("deployment.environment"), Some(str_value("test")));
        assert_eq!(
            get("team"),
            Some(str_value("rag ops")),
            "values are percent-decoded"
        );
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn otel_service_name_wins_even_when_it_spells_the_default() {
    let up = Upstream::start().await;
    let otlp = OtlpReceiver::start().await;
    let service_name_of = |proxy: Proxy| {
        let otlp = &otlp;
        async move {
            let reply = Client::http1().get(proxy.url("/json")).await;
            let (server, _) = server_span_of(otlp, &reply).await;
            proxy.shutdown().await;
            server.resource_str("service.name").map(str::to_owned)
        }
    };

    // Without OTEL_SERVICE_NAME, service.name from OTEL_RESOURCE_ATTRIBUTES is used.
    let proxy = Proxy::builder()
        .upstream(&up)
        .otlp(&otlp)
        .env("OTEL_RESOURCE_ATTRIBUTES", "service.name=other")
        .run()
        .await;
    assert_eq!(service_name_of(proxy).await.as_deref(), Some("other"));

    // The specification: OTEL_SERVICE_NAME takes precedence over service.name in
    // OTEL_RESOURCE_ATTRIBUTES, whatever its value (even the default's spelling).
    otlp.clear();
    let proxy = Proxy::builder()
        .upstream(&up)
        .otlp(&otlp)
        .env("OTEL_SERVICE_NAME", "ragscope")
        .env("OTEL_RESOURCE_ATTRIBUTES", "service.name=other")
        .run()
        .await;
    assert_eq!(
        service_name_of(proxy).await.as_deref(),
        Some("ragscope"),
        "an explicit OTEL_SERVICE_NAME=ragscope must win over service.name=other"
    );
}
