//! The OTLP receiver: traces and metrics over OTLP/gRPC and OTLP/HTTP, rejections and delay,
//! and the waits that panic with what was seen.

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

use super::*;

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
