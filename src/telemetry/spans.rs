//! Spans without SDK span objects on the data path: ids are chosen when a request arrives
//! (the configured sampler decides, the SDK's id generator makes them), and when the exchange
//! is over its spans are built as `SpanData` straight from the record and handed to the export
//! processor through `SpanProcessor::on_end`, moved, never cloned (the `/traces` ring keeps
//! the record, not the spans).

use std::borrow::Cow;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use http::HeaderMap;
use opentelemetry::propagation::{TextMapCompositePropagator, TextMapPropagator as _};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
};
use opentelemetry::{Context, InstrumentationScope, KeyValue, Value};
use opentelemetry_http::HeaderInjector;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    IdGenerator, RandomIdGenerator, Sampler, SamplingDecision, ShouldSample, SpanData, SpanEvents,
    SpanLimits, SpanLinks, SpanProcessor,
};

use crate::observe::TraceIds;

/// The trace side of the pipeline: sampler, id generator and the processor spans are exported
/// through (`None`: traces are kept only for the `/traces` ring).
#[derive(Debug)]
pub(super) struct Spans {
    sampler: Sampler,
    ids: RandomIdGenerator,
    exporter: Option<Box<dyn SpanProcessor>>,
}

impl Spans {
    /// Spans sampled by `sampler` and exported through `exporter`, told the `resource` once.
    pub(super) fn new(
        sampler: Sampler,
        resource: &Resource,
        mut exporter: Option<Box<dyn SpanProcessor>>,
    ) -> Spans {
        if let Some(p) = &mut exporter {
            p.set_resource(resource);
        }
        Spans {
            sampler,
            ids: RandomIdGenerator::default(),
            exporter,
        }
    }

    /// Whether spans are exported at all (else building them for export is wasted work).
    pub(super) fn exports(&self) -> bool {
        self.exporter.is_some()
    }

    /// The ids of a new exchange, continuing `parent` when it carries a valid span context.
    pub(super) fn begin(&self, parent: &Context, name: &'static str) -> TraceIds {
        let parent_span = parent.span();
        let psc = parent_span.span_context();
        let valid = psc.is_valid();
        let trace_id = if valid {
            psc.trace_id()
        } else {
            self.ids.new_trace_id()
        };
        let result =
            self.sampler
                .should_sample(Some(parent), trace_id, name, &SpanKind::Server, &[], &[]);
        let parent_flags = if valid {
            psc.trace_flags()
        } else {
            TraceFlags::default()
        };
        let sampled = result.decision == SamplingDecision::RecordAndSample;
        let flags = match result.decision {
            SamplingDecision::Drop => TraceFlags::default(),
            _ => parent_flags.with_sampled(sampled),
        };
        TraceIds {
            trace_id,
            server_span_id: self.ids.new_span_id(),
            // The upstream call is a child of the server span; with the samplers offered
            // (always, ratio on the trace id, parent-based) its decision is the server's.
            client_span_id: self.ids.new_span_id(),
            parent_span_id: if valid {
                psc.span_id()
            } else {
                SpanId::INVALID
            },
            parent_remote: valid && psc.is_remote(),
            flags,
            state: result.trace_state,
            sampled,
        }
    }

    /// A sampled span of its own, outside any exchange (feedback): `None` when the sampler
    /// drops it.
    pub(super) fn standalone(
        &self,
        parent: SpanContext,
        kind: SpanKind,
        name: &'static str,
        attributes: Vec<KeyValue>,
    ) -> Option<SpanData> {
        let cx = Context::new().with_remote_span_context(parent.clone());
        let result =
            self.sampler
                .should_sample(Some(&cx), parent.trace_id(), name, &kind, &attributes, &[]);
        if result.decision != SamplingDecision::RecordAndSample {
            return None;
        }
        let context = SpanContext::new(
            parent.trace_id(),
            self.ids.new_span_id(),
            parent.trace_flags().with_sampled(true),
            false,
            result.trace_state,
        );
        let now = opentelemetry::time::now();
        Some(span(
            context,
            (parent.span_id(), parent.is_remote()),
            kind,
            name,
            (now, now),
            attributes,
        ))
    }

    /// Hands finished spans to the export processor, moved.
    pub(super) fn export(&self, spans: impl IntoIterator<Item = SpanData>) {
        if let Some(p) = &self.exporter {
            for mut span in spans {
                limit(&mut span);
                p.on_end(span);
            }
        }
    }

    /// Flushes and stops the export processor within `timeout`.
    pub(super) fn shutdown(&self, timeout: Duration) {
        if let Some(p) = &self.exporter {
            if let Err(e) = p.shutdown_with_timeout(timeout) {
                tracing::warn!(error = %e, "trace export did not shut down cleanly");
            }
        }
    }
}

