//! GenAI/RAG facts as telemetry: `gen_ai.*` attributes, the inference span's name, captured
//! content and timing events on the spans, the GenAI and retrieval metrics, redaction counts,
//! and feedback as a `gen_ai.evaluation.result` event in the trace it is about.

use std::time::Instant;

use opentelemetry::trace::{Event, SpanContext, SpanId, SpanKind, TraceFlags, TraceState};
use opentelemetry::{KeyValue, StringValue, Value};
use opentelemetry_sdk::trace::SpanData;
use serde_json::json;

use super::genai_instruments::GenAiInstruments;
use super::genai_series;
use super::spans::Spans;
use crate::genai::CaptureMode;
use crate::genai::Facts;
use crate::genai::feedback::FeedbackFact;
use crate::observe::Times;

/// The semconv crate's GenAI names. The crate marks them deprecated only because the GenAI
/// conventions moved to their own repository; the names are the ones the version we pin defines.
#[allow(deprecated)]
mod semconv {
    use opentelemetry_semantic_conventions::attribute as a;
    pub(super) const GEN_AI_CONVERSATION_ID: &str = a::GEN_AI_CONVERSATION_ID;
    pub(super) const GEN_AI_REQUEST_TOP_K: &str = a::GEN_AI_REQUEST_TOP_K;
    pub(super) const GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS: &str =
        a::GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS;
    pub(super) const GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: &str =
        a::GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS;
    pub(super) const GEN_AI_USAGE_REASONING_OUTPUT_TOKENS: &str =
        a::GEN_AI_USAGE_REASONING_OUTPUT_TOKENS;
}

/// Documents listed in `gen_ai.retrieval.documents`, at most.
const MAX_DOCUMENTS: usize = 20;
const INFERENCE_DETAILS: &str = "gen_ai.client.inference.operation.details";

/// Writes the facts on the spans. The inference span is the upstream call's CLIENT span;
/// without one (the upstream was never reached) the server span takes everything. Model and
/// token counts also go on the server span, so a search on either finds them.
pub(super) fn write_spans(
    facts: &Facts,
    times: &Times,
    client: Option<&mut SpanData>,
    server: &mut SpanData,
) {
    let (attrs, copied) = attributes(facts, times);
    let inference = match client {
        Some(client) => {
            server.attributes.extend(copied);
            client
        }
        None => server,
    };
    if let Some(op) = &facts.operation {
        // `{gen_ai.operation.name} {gen_ai.request.model}`, the model left out when unknown.
        inference.name = match &facts.request_model {
            Some(m) => format!("{op} {m}").into(),
            None => op.clone().into(),
        };
    }
    inference.attributes.extend(attrs);
    if let Some(e) = &facts.api_error
        && !inference
            .attributes
            .iter()
            .any(|kv| kv.key.as_str() == "error.type")
    {
        // The API said it failed (an `error` event in a 200 stream, an error body).
        inference
            .attributes
            .push(KeyValue::new("error.type", e.clone()));
    }
    let content = content(facts);
    // The exchange's end, not the time the spans are built (the `/traces` view builds them
    // when it is read).
    let now = times.end.1;
    let (on_span, as_event) = match facts.content.mode {
        CaptureMode::Span => (true, false),
        CaptureMode::Event => (false, true),
        CaptureMode::SpanAndEvent => (true, true),
        CaptureMode::Off => (false, false),
    };
    if on_span {
        inference.attributes.extend(content.iter().cloned());
    }
    if as_event && !content.is_empty() {
        inference
            .events
            .events
            .push(Event::new(INFERENCE_DETAILS, now, content, 0));
    }
    if let Some((_, at)) = times.first_byte {
        let event = Event::new("ragscope.response.first_byte", at, vec![], 0);
        inference.events.events.push(event);
    }
    if let Some((_, at)) = facts.first_token {
        let event = Event::new("ragscope.response.first_token", at, vec![], 0);
        inference.events.events.push(event);
    }
}

