//! The Gemini API (`POST .../models/{model}:generateContent` and `:streamGenerateContent`,
//! also Vertex AI's `.../publishers/google/models/{model}:...`): the request, the response (one
//! JSON object; a JSON array of them for a stream without `alt=sse`) and the SSE stream
//! (`alt=sse`), each event one `GenerateContentResponse`.
//!
//! The model is named by the path, not the body. `usageMetadata.promptTokenCount` already
//! includes `cachedContentTokenCount`; `thoughtsTokenCount` is reported apart from
//! `candidatesTokenCount` and is added to the output count (the conventions count reasoning as
//! output). In a stream each event repeats the usage so far: the last one wins.

use serde::Deserialize;

use super::inference::{EventKind, Malformed, RequestInfo, ResponseInfo, Str, lenient};

/// A generateContent request body.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Request {
    #[serde(default, deserialize_with = "lenient::opt")]
    generation_config: Option<GenerationConfig>,
    #[serde(default, deserialize_with = "lenient::opt")]
    system_instruction: Option<InContent>,
    #[serde(default, deserialize_with = "lenient::opt")]
    contents: Option<Vec<InContent>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerationConfig {
    #[serde(default, deserialize_with = "lenient::opt")]
    max_output_tokens: Option<i64>,
    #[serde(default, deserialize_with = "lenient::opt")]
    candidate_count: Option<i64>,
    #[serde(default, deserialize_with = "lenient::opt")]
    temperature: Option<f64>,
    #[serde(default, deserialize_with = "lenient::opt")]
    top_p: Option<f64>,
    #[serde(default, deserialize_with = "lenient::opt")]
    top_k: Option<f64>,
}

#[derive(Debug, Deserialize)]
struct InContent {
    #[serde(default, deserialize_with = "lenient::opt")]
    role: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt")]
    parts: Option<Vec<InPart>>,
}

#[derive(Debug, Deserialize)]
struct InPart {
    #[serde(default, deserialize_with = "lenient::opt")]
    text: Option<String>,
}

impl InContent {
    fn text(self) -> String {
        self.parts
            .into_iter()
            .flatten()
            .filter_map(|p| p.text)
            .collect()
    }
}

/// Reads a request body. `capture` also collects the input messages. The model and whether
/// it streams come from the path ([`super::api::Recognised`]), not from here.
pub fn parse_request(body: &[u8], capture: bool) -> Result<RequestInfo, Malformed> {
    let r: Request = serde_json::from_slice(body)?;
    let config = r.generation_config;
    let mut info = RequestInfo {
        max_tokens: config.as_ref().and_then(|c| c.max_output_tokens),
        choices: config.as_ref().and_then(|c| c.candidate_count),
        temperature: config.as_ref().and_then(|c| c.temperature),
        top_p: config.as_ref().and_then(|c| c.top_p),
        top_k: config.as_ref().and_then(|c| c.top_k),
        ..RequestInfo::default()
    };
    if capture {
        if let Some(system) = r.system_instruction {
            info.messages.push(("system".to_owned(), system.text()));
        }
        for c in r.contents.into_iter().flatten() {
            let role = match c.role.as_deref() {
                Some("model") => "assistant".to_owned(),
                Some(other) => other.to_owned(),
                None => "user".to_owned(),
            };
            info.messages.push((role, c.text()));
        }
    }
    Ok(info)
}

/// A `GenerateContentResponse`: a body, one element of a streamed array, or one SSE event.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Chunk<'a> {
    #[serde(default, borrow)]
    candidates: Option<Vec<Candidate<'a>>>,
    #[serde(default, deserialize_with = "lenient::opt")]
    usage_metadata: Option<Usage>,
    #[serde(default, borrow)]
    model_version: Option<Str<'a>>,
    #[serde(default, borrow)]
    response_id: Option<Str<'a>>,
    #[serde(default, borrow)]
    error: Option<Error<'a>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate<'a> {
    #[serde(default)]
    index: Option<u32>,
    #[serde(default, borrow)]
    content: Option<OutContent<'a>>,
    #[serde(default, borrow)]
    finish_reason: Option<Str<'a>>,
}

#[derive(Debug, Deserialize)]
struct OutContent<'a> {
    #[serde(default, borrow)]
    parts: Option<Vec<OutPart<'a>>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OutPart<'a> {
    #[serde(default, borrow)]
    text: Option<Str<'a>>,
    /// A thought summary, not answer text.
    #[serde(default, deserialize_with = "lenient::opt")]
    thought: Option<bool>,
    #[serde(default, borrow)]
    function_call: Option<FunctionCall<'a>>,
}

