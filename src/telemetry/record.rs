//! A finished [`Record`] becomes telemetry here, once: the HTTP metrics, the SERVER and CLIENT
//! spans (when sampled and exported), the access-log line, the operator's view and the
//! `/traces` ring entry.

use std::borrow::Cow;

use opentelemetry::KeyValue;
use opentelemetry_semantic_conventions::attribute as semconv;

use super::access_log::{self, AccessRecord};
use super::exchange::{
    client_error_type, protocol_version, semconv_method, status_attribute, upstream_attributes,
};
use super::metrics::{ClientKey, ServerKey, ServerSeries};
use super::sampling::Verdict;
use super::{Telemetry, canary, exchange, genai, overview, spans};
use crate::observe::{Ending, Record};

/// Records everything the exchange says.
pub(super) fn record(t: &Telemetry, mut record: Record, log: &mut access_log::Batch) {
    let cancelled = record.ending == Ending::Cancelled;
    let error_type = record.error.as_ref().map(|e| e.kind.clone());
    let client_error = client_error_type(&record);
    let version = version_attribute(&record);
    metrics(t, &record, error_type.as_deref(), client_error.as_deref());
    if let Some(rpc) = &record.rpc {
        t.rpc.record(rpc, &record);
    }
    if let Some(facts) = &record.genai {
        genai::record_metrics(
            &t.genai_instruments,
            facts,
            &record.times,
            client_error.as_deref(),
            version.as_ref(),
        );
    }
    let sink = t.spans.as_deref().filter(|s| s.exports());
    if let Some(fact) = &record.feedback {
        // Late evidence first, so the feedback span below joins a trace that is exported.
        if let Some(tail) = &t.tail {
            tail.feedback(fact.trace_id, fact.score);
        }
        let span = genai::record_feedback(&t.genai_instruments, t.spans.as_deref(), fact);
        if let Some(span) = span {
            match (&t.recent, sink) {
                (Some(ring), Some(sink)) => {
                    ring.feedback(span.clone());
                    sink.export([span]);
                }
                (Some(ring), None) => {
                    ring.feedback(span);
                }
                (None, Some(sink)) => sink.export([span]),
                (None, None) => {}
            }
        }
    }
    let sampled = record.ids.as_ref().is_some_and(|ids| ids.sampled);
    let verdict = t
        .tail
        .as_ref()
        .filter(|_| sampled)
        .map(|tail| tail.decide(&record));
    // Tail sampling decides before any span is built: a dropped trace costs nothing here,
    // unless it is held for late feedback.
    let exported = verdict != Some(Verdict::Drop) || t.tail.as_ref().is_some_and(|t| t.holds());
    if let (Some(sink), Some(ids)) = (sink, &record.ids)
        && sampled
        && exported
    {
        let (client, server) = exchange::build(ids, &record, verdict);
        sink.export(client.into_iter().chain([server]));
    }

    let ids = record.ids.as_ref().map(|ids| {
        let mut hex = String::with_capacity(48);
        spans::push_hex(&mut hex, &ids.trace_id.to_bytes());
        spans::push_hex(&mut hex, &ids.server_span_id.to_bytes());
        let span_id = hex.split_off(32);
        (hex, span_id)
    });
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
    overview::feed(&t.overview, &record);
    if let Some(c) = t.canary.get() {
        canary::feed(c, &record);
    }
    // Last: the ring keeps the record itself; its spans are built when the view is read.
    if let Some(ring) = &t.recent
        && sampled
        && let Some(ids) = record.ids.take()
    {
        ring.record(ids, record, verdict);
    }
}

/// HTTP metrics: bounded attributes only (no path, no client address), into series bound
/// once per attribute set.
fn metrics(t: &Telemetry, r: &Record, error_type: Option<&str>, client_error: Option<&str>) {
    let i = &t.instruments;
    t.active(&r.http, -1);
    let method = semconv_method(&r.http.method);
    let server = ServerKey {
        method,
        scheme: r.http.scheme,
        version: protocol_version(r.http.version),
        status: r.status.map(|s| s.as_u16()),
        error: r.error.as_ref().map(|e| e.kind.clone()),
        upstream_version: r.route.as_ref().map(|route| route.version.clone()),
    };
    let attributes = |key: &ServerKey| {
        let mut attrs = vec![
            KeyValue::new(semconv::HTTP_REQUEST_METHOD, key.method),
            KeyValue::new(semconv::URL_SCHEME, key.scheme),
            KeyValue::new(semconv::NETWORK_PROTOCOL_VERSION, key.version),
        ];
        if let Some(status) = key.status {
            attrs.push(status_attribute(status));
        }
        if let Some(e) = error_type {
            attrs.push(KeyValue::new(semconv::ERROR_TYPE, e.to_owned()));
        }
        attrs.extend(version_attribute(r));
        attrs
    };
    let duration = r.times.end.0.duration_since(r.times.start.0).as_secs_f64();
    if let Some(u) = &r.upgrade {
        i.upgrade_session_duration.record(
            duration,
            &[
                KeyValue::new("ragscope.upgrade.protocol", metric_protocol(&u.protocol)),
                KeyValue::new("ragscope.upgrade.ending", u.ending),
            ],
        );
    }
    let bound = t.series.server.get(server.clone(), || {
        ServerSeries::bind(i, &attributes(&server))
    });
    match bound {
        Some(s) => {
            s.duration.record(duration);
            s.request_size.record(r.request_bytes);
            s.response_size.record(r.response_bytes);
        }
        None => {
            let attrs = attributes(&server);
            i.server_duration.record(duration, &attrs);
            i.server_request_size.record(r.request_bytes, &attrs);
            i.server_response_size.record(r.response_bytes, &attrs);
        }
    }

    if let Some((upstream_start, _)) = r.times.upstream_start {
        let key = ClientKey {
            method,
            status: r.status.map(|s| s.as_u16()),
            error: client_error.map(|e| Cow::Owned(e.to_owned())),
            upstream: r
                .upstream
                .as_ref()
                .map(|c| (c.address.host.clone(), c.address.port)),
            upstream_version: r.route.as_ref().map(|route| route.version.clone()),
        };
        let attributes = || {
            let mut attrs = vec![KeyValue::new(semconv::HTTP_REQUEST_METHOD, method)];
            if let Some(status) = key.status {
                attrs.push(status_attribute(status));
            }
            if let Some(e) = client_error {
                attrs.push(KeyValue::new(semconv::ERROR_TYPE, e.to_owned()));
            }
            if let Some(call) = &r.upstream {
                attrs.extend(upstream_attributes(call));
            }
            attrs.extend(version_attribute(r));
            attrs
        };
        let duration = r.times.end.0.duration_since(upstream_start).as_secs_f64();
        match t
            .series
            .client
            .get(key.clone(), || i.client_duration.bind(&attributes()))
        {
            Some(h) => h.record(duration),
            None => i.client_duration.record(duration, &attributes()),
        }
    }
}

/// `ragscope.upstream.version` of a routed exchange, for its metrics.
fn version_attribute(r: &Record) -> Option<KeyValue> {
    let route = r.route.as_ref()?;
    Some(KeyValue::new(
        crate::canary::VERSION_ATTRIBUTE,
        opentelemetry::StringValue::from(route.version.clone()),
    ))
}

/// An upgrade protocol as a metric attribute: the client names it, so only well-known ones
/// are kept as they are.
fn metric_protocol(protocol: &str) -> &'static str {
    match protocol {
        "websocket" => "websocket",
        "h2c" => "h2c",
        _ => "other",
    }
}
