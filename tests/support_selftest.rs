//! Self-tests of the integration-test support library (`tests/support/`):
//! each helper is exercised over real loopback sockets with a plain hyper
//! client, so proxy tests can trust what the helpers report.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span};
use prost::Message;
use support::*;

const TIMEOUT: Duration = Duration::from_secs(5);

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// An HTTP/1.1 client.
fn h1_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A cleartext HTTP/2 client (prior knowledge).
fn h2_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

async fn get(client: &HttpClient, url: String) -> Response<Incoming> {
    let request = Request::get(url)
        .body(Full::default())
        .expect("valid GET request");
    tokio::time::timeout(TIMEOUT, client.request(request))
        .await
        .expect("response headers in time")
        .expect("request succeeds")
}

async fn body_bytes(response: Response<Incoming>) -> Bytes {
    tokio::time::timeout(TIMEOUT, response.into_body().collect())
        .await
        .expect("body in time")
        .expect("body reads cleanly")
        .to_bytes()
}

async fn body_json(response: Response<Incoming>) -> serde_json::Value {
    serde_json::from_slice(&body_bytes(response).await).expect("JSON body")
}

/// Reads the next non-empty data frame of `body`, skipping trailers and the
/// empty end-of-stream DATA frame HTTP/2 may send; `None` at the end.
async fn next_data(body: &mut Incoming) -> Option<Bytes> {
    while let Some(frame) = body.frame().await {
        match frame.expect("frame reads cleanly").into_data() {
            Ok(data) if !data.is_empty() => return Some(data),
            _ => {}
        }
    }
    None
}

// ---------------------------------------------------------------------------
// Upstream
// ---------------------------------------------------------------------------

#[tokio::test]
async fn json_route_over_http1_and_h2() {
    let upstream = Upstream::start().await;
    for (client, version) in [
        (h1_client(), Version::HTTP_11),
        (h2_client(), Version::HTTP_2),
    ] {
        let response = get(&client, format!("{}/json", upstream.url())).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.version(), version);
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(body_json(response).await, serde_json::json!({"ok": true}));

        let response = get(&client, format!("{}/json?status=503", upstream.url())).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let seen = upstream.last_request();
        assert_eq!(seen.version, version);
        assert_eq!(seen.uri, "/json?status=503");
        assert_eq!(seen.path(), "/json");
    }
    assert_eq!(upstream.requests().len(), 4);
    assert_eq!(upstream.connections_accepted(), 2);
}

#[tokio::test]
async fn echo_describes_the_request_and_sets_headers() {
    let upstream = Upstream::start().await;
    let request = Request::builder()
        .method(Method::PUT)
        .uri(format!(
            "{}/echo?a=1&set_header=x-one:1&set_header=x-two:%20two",
            upstream.url()
        ))
        .header("x-custom", "first")
        .header("x-custom", "second")
        .body(Full::new(Bytes::from(vec![7u8; 1234])))
        .expect("valid request");
    let response = h1_client().request(request).await.expect("echo answers");
    assert_eq!(response.headers()["x-one"], "1");
    assert_eq!(response.headers()["x-two"], "two");
    let echo = body_json(response).await;
    assert_eq!(echo["method"], "PUT");
    assert_eq!(echo["path"], "/echo");
    assert_eq!(
        echo["query"],
        "a=1&set_header=x-one:1&set_header=x-two:%20two"
    );
    assert_eq!(echo["version"], "HTTP/1.1");
    assert_eq!(
        echo["headers"]["x-custom"],
        serde_json::json!(["first", "second"])
    );
    assert_eq!(echo["body_bytes"], 1234);

    let seen = upstream.last_request();
    assert_eq!(seen.method, Method::PUT);
    assert_eq!(seen.body_bytes, 1234);
    assert!(seen.body_complete);
    assert_eq!(seen.header("x-custom"), Some("first"));

    let response = get(&h2_client(), format!("{}/echo", upstream.url())).await;
    let echo = body_json(response).await;
    assert_eq!(echo["version"], "HTTP/2.0");
    assert_eq!(echo["query"], serde_json::Value::Null);
}

