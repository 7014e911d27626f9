//! GenAI and RAG awareness: reads OpenAI-compatible and RAG traffic as it streams past and
//! turns it into `gen_ai.*` span attributes, GenAI metrics, retrieval metrics and, on request,
//! captured (redacted) content.
//!
//! The data path is never waited on: each frame is handed on first and observed from a copy.
//! SSE is parsed incrementally as frames pass (so time to first token is measured when the
//! content-bearing event goes by); JSON bodies are copied into a buffer bounded by
//! `RAGSCOPE_PARSE_MAX_BYTES` and parsed once, when the exchange ends. A body over the bound is
//! not parsed at all and the span says so; input that does not parse only sets an attribute.

pub mod anthropic;
pub mod api;
pub mod extract;
pub mod feedback;
pub mod gemini;
pub mod inference;
mod instruments;
pub mod openai;
pub mod redact;
pub mod responses;
pub mod sse;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use http::{HeaderMap, HeaderName, Method, header};
use opentelemetry::trace::{Span as _, SpanContext, SpanId, TraceId};
use opentelemetry::{KeyValue, StringValue, Value};
use opentelemetry_sdk::trace::{SdkTracer, Span};
use serde_json::json;

use crate::config::{CaptureMode, GenAiConfig};
use extract::{Extracted, Side, Target};
use openai::{Operation, RequestInfo, ResponseInfo};
use redact::Redactor;

pub use instruments::GenAiInstruments;

/// Documents listed in `gen_ai.retrieval.documents`, at most.
const MAX_DOCUMENTS: usize = 20;
/// Longest model name or version kept as a metric attribute (longer ones are cut).
const MAX_ATTRIBUTE_CHARS: usize = 128;
/// Traces remembered so feedback can be parented to their server span.
const RECENT_TRACES: usize = 4096;

/// Shared GenAI state: configuration, compiled patterns, instruments, and the recent traces
/// feedback refers to.
#[derive(Debug)]
pub struct GenAi {
    config: GenAiConfig,
    redactor: Redactor,
    instruments: GenAiInstruments,
    tracer: Option<SdkTracer>,
    recent: Mutex<RecentTraces>,
    labels: Mutex<HashSet<String>>,
}

