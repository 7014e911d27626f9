//! GenAI and RAG awareness: reads LLM API traffic (OpenAI chat, completions, embeddings and
//! Responses, Anthropic Messages, Gemini; see [`api`]) and RAG traffic as it streams past and
//! concludes, when the exchange ends, with plain [`Facts`] (operation, models, usage, retrieved
//! documents, on request captured and redacted content). Telemetry turns them into `gen_ai.*`
//! span attributes and GenAI/RAG metrics; this module records nothing itself.
//!
//! The data path is never waited on: each frame is handed on first and observed from a copy.
//! SSE is parsed incrementally as frames pass (so time to first token is measured when the
//! content-bearing event goes by); JSON bodies are copied into a buffer bounded by
//! `RAGSCOPE_PARSE_MAX_BYTES` and parsed once, when the exchange ends. A body over the bound is
//! not parsed at all and the span says so; input that does not parse only sets an attribute.

pub mod anthropic;
pub mod api;
pub mod budget;
mod capture;
pub mod decode;
pub mod extract;
mod facts;
pub mod feedback;
pub mod gemini;
pub mod inference;
pub mod openai;
pub mod prices;
pub mod redact;
pub mod responses;
mod settings;
pub mod sse;
mod tee;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use http::{HeaderMap, Method, header};
use opentelemetry::trace::{SpanId, TraceId};

use api::{Api, Recognised};
use decode::{Decoder, Encoding};
use inference::ResponseInfo;
use redact::Redactor;

pub use budget::ParseBudget;
pub use capture::Content;
pub use facts::Facts;
pub use settings::{CaptureMode, Settings};
pub use tee::Tee;

pub use inference::{MAX_FIELD_BYTES, cap};

/// Distinct feedback labels kept as metric attribute values; later new ones are `other`.
const MAX_METRIC_LABELS: usize = 32;
/// Distinct model names kept as metric attribute values; later new ones are `other`.
pub const MAX_METRIC_MODELS: usize = 64;
/// Distinct API error types (from error events and bodies) kept as metric attribute values.
const MAX_METRIC_ERRORS: usize = 16;
/// Traces remembered so feedback can be parented to their server span.
const RECENT_TRACES: usize = 4096;

/// Shared GenAI state: configuration, compiled patterns, and the recent traces feedback
/// refers to.
#[derive(Debug)]
pub struct GenAi {
    config: Settings,
    redactor: Redactor,
    recent: Mutex<RecentTraces>,
    labels: Distinct,
    models: Distinct,
    errors: Distinct,
    /// Bytes all observation copies may hold together (`RAGSCOPE_PARSE_BUDGET`).
    budget: Arc<ParseBudget>,
}

/// Bytes redacted past a capture limit, so a secret that straddles the limit is still
/// recognised whole: longer than the API keys and tokens the redaction rules look for.
const REDACT_MARGIN: usize = 1024;

impl GenAi {
    /// Builds the shared state.
    pub fn new(config: Settings) -> GenAi {
        GenAi {
            // The patterns were compiled once already when the configuration was checked.
            redactor: config.redactor.clone(),
            recent: Mutex::new(RecentTraces::default()),
            labels: Distinct::new(MAX_METRIC_LABELS),
            models: Distinct::new(MAX_METRIC_MODELS),
            errors: Distinct::new(MAX_METRIC_ERRORS),
            budget: Arc::new(ParseBudget::new(config.parse_budget)),
            config,
        }
    }

    /// The process-wide budget the observation copies reserve from.
    pub fn budget(&self) -> &Arc<ParseBudget> {
        &self.budget
    }

    /// The configuration.
    pub fn config(&self) -> &Settings {
        &self.config
    }

    /// Whether `method path` is the feedback endpoint the proxy answers itself.
    pub fn is_feedback(&self, method: &Method, path: &str) -> bool {
        self.config.enabled
            && method == Method::POST
            && self.config.feedback_path.as_deref() == Some(path)
    }

    /// Remembers a request's sampled server span so later feedback can be parented to it.
    pub fn remember(&self, trace_id: TraceId, server_span_id: SpanId) {
        if !self.config.enabled || self.config.feedback_path.is_none() {
            return;
        }
        if let Ok(mut recent) = self.recent.lock() {
            recent.insert(trace_id, server_span_id);
        }
    }

    fn recall(&self, trace_id: TraceId) -> Option<SpanId> {
        self.recent.lock().ok()?.get(trace_id)
    }

