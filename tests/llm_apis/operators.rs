//! What operators configure: prices (`RAGSCOPE_PRICES`, cost per inference, reload, bad files)
//! and the conversation header (`RAGSCOPE_CONVERSATION_HEADER`).

use super::*;

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
