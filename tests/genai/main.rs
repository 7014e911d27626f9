//! GenAI and RAG awareness through the proxy, over real sockets: what a collector receives for
//! OpenAI-compatible and RAG traffic, and that observing it never changes a byte.
//!
//! This file holds the scripted server and helpers; the tests are in `chat` (JSON, streamed,
//! embeddings), `rag`, `bodies` (malformed, oversized, captured content) and `feedback` (with
//! the off switch).

#[path = "../support/mod.rs"]
mod support;

mod bodies;
mod chat;
mod feedback;
mod rag;

use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use serde_json::{Value as Json, json};
use support::*;

const WAIT: Duration = Duration::from_secs(10);
/// The scripted model waits this long before its first content event.
const THINK: Duration = Duration::from_millis(300);
const MODEL_VERSION: &str = "2024-06-01";

// ---------------------------------------------------------------------------
// A scripted OpenAI-compatible / RAG server
// ---------------------------------------------------------------------------

/// Starts the support upstream with the scripted LLM/RAG routes of [`route`].
async fn llm_upstream() -> Upstream {
    Upstream::scripted(route).await
}

/// `x-model-version`, sent with every scripted answer.
const VERSION_HEADER: (&str, &str) = ("x-model-version", MODEL_VERSION);

/// The scripted OpenAI-compatible / RAG answers; other paths fall through to the support
/// upstream's own routes (unknown ones answer 404).
fn route(seen: &SeenRequest) -> Option<Response<UpstreamBody>> {
    let request = seen.json();
    let json = |v: Json| canned_json(&v, &[VERSION_HEADER]);
    Some(match seen.path() {
        "/v1/chat/completions" | "/api/v1/chat/completions" => {
            let model = request["model"].as_str().unwrap_or("unknown");
            let last = request["messages"]
                .as_array()
                .and_then(|m| m.last())
                .and_then(|m| m["content"].as_str())
                .unwrap_or_default();
            if request["stream"].as_bool() == Some(true) {
                let usage = request["stream_options"]["include_usage"].as_bool() == Some(true);
                let split = seen.query("split").and_then(|n| n.parse().ok());
                sse_chat(model, usage, split)
            } else {
                json(json!({
                    "id": "chatcmpl-json-1",
                    "object": "chat.completion",
                    "model": format!("{model}-2024"),
                    "choices": [{"index": 0, "finish_reason": "stop",
                        "message": {"role": "assistant", "content": format!("You said: {last}")}}],
                    "usage": {"prompt_tokens": 21, "completion_tokens": 7, "total_tokens": 28}
                }))
            }
        }
        "/v1/embeddings" => json(json!({
            "object": "list", "model": "embed-small",
            "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
            "usage": {"prompt_tokens": 6, "total_tokens": 6}
        })),
        "/query" => {
            let sources = if request["q"] == "nothing" {
                json!([])
            } else {
                json!([{"id": "doc-1", "score": 0.82}, {"id": "doc-2", "score": 0.41}, {"id": 3}])
            };
            json(json!({"answer": "Paris", "sources": sources}))
        }
        "/custom" => json(json!({
            "result": {"engine": "custom-llm", "tokens": {"out": 9}},
            "hits": [{"doc_id": "kb-7", "relevance": 0.66}, {"doc_id": "kb-9", "relevance": 0.12}]
        })),
        "/malformed/v1/chat/completions" => canned(
            200,
            &[("content-type", "application/json")],
            &b"{\"id\":\"x\",\"choices\":["[..],
        ),
        "/big/v1/chat/completions" => {
            let filler = "x".repeat(4096);
            json(json!({
                "id": "big", "model": "m", "filler": filler,
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"content": "ok"}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1}
            }))
        }
        _ => return None,
    })
}

/// The streamed answer: a role-only chunk at once, content after [`THINK`] (the model
/// thinking is the behaviour under test: time to first token), then a finish chunk, an
/// optional usage chunk and `[DONE]`. `split` cuts the whole stream into frames of that many
/// bytes instead, to prove parsing does not depend on where frames end.
fn sse_chat(model: &str, usage: bool, split: Option<usize>) -> Response<UpstreamBody> {
    let chunk = |choices: Json| {
        format!(
            "data: {}\n\n",
            json!({"id": "chatcmpl-sse-1", "object": "chat.completion.chunk",
                   "model": format!("{model}-2024"), "choices": choices})
        )
    };
    let mut events = vec![
        (
            Duration::ZERO,
            chunk(json!([{"index": 0, "delta": {"role": "assistant"}}])),
        ),
        (
            THINK,
            chunk(json!([{"index": 0, "delta": {"content": "Par"}}])),
        ),
        (
            Duration::from_millis(20),
            chunk(json!([{"index": 0, "delta": {"content": "is is "}}])),
        ),
        (
            Duration::from_millis(20),
            chunk(json!([{"index": 0, "delta": {"content": "it, bob@example.com"}}])),
        ),
        (
            Duration::from_millis(20),
            chunk(json!([{"index": 0, "delta": {}, "finish_reason": "stop"}])),
        ),
    ];
    if usage {
        events.push((
            Duration::ZERO,
            format!(
                "data: {}\n\n",
                json!({"id": "chatcmpl-sse-1", "model": format!("{model}-2024"), "choices": [],
                       "usage": {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}})
            ),
        ));
    }
    events.push((Duration::ZERO, "data: [DONE]\n\n".to_owned()));
    let frames: Vec<(Duration, Bytes)> = events
        .into_iter()
        .map(|(d, e)| (d, Bytes::from(e)))
        .collect();
    let frames = match split {
        Some(n) => split_frames(&frames, n),
        None => frames,
    };
    canned_sse(frames, &[VERSION_HEADER])
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// POSTs `body` as JSON to `path` on the proxy.
async fn post_json(proxy: &Proxy, path: &str, body: Json) -> Reply {
    Client::http1().post_json(proxy.url(path), &body).await
}

fn chat_body(stream: bool, usage: bool) -> Json {
    let mut body = json!({
        "model": "rag-model", "max_tokens": 128, "temperature": 0.3, "top_p": 0.95,
        "messages": [{"role": "system", "content": "Answer briefly."},
                     {"role": "user", "content": "Capital of France? Mail me at ann@example.org"}]
    });
    if stream {
        body["stream"] = json!(true);
        if usage {
            body["stream_options"] = json!({"include_usage": true});
        }
    }
    body
}

async fn start(up: &Upstream, otlp: &OtlpReceiver, env: &[(&str, &str)]) -> Proxy {
    let mut builder = Proxy::builder().upstream(up).otlp(otlp);
    for (k, v) in env {
        builder = builder.env(k, *v);
    }
    builder.run().await
}
