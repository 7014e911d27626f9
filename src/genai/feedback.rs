//! The feedback channel: `POST /ragscope/feedback` (the path is configurable), answered by the
//! proxy itself. A score for an earlier request becomes a `gen_ai.evaluation.result` event in
//! that request's trace, parented to its server span while ragscope still remembers it, plus
//! the `ragscope.feedback*` metrics.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use serde_json::Value;

use super::GenAi;
use crate::error::ProxyError;

/// Largest feedback body accepted.
pub const MAX_BODY: usize = 16 * 1024;

/// One parsed feedback.
#[derive(Debug, Clone, PartialEq)]
pub struct Feedback {
    /// The trace the feedback is about.
    pub trace_id: TraceId,
    /// The score.
    pub score: f64,
    /// A label (`thumbs_up`, `wrong_source`...).
    pub label: Option<String>,
    /// Free text: content, recorded only when capture is on.
    pub comment: Option<String>,
}

/// Reads a feedback body; the error is the message for the client.
pub fn parse(body: &[u8]) -> Result<Feedback, String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not valid JSON: {e}"))?;
    let obj = v.as_object().ok_or("the body must be a JSON object")?;
    let trace = obj
        .get("trace_id")
        .and_then(Value::as_str)
        .ok_or("trace_id is required: the 32 hex digit trace id of the request")?;
    let valid_hex = trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit());
    let trace_id = valid_hex
        .then(|| TraceId::from_hex(&trace.to_ascii_lowercase()).ok())
        .flatten()
        .filter(|t| *t != TraceId::INVALID)
        .ok_or("trace_id must be 32 hex digits, not all zero")?;
    let score = obj
        .get("score")
        .and_then(Value::as_f64)
        .filter(|s| s.is_finite())
        .ok_or("score is required and must be a number")?;
    let text = |name: &str| -> Result<Option<String>, String> {
        match obj.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("{name} must be a string")),
        }
    };
    Ok(Feedback {
        trace_id,
        score,
        label: text("label")?,
        comment: text("comment")?,
    })
}

/// Answers one feedback request: reads at most [`MAX_BODY`] bytes within `timeout`, records,
/// and says 202. Errors become 400/413 responses in [`ProxyError::to_response`].
pub async fn handle(
    genai: &GenAi,
    body: Incoming,
    timeout: Duration,
) -> Result<(Response<Bytes>, Feedback), ProxyError> {
    let collected = tokio::time::timeout(timeout, Limited::new(body, MAX_BODY).collect())
        .await
        .map_err(|_| ProxyError::InvalidFeedback("the body did not arrive in time".to_owned()))?;
    let bytes = match collected {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(ProxyError::BodyTooLarge {
                limit: MAX_BODY as u64,
            });
        }
        Err(e) => {
            return Err(ProxyError::ClientBody {
                detail: e.to_string(),
            });
        }
    };
    let feedback = parse(&bytes).map_err(ProxyError::InvalidFeedback)?;
    record(genai, &feedback);
    let mut response = Response::new(Bytes::from_static(b"{\"status\":\"accepted\"}"));
    *response.status_mut() = StatusCode::ACCEPTED;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok((response, feedback))
}

/// Records the evaluation event and the metrics.
pub fn record(genai: &GenAi, feedback: &Feedback) {
    let label = genai.bounded_label(feedback.label.as_deref());
    let i = &genai.instruments;
    let attrs = [KeyValue::new("gen_ai.evaluation.score.label", label)];
    i.feedback_score.record(feedback.score, &attrs);
    i.feedback.add(1, &attrs);

    let Some(tracer) = &genai.tracer else { return };
    let known = genai.recall(feedback.trace_id);
    // Without the original span (forgotten, or from another instance) the event still joins
    // its trace: under a parent id derived from the trace id, which trace backends show as
    // a span whose parent is missing.
    let parent_id = known.unwrap_or_else(|| {
        let b = feedback.trace_id.to_bytes();
        let mut id = [0u8; 8];
        id.copy_from_slice(&b[8..]);
        if id == [0; 8] {
            id[7] = 1;
        }
        SpanId::from_bytes(id)
    });
    let parent = Context::new().with_remote_span_context(SpanContext::new(
        feedback.trace_id,
        parent_id,
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    ));
    let mut event = vec![
        KeyValue::new("gen_ai.evaluation.name", "user_feedback"),
        KeyValue::new("gen_ai.evaluation.score.value", feedback.score),
    ];
    if let Some(label) = &feedback.label {
        event.push(KeyValue::new(
            "gen_ai.evaluation.score.label",
            label.chars().take(128).collect::<String>(),
        ));
    }
    if let Some(text) = feedback.comment.as_deref().and_then(|c| genai.captured(c)) {
        event.push(KeyValue::new("gen_ai.evaluation.explanation", text));
    }
    let mut span = tracer
        .span_builder("ragscope.feedback")
        .with_kind(SpanKind::Internal)
        .with_attributes([KeyValue::new(
            "ragscope.feedback.parent_known",
            known.is_some(),
        )])
        .start_with_context(tracer, &parent);
    span.add_event("gen_ai.evaluation.result", event);
    span.end();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_feedback() {
        let f = parse(
            br#"{"trace_id":"4BF92F3577B34DA6A3CE929D0E0E4736","score":0.5,"label":"good","comment":"ok"}"#,
        )
        .expect("valid");
        assert_eq!(
            f.trace_id,
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("hex")
        );
        assert_eq!(f.score, 0.5);
        assert_eq!(f.label.as_deref(), Some("good"));
        assert_eq!(f.comment.as_deref(), Some("ok"));
        let f = parse(br#"{"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","score":-1}"#)
            .expect("minimal");
        assert_eq!(f.label, None);
    }

    #[test]
    fn invalid_feedback_says_why() {
        for (body, why) in [
            (&b"{"[..], "not valid JSON"),
            (b"[]", "JSON object"),
            (br#"{"score":1}"#, "trace_id is required"),
            (br#"{"trace_id":"abc","score":1}"#, "32 hex"),
            (
                br#"{"trace_id":"00000000000000000000000000000000","score":1}"#,
                "not all zero",
            ),
            (
                br#"{"trace_id":"4bf92f3577b34da6a3ce929d0e0e473g","score":1}"#,
                "32 hex",
            ),
            (
                br#"{"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","score":"5"}"#,
                "number",
            ),
            (
                br#"{"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736"}"#,
                "number",
            ),
            (
                br#"{"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","score":1,"label":3}"#,
                "label must",
            ),
        ] {
            let err = parse(body).expect_err(why);
            assert!(err.contains(why), "{err}");
        }
    }
}
