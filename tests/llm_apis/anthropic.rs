//! Anthropic Messages: JSON with cached input, streams with thinking and tool use, error events.

use super::*;

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