    /// Starts observing a request, when GenAI observation is on and the request can carry
    /// facts: a POST. Every LLM API operation ragscope recognises ([`api`]) is a POST, the
    /// `RAGSCOPE_EXTRACT` rules and RAG `sources` are read from JSON bodies of POST exchanges
    /// (a query sent to the RAG server); a GET, HEAD, OPTIONS, PUT or DELETE is never read,
    /// so it costs nothing here.
    pub fn observe(self: &Arc<Self>, method: &Method, path: &str) -> Option<Observation> {
        if !self.config.enabled || method != Method::POST {
            return None;
        }
        Some(Observation {
            genai: self.clone(),
            recognised: Recognised::from_path(path),
            request: Arc::new(Mutex::new(Tee::new(
                self.config.parse_max_bytes,
                self.budget.clone(),
            ))),
            response: ResponseState::Pending,
            first_token: None,
            version: None,
            conversation: None,
            parse_error: None,
            response_truncated: false,
            request_encoding: Encoding::Identity,
            response_encoding: Encoding::Identity,
            skipped: None,
            budget_skipped: false,
        })
    }

    fn capture_limit(&self) -> Option<usize> {
        (self.config.capture != CaptureMode::Off).then_some(self.config.capture_max_bytes)
    }

    /// Redacts what of `text` can be kept within `limit` bytes, adding what was replaced to
    /// `counts` (kind, matches). The text is cut to `limit` plus [`REDACT_MARGIN`] first, so a
    /// huge prompt costs bounded work; the margin lets a secret that straddles `limit` still
    /// match whole (and a replacement that is longer than what it replaces still fit). The
    /// caller cuts the result to its budget.
    fn redact(&self, text: &str, limit: usize, counts: &mut Vec<(&'static str, u64)>) -> String {
        let mut head = String::new();
        inference::push_bounded(&mut head, text, limit.saturating_add(REDACT_MARGIN));
        self.redactor.redact(&head, counts).into_owned()
    }

    /// A feedback label as a metric attribute: lower-cased, bounded in length and number.
    fn bounded_label(&self, label: Option<&str>) -> String {
        match label {
            None => "none".to_owned(),
            Some(label) => self
                .labels
                .admit(&label.chars().take(32).collect::<String>().to_lowercase()),
        }
    }

    /// A model name (already capped) as a metric attribute: bounded in number.
    fn metric_model(&self, model: &str) -> String {
        self.models.admit(model)
    }
}

/// The values a client-fed metric attribute may take: the first `max` distinct values seen
/// are kept as they are, later new ones become `other`, so a client cannot grow a metric's
/// series without bound.
#[derive(Debug)]
struct Distinct {
    seen: Mutex<HashSet<String>>,
    max: usize,
}

impl Distinct {
    fn new(max: usize) -> Distinct {
        Distinct {
            seen: Mutex::new(HashSet::new()),
            max,
        }
    }

    /// `value` when it is known or there is room for it, else `other`.
    fn admit(&self, value: &str) -> String {
        let Ok(mut seen) = self.seen.lock() else {
            return "other".to_owned();
        };
        if seen.contains(value) {
            value.to_owned()
        } else if seen.len() < self.max {
            seen.insert(value.to_owned());
            value.to_owned()
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

/// The request body's copy, shared between the request body wrapper and the observation.
pub type RequestTee = Arc<Mutex<Tee>>;

enum ResponseState {
    /// No response head yet.
    Pending,
    /// A recognised API's event stream, parsed as it passes (decoded first, when compressed).
    Sse {
        api: Api,
        parser: Box<sse::SseParser>,
        info: Box<ResponseInfo>,
        decoding: Decoding,
    },
    /// A JSON body, copied for parsing at the end.
    Json(Tee),
    /// Nothing we read.
    Skip,
}

/// How a stream's copy is decoded before it is parsed.
enum Decoding {
    /// Not compressed: parsed as it comes.
    Plain,
    /// Decoded chunk by chunk.
    Coded(Box<Decoder>),
    /// Decoding stopped (past the bound, or corrupt): the rest is not read.
    Stopped,
}

/// One request's GenAI observation: a pure observer the proxy feeds with the request's copy,
/// the response head and every response frame; [`Observation::conclude`] reads the facts.
pub struct Observation {
    genai: Arc<GenAi>,
    recognised: Option<Recognised>,
    request: RequestTee,
    response: ResponseState,
    first_token: Option<(Instant, SystemTime)>,
    version: Option<String>,
    /// From `RAGSCOPE_CONVERSATION_HEADER`, when configured and sent (bounded).
    conversation: Option<String>,
    parse_error: Option<&'static str>,
    response_truncated: bool,
    /// The request body's `Content-Encoding`, undone on its copy when the exchange ends.
    request_encoding: Encoding,
    /// The JSON response's `Content-Encoding`, undone on its copy when the exchange ends.
    response_encoding: Encoding,
    /// Why a body was not read at all (`encoding`: a coding ragscope does not undo).
    skipped: Option<&'static str>,
    /// A stream's decoded bytes found no room in the parse budget.
    budget_skipped: bool,
}

impl std::fmt::Debug for Observation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observation")
            .field("api", &self.recognised.as_ref().map(|r| r.api))
            .finish_non_exhaustive()
    }
}

impl Observation {
    /// Reads the request head (the conversation header, when configured) and returns the copy
    /// the request body wrapper writes into, when the request body is JSON (or unlabelled).
    /// Other bodies (uploads, forms) are not copied.
    pub fn request_tee(&mut self, headers: &HeaderMap) -> Option<RequestTee> {
        if let Some(name) = &self.genai.config.conversation_header {
            self.conversation = headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(cap);
        }
        if !is_json_or_unlabelled(headers) {
            return None;
        }
        self.request_encoding = Encoding::of(headers);
        if self.request_encoding == Encoding::Unknown {
            self.skipped = Some("encoding");
            return None;
        }
        Some(self.request.clone())
    }

