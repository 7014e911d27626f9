//! An exchange's facts in OpenTelemetry's terms: the semconv names of its method, protocol and
//! span, and its SERVER and CLIENT spans built as `SpanData` from the [`Record`]. Built where
//! they are needed: for export when the trace is exported (or held), and for the `/traces` view
//! when someone reads it, never copied between the two.

use std::borrow::Cow;

use http::{Method, Version};
use opentelemetry::trace::{SpanKind, Status};
use opentelemetry::{KeyValue, StringValue};
use opentelemetry_sdk::trace::SpanData;
use opentelemetry_semantic_conventions::attribute as semconv;

use super::sampling::Verdict;
use super::{genai, spans};

use crate::observe::{Ending, HttpFacts, Record, TraceIds, UpstreamCall};

/// The exchange's spans, built from its record: the CLIENT span (when the upstream was called)
/// and the SERVER span, the span limits applied. `verdict` is tail sampling's, written first on
/// each.
pub(super) fn build(
    ids: &TraceIds,
    r: &Record,
    verdict: Option<Verdict>,
) -> (Option<SpanData>, SpanData) {
    let client_error = client_error_type(r);
    let cancelled = r.ending == Ending::Cancelled;
    let method = semconv_method(&r.http.method);
    let end = r.times.end.1;
    let mut server = spans::span(
        spans::server_context(ids),
        (ids.parent_span_id, ids.parent_remote),
        SpanKind::Server,
        span_name(method),
        (r.times.start.1, end),
        server_attributes(r, method),
    );
    let mut client = match (&r.upstream, r.times.upstream_start) {
        (Some(call), Some((_, start))) => {
            // Sized for the GenAI facts the inference span takes too.
            let mut attributes = Vec::with_capacity(32);
            attributes.extend([
                KeyValue::new(semconv::HTTP_REQUEST_METHOD, method),
                KeyValue::new(semconv::URL_FULL, call.url.clone()),
            ]);
            attributes.extend(upstream_attributes(call));
            attributes.push(KeyValue::new(
                semconv::NETWORK_TRANSPORT,
                call.address.transport(),
            ));
            if let Some(version) = call.version {
                // What the upstream leg spoke (the client's is on the SERVER span).
                attributes.push(KeyValue::new(
                    semconv::NETWORK_PROTOCOL_VERSION,
                    protocol_version(version),
                ));
            }
            if let Some(route) = &r.route {
                attributes.extend(route.span_attributes());
            }
            if method == "_OTHER" {
                attributes.push(KeyValue::new(
                    semconv::HTTP_REQUEST_METHOD_ORIGINAL,
                    r.http.method.as_str().to_owned(),
                ));
            }
            if let Some(status) = call.status {
                attributes.push(status_attribute(status.as_u16()));
            }
            Some(spans::span(
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
        a.push(status_attribute(status.as_u16()));
    }
    a.push(KeyValue::new(
        "http.request.body.size",
        r.request_bytes as i64,
    ));
    a.push(KeyValue::new(
        "http.response.body.size",
        r.response_bytes as i64,
    ));
    if let Some(e) = &r.error {
        a.push(KeyValue::new(semconv::ERROR_TYPE, e.kind.clone()));
    }
    if let Some(route) = &r.route {
        a.extend(route.span_attributes());
    }
    if let Some(u) = &r.upgrade {
        a.extend([
            KeyValue::new("ragscope.upgrade.protocol", u.protocol.clone()),
            KeyValue::new("ragscope.upgrade.ending", u.ending),
            KeyValue::new(
                "ragscope.upgrade.bytes.client_to_upstream",
                u.to_upstream as i64,
            ),
            KeyValue::new(
                "ragscope.upgrade.bytes.upstream_to_client",
                u.to_client as i64,
            ),
        ]);
    }
    if cancelled {
        // A client going away is not a server error: status stays unset.
        a.push(KeyValue::new("ragscope.cancelled", true));
        if let Some(by) = r.cancelled_by {
            a.push(KeyValue::new("ragscope.cancelled_by", by));
        }
    }
    server.status = server_status(r);
    if let Some(call) = &r.rpc {
        super::rpc::write_spans(call, client.as_mut(), &mut server);
    }
    if let Some(verdict) = verdict {
        // First, so span attribute limits never cut the verdict the export gate reads.
        for span in client.iter_mut().chain([&mut server]) {
            span.attributes.splice(0..0, verdict.attributes());
        }
    }
    for span in client.iter_mut().chain([&mut server]) {
        spans::limit(span);
    }
    (client, server)
}

/// The SERVER span's status: Error for a 5xx, no response or a broken stream, unless the client
/// went away (a cancel is not a server error, per semconv); unset otherwise.
pub(super) fn server_status(r: &Record) -> Status {
    let server_failed =
        r.status.is_none_or(|s| s.is_server_error()) || matches!(r.ending, Ending::Failed(..));
    if server_failed && r.ending != Ending::Cancelled {
        let error_type = r.error.as_ref().map(|e| e.kind.clone());
        Status::error(error_type.unwrap_or_default())
    } else {
        Status::Unset
    }
}

/// The server span's attributes from the request's facts and what admission learned.
fn server_attributes(r: &Record, method: &'static str) -> Vec<KeyValue> {
    let http = &r.http;
    // One string for both address attributes.
    let ip = StringValue::from(std::sync::Arc::<str>::from(http.peer.ip().to_string()));
    // Sized for what is pushed below and by the GenAI facts, so it is not grown on the way.
    let mut attributes = Vec::with_capacity(32);
    attributes.extend([
        KeyValue::new(semconv::HTTP_REQUEST_METHOD, method),
        KeyValue::new(semconv::URL_PATH, http.path.clone()),
        KeyValue::new(semconv::URL_SCHEME, http.scheme),
        KeyValue::new(
            semconv::NETWORK_PROTOCOL_VERSION,
            protocol_version(http.version),
        ),
        KeyValue::new(semconv::CLIENT_ADDRESS, ip.clone()),
        KeyValue::new(semconv::NETWORK_PEER_ADDRESS, ip),
        KeyValue::new(semconv::NETWORK_PEER_PORT, i64::from(http.peer.port())),
    ]);
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
    for account in [&r.tokens, &r.cost].into_iter().flatten() {
        attributes.extend(account.span_attributes());
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
pub(super) fn client_error_type(r: &Record) -> Option<Cow<'static, str>> {
    r.error.as_ref().map(|e| e.kind.clone()).or_else(|| {
        r.status
            .filter(|s| s.is_client_error() || s.is_server_error())
            .map(|s| Cow::Owned(s.as_u16().to_string()))
    })
}

/// `server.address` and `server.port` of the upstream (the socket's path and no port for a
/// Unix socket); the host string is shared, not copied.
pub(super) fn upstream_attributes(call: &UpstreamCall) -> impl Iterator<Item = KeyValue> {
    let address = KeyValue::new(
        semconv::SERVER_ADDRESS,
        StringValue::from(call.address.host.clone()),
    );
    let port = call
        .address
        .port
        .map(|port| KeyValue::new(semconv::SERVER_PORT, i64::from(port)));
    std::iter::once(address).chain(port)
}

pub(super) fn status_attribute(status: u16) -> KeyValue {
    KeyValue::new(semconv::HTTP_RESPONSE_STATUS_CODE, i64::from(status))
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

pub(super) fn protocol_version(version: Version) -> &'static str {
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