impl GenAi {
    /// Builds the shared state. `tracer` is `None` when traces are off.
    pub fn new(
        config: GenAiConfig,
        meter: &opentelemetry::metrics::Meter,
        tracer: Option<SdkTracer>,
    ) -> GenAi {
        GenAi {
            // The patterns were compiled once already when the configuration was checked.
            redactor: config.redactor.clone(),
            instruments: GenAiInstruments::new(meter),
            tracer,
            recent: Mutex::new(RecentTraces::default()),
            labels: Mutex::new(HashSet::new()),
            config,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &GenAiConfig {
        &self.config
    }

    /// Whether `method path` is the feedback endpoint the proxy answers itself.
    pub fn is_feedback(&self, method: &Method, path: &str) -> bool {
        self.config.enabled
            && method == Method::POST
            && self.config.feedback_path.as_deref() == Some(path)
    }

    /// Remembers a request's server span so later feedback can be parented to it.
    pub fn remember(&self, span: Option<&SpanContext>) {
        let Some(sc) = span else { return };
        if !self.config.enabled || self.config.feedback_path.is_none() || !sc.is_sampled() {
            return;
        }
        if let Ok(mut recent) = self.recent.lock() {
            recent.insert(sc.trace_id(), sc.span_id());
        }
    }

    fn recall(&self, trace_id: TraceId) -> Option<SpanId> {
        self.recent.lock().ok()?.get(trace_id)
    }

    /// Starts observing a request, when GenAI observation is on.
    pub fn observe(self: &Arc<Self>, method: &Method, path: &str) -> Option<Observation> {
        if !self.config.enabled || method == Method::OPTIONS || method == Method::HEAD {
            return None;
        }
        Some(Observation {
            genai: self.clone(),
            operation: openai::operation_from_path(path),
            request: Arc::new(Mutex::new(Tee::new(self.config.parse_max_bytes))),
            response: ResponseState::Pending,
            first_byte: None,
            first_token: None,
            version: None,
            parse_error: None,
            response_truncated: false,
        })
    }

    fn capture_limit(&self) -> Option<usize> {
        (self.config.capture != CaptureMode::Off).then_some(self.config.capture_max_bytes)
    }

    /// Redacts `text`, counting what was replaced.
    fn redact(&self, text: &str) -> String {
        let mut counts = Vec::new();
        let out = self.redactor.redact(text, &mut counts).into_owned();
        for (kind, n) in counts {
            self.instruments
                .redactions
                .add(n, &[KeyValue::new("ragscope.redaction.kind", kind)]);
        }
        out
    }

    /// A feedback label as a metric attribute: the first labels seen are kept as they are,
    /// later new ones become `other`, so a client cannot grow the metric without bound.
    fn bounded_label(&self, label: Option<&str>) -> String {
        const MAX_LABELS: usize = 32;
        let Some(label) = label else {
            return "none".to_owned();
        };
        let label: String = label.chars().take(32).collect::<String>().to_lowercase();
        let Ok(mut labels) = self.labels.lock() else {
            return "other".to_owned();
        };
        if labels.contains(&label) {
            label
        } else if labels.len() < MAX_LABELS {
            labels.insert(label.clone());
            label
        } else {
            "other".to_owned()
        }
    }
}

/// Trace id → server span id, oldest evicted first.
#[derive(Debug, Default)]
struct RecentTraces {
    spans: HashMap<TraceId, SpanId>,
    order: VecDeque<TraceId>,
}

impl RecentTraces {
    fn insert(&mut self, trace: TraceId, span: SpanId) {
        if self.spans.insert(trace, span).is_none() {
            self.order.push_back(trace);
            if self.order.len() > RECENT_TRACES
                && let Some(old) = self.order.pop_front()
            {
                self.spans.remove(&old);
            }
        }
    }

    fn get(&self, trace: TraceId) -> Option<SpanId> {
        self.spans.get(&trace).copied()
    }
}

/// A bounded copy of a body. Past the bound it lets go of what it holds and only remembers
/// that the body was too big.
#[derive(Debug)]
pub struct Tee {
    buf: Vec<u8>,
    limit: usize,
    truncated: bool,
}

impl Tee {
    /// A copy of at most `limit` bytes.
    pub fn new(limit: usize) -> Tee {
        Tee {
            buf: Vec::new(),
            limit,
            truncated: false,
        }
    }

    /// Copies `data`, unless the body went past the bound.
    pub fn push(&mut self, data: &[u8]) {
        if self.truncated {
            return;
        }
        if self.buf.len() + data.len() > self.limit {
            self.truncated = true;
            self.buf = Vec::new();
        } else {
            self.buf.extend_from_slice(data);
        }
    }
}

/// The request body's copy, shared between the request body wrapper and the observation.
pub type RequestTee = Arc<Mutex<Tee>>;

enum ResponseState {
    /// No response head yet.
    Pending,
    /// An OpenAI-style event stream, parsed as it passes.
    Sse {
        parser: Box<sse::SseParser>,
        info: Box<ResponseInfo>,
    },
    /// A JSON body, copied for parsing at the end.
    Json(Tee),
    /// Nothing we read.
    Skip,
}

/// One request's GenAI observation, carried by its exchange.
pub struct Observation {
    genai: Arc<GenAi>,
    operation: Option<Operation>,
    request: RequestTee,
    response: ResponseState,
    first_byte: Option<(Instant, SystemTime)>,
    first_token: Option<(Instant, SystemTime)>,
    version: Option<String>,
    parse_error: Option<&'static str>,
    response_truncated: bool,
}

impl std::fmt::Debug for Observation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observation")
            .field("operation", &self.operation)
            .finish_non_exhaustive()
    }
}

impl Observation {
    /// The copy the request body wrapper writes into, when the request body is JSON (or
    /// unlabelled). Other bodies (uploads, forms) are not copied.
    pub fn request_tee(&self, headers: &HeaderMap) -> Option<RequestTee> {
        is_json_or_unlabelled(headers).then(|| self.request.clone())
    }

