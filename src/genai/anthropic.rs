//! The Anthropic Messages API (`POST .../v1/messages`): the request, the message (one JSON
//! body) and its stream events (`message_start`, `content_block_start`, `content_block_delta`
//! with `text_delta` / `thinking_delta` / `input_json_delta`, `message_delta`, `message_stop`,
//! `ping`, `error`).
//!
//! Anthropic reports `usage.input_tokens` without the cached input: the reader adds
//! `cache_read_input_tokens` and `cache_creation_input_tokens` so that `input_tokens` means
//! what the GenAI conventions say (all input). In a stream the input usage arrives in
//! `message_start` and the output count, cumulative, in `message_delta`.

use serde::Deserialize;

use super::inference::{EventKind, Malformed, RequestInfo, ResponseInfo, Str, cap, lenient};

/// A Messages request body.
#[derive(Debug, Deserialize)]
struct Request {
    #[serde(default, deserialize_with = "lenient::opt")]
    model: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt")]
    stream: Option<bool>,
    #[serde(default, deserialize_with = "lenient::opt")]
    max_tokens: Option<i64>,
    #[serde(default, deserialize_with = "lenient::opt")]
    temperature: Option<f64>,
    #[serde(default, deserialize_with = "lenient::opt")]
    top_p: Option<f64>,
    #[serde(default, deserialize_with = "lenient::opt")]
    top_k: Option<f64>,
    #[serde(default, deserialize_with = "lenient::opt")]
    system: Option<Content>,
    #[serde(default, deserialize_with = "lenient::opt")]
    messages: Option<Vec<Message>>,
}

#[derive(Debug, Deserialize)]
struct Message {
    #[serde(default, deserialize_with = "lenient::opt")]
    role: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt")]
    content: Option<Content>,
}

/// Content: a string, or blocks (only text blocks are text).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Blocks(Vec<TextBlock>),
}

#[derive(Debug, Deserialize)]
struct TextBlock {
    #[serde(default, deserialize_with = "lenient::opt")]
    text: Option<String>,
}

impl Content {
    fn into_text(self) -> String {
        match self {
            Content::Text(t) => t,
            Content::Blocks(blocks) => blocks.into_iter().filter_map(|b| b.text).collect(),
        }
    }
}

/// Reads a request body. `capture` also collects the input messages.
pub fn parse_request(body: &[u8], capture: bool) -> Result<RequestInfo, Malformed> {
    let r: Request = serde_json::from_slice(body)?;
    let mut info = RequestInfo {
        model: r.model.as_deref().map(cap),
        stream: r.stream,
        max_tokens: r.max_tokens,
        temperature: r.temperature,
        top_p: r.top_p,
        top_k: r.top_k,
        ..RequestInfo::default()
    };
    if capture {
        if let Some(system) = r.system {
            info.messages
                .push(("system".to_owned(), system.into_text()));
        }
        for m in r.messages.into_iter().flatten() {
            let role = m.role.unwrap_or_else(|| "user".to_owned());
            info.messages
                .push((role, m.content.map(Content::into_text).unwrap_or_default()));
        }
    }
    Ok(info)
}

/// `usage`, in a message or a `message_delta`.
#[derive(Debug, Deserialize)]
struct Usage {
    #[serde(default, deserialize_with = "lenient::opt")]
    input_tokens: Option<i64>,
    #[serde(default, deserialize_with = "lenient::opt")]
    output_tokens: Option<i64>,
    #[serde(default, deserialize_with = "lenient::opt")]
    cache_read_input_tokens: Option<i64>,
    #[serde(default, deserialize_with = "lenient::opt")]
    cache_creation_input_tokens: Option<i64>,
}