/// The inference span's attributes, and the ones copied to the server span.
fn attributes(facts: &Facts, times: &Times) -> (Vec<KeyValue>, Vec<KeyValue>) {
    let mut attrs: Vec<KeyValue> = Vec::new();
    let mut copied: Vec<KeyValue> = Vec::new();
    if let Some(op) = &facts.operation {
        attrs.push(KeyValue::new("gen_ai.operation.name", op.clone()));
        attrs.push(KeyValue::new(
            "gen_ai.provider.name",
            facts.provider.clone(),
        ));
        copied.push(KeyValue::new("gen_ai.operation.name", op.clone()));
    }
    if let Some(m) = &facts.request_model {
        attrs.push(KeyValue::new("gen_ai.request.model", m.clone()));
        copied.push(KeyValue::new("gen_ai.request.model", m.clone()));
    }
    if let Some(s) = facts.stream {
        attrs.push(KeyValue::new("gen_ai.request.stream", s));
    }
    if let Some(n) = facts.max_tokens {
        attrs.push(KeyValue::new("gen_ai.request.max_tokens", n));
    }
    if let Some(t) = facts.temperature {
        attrs.push(KeyValue::new("gen_ai.request.temperature", t));
    }
    if let Some(p) = facts.top_p {
        attrs.push(KeyValue::new("gen_ai.request.top_p", p));
    }
    if let Some(k) = facts.top_k {
        attrs.push(KeyValue::new(semconv::GEN_AI_REQUEST_TOP_K, k));
    }
    if let Some(id) = &facts.response_id {
        attrs.push(KeyValue::new("gen_ai.response.id", id.clone()));
    }
    if let Some(m) = &facts.response_model {
        attrs.push(KeyValue::new("gen_ai.response.model", m.clone()));
        copied.push(KeyValue::new("gen_ai.response.model", m.clone()));
    }
    if !facts.finish_reasons.is_empty() {
        attrs.push(strings(
            "gen_ai.response.finish_reasons",
            &facts.finish_reasons,
        ));
    }
    for (key, n) in [
        ("gen_ai.usage.input_tokens", facts.input_tokens),
        ("gen_ai.usage.output_tokens", facts.output_tokens),
    ] {
        if let Some(n) = n {
            attrs.push(KeyValue::new(key, n));
            copied.push(KeyValue::new(key, n));
        }
    }
    for (key, n) in [
        (
            semconv::GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS,
            facts.detail.cache_read_tokens,
        ),
        (
            semconv::GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS,
            facts.detail.cache_creation_tokens,
        ),
        (
            semconv::GEN_AI_USAGE_REASONING_OUTPUT_TOKENS,
            facts.detail.reasoning_tokens,
        ),
    ] {
        if let Some(n) = n {
            attrs.push(KeyValue::new(key, n));
        }
    }
    if facts.detail.tool_calls > 0 {
        attrs.push(KeyValue::new(
            "ragscope.genai.tool_calls",
            i64::from(facts.detail.tool_calls),
        ));
        attrs.push(strings(
            "ragscope.genai.tool_names",
            &facts.detail.tool_names,
        ));
    }
    if let Some(c) = &facts.conversation_id {
        attrs.push(KeyValue::new(semconv::GEN_AI_CONVERSATION_ID, c.clone()));
        copied.push(KeyValue::new(semconv::GEN_AI_CONVERSATION_ID, c.clone()));
    }
    if let Some(cost) = &facts.cost {
        attrs.push(KeyValue::new("ragscope.genai.cost", cost.amount));
        attrs.push(KeyValue::new(
            "ragscope.genai.cost.currency",
            cost.currency.clone(),
        ));
        copied.push(KeyValue::new("ragscope.genai.cost", cost.amount));
    }
    if let Some(ds) = &facts.data_source {
        attrs.push(KeyValue::new("gen_ai.data_source.id", ds.clone()));
    }
    if facts.generates() && facts.output_tokens.is_none() {
        // Absent is not zero: say the server did not report usage rather than invent it.
        attrs.push(KeyValue::new("ragscope.genai.usage_reported", false));
    }
    if let Some(ttft) = time_to_first_token(facts, times) {
        attrs.push(KeyValue::new("gen_ai.response.time_to_first_chunk", ttft));
    }
    if let Some(v) = &facts.version {
        attrs.push(KeyValue::new("ragscope.model.version", v.clone()));
        copied.push(KeyValue::new("ragscope.model.version", v.clone()));
    }
    if facts.budget_skipped {
        attrs.push(KeyValue::new("ragscope.genai.parse_budget_exceeded", true));
        copied.push(KeyValue::new("ragscope.genai.parse_budget_exceeded", true));
    }
    if facts.truncated {
        attrs.push(KeyValue::new("ragscope.genai.parse_truncated", true));
    }
    if let Some(e) = facts.parse_error {
        attrs.push(KeyValue::new("ragscope.genai.parse_error", e));
    }
    if let Some(why) = facts.skipped {
        attrs.push(KeyValue::new("ragscope.genai.skipped", why));
        copied.push(KeyValue::new("ragscope.genai.skipped", why));
    }
    if let Some(docs) = &facts.documents {
        let listed: Vec<serde_json::Value> = docs
            .iter()
            .take(MAX_DOCUMENTS)
            .map(|d| json!({"id": d.id, "score": d.score}))
            .collect();
        attrs.push(KeyValue::new(
            "gen_ai.retrieval.documents",
            serde_json::Value::Array(listed).to_string(),
        ));
        copied.push(KeyValue::new("ragscope.rag.documents", docs.len() as i64));
    }
    (attrs, copied)
}

