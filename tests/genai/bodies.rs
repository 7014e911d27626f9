//! Bodies that cannot or may not be read as they are: malformed, over the parse bound, and
//! captured content (redacted and bounded).

use super::*;

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
