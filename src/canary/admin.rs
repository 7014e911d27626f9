//! `GET /canary` (weights, window figures per version, the verdict, the last rollback and why)
//! and `POST /canary` (set the weight, promote, roll back) on the admin listener.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt as _, Limited};
use serde_json::{Value, json};

use super::{Action, Canary};

/// Largest `POST /canary` body read.
const MAX_BODY: usize = 4096;
/// Longest wait for that body.
const BODY_TIMEOUT: Duration = Duration::from_secs(5);

/// Answers a request to `/canary`: the status and JSON body.
pub async fn handle<B>(method: &Method, body: B, canary: Option<&Canary>) -> (StatusCode, Value)
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let Some(canary) = canary else {
        return error(
            StatusCode::NOT_FOUND,
            "canary_off",
            "no canary is configured (RAGSCOPE_UPSTREAM_CANARY)",
        );
    };
    match *method {
        Method::GET | Method::HEAD => (StatusCode::OK, canary.json()),
        Method::POST => {
            let read = tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_BODY).collect());
            let bytes = match read.await {
                Ok(Ok(collected)) => collected.to_bytes(),
                Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                    return error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "body_too_large",
                        &format!("a POST /canary body is at most {MAX_BODY} bytes"),
                    );
                }
                Ok(Err(e)) => {
                    return error(StatusCode::BAD_REQUEST, "bad_body", &e.to_string());
                }
                Err(_) => {
                    return error(
                        StatusCode::REQUEST_TIMEOUT,
                        "body_timeout",
                        "the body did not arrive in time",
                    );
                }
            };
            match Action::parse(&bytes) {
                Ok(action) => {
                    canary.act(action).await;
                    (StatusCode::OK, canary.json())
                }
                Err(e) => error(StatusCode::BAD_REQUEST, "bad_action", &e.to_string()),
            }
        }
        _ => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "use GET or POST",
        ),
    }
}

fn error(status: StatusCode, kind: &str, message: &str) -> (StatusCode, Value) {
    (status, json!({"error": {"type": kind, "message": message}}))
}
