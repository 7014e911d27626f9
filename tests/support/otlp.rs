//! An in-process OTLP collector for asserting on ragscope's telemetry.
//!
//! [`OtlpReceiver`] listens on one loopback port and accepts, side by side:
//!
//! * OTLP/gRPC (HTTP/2 prior knowledge): the generated tonic
//!   `TraceServiceServer` / `MetricsServiceServer` are called directly from
//!   hyper, routed on their gRPC paths ([`GRPC_TRACES_PATH`],
//!   [`GRPC_METRICS_PATH`]);
//! * OTLP/HTTP with protobuf bodies: `POST /v1/traces` and `POST /v1/metrics`
//!   (HTTP/1.1 or HTTP/2), answered with an empty protobuf `Export*Response`.
//!
//! What arrives is flattened into owned, easy-to-assert structs:
//! [`CollectedSpan`] and [`CollectedMetric`]. Compressed payloads (gzip) and
//! OTLP/JSON are not supported: they are answered with an error and recorded
//! as rejected [`ExportRecord`]s.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{CONTENT_ENCODING, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    HistogramDataPoint, NumberDataPoint, metric, number_data_point,
};
use prost::Message;
use tokio::task::JoinHandle;
use tonic::codegen::Service;

use super::serve::{ConnStats, bind_loopback, spawn_http_server};
use super::wait_until;

/// gRPC path of the OTLP trace export method.
pub const GRPC_TRACES_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
/// gRPC path of the OTLP metrics export method.
pub const GRPC_METRICS_PATH: &str =
    "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";
/// OTLP/HTTP path for traces.
pub const HTTP_TRACES_PATH: &str = "/v1/traces";
/// OTLP/HTTP path for metrics.
pub const HTTP_METRICS_PATH: &str = "/v1/metrics";

// ---------------------------------------------------------------------------
// Flattened data model
// ---------------------------------------------------------------------------

/// An attribute value, converted from the proto `AnyValue`.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A string.
    Str(String),
    /// A signed integer.
    Int(i64),
    /// A float.
    Double(f64),
    /// A boolean.
    Bool(bool),
    /// A homogeneous or heterogeneous array.
    Array(Vec<Value>),
    /// Anything else (bytes, key-value lists, empty values).
    Other,
}

impl Value {
    /// The string, if this is a [`Value::Str`].
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, if this is a [`Value::Int`].
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The float, if this is a [`Value::Double`].
    pub fn as_double(&self) -> Option<f64> {
        match self {
            Value::Double(d) => Some(*d),
            _ => None,
        }
    }

    /// The boolean, if this is a [`Value::Bool`].
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s)
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}

impl From<f64> for Value {
    fn from(d: f64) -> Self {
        Value::Double(d)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

impl From<&AnyValue> for Value {
    fn from(value: &AnyValue) -> Self {
        match &value.value {
            Some(any_value::Value::StringValue(s)) => Value::Str(s.clone()),
            Some(any_value::Value::IntValue(i)) => Value::Int(*i),
            Some(any_value::Value::DoubleValue(d)) => Value::Double(*d),
            Some(any_value::Value::BoolValue(b)) => Value::Bool(*b),
            Some(any_value::Value::ArrayValue(array)) => {
                Value::Array(array.values.iter().map(Value::from).collect())
            }
            _ => Value::Other,
        }
    }
}

/// Attributes as ordered `(key, value)` pairs.
pub type Attributes = Vec<(String, Value)>;

fn flatten_attributes(attributes: &[KeyValue]) -> Attributes {
    attributes
        .iter()
        .map(|kv| {
            let value = kv.value.as_ref().map_or(Value::Other, Value::from);
            (kv.key.clone(), value)
        })
        .collect()
}

fn find_attr<'a>(attributes: &'a [(String, Value)], key: &str) -> Option<&'a Value> {
    attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// Whether every `(key, value)` of `wanted` is among `attributes`.
fn has_all(attributes: &[(String, Value)], wanted: &[(&str, Value)]) -> bool {
    wanted
        .iter()
        .all(|(key, value)| find_attr(attributes, key) == Some(value))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The OTLP span kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// `SPAN_KIND_UNSPECIFIED` (0), or an unknown value.
    Unspecified,
    /// `SPAN_KIND_INTERNAL` (1).
    Internal,
    /// `SPAN_KIND_SERVER` (2).
    Server,
    /// `SPAN_KIND_CLIENT` (3).
    Client,
    /// `SPAN_KIND_PRODUCER` (4).
    Producer,
    /// `SPAN_KIND_CONSUMER` (5).
    Consumer,
}

impl From<i32> for SpanKind {
    fn from(kind: i32) -> Self {
        match kind {
            1 => SpanKind::Internal,
            2 => SpanKind::Server,
            3 => SpanKind::Client,
            4 => SpanKind::Producer,
            5 => SpanKind::Consumer,
            _ => SpanKind::Unspecified,
        }
    }
}

/// The OTLP span status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanStatusCode {
    /// `STATUS_CODE_UNSET` (0), or an unknown value.
    Unset,
    /// `STATUS_CODE_OK` (1).
    Ok,
    /// `STATUS_CODE_ERROR` (2).
    Error,
}

