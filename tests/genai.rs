//! GenAI and RAG awareness through the proxy, over real sockets: what a collector receives for
//! OpenAI-compatible and RAG traffic, and that observing it never changes a byte.
//!
//! Sections: 1. JSON chat; 2. streamed chat (with and without usage, time to first token, frames
//! split at odd places); 3. embeddings; 4. RAG `/query` sources and `RAGSCOPE_EXTRACT` rules;
//! 5. malformed and oversized bodies; 6. content capture and redaction; 7. feedback;
//! 8. the off switch.

mod support;

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

// ---------------------------------------------------------------------------
// 1. JSON chat
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn json_chat_becomes_an_inference_span_with_usage_and_metrics() {
    let up = llm_upstream().await;
    let otlp = OtlpReceiver::start().await;
    let proxy = start(&up, &otlp, &[("RAGSCOPE_GENAI_PROVIDER", "vllm")]).await;

    let reply = post_json(&proxy, "/v1/chat/completions", chat_body(false, false)).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.json()["usage"]["completion_tokens"],
        7,
        "the body passes unchanged"
    );

    let (client, server) = otlp.wait_span_and_parent("chat rag-model", WAIT).await;
    assert_eq!(client.kind, SpanKind::Client);
    assert_eq!(client.str_attr("gen_ai.operation.name"), Some("chat"));
    assert_eq!(client.str_attr("gen_ai.provider.name"), Some("vllm"));
    assert_eq!(client.str_attr("gen_ai.request.model"), Some("rag-model"));
    assert_eq!(client.int_attr("gen_ai.request.max_tokens"), Some(128));
    assert_eq!(client.double_attr("gen_ai.request.temperature"), Some(0.3));
    assert_eq!(client.double_attr("gen_ai.request.top_p"), Some(0.95));
    assert_eq!(
        client.str_attr("gen_ai.response.id"),
        Some("chatcmpl-json-1")
    );
    assert_eq!(
        client.str_attr("gen_ai.response.model"),
        Some("rag-model-2024")
    );
    assert_eq!(
        client.strings_attr("gen_ai.response.finish_reasons"),
        vec!["stop"]
    );
    assert_eq!(client.int_attr("gen_ai.usage.input_tokens"), Some(21));
    assert_eq!(client.int_attr("gen_ai.usage.output_tokens"), Some(7));
    assert_eq!(
        client.str_attr("ragscope.model.version"),
        Some(MODEL_VERSION)
    );
    assert!(
        !client.has_attr("gen_ai.response.time_to_first_chunk"),
        "not a stream"
    );
    for deprecated in [
        "gen_ai.system",
        "gen_ai.usage.prompt_tokens",
        "gen_ai.usage.completion_tokens",
    ] {
        assert!(
            !client.has_attr(deprecated) && !server.has_attr(deprecated),
            "{deprecated}"
        );
    }
    assert!(
        !client.has_attr("gen_ai.input.messages"),
        "capture is off by default"
    );

    // Model and tokens are copied to the server span.
    assert_eq!(server.kind, SpanKind::Server);
    assert_eq!(server.str_attr("gen_ai.request.model"), Some("rag-model"));
    assert_eq!(
        server.str_attr("gen_ai.response.model"),
        Some("rag-model-2024")
    );
    assert_eq!(server.int_attr("gen_ai.usage.input_tokens"), Some(21));
    assert_eq!(server.int_attr("gen_ai.usage.output_tokens"), Some(7));
    assert_eq!(
        server.str_attr("ragscope.model.version"),
        Some(MODEL_VERSION)
    );

    let usage = otlp
        .wait_for_metric("gen_ai.client.token.usage", WAIT)
        .await;
    assert_eq!(usage.unit, "{token}");
    let base = [
        ("gen_ai.operation.name", Value::from("chat")),
        ("gen_ai.provider.name", Value::from("vllm")),
        ("gen_ai.request.model", Value::from("rag-model")),
        ("gen_ai.response.model", Value::from("rag-model-2024")),
        ("ragscope.model.version", Value::from(MODEL_VERSION)),
    ];
    let mut input = base.to_vec();
    input.push(("gen_ai.token.type", Value::from("input")));
    let point = usage
        .histogram_point_with(&input)
        .expect("input token point");
    assert_eq!((point.count, point.sum), (1, Some(21.0)));
    assert_eq!(point.explicit_bounds[..3], [1.0, 4.0, 16.0]);
    assert_eq!(point.explicit_bounds.len(), 14);
    let mut output = base.to_vec();
    output.push(("gen_ai.token.type", Value::from("output")));
    assert_eq!(
        usage.histogram_point_with(&output).expect("output").sum,
        Some(7.0)
    );

    let duration = otlp
        .wait_for_metric("gen_ai.server.request.duration", WAIT)
        .await;
    assert_eq!(duration.unit, "s");
    let point = duration
        .histogram_point_with(&base)
        .expect("duration point");
    assert_eq!(point.explicit_bounds.first(), Some(&0.01));
    assert_eq!(point.explicit_bounds.last(), Some(&81.92));
    proxy.shutdown().await;
}

