//! The LLM APIs beyond OpenAI chat, driven as a user would: the official `openai` and
//! `anthropic` Python clients (pinned in tests/install-deps.sh) pointed at ragscope, in front
//! of a stand-in upstream that answers in each API's exact wire format; Gemini over raw HTTP.
//! Asserted at the in-process OTLP receiver: the inference span and the token metric.
//!
//! Sections: 1. the stand-in upstream; 2. the Python clients; 3. OpenAI chat (cache and
//! reasoning detail, tool calls, byte-split stream, cancelled stream); 4. OpenAI Responses;
//! 5. Anthropic Messages (JSON, stream with thinking and tool use, error event); 6. Gemini;
//! 7. hostile model names.

mod support;

use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use serde_json::{Value as Json, json};
use support::*;

const WAIT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------
// 1. The stand-in upstream
// ---------------------------------------------------------------------------

/// The stand-in LLM server: the request's `model` picks the scenario (`split` cuts the stream
/// into 7-byte frames, `slow` trickles it, `overloaded` fails it with an error event).
fn route(seen: &SeenRequest) -> Option<Response<UpstreamBody>> {
    let request = seen.json();
    let model = request["model"].as_str().unwrap_or_default().to_owned();
    let stream = request["stream"].as_bool() == Some(true);
    let path = seen.path();
    let events = if path.ends_with("/v1/chat/completions") {
        if !stream {
            return Some(canned_json(&chat_json(&model), &[]));
        }
        chat_events(&model, request["stream_options"]["include_usage"] == true)
    } else if path.ends_with("/v1/responses") {
        if !stream {
            return Some(canned_json(&responses_json(&model, &request), &[]));
        }
        responses_events(&model)
    } else if path.ends_with("/v1/messages") {
        if !stream {
            return Some(canned_json(&anthropic_json(&model), &[]));
        }
        anthropic_events(&model)
    } else if let Some(model) = gemini_model(path) {
        if !path.ends_with(":streamGenerateContent") {
            return Some(canned_json(&gemini_json(model, true), &[]));
        }
        if seen.query("alt").as_deref() != Some("sse") {
            let chunks = json!([gemini_json(model, false), gemini_json(model, true)]);
            return Some(canned_json(&chunks, &[]));
        }
        vec![
            format!("data: {}\r\n\r\n", gemini_json(model, false)),
            format!("data: {}\r\n\r\n", gemini_json(model, true)),
        ]
    } else {
        return None;
    };
    let gap = if model.starts_with("slow") {
        Duration::from_millis(100)
    } else {
        Duration::ZERO
    };
    let frames: Vec<(Duration, Bytes)> = events.into_iter().map(|e| (gap, e.into())).collect();
    let frames = if model.starts_with("split") {
        split_frames(&frames, 7)
    } else {
        frames
    };
    Some(canned_sse(frames, &[]))
}

/// A Gemini path's model: `/v1beta/models/{model}:{method}`.
fn gemini_model(path: &str) -> Option<&str> {
    let last = path.strip_prefix("/v1beta/models/")?;
    last.split_once(':').map(|(model, _)| model)
}

fn sse(event: Option<&str>, data: &Json) -> String {
    match event {
        Some(name) => format!("event: {name}\ndata: {data}\n\n"),
        None => format!("data: {data}\n\n"),
    }
}

/// OpenAI usage with the cache and reasoning detail (both included in the totals).
fn openai_usage() -> Json {
    json!({"prompt_tokens": 50, "completion_tokens": 20, "total_tokens": 70,
           "prompt_tokens_details": {"cached_tokens": 30},
           "completion_tokens_details": {"reasoning_tokens": 8}})
}

fn chat_json(model: &str) -> Json {
    json!({
        "id": "chatcmpl-py-1", "object": "chat.completion", "created": 1_741_476_542,
        "model": format!("{model}-2025"),
        "choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": null,
            "message": {"role": "assistant", "content": null, "refusal": null, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_2", "type": "function",
                 "function": {"name": "get_time", "arguments": "{}"}}]}}],
        "usage": openai_usage()
    })
}