    /// The response head arrived: decide how to read the body, note the model version.
    pub fn response_head(&mut self, headers: &HeaderMap) {
        if let Some(name) = &self.genai.config.version_header {
            self.version = headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| bounded(v.trim()));
        }
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase();
        self.response = if content_type.starts_with("text/event-stream") {
            if self.operation.is_some() {
                ResponseState::Sse {
                    parser: Box::new(sse::SseParser::new(self.genai.config.parse_max_bytes)),
                    info: Box::default(),
                }
            } else {
                ResponseState::Skip
            }
        } else if content_type.contains("json") {
            ResponseState::Json(Tee::new(self.genai.config.parse_max_bytes))
        } else {
            ResponseState::Skip
        };
    }

    /// A response frame was handed on; observe its copy.
    pub fn response_data(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        if self.first_byte.is_none() {
            self.first_byte = Some((Instant::now(), SystemTime::now()));
        }
        let capture = self.genai.capture_limit();
        match &mut self.response {
            ResponseState::Sse { parser, info } => {
                let first_token = &mut self.first_token;
                let parse_error = &mut self.parse_error;
                let report = parser.feed(data, |event| {
                    match openai::on_event(info, &event.data, capture) {
                        Ok(kind) => {
                            if kind.content && first_token.is_none() {
                                *first_token = Some((Instant::now(), SystemTime::now()));
                            }
                        }
                        Err(_) => *parse_error = Some("malformed_sse_event"),
                    }
                });
                self.response_truncated |= report.truncated;
            }
            ResponseState::Json(tee) => tee.push(data),
            ResponseState::Pending | ResponseState::Skip => {}
        }
    }

    /// The exchange is ending: parse what was copied, set the attributes on the spans, record
    /// the metrics. `start` is when the request arrived; `error_type` is the exchange's.
    pub fn finish(
        self,
        client: Option<&mut Span>,
        server: Option<&mut Span>,
        start: Instant,
        error_type: Option<&str>,
    ) {
        let genai = self.genai.clone();
        let capture = genai.capture_limit();
        let now = Instant::now();
        let mut parse_error = self.parse_error;
        let mut truncated = self.response_truncated;
        let mut extracted: Vec<(&'static str, Extracted)> = Vec::new();
        let mut documents = None;

        // The request, parsed from its copy.
        let mut request = RequestInfo::default();
        if let Ok(tee) = self.request.lock() {
            if tee.truncated {
                truncated = true;
            } else if !tee.buf.is_empty() {
                match serde_json::from_slice::<serde_json::Value>(&tee.buf) {
                    Ok(v) => {
                        request = openai::request_from_value(&v, capture.is_some());
                        apply_rules(&genai, Side::Request, &v, &mut extracted, &mut documents);
                    }
                    Err(_) => parse_error = Some("malformed_request_json"),
                }
            }
        }

        // The response: accumulated from the stream, or parsed from its copy.
        let (response, streamed) = match self.response {
            ResponseState::Sse { info, .. } => (*info, true),
            ResponseState::Json(tee) => {
                let mut info = ResponseInfo::default();
                if tee.truncated {
                    truncated = true;
                } else if !tee.buf.is_empty() {
                    match serde_json::from_slice::<serde_json::Value>(&tee.buf) {
                        Ok(v) => {
                            if self.operation.is_some() {
                                info = openai::from_value(&v, capture);
                            }
                            apply_rules(&genai, Side::Response, &v, &mut extracted, &mut documents);
                        }
                        Err(_) => parse_error = Some("malformed_response_json"),
                    }
                }
                (info, false)
            }
            ResponseState::Pending | ResponseState::Skip => (ResponseInfo::default(), false),
        };

        let mut facts = Facts::from_parts(self.operation, &request, &response, extracted);
        facts.stream = facts.stream.or(streamed.then_some(true));
        let operation = facts.operation.clone();
        if operation.is_none() && documents.is_none() && facts.is_empty() {
            // Not GenAI or RAG traffic; only a parse problem of a recognised API is worth noting.
            return;
        }

        // Span attributes.
        let mut attrs: Vec<KeyValue> = Vec::new();
        let mut copied: Vec<KeyValue> = Vec::new();
        if let Some(op) = &operation {
            attrs.push(KeyValue::new("gen_ai.operation.name", op.clone()));
            attrs.push(KeyValue::new(
                "gen_ai.provider.name",
                genai.config.provider.clone(),
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
        if let Some(id) = &facts.response_id {
            attrs.push(KeyValue::new("gen_ai.response.id", id.clone()));
        }
        if let Some(m) = &facts.response_model {
            attrs.push(KeyValue::new("gen_ai.response.model", m.clone()));
            copied.push(KeyValue::new("gen_ai.response.model", m.clone()));
        }
        if !facts.finish_reasons.is_empty() {
            attrs.push(KeyValue::new(
                "gen_ai.response.finish_reasons",
                Value::Array(
                    facts
                        .finish_reasons
                        .iter()
                        .map(|r| StringValue::from(r.clone()))
                        .collect::<Vec<_>>()
                        .into(),
                ),
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
        if let Some(ds) = &facts.data_source {
            attrs.push(KeyValue::new("gen_ai.data_source.id", ds.clone()));
        }
        let generates = matches!(operation.as_deref(), Some("chat" | "text_completion"));
        if generates && facts.output_tokens.is_none() {
            // Absent is not zero: say the server did not report usage rather than invent it.
            attrs.push(KeyValue::new("ragscope.genai.usage_reported", false));
        }
        let ttft = self
            .first_token
            .map(|(at, _)| at.duration_since(start).as_secs_f64());
        if streamed && let Some(ttft) = ttft {
            attrs.push(KeyValue::new("gen_ai.response.time_to_first_chunk", ttft));
        }
        if let Some(v) = &self.version {
            attrs.push(KeyValue::new("ragscope.model.version", v.clone()));
            copied.push(KeyValue::new("ragscope.model.version", v.clone()));
        }
        if truncated {
            attrs.push(KeyValue::new("ragscope.genai.parse_truncated", true));
        }
        if let Some(e) = parse_error {
            attrs.push(KeyValue::new("ragscope.genai.parse_error", e));
        }
        if let Some(docs) = &documents {
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

        // Content, only when the operator opted in; redacted, bounded.
        let mut content = Vec::new();
        if let Some(limit) = capture {
            if !request.messages.is_empty() {
                let mut budget = limit;
                let messages: Vec<serde_json::Value> = request
                    .messages
                    .iter()
                    .map(|(role, text)| {
                        let text = cut(&genai.redact(text), &mut budget);
                        json!({"role": role, "parts": [{"type": "text", "content": text}]})
                    })
                    .collect();
                content.push(KeyValue::new(
                    "gen_ai.input.messages",
                    serde_json::Value::Array(messages).to_string(),
                ));
            }
            if !response.output.is_empty() {
                let mut budget = limit;
                let messages: Vec<serde_json::Value> = response
                    .output
                    .iter()
                    .enumerate()
                    .map(|(i, text)| {
                        let text = cut(&genai.redact(text), &mut budget);
                        let mut m = json!({
                            "role": "assistant",
                            "parts": [{"type": "text", "content": text}],
                        });
                        if let Some(r) = response.finish_reasons.get(i) {
                            m["finish_reason"] = json!(r);
                        }
                        m
                    })
                    .collect();
                content.push(KeyValue::new(
                    "gen_ai.output.messages",
                    serde_json::Value::Array(messages).to_string(),
                ));
            }
        }

        // The inference span is the upstream call's CLIENT span; without one (the upstream
        // was never reached) the server span takes everything.
        let (inference, copy_to) = match (client, server) {
            (Some(client), server) => (Some(client), server),
            (None, server) => (server, None),
        };
        if let Some(span) = inference {
            write_span(
                span,
                &genai,
                &operation,
                &facts,
                &attrs,
                &content,
                &self.first_byte,
                &self.first_token,
            );
        }
        // Model and token counts also go on the server span, so a search on either finds them.
        if let Some(span) = copy_to {
            span.set_attributes(copied);
        }

        // Metrics.
        let mut metric_attrs = Vec::with_capacity(6);
        if let Some(op) = &operation {
            metric_attrs.push(KeyValue::new("gen_ai.operation.name", op.clone()));
            metric_attrs.push(KeyValue::new(
                "gen_ai.provider.name",
                genai.config.provider.clone(),
            ));
        }
        if let Some(m) = &facts.request_model {
            metric_attrs.push(KeyValue::new("gen_ai.request.model", bounded(m)));
        }
        if let Some(m) = &facts.response_model {
            metric_attrs.push(KeyValue::new("gen_ai.response.model", bounded(m)));
        }
        if let Some(v) = &self.version {
            metric_attrs.push(KeyValue::new("ragscope.model.version", v.clone()));
        }
        let i = &genai.instruments;
        if operation.is_some() {
            let mut with_error = metric_attrs.clone();
            if let Some(e) = error_type {
                with_error.push(KeyValue::new("error.type", e.to_owned()));
            }
            i.request_duration
                .record(now.duration_since(start).as_secs_f64(), &with_error);
            for (kind, n) in [
                ("input", facts.input_tokens),
                ("output", facts.output_tokens),
            ] {
                if let Some(n) = n.and_then(|n| u64::try_from(n).ok()) {
                    let mut a = metric_attrs.clone();
                    a.push(KeyValue::new("gen_ai.token.type", kind));
                    i.token_usage.record(n, &a);
                }
            }
            if error_type.is_none() && streamed {
                if let Some(ttft) = ttft {
                    i.time_to_first_token.record(ttft, &metric_attrs);
                }
                if let (Some((first, _)), Some(out)) = (self.first_token, facts.output_tokens)
                    && out > 1
                {
                    let per_token = now.duration_since(first).as_secs_f64() / (out - 1) as f64;
                    i.time_per_output_token.record(per_token, &metric_attrs);
                }
            }
        }
        if let Some(docs) = &documents {
            let mut a = Vec::with_capacity(2);
            if let Some(op) = &operation {
                a.push(KeyValue::new("gen_ai.operation.name", op.clone()));
            }
            if let Some(v) = &self.version {
                a.push(KeyValue::new("ragscope.model.version", v.clone()));
            }
            i.rag_documents.record(docs.len() as u64, &a);
            if docs.is_empty() {
                i.rag_empty.add(1, &a);
            } else if let Some(top) = docs
                .iter()
                .filter_map(|d| d.score)
                .filter(|s| s.is_finite())
                .reduce(f64::max)
            {
                i.rag_top_score.record(top, &a);
            }
        }
    }
}

/// Writes the inference attributes, name, content and events on one span.
#[allow(clippy::too_many_arguments)]
fn write_span(
    span: &mut Span,
    genai: &GenAi,
    operation: &Option<String>,
    facts: &Facts,
    attrs: &[KeyValue],
    content: &[KeyValue],
    first_byte: &Option<(Instant, SystemTime)>,
    first_token: &Option<(Instant, SystemTime)>,
) {
    if let Some(op) = operation {
        // `{gen_ai.operation.name} {gen_ai.request.model}`, the model left out when unknown.
        let name = match &facts.request_model {
            Some(m) => format!("{op} {m}"),
            None => op.clone(),
        };
        span.update_name(name);
    }
    span.set_attributes(attrs.iter().cloned());
    match genai.config.capture {
        CaptureMode::Span => span.set_attributes(content.iter().cloned()),
        CaptureMode::Event => {
            if !content.is_empty() {
                span.add_event(
                    "gen_ai.client.inference.operation.details",
                    content.to_vec(),
                );
            }
        }
        CaptureMode::SpanAndEvent => {
            span.set_attributes(content.iter().cloned());
            if !content.is_empty() {
                span.add_event(
                    "gen_ai.client.inference.operation.details",
                    content.to_vec(),
                );
            }
        }
        CaptureMode::Off => {}
    }
    if let Some((_, at)) = first_byte {
        span.add_event_with_timestamp("ragscope.response.first_byte", *at, vec![]);
    }
    if let Some((_, at)) = first_token {
        span.add_event_with_timestamp("ragscope.response.first_token", *at, vec![]);
    }
}

/// What is known about the call once request, response and rules are merged. Rules win over
/// what the OpenAI reading found, since the operator wrote them for this server.
#[derive(Debug, Default)]
struct Facts {
    operation: Option<String>,
    request_model: Option<String>,
    stream: Option<bool>,
    max_tokens: Option<i64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    response_id: Option<String>,
    response_model: Option<String>,
    finish_reasons: Vec<String>,
    input_tokens: Option<i64>,
    output_tokens: Option<i64>,
    data_source: Option<String>,
}

impl Facts {
    fn from_parts(
        operation: Option<Operation>,
        request: &RequestInfo,
        response: &ResponseInfo,
        extracted: Vec<(&'static str, Extracted)>,
    ) -> Facts {
        let mut f = Facts {
            operation: operation.map(|o| o.as_str().to_owned()),
            request_model: request.model.clone(),
            stream: request.stream,
            max_tokens: request.max_tokens,
            temperature: request.temperature,
            top_p: request.top_p,
            response_id: response.id.clone(),
            response_model: response.model.clone(),
            finish_reasons: response.finish_reasons.clone(),
            input_tokens: response.input_tokens,
            output_tokens: response.output_tokens,
            data_source: None,
        };
        if operation.is_none() {
            // Only a recognised API's top-level fields mean what we think; for other servers,
            // only the operator's rules speak.
            f = Facts::default();
        }
        for (key, value) in extracted {
            match (key, value) {
                ("gen_ai.operation.name", Extracted::Str(s)) => f.operation = Some(s),
                ("gen_ai.request.model", Extracted::Str(s)) => f.request_model = Some(s),
                ("gen_ai.response.model", Extracted::Str(s)) => f.response_model = Some(s),
                ("gen_ai.response.id", Extracted::Str(s)) => f.response_id = Some(s),
                ("gen_ai.data_source.id", Extracted::Str(s)) => f.data_source = Some(s),
                ("gen_ai.response.finish_reasons", Extracted::StrArray(v)) => f.finish_reasons = v,
                ("gen_ai.usage.input_tokens", Extracted::Int(n)) => f.input_tokens = Some(n),
                ("gen_ai.usage.output_tokens", Extracted::Int(n)) => f.output_tokens = Some(n),
                ("gen_ai.request.max_tokens", Extracted::Int(n)) => f.max_tokens = Some(n),
                ("gen_ai.request.temperature", Extracted::Float(n)) => f.temperature = Some(n),
                ("gen_ai.request.top_p", Extracted::Float(n)) => f.top_p = Some(n),
                _ => {}
            }
        }
        f
    }

    fn is_empty(&self) -> bool {
        self.request_model.is_none()
            && self.response_model.is_none()
            && self.response_id.is_none()
            && self.input_tokens.is_none()
            && self.output_tokens.is_none()
            && self.data_source.is_none()
    }
}

/// Applies the configured rules for `side` to a parsed body; without a `documents` rule, the
/// built-in `/sources` reading applies to responses.
fn apply_rules(
    genai: &GenAi,
    side: Side,
    body: &serde_json::Value,
    out: &mut Vec<(&'static str, Extracted)>,
    documents: &mut Option<Vec<extract::Document>>,
) {
    let mut has_documents_rule = false;
    for rule in &genai.config.extract {
        if let Target::Documents { .. } = rule.target {
            has_documents_rule = true;
        }
        if rule.side != side {
            continue;
        }
        match &rule.target {
            Target::Attribute(name, kind) => {
                if let Some(v) = extract::extract(*kind, body, &rule.pointer) {
                    out.push((name, v));
                }
            }
            Target::Documents { id, score } => {
                if let Some(d) = extract::documents(body, &rule.pointer, id, score) {
                    *documents = Some(d);
                }
            }
        }
    }
    if side == Side::Response && !has_documents_rule {
        if let Some(d) = extract::documents(body, "/sources", "/id", "/score") {
            *documents = Some(d);
        }
    }
}

/// Cuts `text` to the remaining capture budget, on a character boundary.
fn cut(text: &str, budget: &mut usize) -> String {
    let mut s = String::new();
    openai::push_bounded(&mut s, text, *budget);
    *budget -= s.len();
    s
}

/// A string kept short enough for an attribute (model names, versions).
fn bounded(s: &str) -> String {
    s.chars().take(MAX_ATTRIBUTE_CHARS).collect()
}

fn is_json_or_unlabelled(headers: &HeaderMap) -> bool {
    match headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        None => true,
        Some(ct) => ct.to_ascii_lowercase().contains("json"),
    }
}

/// The version header name, for the configuration parser.
pub fn header_name(v: &str) -> Option<HeaderName> {
    HeaderName::from_bytes(v.as_bytes()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tee_is_bounded() {
        let mut t = Tee::new(4);
        t.push(b"ab");
        t.push(b"cd");
        assert_eq!(t.buf, b"abcd");
        assert!(!t.truncated);
        t.push(b"e");
        assert!(t.truncated);
        assert!(t.buf.is_empty());
        t.push(b"f");
        assert!(t.buf.is_empty());
    }

    #[test]
    fn recent_traces_forget_the_oldest() {
        let mut r = RecentTraces::default();
        for i in 0..(RECENT_TRACES as u128 + 10) {
            r.insert(TraceId::from(i + 1), SpanId::from(7));
        }
        assert_eq!(r.get(TraceId::from(1)), None);
        assert_eq!(
            r.get(TraceId::from(RECENT_TRACES as u128 + 10)),
            Some(SpanId::from(7))
        );
        assert_eq!(r.spans.len(), RECENT_TRACES);
    }

    #[test]
    fn capture_cut_shares_one_budget() {
        let mut budget = 5;
        assert_eq!(cut("abc", &mut budget), "abc");
        assert_eq!(cut("déf", &mut budget), "d");
        assert_eq!(cut("xy", &mut budget), "x");
        assert_eq!(cut("z", &mut budget), "");
    }
}