#[tokio::test]
async fn sse_events_arrive_spaced_and_end_with_done() {
    let upstream = Upstream::start().await;
    for client in [h1_client(), h2_client()] {
        let response = get(
            &client,
            format!("{}/sse?events=4&gap_ms=100", upstream.url()),
        )
        .await;
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        assert_eq!(response.headers()["cache-control"], "no-cache");
        let mut body = response.into_body();
        let mut events = Vec::new();
        let mut arrivals = Vec::new();
        while let Some(data) = next_data(&mut body).await {
            arrivals.push(Instant::now());
            events.push(String::from_utf8(data.to_vec()).expect("UTF-8 event"));
        }
        assert_eq!(
            events,
            [
                "data: {\"i\":0}\n\n",
                "data: {\"i\":1}\n\n",
                "data: {\"i\":2}\n\n",
                "data: {\"i\":3}\n\n",
                "data: [DONE]\n\n"
            ]
        );
        for pair in arrivals[..4].windows(2) {
            let gap = pair[1] - pair[0];
            assert!(
                gap >= Duration::from_millis(40),
                "events too close: {gap:?}"
            );
        }
    }
    assert_eq!(upstream.aborted_streams(), 0);
}

#[tokio::test]
async fn large_streams_the_pattern_with_content_length() {
    let upstream = Upstream::start().await;
    for client in [h1_client(), h2_client()] {
        let response = get(
            &client,
            format!("{}/large?bytes=300001&chunk=10000", upstream.url()),
        )
        .await;
        assert_eq!(response.headers()["content-length"], "300001");
        assert_eq!(
            response.headers()["content-type"],
            "application/octet-stream"
        );
        let body = body_bytes(response).await;
        assert_eq!(body.len(), 300_001);
        assert!(is_large_pattern(&body));
    }
    assert_eq!(upstream.aborted_streams(), 0);
}

#[tokio::test]
async fn upload_counts_the_streamed_body() {
    let upstream = Upstream::start().await;
    let request = Request::post(format!("{}/upload", upstream.url()))
        .body(Full::new(Bytes::from(vec![1u8; 3 * 1024 * 1024 + 5])))
        .expect("valid request");
    let response = h2_client().request(request).await.expect("upload answers");
    assert_eq!(
        body_json(response).await,
        serde_json::json!({"bytes": 3 * 1024 * 1024 + 5})
    );
    assert_eq!(upstream.last_request().body_bytes, 3 * 1024 * 1024 + 5);
}

#[tokio::test]
async fn slow_status_hop_and_unknown_routes() {
    let upstream = Upstream::start().await;
    let client = h1_client();

    let started = Instant::now();
    let response = get(&client, format!("{}/slow?delay_ms=200", upstream.url())).await;
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(body_json(response).await, serde_json::json!({"ok": true}));

    let response = get(&client, format!("{}/status/418", upstream.url())).await;
    assert_eq!(response.status(), StatusCode::IM_A_TEAPOT);
    assert_eq!(
        body_json(response).await,
        serde_json::json!({"status": 418})
    );

    let response = get(&client, format!("{}/nope", upstream.url())).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(body_json(response).await["path"], "/nope");

    let response = get(&client, format!("{}/hop", upstream.url())).await;
    for (name, value) in HOP_ROUTE_HEADERS {
        assert_eq!(response.headers()[*name], *value, "header {name}");
    }
    assert_eq!(body_bytes(response).await, "ok");
}

