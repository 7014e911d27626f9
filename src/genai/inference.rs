//! The normalised view of one inference, whatever LLM API it went through: what the request
//! asked for ([`RequestInfo`]) and what the response said ([`ResponseInfo`]). Each API module
//! (`openai`, `responses`, `anthropic`, `gemini`) reads its own wire format into these, so
//! everything downstream (the observer's facts, telemetry, cost) is written once.
//!
//! Token counts follow the GenAI conventions: `input_tokens` includes cached input (read and
//! written), `output_tokens` includes reasoning. An API that reports them apart (Anthropic input,
//! Gemini thoughts) is added up by its reader. `None` always means "the server did not say",
//! never zero.

use std::borrow::Cow;

/// Longest client- or server-chosen string ragscope keeps from a field that reaches a span,
/// event, ring entry, overview or log (models, ids, finish reasons, tool names, conversation
/// ids, versions, feedback labels, extracted values, user agents); longer ones are cut on a
/// character boundary by [`cap`]. One bound for all of them, documented in the README.
pub const MAX_FIELD_BYTES: usize = 256;
/// Finish reasons kept per response (one per choice or candidate).
pub const MAX_FINISH_REASONS: usize = 16;
/// Distinct tool names kept per response.
pub const MAX_TOOL_NAMES: usize = 16;
/// Tool-call parts captured per response (with content capture on).
pub const MAX_TOOL_PARTS: usize = 32;
/// Choices or candidates whose text is captured.
pub const MAX_OUTPUTS: usize = 16;

/// A GenAI operation, named as `gen_ai.operation.name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Chat-style generation: OpenAI chat completions and Responses, Anthropic Messages.
    Chat,
    /// `/v1/completions`.
    TextCompletion,
    /// `/v1/embeddings`.
    Embeddings,
    /// Gemini `generateContent` / `streamGenerateContent`.
    GenerateContent,
}

impl Operation {
    /// The `gen_ai.operation.name` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Chat => "chat",
            Operation::TextCompletion => "text_completion",
            Operation::Embeddings => "embeddings",
            Operation::GenerateContent => "generate_content",
        }
    }
}

/// JSON that did not parse (or was not the shape an API's reader needs at its top level).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed JSON: {0}")]
pub struct Malformed(pub String);

impl From<serde_json::Error> for Malformed {
    fn from(e: serde_json::Error) -> Self {
        Malformed(e.to_string())
    }
}

/// What a request asked for.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RequestInfo {
    /// The requested model (body field, or the path for Gemini).
    pub model: Option<String>,
    /// Whether a stream was asked for.
    pub stream: Option<bool>,
    /// The output token limit, under the API's name for it.
    pub max_tokens: Option<i64>,
    /// Choices (completions) asked for: OpenAI `n` (or `best_of`, which generates that many),
    /// Gemini `generationConfig.candidateCount`. Each is charged its own output.
    pub choices: Option<i64>,
    /// `temperature`.
    pub temperature: Option<f64>,
    /// `top_p`.
    pub top_p: Option<f64>,
    /// `top_k` (Anthropic, Gemini).
    pub top_k: Option<f64>,
    /// The conversation the API itself names (Responses `conversation`, else
    /// `previous_response_id`).
    pub conversation_id: Option<String>,
    /// The input as `(role, text)` pairs. Filled only when content capture asks for it.
    pub messages: Vec<(String, String)>,
}

/// What an inference reports beyond its token totals, the same in a reader's [`ResponseInfo`]
/// and in the merged facts.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Detail {
    /// Input tokens read from the provider's prompt cache (part of `input_tokens`).
    pub cache_read_tokens: Option<i64>,
    /// Input tokens written to the provider's prompt cache (part of `input_tokens`).
    pub cache_creation_tokens: Option<i64>,
    /// Output tokens spent on reasoning (part of `output_tokens`).
    pub reasoning_tokens: Option<i64>,
    /// Tool calls the model asked for.
    pub tool_calls: u32,
    /// Their distinct names, in order of first appearance (at most [`MAX_TOOL_NAMES`]).
    pub tool_names: Vec<String>,
}