#[derive(Debug, Deserialize)]
struct FunctionCall<'a> {
    #[serde(default, borrow)]
    id: Option<Str<'a>>,
    #[serde(default, borrow)]
    name: Option<Str<'a>>,
    #[serde(default, borrow)]
    args: Option<&'a serde_json::value::RawValue>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Usage {
    #[serde(default, deserialize_with = "lenient::opt")]
    prompt_token_count: Option<i64>,
    #[serde(default, deserialize_with = "lenient::opt")]
    candidates_token_count: Option<i64>,
    #[serde(default, deserialize_with = "lenient::opt")]
    cached_content_token_count: Option<i64>,
    #[serde(default, deserialize_with = "lenient::opt")]
    thoughts_token_count: Option<i64>,
}

/// `{"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", ...}}`.
#[derive(Debug, Deserialize)]
struct Error<'a> {
    #[serde(default, borrow)]
    status: Option<Str<'a>>,
}

/// Reads one complete JSON response body: an object, or the array a stream without `alt=sse`
/// sends.
pub fn parse_body(body: &[u8], capture: Option<usize>) -> Result<ResponseInfo, Malformed> {
    let mut info = ResponseInfo::default();
    if body.trim_ascii_start().first() == Some(&b'[') {
        let chunks: Vec<Chunk<'_>> = serde_json::from_slice(body)?;
        for chunk in chunks {
            accumulate(&mut info, chunk, capture);
        }
    } else {
        let chunk: Chunk<'_> = serde_json::from_slice(body)?;
        accumulate(&mut info, chunk, capture);
    }
    Ok(info)
}

/// Accumulates one SSE event's data (`alt=sse`) into `info`. Malformed JSON is reported and
/// leaves the state as it was.
pub fn on_event(
    info: &mut ResponseInfo,
    data: &[u8],
    capture: Option<usize>,
) -> Result<EventKind, Malformed> {
    let chunk: Chunk<'_> = serde_json::from_slice(data)?;
    let content = accumulate(info, chunk, capture);
    if content {
        info.content_events += 1;
    }
    Ok(EventKind {
        content,
        done: false,
    })
}

