//! Reading the facts of one observed exchange: the request and response copies are parsed
//! once, the operator's extract rules applied, captured content redacted and bounded. The
//! result is plain data ([`Facts`]); turning it into telemetry is the telemetry layer's job.

use std::time::{Instant, SystemTime};

use serde_json::json;

use super::extract::{self, Document, Extracted, Side, Target};
use super::openai::{self, Operation, RequestInfo, ResponseInfo};
use super::{GenAi, Observation, ResponseState};
use crate::genai::CaptureMode;

/// What is known about a GenAI/RAG call once request, response and rules are merged. Rules
/// win over what the OpenAI reading found, since the operator wrote them for this server.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// `gen_ai.operation.name`.
    pub operation: Option<String>,
    /// `gen_ai.provider.name` (configured).
    pub provider: String,
    /// `gen_ai.request.model`.
    pub request_model: Option<String>,
    /// `gen_ai.request.stream`.
    pub stream: Option<bool>,
    /// `gen_ai.request.max_tokens`.
    pub max_tokens: Option<i64>,
    /// `gen_ai.request.temperature`.
    pub temperature: Option<f64>,
    /// `gen_ai.request.top_p`.
    pub top_p: Option<f64>,
    /// `gen_ai.response.id`.
    pub response_id: Option<String>,
    /// `gen_ai.response.model`.
    pub response_model: Option<String>,
    /// `gen_ai.response.finish_reasons`.
    pub finish_reasons: Vec<String>,
    /// `gen_ai.usage.input_tokens`.
    pub input_tokens: Option<i64>,
    /// `gen_ai.usage.output_tokens`.
    pub output_tokens: Option<i64>,
    /// `gen_ai.data_source.id`.
    pub data_source: Option<String>,
    /// The response was an event stream read as it passed.
    pub streamed: bool,
    /// When the first content-bearing event went by (streams only).
    pub first_token: Option<(Instant, SystemTime)>,
    /// The model version, from the configured response header (bounded).
    pub version: Option<String>,
    /// A body was over `RAGSCOPE_PARSE_MAX_BYTES` and not parsed.
    pub truncated: bool,
    /// A body was not copied, hence not parsed: `RAGSCOPE_PARSE_BUDGET` was in use by others.
    pub budget_skipped: bool,
    /// What did not parse, when something did not.
    pub parse_error: Option<&'static str>,
    /// Retrieved documents, when a rule or the built-in `/sources` reading found them.
    pub documents: Option<Vec<Document>>,
    /// Captured content, when the operator opted in.
    pub content: Content,
    /// Matches replaced in captured content: (kind, count).
    pub redactions: Vec<(&'static str, u64)>,
}

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

impl Observation {
    /// The exchange is over: parse what was copied and return what it says, or `None` when
    /// the traffic was neither GenAI nor RAG.
    pub fn conclude(self) -> Option<Facts> {
        let genai = self.genai.clone();
        let capture = genai.capture_limit();
        let mut parse_error = self.parse_error;
        let mut truncated = self.response_truncated;
        let mut budget_skipped = false;
        let mut extracted: Vec<(&'static str, Extracted)> = Vec::new();
        let mut documents = None;

        // The request, parsed from its copy.
        let mut request = RequestInfo::default();
        if let Ok(tee) = self.request.lock() {
            budget_skipped |= tee.skipped;
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
                budget_skipped |= tee.skipped;
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
        if facts.operation.is_none() && documents.is_none() && facts.is_empty() && !budget_skipped {
            // Not GenAI or RAG traffic; only a parse problem of a recognised API is worth noting
            // (or a body left unread for want of budget: that the span must say).
            return None;
        }
        facts.stream = facts.stream.or(streamed.then_some(true));
        facts.provider = genai.config.provider.clone();
        facts.streamed = streamed;
        facts.first_token = self.first_token;
        facts.version = self.version;
        facts.truncated = truncated;
        facts.budget_skipped = budget_skipped;
        facts.parse_error = parse_error;
        facts.documents = documents;
        if let Some(limit) = capture {
            facts.content =
                capture_content(&genai, &request, &response, limit, &mut facts.redactions);
        }
        Some(facts)
    }
}

/// Content, only when the operator opted in; redacted, each side within `limit` bytes.
fn capture_content(
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
    if !response.output.is_empty() {
        let mut budget = limit;
        let messages: Vec<serde_json::Value> = response
            .output
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let text = cut(&genai.redact(text, budget, redactions), &mut budget);
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
        content.output_messages = Some(serde_json::Value::Array(messages).to_string());
    }
    content
}

impl Facts {
    fn from_parts(
        operation: Option<Operation>,
        request: &RequestInfo,
        response: &ResponseInfo,
        extracted: Vec<(&'static str, Extracted)>,
    ) -> Facts {
        let mut f = Facts::default();
        if operation.is_some() {
            // Only a recognised API's top-level fields mean what we think; for other servers,
            // only the operator's rules speak.
            f = Facts {
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
                ..Facts::default()
            };
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

    /// Whether the operation generates text (and so should report output tokens).
    pub fn generates(&self) -> bool {
        matches!(self.operation.as_deref(), Some("chat" | "text_completion"))
    }

    /// The best finite document score, when documents with scores were retrieved.
    pub fn top_score(&self) -> Option<f64> {
        self.documents
            .as_ref()?
            .iter()
            .filter_map(|d| d.score)
            .filter(|s| s.is_finite())
            .reduce(f64::max)
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
