//! A finished [`Record`] becomes telemetry here, once: the HTTP metrics, the operator's view,
//! the SERVER and CLIENT spans (when sampled) with the GenAI facts on them, and the access-log
//! line.

use std::borrow::Cow;

use http::{Method, Version};
use opentelemetry::trace::{SpanKind, Status};
use opentelemetry::{KeyValue, StringValue};
use opentelemetry_semantic_conventions::attribute as semconv;

use super::access_log::{self, AccessRecord};
use super::sampling::Verdict;
use super::spans::{self, Spans};
use super::{Telemetry, genai, overview};
use crate::observe::{Ending, HttpFacts, Record, TraceIds, UpstreamCall};

/// Records everything the exchange says.
pub(super) fn record(t: &Telemetry, record: Record, log: &mut access_log::Batch) {
    let cancelled = record.ending == Ending::Cancelled;
    let error_type = record.error.as_ref().map(|e| e.kind.clone());
    let client_error = client_error_type(&record);
    metrics(t, &record, error_type.as_deref(), client_error.as_deref());
    if let Some(facts) = &record.genai {
        genai::record_metrics(
            &t.genai_instruments,
            facts,
            &record.times,
            client_error.as_deref(),
        );
    }
    if let Some(fact) = &record.feedback {
        // Late evidence first, so the feedback span below joins a trace that is exported.
        if let Some(tail) = &t.tail {
            tail.feedback(fact.trace_id, fact.score);
        }
        genai::record_feedback(&t.genai_instruments, t.spans.as_deref(), fact);
    }
    if let (Some(sink), Some(ids)) = (&t.spans, &record.ids)
        && ids.sampled
    {
        let verdict = t.tail.as_ref().map(|tail| tail.decide(&record));
        export_spans(sink, ids, &record, client_error, verdict);
    }

    let ids = record
        .ids
        .as_ref()
        .map(|ids| (ids.trace_id.to_string(), ids.server_span_id.to_string()));
    let duration = record.times.end.0.duration_since(record.times.start.0);
    log.push(&AccessRecord {
        at: record.times.end.1,
        trace_id: ids.as_ref().map_or("", |i| i.0.as_str()),
        span_id: ids.as_ref().map_or("", |i| i.1.as_str()),
        method: record.http.method.as_str(),
        path: &record.http.path,
        protocol: protocol_version(record.http.version),
        status: record.status.map(|s| s.as_u16()),
        duration_ms: duration.as_secs_f64() * 1000.0,
        request_bytes: record.request_bytes,
        response_bytes: record.response_bytes,
        error_type: error_type.as_deref(),
        cancelled,
        client: record.http.peer.ip(),
    });
    // Last: the operator's view takes what it keeps out of the record.
    overview::feed(&t.overview, record);
}

/// HTTP metrics: bounded attributes only (no path, no client address).
fn metrics(t: &Telemetry, r: &Record, error_type: Option<&str>, client_error: Option<&str>) {
    let i = &t.instruments;
    let mut attrs = active_attributes(&r.http);
    i.server_active.add(-1, &attrs);
    attrs.push(KeyValue::new(
        semconv::NETWORK_PROTOCOL_VERSION,
        protocol_version(r.http.version),
    ));
    if let Some(status) = r.status {
        attrs.push(status_attribute(status));
    }
    if let Some(e) = error_type {
        attrs.push(KeyValue::new(semconv::ERROR_TYPE, e.to_owned()));
    }
    let duration = r.times.end.0.duration_since(r.times.start.0);
    i.server_duration.record(duration.as_secs_f64(), &attrs);
    i.server_request_size.record(r.request_bytes, &attrs);
    i.server_response_size.record(r.response_bytes, &attrs);

    if let Some((upstream_start, _)) = r.times.upstream_start {
        let mut attrs = vec![KeyValue::new(
            semconv::HTTP_REQUEST_METHOD,
            semconv_method(&r.http.method),
        )];
        if let Some(status) = r.status {
            attrs.push(status_attribute(status));
        }
        if let Some(e) = client_error {
            attrs.push(KeyValue::new(semconv::ERROR_TYPE, e.to_owned()));
        }
        if let Some(call) = &r.upstream {
            attrs.extend(upstream_attributes(call));
        }
        let duration = r.times.end.0.duration_since(upstream_start);
        i.client_duration.record(duration.as_secs_f64(), &attrs);
    }
}

