//! Message content captured for `gen_ai.input.messages` / `gen_ai.output.messages` when the
//! operator opts in: redacted, each side within the capture bound, as the JSON the semantic
//! conventions define.

use serde_json::json;

use super::GenAi;
use super::inference::{RequestInfo, ResponseInfo, push_bounded};
use crate::genai::CaptureMode;

/// Captured message content: redacted, bounded, as the JSON the semantic conventions define.
#[derive(Debug, Clone)]
pub struct Content {
    /// Where content goes: span attributes, an event, both, or nowhere.
    pub mode: CaptureMode,
    /// `gen_ai.input.messages`.
    pub input_messages: Option<String>,
    /// `gen_ai.output.messages`.
    pub output_messages: Option<String>,
}

impl Default for Content {
    fn default() -> Content {
        Content {
            mode: CaptureMode::Off,
            input_messages: None,
            output_messages: None,
        }
    }
}

impl Content {
    /// Whether anything was captured.
    pub fn is_empty(&self) -> bool {
        self.input_messages.is_none() && self.output_messages.is_none()
    }
}

/// Content, only when the operator opted in; redacted, each side within `limit` bytes.
pub(super) fn capture_content(
    genai: &GenAi,
    request: &RequestInfo,
    response: &ResponseInfo,
    limit: usize,
    redactions: &mut Vec<(&'static str, u64)>,
) -> Content {
    let mut content = Content {
        mode: genai.config.capture,
        ..Content::default()
    };
    if !request.messages.is_empty() {
        let mut budget = limit;
        let messages: Vec<serde_json::Value> = request
            .messages
            .iter()
            .map(|(role, text)| {
                let text = cut(&genai.redact(text, budget, redactions), &mut budget);
                json!({"role": role, "parts": [{"type": "text", "content": text}]})
            })
            .collect();
        content.input_messages = Some(serde_json::Value::Array(messages).to_string());
    }
    if !response.output.is_empty() || !response.tool_parts.is_empty() {
        let mut budget = limit;
        // Finish reasons are kept once per distinct value: one reason covers every choice.
        let reason = |i: usize| match response.finish_reasons.as_slice() {
            [only] => Some(only),
            all => all.get(i),
        };
        let mut messages: Vec<serde_json::Value> = response
            .output
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let text = cut(&genai.redact(text, budget, redactions), &mut budget);
                let mut m = json!({
                    "role": "assistant",
                    "parts": [{"type": "text", "content": text}],
                });
                if let Some(r) = reason(i) {
                    m["finish_reason"] = json!(r);
                }
                m
            })
            .collect();
        if !response.tool_parts.is_empty() {
            if messages.is_empty() {
                let mut m = json!({"role": "assistant", "parts": []});
                if let Some(r) = reason(0) {
                    m["finish_reason"] = json!(r);
                }
                messages.push(m);
            }
            let parts = response.tool_parts.iter().map(|call| {
                let arguments = cut(&genai.redact(&call.arguments, budget, redactions), &mut budget);
                // Arguments are JSON text; a cut or odd one is kept as the string it is.
                let arguments = serde_json::from_str::<serde_json::Value>(&arguments)
                    .unwrap_or(serde_json::Value::String(arguments));
                json!({"type": "tool_call", "id": call.id, "name": call.name, "arguments": arguments})
            });
            if let Some(serde_json::Value::Array(p)) = messages[0].get_mut("parts") {
                p.extend(parts);
            }
        }
        content.output_messages = Some(serde_json::Value::Array(messages).to_string());
    }
    content
}

/// Cuts `text` to the remaining capture budget, on a character boundary.
fn cut(text: &str, budget: &mut usize) -> String {
    let mut s = String::new();
    push_bounded(&mut s, text, *budget);
    *budget -= s.len();
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_cut_shares_one_budget() {
        let mut budget = 5;
        assert_eq!(cut("abc", &mut budget), "abc");
        assert_eq!(cut("déf", &mut budget), "d");
        assert_eq!(cut("xy", &mut budget), "x");
        assert_eq!(cut("z", &mut budget), "");
    }
}
