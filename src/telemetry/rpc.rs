//! A gRPC call in OpenTelemetry's RPC terms: span attributes and names, span status, and
//! `rpc.server.call.duration` by method and status.
//!
//! Names follow the semconv crate we pin (0.33): `rpc.system.name`, a fully-qualified
//! `rpc.method` (`package.Service/Method`) and the status's name in `rpc.response.status_code`.
//! The names that crate marks deprecated (`rpc.system`, `rpc.service`, the numeric
//! `rpc.grpc.status_code`) are written too, because dashboards and backends built on the
//! earlier conventions still read them.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Histogram, Meter};
use opentelemetry::trace::Status;
use opentelemetry_sdk::trace::SpanData;
use opentelemetry_semantic_conventions::attribute as semconv;
use opentelemetry_semantic_conventions::metric as semconv_metric;

use crate::grpc::{self, RpcFacts};
use crate::observe::Record;

/// Distinct `rpc.method` values on metrics, at most; later ones are `_OTHER`. Paths are the
/// client's choice: the bound keeps a scanner from minting series.
const MAX_METHODS: usize = 256;

/// The RPC metric and the methods it has seen.
#[derive(Debug)]
pub(super) struct RpcMetrics {
    duration: Histogram<f64>,
    /// Used by the telemetry thread only, so never contended.
    methods: Mutex<HashSet<Arc<str>>>,
}

impl RpcMetrics {
    pub(super) fn new(meter: &Meter) -> RpcMetrics {
        RpcMetrics {
            duration: meter
                .f64_histogram(semconv_metric::RPC_SERVER_CALL_DURATION)
                .with_unit("s")
                .with_description("Duration of gRPC calls, until their trailers.")
                // The semconv gives RPC durations the same bucket advice as HTTP's.
                .with_boundaries(super::metrics::DURATION_BUCKETS.to_vec())
                .build(),
            methods: Mutex::new(HashSet::new()),
        }
    }

    /// Records the call's duration by system, method, status and `error.type` (the 17 status
    /// names, or the proxy's own error).
    pub(super) fn record(&self, rpc: &RpcFacts, r: &Record) {
        let seconds = r.times.end.0.duration_since(r.times.start.0).as_secs_f64();
        let mut attributes = Vec::with_capacity(4);
        attributes.push(KeyValue::new(semconv::RPC_SYSTEM_NAME, "grpc"));
        attributes.push(KeyValue::new(semconv::RPC_METHOD, self.method(rpc)));
        if let Some(status) = rpc.status_name() {
            attributes.push(KeyValue::new(semconv::RPC_RESPONSE_STATUS_CODE, status));
        }
        if let Some(e) = &r.error {
            attributes.push(KeyValue::new(semconv::ERROR_TYPE, e.kind.clone()));
        }
        self.duration.record(seconds, &attributes);
    }

    /// The method as a metric attribute: known to the server and within the bound, else
    /// `_OTHER`.
    fn method(&self, rpc: &RpcFacts) -> opentelemetry::StringValue {
        let other = opentelemetry::StringValue::from("_OTHER");
        let Some(method) = rpc.method.as_deref().filter(|_| !rpc.unknown_method()) else {
            return other;
        };
        let mut methods = self.methods.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(known) = methods.get(method) {
            return known.clone().into();
        }
        if methods.len() >= MAX_METHODS {
            return other;
        }
        let method: Arc<str> = Arc::from(method);
        methods.insert(method.clone());
        method.into()
    }
}

/// Writes the call's RPC attributes on both spans, names them after the method, and sets the
/// SERVER span's status: Error only for the codes that are the server's failure (per the gRPC
/// conventions). The CLIENT span already fails on any code but OK: the code's name is the
/// record's `error.type` ([`Record::rpc_status`]).
pub(super) fn write_spans(rpc: &RpcFacts, client: Option<&mut SpanData>, server: &mut SpanData) {
    let attributes = attributes(rpc);
    let name: Option<Cow<'static, str>> = rpc.method.clone().map(Cow::Owned);
    let code = rpc.status;
    for span in client.into_iter().chain([&mut *server]) {
        span.attributes.extend(attributes.iter().cloned());
        if let Some(name) = &name {
            span.name = name.clone();
        }
    }
    if let Some(code) = code.filter(|c| grpc::is_server_error(*c))
        && server.status == Status::Unset
    {
        server.status = Status::error(grpc::status_name(code));
    }
}

#[allow(deprecated)] // rpc.system, rpc.service, rpc.grpc.status_code: see the module doc.
fn attributes(rpc: &RpcFacts) -> Vec<KeyValue> {
    let mut a = vec![
        KeyValue::new(semconv::RPC_SYSTEM_NAME, "grpc"),
        KeyValue::new(semconv::RPC_SYSTEM, "grpc"),
    ];
    match (&rpc.method, rpc.service()) {
        (Some(method), Some(service)) => {
            a.push(KeyValue::new(semconv::RPC_METHOD, method.clone()));
            a.push(KeyValue::new(semconv::RPC_SERVICE, service.to_owned()));
        }
        _ => {
            a.push(KeyValue::new(semconv::RPC_METHOD, "_OTHER"));
            a.push(KeyValue::new(
                semconv::RPC_METHOD_ORIGINAL,
                rpc.path.clone(),
            ));
        }
    }
    if let Some(code) = rpc.status {
        a.push(KeyValue::new(
            semconv::RPC_RESPONSE_STATUS_CODE,
            grpc::status_name(code),
        ));
        a.push(KeyValue::new(
            semconv::RPC_GRPC_STATUS_CODE,
            i64::from(code),
        ));
    }
    a
}