impl Usage {
    /// Records the counts; fields a later usage leaves out keep their earlier value.
    fn apply(self, info: &mut ResponseInfo) {
        if self.cache_read_input_tokens.is_some() {
            info.detail.cache_read_tokens = self.cache_read_input_tokens;
        }
        if self.cache_creation_input_tokens.is_some() {
            info.detail.cache_creation_tokens = self.cache_creation_input_tokens;
        }
        if let Some(uncached) = self.input_tokens {
            let cached = info.detail.cache_read_tokens.unwrap_or(0)
                + info.detail.cache_creation_tokens.unwrap_or(0);
            info.input_tokens = Some(uncached.saturating_add(cached));
        }
        if self.output_tokens.is_some() {
            info.output_tokens = self.output_tokens;
        }
    }
}

/// A message: a whole body, or the one `message_start` carries.
#[derive(Debug, Deserialize)]
struct MessageOut<'a> {
    #[serde(default, borrow)]
    id: Option<Str<'a>>,
    #[serde(default, borrow)]
    model: Option<Str<'a>>,
    #[serde(default, borrow)]
    content: Option<Vec<Block<'a>>>,
    #[serde(default, borrow)]
    stop_reason: Option<Str<'a>>,
    #[serde(default, deserialize_with = "lenient::opt")]
    usage: Option<Usage>,
    /// A body of `"type": "error"`.
    #[serde(default, borrow)]
    error: Option<Error<'a>>,
}

/// A content block (`text`, `thinking`, `tool_use`, `server_tool_use`...).
#[derive(Debug, Deserialize)]
struct Block<'a> {
    #[serde(default, borrow, rename = "type")]
    kind: Option<Str<'a>>,
    #[serde(default, borrow)]
    id: Option<Str<'a>>,
    #[serde(default, borrow)]
    name: Option<Str<'a>>,
    #[serde(default, borrow)]
    text: Option<Str<'a>>,
    /// A whole body's tool input, kept as raw JSON text for capture.
    #[serde(default, borrow)]
    input: Option<&'a serde_json::value::RawValue>,
}

impl Block<'_> {
    fn is_tool_use(&self) -> bool {
        self.kind
            .as_deref()
            .is_some_and(|k| k.ends_with("tool_use"))
    }
}

#[derive(Debug, Deserialize)]
struct Error<'a> {
    #[serde(default, borrow, rename = "type")]
    kind: Option<Str<'a>>,
}

/// A stream event.
#[derive(Debug, Deserialize)]
struct Event<'a> {
    #[serde(borrow, rename = "type")]
    kind: Str<'a>,
    #[serde(default, borrow)]
    message: Option<MessageOut<'a>>,
    #[serde(default)]
    index: Option<u64>,
    #[serde(default, borrow)]
    content_block: Option<Block<'a>>,
    #[serde(default, borrow)]
    delta: Option<Delta<'a>>,
    #[serde(default, deserialize_with = "lenient::opt")]
    usage: Option<Usage>,
    #[serde(default, borrow)]
    error: Option<Error<'a>>,
}

/// A `content_block_delta`'s or `message_delta`'s `delta`.
#[derive(Debug, Deserialize)]
struct Delta<'a> {
    #[serde(default, borrow, rename = "type")]
    kind: Option<Str<'a>>,
    #[serde(default, borrow)]
    text: Option<Str<'a>>,
    #[serde(default, borrow)]
    thinking: Option<Str<'a>>,
    #[serde(default, borrow)]
    partial_json: Option<Str<'a>>,
    #[serde(default, borrow)]
    stop_reason: Option<Str<'a>>,
}

/// Reads one complete JSON response body (a message, or an error).
pub fn parse_body(body: &[u8], capture: Option<usize>) -> Result<ResponseInfo, Malformed> {
    let m: MessageOut<'_> = serde_json::from_slice(body)?;
    let mut info = ResponseInfo::default();
    if let Some(e) = &m.error {
        info.set_error(e.kind.as_deref().unwrap_or("error"));
    }
    for (i, block) in m.content.iter().flatten().enumerate() {
        if block.is_tool_use() {
            let name = block.name.as_deref().unwrap_or("");
            let input = block.input.map_or("", |r| r.get());
            info.tool_call(i as u64, block.id.as_deref(), name, input, capture);
        } else if block.kind.as_deref() == Some("text") {
            info.push_output(0, block.text.as_deref().unwrap_or(""), capture);
        }
    }
    start(&mut info, m);
    Ok(info)
}

