//! The operator's view: what the last 15 minutes looked like (`/overview`), per model, and the
//! feedback users gave (`/feedback`), kept by ragscope itself in bounded memory, so no
//! Prometheus, Grafana or Jaeger is needed to see them.
//!
//! Input is plain data: one [`ExchangeSample`] per finished request and one [`FeedbackSample`]
//! per accepted feedback, which telemetry builds from each finished record, beside the metrics,
//! and hands to [`Overview::record`] / [`Overview::record_feedback`]. Those may run on any
//! thread, in any order relative to the pages: each takes one short lock and does bounded work
//! (a bucket update, a histogram increment, a push into a ring); strings in the samples are
//! moved in, never copied. Everything else (merging buckets, percentiles, reading the captured
//! question and answer, JSON, HTML) happens when a page is read or a feedback joins.

mod json;
pub mod page;
pub mod window;

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use json::entry_json;
use window::Window;

/// Overview buckets: 60 of 15 s, the last 15 minutes.
const BUCKETS: usize = 60;
const BUCKET_SECONDS: u64 = 15;
/// Per-model buckets: 15 of 60 s, the same 15 minutes more coarsely.
const MODEL_BUCKETS: usize = 15;
const MODEL_BUCKET_SECONDS: u64 = 60;
/// Models shown by name; later new ones are counted as `other`, so a client sending random
/// model names cannot grow the table.
pub const MAX_MODELS: usize = 16;
/// Longest model name kept (longer ones are cut).
const MAX_MODEL_CHARS: usize = 128;
/// Feedback entries kept for review.
pub const FEEDBACK_CAPACITY: usize = 500;
/// Recent GenAI exchanges remembered so feedback can show the model, the documents and (with
/// capture on) the question and answer it is about.
const JOIN_CAPACITY: usize = 1024;
/// Longest feedback label kept.
const MAX_LABEL_CHARS: usize = 128;

/// One finished request, as the overview needs it.
#[derive(Debug, Clone)]
pub struct ExchangeSample {
    /// When the response ended (or the client went away).
    pub end: SystemTime,
    /// From the first byte of the request to the end.
    pub duration: Duration,
    /// The response status, when one was sent.
    pub status: Option<u16>,
    /// `error.type` was set (proxy errors, upstream 5xx, broken streams).
    pub error: bool,
    /// Refused by the rate limit.
    pub rate_limited: bool,
    /// The client went away first.
    pub cancelled: bool,
    /// The request's trace id, when traces are on.
    pub trace_id: Option<[u8; 16]>,
    /// GenAI and RAG facts, for traffic the GenAI reading recognised.
    pub genai: Option<GenAiSample>,
}

/// The GenAI/RAG part of an [`ExchangeSample`]. Strings are already bounded by the reader.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenAiSample {
    /// The response model, else the request model.
    pub model: Option<String>,
    /// Time to first token of a streamed answer.
    pub ttft: Option<Duration>,
    /// `gen_ai.usage.input_tokens`.
    pub input_tokens: Option<u64>,
    /// `gen_ai.usage.output_tokens`.
    pub output_tokens: Option<u64>,
    /// The inference's cost in USD, when a price is known for it.
    pub cost: Option<f64>,
    /// Documents the retrieval returned; `Some(0)` is an empty retrieval.
    pub documents: Option<u32>,
    /// The best document score.
    pub top_score: Option<f64>,
    /// The upstream's model version (`RAGSCOPE_VERSION_HEADER`), for a future canary split.
    pub version: Option<String>,
    /// `gen_ai.input.messages` as captured (redacted, bounded JSON), only with content
    /// capture on: the feedback review shows its last user message as the question.
    pub input_messages: Option<String>,
    /// `gen_ai.output.messages` as captured, only with content capture on: the feedback review
    /// shows its first message as the answer.
    pub output_messages: Option<String>,
}

/// One accepted feedback, as the review page needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedbackSample {
    /// The trace the feedback is about.
    pub trace_id: [u8; 16],
    /// When it arrived.
    pub time: SystemTime,
    /// The score.
    pub score: f64,
    /// The label, if any.
    pub label: Option<String>,
    /// The comment, only with content capture on, redacted and bounded.
    pub comment: Option<String>,
}

/// A feedback entry with what is known about the request it is about.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedbackEntry {
    /// The feedback itself.
    pub feedback: FeedbackSample,
    /// The request's model, when ragscope still remembers the request.
    pub model: Option<String>,
    /// The request's document count.
    pub documents: Option<u32>,
    /// The request's question (content capture only).
    pub question: Option<String>,
    /// The request's answer (content capture only).
    pub answer: Option<String>,
}

/// What is remembered of a recent GenAI exchange for joining.
#[derive(Debug)]
struct Joined {
    trace_id: [u8; 16],
    model: Option<String>,
    documents: Option<u32>,
    input_messages: Option<String>,
    output_messages: Option<String>,
}

/// The shared aggregation.
#[derive(Debug)]
pub struct Overview {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    overall: Window,
    models: Vec<(String, Window)>,
    other: Window,
    joined: VecDeque<Joined>,
    feedback: VecDeque<FeedbackEntry>,
}