/// One tool call the model asked for, captured for `gen_ai.output.messages`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ToolCallPart {
    /// The call id (`call_...`, `toolu_...`), when the API gives one.
    pub id: Option<String>,
    /// The tool's name.
    pub name: String,
    /// The arguments as the model wrote them (JSON text), bounded by the capture limit.
    pub arguments: String,
    /// The stream index the API uses to route argument deltas to this call.
    pub(crate) key: u64,
}

/// What a response said, from one JSON body or accumulated over a stream.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ResponseInfo {
    /// The response id.
    pub id: Option<String>,
    /// The model that actually answered.
    pub model: Option<String>,
    /// One per choice or candidate, as they arrived (at most [`MAX_FINISH_REASONS`]).
    pub finish_reasons: Vec<String>,
    /// Input tokens, cached ones included.
    pub input_tokens: Option<i64>,
    /// Output tokens, reasoning included.
    pub output_tokens: Option<i64>,
    /// Cache and reasoning token detail, tool calls.
    pub detail: Detail,
    /// The conversation the API names in its answer (Responses `conversation.id`).
    pub conversation_id: Option<String>,
    /// An error the API reported in the body or as a stream event (`overloaded_error`,
    /// `server_error`...): the stream did not end normally.
    pub error_type: Option<String>,
    /// The answer text per choice index; filled only when content capture asks for it, and
    /// bounded by the capture limit.
    pub output: Vec<String>,
    /// Tool-call parts, with content capture on.
    pub tool_parts: Vec<ToolCallPart>,
    /// Events that carried generated content (streams only).
    pub content_events: u64,
}

/// What one stream event was.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EventKind {
    /// It carried generated content (text, reasoning or a tool call).
    pub content: bool,
    /// The stream's own end marker (`[DONE]`, `message_stop`, `response.completed`...).
    pub done: bool,
}

impl EventKind {
    /// A content-bearing event.
    pub const CONTENT: EventKind = EventKind {
        content: true,
        done: false,
    };
    /// The end of the stream.
    pub const DONE: EventKind = EventKind {
        content: false,
        done: true,
    };
}

impl ResponseInfo {
    /// Sets `id` once, bounded.
    pub(crate) fn set_id(&mut self, id: Option<&str>) {
        if self.id.is_none() {
            self.id = id.map(cap);
        }
    }

    /// Sets `model` once, bounded.
    pub(crate) fn set_model(&mut self, model: Option<&str>) {
        if self.model.is_none() {
            self.model = model.map(cap);
        }
    }

    /// Adds a finish reason, bounded in length and number, once per distinct value: a
    /// stream that repeats its reason on every chunk still yields one entry.
    pub(crate) fn push_finish_reason(&mut self, reason: &str) {
        let reason = cut(reason, MAX_FIELD_BYTES);
        if self.finish_reasons.len() < MAX_FINISH_REASONS
            && !self.finish_reasons.iter().any(|r| r == reason)
        {
            self.finish_reasons.push(reason.to_owned());
        }
    }

    /// Counts one tool call named `name`; with `capture`, opens its part under `key` so that
    /// argument deltas can be appended with [`ResponseInfo::tool_arguments`].
    pub(crate) fn tool_call(
        &mut self,
        key: u64,
        id: Option<&str>,
        name: &str,
        arguments: &str,
        capture: Option<usize>,
    ) {
        self.detail.tool_calls = self.detail.tool_calls.saturating_add(1);
        if self.detail.tool_names.len() < MAX_TOOL_NAMES
            && !self.detail.tool_names.iter().any(|n| n == name)
        {
            self.detail.tool_names.push(cap(name));
        }
        if let Some(limit) = capture
            && self.tool_parts.len() < MAX_TOOL_PARTS
        {
            let mut part = ToolCallPart {
                id: id.map(cap),
                name: cap(name),
                arguments: String::new(),
                key,
            };
            push_bounded(&mut part.arguments, arguments, limit);
            self.tool_parts.push(part);
        }
    }

    /// Appends streamed arguments to the tool-call part opened under `key`.
    pub(crate) fn tool_arguments(&mut self, key: u64, delta: &str, capture: Option<usize>) {
        if let Some(limit) = capture
            && let Some(part) = self.tool_parts.iter_mut().rev().find(|p| p.key == key)
        {
            push_bounded(&mut part.arguments, delta, limit);
        }
    }

