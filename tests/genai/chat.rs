//! OpenAI-compatible chat and embeddings: JSON and streamed answers, time to first token,
//! usage present or absent, frames split at odd places.

use super::*;

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
