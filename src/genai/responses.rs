//! The OpenAI Responses API (`POST .../v1/responses`): the request, the response object (one
//! JSON body) and its typed stream events (`response.created`, `response.output_text.delta`,
//! `response.output_item.added`, `response.function_call_arguments.delta`, reasoning deltas,
//! `response.completed` / `response.failed` / `response.incomplete`, `error`).
//!
//! The API has no finish reason; one is derived from the final `status` so that
//! `gen_ai.response.finish_reasons` means the same across APIs: `completed` is `stop` (or
//! `tool_calls` when the model called a tool), `incomplete` is its `incomplete_details.reason`
//! (`max_output_tokens` reads as `length`), `failed` is `error`.

use serde::Deserialize;

use super::inference::{EventKind, Malformed, RequestInfo, ResponseInfo, Str, cap, lenient};
use super::openai::{ApiError, Usage};

/// A Responses request body.
#[derive(Debug, Deserialize)]
struct Request {
    #[serde(default, deserialize_with = "lenient::opt")]
    model: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt")]
    stream: Option<bool>,
    #[serde(default, deserialize_with = "lenient::opt")]
    max_output_tokens: Option<i64>,
    #[serde(default, deserialize_with = "lenient::opt")]
    temperature: Option<f64>,
    #[serde(default, deserialize_with = "lenient::opt")]
    top_p: Option<f64>,
    #[serde(default, deserialize_with = "lenient::opt")]
    previous_response_id: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt")]
    conversation: Option<Conversation>,
    #[serde(default, deserialize_with = "lenient::opt")]
    instructions: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt")]
    input: Option<Input>,
}

/// `conversation`: an id, or an object with one.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Conversation {
    Id(String),
    Object { id: String },
}

impl Conversation {
    fn id(&self) -> &str {
        match self {
            Conversation::Id(id) | Conversation::Object { id } => id,
        }
    }
}

/// `input`: a string, or a list of items (messages among them).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Input {
    Text(String),
    Items(Vec<InputItem>),
}

#[derive(Debug, Deserialize)]
struct InputItem {
    #[serde(default, deserialize_with = "lenient::opt")]
    role: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt")]
    content: Option<InputContent>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum InputContent {
    Text(String),
    Parts(Vec<TextPart>),
}

#[derive(Debug, Deserialize)]
struct TextPart {
    #[serde(default, deserialize_with = "lenient::opt")]
    text: Option<String>,
}

/// Reads a request body. `capture` also collects the input messages.
pub fn parse_request(body: &[u8], capture: bool) -> Result<RequestInfo, Malformed> {
    let r: Request = serde_json::from_slice(body)?;
    let mut info = RequestInfo {
        model: r.model.as_deref().map(cap),
        stream: r.stream,
        max_tokens: r.max_output_tokens,
        temperature: r.temperature,
        top_p: r.top_p,
        conversation_id: r
            .conversation
            .as_ref()
            .map(|c| cap(c.id()))
            .or(r.previous_response_id.as_deref().map(cap)),
        ..RequestInfo::default()
    };
    if capture {
        if let Some(system) = r.instructions {
            info.messages.push(("system".to_owned(), system));
        }
        match r.input {
            Some(Input::Text(t)) => info.messages.push(("user".to_owned(), t)),
            Some(Input::Items(items)) => {
                for item in items {
                    let text = match item.content {
                        Some(InputContent::Text(t)) => t,
                        Some(InputContent::Parts(parts)) => {
                            parts.into_iter().filter_map(|p| p.text).collect()
                        }
                        None => continue,
                    };
                    let role = item.role.unwrap_or_else(|| "user".to_owned());
                    info.messages.push((role, text));
                }
            }
            None => {}
        }
    }
    Ok(info)
}

/// The response object, in a body or inside a lifecycle event.
#[derive(Debug, Deserialize)]
struct Response<'a> {
    #[serde(default, borrow)]
    id: Option<Str<'a>>,
    #[serde(default, borrow)]
    model: Option<Str<'a>>,
    #[serde(default, borrow)]
    status: Option<Str<'a>>,
    #[serde(default, borrow)]
    output: Option<Vec<Item<'a>>>,
    #[serde(default, deserialize_with = "lenient::opt")]
    usage: Option<Usage>,
    #[serde(default, borrow)]
    incomplete_details: Option<Incomplete<'a>>,
    #[serde(default, borrow)]
    error: Option<ApiError<'a>>,
    #[serde(default, deserialize_with = "lenient::opt")]
    conversation: Option<Conversation>,
}