impl From<i32> for SpanStatusCode {
    fn from(code: i32) -> Self {
        match code {
            1 => SpanStatusCode::Ok,
            2 => SpanStatusCode::Error,
            _ => SpanStatusCode::Unset,
        }
    }
}

/// An event recorded on a span.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanEvent {
    /// Event name.
    pub name: String,
    /// Event timestamp, nanoseconds since the Unix epoch.
    pub time_unix_nanos: u64,
    /// Event attributes.
    pub attributes: Attributes,
}

impl SpanEvent {
    /// The value of attribute `key`, if present.
    pub fn attr(&self, key: &str) -> Option<&Value> {
        find_attr(&self.attributes, key)
    }
}

/// One received span, with its resource and scope.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectedSpan {
    /// Span name.
    pub name: String,
    /// Span kind.
    pub kind: SpanKind,
    /// Trace id, 32 lowercase hex digits.
    pub trace_id: String,
    /// Span id, 16 lowercase hex digits.
    pub span_id: String,
    /// Parent span id, 16 lowercase hex digits, or `""` for a root span.
    pub parent_span_id: String,
    /// Start timestamp, nanoseconds since the Unix epoch.
    pub start_unix_nanos: u64,
    /// End timestamp, nanoseconds since the Unix epoch.
    pub end_unix_nanos: u64,
    /// Span attributes, in the order received.
    pub attributes: Attributes,
    /// Status code.
    pub status_code: SpanStatusCode,
    /// Status message (empty unless set).
    pub status_message: String,
    /// Span events, in order.
    pub events: Vec<SpanEvent>,
    /// Attributes of the resource that emitted the span.
    pub resource: Attributes,
    /// Name of the instrumentation scope.
    pub scope_name: String,
}

impl CollectedSpan {
    /// The value of attribute `key`, if present.
    pub fn attr(&self, key: &str) -> Option<&Value> {
        find_attr(&self.attributes, key)
    }

    /// Attribute `key` as a string, if present and a string.
    pub fn str_attr(&self, key: &str) -> Option<&str> {
        self.attr(key).and_then(Value::as_str)
    }

    /// Attribute `key` as an integer, if present and an integer.
    pub fn int_attr(&self, key: &str) -> Option<i64> {
        self.attr(key).and_then(Value::as_int)
    }

    /// Attribute `key` as a float, if present and a float.
    pub fn double_attr(&self, key: &str) -> Option<f64> {
        self.attr(key).and_then(Value::as_double)
    }

    /// Attribute `key` as a boolean, if present and a boolean.
    pub fn bool_attr(&self, key: &str) -> Option<bool> {
        self.attr(key).and_then(Value::as_bool)
    }

    /// Attribute `key` as strings (the string items of an array attribute).
    ///
    /// # Panics
    /// When the attribute is missing or not an array.
    pub fn strings_attr(&self, key: &str) -> Vec<String> {
        match self.attr(key) {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            other => panic!("{key} is not an array: {other:?}"),
        }
    }

    /// Whether attribute `key` is present.
    pub fn has_attr(&self, key: &str) -> bool {
        self.attr(key).is_some()
    }