/// Builds the exchange's spans from the record and hands them on, CLIENT first.
fn export_spans(
    sink: &Spans,
    ids: &TraceIds,
    r: &Record,
    client_error: Option<Cow<'static, str>>,
    verdict: Option<Verdict>,
) {
    let cancelled = r.ending == Ending::Cancelled;
    let method = semconv_method(&r.http.method);
    let end = r.times.end.1;
    let mut server = sink.span(
        spans::server_context(ids),
        (ids.parent_span_id, ids.parent_remote),
        SpanKind::Server,
        span_name(method),
        (r.times.start.1, end),
        server_attributes(r, method),
    );
    let mut client = match (&r.upstream, r.times.upstream_start) {
        (Some(call), Some((_, start))) => {
            let mut attributes = vec![
                KeyValue::new(semconv::HTTP_REQUEST_METHOD, method),
                KeyValue::new(semconv::URL_FULL, call.url.clone()),
            ];
            attributes.extend(upstream_attributes(call));
            if method == "_OTHER" {
                attributes.push(KeyValue::new(
                    semconv::HTTP_REQUEST_METHOD_ORIGINAL,
                    r.http.method.as_str().to_owned(),
                ));
            }
            if let Some(status) = call.status {
                attributes.push(status_attribute(status));
            }
            Some(sink.span(
                spans::client_context(ids),
                (ids.server_span_id, false),
                SpanKind::Client,
                span_name(method),
                (start, end),
                attributes,
            ))
        }
        _ => None,
    };
    if let Some(facts) = &r.genai {
        genai::write_spans(facts, &r.times, client.as_mut(), &mut server);
    }
    if let Some(span) = &mut client {
        if let Some(e) = &client_error {
            span.attributes
                .push(KeyValue::new(semconv::ERROR_TYPE, e.clone()));
            span.status = Status::error(e.clone());
        }
        if cancelled {
            span.attributes
                .push(KeyValue::new("ragscope.cancelled", true));
        }
    }
    let a = &mut server.attributes;
    if let Some(status) = r.status {
        a.push(status_attribute(status));
    }
    a.push(KeyValue::new(
        "http.request.body.size",
        r.request_bytes as i64,
    ));
    a.push(KeyValue::new(
        "http.response.body.size",
        r.response_bytes as i64,
    ));
    let error_type = r.error.as_ref().map(|e| e.kind.clone());
    if let Some(e) = &error_type {
        a.push(KeyValue::new(semconv::ERROR_TYPE, e.clone()));
    }
    if cancelled {
        // A client going away is not a server error: status stays unset.
        a.push(KeyValue::new("ragscope.cancelled", true));
        if let Some(by) = r.cancelled_by {
            a.push(KeyValue::new("ragscope.cancelled_by", by));
        }
    }
    let server_failed =
        r.status.is_none_or(|s| s.is_server_error()) || matches!(r.ending, Ending::Failed(..));
    if server_failed && !cancelled {
        server.status = Status::error(error_type.unwrap_or_default());
    }
    if let Some(verdict) = verdict {
        // First, so span attribute limits never cut the verdict the export gate reads.
        for span in client.iter_mut().chain([&mut server]) {
            span.attributes.splice(0..0, verdict.attributes());
        }
    }
    sink.export(client.into_iter().chain([server]));
}

