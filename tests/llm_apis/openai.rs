//! OpenAI chat (cache and reasoning detail, tool calls, byte-split stream, cancelled stream)
//! and OpenAI Responses (JSON and typed SSE events).

use super::*;

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