fn chat_events(model: &str, usage: bool) -> Vec<String> {
    let chunk = |choices: Json| {
        sse(
            None,
            &json!({"id": "chatcmpl-py-2", "object": "chat.completion.chunk",
                    "created": 1_741_476_542, "model": format!("{model}-2025"),
                    "choices": choices}),
        )
    };
    let mut events = vec![chunk(
        json!([{"index": 0, "delta": {"role": "assistant", "content": ""}}]),
    )];
    for word in ["The ", "capital ", "is ", "Paris", "."] {
        events.push(chunk(
            json!([{"index": 0, "delta": {"content": word}, "finish_reason": null}]),
        ));
    }
    events.push(chunk(
        json!([{"index": 0, "delta": {}, "finish_reason": "stop"}]),
    ));
    if usage {
        events.push(sse(
            None,
            &json!({"id": "chatcmpl-py-2", "object": "chat.completion.chunk",
                    "created": 1_741_476_542, "model": format!("{model}-2025"),
                    "choices": [], "usage": openai_usage()}),
        ));
    }
    events.push("data: [DONE]\n\n".to_owned());
    events
}

fn responses_usage() -> Json {
    json!({"input_tokens": 36, "input_tokens_details": {"cached_tokens": 12},
           "output_tokens": 87, "output_tokens_details": {"reasoning_tokens": 64},
           "total_tokens": 123})
}

fn responses_body(model: &str, status: &str, output: Json, usage: Json) -> Json {
    json!({"id": "resp_py_1", "object": "response", "created_at": 1_741_476_542,
           "status": status, "model": format!("{model}-2025"), "output": output,
           "parallel_tool_calls": true, "tool_choice": "auto", "tools": [],
           "usage": usage})
}

fn responses_json(model: &str, request: &Json) -> Json {
    let mut body = responses_body(
        model,
        "completed",
        json!([
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
             "content": [{"type": "output_text", "text": "Paris", "annotations": []}]}
        ]),
        responses_usage(),
    );
    body["previous_response_id"] = request["previous_response_id"].clone();
    body
}

fn responses_events(model: &str) -> Vec<String> {
    let created = responses_body(model, "in_progress", json!([]), Json::Null);
    let call = json!({"type": "function_call", "id": "fc_1", "call_id": "call_9",
                      "name": "lookup", "arguments": "", "status": "in_progress"});
    let done_call = json!({"type": "function_call", "id": "fc_1", "call_id": "call_9",
                           "name": "lookup", "arguments": "{\"q\":\"x\"}",
                           "status": "completed"});
    let completed = responses_body(model, "completed", json!([done_call]), responses_usage());
    let events = [
        json!({"type": "response.created", "sequence_number": 0, "response": created}),
        json!({"type": "response.output_item.added", "sequence_number": 1,
               "output_index": 0, "item": call}),
        json!({"type": "response.function_call_arguments.delta", "sequence_number": 2,
               "item_id": "fc_1", "output_index": 0, "delta": "{\"q\":"}),
        json!({"type": "response.function_call_arguments.delta", "sequence_number": 3,
               "item_id": "fc_1", "output_index": 0, "delta": "\"x\"}"}),
        json!({"type": "response.output_item.done", "sequence_number": 4,
               "output_index": 0, "item": done_call}),
        json!({"type": "response.completed", "sequence_number": 5, "response": completed}),
    ];
    events.iter().map(|e| sse(e["type"].as_str(), e)).collect()
}

fn anthropic_json(model: &str) -> Json {
    json!({
        "id": "msg_py_1", "type": "message", "role": "assistant", "model": format!("{model}-2025"),
        "content": [
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}
        ],
        "stop_reason": "tool_use", "stop_sequence": null,
        "usage": {"input_tokens": 10, "cache_creation_input_tokens": 5,
                  "cache_read_input_tokens": 80, "output_tokens": 12}
    })
}

fn anthropic_events(model: &str) -> Vec<String> {
    let start = json!({"type": "message_start", "message": {
        "id": "msg_py_2", "type": "message", "role": "assistant", "model": format!("{model}-2025"),
        "content": [], "stop_reason": null, "stop_sequence": null,
        "usage": {"input_tokens": 20, "cache_creation_input_tokens": 0,
                  "cache_read_input_tokens": 100, "output_tokens": 1}}});
    let mut events = vec![start, json!({"type": "ping"})];
    if model.starts_with("overloaded") {
        events.push(json!({"type": "error",
            "error": {"type": "overloaded_error", "message": "Overloaded"}}));
    } else {
        events.extend([
            json!({"type": "content_block_start", "index": 0,
                   "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
            json!({"type": "content_block_delta", "index": 0,
                   "delta": {"type": "thinking_delta", "thinking": "The user wants"}}),
            json!({"type": "content_block_delta", "index": 0,
                   "delta": {"type": "signature_delta", "signature": "c2ln"}}),
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "content_block_start", "index": 1,
                   "content_block": {"type": "text", "text": ""}}),
            json!({"type": "content_block_delta", "index": 1,
                   "delta": {"type": "text_delta", "text": "Paris"}}),
            json!({"type": "content_block_stop", "index": 1}),
            json!({"type": "content_block_start", "index": 2, "content_block":
                   {"type": "tool_use", "id": "toolu_2", "name": "book_trip", "input": {}}}),
            json!({"type": "content_block_delta", "index": 2,
                   "delta": {"type": "input_json_delta", "partial_json": "{\"to\": "}}),
            json!({"type": "content_block_delta", "index": 2,
                   "delta": {"type": "input_json_delta", "partial_json": "\"Paris\"}"}}),
            json!({"type": "content_block_stop", "index": 2}),
            json!({"type": "message_delta",
                   "delta": {"stop_reason": "tool_use", "stop_sequence": null},
                   "usage": {"output_tokens": 42}}),
            json!({"type": "message_stop"}),
        ]);
    }
    events.iter().map(|e| sse(e["type"].as_str(), e)).collect()
}