#[tokio::test]
async fn a_script_answers_first_from_the_captured_body_and_declines_to_the_routes() {
    let upstream = Upstream::scripted(|seen| match seen.path() {
        "/scripted" => Some(canned_json(
            &serde_json::json!({"echo": seen.json()["say"], "n": seen.query("n")}),
            &[("x-script", "yes")],
        )),
        "/split" => {
            let frames = vec![
                (Duration::ZERO, Bytes::from_static(b"data: one\n\n")),
                (
                    Duration::from_millis(50),
                    Bytes::from_static(b"data: two\n\n"),
                ),
            ];
            Some(canned_sse(split_frames(&frames, 4), &[]))
        }
        _ => None,
    })
    .await;
    let client = support::Client::http1();

    let reply = client
        .post_json(
            format!("{}/scripted?n=a%20b", upstream.url()),
            &serde_json::json!({"say": "hi"}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("x-script"), Some("yes"));
    assert_eq!(reply.json(), serde_json::json!({"echo": "hi", "n": "a b"}));
    assert_eq!(upstream.last_request().body, r#"{"say":"hi"}"#);

    let mut body = client
        .get_streaming(format!("{}/split", upstream.url()))
        .await
        .into_body();
    let mut frames = Vec::new();
    while let Some(frame) = next_data(&mut body).await {
        frames.push(frame);
    }
    assert_eq!(frames.concat(), b"data: one\n\ndata: two\n\n");
    assert!(frames.iter().all(|f| f.len() <= 4), "{frames:?}");
    assert_eq!(frames.len(), 6, "22 bytes in frames of 4: {frames:?}");

    // Declined: the built-in routes answer.
    let reply = client.get(format!("{}/json", upstream.url())).await;
    assert_eq!(reply.json(), serde_json::json!({"ok": true}));
}

#[tokio::test]
async fn request_bodies_are_captured_up_to_the_bound() {
    let upstream = Upstream::start().await;
    let big = vec![b'x'; BODY_CAPTURE + 1000];
    let reply = support::Client::http1()
        .send_body(
            Method::POST,
            &format!("{}/upload", upstream.url()),
            big.clone(),
        )
        .await;
    assert_eq!(reply.json()["bytes"], big.len());
    let seen = upstream.last_request();
    assert_eq!(seen.body_bytes, big.len() as u64);
    assert_eq!(seen.body.len(), BODY_CAPTURE);
}

#[tokio::test]
async fn dropping_an_sse_body_counts_as_aborted() {
    let upstream = Upstream::start().await;
    for (n, client) in [h1_client(), h2_client()].into_iter().enumerate() {
        let response = get(
            &client,
            format!("{}/sse?events=100&gap_ms=20", upstream.url()),
        )
        .await;
        let mut body = response.into_body();
        assert_eq!(
            next_data(&mut body).await.as_deref(),
            Some(&b"data: {\"i\":0}\n\n"[..])
        );
        drop(body);
        assert!(
            upstream.wait_aborted(n + 1, TIMEOUT).await,
            "abort #{} not seen",
            n + 1
        );
    }
    // The HTTP/1 connection cannot be reused after an unfinished body.
    assert!(upstream.wait_connections_closed(1, TIMEOUT).await);
}

#[tokio::test]
async fn stall_holds_the_stream_until_dropped() {
    let upstream = Upstream::start().await;
    let response = get(
        &h2_client(),
        format!("{}/stall?after_bytes=10", upstream.url()),
    )
    .await;
    let mut body = response.into_body();
    assert_eq!(next_data(&mut body).await.map(|d| d.len()), Some(10));
    let next = tokio::time::timeout(Duration::from_millis(300), next_data(&mut body)).await;
    assert!(next.is_err(), "stall sent more: {next:?}");
    assert_eq!(upstream.aborted_streams(), 0);
    drop(body);
    assert!(upstream.wait_aborted(1, TIMEOUT).await);
}

#[tokio::test]
async fn connections_are_counted_and_closed_on_drop() {
    let upstream = Upstream::start().await;
    let url = upstream.url();
    {
        let client = h1_client();
        body_bytes(get(&client, format!("{url}/json")).await).await;
        assert_eq!(upstream.connections_accepted(), 1);
        assert_eq!(upstream.connections_closed(), 0);
    } // The client and its idle pooled connection are dropped here.
    assert!(upstream.wait_connections_closed(1, TIMEOUT).await);

    let addr = upstream.addr();
    drop(upstream);
    tokio::task::yield_now().await;
    let refused = tokio::net::TcpStream::connect(addr).await;
    assert!(refused.is_err(), "still listening after drop");
}

#[tokio::test]
async fn dead_addr_refuses_connections() {
    let error = tokio::net::TcpStream::connect(dead_addr())
        .await
        .expect_err("nothing listens on the dead address");
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[tokio::test]
async fn black_hole_accepts_but_never_answers() {
    let hole = BlackHole::start().await;
    let request = Request::get(format!("{}/json", hole.url()))
        .body(Full::default())
        .expect("valid request");
    let attempt =
        tokio::time::timeout(Duration::from_millis(300), h1_client().request(request)).await;
    assert!(attempt.is_err(), "the black hole answered: {attempt:?}");
    assert_eq!(hole.connections_accepted(), 1);
}

// ---------------------------------------------------------------------------
// OTLP receiver
// ---------------------------------------------------------------------------

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn str_kv(key: &str, value: &str) -> KeyValue {
    kv(key, any_value::Value::StringValue(value.to_owned()))
}

fn resource() -> Option<Resource> {
    Some(Resource {
        attributes: vec![str_kv("service.name", "selftest")],
        ..Default::default()
    })
}

fn scope() -> Option<InstrumentationScope> {
    Some(InstrumentationScope {
        name: "selftest-scope".to_owned(),
        ..Default::default()
    })
}

fn trace_request(name: &str) -> ExportTraceServiceRequest {
    let span = Span {
        trace_id: (1..=16).collect(),
        span_id: vec![0xab; 8],
        parent_span_id: vec![0x0c; 8],
        name: name.to_owned(),
        kind: 3,
        start_time_unix_nano: 1_000_000_000,
        end_time_unix_nano: 1_250_000_000,
        attributes: vec![
            str_kv("http.request.method", "POST"),
            kv("http.response.status_code", any_value::Value::IntValue(502)),
            kv("ratio", any_value::Value::DoubleValue(0.5)),
            kv("streamed", any_value::Value::BoolValue(true)),
        ],
        events: vec![span::Event {
            name: "first_token".to_owned(),
            time_unix_nano: 1_100_000_000,
            attributes: vec![kv("index", any_value::Value::IntValue(0))],
            ..Default::default()
        }],
        status: Some(Status {
            message: "bad gateway".to_owned(),
            code: 2,
        }),
        ..Default::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: resource(),
            scope_spans: vec![ScopeSpans {
                scope: scope(),
                spans: vec![span],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn metrics_request() -> ExportMetricsServiceRequest {
    let status = |code| {
        vec![kv(
            "http.response.status_code",
            any_value::Value::IntValue(code),
        )]
    };
    let counter = Metric {
        name: "requests".to_owned(),
        unit: "{request}".to_owned(),
        description: "Requests".to_owned(),
        data: Some(metric::Data::Sum(Sum {
            data_points: vec![
                NumberDataPoint {
                    attributes: status(200),
                    value: Some(number_data_point::Value::AsInt(7)),
                    ..Default::default()
                },
                NumberDataPoint {
                    attributes: status(502),
                    value: Some(number_data_point::Value::AsInt(1)),
                    ..Default::default()
                },
            ],
            aggregation_temporality: 2,
            is_monotonic: true,
        })),
        ..Default::default()
    };
    let histogram = Metric {
        name: "duration".to_owned(),
        unit: "s".to_owned(),
        data: Some(metric::Data::Histogram(Histogram {
            data_points: vec![HistogramDataPoint {
                attributes: status(200),
                count: 3,
                sum: Some(0.6),
                bucket_counts: vec![1, 2, 0],
                explicit_bounds: vec![0.1, 0.5],
                ..Default::default()
            }],
            aggregation_temporality: 2,
        })),
        ..Default::default()
    };
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: resource(),
            scope_metrics: vec![ScopeMetrics {
                scope: scope(),
                metrics: vec![counter, histogram],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// Sends one hand-framed gRPC unary call over h2c; returns the response
/// status, its `grpc-status` (from trailers or, for errors, headers) and the body.
async fn grpc_call(endpoint: &str, path: &str, message: &impl Message) -> (StatusCode, String) {
    let request = Request::post(format!("{endpoint}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("x-test-meta", "hello")
        .body(Full::new(grpc_frame(message)))
        .expect("valid gRPC request");
    let response = h2_client()
        .request(request)
        .await
        .expect("gRPC call answers");
    let status = response.status();
    let header_status = response.headers().get("grpc-status").cloned();
    let collected = response
        .into_body()
        .collect()
        .await
        .expect("gRPC body reads cleanly");
    let grpc_status = collected
        .trailers()
        .and_then(|t| t.get("grpc-status").cloned())
        .or(header_status)
        .expect("a grpc-status");
    (
        status,
        grpc_status.to_str().expect("ASCII grpc-status").to_owned(),
    )
}

async fn http_export(endpoint: &str, path: &str, message: &impl Message) -> Response<Incoming> {
    let request = Request::post(format!("{endpoint}{path}"))
        .header("content-type", "application/x-protobuf")
        .body(Full::new(Bytes::from(message.encode_to_vec())))
        .expect("valid OTLP/HTTP request");
    h1_client()
        .request(request)
        .await
        .expect("OTLP/HTTP export answers")
}

#[tokio::test]
async fn otlp_grpc_traces_are_collected() {
    let receiver = OtlpReceiver::start().await;
    let (status, grpc_status) = grpc_call(
        &receiver.endpoint(),
        GRPC_TRACES_PATH,
        &trace_request("POST /v1/chat"),
    )
    .await;
    assert_eq!((status, grpc_status.as_str()), (StatusCode::OK, "0"));

    let span = receiver.wait_span("POST /v1/chat", TIMEOUT).await;
    assert_eq!(span.kind, SpanKind::Client);
    assert_eq!(span.trace_id, "0102030405060708090a0b0c0d0e0f10");
    assert_eq!(span.span_id, "abababababababab");
    assert_eq!(span.parent_span_id, "0c0c0c0c0c0c0c0c");
    assert_eq!(span.duration(), Duration::from_millis(250));
    assert_eq!(span.str_attr("http.request.method"), Some("POST"));
    assert_eq!(span.int_attr("http.response.status_code"), Some(502));
    assert_eq!(span.double_attr("ratio"), Some(0.5));
    assert_eq!(span.bool_attr("streamed"), Some(true));
    assert!(!span.has_attr("missing"));
    assert_eq!(span.status_code, SpanStatusCode::Error);
    assert_eq!(span.status_message, "bad gateway");
    assert_eq!(
        span.event("first_token").and_then(|e| e.attr("index")),
        Some(&Value::Int(0))
    );
    assert_eq!(span.resource_str("service.name"), Some("selftest"));
    assert_eq!(span.scope_name, "selftest-scope");

    let exports = receiver.exports();
    assert_eq!(exports.len(), 1);
    assert_eq!(exports[0].protocol, Protocol::Grpc);
    assert_eq!(exports[0].signal, Signal::Traces);
    assert_eq!(exports[0].headers["x-test-meta"], "hello");
    assert_eq!((receiver.grpc_exports(), receiver.http_exports()), (1, 0));
}

#[tokio::test]
async fn otlp_grpc_metrics_are_collected() {
    let receiver = OtlpReceiver::start().await;
    let (_, grpc_status) =
        grpc_call(&receiver.endpoint(), GRPC_METRICS_PATH, &metrics_request()).await;
    assert_eq!(grpc_status, "0");
    let requests = receiver.wait_for_metric("requests", TIMEOUT).await;
    assert!(requests.is_monotonic_sum());
    assert_eq!(receiver.metrics().len(), 2);
    assert_eq!(receiver.grpc_exports(), 1);
}

#[tokio::test]
async fn otlp_http_traces_and_metrics_are_collected() {
    let receiver = OtlpReceiver::start().await;
    let response = http_export(
        &receiver.endpoint(),
        HTTP_TRACES_PATH,
        &trace_request("GET /search"),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/x-protobuf");
    ExportTraceServiceResponse::decode(body_bytes(response).await)
        .expect("an ExportTraceServiceResponse");

    let spans = receiver
        .wait_for_spans(|s| s.name == "GET /search", 1, TIMEOUT)
        .await;
    assert_eq!(spans[0].int_attr("http.response.status_code"), Some(502));

    let response = http_export(&receiver.endpoint(), HTTP_METRICS_PATH, &metrics_request()).await;
    assert_eq!(response.status(), StatusCode::OK);

    let requests = receiver.wait_for_metric("requests", TIMEOUT).await;
    assert_eq!(requests.unit, "{request}");
    let ok = requests
        .point_with(&[("http.response.status_code", Value::Int(200))])
        .expect("a 200 point");
    assert_eq!(ok.as_i64(), Some(7));
    assert_eq!(ok.as_f64(), 7.0);

    let duration = receiver.wait_for_metric("duration", TIMEOUT).await;
    let point = duration
        .histogram_point_with(&[("http.response.status_code", 200i64.into())])
        .expect("a 200 histogram point");
    assert_eq!(point.count, 3);
    assert_eq!(point.sum, Some(0.6));
    assert_eq!(point.bucket_counts, [1, 2, 0]);
    assert_eq!(point.explicit_bounds, [0.1, 0.5]);

    assert_eq!((receiver.grpc_exports(), receiver.http_exports()), (0, 2));
    receiver.clear();
    assert!(receiver.spans().is_empty() && receiver.metrics().is_empty());
    assert!(receiver.exports().is_empty());
}

#[tokio::test]
async fn otlp_rejections_and_delay() {
    let receiver = OtlpReceiver::builder()
        .respond_after(Duration::from_millis(200))
        .start()
        .await;
    let started = Instant::now();
    let response = http_export(&receiver.endpoint(), HTTP_TRACES_PATH, &trace_request("a")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(200));

    receiver.set_delay(Duration::ZERO);
    receiver.set_failing(true);
    let (_, grpc_status) =
        grpc_call(&receiver.endpoint(), GRPC_TRACES_PATH, &trace_request("b")).await;
    assert_eq!(grpc_status, "14"); // UNAVAILABLE
    let response = http_export(&receiver.endpoint(), HTTP_TRACES_PATH, &trace_request("c")).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);

    receiver.set_failing(false);
    let request = Request::post(format!("{}{HTTP_TRACES_PATH}", receiver.endpoint()))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{}")))
        .expect("valid request");
    let response = h1_client().request(request).await.expect("answers");
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let accepted: Vec<bool> = receiver.exports().iter().map(|e| e.accepted).collect();
    assert_eq!(accepted, [true, false, false, false]);
    assert_eq!(receiver.spans().len(), 1);
}

#[tokio::test]
#[should_panic(expected = "spans seen: [\"only\"]")]
async fn wait_for_spans_panics_with_the_names_seen() {
    let receiver = OtlpReceiver::start().await;
    http_export(
        &receiver.endpoint(),
        HTTP_TRACES_PATH,
        &trace_request("only"),
    )
    .await;
    receiver
        .wait_for_spans(|s| s.name == "other", 1, Duration::from_millis(200))
        .await;
}