/// A span of the exchange, ready for attributes and events.
pub(super) fn span(
    context: SpanContext,
    parent: (SpanId, bool),
    kind: SpanKind,
    name: &'static str,
    times: (SystemTime, SystemTime),
    attributes: Vec<KeyValue>,
) -> SpanData {
    static SCOPE: OnceLock<InstrumentationScope> = OnceLock::new();
    SpanData {
        span_context: context,
        parent_span_id: parent.0,
        parent_span_is_remote: parent.1,
        span_kind: kind,
        name: Cow::Borrowed(name),
        start_time: times.0,
        end_time: times.1,
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: Status::Unset,
        instrumentation_scope: SCOPE
            .get_or_init(|| InstrumentationScope::builder("ragscope").build())
            .clone(),
    }
}

/// Applies the span limits the SDK would have applied (read from `OTEL_SPAN_*_COUNT_LIMIT`
/// once, as the SDK would).
pub(super) fn limit(span: &mut SpanData) {
    static LIMITS: OnceLock<SpanLimits> = OnceLock::new();
    let limits = LIMITS.get_or_init(|| opentelemetry_sdk::trace::Config::default().span_limits);
    let max = limits.max_attributes_per_span as usize;
    if span.attributes.len() > max {
        span.dropped_attributes_count += (span.attributes.len() - max) as u32;
        span.attributes.truncate(max);
    }
    let max = limits.max_events_per_span as usize;
    if span.events.events.len() > max {
        span.events.dropped_count += (span.events.events.len() - max) as u32;
        span.events.events.truncate(max);
    }
}

/// The server span's context.
pub(super) fn server_context(ids: &TraceIds) -> SpanContext {
    SpanContext::new(
        ids.trace_id,
        ids.server_span_id,
        ids.flags,
        false,
        ids.state.clone(),
    )
}

/// The upstream call's (CLIENT span's) context.
pub(super) fn client_context(ids: &TraceIds) -> SpanContext {
    SpanContext::new(
        ids.trace_id,
        ids.client_span_id,
        ids.flags,
        false,
        ids.state.clone(),
    )
}

/// Writes the upstream call's trace context into its request headers, so the upstream's own
/// spans nest under the CLIENT span. `parent` still carries the caller's baggage.
pub(super) fn inject(
    propagator: &TextMapCompositePropagator,
    parent: &Context,
    ids: &TraceIds,
    headers: &mut HeaderMap,
) {
    // The caller's trace headers are replaced, not merged: an invalid tracestate that was not
    // continued must not be forwarded beside our traceparent.
    headers.remove("traceparent");
    headers.remove("tracestate");
    let cx = parent.with_remote_span_context(client_context(ids));
    propagator.inject_context(&cx, &mut HeaderInjector(headers));
    // The SDK writes `tracestate` even when it is empty; an empty header is noise.
    if headers.get("tracestate").is_some_and(|v| v.is_empty()) {
        headers.remove("tracestate");
    }
}

/// `00-<32 hex>-<16 hex>-<2 hex>`, the W3C header form of the server span's context.
pub fn w3c_header(trace_id: TraceId, span_id: SpanId, flags: TraceFlags) -> String {
    let mut out = String::with_capacity(55);
    out.push_str("00-");
    push_hex(&mut out, &trace_id.to_bytes());
    out.push('-');
    push_hex(&mut out, &span_id.to_bytes());
    out.push('-');
    push_hex(&mut out, &[flags.to_u8()]);
    out
}

/// Appends `bytes` as lowercase hex: ids are written per request, and the formatting machinery
/// behind `Display` costs several times more.
pub(super) fn push_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
}

/// Bytes a kept span costs (held traces, feedback in the ring), near enough to bound memory:
/// the struct, its attribute and event
/// vectors, and the strings they own.
pub(super) fn estimate(span: &SpanData) -> u64 {
    let kv = |a: &[KeyValue]| -> usize {
        a.iter()
            .map(|kv| {
                std::mem::size_of::<KeyValue>() + kv.key.as_str().len() + value_len(&kv.value)
            })
            .sum()
    };
    let mut n = std::mem::size_of::<SpanData>() + span.name.len() + kv(&span.attributes);
    for e in &span.events.events {
        n += std::mem::size_of_val(e) + e.name.len() + kv(&e.attributes);
    }
    for l in &span.links.links {
        n += std::mem::size_of_val(l) + kv(&l.attributes);
    }
    n as u64
}

fn value_len(v: &Value) -> usize {
    match v {
        Value::String(s) => s.as_str().len(),
        Value::Array(a) => a.to_string().len(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn w3c_header_form() {
        assert_eq!(
            w3c_header(
                TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("id"),
                SpanId::from_hex("00f067aa0ba902b7").expect("id"),
                TraceFlags::SAMPLED,
            ),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
    }
}