#[derive(Debug, Deserialize)]
struct Incomplete<'a> {
    #[serde(default, borrow)]
    reason: Option<Str<'a>>,
}

/// An output item: a message, a reasoning item, a function or built-in tool call.
#[derive(Debug, Deserialize)]
struct Item<'a> {
    #[serde(default, borrow, rename = "type")]
    kind: Option<Str<'a>>,
    #[serde(default, borrow)]
    call_id: Option<Str<'a>>,
    #[serde(default, borrow)]
    name: Option<Str<'a>>,
    #[serde(default, borrow)]
    arguments: Option<Str<'a>>,
    #[serde(default, borrow)]
    content: Option<Vec<OutputPart<'a>>>,
}

impl Item<'_> {
    /// The tool's name, when this item is a tool call: function and custom tools by their
    /// name, built-in tools (`web_search_call`, `file_search_call`...) by their type.
    fn tool_name(&self) -> Option<&str> {
        let kind = self.kind.as_deref()?;
        let base = kind.strip_suffix("_call")?;
        Some(self.name.as_deref().unwrap_or(base))
    }
}

#[derive(Debug, Deserialize)]
struct OutputPart<'a> {
    #[serde(default, borrow, rename = "type")]
    kind: Option<Str<'a>>,
    #[serde(default, borrow)]
    text: Option<Str<'a>>,
}

/// A stream event: its `type` says which of the other fields are there.
#[derive(Debug, Deserialize)]
struct Event<'a> {
    #[serde(borrow, rename = "type")]
    kind: Str<'a>,
    #[serde(default, borrow)]
    response: Option<Response<'a>>,
    #[serde(default, borrow)]
    item: Option<Item<'a>>,
    #[serde(default)]
    output_index: Option<u64>,
    #[serde(default, borrow)]
    delta: Option<Str<'a>>,
    /// `error` events carry their code at the top level.
    #[serde(default, deserialize_with = "lenient::opt")]
    code: Option<String>,
}

/// Reads one complete JSON response body.
pub fn parse_body(body: &[u8], capture: Option<usize>) -> Result<ResponseInfo, Malformed> {
    let r: Response<'_> = serde_json::from_slice(body)?;
    let mut info = ResponseInfo::default();
    read_items(&mut info, r.output.as_deref().unwrap_or_default(), capture);
    finish(&mut info, r);
    Ok(info)
}

