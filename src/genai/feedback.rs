//! The feedback channel: `POST /ragscope/feedback` (the path is configurable), answered by the
//! proxy itself. A score for an earlier request becomes a `gen_ai.evaluation.result` event in
//! that request's trace, parented to its server span while ragscope still remembers it, plus
//! the `ragscope.feedback*` metrics. This module reads the feedback into a [`FeedbackFact`];
//! telemetry records it.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use opentelemetry::trace::{SpanId, TraceId};
use serde_json::Value;

use super::CaptureMode;
use super::{GenAi, openai::push_bounded};
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

/// Answers one feedback request: reads at most [`MAX_BODY`] bytes within `timeout`, and says
/// 202 with the fact telemetry records. Errors become 400/413 responses in [`ProxyError::to_response`].
pub async fn handle(
    genai: &GenAi,
    body: Incoming,
    timeout: Duration,
) -> Result<(Response<Bytes>, FeedbackFact), ProxyError> {
    let collected = tokio::time::timeout(timeout, Limited::new(body, MAX_BODY).collect())
        .await
        .map_err(|_| ProxyError::RequestBodyTimeout(timeout))?;
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
    let fact = fact(genai, &feedback);
    let mut response = Response::new(Bytes::from_static(b"{\"status\":\"accepted\"}"));
    *response.status_mut() = StatusCode::ACCEPTED;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok((response, fact))
}

/// What one feedback says, ready for telemetry: the `gen_ai.evaluation.result` event in the
/// trace it is about, and the `ragscope.feedback*` metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedbackFact {
    /// The trace the feedback is about.
    pub trace_id: TraceId,
    /// That trace's server span, while ragscope still remembers it.
    pub parent: Option<SpanId>,
    /// The score.
    pub score: f64,
    /// The label as a metric attribute: bounded in number (later new labels are `other`).
    pub metric_label: String,
    /// The label for the event, within [`super::MAX_FIELD_BYTES`].
    pub label: Option<String>,
    /// The comment, redacted and bounded, only when content capture is on.
    pub explanation: Option<String>,
    /// Matches replaced in the comment: (kind, count).
    pub redactions: Vec<(&'static str, u64)>,
}

/// Reads what a parsed feedback means for telemetry.
pub fn fact(genai: &GenAi, feedback: &Feedback) -> FeedbackFact {
    let mut redactions = Vec::new();
    let explanation = (genai.config.capture != CaptureMode::Off)
        .then_some(feedback.comment.as_deref())
        .flatten()
        .map(|comment| {
            let mut text = String::new();
            push_bounded(
                &mut text,
                &genai.redact(comment, genai.config.capture_max_bytes, &mut redactions),
                genai.config.capture_max_bytes,
            );
            text
        });
    FeedbackFact {
        trace_id: feedback.trace_id,
        parent: genai.recall(feedback.trace_id),
        score: feedback.score,
        metric_label: genai.bounded_label(feedback.label.as_deref()),
        label: feedback.label.as_ref().map(|l| super::cap(l)),
        explanation,
        redactions,
    }
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