// ---------------------------------------------------------------------------
// 2. Streamed chat
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn streamed_chat_measures_time_to_first_token_at_the_first_content_event() {
    let up = llm_upstream().await;
    let otlp = OtlpReceiver::start().await;
    let proxy = start(&up, &otlp, &[]).await;

    let reply = post_json(&proxy, "/api/v1/chat/completions", chat_body(true, true)).await;
    assert_eq!(reply.status, StatusCode::OK);
    let text = String::from_utf8_lossy(&reply.body);
    assert!(
        text.ends_with("data: [DONE]\n\n"),
        "the stream passes whole: {text}"
    );

    let (client, server) = otlp.wait_span_and_parent("chat rag-model", WAIT).await;
    assert_eq!(client.bool_attr("gen_ai.request.stream"), Some(true));
    assert_eq!(
        client.str_attr("gen_ai.response.id"),
        Some("chatcmpl-sse-1")
    );
    assert_eq!(
        client.str_attr("gen_ai.response.model"),
        Some("rag-model-2024")
    );
    assert_eq!(
        client.strings_attr("gen_ai.response.finish_reasons"),
        vec!["stop"]
    );
    assert_eq!(client.int_attr("gen_ai.usage.input_tokens"), Some(11));
    assert_eq!(client.int_attr("gen_ai.usage.output_tokens"), Some(4));
    assert_eq!(server.int_attr("gen_ai.usage.output_tokens"), Some(4));
    assert!(!client.has_attr("ragscope.genai.usage_reported"));

    // The role-only chunk arrives at once; the first token only after THINK.
    let ttft = client
        .double_attr("gen_ai.response.time_to_first_chunk")
        .expect("time to first chunk");
    assert!(
        ttft >= THINK.as_secs_f64(),
        "ttft {ttft} counts from the first content"
    );
    assert!(ttft < THINK.as_secs_f64() + 5.0, "ttft {ttft}");
    let first_byte = client
        .event("ragscope.response.first_byte")
        .expect("first byte event");
    let first_token = client
        .event("ragscope.response.first_token")
        .expect("first token event");
    let gap = first_token.time_unix_nanos - first_byte.time_unix_nanos;
    assert!(
        gap >= THINK.as_nanos() as u64 - 5_000_000,
        "first byte {gap} ns before first token"
    );

    let ttft_metric = otlp
        .wait_for_metric("gen_ai.server.time_to_first_token", WAIT)
        .await;
    let point = &ttft_metric.histogram_points()[0];
    assert_eq!(point.count, 1);
    assert!(point.sum.expect("sum") >= THINK.as_secs_f64());
    assert_eq!(point.explicit_bounds.len(), 16);
    let tpot = otlp
        .wait_for_metric("gen_ai.server.time_per_output_token", WAIT)
        .await;
    let point = &tpot.histogram_points()[0];
    assert_eq!(point.count, 1);
    assert_eq!(point.explicit_bounds.first(), Some(&0.01));
    assert_eq!(point.explicit_bounds.last(), Some(&2.5));
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_without_usage_says_so_instead_of_inventing_a_count() {
    let up = llm_upstream().await;
    let otlp = OtlpReceiver::start().await;
    let proxy = start(&up, &otlp, &[]).await;

    let reply = post_json(&proxy, "/v1/chat/completions", chat_body(true, false)).await;
    assert_eq!(reply.status, StatusCode::OK);

    let (client, server) = otlp.wait_span_and_parent("chat rag-model", WAIT).await;
    assert!(!client.has_attr("gen_ai.usage.output_tokens"));
    assert!(!client.has_attr("gen_ai.usage.input_tokens"));
    assert!(!server.has_attr("gen_ai.usage.output_tokens"));
    assert_eq!(
        client.bool_attr("ragscope.genai.usage_reported"),
        Some(false)
    );
    assert!(client.has_attr("gen_ai.response.time_to_first_chunk"));
    assert_eq!(
        client.strings_attr("gen_ai.response.finish_reasons"),
        vec!["stop"]
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_cut_into_tiny_frames_reads_the_same() {
    let up = llm_upstream().await;
    let otlp = OtlpReceiver::start().await;
    let proxy = start(&up, &otlp, &[]).await;

    for split in ["1", "3", "7"] {
        let path = format!("/v1/chat/completions?split={split}");
        let reply = post_json(&proxy, &path, chat_body(true, true)).await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    let spans = otlp
        .wait_for_spans(|s| s.name == "chat rag-model", 3, WAIT)
        .await;
    for client in spans {
        assert_eq!(client.int_attr("gen_ai.usage.output_tokens"), Some(4));
        assert_eq!(
            client.str_attr("gen_ai.response.id"),
            Some("chatcmpl-sse-1")
        );
        assert!(!client.has_attr("ragscope.genai.parse_error"));
    }
    proxy.shutdown().await;
}

// ---------------------------------------------------------------------------
// 3. Embeddings
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn embeddings_record_input_tokens_only() {
    let up = llm_upstream().await;
    let otlp = OtlpReceiver::start().await;
    let proxy = start(&up, &otlp, &[]).await;

    let reply = post_json(
        &proxy,
        "/v1/embeddings",
        json!({"model": "embed-small", "input": ["hello", "world"]}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);

    let (client, _) = otlp
        .wait_span_and_parent("embeddings embed-small", WAIT)
        .await;
    assert_eq!(client.str_attr("gen_ai.operation.name"), Some("embeddings"));
    assert_eq!(client.int_attr("gen_ai.usage.input_tokens"), Some(6));
    assert!(!client.has_attr("gen_ai.usage.output_tokens"));
    assert!(
        !client.has_attr("ragscope.genai.usage_reported"),
        "embeddings produce no output"
    );
    proxy.shutdown().await;
}

// ---------------------------------------------------------------------------
// 4. RAG
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn rag_sources_become_retrieval_documents_and_metrics() {
    let up = llm_upstream().await;
    let otlp = OtlpReceiver::start().await;
    let proxy = start(&up, &otlp, &[]).await;

    assert_eq!(
        post_json(&proxy, "/query", json!({"q": "capital"}))
            .await
            .status,
        200
    );
    assert_eq!(
        post_json(&proxy, "/query", json!({"q": "nothing"}))
            .await
            .status,
        200
    );

    let spans = otlp
        .wait_for_spans(
            |s| s.kind == SpanKind::Client && s.has_attr("gen_ai.retrieval.documents"),
            2,
            WAIT,
        )
        .await;
    let docs: Vec<Json> = spans
        .iter()
        .map(|s| {
            serde_json::from_str(s.str_attr("gen_ai.retrieval.documents").expect("docs"))
                .expect("JSON")
        })
        .collect();
    assert!(docs.contains(&json!([
        {"id": "doc-1", "score": 0.82}, {"id": "doc-2", "score": 0.41}, {"id": "3", "score": null}
    ])), "{docs:?}");
    assert!(docs.contains(&json!([])), "{docs:?}");

    let count = otlp
        .wait_for_metric_where(
            "ragscope.rag.documents",
            |m| m.histogram_points().iter().map(|p| p.count).sum::<u64>() == 2,
            WAIT,
        )
        .await;
    assert_eq!(count.histogram_points()[0].sum, Some(3.0));
    let top = otlp.wait_for_metric("ragscope.rag.top_score", WAIT).await;
    assert_eq!(top.histogram_points()[0].max, Some(0.82));
    let empty = otlp
        .wait_for_metric("ragscope.rag.retrievals.empty", WAIT)
        .await;
    assert_eq!(empty.number_points()[0].as_i64(), Some(1));
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn extract_rules_map_a_custom_api() {
    let up = llm_upstream().await;
    let otlp = OtlpReceiver::start().await;
    let rules = "gen_ai.operation.name=request:/op; gen_ai.request.model=request:/llm; \
                 gen_ai.response.model=response:/result/engine; \
                 gen_ai.usage.output_tokens=response:/result/tokens/out; \
                 documents=response:/hits id=/doc_id score=/relevance";
    let proxy = start(&up, &otlp, &[("RAGSCOPE_EXTRACT", rules)]).await;

    let reply = post_json(
        &proxy,
        "/custom",
        json!({"op": "chat", "llm": "house-model"}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);

    let (client, server) = otlp.wait_span_and_parent("chat house-model", WAIT).await;
    assert_eq!(client.str_attr("gen_ai.response.model"), Some("custom-llm"));
    assert_eq!(client.int_attr("gen_ai.usage.output_tokens"), Some(9));
    assert_eq!(server.int_attr("gen_ai.usage.output_tokens"), Some(9));
    let docs: Json =
        serde_json::from_str(client.str_attr("gen_ai.retrieval.documents").expect("docs"))
            .expect("json");
    assert_eq!(
        docs,
        json!([{"id": "kb-7", "score": 0.66}, {"id": "kb-9", "score": 0.12}])
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_extract_rule_stops_start_up_naming_it() {
    let err = ::ragscope::Config::from_source(
        [("RAGSCOPE_EXTRACT", "gen_ai.system=request:/x")].as_slice(),
    )
    .expect_err("rejected");
    assert_eq!(err.var, "RAGSCOPE_EXTRACT");
    assert!(err.expected.contains("unknown target"), "{err}");
}

// ---------------------------------------------------------------------------
// 5. Malformed and oversized bodies
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn malformed_json_never_fails_the_request() {
    let up = llm_upstream().await;
    let otlp = OtlpReceiver::start().await;
    let proxy = start(&up, &otlp, &[]).await;

    let reply = post_json(
        &proxy,
        "/malformed/v1/chat/completions",
        chat_body(false, false),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(&reply.body[..], b"{\"id\":\"x\",\"choices\":[");

    let (client, _) = otlp.wait_span_and_parent("chat rag-model", WAIT).await;
    assert_eq!(
        client.str_attr("ragscope.genai.parse_error"),
        Some("malformed_response_json")
    );
    assert_eq!(client.status_code, SpanStatusCode::Unset);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_over_the_parse_bound_passes_untouched_and_is_marked_truncated() {
    let up = llm_upstream().await;
    let otlp = OtlpReceiver::start().await;
    let proxy = start(&up, &otlp, &[("RAGSCOPE_PARSE_MAX_BYTES", "1KiB")]).await;

    let reply = post_json(&proxy, "/big/v1/chat/completions", chat_body(false, false)).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["filler"].as_str().map(str::len), Some(4096));

    let (client, _) = otlp.wait_span_and_parent("chat rag-model", WAIT).await;
    assert_eq!(
        client.bool_attr("ragscope.genai.parse_truncated"),
        Some(true)
    );
    assert!(!client.has_attr("gen_ai.usage.output_tokens"));
    proxy.shutdown().await;
}

// ---------------------------------------------------------------------------
// 6. Content capture and redaction
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn captured_content_is_redacted_and_bounded() {
    let up = llm_upstream().await;
    let otlp = OtlpReceiver::start().await;
    let proxy = start(
        &up,
        &otlp,
        &[
            (
                "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT",
                "SPAN_ONLY",
            ),
            ("RAGSCOPE_REDACT_PATTERNS", r"France"),
        ],
    )
    .await;

    let reply = post_json(&proxy, "/v1/chat/completions", chat_body(true, true)).await;
    assert!(
        String::from_utf8_lossy(&reply.body).contains("bob@example.com"),
        "the client sees it all"
    );

    let (client, server) = otlp.wait_span_and_parent("chat rag-model", WAIT).await;
    let input: Json =
        serde_json::from_str(client.str_attr("gen_ai.input.messages").expect("input"))
            .expect("JSON");
    assert_eq!(input[0]["role"], "system");
    assert_eq!(
        input[1]["parts"][0]["content"],
        "Capital of [REDACTED:custom]? Mail me at [REDACTED:email]"
    );
    let output: Json =
        serde_json::from_str(client.str_attr("gen_ai.output.messages").expect("output"))
            .expect("JSON");
    assert_eq!(
        output[0]["parts"][0]["content"], "Paris is it, [REDACTED:email]",
        "reassembled from the stream"
    );
    assert_eq!(output[0]["finish_reason"], "stop");
    assert!(
        !server.has_attr("gen_ai.input.messages"),
        "content stays on the inference span"
    );

    let redactions = otlp.wait_for_metric("ragscope.redactions", WAIT).await;
    let email = redactions
        .point_with(&[("ragscope.redaction.kind", Value::from("email"))])
        .expect("email count");
    assert_eq!(email.as_i64(), Some(2));
    proxy.shutdown().await;

    // Bounded: a small cap cuts the content on a character boundary.
    let otlp = OtlpReceiver::start().await;
    let proxy = start(
        &up,
        &otlp,
        &[
            ("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true"),
            ("RAGSCOPE_CAPTURE_MAX_BYTES", "20"),
        ],
    )
    .await;
    post_json(&proxy, "/v1/chat/completions", chat_body(false, false)).await;
    let (client, _) = otlp.wait_span_and_parent("chat rag-model", WAIT).await;
    let input: Json =
        serde_json::from_str(client.str_attr("gen_ai.input.messages").expect("input"))
            .expect("JSON");
    let total: usize = input
        .as_array()
        .expect("array")
        .iter()
        .map(|m| m["parts"][0]["content"].as_str().expect("text").len())
        .sum();
    assert_eq!(total, 20);
    proxy.shutdown().await;
}

// ---------------------------------------------------------------------------
// 7. Feedback
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn feedback_lands_in_the_original_trace() {
    let up = llm_upstream().await;
    let otlp = OtlpReceiver::start().await;
    let proxy = start(&up, &otlp, &[]).await;

    let reply = post_json(&proxy, "/v1/chat/completions", chat_body(false, false)).await;
    let traceresponse = reply
        .header("traceresponse")
        .expect("traceresponse")
        .to_owned();
    let trace_id = traceresponse[3..35].to_owned();
    let server_span_id = traceresponse[36..52].to_owned();

    let reply = post_json(
        &proxy,
        "/ragscope/feedback",
        json!({"trace_id": trace_id, "score": 0.25, "label": "Wrong_Source", "comment": "mail a@b.co"}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED);
    assert_eq!(reply.json()["status"], "accepted");

    let span = otlp.wait_span("ragscope.feedback", WAIT).await;
    assert_eq!(span.trace_id, trace_id);
    assert_eq!(span.parent_span_id, server_span_id);
    assert_eq!(span.bool_attr("ragscope.feedback.parent_known"), Some(true));
    let event = span
        .event("gen_ai.evaluation.result")
        .expect("evaluation event");
    assert_eq!(
        event
            .attr("gen_ai.evaluation.score.value")
            .and_then(Value::as_double),
        Some(0.25)
    );
    assert_eq!(
        event
            .attr("gen_ai.evaluation.score.label")
            .and_then(Value::as_str),
        Some("Wrong_Source")
    );
    assert!(
        event.attr("gen_ai.evaluation.explanation").is_none(),
        "a comment is content: capture is off"
    );

    let score = otlp.wait_for_metric("ragscope.feedback.score", WAIT).await;
    let point = score
        .histogram_point_with(&[("gen_ai.evaluation.score.label", Value::from("wrong_source"))])
        .expect("score point");
    assert_eq!(point.sum, Some(0.25));
    let count = otlp.wait_for_metric("ragscope.feedback", WAIT).await;
    assert_eq!(count.number_points()[0].as_i64(), Some(1));
    assert_eq!(up_requests_other_than_chat(&otlp), 0);
    assert!(
        up.requests()
            .iter()
            .all(|r| r.path() == "/v1/chat/completions"),
        "only the chat reached the upstream: {:?}",
        up.requests()
            .iter()
            .map(|r| r.uri.clone())
            .collect::<Vec<_>>()
    );
    proxy.shutdown().await;
}

/// Feedback is never forwarded: no CLIENT span exists for it.
fn up_requests_other_than_chat(otlp: &OtlpReceiver) -> usize {
    otlp.spans()
        .iter()
        .filter(|s| s.kind == SpanKind::Client && !s.name.starts_with("chat"))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn feedback_with_capture_on_records_the_redacted_comment() {
    let up = llm_upstream().await;
    let otlp = OtlpReceiver::start().await;
    let proxy = start(
        &up,
        &otlp,
        &[
            (
                "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT",
                "SPAN_AND_EVENT",
            ),
            ("RAGSCOPE_FEEDBACK_PATH", "/fb"),
        ],
    )
    .await;
    let unknown = "0af7651916cd43dd8448eb211c80319c";
    let reply = post_json(
        &proxy,
        "/fb",
        json!({"trace_id": unknown, "score": 1, "comment": "wrong, email me: x.y@corp.example"}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED);
    let span = otlp.wait_span("ragscope.feedback", WAIT).await;
    assert_eq!(
        span.trace_id, unknown,
        "joins the trace even when its span is not known"
    );
    assert_eq!(
        span.bool_attr("ragscope.feedback.parent_known"),
        Some(false)
    );
    let event = span.event("gen_ai.evaluation.result").expect("event");
    assert_eq!(
        event
            .attr("gen_ai.evaluation.explanation")
            .and_then(Value::as_str),
        Some("wrong, email me: [REDACTED:email]")
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_feedback_gets_a_json_error() {
    let up = llm_upstream().await;
    let otlp = OtlpReceiver::start().await;
    let proxy = start(&up, &otlp, &[]).await;

    for (body, why) in [
        (json!({"trace_id": "nothex", "score": 1}), "32 hex"),
        (
            json!({"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "score": "high"}),
            "number",
        ),
    ] {
        let reply = post_json(&proxy, "/ragscope/feedback", body).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        assert_eq!(reply.error_type(), "invalid_feedback");
        assert!(
            reply.json()["error"]["message"]
                .as_str()
                .expect("message")
                .contains(why)
        );
    }
    let big = json!({"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "score": 1, "comment": "x".repeat(17 * 1024)});
    let reply = post_json(&proxy, "/ragscope/feedback", big).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.error_type(), "request_body_too_large");
    assert!(otlp.spans_named("ragscope.feedback").is_empty());
    proxy.shutdown().await;
}

// ---------------------------------------------------------------------------
// 8. Off switch
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn genai_off_leaves_plain_http_spans_and_forwards_feedback_paths() {
    let up = llm_upstream().await;
    let otlp = OtlpReceiver::start().await;
    let proxy = start(&up, &otlp, &[("RAGSCOPE_GENAI", "off")]).await;

    let reply = post_json(&proxy, "/v1/chat/completions", chat_body(false, false)).await;
    assert_eq!(reply.status, StatusCode::OK);
    let reply = post_json(&proxy, "/ragscope/feedback", json!({})).await;
    assert_eq!(
        reply.status,
        StatusCode::NOT_FOUND,
        "forwarded to the upstream"
    );
    assert_eq!(up.last_request().path(), "/ragscope/feedback");

    let spans = otlp
        .wait_for_spans(|s| s.kind == SpanKind::Client, 2, WAIT)
        .await;
    for span in spans {
        assert_eq!(span.name, "POST");
        assert!(
            !span
                .attributes
                .iter()
                .any(|(k, _)| k.starts_with("gen_ai."))
        );
    }
    proxy.shutdown().await;
}
