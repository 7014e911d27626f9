//! The OpenAI-compatible API as ragscope reads it (which path is which API is [`super::api`]'s
//! job): what a request asks for, and what a response (one JSON body, or a stream of SSE chunks) says about the
//! model, the tokens and how generation finished.
//!
//! Parsing is lenient by design: a field of the wrong type is ignored, not an error, because
//! the same shapes come from many servers (vLLM, TGI, llama.cpp, Ollama, LiteLLM...) that each
//! bend the format a little. Only JSON that does not parse at all is reported, and even then
//! the request it belongs to is untouched.

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

pub use super::inference::{
    EventKind, Malformed, Operation, RequestInfo, ResponseInfo, ToolCallPart, push_bounded,
};
use super::inference::{Str, cap, lenient, parse_or_default};

/// A request body as the reader needs it: the scalars typed, the parts only capture reads
/// (messages, prompt, input) left as borrowed raw JSON, so a request is read without building a
/// tree of its messages (this runs for every chat request on the telemetry thread).
#[derive(Debug, Default, Deserialize)]
struct Request<'a> {
    #[serde(default, deserialize_with = "lenient::opt")]
    model: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt")]
    stream: Option<bool>,
    #[serde(default, deserialize_with = "lenient::opt")]
    max_tokens: Option<i64>,
    #[serde(default, deserialize_with = "lenient::opt")]
    max_completion_tokens: Option<i64>,
    #[serde(default, deserialize_with = "lenient::opt")]
    n: Option<i64>,
    #[serde(default, deserialize_with = "lenient::opt")]
    best_of: Option<i64>,
    #[serde(default, deserialize_with = "lenient::opt")]
    temperature: Option<f64>,
    #[serde(default, deserialize_with = "lenient::opt")]
    top_p: Option<f64>,
    #[serde(borrow, default)]
    messages: Option<&'a RawValue>,
    #[serde(borrow, default)]
    prompt: Option<&'a RawValue>,
    #[serde(borrow, default)]
    input: Option<&'a RawValue>,
}

/// Reads a request body. `capture` also collects the input messages. JSON that parses but is
/// not an object (an unrecognised API's body may be anything) reads as nothing, not malformed.
pub fn parse_request(body: &[u8], capture: bool) -> Result<RequestInfo, Malformed> {
    let r: Request<'_> = parse_or_default(body)?;
    let mut info = RequestInfo {
        model: r.model.as_deref().map(cap),
        stream: r.stream,
        max_tokens: r.max_tokens.or(r.max_completion_tokens),
        // Completions' `best_of` generates (and bills) that many, returning `n` of them.
        choices: r.n.max(r.best_of),
        temperature: r.temperature,
        top_p: r.top_p,
        ..RequestInfo::default()
    };
    if capture {
        let parsed = |raw: Option<&RawValue>| -> Option<Value> {
            raw.and_then(|raw| serde_json::from_str(raw.get()).ok())
        };
        if let Some(Value::Array(messages)) = parsed(r.messages) {
            for m in &messages {
                let role = m.get("role").and_then(Value::as_str).unwrap_or("user");
                info.messages
                    .push((role.to_owned(), content_text(m.get("content"))));
            }
        } else if let Some(p) = parsed(r.prompt).or_else(|| parsed(r.input)) {
            for text in texts(&p) {
                info.messages.push(("user".to_owned(), text));
            }
        }
    }
    Ok(info)
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

/// OpenAI `usage` under either naming, with the cache and reasoning detail (both already included in
/// the totals, as OpenAI counts them).
/// Shared with the Responses API reader (same names, same rule).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Usage {
    #[serde(default, alias = "input_tokens", deserialize_with = "lenient::opt")]
    prompt_tokens: Option<i64>,
    #[serde(default, alias = "output_tokens", deserialize_with = "lenient::opt")]
    completion_tokens: Option<i64>,
    #[serde(
        default,
        alias = "input_tokens_details",
        deserialize_with = "lenient::opt"
    )]
    prompt_tokens_details: Option<InputDetails>,
    #[serde(
        default,
        alias = "output_tokens_details",
        deserialize_with = "lenient::opt"
    )]
    completion_tokens_details: Option<OutputDetails>,
}