/// The server span's attributes from the request's facts and what admission learned.
fn server_attributes(r: &Record, method: &'static str) -> Vec<KeyValue> {
    let http = &r.http;
    let mut attributes = vec![
        KeyValue::new(semconv::HTTP_REQUEST_METHOD, method),
        KeyValue::new(semconv::URL_PATH, http.path.clone()),
        KeyValue::new(semconv::URL_SCHEME, http.scheme),
        KeyValue::new(
            semconv::NETWORK_PROTOCOL_VERSION,
            protocol_version(http.version),
        ),
        KeyValue::new(semconv::CLIENT_ADDRESS, http.peer.ip().to_string()),
        KeyValue::new(semconv::NETWORK_PEER_ADDRESS, http.peer.ip().to_string()),
        KeyValue::new(semconv::NETWORK_PEER_PORT, i64::from(http.peer.port())),
    ];
    if method == "_OTHER" {
        attributes.push(KeyValue::new(
            semconv::HTTP_REQUEST_METHOD_ORIGINAL,
            http.method.as_str().to_owned(),
        ));
    }
    if let Some(q) = &http.redacted_query {
        attributes.push(KeyValue::new(semconv::URL_QUERY, q.clone()));
    }
    if let Some((host, port)) = &http.server_address {
        attributes.push(KeyValue::new(semconv::SERVER_ADDRESS, host.clone()));
        if let Some(port) = port {
            attributes.push(KeyValue::new(semconv::SERVER_PORT, i64::from(*port)));
        }
    }
    if let Some(ua) = &http.user_agent {
        attributes.push(KeyValue::new(semconv::USER_AGENT_ORIGINAL, ua.clone()));
    }
    if let Some(tls) = &r.tls {
        attributes.extend(tls.attributes().iter().cloned());
    }
    if let Some(name) = &r.api_key {
        attributes.push(KeyValue::new("ragscope.api_key.name", name.clone()));
    }
    if let Some(d) = &r.rate_limit {
        attributes.extend([
            KeyValue::new("ragscope.rate_limit.decision", d.outcome()),
            KeyValue::new("ragscope.rate_limit.key_type", d.key_type().as_str()),
            KeyValue::new("ragscope.rate_limit.backend", d.backend().as_str()),
        ]);
    }
    if let Some(f) = &r.feedback {
        attributes.push(KeyValue::new(
            "ragscope.feedback.trace_id",
            f.trace_id.to_string(),
        ));
    }
    attributes
}

/// `error.type` from the upstream call's point of view: the proxy's own error, or the status
/// code of any 4xx/5xx (for an HTTP client both are errors, per semconv).
fn client_error_type(r: &Record) -> Option<Cow<'static, str>> {
    r.error.as_ref().map(|e| e.kind.clone()).or_else(|| {
        r.status
            .filter(|s| s.is_client_error() || s.is_server_error())
            .map(|s| Cow::Owned(s.as_u16().to_string()))
    })
}

/// `server.address` and `server.port` of the upstream; the host string is shared, not copied.
fn upstream_attributes(call: &UpstreamCall) -> [KeyValue; 2] {
    [
        KeyValue::new(
            semconv::SERVER_ADDRESS,
            StringValue::from(call.address.host.clone()),
        ),
        KeyValue::new(semconv::SERVER_PORT, i64::from(call.address.port)),
    ]
}

fn status_attribute(status: http::StatusCode) -> KeyValue {
    KeyValue::new(
        semconv::HTTP_RESPONSE_STATUS_CODE,
        i64::from(status.as_u16()),
    )
}

/// `http.request.method` and `url.scheme`, the attributes of `http.server.active_requests`.
pub(super) fn active_attributes(http: &HttpFacts) -> Vec<KeyValue> {
    vec![
        KeyValue::new(semconv::HTTP_REQUEST_METHOD, semconv_method(&http.method)),
        KeyValue::new(semconv::URL_SCHEME, http.scheme),
    ]
}

/// The semconv method: known methods as they are, anything else `_OTHER`.
pub(super) fn semconv_method(method: &Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "CONNECT" => "CONNECT",
        "OPTIONS" => "OPTIONS",
        "TRACE" => "TRACE",
        "PATCH" => "PATCH",
        "QUERY" => "QUERY",
        _ => "_OTHER",
    }
}

fn protocol_version(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// No low-cardinality route is known to a generic proxy, so the name is the method alone
/// (never the raw path); `_OTHER` becomes `HTTP`, per the semantic conventions.
pub(super) fn span_name(method: &'static str) -> &'static str {
    if method == "_OTHER" { "HTTP" } else { method }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_follow_semconv() {
        assert_eq!(semconv_method(&Method::GET), "GET");
        assert_eq!(
            semconv_method(&Method::from_bytes(b"PURGE").expect("method")),
            "_OTHER"
        );
        assert_eq!(span_name("_OTHER"), "HTTP");
    }
}