    /// Resource attribute `key` as a string, e.g. `resource_str("service.name")`.
    pub fn resource_str(&self, key: &str) -> Option<&str> {
        find_attr(&self.resource, key).and_then(Value::as_str)
    }

    /// The first event named `name`.
    pub fn event(&self, name: &str) -> Option<&SpanEvent> {
        self.events.iter().find(|event| event.name == name)
    }

    /// End minus start (zero if the end precedes the start).
    pub fn duration(&self) -> Duration {
        Duration::from_nanos(self.end_unix_nanos.saturating_sub(self.start_unix_nanos))
    }

    /// Whether the span has no parent.
    pub fn is_root(&self) -> bool {
        self.parent_span_id.is_empty()
    }
}

/// A value of a sum or gauge data point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NumberValue {
    /// An integer point (`as_int`).
    Int(i64),
    /// A float point (`as_double`).
    Double(f64),
}

impl NumberValue {
    /// The value as a float, whatever its representation.
    pub fn as_f64(self) -> f64 {
        match self {
            NumberValue::Int(i) => i as f64,
            NumberValue::Double(d) => d,
        }
    }
}

/// A data point of a sum or a gauge.
#[derive(Debug, Clone, PartialEq)]
pub struct NumberPoint {
    /// Point attributes.
    pub attributes: Attributes,
    /// Point value (`None` if the exporter sent none).
    pub value: Option<NumberValue>,
}

impl NumberPoint {
    /// The value as a float; 0.0 if absent.
    pub fn as_f64(&self) -> f64 {
        self.value.map_or(0.0, NumberValue::as_f64)
    }

    /// The value if it is an integer point.
    pub fn as_i64(&self) -> Option<i64> {
        match self.value {
            Some(NumberValue::Int(i)) => Some(i),
            _ => None,
        }
    }

    /// The value of attribute `key`, if present.
    pub fn attr(&self, key: &str) -> Option<&Value> {
        find_attr(&self.attributes, key)
    }
}

impl From<&NumberDataPoint> for NumberPoint {
    fn from(point: &NumberDataPoint) -> Self {
        NumberPoint {
            attributes: flatten_attributes(&point.attributes),
            value: point.value.map(|value| match value {
                number_data_point::Value::AsInt(i) => NumberValue::Int(i),
                number_data_point::Value::AsDouble(d) => NumberValue::Double(d),
            }),
        }
    }
}

/// A data point of an explicit-bucket histogram.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramPoint {
    /// Point attributes.
    pub attributes: Attributes,
    /// Number of recorded measurements.
    pub count: u64,
    /// Sum of the recorded measurements, if sent.
    pub sum: Option<f64>,
    /// Per-bucket counts (`explicit_bounds.len() + 1` entries).
    pub bucket_counts: Vec<u64>,
    /// Upper bounds of the buckets.
    pub explicit_bounds: Vec<f64>,
    /// Smallest measurement, if sent.
    pub min: Option<f64>,
    /// Largest measurement, if sent.
    pub max: Option<f64>,
}

impl HistogramPoint {
    /// The value of attribute `key`, if present.
    pub fn attr(&self, key: &str) -> Option<&Value> {
        find_attr(&self.attributes, key)
    }
}

impl From<&HistogramDataPoint> for HistogramPoint {
    fn from(point: &HistogramDataPoint) -> Self {
        HistogramPoint {
            attributes: flatten_attributes(&point.attributes),
            count: point.count,
            sum: point.sum,
            bucket_counts: point.bucket_counts.clone(),
            explicit_bounds: point.explicit_bounds.clone(),
            min: point.min,
            max: point.max,
        }
    }
}

/// The data of a metric.
#[derive(Debug, Clone, PartialEq)]
pub enum MetricData {
    /// A sum (counter or up-down counter).
    Sum {
        /// Whether the sum only goes up (a counter).
        monotonic: bool,
        /// Proto `AggregationTemporality` (1 delta, 2 cumulative).
        temporality: i32,
        /// Data points.
        points: Vec<NumberPoint>,
    },
    /// A gauge.
    Gauge {
        /// Data points.
        points: Vec<NumberPoint>,
    },
    /// An explicit-bucket histogram.
    Histogram {
        /// Proto `AggregationTemporality` (1 delta, 2 cumulative).
        temporality: i32,
        /// Data points.
        points: Vec<HistogramPoint>,
    },
    /// Exponential histograms, summaries and metrics without data.
    Other,
}