#[derive(Debug, Default, Deserialize)]
struct InputDetails {
    #[serde(default, deserialize_with = "lenient::opt")]
    cached_tokens: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
struct OutputDetails {
    #[serde(default, deserialize_with = "lenient::opt")]
    reasoning_tokens: Option<i64>,
}

impl Usage {
    /// Records the counts; a later usage (the final chunk) wins over a running count before it.
    pub(crate) fn apply(self, info: &mut ResponseInfo) {
        if self.prompt_tokens.is_some() {
            info.input_tokens = self.prompt_tokens;
        }
        if self.completion_tokens.is_some() {
            info.output_tokens = self.completion_tokens;
        }
        if let Some(n) = self.prompt_tokens_details.and_then(|d| d.cached_tokens) {
            info.detail.cache_read_tokens = Some(n);
        }
        if let Some(n) = self
            .completion_tokens_details
            .and_then(|d| d.reasoning_tokens)
        {
            info.detail.reasoning_tokens = Some(n);
        }
    }
}

/// A streamed chunk, or a whole response body: the same shape with `delta` or `message`.
/// Borrowing keeps the per-event cost to one pass over the bytes.
#[derive(Debug, Default, Deserialize)]
struct Chunk<'a> {
    #[serde(default, borrow)]
    id: Option<Str<'a>>,
    #[serde(default, borrow)]
    model: Option<Str<'a>>,
    #[serde(default, borrow)]
    choices: Option<Vec<Choice<'a>>>,
    /// `usage: null` (sent on every chunk but the last by some servers) or an object of the
    /// wrong shape both mean "not here".
    #[serde(default, deserialize_with = "lenient::opt")]
    usage: Option<Usage>,
    #[serde(default, borrow)]
    error: Option<ApiError<'a>>,
}

#[derive(Debug, Deserialize)]
struct Choice<'a> {
    #[serde(default)]
    index: Option<u32>,
    /// A stream's increment.
    #[serde(default, borrow)]
    delta: Option<Message<'a>>,
    /// A whole body's answer.
    #[serde(default, borrow)]
    message: Option<Message<'a>>,
    /// `/v1/completions` puts its text here.
    #[serde(default, borrow)]
    text: Option<Str<'a>>,
    #[serde(default, borrow)]
    finish_reason: Option<Str<'a>>,
}

#[derive(Debug, Deserialize)]
struct Message<'a> {
    #[serde(default, borrow)]
    content: Option<Content<'a>>,
    #[serde(default, borrow, alias = "reasoning")]
    reasoning_content: Option<Str<'a>>,
    #[serde(default, borrow)]
    tool_calls: Option<Vec<ToolCall<'a>>>,
}

/// Message content: a string, or (some servers) an array of text parts.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content<'a> {
    #[serde(borrow)]
    Text(Str<'a>),
    #[serde(borrow)]
    Parts(Vec<Part<'a>>),
    Other(serde::de::IgnoredAny),
}

#[derive(Debug, Deserialize)]
struct Part<'a> {
    #[serde(default, borrow)]
    text: Option<Str<'a>>,
}

#[derive(Debug, Deserialize)]
struct ToolCall<'a> {
    /// Streams route argument deltas by this index; whole bodies list calls in order.
    #[serde(default)]
    index: Option<u32>,
    #[serde(default, borrow)]
    id: Option<Str<'a>>,
    #[serde(default, borrow)]
    function: Option<Function<'a>>,
}

#[derive(Debug, Deserialize)]
struct Function<'a> {
    #[serde(default, borrow)]
    name: Option<Str<'a>>,
    #[serde(default, borrow)]
    arguments: Option<Str<'a>>,
}

/// `{"error": {"type"|"code": ..., "message": ...}}`, in a body or a stream event.
#[derive(Debug, Deserialize)]
pub(crate) struct ApiError<'a> {
    #[serde(default, borrow, rename = "type")]
    kind: Option<Str<'a>>,
    #[serde(default, deserialize_with = "lenient::opt")]
    code: Option<String>,
}

impl ApiError<'_> {
    /// The error's kind: its `type`, else its `code`, else `error`.
    pub(crate) fn kind(&self) -> &str {
        self.kind
            .as_deref()
            .or(self.code.as_deref())
            .unwrap_or("error")
    }
}

/// Reads one complete JSON response body.
pub fn parse_body(body: &[u8], capture: Option<usize>) -> Result<ResponseInfo, Malformed> {
    let chunk: Chunk<'_> = parse_or_default(body)?;
    Ok(read(chunk, capture))
}

/// Accumulates one stream event's data into `info`. Malformed JSON is reported and leaves the
/// state as it was.
pub fn on_event(
    info: &mut ResponseInfo,
    data: &[u8],
    capture: Option<usize>,
) -> Result<EventKind, Malformed> {
    let trimmed = data.trim_ascii();
    if trimmed == b"[DONE]" {
        return Ok(EventKind::DONE);
    }
    let chunk: Chunk<'_> = serde_json::from_slice(trimmed)?;
    let content = accumulate(info, chunk, capture, true);
    if content {
        info.content_events += 1;
    }
    Ok(EventKind {
        content,
        done: false,
    })
}