/// Takes a message's id, model, stop reason and usage.
fn start(info: &mut ResponseInfo, m: MessageOut<'_>) {
    info.set_id(m.id.as_deref());
    info.set_model(m.model.as_deref());
    if let Some(r) = m.stop_reason.as_deref() {
        info.push_finish_reason(r);
    }
    if let Some(u) = m.usage {
        u.apply(info);
    }
}

/// Accumulates one stream event's data into `info`. Malformed JSON is reported and leaves the
/// state as it was; unknown event types (and `ping`) are ignored.
pub fn on_event(
    info: &mut ResponseInfo,
    data: &[u8],
    capture: Option<usize>,
) -> Result<EventKind, Malformed> {
    let event: Event<'_> = serde_json::from_slice(data)?;
    let mut kind = EventKind::default();
    let index = event.index.unwrap_or(0);
    match event.kind.as_ref() {
        "message_start" => {
            if let Some(m) = event.message {
                start(info, m);
            }
        }
        "content_block_start" => {
            if let Some(block) = &event.content_block
                && block.is_tool_use()
            {
                // The input arrives as `input_json_delta`s; the `{}` placeholder is not it.
                let name = block.name.as_deref().unwrap_or("");
                info.tool_call(index, block.id.as_deref(), name, "", capture);
            }
        }
        "content_block_delta" => {
            if let Some(d) = &event.delta {
                match d.kind.as_deref() {
                    Some("text_delta") => {
                        let text = d.text.as_deref().unwrap_or("");
                        kind.content = !text.is_empty();
                        info.push_output(0, text, capture);
                    }
                    Some("thinking_delta") => {
                        kind.content = d.thinking.as_deref().is_some_and(|t| !t.is_empty());
                    }
                    Some("input_json_delta") => {
                        kind.content = true;
                        let part = d.partial_json.as_deref().unwrap_or("");
                        info.tool_arguments(index, part, capture);
                    }
                    _ => {}
                }
            }
        }
        "message_delta" => {
            if let Some(r) = event.delta.as_ref().and_then(|d| d.stop_reason.as_deref()) {
                info.push_finish_reason(r);
            }
            if let Some(u) = event.usage {
                u.apply(info);
            }
        }
        "message_stop" => kind.done = true,
        "error" => {
            let e = event.error.as_ref().and_then(|e| e.kind.as_deref());
            info.set_error(e.unwrap_or("error"));
            kind.done = true;
        }
        _ => {}
    }
    if kind.content {
        info.content_events += 1;
    }
    Ok(kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_fields() {
        let body = br#"{"model":"claude-sonnet-4-5","max_tokens":1024,"stream":true,"top_k":5,
            "temperature":0.3,"system":[{"type":"text","text":"be brief"}],
            "metadata":{"user_id":"u-1"},
            "messages":[{"role":"user","content":"hi"},{"role":"assistant","content":[{"type":"text","text":"yo"}]}]}"#;
        let r = parse_request(body, true).expect("parses");
        assert_eq!(r.model.as_deref(), Some("claude-sonnet-4-5"));
        assert_eq!(
            (r.max_tokens, r.stream, r.top_k),
            (Some(1024), Some(true), Some(5.0))
        );
        assert_eq!(r.messages.len(), 3);
        assert_eq!(r.messages[0], ("system".to_owned(), "be brief".to_owned()));
        assert_eq!(r.messages[2], ("assistant".to_owned(), "yo".to_owned()));
        assert_eq!(r.conversation_id, None, "metadata.user_id is never read");
        assert!(parse_request(b"{", false).is_err());
    }

    #[test]
    fn message_body_adds_cached_input() {
        let body = br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-x",
            "content":[{"type":"thinking","thinking":"hmm"},{"type":"text","text":"Let me look."},
                       {"type":"tool_use","id":"toolu_1","name":"get_weather","input":{"city":"Paris"}}],
            "stop_reason":"tool_use",
            "usage":{"input_tokens":10,"cache_read_input_tokens":100,"cache_creation_input_tokens":5,"output_tokens":42}}"#;
        let r = parse_body(body, Some(64)).expect("parses");
        assert_eq!(r.id.as_deref(), Some("msg_1"));
        assert_eq!(
            r.input_tokens,
            Some(115),
            "uncached + cache read + cache write"
        );
        assert_eq!(r.detail.cache_read_tokens, Some(100));
        assert_eq!(r.detail.cache_creation_tokens, Some(5));
        assert_eq!(r.output_tokens, Some(42));
        assert_eq!(r.finish_reasons, vec!["tool_use".to_owned()]);
        assert_eq!(r.detail.tool_calls, 1);
        assert_eq!(r.tool_parts[0].arguments, r#"{"city":"Paris"}"#);
        assert_eq!(r.output, vec!["Let me look.".to_owned()]);
        let e = parse_body(
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            None,
        )
        .expect("parses");
        assert_eq!(e.error_type.as_deref(), Some("overloaded_error"));
    }

    fn run(events: &[&str]) -> (ResponseInfo, Vec<EventKind>) {
        let mut info = ResponseInfo::default();
        let kinds = events
            .iter()
            .map(|e| on_event(&mut info, e.as_bytes(), Some(64)).expect("parses"))
            .collect();
        (info, kinds)
    }

    #[test]
    fn stream_events() {
        let (info, kinds) = run(&[
            r#"{"type":"message_start","message":{"id":"msg_2","type":"message","role":"assistant","model":"claude-x","content":[],"stop_reason":null,"usage":{"input_tokens":20,"cache_read_input_tokens":80,"output_tokens":1}}}"#,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"hm"}}"#,
            r#"{"type":"ping"}"#,
            r#"{"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"Hi"}}"#,
            r#"{"type":"content_block_stop","index":1}"#,
            r#"{"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"toolu_9","name":"search","input":{}}}"#,
            r#"{"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"{\"q\":"}}"#,
            r#"{"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"\"x\"}"}}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":57}}"#,
            r#"{"type":"message_stop"}"#,
        ]);
        assert!(!kinds[0].content && !kinds[1].content);
        assert!(
            kinds[2].content,
            "time to first token at the first content delta"
        );
        assert!(kinds[11].done);
        assert_eq!(info.model.as_deref(), Some("claude-x"));
        assert_eq!(info.input_tokens, Some(100));
        assert_eq!(info.detail.cache_read_tokens, Some(80));
        assert_eq!(
            info.output_tokens,
            Some(57),
            "the cumulative count in message_delta"
        );
        assert_eq!(info.finish_reasons, vec!["tool_use".to_owned()]);
        assert_eq!(info.detail.tool_names, vec!["search".to_owned()]);
        assert_eq!(info.tool_parts[0].arguments, r#"{"q":"x"}"#);
        assert_eq!(info.output, vec!["Hi".to_owned()]);
        assert_eq!(info.content_events, 4);
    }

    #[test]
    fn error_event_ends_the_stream() {
        let (info, kinds) = run(&[
            r#"{"type":"message_start","message":{"id":"m","usage":{"input_tokens":3}}}"#,
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        ]);
        assert!(kinds[1].done);
        assert_eq!(info.error_type.as_deref(), Some("overloaded_error"));
        assert_eq!(info.input_tokens, Some(3));
        assert_eq!(info.output_tokens, None, "absent, not zero");
        let mut info = ResponseInfo::default();
        assert!(on_event(&mut info, b"{\"type\":\"message_start\",", None).is_err());
        assert_eq!(info, ResponseInfo::default());
    }
}
