//! Parser throughput: how many bytes per second the GenAI observation reads, for a streamed
//! chat answer (SSE, in network-sized frames) and a JSON chat response.
//!
//! `cargo bench --bench genai_parsers`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ragscope::genai::openai::ResponseInfo;
use ragscope::genai::sse::SseParser;

fn sse_stream(events: usize) -> Vec<u8> {
    let mut s = String::new();
    for i in 0..events {
        s.push_str(&format!(
            "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\
             \"model\":\"rag-model\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{i} \"}},\
             \"finish_reason\":null}}]}}\n\n"
        ));
    }
    s.push_str("data: {\"id\":\"chatcmpl-1\",\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":500}}\n\ndata: [DONE]\n\n");
    s.into_bytes()
}

fn parsers(c: &mut Criterion) {
    let stream = sse_stream(500);
    let mut group = c.benchmark_group("genai");
    group.throughput(Throughput::Bytes(stream.len() as u64));
    group.bench_function("sse_chat_stream_1400B_frames", |b| {
        b.iter(|| {
            let mut parser = SseParser::new(1 << 20);
            let mut info = ResponseInfo::default();
            for frame in stream.chunks(1400) {
                parser.feed(black_box(frame), |e| {
                    let _ = ragscope::genai::openai::on_event(&mut info, &e.data, None);
                });
            }
            black_box(info.output_tokens)
        })
    });

    let answer = "word ".repeat(400);
    let body = serde_json::json!({
        "id": "chatcmpl-1", "object": "chat.completion", "model": "rag-model",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": answer}}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 400}
    })
    .to_string()
    .into_bytes();
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("json_chat_response", |b| {
        b.iter(|| black_box(ragscope::genai::openai::parse_body(black_box(&body), None).ok()))
    });

    // One stream per API, in its own wire format, through the same SSE parser and frames.
    let streams: [(&str, ragscope::genai::api::Api, Vec<u8>); 3] = [
        (
            "sse_anthropic_stream_1400B_frames",
            ragscope::genai::api::Api::AnthropicMessages,
            api_stream(
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"tokN "}}"#,
                r#"{"type":"message_start","message":{"id":"msg_1","model":"claude","usage":{"input_tokens":10}}}"#,
                r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":500}}"#,
            ),
        ),
        (
            "sse_responses_stream_1400B_frames",
            ragscope::genai::api::Api::OpenAiResponses,
            api_stream(
                r#"{"type":"response.output_text.delta","output_index":0,"content_index":0,"delta":"tokN "}"#,
                r#"{"type":"response.created","response":{"id":"resp_1","model":"gpt","status":"in_progress"}}"#,
                r#"{"type":"response.completed","response":{"id":"resp_1","status":"completed","usage":{"input_tokens":10,"output_tokens":500}}}"#,
            ),
        ),
        (
            "sse_gemini_stream_1400B_frames",
            ragscope::genai::api::Api::Gemini,
            api_stream(
                r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"tokN "}]},"index":0}],"usageMetadata":{"promptTokenCount":10},"modelVersion":"gemini"}"#,
                r#"{"responseId":"r1"}"#,
                r#"{"candidates":[{"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":10,"candidatesTokenCount":500}}"#,
            ),
        ),
    ];
    for (name, api, stream) in &streams {
        group.throughput(Throughput::Bytes(stream.len() as u64));
        group.bench_function(*name, |b| {
            b.iter(|| {
                let mut parser = SseParser::new(1 << 20);
                let mut info = ragscope::genai::inference::ResponseInfo::default();
                for frame in stream.chunks(1400) {
                    parser.feed(black_box(frame), |e| {
                        let _ = api.on_event(&mut info, &e.data, None);
                    });
                }
                black_box(info.output_tokens)
            })
        });
    }
    group.finish();
}

/// 500 content events between a first and a last event.
fn api_stream(content: &str, first: &str, last: &str) -> Vec<u8> {
    let mut s = format!("data: {first}\n\n");
    for i in 0..500 {
        s.push_str(&format!(
            "data: {}\n\n",
            content.replace("tokN", &format!("tok{i}"))
        ));
    }
    s.push_str(&format!("data: {last}\n\n"));
    s.into_bytes()
}

criterion_group!(benches, parsers);
criterion_main!(benches);