/// A Gemini `GenerateContentResponse`: the first part of a stream, or the last (with the
/// finish reason and the final usage).
fn gemini_json(model: &str, last: bool) -> Json {
    let (text, finish) = if last {
        ("Paris.", json!("STOP"))
    } else {
        ("The capital is ", Json::Null)
    };
    json!({
        "candidates": [{"content": {"parts": [{"text": text}], "role": "model"},
                        "finishReason": finish, "index": 0}],
        "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": if last { 5 } else { 2 },
                          "cachedContentTokenCount": 4, "thoughtsTokenCount": 15,
                          "totalTokenCount": 30},
        "modelVersion": format!("{model}-001"), "responseId": "gem-resp-1"
    })
}

// ---------------------------------------------------------------------------
// 2. The Python clients
// ---------------------------------------------------------------------------

/// Each scenario makes one call with an official client and prints what the client saw as
/// one JSON line. `BASE` is ragscope's URL.
const CLIENTS: &str = r#"
import json, os, sys
import anthropic, openai

base = os.environ["BASE"]
scenario = sys.argv[1]
oa = openai.OpenAI(base_url=base + "/v1", api_key="sk-test-not-a-secret", max_retries=0)
an = anthropic.Anthropic(base_url=base, api_key="sk-ant-test", max_retries=0)
weather = [{"type": "function", "function": {"name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
out = {}
if scenario == "chat_json":
    r = oa.chat.completions.create(model="gpt-x", messages=[{"role": "user", "content": "hi"}],
                                   tools=weather)
    out = {"tools": [c.function.name for c in r.choices[0].message.tool_calls],
           "cached": r.usage.prompt_tokens_details.cached_tokens}
elif scenario in ("chat_stream", "chat_split"):
    model = "split-x" if scenario == "chat_split" else "gpt-x"
    s = oa.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                   stream=True, stream_options={"include_usage": True})
    text, usage = "", None
    for chunk in s:
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
        if chunk.usage:
            usage = chunk.usage.completion_tokens
    out = {"text": text, "usage": usage}
elif scenario == "chat_cancel":
    s = oa.chat.completions.create(model="slow-x", messages=[{"role": "user", "content": "hi"}],
                                   stream=True)
    seen = 0
    for chunk in s:
        seen += 1
        if seen == 2:
            break
    s.close()
    out = {"seen": seen}
elif scenario == "responses_json":
    r = oa.responses.create(model="gpt-r", input="hi", previous_response_id="resp_prev_7")
    out = {"text": r.output_text, "reasoning": r.usage.output_tokens_details.reasoning_tokens}
elif scenario == "responses_stream":
    s = oa.responses.create(model="gpt-r", input="hi", stream=True)
    types = [e.type for e in s]
    out = {"types": types}
elif scenario == "anthropic_json":
    # This client version has no sampling parameters of its own: they go as extra body fields.
    m = an.messages.create(model="claude-x", max_tokens=256,
                           messages=[{"role": "user", "content": "weather?"}],
                           extra_body={"temperature": 0.5, "top_k": 40})
    out = {"stop": m.stop_reason, "cache_read": m.usage.cache_read_input_tokens}
elif scenario in ("anthropic_stream", "anthropic_split"):
    model = "split-claude" if scenario == "anthropic_split" else "claude-x"
    with an.messages.stream(model=model, max_tokens=256,
                            messages=[{"role": "user", "content": "hi"}]) as s:
        m = s.get_final_message()
    out = {"stop": m.stop_reason, "output": m.usage.output_tokens,
           "blocks": [b.type for b in m.content],
           "tool_input": [b.input for b in m.content if b.type == "tool_use"]}
elif scenario == "anthropic_error":
    try:
        with an.messages.stream(model="overloaded-claude", max_tokens=256,
                                messages=[{"role": "user", "content": "hi"}]) as s:
            s.get_final_message()
        out = {"error": None}
    except anthropic.APIStatusError as e:
        out = {"error": type(e).__name__, "body": e.body}
print(json.dumps(out))
"#;

/// Runs one client scenario against `proxy` and returns what the client printed.
async fn client(proxy: &Proxy, scenario: &str) -> Json {
    let output = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(CLIENTS)
        .arg(scenario)
        .env("BASE", proxy.url("").trim_end_matches('/'))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .expect("python3 runs (tests/install-deps.sh installs the clients)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{scenario}: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim()).expect("the script prints one JSON line")
}

async fn setup(env: &[(&str, &str)]) -> (Upstream, OtlpReceiver, Proxy) {
    let up = Upstream::scripted(route).await;
    let otlp = OtlpReceiver::start().await;
    let mut builder = Proxy::builder().upstream(&up).otlp(&otlp);
    for (k, v) in env {
        builder = builder.env(k, *v);
    }
    let proxy = builder.run().await;
    (up, otlp, proxy)
}

/// The token usage histogram's sum for one token type of `model`, once it is exported.
async fn tokens(otlp: &OtlpReceiver, model: &str, kind: &str) -> f64 {
    let attrs = [
        ("gen_ai.request.model", Value::from(model)),
        ("gen_ai.token.type", Value::from(kind)),
    ];
    let metric = otlp
        .wait_for_metric_where(
            "gen_ai.client.token.usage",
            |m| m.histogram_point_with(&attrs).is_some(),
            WAIT,
        )
        .await;
    let point = metric.histogram_point_with(&attrs).expect("the point");
    point.sum.expect("a sum")
}

/// Token counts on a span: input, output, cache read, cache creation, reasoning.
fn usage(span: &CollectedSpan) -> [Option<i64>; 5] {
    [
        "gen_ai.usage.input_tokens",
        "gen_ai.usage.output_tokens",
        "gen_ai.usage.cache_read.input_tokens",
        "gen_ai.usage.cache_creation.input_tokens",
        "gen_ai.usage.reasoning.output_tokens",
    ]
    .map(|k| span.int_attr(k))
}

// ---------------------------------------------------------------------------
// 3. OpenAI chat
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn openai_chat_json_with_cache_reasoning_and_tool_calls() {
    let (_up, otlp, proxy) = setup(&[]).await;
    let seen = client(&proxy, "chat_json").await;
    assert_eq!(
        seen,
        json!({"tools": ["get_weather", "get_time"], "cached": 30})
    );

    let (span, server) = otlp.wait_span_and_parent("chat gpt-x", WAIT).await;
    assert_eq!(span.str_attr("gen_ai.provider.name"), Some("openai"));
    assert_eq!(
        usage(&span),
        [Some(50), Some(20), Some(30), None, Some(8)],
        "input includes cached, output includes reasoning, as OpenAI reports them"
    );
    assert_eq!(
        span.strings_attr("gen_ai.response.finish_reasons"),
        ["tool_calls"]
    );
    assert_eq!(span.int_attr("ragscope.genai.tool_calls"), Some(2));
    assert_eq!(
        span.strings_attr("ragscope.genai.tool_names"),
        ["get_weather", "get_time"]
    );
    assert_eq!(server.int_attr("gen_ai.usage.input_tokens"), Some(50));
    for (kind, n) in [("input", 50.0), ("cache_read", 30.0), ("reasoning", 8.0)] {
        assert_eq!(tokens(&otlp, "gpt-x", kind).await, n, "{kind}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn openai_chat_streams_whole_and_byte_split_read_the_same() {
    let (_up, otlp, proxy) = setup(&[]).await;
    for (scenario, model) in [("chat_stream", "gpt-x"), ("chat_split", "split-x")] {
        let seen = client(&proxy, scenario).await;
        assert_eq!(
            seen,
            json!({"text": "The capital is Paris.", "usage": 20}),
            "{scenario}: the client gets the stream it asked for"
        );
        let (span, _) = otlp
            .wait_span_and_parent(&format!("chat {model}"), WAIT)
            .await;
        assert_eq!(span.bool_attr("gen_ai.request.stream"), Some(true));
        assert_eq!(
            usage(&span),
            [Some(50), Some(20), Some(30), None, Some(8)],
            "{scenario}"
        );
        assert_eq!(
            span.strings_attr("gen_ai.response.finish_reasons"),
            ["stop"],
            "{scenario}: one entry, however many chunks"
        );
        assert_eq!(span.str_attr("gen_ai.response.id"), Some("chatcmpl-py-2"));
        assert!(span.has_attr("gen_ai.response.time_to_first_chunk"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_the_client_cancels_records_what_was_seen_and_no_usage() {
    let (_up, otlp, proxy) = setup(&[]).await;
    assert_eq!(client(&proxy, "chat_cancel").await, json!({"seen": 2}));
    let (span, server) = otlp.wait_span_and_parent("chat slow-x", WAIT).await;
    assert_eq!(server.bool_attr("ragscope.cancelled"), Some(true));
    assert_eq!(span.str_attr("gen_ai.response.id"), Some("chatcmpl-py-2"));
    assert_eq!(span.int_attr("gen_ai.usage.output_tokens"), None);
    assert_eq!(
        span.bool_attr("ragscope.genai.usage_reported"),
        Some(false),
        "absent, never zero"
    );
}

// ---------------------------------------------------------------------------
// 4. OpenAI Responses
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn openai_responses_json_and_stream() {
    let (_up, otlp, proxy) = setup(&[]).await;
    assert_eq!(
        client(&proxy, "responses_json").await,
        json!({"text": "Paris", "reasoning": 64})
    );
    let (span, server) = otlp.wait_span_and_parent("chat gpt-r", WAIT).await;
    assert_eq!(span.str_attr("gen_ai.provider.name"), Some("openai"));
    assert_eq!(span.str_attr("gen_ai.response.id"), Some("resp_py_1"));
    assert_eq!(span.str_attr("gen_ai.response.model"), Some("gpt-r-2025"));
    assert_eq!(usage(&span), [Some(36), Some(87), Some(12), None, Some(64)]);
    assert_eq!(
        span.strings_attr("gen_ai.response.finish_reasons"),
        ["stop"]
    );
    assert_eq!(
        span.str_attr("gen_ai.conversation.id"),
        Some("resp_prev_7"),
        "previous_response_id names the conversation"
    );
    assert_eq!(
        server.str_attr("gen_ai.conversation.id"),
        Some("resp_prev_7")
    );
    otlp.clear();

    let seen = client(&proxy, "responses_stream").await;
    assert_eq!(seen["types"][0], "response.created");
    assert_eq!(seen["types"][5], "response.completed");
    let (span, _) = otlp.wait_span_and_parent("chat gpt-r", WAIT).await;
    assert_eq!(span.bool_attr("gen_ai.request.stream"), Some(true));
    assert_eq!(usage(&span), [Some(36), Some(87), Some(12), None, Some(64)]);
    assert_eq!(
        span.strings_attr("gen_ai.response.finish_reasons"),
        ["tool_calls"]
    );
    assert_eq!(span.int_attr("ragscope.genai.tool_calls"), Some(1));
    assert_eq!(span.strings_attr("ragscope.genai.tool_names"), ["lookup"]);
    assert!(span.has_attr("gen_ai.response.time_to_first_chunk"));
}

// ---------------------------------------------------------------------------
// 5. Anthropic Messages
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn anthropic_messages_json_adds_cached_input_to_the_input_count() {
    let (_up, otlp, proxy) = setup(&[]).await;
    assert_eq!(
        client(&proxy, "anthropic_json").await,
        json!({"stop": "tool_use", "cache_read": 80})
    );
    let (span, _) = otlp.wait_span_and_parent("chat claude-x", WAIT).await;
    assert_eq!(span.str_attr("gen_ai.provider.name"), Some("anthropic"));
    assert_eq!(span.int_attr("gen_ai.request.max_tokens"), Some(256));
    assert_eq!(span.double_attr("gen_ai.request.temperature"), Some(0.5));
    assert_eq!(span.double_attr("gen_ai.request.top_k"), Some(40.0));
    assert_eq!(span.str_attr("gen_ai.response.id"), Some("msg_py_1"));
    assert_eq!(
        usage(&span),
        [Some(95), Some(12), Some(80), Some(5), None],
        "Anthropic reports cached input apart: 10 + 80 + 5"
    );
    assert_eq!(
        span.strings_attr("gen_ai.response.finish_reasons"),
        ["tool_use"]
    );
    assert_eq!(
        span.strings_attr("ragscope.genai.tool_names"),
        ["get_weather"]
    );
    assert_eq!(tokens(&otlp, "claude-x", "input").await, 95.0);
    assert_eq!(tokens(&otlp, "claude-x", "cache_creation").await, 5.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn anthropic_streams_whole_and_byte_split_with_thinking_and_tool_use() {
    let (_up, otlp, proxy) = setup(&[]).await;
    for (scenario, model) in [
        ("anthropic_stream", "claude-x"),
        ("anthropic_split", "split-claude"),
    ] {
        let seen = client(&proxy, scenario).await;
        assert_eq!(
            seen,
            json!({"stop": "tool_use", "output": 42,
                   "blocks": ["thinking", "text", "tool_use"], "tool_input": [{"to": "Paris"}]}),
            "{scenario}"
        );
        let (span, _) = otlp
            .wait_span_and_parent(&format!("chat {model}"), WAIT)
            .await;
        assert_eq!(span.str_attr("gen_ai.provider.name"), Some("anthropic"));
        assert_eq!(span.bool_attr("gen_ai.request.stream"), Some(true));
        assert_eq!(span.str_attr("gen_ai.response.id"), Some("msg_py_2"));
        assert_eq!(
            usage(&span),
            [Some(120), Some(42), Some(100), Some(0), None],
            "{scenario}: input from message_start, output from message_delta"
        );
        assert_eq!(
            span.strings_attr("gen_ai.response.finish_reasons"),
            ["tool_use"]
        );
        assert_eq!(
            span.strings_attr("ragscope.genai.tool_names"),
            ["book_trip"]
        );
        assert!(span.has_attr("gen_ai.response.time_to_first_chunk"));
        assert!(!span.has_attr("error.type"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_anthropic_error_event_is_the_span_error_type() {
    let (_up, otlp, proxy) = setup(&[]).await;
    let seen = client(&proxy, "anthropic_error").await;
    assert_eq!(seen["body"]["error"]["type"], "overloaded_error", "{seen}");
    let (span, _) = otlp
        .wait_span_and_parent("chat overloaded-claude", WAIT)
        .await;
    assert_eq!(span.str_attr("error.type"), Some("overloaded_error"));
    assert_eq!(span.int_attr("gen_ai.usage.input_tokens"), Some(120));
    let metric = otlp
        .wait_for_metric_where(
            "gen_ai.server.request.duration",
            |m| {
                m.histogram_point_with(&[("error.type", Value::from("overloaded_error"))])
                    .is_some()
            },
            WAIT,
        )
        .await;
    assert_eq!(metric.unit, "s");
}

// ---------------------------------------------------------------------------
// 6. Gemini (raw HTTP, as the REST API documents it)
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn gemini_json_array_and_sse_name_the_model_from_the_path() {
    let (_up, otlp, proxy) = setup(&[]).await;
    let body = json!({"contents": [{"role": "user", "parts": [{"text": "capital?"}]}],
                      "generationConfig": {"maxOutputTokens": 64, "topK": 3}});
    for (path, streamed) in [
        ("/v1beta/models/gemini-a:generateContent", false),
        ("/v1beta/models/gemini-b:streamGenerateContent", false),
        (
            "/v1beta/models/gemini-c:streamGenerateContent?alt=sse",
            true,
        ),
    ] {
        let sep = if path.contains('?') { '&' } else { '?' };
        let url = proxy.url(&format!("{path}{sep}key=AIza-secret"));
        let reply = Client::http1().post_json(url, &body).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
        let model = gemini_model(path.split('?').next().unwrap_or_default()).unwrap_or_default();
        let (span, server) = otlp
            .wait_span_and_parent(&format!("generate_content {model}"), WAIT)
            .await;
        assert_eq!(span.str_attr("gen_ai.provider.name"), Some("gcp.gemini"));
        assert_eq!(
            span.str_attr("gen_ai.operation.name"),
            Some("generate_content")
        );
        assert_eq!(span.int_attr("gen_ai.request.max_tokens"), Some(64));
        assert_eq!(
            span.bool_attr("gen_ai.request.stream"),
            Some(path.contains("stream")),
            "{path}"
        );
        assert_eq!(
            span.str_attr("gen_ai.response.model"),
            Some(format!("{model}-001").as_str())
        );
        assert_eq!(
            usage(&span),
            [Some(10), Some(20), Some(4), None, Some(15)],
            "{path}: thoughts are added to the output"
        );
        assert_eq!(
            span.strings_attr("gen_ai.response.finish_reasons"),
            ["STOP"]
        );
        assert_eq!(
            span.has_attr("gen_ai.response.time_to_first_chunk"),
            streamed,
            "{path}"
        );
        let query = server.str_attr("url.query").unwrap_or_default();
        assert!(
            !query.contains("AIza"),
            "the key never reaches telemetry: {query}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_provider_variable_overrides_every_api() {
    let (_up, otlp, proxy) = setup(&[("RAGSCOPE_GENAI_PROVIDER", "my.gateway")]).await;
    client(&proxy, "anthropic_json").await;
    let (span, _) = otlp.wait_span_and_parent("chat claude-x", WAIT).await;
    assert_eq!(span.str_attr("gen_ai.provider.name"), Some("my.gateway"));
}

// ---------------------------------------------------------------------------
// 7. Hostile model names (issue 11, defect 2)
// ---------------------------------------------------------------------------

/// 300 chat requests naming a 900 KB model, answered with a 900 KB model name too, through
/// the real binary: the names are cut to the field cap on every span, the model metric
/// attribute stays within its distinct-value bound, and memory stays bounded.
#[tokio::test(flavor = "multi_thread")]
async fn huge_model_names_are_cut_and_memory_stays_bounded() {
    // Measured: 50 MiB (transient parse copies of 2 x 900 KB per request, 6 in flight, kept by
    // the allocator); 427 MiB before the cap.
    const GROWTH_BOUND_MIB: u64 = 96;
    let up = Upstream::scripted(|seen| {
        (seen.path() == "/v1/chat/completions").then(|| {
            canned_json(
                &json!({"id": "c", "model": "r".repeat(900_000),
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"content": "ok"}}],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1}}),
                &[],
            )
        })
    })
    .await;
    let otlp = OtlpReceiver::start().await;
    let bin = Proxy::builder()
        .upstream(&up)
        .otlp(&otlp)
        .env("RAGSCOPE_LOG", "warn,ragscope::server=info")
        .spawn();
    let (addr, _) = bin.wait_serving().await;
    let url = format!("http://{addr}/v1/chat/completions");
    let before = bin.rss_kib();
    let mut tasks = Vec::new();
    for worker in 0..6u32 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let client = Client::http1();
            for i in 0..50u32 {
                // Each model differs, so the metric sees 300 distinct names.
                let model = format!("{worker}-{i}-{}", "m".repeat(900_000));
                let body = json!({"model": model, "messages": [{"role": "user", "content": "x"}]});
                assert_eq!(client.post_json(&url, &body).await.status, StatusCode::OK);
            }
        }));
    }
    for t in tasks {
        t.await.expect("worker");
    }
    let grown_mib = bin.rss_kib().saturating_sub(before) / 1024;
    eprintln!("RSS grew by {grown_mib} MiB over 300 requests with 900 KB model names");
    assert!(
        grown_mib <= GROWTH_BOUND_MIB,
        "grew by {grown_mib} MiB (was 427 MiB before the cap)"
    );

    let spans = otlp
        .wait_for_spans(|s| s.name.starts_with("chat 5-49-"), 1, WAIT)
        .await;
    let span = &spans[0];
    assert_eq!(span.name.len(), "chat ".len() + 256, "the name is cut");
    assert_eq!(
        span.str_attr("gen_ai.request.model").map(str::len),
        Some(256)
    );
    assert_eq!(
        span.str_attr("gen_ai.response.model").map(str::len),
        Some(256)
    );
    let metric = otlp
        .wait_for_metric_where(
            "gen_ai.client.token.usage",
            |m| {
                m.histogram_point_with(&[("gen_ai.request.model", Value::from("other"))])
                    .is_some()
            },
            WAIT,
        )
        .await;
    let models: std::collections::HashSet<String> = metric
        .histogram_points()
        .iter()
        .filter_map(|p| p.attr("gen_ai.request.model").and_then(|v| v.as_str()))
        .map(str::to_owned)
        .collect();
    assert!(
        models.len() <= 65,
        "at most 64 names and `other`: {}",
        models.len()
    );
    assert!(models.iter().all(|m| m.len() <= 256));
}

// ---------------------------------------------------------------------------
// 8. Cost (`RAGSCOPE_PRICES`)
// ---------------------------------------------------------------------------

const PRICES: &str = "# model  input output cache-read cache-write currency\n\
    claude-*  3  15  0.30  3.75  USD\n";

/// Anthropic's JSON answer above: 10 plain, 80 cache-read, 5 cache-write input tokens, 12 output.
const CLAUDE_COST: f64 = (10.0 * 3.0 + 80.0 * 0.30 + 5.0 * 3.75 + 12.0 * 15.0) / 1e6;

async fn anthropic_cost(proxy: &Proxy, otlp: &OtlpReceiver, model: &str) -> Option<f64> {
    let body = json!({"model": model, "max_tokens": 8,
                      "messages": [{"role": "user", "content": "hi"}]});
    let reply = Client::http1()
        .post_json(proxy.url("/v1/messages"), &body)
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let (span, _) = otlp
        .wait_span_and_parent(&format!("chat {model}"), WAIT)
        .await;
    span.double_attr("ragscope.genai.cost")
}

#[tokio::test(flavor = "multi_thread")]
async fn priced_models_get_a_cost_unpriced_ones_none_and_the_file_reloads() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("prices.txt");
    std::fs::write(&file, PRICES).expect("write");
    let path = file.display().to_string();
    let (_up, otlp, proxy) = setup(&[("RAGSCOPE_PRICES", path.as_str())]).await;

    let cost = anthropic_cost(&proxy, &otlp, "claude-a")
        .await
        .expect("priced");
    assert!((cost - CLAUDE_COST).abs() < 1e-12, "{cost}");
    assert_eq!(
        anthropic_cost(&proxy, &otlp, "mystery-model").await,
        None,
        "no price, no cost (never zero)"
    );
    let counter = otlp.wait_for_metric("ragscope.genai.cost", WAIT).await;
    let point = counter
        .point_with(&[
            ("gen_ai.request.model", Value::from("claude-a")),
            ("ragscope.genai.cost.currency", Value::from("USD")),
        ])
        .expect("cost by model");
    assert!((point.as_f64() - CLAUDE_COST).abs() < 1e-12);
    assert!(
        counter
            .point_with(&[("gen_ai.request.model", Value::from("mystery-model"))])
            .is_none()
    );

    // A bad new version keeps the old prices; a good one replaces them.
    std::fs::write(&file, "claude-* 1 2 three - USD\n").expect("write");
    let still = anthropic_cost(&proxy, &otlp, "claude-b").await;
    assert_eq!(still.map(|c| (c - CLAUDE_COST).abs() < 1e-12), Some(true));
    std::fs::write(&file, "claude-*  0  1  -  -  EUR\n").expect("write");
    let reloaded = wait_for(WAIT, || async {
        let cost = anthropic_cost(&proxy, &otlp, "claude-c").await;
        otlp.clear();
        cost.filter(|c| (c - 12.0 / 1e6).abs() < 1e-12)
    })
    .await;
    assert!(
        reloaded.is_some(),
        "the new price applies within the poll interval"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_price_file_stops_start_up_with_one_line() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("prices.txt");
    std::fs::write(&file, "claude-* 3 15 - - USD\ngpt 1 2\n").expect("write");
    let mut ragscope = Proxy::builder()
        .env("RAGSCOPE_PRICES", file.display().to_string())
        .spawn();
    let status = ragscope.wait_exit(WAIT).await.expect("exits");
    assert_eq!(status.code(), Some(2));
    ragscope.wait_output_closed(WAIT).await;
    let stderr = ragscope.stderr_lines();
    assert_eq!(stderr.len(), 1, "{stderr:?}");
    assert!(
        stderr[0].contains("RAGSCOPE_PRICES") && stderr[0].contains("line 2"),
        "{stderr:?}"
    );
}

// ---------------------------------------------------------------------------
// 9. Conversations from a header (`RAGSCOPE_CONVERSATION_HEADER`)
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn the_conversation_header_names_the_conversation_only_when_configured() {
    let send = |proxy: &Proxy, model: &str, conversation: &str| {
        let body = json!({"model": model, "max_tokens": 8,
                          "messages": [{"role": "user", "content": "hi"}]});
        let req = request(http::Method::POST, &proxy.url("/v1/messages"))
            .header("content-type", "application/json")
            .header("x-conversation-id", conversation)
            .body(http_body_util::Full::new(Bytes::from(body.to_string())))
            .expect("request");
        async move { Client::http1().request(req).await.status }
    };
    let (_up, otlp, proxy) = setup(&[("RAGSCOPE_CONVERSATION_HEADER", "x-conversation-id")]).await;
    let long = format!("conv-{}", "x".repeat(1000));
    assert_eq!(send(&proxy, "claude-conv", &long).await, StatusCode::OK);
    let (span, server) = otlp.wait_span_and_parent("chat claude-conv", WAIT).await;
    let id = span
        .str_attr("gen_ai.conversation.id")
        .expect("from the header");
    assert!(
        id.starts_with("conv-x") && id.len() == 256,
        "cut: {}",
        id.len()
    );
    assert_eq!(server.str_attr("gen_ai.conversation.id"), Some(id));

    let (_up, otlp, proxy) = setup(&[]).await;
    assert_eq!(send(&proxy, "claude-conv", "conv-1").await, StatusCode::OK);
    let (span, _) = otlp.wait_span_and_parent("chat claude-conv", WAIT).await;
    assert!(!span.has_attr("gen_ai.conversation.id"), "off by default");
}
