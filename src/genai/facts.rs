//! Reading the facts of one observed exchange: the request and response copies are parsed
//! once, the operator's extract rules applied, captured content redacted and bounded. The
//! result is plain data ([`Facts`]); turning it into telemetry is the telemetry layer's job.

use std::time::{Instant, SystemTime};

use super::api::Api;
use super::capture::capture_content;
use super::decode;
use super::extract::{self, Document, Extracted, Side, Target};
use super::inference::{Detail, Malformed, RequestInfo, ResponseInfo, parse_or_default};
use super::openai;
use super::prices::{Cost, PriceTable, Usage};
use super::{Content, GenAi, Observation, ResponseState};

/// What is known about a GenAI/RAG call once request, response and rules are merged. Rules
/// win over what the API reader found, since the operator wrote them for this server. Every
/// string is within [`super::MAX_FIELD_BYTES`]; token counts follow the conventions (input
/// includes cached input, output includes reasoning).
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// `gen_ai.operation.name`.
    pub operation: Option<String>,
    /// `gen_ai.provider.name`: the recognised API's, unless `RAGSCOPE_GENAI_PROVIDER` is set.
    pub provider: String,
    /// `gen_ai.request.model`.
    pub request_model: Option<String>,
    /// The request model as a metric attribute: one of a bounded set of values, or `other`.
    pub metric_request_model: Option<String>,
    /// The response model as a metric attribute: one of a bounded set of values, or `other`.
    pub metric_response_model: Option<String>,
    /// `gen_ai.request.stream`.
    pub stream: Option<bool>,
    /// `gen_ai.request.max_tokens`.
    pub max_tokens: Option<i64>,
    /// `gen_ai.request.temperature`.
    pub temperature: Option<f64>,
    /// `gen_ai.request.top_p`.
    pub top_p: Option<f64>,
    /// `gen_ai.request.top_k`.
    pub top_k: Option<f64>,
    /// `gen_ai.response.id`.
    pub response_id: Option<String>,
    /// `gen_ai.response.model`.
    pub response_model: Option<String>,
    /// `gen_ai.response.finish_reasons`.
    pub finish_reasons: Vec<String>,
    /// `gen_ai.usage.input_tokens`, cached input included.
    pub input_tokens: Option<i64>,
    /// `gen_ai.usage.output_tokens`, reasoning included.
    pub output_tokens: Option<i64>,
    /// `gen_ai.usage.cache_read.input_tokens`, `.cache_creation.input_tokens` (parts of
    /// `input_tokens`), `gen_ai.usage.reasoning.output_tokens` (part of `output_tokens`), tool
    /// calls and their names.
    pub detail: Detail,
    /// `gen_ai.conversation.id`: the conversation the API itself names.
    pub conversation_id: Option<String>,
    /// An error the API reported in a body or stream event (`overloaded_error`...).
    pub api_error: Option<String>,
    /// That error as a metric attribute: one of a bounded set of values, or `other`.
    pub metric_api_error: Option<String>,
    /// What the inference cost, when `RAGSCOPE_PRICES` prices its model and the usage is known.
    pub cost: Option<Cost>,
    /// `gen_ai.data_source.id`.
    pub data_source: Option<String>,
    /// The response was an event stream read as it passed.
    pub streamed: bool,
    /// Stream events that carried generated content (what a token budget estimates a
    /// stream's output from when no usage was reported).
    pub content_events: u64,
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
    /// Why a body was not read at all: `encoding` (a `Content-Encoding` ragscope does not
    /// undo). Not a parse error: nothing was tried.
    pub skipped: Option<&'static str>,
    /// Retrieved documents, when a rule or the built-in `/sources` reading found them.
    pub documents: Option<Vec<Document>>,
    /// Captured content, when the operator opted in.
    pub content: Content,
    /// Matches replaced in captured content: (kind, count).
    pub redactions: Vec<(&'static str, u64)>,
}

