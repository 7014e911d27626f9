//! The OpenAI-compatible API as ragscope reads it: which operation a path is, what a request
//! asks for, and what a response (one JSON body, or a stream of SSE chunks) says about the
//! model, the tokens and how generation finished.
//!
//! Parsing is lenient by design: a field of the wrong type is ignored, not an error, because
//! the same shapes come from many servers (vLLM, TGI, llama.cpp, Ollama, LiteLLM...) that each
//! bend the format a little. Only JSON that does not parse at all is reported, and even then
//! the request it belongs to is untouched.

use serde::Deserialize;
use serde_json::Value;

/// A GenAI operation, named as `gen_ai.operation.name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    TextCompletion,
    /// `/v1/embeddings`.
    Embeddings,
}

impl Operation {
    /// The operation an OpenAI-compatible path stands for, also under a prefix
    /// (`/openai/v1/chat/completions`). A trailing slash is tolerated.
    pub fn from_path(path: &str) -> Option<Operation> {
        let path = path.strip_suffix('/').unwrap_or(path);
        if path.ends_with("/v1/chat/completions") {
            Some(Operation::Chat)
        } else if path.ends_with("/v1/completions") {
            Some(Operation::TextCompletion)
        } else if path.ends_with("/v1/embeddings") {
            Some(Operation::Embeddings)
        } else {
            None
        }
    }

    /// The `gen_ai.operation.name` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Chat => "chat",
            Operation::TextCompletion => "text_completion",
            Operation::Embeddings => "embeddings",
        }
    }
}

/// What a request asked for.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RequestInfo {
    /// `model`.
    pub model: Option<String>,
    /// `stream`.
    pub stream: Option<bool>,
    /// `max_tokens`, or `max_completion_tokens` (the newer name).
    pub max_tokens: Option<i64>,
    /// `temperature`.
    pub temperature: Option<f64>,
    /// `top_p`.
    pub top_p: Option<f64>,
    /// The input as `(role, text)` pairs: chat `messages`, a completion `prompt`, embeddings
    /// `input`. Filled only when content capture asks for it.
    pub messages: Vec<(String, String)>,
}

/// JSON that did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed JSON: {0}")]
pub struct Malformed(pub String);

/// Reads a request body. `capture` also collects the input messages.
pub fn parse_request(body: &[u8], capture: bool) -> Result<RequestInfo, Malformed> {
    let v: Value = serde_json::from_slice(body).map_err(|e| Malformed(e.to_string()))?;
    Ok(request_from_value(&v, capture))
}

/// Reads an already parsed request body.
pub fn request_from_value(v: &Value, capture: bool) -> RequestInfo {
    let mut info = RequestInfo {
        model: v.get("model").and_then(Value::as_str).map(str::to_owned),
        stream: v.get("stream").and_then(Value::as_bool),
        max_tokens: v
            .get("max_tokens")
            .or_else(|| v.get("max_completion_tokens"))
            .and_then(Value::as_i64),
        temperature: v.get("temperature").and_then(Value::as_f64),
        top_p: v.get("top_p").and_then(Value::as_f64),
        messages: Vec::new(),
    };
    if capture {
        if let Some(messages) = v.get("messages").and_then(Value::as_array) {
            for m in messages {
                let role = m.get("role").and_then(Value::as_str).unwrap_or("user");
                info.messages
                    .push((role.to_owned(), content_text(m.get("content"))));
            }
        } else if let Some(p) = v.get("prompt").or_else(|| v.get("input")) {
            for text in texts(p) {
                info.messages.push(("user".to_owned(), text));
            }
        }
    }
    info
}

/// The text of a message `content`: a string, or the text parts of a multi-part array.
fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str).or_else(|| p.as_str()))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

