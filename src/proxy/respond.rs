//! The respond phase's one place for each job: finishing a response head (status into the
//! record, `traceresponse` onto the head) and turning an error into the client's response.

use bytes::Bytes;
use http::{Response, Version, header};
use hyper::body::Incoming;

use super::{Exchange, ResponseBody};
use crate::error::{Origin, ProxyError};

/// What the proxy answers with when a request was admitted.
pub(super) enum Answer {
    /// The upstream's response, streamed back.
    Upstream(Response<Incoming>),
    /// A complete answer of the proxy's own (the feedback endpoint).
    Local(Response<Bytes>),
}

/// Finishes a response head, the one place this happens: the status (and, for the proxy's own
/// error, its `error.type` and origin) goes into the record, `traceresponse` onto the head.
pub(super) fn finish_head(
    parts: &mut http::response::Parts,
    exchange: &mut Exchange,
    error: Option<(&'static str, Origin)>,
) {
    exchange.respond(parts.status, error);
    if let Some(v) = exchange.traceresponse() {
        parts.headers.insert(TRACERESPONSE, v);
    }
}

const TRACERESPONSE: header::HeaderName = header::HeaderName::from_static("traceresponse");

/// Turns an error into the client's response and records it on the exchange.
pub(super) fn error_response(
    error: &ProxyError,
    mut exchange: Exchange,
    version: Version,
) -> Response<ResponseBody> {
    if matches!(error, ProxyError::RateLimited { .. }) {
        // Refusals are routine and can come by the thousand a second: counted, not logged.
        tracing::debug!(error_type = error.error_type(), "{error}");
    } else {
        // The ids join the warning to its trace (in the log line and the OTLP log record).
        let ids = exchange.record().and_then(|r| r.ids.as_ref());
        tracing::warn!(
            origin = error.origin().as_str(),
            error_type = error.error_type(),
            detail = error.detail(),
            trace_id = ids.map(|i| tracing::field::display(i.trace_id)),
            span_id = ids.map(|i| tracing::field::display(i.server_span_id)),
            "{error}"
        );
    }
    let (mut parts, mut bytes) = error.to_response().into_parts();
    if version == Version::HTTP_2 {
        // Connection-specific headers are forbidden in HTTP/2.
        parts.headers.remove(header::CONNECTION);
    }
    let grpc = exchange.is_grpc();
    if grpc {
        // A gRPC client reads the outcome from grpc-status, not from a JSON body.
        let code = crate::grpc::code_for(error);
        crate::grpc::trailers_only(&mut parts, code, &error.to_string());
        bytes = Bytes::new();
    }
    finish_head(
        &mut parts,
        &mut exchange,
        Some((error.error_type(), error.origin())),
    );
    if grpc {
        exchange.observe_trailers(&parts.headers);
    }
    Response::from_parts(parts, ResponseBody::local(bytes, exchange))
}