/// Counts the tool calls of `items` and captures their text.
fn read_items(info: &mut ResponseInfo, items: &[Item<'_>], capture: Option<usize>) {
    for (i, item) in items.iter().enumerate() {
        if let Some(name) = item.tool_name() {
            let args = item.arguments.as_deref().unwrap_or("");
            info.tool_call(i as u64, item.call_id.as_deref(), name, args, capture);
        }
        for part in item.content.iter().flatten() {
            if part.kind.as_deref() == Some("output_text") {
                info.push_output(0, part.text.as_deref().unwrap_or(""), capture);
            }
        }
    }
}

/// Takes what the final response object says: ids, usage, status as a finish reason.
fn finish(info: &mut ResponseInfo, r: Response<'_>) {
    info.set_id(r.id.as_deref());
    info.set_model(r.model.as_deref());
    if let Some(usage) = r.usage {
        usage.apply(info);
    }
    if let Some(c) = &r.conversation {
        info.conversation_id = Some(cap(c.id()));
    }
    if let Some(e) = &r.error {
        info.set_error(e.kind());
    }
    let reason = match r.status.as_deref() {
        Some("completed") if info.detail.tool_calls > 0 => Some("tool_calls"),
        Some("completed") => Some("stop"),
        Some("incomplete") => Some(
            match r
                .incomplete_details
                .as_ref()
                .and_then(|d| d.reason.as_deref())
            {
                Some("max_output_tokens") => "length",
                Some(other) => other,
                None => "incomplete",
            },
        ),
        Some("failed") => {
            info.set_error("failed");
            Some("error")
        }
        _ => None,
    };
    if let Some(reason) = reason {
        info.finish_reasons.clear();
        info.push_finish_reason(reason);
    }
}

/// Accumulates one stream event's data into `info`. Malformed JSON is reported and leaves the
/// state as it was; unknown event types are ignored.
pub fn on_event(
    info: &mut ResponseInfo,
    data: &[u8],
    capture: Option<usize>,
) -> Result<EventKind, Malformed> {
    let event: Event<'_> = serde_json::from_slice(data)?;
    let mut kind = EventKind::default();
    match event.kind.as_ref() {
        "response.created" | "response.in_progress" | "response.queued" => {
            if let Some(r) = &event.response {
                info.set_id(r.id.as_deref());
                info.set_model(r.model.as_deref());
            }
        }
        "response.output_text.delta" => {
            let delta = event.delta.as_deref().unwrap_or("");
            kind.content = !delta.is_empty();
            info.push_output(0, delta, capture);
        }
        "response.reasoning_text.delta"
        | "response.reasoning_summary_text.delta"
        | "response.refusal.delta" => {
            kind.content = event.delta.as_deref().is_some_and(|d| !d.is_empty());
        }
        "response.output_item.added" => {
            if let Some(item) = &event.item
                && let Some(name) = item.tool_name()
            {
                kind.content = true;
                let key = event.output_index.unwrap_or(0);
                let args = item.arguments.as_deref().unwrap_or("");
                info.tool_call(key, item.call_id.as_deref(), name, args, capture);
            }
        }
        "response.function_call_arguments.delta" | "response.custom_tool_call_input.delta" => {
            kind.content = true;
            let key = event.output_index.unwrap_or(0);
            info.tool_arguments(key, event.delta.as_deref().unwrap_or(""), capture);
        }
        "response.completed" | "response.failed" | "response.incomplete" => {
            kind.done = true;
            if let Some(r) = event.response {
                if info.detail.tool_calls == 0 {
                    // A server that skipped the item events still lists the calls here.
                    read_items(info, r.output.as_deref().unwrap_or_default(), None);
                }
                finish(info, r);
            }
        }
        "error" => {
            info.set_error(event.code.as_deref().unwrap_or("error"));
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
    fn request_fields_and_conversation() {
        let body = br#"{"model":"gpt-5","stream":true,"max_output_tokens":99,"temperature":0.5,
            "instructions":"be brief","conversation":{"id":"conv_1"},"previous_response_id":"resp_0",
            "input":[{"role":"user","content":[{"type":"input_text","text":"hi"}]},
                     {"type":"function_call_output","call_id":"c","output":"x"}]}"#;
        let r = parse_request(body, true).expect("parses");
        assert_eq!(r.model.as_deref(), Some("gpt-5"));
        assert_eq!(r.stream, Some(true));
        assert_eq!(r.max_tokens, Some(99));
        assert_eq!(r.conversation_id.as_deref(), Some("conv_1"));
        assert_eq!(
            r.messages,
            vec![
                ("system".to_owned(), "be brief".to_owned()),
                ("user".to_owned(), "hi".to_owned())
            ]
        );
        let r = parse_request(br#"{"input":"q","previous_response_id":"resp_0"}"#, false)
            .expect("parses");
        assert_eq!(r.conversation_id.as_deref(), Some("resp_0"));
        assert!(r.messages.is_empty());
        assert!(parse_request(b"[", false).is_err());
    }

    const BODY: &[u8] = br#"{"id":"resp_1","object":"response","status":"completed",
        "model":"gpt-5-2025","output":[{"type":"reasoning","summary":[]},
        {"type":"function_call","call_id":"call_1","name":"search","arguments":"{\"q\":1}"},
        {"type":"message","role":"assistant","content":[{"type":"output_text","text":"Paris"}]}],
        "usage":{"input_tokens":100,"input_tokens_details":{"cached_tokens":60},
                 "output_tokens":30,"output_tokens_details":{"reasoning_tokens":20}},
        "conversation":{"id":"conv_9"}}"#;

    #[test]
    fn body_with_usage_detail_and_tools() {
        let r = parse_body(BODY, Some(100)).expect("parses");
        assert_eq!(r.id.as_deref(), Some("resp_1"));
        assert_eq!(r.model.as_deref(), Some("gpt-5-2025"));
        assert_eq!(
            r.input_tokens,
            Some(100),
            "cached tokens are already included"
        );
        assert_eq!(r.detail.cache_read_tokens, Some(60));
        assert_eq!(r.output_tokens, Some(30));
        assert_eq!(r.detail.reasoning_tokens, Some(20));
        assert_eq!(r.detail.tool_calls, 1);
        assert_eq!(r.detail.tool_names, vec!["search".to_owned()]);
        assert_eq!(r.tool_parts[0].arguments, "{\"q\":1}");
        assert_eq!(r.finish_reasons, vec!["tool_calls".to_owned()]);
        assert_eq!(r.output, vec!["Paris".to_owned()]);
        assert_eq!(r.conversation_id.as_deref(), Some("conv_9"));
        let r = parse_body(
            br#"{"status":"incomplete","incomplete_details":{"reason":"max_output_tokens"}}"#,
            None,
        )
        .expect("parses");
        assert_eq!(r.finish_reasons, vec!["length".to_owned()]);
        assert_eq!(r.input_tokens, None);
    }

    fn stream(events: &[&str], capture: Option<usize>) -> (ResponseInfo, Vec<EventKind>) {
        let mut info = ResponseInfo::default();
        let kinds = events
            .iter()
            .map(|e| on_event(&mut info, e.as_bytes(), capture).expect("parses"))
            .collect();
        (info, kinds)
    }

    #[test]
    fn stream_of_typed_events() {
        let (info, kinds) = stream(
            &[
                r#"{"type":"response.created","response":{"id":"resp_2","model":"gpt-5","status":"in_progress","output":[]}}"#,
                r#"{"type":"response.output_item.added","output_index":0,"item":{"type":"function_call","call_id":"call_7","name":"lookup","arguments":""}}"#,
                r#"{"type":"response.function_call_arguments.delta","output_index":0,"delta":"{\"k\":"}"#,
                r#"{"type":"response.function_call_arguments.delta","output_index":0,"delta":"2}"}"#,
                r#"{"type":"response.output_text.delta","output_index":1,"content_index":0,"delta":"Hi"}"#,
                r#"{"type":"response.completed","response":{"id":"resp_2","status":"completed","output":[{"type":"function_call","name":"lookup"}],"usage":{"input_tokens":9,"output_tokens":4}}}"#,
            ],
            Some(64),
        );
        assert!(!kinds[0].content);
        assert!(kinds[1].content && kinds[4].content);
        assert!(kinds[5].done);
        assert_eq!(info.id.as_deref(), Some("resp_2"));
        assert_eq!(
            info.detail.tool_calls, 1,
            "the final listing does not count calls twice"
        );
        assert_eq!(info.tool_parts[0].arguments, "{\"k\":2}");
        assert_eq!(info.tool_parts[0].id.as_deref(), Some("call_7"));
        assert_eq!(info.output, vec!["Hi".to_owned()]);
        assert_eq!((info.input_tokens, info.output_tokens), (Some(9), Some(4)));
        assert_eq!(info.finish_reasons, vec!["tool_calls".to_owned()]);
        assert_eq!(info.content_events, 4);
    }

    #[test]
    fn failed_and_error_events() {
        let (info, kinds) = stream(
            &[
                r#"{"type":"response.output_text.delta","delta":"x"}"#,
                r#"{"type":"response.failed","response":{"status":"failed","error":{"code":"server_error","message":"boom"}}}"#,
            ],
            None,
        );
        assert!(kinds[1].done);
        assert_eq!(info.error_type.as_deref(), Some("server_error"));
        assert_eq!(info.finish_reasons, vec!["error".to_owned()]);
        let (info, _) = stream(
            &[r#"{"type":"error","code":"rate_limit_exceeded","message":"slow down"}"#],
            None,
        );
        assert_eq!(info.error_type.as_deref(), Some("rate_limit_exceeded"));
        let mut info = ResponseInfo::default();
        assert!(on_event(&mut info, b"{\"type\":", None).is_err());
        assert!(on_event(&mut info, br#"{"delta":"no type"}"#, None).is_err());
        assert_eq!(info, ResponseInfo::default());
    }
}