    /// The response head arrived: decide how to read the body, note the model version.
    pub fn response_head(&mut self, headers: &HeaderMap) {
        if let Some(name) = &self.genai.config.version_header {
            self.version = headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| cap(v.trim()));
        }
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase();
        let sse = content_type.starts_with("text/event-stream");
        let json = !sse && content_type.contains("json");
        let encoding = Encoding::of(headers);
        if (sse || json) && encoding == Encoding::Unknown {
            self.skipped = Some("encoding");
            self.response = ResponseState::Skip;
            return;
        }
        let limit = self.genai.config.parse_max_bytes;
        self.response = match &self.recognised {
            Some(r) if sse => {
                let decoding = match &encoding {
                    Encoding::Coded(codings) => {
                        match Decoder::new(codings, Tee::new(limit, self.genai.budget.clone())) {
                            Ok(d) => Decoding::Coded(Box::new(d)),
                            Err(_) => Decoding::Stopped,
                        }
                    }
                    _ => Decoding::Plain,
                };
                ResponseState::Sse {
                    api: r.api,
                    parser: Box::new(sse::SseParser::new(limit)),
                    info: Box::default(),
                    decoding,
                }
            }
            None if sse => ResponseState::Skip,
            _ if json => {
                self.response_encoding = encoding;
                ResponseState::Json(Tee::new(limit, self.genai.budget.clone()))
            }
            _ => ResponseState::Skip,
        };
    }

    /// A response frame was handed on; observe its copy.
    pub fn response_data(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let capture = self.genai.capture_limit();
        match &mut self.response {
            ResponseState::Sse {
                api,
                parser,
                info,
                decoding,
            } => {
                // A compressed stream is decoded chunk by chunk: each chunk's decoded bytes
                // count against the bound, and the buffer is kept for the next chunk.
                let mut decoded = Vec::new();
                let bytes = match decoding {
                    Decoding::Plain => data,
                    Decoding::Stopped => return,
                    Decoding::Coded(decoder) => match decoder.feed(data) {
                        Ok(()) => {
                            decoded = std::mem::take(&mut decoder.out().buf);
                            &decoded[..]
                        }
                        Err(e) => {
                            let notes = (
                                &mut self.response_truncated,
                                &mut self.budget_skipped,
                                &mut self.parse_error,
                            );
                            e.note(notes, "malformed_response_encoding");
                            *decoding = Decoding::Stopped;
                            return;
                        }
                    },
                };
                let first_token = &mut self.first_token;
                let parse_error = &mut self.parse_error;
                let api = *api;
                let report = parser.feed(bytes, |event| {
                    match api.on_event(info, &event.data, capture) {
                        Ok(kind) => {
                            if kind.content && first_token.is_none() {
                                *first_token = Some((Instant::now(), SystemTime::now()));
                            }
                        }
                        Err(_) => *parse_error = Some("malformed_sse_event"),
                    }
                });
                self.response_truncated |= report.truncated;
                if let Decoding::Coded(decoder) = decoding {
                    if report.truncated {
                        // An event past the bound in a compressed stream (a bomb of one endless
                        // line, say): the rest is not decoded at all.
                        *decoding = Decoding::Stopped;
                    } else {
                        decoded.clear();
                        decoder.out().buf = decoded;
                    }
                }
            }
            ResponseState::Json(tee) => tee.push(data),
            ResponseState::Pending | ResponseState::Skip => {}
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
}

#[cfg(test)]
mod redact_bound_tests {
    use super::*;
    use crate::config::Reader;

    #[test]
    fn only_a_bounded_head_is_redacted() {
        let genai = GenAi::new(
            Settings::from_reader(&Reader::new(&[] as &[(&str, &str)])).expect("defaults"),
        );
        let mut counts = Vec::new();
        // A secret straddling the limit is still redacted whole; e-mails far past the limit
        // and its margin are never looked at.
        let text = format!(
            "{}bob@example.com {}",
            "a".repeat(60),
            "carol@example.com ".repeat(100_000)
        );
        let out = genai.redact(&text, 64, &mut counts);
        assert!(out.len() <= 64 + REDACT_MARGIN + 64, "{}", out.len());
        assert!(!out.contains("bob@"), "{out}");
        let emails: u64 = counts.iter().map(|(_, n)| n).sum();
        assert!(emails <= 1 + (REDACT_MARGIN as u64) / 18 + 1, "{counts:?}");
    }
}