/// A prompt or input: a string or an array of strings (token arrays are not text: skipped).
fn texts(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

/// What a response said, from one JSON body or accumulated over a stream.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ResponseInfo {
    /// `id`.
    pub id: Option<String>,
    /// `model`: the model that actually answered.
    pub model: Option<String>,
    /// One per choice, in choice order, as they arrived.
    pub finish_reasons: Vec<String>,
    /// `usage.prompt_tokens` (or `input_tokens`). `None` when the server did not say.
    pub input_tokens: Option<i64>,
    /// `usage.completion_tokens` (or `output_tokens`). `None` when the server did not say.
    pub output_tokens: Option<i64>,
    /// The answer text per choice index, reassembled from a stream; filled only when content
    /// capture asks for it, and bounded by `capture_limit`.
    pub output: Vec<String>,
    /// Events that carried generated content (streams only).
    pub content_events: u64,
}

/// `usage` under either naming.
#[derive(Debug, Default, Deserialize)]
struct Usage {
    #[serde(default, alias = "input_tokens")]
    prompt_tokens: Option<i64>,
    #[serde(default, alias = "output_tokens")]
    completion_tokens: Option<i64>,
}

/// A streamed chunk. Borrowing keeps the per-event cost to one pass over the bytes.
#[derive(Debug, Deserialize)]
struct Chunk<'a> {
    #[serde(default, borrow)]
    id: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    model: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    choices: Option<Vec<ChunkChoice<'a>>>,
    #[serde(default, deserialize_with = "lenient_usage")]
    usage: Option<Usage>,
}

#[derive(Debug, Deserialize)]
struct ChunkChoice<'a> {
    #[serde(default)]
    index: Option<u32>,
    #[serde(default, borrow)]
    delta: Option<Delta<'a>>,
    /// `/v1/completions` streams text here.
    #[serde(default, borrow)]
    text: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    finish_reason: Option<std::borrow::Cow<'a, str>>,
}

#[derive(Debug, Deserialize)]
struct Delta<'a> {
    #[serde(default, borrow)]
    content: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    reasoning_content: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    tool_calls: Option<serde::de::IgnoredAny>,
}

/// `usage: null` (sent on every chunk but the last by some servers) or an object of the wrong
/// shape both mean "not here".
fn lenient_usage<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Usage>, D::Error> {
    let v = Option::<Value>::deserialize(d)?;
    Ok(v.and_then(|v| serde_json::from_value(v).ok()))
}

/// What one stream event was.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EventKind {
    /// It carried generated content (text, reasoning or a tool call).
    pub content: bool,
    /// The `[DONE]` sentinel.
    pub done: bool,
}

impl ResponseInfo {
    /// Reads one complete JSON response body.
    pub fn parse_body(body: &[u8], capture_limit: Option<usize>) -> Result<Self, Malformed> {
        let v: Value = serde_json::from_slice(body).map_err(|e| Malformed(e.to_string()))?;
        Ok(Self::from_value(&v, capture_limit))
    }

    /// Reads an already parsed response body.
    pub fn from_value(v: &Value, capture_limit: Option<usize>) -> Self {
        let mut info = ResponseInfo {
            id: v.get("id").and_then(Value::as_str).map(str::to_owned),
            model: v.get("model").and_then(Value::as_str).map(str::to_owned),
            ..ResponseInfo::default()
        };
        if let Some(usage) = v.get("usage").and_then(|u| Usage::deserialize(u).ok()) {
            info.input_tokens = usage.prompt_tokens;
            info.output_tokens = usage.completion_tokens;
        }
        if let Some(choices) = v.get("choices").and_then(Value::as_array) {
            for c in choices {
                if let Some(r) = c.get("finish_reason").and_then(Value::as_str) {
                    info.finish_reasons.push(r.to_owned());
                }
                if let Some(limit) = capture_limit {
                    let text = c
                        .get("message")
                        .map(|m| content_text(m.get("content")))
                        .or_else(|| c.get("text").and_then(Value::as_str).map(str::to_owned))
                        .unwrap_or_default();
                    let mut s = String::new();
                    push_bounded(&mut s, &text, limit);
                    info.output.push(s);
                }
            }
        }
        info
    }

