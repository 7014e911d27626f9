//! The LLM APIs beyond OpenAI chat, driven as a user would: the official `openai` and
//! `anthropic` Python clients (pinned in tests/install-deps.sh) pointed at ragscope, in front
//! of a stand-in upstream that answers in each API's exact wire format; Gemini over raw HTTP.
//! Asserted at the in-process OTLP receiver: the inference span and the token metric.
//!
//! This file holds the stand-in upstream (1) and the Python clients (2); the tests are in
//! one module per API (`openai`, `anthropic`, `gemini`), plus `hostile` (model names) and
//! `operators` (prices, the conversation header).

#[path = "../support/mod.rs"]
mod support;

mod anthropic;
mod gemini;
mod hostile;
mod openai;
mod operators;

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