impl Observation {
    /// The exchange is over: parse what was copied and return what it says, or `None` when
    /// the traffic was neither GenAI nor RAG.
    pub fn conclude(self) -> Option<Facts> {
        let genai = self.genai.clone();
        let capture = genai.capture_limit();
        let mut parse_error = self.parse_error;
        let mut truncated = self.response_truncated;
        let mut budget_skipped = self.budget_skipped;
        let mut extracted: Vec<(&'static str, Extracted)> = Vec::new();
        let mut documents = None;

        let recognised = self.recognised;
        let api = recognised.as_ref().map(|r| r.api);

        // The request, parsed from its copy.
        let mut request = RequestInfo::default();
        if let Ok(tee) = self.request.lock() {
            budget_skipped |= tee.skipped;
            let notes = (&mut truncated, &mut budget_skipped, &mut parse_error);
            let malformed = "malformed_request_encoding";
            if let Some(body) = decode::body(&self.request_encoding, &tee, malformed, notes) {
                let buf = body.bytes();
                // An unrecognised POST is read the OpenAI way: RAG servers often take a
                // `model` in their own request shape.
                let read = read_body(&genai, Side::Request, api, buf, || match &recognised {
                    Some(r) => r.parse_request(buf, capture.is_some()),
                    None => openai::parse_request(buf, capture.is_some()),
                });
                match read {
                    Ok((info, found)) => {
                        request = info;
                        extracted.extend(found.attributes);
                        documents = found.documents.or(documents);
                    }
                    Err(_) => parse_error = Some("malformed_request_json"),
                }
            }
        }
        if let Some(r) = &recognised {
            // Gemini names the model and the streaming in the path.
            if request.model.is_none() {
                request.model.clone_from(&r.model);
            }
            request.stream = request.stream.or(r.stream);
        }

        // The response: accumulated from the stream, or parsed from its copy.
        let (response, streamed) = match self.response {
            ResponseState::Sse { info, .. } => (*info, true),
            ResponseState::Json(tee) => {
                let mut info = ResponseInfo::default();
                budget_skipped |= tee.skipped;
                let notes = (&mut truncated, &mut budget_skipped, &mut parse_error);
                let malformed = "malformed_response_encoding";
                if let Some(body) = decode::body(&self.response_encoding, &tee, malformed, notes) {
                    let buf = body.bytes();
                    let read = read_body(&genai, Side::Response, api, buf, || match api {
                        Some(api) => api.parse_body(buf, capture),
                        None => Ok(ResponseInfo::default()),
                    });
                    match read {
                        Ok((read, found)) => {
                            info = read;
                            extracted.extend(found.attributes);
                            documents = found.documents.or(documents);
                        }
                        Err(_) => parse_error = Some("malformed_response_json"),
                    }
                }
                (info, false)
            }
            ResponseState::Pending | ResponseState::Skip => (ResponseInfo::default(), false),
        };

        let mut facts = Facts::from_parts(api, &request, &response, extracted);
        let skipped = self.skipped;
        if facts.operation.is_none()
            && documents.is_none()
            && facts.is_empty()
            && !budget_skipped
            && skipped.is_none()
        {
            // Not GenAI or RAG traffic; only a parse problem of a recognised API is worth noting
            // (or a body left unread for want of budget: that the span must say).
            return None;
        }
        facts.stream = facts.stream.or(streamed.then_some(true));
        facts.provider = match (&genai.config.provider, &recognised) {
            (Some(p), _) => p.clone(),
            (None, Some(r)) => r.provider.to_owned(),
            // Traffic only the operator's rules read: the API format rules are written for.
            (None, None) => "openai".to_owned(),
        };
        facts.metric_request_model = facts
            .request_model
            .as_deref()
            .map(|m| genai.metric_model(m));
        facts.metric_response_model = facts
            .response_model
            .as_deref()
            .map(|m| genai.metric_model(m));
        facts.metric_api_error = facts.api_error.as_deref().map(|e| genai.errors.admit(e));
        if let Some(prices) = &genai.config.prices {
            facts.cost = facts.cost(&prices.table());
        }
        facts.streamed = streamed;
        facts.first_token = self.first_token;
        facts.version = self.version;
        if self.conversation.is_some() {
            // The operator named the header: it wins over what the API itself says.
            facts.conversation_id = self.conversation;
        }
        facts.truncated = truncated;
        facts.budget_skipped = budget_skipped;
        facts.parse_error = parse_error;
        facts.skipped = skipped;
        facts.documents = documents;
        if let Some(limit) = capture {
            facts.content =
                capture_content(&genai, &request, &response, limit, &mut facts.redactions);
        }
        Some(facts)
    }
}

impl Facts {
    fn from_parts(
        api: Option<Api>,
        request: &RequestInfo,
        response: &ResponseInfo,
        extracted: Vec<(&'static str, Extracted)>,
    ) -> Facts {
        let mut f = Facts::default();
        if let Some(api) = api {
            // Only a recognised API's top-level fields mean what we think; for other servers,
            // only the operator's rules speak.
            f = Facts {
                operation: Some(api.operation().as_str().to_owned()),
                request_model: request.model.clone(),
                stream: request.stream,
                max_tokens: request.max_tokens,
                temperature: request.temperature,
                top_p: request.top_p,
                top_k: request.top_k,
                response_id: response.id.clone(),
                response_model: response.model.clone(),
                finish_reasons: response.finish_reasons.clone(),
                input_tokens: response.input_tokens,
                output_tokens: response.output_tokens,
                detail: response.detail.clone(),
                // The API's answer names the conversation it used; else what the request said.
                conversation_id: response
                    .conversation_id
                    .clone()
                    .or_else(|| request.conversation_id.clone()),
                api_error: response.error_type.clone(),
                content_events: response.content_events,
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
        matches!(
            self.operation.as_deref(),
            Some("chat" | "text_completion" | "generate_content")
        )
    }

    /// The cost at the first matching price: `None` without a price for the model, or without
    /// the token counts it takes (a stream without usage is not free: its cost is unknown).
    fn cost(&self, table: &PriceTable) -> Option<Cost> {
        let input = self.input_tokens?;
        let output = match self.output_tokens {
            Some(n) => n,
            None if self.generates() => return None,
            None => 0,
        };
        let models = [
            self.response_model.as_deref(),
            self.request_model.as_deref(),
        ];
        let price = table.find(models.into_iter().flatten())?;
        Some(price.cost(Usage {
            input,
            output,
            cache_read: self.detail.cache_read_tokens.unwrap_or(0),
            cache_write: self.detail.cache_creation_tokens.unwrap_or(0),
        }))
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

/// What the operator's rules (and the built-in `/sources` reading) found in one body.
#[derive(Default)]
struct Found {
    attributes: Vec<(&'static str, Extracted)>,
    documents: Option<Vec<Document>>,
}

/// Reads one body copy: the API's reader (`read`, typed, borrowing from the bytes) and the
/// rules for `side`. A JSON tree of the body is built only when a configured rule reads that
/// side; the built-in `/sources` reading of OpenAI-shaped and unrecognised responses parses
/// just that member. Why: parsing every chat body into a `serde_json::Value` was a third of the
/// telemetry thread's time under load.
fn read_body<T>(
    genai: &GenAi,
    side: Side,
    api: Option<Api>,
    body: &[u8],
    read: impl FnOnce() -> Result<T, Malformed>,
) -> Result<(T, Found), Malformed> {
    let openai_shaped = matches!(
        api,
        None | Some(Api::OpenAiChat | Api::OpenAiCompletions | Api::OpenAiEmbeddings)
    );
    let mut found = Found::default();
    let info = read()?;
    let rules = &genai.config.extract;
    // The built-in `/sources` reading stands in for a `documents` rule on either side.
    let builtin = openai_shaped
        && side == Side::Response
        && !rules
            .iter()
            .any(|r| matches!(r.target, Target::Documents { .. }));
    if rules.iter().any(|r| r.side == side) {
        let v: serde_json::Value = serde_json::from_slice(body)?;
        apply_rules(genai, side, &v, builtin, &mut found);
    } else if builtin {
        found.documents = builtin_sources(body)?;
    }
    Ok((info, found))
}

/// The built-in RAG reading: a top-level `sources` array of `{id, score}` objects. Everything
/// else in the body is skipped unparsed.
fn builtin_sources(body: &[u8]) -> Result<Option<Vec<Document>>, Malformed> {
    #[derive(Default, serde::Deserialize)]
    struct Top<'a> {
        #[serde(borrow, default)]
        sources: Option<&'a serde_json::value::RawValue>,
    }
    let Some(raw) = parse_or_default::<Top<'_>>(body)?.sources else {
        return Ok(None);
    };
    let sources: serde_json::Value = serde_json::from_str(raw.get())?;
    Ok(extract::documents(&sources, "", "/id", "/score"))
}

/// Applies the configured rules for `side` to a parsed body, then the built-in `/sources`
/// reading when `builtin` (no `documents` rule, an OpenAI-shaped response) says so.
fn apply_rules(
    genai: &GenAi,
    side: Side,
    body: &serde_json::Value,
    builtin: bool,
    found: &mut Found,
) {
    for rule in &genai.config.extract {
        if rule.side != side {
            continue;
        }
        match &rule.target {
            Target::Attribute(name, kind) => {
                if let Some(v) = extract::extract(*kind, body, &rule.pointer) {
                    found.attributes.push((name, v));
                }
            }
            Target::Documents { id, score } => {
                if let Some(d) = extract::documents(body, &rule.pointer, id, score) {
                    found.documents = Some(d);
                }
            }
        }
    }
    if builtin {
        if let Some(d) = extract::documents(body, "/sources", "/id", "/score") {
            found.documents = Some(d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_sources_reads_only_the_sources_member() {
        let body = br#"{"choices":[{"message":{"content":"x"}}],"sources":[{"id":"a","score":0.5},{"id":7}]}"#;
        let docs = builtin_sources(body).expect("parses").expect("sources");
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].id.as_deref(), Some("a"));
        assert_eq!(docs[0].score, Some(0.5));
        assert_eq!(docs[1].id.as_deref(), Some("7"));
        assert_eq!(docs[1].score, None);
        // Valid JSON without sources, or of another shape, has none; broken JSON is malformed.
        assert!(
            builtin_sources(br#"{"answer":"x"}"#)
                .expect("parses")
                .is_none()
        );
        assert!(builtin_sources(b"[1,2]").expect("parses").is_none());
        assert!(
            builtin_sources(br#"{"sources":"no"}"#)
                .expect("parses")
                .is_none()
        );
        assert!(builtin_sources(b"{\"sources\":[").is_err());
    }
}