    /// Accumulates one stream event's data. Malformed JSON is reported and leaves the state as
    /// it was.
    pub fn on_event(
        &mut self,
        data: &[u8],
        capture_limit: Option<usize>,
    ) -> Result<EventKind, Malformed> {
        let trimmed = data.trim_ascii();
        if trimmed == b"[DONE]" {
            return Ok(EventKind {
                content: false,
                done: true,
            });
        }
        let chunk: Chunk<'_> =
            serde_json::from_slice(trimmed).map_err(|e| Malformed(e.to_string()))?;
        if self.id.is_none() {
            self.id = chunk.id.map(|s| s.into_owned());
        }
        if self.model.is_none() {
            self.model = chunk.model.map(|s| s.into_owned());
        }
        if let Some(usage) = chunk.usage {
            // The final usage chunk wins over any running count sent before it.
            if usage.prompt_tokens.is_some() {
                self.input_tokens = usage.prompt_tokens;
            }
            if usage.completion_tokens.is_some() {
                self.output_tokens = usage.completion_tokens;
            }
        }
        let mut kind = EventKind::default();
        for choice in chunk.choices.into_iter().flatten() {
            let text = choice
                .delta
                .as_ref()
                .and_then(|d| d.content.as_deref())
                .or(choice.text.as_deref())
                .unwrap_or("");
            let reasoning = choice
                .delta
                .as_ref()
                .and_then(|d| d.reasoning_content.as_deref())
                .is_some_and(|r| !r.is_empty());
            let tool = choice
                .delta
                .as_ref()
                .is_some_and(|d| d.tool_calls.is_some());
            if !text.is_empty() || reasoning || tool {
                kind.content = true;
            }
            if let Some(limit) = capture_limit
                && !text.is_empty()
            {
                let index = choice.index.unwrap_or(0) as usize;
                // Bounded: a hostile index must not allocate a huge vector.
                if index < 16 {
                    if self.output.len() <= index {
                        self.output.resize(index + 1, String::new());
                    }
                    push_bounded(&mut self.output[index], text, limit);
                }
            }
            if let Some(r) = choice.finish_reason {
                self.finish_reasons.push(r.into_owned());
            }
        }
        if kind.content {
            self.content_events += 1;
        }
        Ok(kind)
    }
}