/// A string-array attribute.
fn strings(key: &'static str, items: &[String]) -> KeyValue {
    let items: Vec<StringValue> = items.iter().map(|s| StringValue::from(s.clone())).collect();
    KeyValue::new(key, Value::Array(items.into()))
}

fn content(facts: &Facts) -> Vec<KeyValue> {
    let mut content = Vec::new();
    if let Some(m) = &facts.content.input_messages {
        content.push(KeyValue::new("gen_ai.input.messages", m.clone()));
    }
    if let Some(m) = &facts.content.output_messages {
        content.push(KeyValue::new("gen_ai.output.messages", m.clone()));
    }
    content
}

/// Seconds from the request's arrival to the first content-bearing event of a stream.
pub(super) fn time_to_first_token(facts: &Facts, times: &Times) -> Option<f64> {
    let (at, _) = facts.first_token?;
    facts
        .streamed
        .then(|| at.duration_since(times.start.0).as_secs_f64())
}

/// Records the GenAI and retrieval metrics. `error_type` is the upstream call's.
pub(super) fn record_metrics(
    i: &GenAiInstruments,
    facts: &Facts,
    times: &Times,
    error_type: Option<&str>,
    upstream_version: Option<&KeyValue>,
) {
    let end: Instant = times.end.0;
    // Client-fed values (models, version): bounded in number by the observer (the rest are
    // `other`).
    let attributes = || {
        let mut attrs = Vec::with_capacity(7);
        attrs.extend(upstream_version.cloned());
        if let Some(op) = &facts.operation {
            attrs.push(KeyValue::new("gen_ai.operation.name", op.clone()));
            attrs.push(KeyValue::new(
                "gen_ai.provider.name",
                facts.provider.clone(),
            ));
        }
        if let Some(m) = &facts.metric_request_model {
            attrs.push(KeyValue::new("gen_ai.request.model", m.clone()));
        }
        if let Some(m) = &facts.metric_response_model {
            attrs.push(KeyValue::new("gen_ai.response.model", m.clone()));
        }
        if let Some(v) = &facts.version {
            attrs.push(KeyValue::new("ragscope.model.version", v.clone()));
        }
        attrs
    };
    if let Some(operation) = &facts.operation {
        let error = error_type.or(facts.metric_api_error.as_deref());
        let duration = end.duration_since(times.start.0).as_secs_f64();
        // `input` and `output` are the totals (cached input and reasoning included, as on the
        // span); the detail types are parts of them, so never sum across every type.
        let tokens = [
            facts.input_tokens,
            facts.output_tokens,
            facts.detail.cache_read_tokens,
            facts.detail.cache_creation_tokens,
            facts.detail.reasoning_tokens,
        ]
        .map(|n| n.and_then(|n| u64::try_from(n).ok()));
        let streamed = error_type.is_none() && facts.streamed;
        let ttft = streamed
            .then(|| time_to_first_token(facts, times))
            .flatten();
        let per_token = match (facts.first_token, facts.output_tokens) {
            (Some((first, _)), Some(out)) if streamed && out > 1 => {
                Some(end.duration_since(first).as_secs_f64() / (out - 1) as f64)
            }
            _ => None,
        };
        let version = upstream_version.map(|kv| kv.value.as_str());
        let key = genai_series::Key {
            upstream_version: version.as_deref(),
            operation,
            provider: &facts.provider,
            request_model: facts.metric_request_model.as_deref(),
            response_model: facts.metric_response_model.as_deref(),
            model_version: facts.version.as_deref(),
            error,
        };
        match i.series.get(&key, attributes) {
            Some(series) => {
                series.duration(i).record(duration);
                for (kind, n) in tokens.into_iter().enumerate() {
                    if let (Some(n), Some(h)) = (n, series.tokens(i, kind)) {
                        h.record(n);
                    }
                }
                if let Some(ttft) = ttft {
                    series.time_to_first_token(i).record(ttft);
                }
                if let Some(per_token) = per_token {
                    series.time_per_output_token(i).record(per_token);
                }
            }
            None => {
                let attrs = attributes();
                let mut with_error = attrs.clone();
                if let Some(e) = error {
                    with_error.push(KeyValue::new("error.type", e.to_owned()));
                }
                i.request_duration.record(duration, &with_error);
                for (kind, n) in genai_series::TOKEN_TYPES.into_iter().zip(tokens) {
                    if let Some(n) = n {
                        let mut a = attrs.clone();
                        a.push(KeyValue::new("gen_ai.token.type", kind));
                        i.token_usage.record(n, &a);
                    }
                }
                if let Some(ttft) = ttft {
                    i.time_to_first_token.record(ttft, &attrs);
                }
                if let Some(per_token) = per_token {
                    i.time_per_output_token.record(per_token, &attrs);
                }
            }
        }
        if let Some(cost) = &facts.cost {
            let mut a = attributes();
            a.push(KeyValue::new(
                "ragscope.genai.cost.currency",
                cost.currency.clone(),
            ));
            i.cost.add(cost.amount, &a);
        }
    }
    if let Some(docs) = &facts.documents {
        let mut a = Vec::with_capacity(2);
        if let Some(op) = &facts.operation {
            a.push(KeyValue::new("gen_ai.operation.name", op.clone()));
        }
        if let Some(v) = &facts.version {
            a.push(KeyValue::new("ragscope.model.version", v.clone()));
        }
        i.rag_documents.record(docs.len() as u64, &a);
        if docs.is_empty() {
            i.rag_empty.add(1, &a);
        } else if let Some(top) = facts.top_score() {
            i.rag_top_score.record(top, &a);
        }
    }
    record_redactions(i, &facts.redactions);
}