/// One received metric (one metric of one export).
#[derive(Debug, Clone, PartialEq)]
pub struct CollectedMetric {
    /// Instrument name.
    pub name: String,
    /// Unit, e.g. `s` or `By`.
    pub unit: String,
    /// Description.
    pub description: String,
    /// Data points.
    pub data: MetricData,
    /// Attributes of the resource that emitted the metric.
    pub resource: Attributes,
    /// Name of the instrumentation scope.
    pub scope_name: String,
}

impl CollectedMetric {
    /// The sum or gauge points (empty for histograms).
    pub fn number_points(&self) -> &[NumberPoint] {
        match &self.data {
            MetricData::Sum { points, .. } | MetricData::Gauge { points } => points,
            _ => &[],
        }
    }

    /// The histogram points (empty for other kinds).
    pub fn histogram_points(&self) -> &[HistogramPoint] {
        match &self.data {
            MetricData::Histogram { points, .. } => points,
            _ => &[],
        }
    }

    /// The first sum/gauge point carrying all of `attributes`, e.g.
    /// `point_with(&[("http.response.status_code", Value::Int(200))])`.
    pub fn point_with(&self, attributes: &[(&str, Value)]) -> Option<&NumberPoint> {
        self.number_points()
            .iter()
            .find(|point| has_all(&point.attributes, attributes))
    }

    /// The first histogram point carrying all of `attributes`.
    pub fn histogram_point_with(&self, attributes: &[(&str, Value)]) -> Option<&HistogramPoint> {
        self.histogram_points()
            .iter()
            .find(|point| has_all(&point.attributes, attributes))
    }

    /// Whether this is a monotonic sum (a counter).
    pub fn is_monotonic_sum(&self) -> bool {
        matches!(
            self.data,
            MetricData::Sum {
                monotonic: true,
                ..
            }
        )
    }
}

fn metric_data(data: Option<&metric::Data>) -> MetricData {
    match data {
        Some(metric::Data::Sum(sum)) => MetricData::Sum {
            monotonic: sum.is_monotonic,
            temporality: sum.aggregation_temporality,
            points: sum.data_points.iter().map(NumberPoint::from).collect(),
        },
        Some(metric::Data::Gauge(gauge)) => MetricData::Gauge {
            points: gauge.data_points.iter().map(NumberPoint::from).collect(),
        },
        Some(metric::Data::Histogram(histogram)) => MetricData::Histogram {
            temporality: histogram.aggregation_temporality,
            points: histogram
                .data_points
                .iter()
                .map(HistogramPoint::from)
                .collect(),
        },
        _ => MetricData::Other,
    }
}

fn flatten_spans(request: &ExportTraceServiceRequest) -> Vec<CollectedSpan> {
    let mut spans = Vec::new();
    for resource_spans in &request.resource_spans {
        let resource = resource_spans
            .resource
            .as_ref()
            .map(|r| flatten_attributes(&r.attributes))
            .unwrap_or_default();
        for scope_spans in &resource_spans.scope_spans {
            let scope_name = scope_spans
                .scope
                .as_ref()
                .map(|s| s.name.clone())
                .unwrap_or_default();
            for span in &scope_spans.spans {
                let status = span.status.as_ref();
                spans.push(CollectedSpan {
                    name: span.name.clone(),
                    kind: SpanKind::from(span.kind),
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    start_unix_nanos: span.start_time_unix_nano,
                    end_unix_nanos: span.end_time_unix_nano,
                    attributes: flatten_attributes(&span.attributes),
                    status_code: SpanStatusCode::from(status.map_or(0, |s| s.code)),
                    status_message: status.map(|s| s.message.clone()).unwrap_or_default(),
                    events: span
                        .events
                        .iter()
                        .map(|event| SpanEvent {
                            name: event.name.clone(),
                            time_unix_nanos: event.time_unix_nano,
                            attributes: flatten_attributes(&event.attributes),
                        })
                        .collect(),
                    resource: resource.clone(),
                    scope_name: scope_name.clone(),
                });
            }
        }
    }
    spans
}