/// Appends as much of `text` as fits in `limit` bytes, cut on a character boundary.
pub fn push_bounded(s: &mut String, text: &str, limit: usize) {
    let room = limit.saturating_sub(s.len());
    if text.len() <= room {
        s.push_str(text);
    } else {
        let mut cut = room;
        // A char boundary is at most 3 bytes back.
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        s.push_str(&text[..cut]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_from_paths() {
        assert_eq!(
            Operation::from_path("/v1/chat/completions"),
            Some(Operation::Chat)
        );
        assert_eq!(
            Operation::from_path("/api/openai/v1/chat/completions/"),
            Some(Operation::Chat)
        );
        assert_eq!(
            Operation::from_path("/v1/completions"),
            Some(Operation::TextCompletion)
        );
        assert_eq!(
            Operation::from_path("/v1/embeddings"),
            Some(Operation::Embeddings)
        );
        assert_eq!(Operation::from_path("/query"), None);
        assert_eq!(Operation::from_path("/v1/chat/completionsX"), None);
    }

    #[test]
    fn chat_request() {
        let body = br#"{"model":"rag-model","stream":true,"max_tokens":64,"temperature":0.2,
            "top_p":0.9,"messages":[{"role":"system","content":"be brief"},
            {"role":"user","content":[{"type":"text","text":"hi "},{"type":"text","text":"there"}]}]}"#;
        let info = parse_request(body, true).expect("parses");
        assert_eq!(info.model.as_deref(), Some("rag-model"));
        assert_eq!(info.stream, Some(true));
        assert_eq!(info.max_tokens, Some(64));
        assert_eq!(info.temperature, Some(0.2));
        assert_eq!(info.top_p, Some(0.9));
        assert_eq!(
            info.messages,
            vec![
                ("system".to_owned(), "be brief".to_owned()),
                ("user".to_owned(), "hi there".to_owned())
            ]
        );
        let info = parse_request(body, false).expect("parses");
        assert!(info.messages.is_empty());
    }

    #[test]
    fn wrong_types_are_ignored_and_bad_json_reported() {
        let info = parse_request(
            br#"{"model":7,"stream":"yes","max_completion_tokens":5}"#,
            false,
        )
        .expect("parses");
        assert_eq!(info.model, None);
        assert_eq!(info.stream, None);
        assert_eq!(info.max_tokens, Some(5));
        assert!(parse_request(b"{\"model\":", false).is_err());
        assert!(parse_request(b"", false).is_err());
    }

    #[test]
    fn chat_response() {
        let body = br#"{"id":"chatcmpl-1","model":"rag-model-2","choices":[
            {"index":0,"message":{"role":"assistant","content":"Paris"},"finish_reason":"stop"}],
            "usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}"#;
        let info = ResponseInfo::parse_body(body, Some(1024)).expect("parses");
        assert_eq!(info.id.as_deref(), Some("chatcmpl-1"));
        assert_eq!(info.model.as_deref(), Some("rag-model-2"));
        assert_eq!(info.finish_reasons, vec!["stop".to_owned()]);
        assert_eq!(info.input_tokens, Some(12));
        assert_eq!(info.output_tokens, Some(3));
        assert_eq!(info.output, vec!["Paris".to_owned()]);
    }

    #[test]
    fn embeddings_response_has_only_input_tokens() {
        let body = br#"{"object":"list","model":"embed","data":[{"embedding":[0.1]}],
            "usage":{"prompt_tokens":8,"total_tokens":8}}"#;
        let info = ResponseInfo::parse_body(body, None).expect("parses");
        assert_eq!(info.input_tokens, Some(8));
        assert_eq!(info.output_tokens, None);
        assert!(info.finish_reasons.is_empty());
    }

    #[test]
    fn stream_with_usage() {
        let mut info = ResponseInfo::default();
        let events: [&[u8]; 5] = [
            br#"{"id":"c1","model":"m","choices":[{"index":0,"delta":{"role":"assistant"}}],"usage":null}"#,
            br#"{"id":"c1","model":"m","choices":[{"index":0,"delta":{"content":"Hel"}}]}"#,
            br#"{"id":"c1","model":"m","choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":"stop"}]}"#,
            br#"{"id":"c1","model":"m","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2}}"#,
            b"[DONE]",
        ];
        let kinds: Vec<EventKind> = events
            .iter()
            .map(|e| info.on_event(e, Some(3)).expect("parses"))
            .collect();
        assert!(!kinds[0].content, "a role-only delta is not content");
        assert!(kinds[1].content && kinds[2].content);
        assert!(kinds[4].done);
        assert_eq!(info.id.as_deref(), Some("c1"));
        assert_eq!(info.input_tokens, Some(5));
        assert_eq!(info.output_tokens, Some(2));
        assert_eq!(info.finish_reasons, vec!["stop".to_owned()]);
        assert_eq!(info.content_events, 2);
        assert_eq!(info.output, vec!["Hel".to_owned()], "capped at 3 bytes");
    }

    #[test]
    fn stream_without_usage_says_absent() {
        let mut info = ResponseInfo::default();
        info.on_event(
            br#"{"choices":[{"text":"x","finish_reason":"length"}]}"#,
            None,
        )
        .expect("parses");
        assert_eq!(info.output_tokens, None);
        assert_eq!(info.input_tokens, None);
        assert_eq!(info.finish_reasons, vec!["length".to_owned()]);
    }

    #[test]
    fn malformed_events_are_reported_and_ignored() {
        let mut info = ResponseInfo::default();
        assert!(info.on_event(b"{\"choices\":[", None).is_err());
        assert!(info.on_event(b"not json", None).is_err());
        assert!(info.on_event(br#"{"choices":7}"#, None).is_err());
        assert_eq!(info, ResponseInfo::default());
    }

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
}
