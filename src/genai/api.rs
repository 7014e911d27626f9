//! Which LLM API a request speaks, recognised from its method and path, and the one entry point
//! to that API's reader. Only `POST` is an inference; the path rules (a prefix before them is
//! allowed, as is a trailing slash):
//!
//! | Path ends with | API | Operation | Provider |
//! |---|---|---|---|
//! | `/v1/chat/completions` | OpenAI chat | `chat` | `openai` |
//! | `/v1/completions` | OpenAI completions | `text_completion` | `openai` |
//! | `/v1/embeddings` | OpenAI embeddings | `embeddings` | `openai` |
//! | `/v1/responses` | OpenAI Responses | `chat` | `openai` |
//! | `/openai/deployments/{name}/chat/completions` (and `/completions`, `/embeddings`, `/responses`) | Azure OpenAI | as above | `azure.ai.openai` |
//! | `/v1/messages` | Anthropic Messages | `chat` | `anthropic` |
//! | `/models/{model}:generateContent`, `:streamGenerateContent` (also `tunedModels/`) | Gemini | `generate_content` | `gcp.gemini`, or `gcp.vertex_ai` under `/publishers/google/` |
//!
//! Sub-resources (`/v1/messages/count_tokens`, `/v1/responses/{id}`) are not inferences and are
//! not recognised.

use super::inference::{EventKind, Malformed, Operation, RequestInfo, ResponseInfo, cap};
use super::{anthropic, gemini, openai, responses};

/// An LLM API ragscope reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// OpenAI chat completions.
    OpenAiChat,
    /// OpenAI (legacy) completions.
    OpenAiCompletions,
    /// OpenAI embeddings.
    OpenAiEmbeddings,
    /// OpenAI Responses.
    OpenAiResponses,
    /// Anthropic Messages.
    AnthropicMessages,
    /// Gemini generateContent / streamGenerateContent.
    Gemini,
}

/// A recognised request: its API, and what the path itself says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recognised {
    /// The API.
    pub api: Api,
    /// `gen_ai.provider.name` for it (overridden by `RAGSCOPE_GENAI_PROVIDER`).
    pub provider: &'static str,
    /// The model named by the path (Gemini), bounded.
    pub model: Option<String>,
    /// Whether the path asks for a stream (Gemini `:streamGenerateContent`).
    pub stream: Option<bool>,
}

impl Api {
    /// The `gen_ai.operation.name`.
    pub fn operation(self) -> Operation {
        match self {
            Api::OpenAiChat | Api::OpenAiResponses | Api::AnthropicMessages => Operation::Chat,
            Api::OpenAiCompletions => Operation::TextCompletion,
            Api::OpenAiEmbeddings => Operation::Embeddings,
            Api::Gemini => Operation::GenerateContent,
        }
    }

    /// Reads a request body. `capture` also collects the input messages.
    pub fn parse_request(self, body: &[u8], capture: bool) -> Result<RequestInfo, Malformed> {
        match self {
            Api::OpenAiChat | Api::OpenAiCompletions | Api::OpenAiEmbeddings => {
                openai::parse_request(body, capture)
            }
            Api::OpenAiResponses => responses::parse_request(body, capture),
            Api::AnthropicMessages => anthropic::parse_request(body, capture),
            Api::Gemini => gemini::parse_request(body, capture),
        }
    }

    /// Reads one complete JSON response body.
    pub fn parse_body(
        self,
        body: &[u8],
        capture: Option<usize>,
    ) -> Result<ResponseInfo, Malformed> {
        match self {
            Api::OpenAiChat | Api::OpenAiCompletions | Api::OpenAiEmbeddings => {
                openai::parse_body(body, capture)
            }
            Api::OpenAiResponses => responses::parse_body(body, capture),
            Api::AnthropicMessages => anthropic::parse_body(body, capture),
            Api::Gemini => gemini::parse_body(body, capture),
        }
    }

    /// Accumulates one SSE event's data into `info`.
    pub fn on_event(
        self,
        info: &mut ResponseInfo,
        data: &[u8],
        capture: Option<usize>,
    ) -> Result<EventKind, Malformed> {
        match self {
            Api::OpenAiChat | Api::OpenAiCompletions | Api::OpenAiEmbeddings => {
                openai::on_event(info, data, capture)
            }
            Api::OpenAiResponses => responses::on_event(info, data, capture),
            Api::AnthropicMessages => anthropic::on_event(info, data, capture),
            Api::Gemini => gemini::on_event(info, data, capture),
        }
    }
}

impl Recognised {
    /// Recognises `method path` (the path without its query) as an inference of a known API.
    pub fn from_request(method: &http::Method, path: &str) -> Option<Recognised> {
        if method != http::Method::POST {
            return None;
        }
        Recognised::from_path(path)
    }