fn flatten_metrics(request: &ExportMetricsServiceRequest) -> Vec<CollectedMetric> {
    let mut metrics = Vec::new();
    for resource_metrics in &request.resource_metrics {
        let resource = resource_metrics
            .resource
            .as_ref()
            .map(|r| flatten_attributes(&r.attributes))
            .unwrap_or_default();
        for scope_metrics in &resource_metrics.scope_metrics {
            let scope_name = scope_metrics
                .scope
                .as_ref()
                .map(|s| s.name.clone())
                .unwrap_or_default();
            for metric in &scope_metrics.metrics {
                metrics.push(CollectedMetric {
                    name: metric.name.clone(),
                    unit: metric.unit.clone(),
                    description: metric.description.clone(),
                    data: metric_data(metric.data.as_ref()),
                    resource: resource.clone(),
                    scope_name: scope_name.clone(),
                });
            }
        }
    }
    metrics
}

// ---------------------------------------------------------------------------
// Export bookkeeping
// ---------------------------------------------------------------------------

/// The OTLP transport an export arrived through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC.
    Grpc,
    /// OTLP/HTTP with a protobuf body.
    HttpProtobuf,
}

/// The signal an export carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Spans.
    Traces,
    /// Metrics.
    Metrics,
}

/// One export request the receiver got.
#[derive(Debug, Clone)]
pub struct ExportRecord {
    /// Transport used.
    pub protocol: Protocol,
    /// Signal carried.
    pub signal: Signal,
    /// Request headers (for gRPC: the request metadata).
    pub headers: HeaderMap,
    /// Whether the export was accepted; rejected ones (receiver set failing,
    /// undecodable or unsupported payloads) contribute no data.
    pub accepted: bool,
    /// Spans or metrics it carried (0 when rejected).
    pub items: usize,
}

#[derive(Debug, Default)]
struct Collected {
    exports: Vec<ExportRecord>,
    spans: Vec<CollectedSpan>,
    metrics: Vec<CollectedMetric>,
}

#[derive(Debug, Default)]
struct Shared {
    collected: Mutex<Collected>,
    delay: Mutex<Duration>,
    failing: AtomicBool,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Collected> {
        self.collected.lock().expect("OTLP receiver state poisoned")
    }

    fn delay(&self) -> Duration {
        *self.delay.lock().expect("OTLP receiver delay poisoned")
    }

    fn failing(&self) -> bool {
        self.failing.load(Ordering::SeqCst)
    }

    fn reject(&self, protocol: Protocol, signal: Signal, headers: HeaderMap) {
        self.lock().exports.push(ExportRecord {
            protocol,
            signal,
            headers,
            accepted: false,
            items: 0,
        });
    }

    fn record_traces(
        &self,
        protocol: Protocol,
        headers: HeaderMap,
        request: &ExportTraceServiceRequest,
    ) {
        let spans = flatten_spans(request);
        let mut collected = self.lock();
        collected.exports.push(ExportRecord {
            protocol,
            signal: Signal::Traces,
            headers,
            accepted: true,
            items: spans.len(),
        });
        collected.spans.extend(spans);
    }

    fn record_metrics(
        &self,
        protocol: Protocol,
        headers: HeaderMap,
        request: &ExportMetricsServiceRequest,
    ) {
        let metrics = flatten_metrics(request);
        let mut collected = self.lock();
        collected.exports.push(ExportRecord {
            protocol,
            signal: Signal::Metrics,
            headers,
            accepted: true,
            items: metrics.len(),
        });
        collected.metrics.extend(metrics);
    }
}

