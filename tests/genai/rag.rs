//! RAG: `/query` sources as retrieval documents and metrics, `RAGSCOPE_EXTRACT` rules.

use super::*;

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