fn read(chunk: Chunk<'_>, capture: Option<usize>) -> ResponseInfo {
    let mut info = ResponseInfo::default();
    accumulate(&mut info, chunk, capture, false);
    info
}

/// Folds a chunk (or body) into `info`; says whether it carried generated content.
fn accumulate(
    info: &mut ResponseInfo,
    chunk: Chunk<'_>,
    capture: Option<usize>,
    stream: bool,
) -> bool {
    info.set_id(chunk.id.as_deref());
    info.set_model(chunk.model.as_deref());
    if let Some(usage) = chunk.usage {
        usage.apply(info);
    }
    if let Some(e) = &chunk.error {
        info.set_error(e.kind());
    }
    let mut content = false;
    for (position, choice) in chunk.choices.into_iter().flatten().enumerate() {
        let index = choice.index.map_or(position, |i| i as usize);
        let message = choice.delta.as_ref().or(choice.message.as_ref());
        let text = match message.and_then(|m| m.content.as_ref()) {
            Some(Content::Text(t)) => Some(t.as_ref()),
            _ => choice.text.as_deref(),
        };
        if let Some(Content::Parts(parts)) = message.and_then(|m| m.content.as_ref()) {
            for p in parts {
                let t = p.text.as_deref().unwrap_or("");
                content |= !t.is_empty();
                info.push_output(index, t, capture);
            }
        }
        if let Some(t) = text {
            content |= !t.is_empty();
            info.push_output(index, t, capture);
        } else if capture.is_some() && !stream && index < super::inference::MAX_OUTPUTS {
            // A whole body lists one output per choice, even an empty one.
            info.push_output(index, "", capture);
        }
        if let Some(m) = message {
            content |= m
                .reasoning_content
                .as_deref()
                .is_some_and(|r| !r.is_empty());
            for (n, call) in m.tool_calls.iter().flatten().enumerate() {
                content = true;
                let key = ((index as u64) << 32) | u64::from(call.index.unwrap_or(n as u32));
                let name = call.function.as_ref().and_then(|f| f.name.as_deref());
                let args = call
                    .function
                    .as_ref()
                    .and_then(|f| f.arguments.as_deref())
                    .unwrap_or("");
                // A stream names a call (with its id) in its first delta only; later deltas
                // carry arguments alone.
                match name {
                    Some(name) if !stream || call.id.is_some() || !name.is_empty() => {
                        info.tool_call(key, call.id.as_deref(), name, args, capture)
                    }
                    _ => info.tool_arguments(key, args, capture),
                }
            }
        }
        if let Some(r) = choice.finish_reason {
            info.push_finish_reason(&r);
        }
    }
    content
}

#[cfg(test)]
mod tests {
    use super::*;

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
        // JSON of another shape is nothing to read, not malformed (an unrecognised API's
        // body may be anything); the same for a response.
        let info = parse_request(b"[1,2]", true).expect("parses");
        assert_eq!((info.model, info.messages.len()), (None, 0));
        let info = parse_body(br#"{"model":7,"choices":"none"}"#, None).expect("parses");
        assert_eq!(info.model, None);
        assert!(parse_body(b"{\"id\":", None).is_err());
    }

    #[test]
    fn prompt_and_input_are_captured_when_there_are_no_messages() {
        let info = parse_request(br#"{"model":"m","prompt":["a","b"]}"#, true).expect("parses");
        assert_eq!(
            info.messages,
            vec![
                ("user".to_owned(), "a".to_owned()),
                ("user".to_owned(), "b".to_owned())
            ]
        );
        let info = parse_request(br#"{"model":"m","input":"q"}"#, true).expect("parses");
        assert_eq!(info.messages, vec![("user".to_owned(), "q".to_owned())]);
        let info = parse_request(br#"{"model":"m\u00e9","input":"q"}"#, false).expect("parses");
        assert_eq!(info.model.as_deref(), Some("m\u{e9}"));
        assert!(info.messages.is_empty());
    }

    #[test]
    fn chat_response() {
        let body = br#"{"id":"chatcmpl-1","model":"rag-model-2","choices":[
            {"index":0,"message":{"role":"assistant","content":"Paris"},"finish_reason":"stop"}],
            "usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}"#;
        let info = parse_body(body, Some(1024)).expect("parses");
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
        let info = parse_body(body, None).expect("parses");
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
            .map(|e| on_event(&mut info, e, Some(3)).expect("parses"))
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
        on_event(
            &mut info,
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
        assert!(on_event(&mut info, b"{\"choices\":[", None).is_err());
        assert!(on_event(&mut info, b"not json", None).is_err());
        assert!(on_event(&mut info, br#"{"choices":7}"#, None).is_err());
        assert_eq!(info, ResponseInfo::default());
    }
}