/// The gRPC service implementation handed to the generated tonic servers.
#[derive(Debug, Clone)]
struct Collector(Arc<Shared>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let headers = request.metadata().clone().into_headers();
        if self.0.failing() {
            self.0.reject(Protocol::Grpc, Signal::Traces, headers);
            return Err(tonic::Status::unavailable("test receiver set to fail"));
        }
        self.0
            .record_traces(Protocol::Grpc, headers, request.get_ref());
        tokio::time::sleep(self.0.delay()).await;
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let headers = request.metadata().clone().into_headers();
        if self.0.failing() {
            self.0.reject(Protocol::Grpc, Signal::Metrics, headers);
            return Err(tonic::Status::unavailable("test receiver set to fail"));
        }
        self.0
            .record_metrics(Protocol::Grpc, headers, request.get_ref());
        tokio::time::sleep(self.0.delay()).await;
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

// ---------------------------------------------------------------------------
// The receiver
// ---------------------------------------------------------------------------

/// Configures an [`OtlpReceiver`] before starting it.
#[derive(Debug, Default)]
pub struct OtlpReceiverBuilder {
    delay: Duration,
}

impl OtlpReceiverBuilder {
    /// Makes the receiver a slow collector: data is recorded on arrival, the
    /// response is sent `delay` later.
    pub fn respond_after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Binds `127.0.0.1:0` and starts serving.
    pub async fn start(self) -> OtlpReceiver {
        let (listener, addr) = bind_loopback().await;
        let shared = Arc::new(Shared {
            delay: Mutex::new(self.delay),
            ..Shared::default()
        });
        let conns = Arc::new(ConnStats::default());
        let router = Router {
            shared: Arc::clone(&shared),
            traces: TraceServiceServer::new(Collector(Arc::clone(&shared))),
            metrics: MetricsServiceServer::new(Collector(Arc::clone(&shared))),
        };
        let task = spawn_http_server(listener, Arc::clone(&conns), move |req| {
            router.clone().route(req)
        });
        OtlpReceiver {
            addr,
            shared,
            conns,
            task,
        }
    }
}

/// An in-process OTLP collector on `127.0.0.1`, for gRPC and HTTP/protobuf.
///
/// Dropping it stops the server and closes its connections.
#[derive(Debug)]
pub struct OtlpReceiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    conns: Arc<ConnStats>,
    task: JoinHandle<()>,
}

impl OtlpReceiver {
    /// Starts a receiver with the default configuration.
    pub async fn start() -> OtlpReceiver {
        OtlpReceiver::builder().start().await
    }

    /// A builder for a receiver with non-default behaviour.
    pub fn builder() -> OtlpReceiverBuilder {
        OtlpReceiverBuilder::default()
    }

    /// The socket address the receiver listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The endpoint, `http://127.0.0.1:PORT` (no trailing slash), good for
    /// both OTLP/gRPC and as the OTLP/HTTP base endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every export request received so far (accepted or not), in order.
    pub fn exports(&self) -> Vec<ExportRecord> {
        self.shared.lock().exports.clone()
    }

    /// Number of export requests received over OTLP/gRPC.
    pub fn grpc_exports(&self) -> usize {
        self.count_exports(Protocol::Grpc)
    }

    /// Number of export requests received over OTLP/HTTP.
    pub fn http_exports(&self) -> usize {
        self.count_exports(Protocol::HttpProtobuf)
    }

    fn count_exports(&self, protocol: Protocol) -> usize {
        self.shared
            .lock()
            .exports
            .iter()
            .filter(|export| export.protocol == protocol)
            .count()
    }

    /// TCP connections the receiver accepted so far.
    pub fn connections_accepted(&self) -> usize {
        self.conns.accepted()
    }

    /// Changes the response delay for subsequent exports.
    pub fn set_delay(&self, delay: Duration) {
        *self
            .shared
            .delay
            .lock()
            .expect("OTLP receiver delay poisoned") = delay;
    }

    /// While `true`, exports are rejected (gRPC `UNAVAILABLE`, HTTP 503) and
    /// their data is dropped; they still appear in [`OtlpReceiver::exports`].
    pub fn set_failing(&self, failing: bool) {
        self.shared.failing.store(failing, Ordering::SeqCst);
    }