/// Counts matches replaced in captured content, by kind.
pub(super) fn record_redactions(i: &GenAiInstruments, counts: &[(&'static str, u64)]) {
    for (kind, n) in counts {
        i.redactions
            .add(*n, &[KeyValue::new("ragscope.redaction.kind", *kind)]);
    }
}

/// Records feedback: the metrics, and (traces on) returns a `ragscope.feedback` span carrying
/// the `gen_ai.evaluation.result` event in the trace the feedback is about, for the caller to
/// export and file in the `/traces` ring.
pub(super) fn record_feedback(
    i: &GenAiInstruments,
    spans: Option<&Spans>,
    fact: &FeedbackFact,
) -> Option<SpanData> {
    let attrs = [KeyValue::new(
        "gen_ai.evaluation.score.label",
        fact.metric_label.clone(),
    )];
    i.feedback_score.record(fact.score, &attrs);
    i.feedback.add(1, &attrs);
    record_redactions(i, &fact.redactions);

    let spans = spans?;
    // Without the original span (forgotten, or from another instance) the event still joins
    // its trace: under a parent id derived from the trace id, which trace backends show as a
    // span whose parent is missing.
    let parent_id = fact.parent.unwrap_or_else(|| {
        let b = fact.trace_id.to_bytes();
        let mut id = [0u8; 8];
        id.copy_from_slice(&b[8..]);
        if id == [0; 8] {
            id[7] = 1;
        }
        SpanId::from_bytes(id)
    });
    let parent = SpanContext::new(
        fact.trace_id,
        parent_id,
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    let known = KeyValue::new("ragscope.feedback.parent_known", fact.parent.is_some());
    let mut span =
        spans.standalone(parent, SpanKind::Internal, "ragscope.feedback", vec![known])?;
    let mut event = vec![
        KeyValue::new("gen_ai.evaluation.name", "user_feedback"),
        KeyValue::new("gen_ai.evaluation.score.value", fact.score),
    ];
    if let Some(label) = &fact.label {
        event.push(KeyValue::new(
            "gen_ai.evaluation.score.label",
            label.clone(),
        ));
    }
    if let Some(text) = &fact.explanation {
        event.push(KeyValue::new("gen_ai.evaluation.explanation", text.clone()));
    }
    span.events.events.push(Event::new(
        "gen_ai.evaluation.result",
        span.start_time,
        event,
        0,
    ));
    Some(span)
}
