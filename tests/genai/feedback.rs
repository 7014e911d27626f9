//! User feedback into the original trace, its errors, and the GenAI off switch.

use super::*;

// ---------------------------------------------------------------------------
// 7. Feedback
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn feedback_lands_in_the_original_trace() {
    let up = llm_upstream().await;
    let otlp = OtlpReceiver::start().await;
    let proxy = start(&up, &otlp, &[]).await;

    let reply = post_json(&proxy, "/v1/chat/completions", chat_body(false, false)).await;
    let traceresponse = reply
        .header("traceresponse")
        .expect("traceresponse")
        .to_owned();
    let trace_id = traceresponse[3..35].to_owned();
    let server_span_id = traceresponse[36..52].to_owned();

    let reply = post_json(
        &proxy,
        "/ragscope/feedback",
        json!({"trace_id": trace_id, "score": 0.25, "label": "Wrong_Source", "comment": "mail a@b.co"}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED);
    assert_eq!(reply.json()["status"], "accepted");

    let span = otlp.wait_span("ragscope.feedback", WAIT).await;
    assert_eq!(span.trace_id, trace_id);
    assert_eq!(span.parent_span_id, server_span_id);
    assert_eq!(span.bool_attr("ragscope.feedback.parent_known"), Some(true));
    let event = span
        .event("gen_ai.evaluation.result")
        .expect("evaluation event");
    assert_eq!(
        event
            .attr("gen_ai.evaluation.score.value")
            .and_then(Value::as_double),
        Some(0.25)
    );
    assert_eq!(
        event
            .attr("gen_ai.evaluation.score.label")
            .and_then(Value::as_str),
        Some("Wrong_Source")
    );
    assert!(
        event.attr("gen_ai.evaluation.explanation").is_none(),
        "a comment is content: capture is off"
    );

    let score = otlp.wait_for_metric("ragscope.feedback.score", WAIT).await;
    let point = score
        .histogram_point_with(&[("gen_ai.evaluation.score.label", Value::from("wrong_source"))])
        .expect("score point");
    assert_eq!(point.sum, Some(0.25));
    let count = otlp.wait_for_metric("ragscope.feedback", WAIT).await;
    assert_eq!(count.number_points()[0].as_i64(), Some(1));
    assert_eq!(up_requests_other_than_chat(&otlp), 0);
    assert!(
        up.requests()
            .iter()
            .all(|r| r.path() == "/v1/chat/completions"),
        "only the chat reached the upstream: {:?}",
        up.requests()
            .iter()
            .map(|r| r.uri.clone())
            .collect::<Vec<_>>()
    );
    proxy.shutdown().await;
}

/// Feedback is never forwarded: no CLIENT span exists for it.
fn up_requests_other_than_chat(otlp: &OtlpReceiver) -> usize {
    otlp.spans()
        .iter()
        .filter(|s| s.kind == SpanKind::Client && !s.name.starts_with("chat"))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn feedback_with_capture_on_records_the_redacted_comment() {
    let up = llm_upstream().await;
    let otlp = OtlpReceiver::start().await;
    let proxy = start(
        &up,
        &otlp,
        &[
            (
                "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT",
                "SPAN_AND_EVENT",
            ),
            ("RAGSCOPE_FEEDBACK_PATH", "/fb"),
        ],
    )
    .await;
    let unknown = "0af7651916cd43dd8448eb211c80319c";
    let reply = post_json(
        &proxy,
        "/fb",
        json!({"trace_id": unknown, "score": 1, "comment": "wrong, email me: x.y@corp.example"}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED);
    let span = otlp.wait_span("ragscope.feedback", WAIT).await;
    assert_eq!(
        span.trace_id, unknown,
        "joins the trace even when its span is not known"
    );
    assert_eq!(
        span.bool_attr("ragscope.feedback.parent_known"),
        Some(false)
    );
    let event = span.event("gen_ai.evaluation.result").expect("event");
    assert_eq!(
        event
            .attr("gen_ai.evaluation.explanation")
            .and_then(Value::as_str),
        Some("wrong, email me: [REDACTED:email]")
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_feedback_gets_a_json_error() {
    let up = llm_upstream().await;
    let otlp = OtlpReceiver::start().await;
    let proxy = start(&up, &otlp, &[]).await;

    for (body, why) in [
        (json!({"trace_id": "nothex", "score": 1}), "32 hex"),
        (
            json!({"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "score": "high"}),
            "number",
        ),
    ] {
        let reply = post_json(&proxy, "/ragscope/feedback", body).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        assert_eq!(reply.error_type(), "invalid_feedback");
        assert!(
            reply.json()["error"]["message"]
                .as_str()
                .expect("message")
                .contains(why)
        );
    }
    let big = json!({"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "score": 1, "comment": "x".repeat(17 * 1024)});
    let reply = post_json(&proxy, "/ragscope/feedback", big).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.error_type(), "request_body_too_large");
    assert!(otlp.spans_named("ragscope.feedback").is_empty());
    proxy.shutdown().await;
}

// ---------------------------------------------------------------------------
// 8. Off switch
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn genai_off_leaves_plain_http_spans_and_forwards_feedback_paths() {
    let up = llm_upstream().await;
    let otlp = OtlpReceiver::start().await;
    let proxy = start(&up, &otlp, &[("RAGSCOPE_GENAI", "off")]).await;

    let reply = post_json(&proxy, "/v1/chat/completions", chat_body(false, false)).await;
    assert_eq!(reply.status, StatusCode::OK);
    let reply = post_json(&proxy, "/ragscope/feedback", json!({})).await;
    assert_eq!(
        reply.status,
        StatusCode::NOT_FOUND,
        "forwarded to the upstream"
    );
    assert_eq!(up.last_request().path(), "/ragscope/feedback");

    let spans = otlp
        .wait_for_spans(|s| s.kind == SpanKind::Client, 2, WAIT)
        .await;
    for span in spans {
        assert_eq!(span.name, "POST");
        assert!(
            !span
                .attributes
                .iter()
                .any(|(k, _)| k.starts_with("gen_ai."))
        );
    }
    proxy.shutdown().await;
}