    /// Forgets every span, metric and export record collected so far.
    pub fn clear(&self) {
        *self.shared.lock() = Collected::default();
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<CollectedSpan> {
        self.shared.lock().spans.clone()
    }

    /// The spans named `name` received so far.
    pub fn spans_named(&self, name: &str) -> Vec<CollectedSpan> {
        self.shared
            .lock()
            .spans
            .iter()
            .filter(|span| span.name == name)
            .cloned()
            .collect()
    }

    /// Every metric of every export, in arrival order.
    pub fn metrics(&self) -> Vec<CollectedMetric> {
        self.shared.lock().metrics.clone()
    }

    /// The most recently received metric named `name`.
    pub fn latest_metric(&self, name: &str) -> Option<CollectedMetric> {
        self.shared
            .lock()
            .metrics
            .iter()
            .rev()
            .find(|metric| metric.name == name)
            .cloned()
    }

    /// Waits until at least `count` received spans match `pred` and returns
    /// all the matching ones (polling every 10 ms).
    ///
    /// # Panics
    /// On timeout, listing the names of the spans seen so far.
    pub async fn wait_for_spans(
        &self,
        pred: impl Fn(&CollectedSpan) -> bool,
        count: usize,
        timeout: Duration,
    ) -> Vec<CollectedSpan> {
        let matching = || -> Vec<CollectedSpan> {
            self.spans().into_iter().filter(|span| pred(span)).collect()
        };
        let found = super::wait_for(timeout, || {
            let now = matching();
            std::future::ready((now.len() >= count).then_some(now))
        })
        .await;
        found.unwrap_or_else(|| {
            let seen: Vec<String> = self.spans().into_iter().map(|span| span.name).collect();
            panic!(
                "timed out after {timeout:?} waiting for {count} matching span(s), \
                 {} matched; spans seen: {seen:?}",
                matching().len()
            )
        })
    }

    /// Waits for the first span named `name` and returns it.
    ///
    /// # Panics
    /// On timeout, listing the names of the spans seen so far.
    pub async fn wait_span(&self, name: &str, timeout: Duration) -> CollectedSpan {
        self.wait_for_spans(|span| span.name == name, 1, timeout)
            .await
            .remove(0)
    }

    /// Waits for the first span named `name` (a GenAI inference span, the upstream call's
    /// CLIENT span) and its parent, and returns both: `(inference, server)`.
    pub async fn wait_span_and_parent(
        &self,
        name: &str,
        timeout: Duration,
    ) -> (CollectedSpan, CollectedSpan) {
        let child = self.wait_span(name, timeout).await;
        let parent = child.parent_span_id.clone();
        let server = self
            .wait_for_spans(|s| s.span_id == parent, 1, timeout)
            .await
            .remove(0);
        (child, server)
    }

    /// Waits until a metric named `name` was received and returns its latest
    /// export (polling every 10 ms).
    ///
    /// # Panics
    /// On timeout, listing the metric names seen so far.
    pub async fn wait_for_metric(&self, name: &str, timeout: Duration) -> CollectedMetric {
        self.wait_for_metric_where(name, |_| true, timeout).await
    }

    /// Waits until the latest export of metric `name` satisfies `pred`
    /// (e.g. a counter reached a value) and returns it.
    ///
    /// # Panics
    /// On timeout, listing the metric names seen so far and the latest export
    /// of `name`, if any.
    pub async fn wait_for_metric_where(
        &self,
        name: &str,
        pred: impl Fn(&CollectedMetric) -> bool,
        timeout: Duration,
    ) -> CollectedMetric {
        let found = super::wait_for(timeout, || {
            std::future::ready(self.latest_metric(name).filter(|metric| pred(metric)))
        })
        .await;
        found.unwrap_or_else(|| {
            let mut seen: Vec<String> = self
                .metrics()
                .into_iter()
                .map(|metric| metric.name)
                .collect();
            seen.sort();
            seen.dedup();
            let latest = self.latest_metric(name);
            panic!(
                "timed out after {timeout:?} waiting for metric {name:?}; \
                 metric names seen: {seen:?}; latest {name:?}: {latest:#?}"
            )
        })
    }

    /// Waits until at least `n` export requests (accepted or not) arrived;
    /// returns whether they did.
    pub async fn wait_exports(&self, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.shared.lock().exports.len() >= n).await
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Frames a protobuf message as one uncompressed gRPC message: a zero
/// compression flag, the big-endian `u32` length, then the bytes.
pub fn grpc_frame(message: &impl Message) -> Bytes {
    let len = message.encoded_len();
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(u32::try_from(len).expect("gRPC message larger than 4 GiB"));
    message
        .encode(&mut buf)
        .expect("BytesMut grows to fit the message");
    buf.freeze()
}

/// Per-connection request router: gRPC paths go to the generated tonic
/// servers, OTLP/HTTP paths are decoded here.
#[derive(Clone)]
struct Router {
    shared: Arc<Shared>,
    traces: TraceServiceServer<Collector>,
    metrics: MetricsServiceServer<Collector>,
}

impl Router {
    async fn route(mut self, req: Request<Incoming>) -> Response<tonic::body::Body> {
        // The generated servers' futures never fail (`Error = Infallible`).
        match (req.method(), req.uri().path()) {
            (_, GRPC_TRACES_PATH) => {
                let Ok(response) = self.traces.call(req).await;
                response
            }
            (_, GRPC_METRICS_PATH) => {
                let Ok(response) = self.metrics.call(req).await;
                response
            }
            (&Method::POST, HTTP_TRACES_PATH) => {
                let (headers, body) = match self.read_http_export(req, Signal::Traces).await {
                    Ok(export) => export,
                    Err(response) => return response,
                };
                match ExportTraceServiceRequest::decode(body) {
                    Ok(request) => {
                        self.shared
                            .record_traces(Protocol::HttpProtobuf, headers, &request);
                        self.respond_http(&ExportTraceServiceResponse::default())
                            .await
                    }
                    Err(err) => {
                        self.shared
                            .reject(Protocol::HttpProtobuf, Signal::Traces, headers);
                        plain(StatusCode::BAD_REQUEST, format!("bad protobuf: {err}"))
                    }
                }
            }
            (&Method::POST, HTTP_METRICS_PATH) => {
                let (headers, body) = match self.read_http_export(req, Signal::Metrics).await {
                    Ok(export) => export,
                    Err(response) => return response,
                };
                match ExportMetricsServiceRequest::decode(body) {
                    Ok(request) => {
                        self.shared
                            .record_metrics(Protocol::HttpProtobuf, headers, &request);
                        self.respond_http(&ExportMetricsServiceResponse::default())
                            .await
                    }
                    Err(err) => {
                        self.shared
                            .reject(Protocol::HttpProtobuf, Signal::Metrics, headers);
                        plain(StatusCode::BAD_REQUEST, format!("bad protobuf: {err}"))
                    }
                }
            }
            (method, path) => plain(
                StatusCode::NOT_FOUND,
                format!("OTLP test receiver: no route for {method} {path}"),
            ),
        }
    }

    /// Checks an OTLP/HTTP request and reads its body. On failure the
    /// export is recorded as rejected and the error response is returned.
    async fn read_http_export(
        &self,
        req: Request<Incoming>,
        signal: Signal,
    ) -> Result<(HeaderMap, Bytes), Response<tonic::body::Body>> {
        let (parts, body) = req.into_parts();
        let headers = parts.headers;
        let content_type = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let encoding = headers
            .get(CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("identity")
            .to_owned();
        let body = body.collect().await.map(|collected| collected.to_bytes());

        let rejection = if !content_type.starts_with("application/x-protobuf") {
            Some(plain(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("only application/x-protobuf is supported, got {content_type:?}"),
            ))
        } else if encoding != "identity" {
            Some(plain(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("content-encoding {encoding:?} is not supported"),
            ))
        } else if self.shared.failing() {
            Some(plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "test receiver set to fail",
            ))
        } else {
            None
        };
        let result = match (rejection, body) {
            (None, Ok(body)) => return Ok((headers, body)),
            (Some(response), _) => response,
            (None, Err(err)) => plain(
                StatusCode::BAD_REQUEST,
                format!("reading the body failed: {err}"),
            ),
        };
        self.shared.reject(Protocol::HttpProtobuf, signal, headers);
        Err(result)
    }

    /// Answers an accepted OTLP/HTTP export after the configured delay.
    async fn respond_http(&self, message: &impl Message) -> Response<tonic::body::Body> {
        tokio::time::sleep(self.shared.delay()).await;
        let mut response = Response::new(tonic::body::Body::new(Full::new(Bytes::from(
            message.encode_to_vec(),
        ))));
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        response
    }
}

fn plain(status: StatusCode, message: impl Into<String>) -> Response<tonic::body::Body> {
    let mut response = Response::new(tonic::body::Body::new(Full::new(Bytes::from(
        message.into(),
    ))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