/// Folds one response object into `info`; says whether it carried generated content.
fn accumulate(info: &mut ResponseInfo, chunk: Chunk<'_>, capture: Option<usize>) -> bool {
    info.set_id(chunk.response_id.as_deref());
    info.set_model(chunk.model_version.as_deref());
    if let Some(e) = &chunk.error {
        info.set_error(e.status.as_deref().unwrap_or("error"));
    }
    if let Some(u) = chunk.usage_metadata {
        if u.prompt_token_count.is_some() {
            info.input_tokens = u.prompt_token_count;
        }
        if u.cached_content_token_count.is_some() {
            info.detail.cache_read_tokens = u.cached_content_token_count;
        }
        if u.thoughts_token_count.is_some() {
            info.detail.reasoning_tokens = u.thoughts_token_count;
        }
        if u.candidates_token_count.is_some() || u.thoughts_token_count.is_some() {
            let answer = u.candidates_token_count.unwrap_or(0);
            info.output_tokens = Some(answer.saturating_add(u.thoughts_token_count.unwrap_or(0)));
        }
    }
    let mut content = false;
    for (position, c) in chunk.candidates.into_iter().flatten().enumerate() {
        let index = c.index.map_or(position, |i| i as usize);
        for part in c.content.iter().flat_map(|c| c.parts.iter().flatten()) {
            if let Some(call) = &part.function_call {
                content = true;
                // Gemini sends each call whole, so every call is its own part.
                let key = u64::from(info.detail.tool_calls);
                let name = call.name.as_deref().unwrap_or("");
                let args = call.args.map_or("", |r| r.get());
                info.tool_call(key, call.id.as_deref(), name, args, capture);
            } else if let Some(text) = part.text.as_deref() {
                content |= !text.is_empty();
                if part.thought != Some(true) {
                    info.push_output(index, text, capture);
                }
            }
        }
        if let Some(r) = c.finish_reason.as_deref() {
            info.push_finish_reason(r);
        }
    }
    content
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_generation_config() {
        let body = br#"{"contents":[{"role":"user","parts":[{"text":"hi "},{"text":"there"}]},
            {"role":"model","parts":[{"text":"yo"}]}],
            "systemInstruction":{"parts":[{"text":"be brief"}]},
            "generationConfig":{"maxOutputTokens":256,"temperature":0.1,"topP":0.8,"topK":40}}"#;
        let r = parse_request(body, true).expect("parses");
        assert_eq!(r.max_tokens, Some(256));
        assert_eq!(
            (r.temperature, r.top_p, r.top_k),
            (Some(0.1), Some(0.8), Some(40.0))
        );
        assert_eq!(r.messages[0], ("system".to_owned(), "be brief".to_owned()));
        assert_eq!(r.messages[1], ("user".to_owned(), "hi there".to_owned()));
        assert_eq!(r.messages[2], ("assistant".to_owned(), "yo".to_owned()));
        assert!(parse_request(b"{\"contents\":", false).is_err());
    }

    const BODY: &[u8] = br#"{"candidates":[{"content":{"role":"model","parts":[
        {"text":"thinking...","thought":true},{"text":"Paris"},
        {"functionCall":{"name":"lookup","args":{"q":"x"}}}]},"finishReason":"STOP","index":0}],
        "usageMetadata":{"promptTokenCount":120,"cachedContentTokenCount":100,
        "candidatesTokenCount":7,"thoughtsTokenCount":30,"totalTokenCount":157},
        "modelVersion":"gemini-2.5-flash","responseId":"r-1"}"#;

    #[test]
    fn body_adds_thoughts_to_output() {
        let r = parse_body(BODY, Some(64)).expect("parses");
        assert_eq!(r.id.as_deref(), Some("r-1"));
        assert_eq!(r.model.as_deref(), Some("gemini-2.5-flash"));
        assert_eq!(r.input_tokens, Some(120));
        assert_eq!(r.detail.cache_read_tokens, Some(100));
        assert_eq!(r.output_tokens, Some(37), "candidates + thoughts");
        assert_eq!(r.detail.reasoning_tokens, Some(30));
        assert_eq!(r.finish_reasons, vec!["STOP".to_owned()]);
        assert_eq!(
            r.output,
            vec!["Paris".to_owned()],
            "thoughts are not the answer"
        );
        assert_eq!(r.detail.tool_names, vec!["lookup".to_owned()]);
        assert_eq!(r.tool_parts[0].arguments, r#"{"q":"x"}"#);
    }

    #[test]
    fn streamed_array_and_sse_events_agree() {
        let a = br#"{"candidates":[{"content":{"parts":[{"text":"Hel"}]}}],"usageMetadata":{"promptTokenCount":5}}"#;
        let b = br#"{"candidates":[{"content":{"parts":[{"text":"lo"}]},"finishReason":"MAX_TOKENS"}],"usageMetadata":{"promptTokenCount":5,"candidatesTokenCount":2}}"#;
        let mut array = b"[".to_vec();
        array.extend_from_slice(a);
        array.extend_from_slice(b",\r\n");
        array.extend_from_slice(b);
        array.push(b']');
        let whole = parse_body(&array, Some(64)).expect("parses");
        let mut streamed = ResponseInfo::default();
        assert!(
            on_event(&mut streamed, a, Some(64))
                .expect("parses")
                .content
        );
        assert!(
            on_event(&mut streamed, b, Some(64))
                .expect("parses")
                .content
        );
        assert_eq!(streamed.content_events, 2);
        streamed.content_events = 0;
        assert_eq!(whole, streamed);
        assert_eq!(whole.output, vec!["Hello".to_owned()]);
        assert_eq!(
            (whole.input_tokens, whole.output_tokens),
            (Some(5), Some(2))
        );
        assert_eq!(whole.finish_reasons, vec!["MAX_TOKENS".to_owned()]);
    }

    #[test]
    fn errors() {
        let r = parse_body(
            br#"{"error":{"code":429,"message":"quota","status":"RESOURCE_EXHAUSTED"}}"#,
            None,
        )
        .expect("parses");
        assert_eq!(r.error_type.as_deref(), Some("RESOURCE_EXHAUSTED"));
        let mut info = ResponseInfo::default();
        assert!(on_event(&mut info, b"[{", None).is_err());
        assert!(on_event(&mut info, br#"{"candidates":3}"#, None).is_err());
        assert_eq!(info, ResponseInfo::default());
    }
}
