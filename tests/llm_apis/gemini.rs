//! Gemini over raw HTTP (the model from the path), and the provider override for every API.

use super::*;

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