    /// Appends captured text to output `index` (ignored past [`MAX_OUTPUTS`]: a hostile index
    /// must not allocate a huge vector).
    pub(crate) fn push_output(&mut self, index: usize, text: &str, capture: Option<usize>) {
        let Some(limit) = capture else { return };
        if text.is_empty() || index >= MAX_OUTPUTS {
            return;
        }
        if self.output.len() <= index {
            self.output.resize(index + 1, String::new());
        }
        push_bounded(&mut self.output[index], text, limit);
    }

    /// Notes an API error, keeping the first.
    pub(crate) fn set_error(&mut self, kind: &str) {
        if self.error_type.is_none() {
            self.error_type = Some(cap(kind));
        }
    }
}

/// A string field, bounded to [`MAX_FIELD_BYTES`]: the one cap for every client-chosen
/// string that is stored.
pub fn cap(s: &str) -> String {
    cut(s, MAX_FIELD_BYTES).to_owned()
}

/// The longest prefix of `s` within `limit` bytes that ends on a character boundary.
pub fn cut(s: &str, limit: usize) -> &str {
    if s.len() <= limit {
        return s;
    }
    let mut end = limit;
    // A char boundary is at most 3 bytes back.
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A borrowed-or-owned string as serde hands it out (owned only when it had escapes).
pub(crate) type Str<'a> = Cow<'a, str>;

/// Parses `body` as `T`, leniently: JSON of another shape (an array, a field of an unexpected
/// type the reader does not tolerate) reads as `T::default()`; only bytes that are not JSON are
/// malformed. The second parse runs on that rare path only.
pub(crate) fn parse_or_default<'a, T>(body: &'a [u8]) -> Result<T, Malformed>
where
    T: serde::Deserialize<'a> + Default,
{
    match serde_json::from_slice(body) {
        Ok(t) => Ok(t),
        Err(_) if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok() => Ok(T::default()),
        Err(e) => Err(e.into()),
    }
}

/// Appends as much of `text` as fits in `limit` bytes, cut on a character boundary.
pub fn push_bounded(s: &mut String, text: &str, limit: usize) {
    s.push_str(cut(text, limit.saturating_sub(s.len())));
}

/// Deserialises a field leniently: a value of the wrong type reads as absent instead of
/// failing the whole document, because servers bend these formats a little.
pub(crate) mod lenient {
    use serde::{Deserialize, Deserializer};

    /// `Option<T>` that is `None` for a value that is not a `T`.
    pub fn opt<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de>,
    {
        Ok(Lenient::<T>::deserialize(d)?.0)
    }

    struct Lenient<T>(Option<T>);

    impl<'de, T: Deserialize<'de>> Deserialize<'de> for Lenient<T> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            // Untagged: try T, else swallow whatever value is there.
            #[derive(Deserialize)]
            #[serde(untagged)]
            enum Either<T> {
                Yes(T),
                No(serde::de::IgnoredAny),
            }
            Ok(Lenient(match Either::<T>::deserialize(d)? {
                Either::Yes(t) => Some(t),
                Either::No(_) => None,
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_push_cuts_on_a_character_boundary() {
        let mut s = String::new();
        push_bounded(&mut s, "aé€", 4);
        assert_eq!(s, "aé");
        push_bounded(&mut s, "€", 4);
        assert_eq!(s, "aé", "no room for a 3-byte character in the last byte");
        push_bounded(&mut s, "zz", 4);
        assert_eq!(s, "aéz");
    }

    #[test]
    fn tool_calls_are_counted_and_names_bounded() {
        let mut r = ResponseInfo::default();
        for i in 0..40u64 {
            r.tool_call(i, None, &format!("tool{}", i % 20), "{", Some(8));
        }
        assert_eq!(r.detail.tool_calls, 40);
        assert_eq!(r.detail.tool_names.len(), MAX_TOOL_NAMES);
        assert_eq!(r.tool_parts.len(), MAX_TOOL_PARTS);
        r.tool_arguments(3, "\"a\":1234567}", Some(8));
        assert_eq!(r.tool_parts[3].arguments, "{\"a\":123");
        r.push_output(1000, "x", Some(8));
        assert!(r.output.is_empty());
        assert_eq!(cap(&"x".repeat(1000)).len(), MAX_FIELD_BYTES);
    }
}