    /// Recognises a path, whatever the method.
    pub fn from_path(path: &str) -> Option<Recognised> {
        let path = path.strip_suffix('/').unwrap_or(path);
        let (rest, last) = path.rsplit_once('/')?;
        if let Some((model, method)) = last.split_once(':') {
            let stream = match method {
                "generateContent" => false,
                "streamGenerateContent" => true,
                _ => return None,
            };
            let (parent, collection) = rest.rsplit_once('/')?;
            if model.is_empty() || !matches!(collection, "models" | "tunedModels") {
                return None;
            }
            let vertex = parent.ends_with("/publishers/google");
            return Some(Recognised {
                api: Api::Gemini,
                provider: if vertex {
                    "gcp.vertex_ai"
                } else {
                    "gcp.gemini"
                },
                model: Some(cap(model)),
                stream: Some(stream),
            });
        }
        let known = |api, provider| {
            Some(Recognised {
                api,
                provider,
                model: None,
                stream: None,
            })
        };
        for (suffix, api) in [
            ("/chat/completions", Api::OpenAiChat),
            ("/completions", Api::OpenAiCompletions),
            ("/embeddings", Api::OpenAiEmbeddings),
            ("/responses", Api::OpenAiResponses),
        ] {
            let Some(base) = path.strip_suffix(suffix) else {
                continue;
            };
            if base.ends_with("/v1") {
                return known(api, "openai");
            }
            // Azure names the deployment in the path (and the API version in the query).
            if let Some((deployments, name)) = base.rsplit_once('/')
                && !name.is_empty()
                && deployments.ends_with("/openai/deployments")
            {
                return known(api, "azure.ai.openai");
            }
        }
        if path.ends_with("/v1/messages") {
            return known(Api::AnthropicMessages, "anthropic");
        }
        None
    }

    /// Reads the request body, completed with what the path says.
    pub fn parse_request(&self, body: &[u8], capture: bool) -> Result<RequestInfo, Malformed> {
        let mut info = self.api.parse_request(body, capture)?;
        if info.model.is_none() {
            info.model.clone_from(&self.model);
        }
        if info.stream.is_none() {
            info.stream = self.stream;
        }
        Ok(info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    fn api(path: &str) -> Option<Api> {
        Recognised::from_request(&Method::POST, path).map(|r| r.api)
    }

    #[test]
    fn paths() {
        assert_eq!(api("/v1/chat/completions"), Some(Api::OpenAiChat));
        assert_eq!(
            api("/api/openai/v1/chat/completions/"),
            Some(Api::OpenAiChat)
        );
        assert_eq!(api("/v1/completions"), Some(Api::OpenAiCompletions));
        assert_eq!(api("/v1/embeddings"), Some(Api::OpenAiEmbeddings));
        assert_eq!(api("/v1/responses"), Some(Api::OpenAiResponses));
        assert_eq!(api("/v1/messages"), Some(Api::AnthropicMessages));
        assert_eq!(api("/anthropic/v1/messages"), Some(Api::AnthropicMessages));
        assert_eq!(api("/v1/messages/count_tokens"), None);
        assert_eq!(api("/v1/responses/resp_1"), None);
        assert_eq!(api("/v1/chat/completionsX"), None);
        assert_eq!(api("/query"), None);
        assert_eq!(
            api("/chat/completions"),
            None,
            "no /v1, no Azure deployment"
        );
        assert_eq!(
            Recognised::from_request(&Method::GET, "/v1/chat/completions"),
            None
        );
        let azure = Recognised::from_path("/openai/deployments/gpt4o-prod/chat/completions")
            .expect("azure");
        assert_eq!(
            (azure.api, azure.provider),
            (Api::OpenAiChat, "azure.ai.openai")
        );
        assert_eq!(api("/openai/deployments//chat/completions"), None);
    }

    #[test]
    fn gemini_paths_name_the_model() {
        let g = Recognised::from_path("/v1beta/models/gemini-2.5-flash:streamGenerateContent")
            .expect("gemini");
        assert_eq!(g.api, Api::Gemini);
        assert_eq!(g.provider, "gcp.gemini");
        assert_eq!(g.model.as_deref(), Some("gemini-2.5-flash"));
        assert_eq!(g.stream, Some(true));
        let v = Recognised::from_path(
            "/v1/projects/p/locations/us-central1/publishers/google/models/gemini-2.0:generateContent",
        )
        .expect("vertex");
        assert_eq!((v.provider, v.stream), ("gcp.vertex_ai", Some(false)));
        assert_eq!(api("/v1beta/models/gemini:countTokens"), None);
        assert_eq!(api("/v1beta/models/:generateContent"), None);
        assert_eq!(api("/v1beta/files/x:generateContent"), None);
        let r = g
            .parse_request(br#"{"contents":[]}"#, false)
            .expect("parses");
        assert_eq!(r.model.as_deref(), Some("gemini-2.5-flash"));
        assert_eq!(r.stream, Some(true));
    }
}