impl Overview {
    /// An empty overview.
    pub fn new() -> Overview {
        Overview {
            inner: Mutex::new(Inner {
                overall: Window::new(BUCKETS, BUCKET_SECONDS),
                models: Vec::with_capacity(MAX_MODELS),
                other: Window::new(MODEL_BUCKETS, MODEL_BUCKET_SECONDS),
                joined: VecDeque::with_capacity(JOIN_CAPACITY),
                feedback: VecDeque::with_capacity(FEEDBACK_CAPACITY),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update leaves the figures consistent, so a panic elsewhere cannot spoil them.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts one finished request.
    pub fn record(&self, mut sample: ExchangeSample) {
        // A model name past the cap is cut once, here, so equal prefixes share one row.
        if let Some(model) = sample.genai.as_mut().and_then(|g| g.model.as_mut())
            && model.len() > MAX_MODEL_CHARS
        {
            *model = model.chars().take(MAX_MODEL_CHARS).collect();
        }
        let secs = unix_secs(sample.end);
        let mut inner = self.lock();
        let inner = &mut *inner;
        add(inner.overall.at(secs), &sample);
        let Some(genai) = &sample.genai else { return };
        if let Some(model) = &genai.model {
            let window = match inner.models.iter().position(|(m, _)| m == model) {
                Some(i) => &mut inner.models[i].1,
                None if inner.models.len() < MAX_MODELS => {
                    inner.models.push((
                        model.clone(),
                        Window::new(MODEL_BUCKETS, MODEL_BUCKET_SECONDS),
                    ));
                    let last = inner.models.len() - 1;
                    &mut inner.models[last].1
                }
                None => &mut inner.other,
            };
            add(window.at(secs), &sample);
        }
        if let (Some(trace_id), Some(genai)) = (sample.trace_id, sample.genai) {
            if inner.joined.len() >= JOIN_CAPACITY {
                inner.joined.pop_front();
            }
            inner.joined.push_back(Joined {
                trace_id,
                model: genai.model,
                documents: genai.documents,
                input_messages: genai.input_messages,
                output_messages: genai.output_messages,
            });
        }
    }

    /// Keeps one feedback for review and counts its score.
    pub fn record_feedback(&self, mut sample: FeedbackSample) {
        if let Some(label) = &mut sample.label
            && label.chars().count() > MAX_LABEL_CHARS
        {
            *label = label.chars().take(MAX_LABEL_CHARS).collect();
        }
        let mut inner = self.lock();
        let stats = inner.overall.at(unix_secs(sample.time));
        stats.feedback += 1;
        stats.feedback_sum += sample.score;
        let joined = inner
            .joined
            .iter()
            .rev()
            .find(|j| j.trace_id == sample.trace_id);
        let entry = FeedbackEntry {
            model: joined.and_then(|j| j.model.clone()),
            documents: joined.and_then(|j| j.documents),
            question: joined
                .and_then(|j| j.input_messages.as_deref())
                .and_then(|m| message_text(m, Some("user"), true)),
            answer: joined
                .and_then(|j| j.output_messages.as_deref())
                .and_then(|m| message_text(m, None, false)),
            feedback: sample,
        };
        if inner.feedback.len() >= FEEDBACK_CAPACITY {
            inner.feedback.pop_front();
        }
        inner.feedback.push_back(entry);
    }

    /// The kept feedback, newest first, or lowest score first (ties: newest first).
    pub fn feedback(&self, lowest_first: bool, trace_id: Option<[u8; 16]>) -> Vec<FeedbackEntry> {
        let mut all: Vec<FeedbackEntry> = self
            .lock()
            .feedback
            .iter()
            .rev()
            .filter(|e| trace_id.is_none_or(|t| e.feedback.trace_id == t))
            .cloned()
            .collect();
        if lowest_first {
            // Stable: equal scores keep newest first.
            all.sort_by(|a, b| a.feedback.score.total_cmp(&b.feedback.score));
        }
        all
    }
}

impl Default for Overview {
    fn default() -> Overview {
        Overview::new()
    }
}

/// The text of one captured message (semantic-conventions JSON: `[{"role", "parts": [{"type",
/// "content"}]}]`): the last (`last`) or first one with `role` (any role when `None`).
fn message_text(messages: &str, role: Option<&str>, last: bool) -> Option<String> {
    let messages: Vec<serde_json::Value> = serde_json::from_str(messages).ok()?;
    let text = |m: &serde_json::Value| -> Option<String> {
        let parts = m["parts"].as_array()?;
        let text: Vec<&str> = parts
            .iter()
            .filter(|p| p["type"] == "text")
            .filter_map(|p| p["content"].as_str())
            .collect();
        (!text.is_empty()).then(|| text.concat())
    };
    let matching = messages
        .iter()
        .filter(|m| role.is_none_or(|r| m["role"] == r));
    if last {
        matching.filter_map(text).next_back()
    } else {
        matching.filter_map(text).next()
    }
}

fn add(stats: &mut window::Stats, s: &ExchangeSample) {
    stats.requests += 1;
    stats.errors += u64::from(s.error);
    stats.rate_limited += u64::from(s.rate_limited);
    stats.cancelled += u64::from(s.cancelled);
    stats.latency.record(s.duration.as_secs_f64());
    if let Some(g) = &s.genai {
        add_genai(stats, g);
    }
}

fn add_genai(stats: &mut window::Stats, g: &GenAiSample) {
    if let Some(ttft) = g.ttft {
        stats.ttft.record(ttft.as_secs_f64());
    }
    stats.input_tokens += g.input_tokens.unwrap_or(0);
    stats.output_tokens += g.output_tokens.unwrap_or(0);
    if let Some(n) = g.documents {
        stats.retrievals += 1;
        stats.empty_retrievals += u64::from(n == 0);
    }
    if let Some(c) = g.cost.filter(|c| c.is_finite()) {
        stats.cost += c;
        stats.costed += 1;
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Lowercase hex of a trace id.
pub fn hex(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// A trace id from 32 hex digits.
pub fn parse_trace_id(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests;
