//! Errors the proxy answers itself, and the one place each becomes an HTTP response.
//!
//! Every error carries where it came from ([`Origin`]): the upstream, the downstream client, or
//! ragscope itself, so logs and spans say whose fault a failure was.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

/// Who caused an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The server we forward to.
    Upstream,
    /// The client that sent the request.
    Downstream,
    /// Ragscope itself (shutting down, internal failure).
    Proxy,
}

impl Origin {
    /// Lower-case name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Upstream => "upstream",
            Origin::Downstream => "downstream",
            Origin::Proxy => "proxy",
        }
    }
}

/// A request the proxy could not forward, or whose forwarding failed before a response.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Nothing accepted the connection (refused, unreachable, DNS failure).
    #[error("the upstream server could not be reached")]
    UpstreamUnreachable {
        /// The underlying failure, for logs only.
        detail: String,
    },
    /// The TCP connect took longer than `RAGSCOPE_CONNECT_TIMEOUT`.
    #[error("the upstream server did not accept a connection within {0:?}")]
    UpstreamConnectTimeout(Duration),
    /// No response headers within `RAGSCOPE_RESPONSE_TIMEOUT`.
    #[error("the upstream server did not respond within {0:?}")]
    UpstreamTimeout(Duration),
    /// The upstream closed or reset the connection before a response.
    #[error("the upstream server closed the connection without a response")]
    UpstreamReset {
        /// The underlying failure, for logs only.
        detail: String,
    },
    /// The request body went past `RAGSCOPE_MAX_REQUEST_BODY`.
    #[error("the request body is larger than the limit of {limit} bytes")]
    BodyTooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// The request is malformed (missing or duplicate Host, bad URI...).
    #[error("malformed request: {0}")]
    BadRequest(&'static str),
    /// The client sent nothing of its request body for `RAGSCOPE_REQUEST_BODY_TIMEOUT`
    /// (the feedback endpoint: did not send it all within it).
    #[error("the request body did not arrive: nothing was received for {0:?}")]
    RequestBodyTimeout(Duration),
    /// The client's request body broke off while it was being forwarded.
    #[error("the request body could not be read from the client")]
    ClientBody {
        /// The underlying failure, for logs only.
        detail: String,
    },
    /// Ragscope is shutting down and takes no new requests.
    #[error("the proxy is shutting down; retry on another instance")]
    Draining,
    /// Access control: no API key in `Authorization: Bearer` or `X-Api-Key`.
    #[error(
        "an API key is required: send it as `Authorization: Bearer <key>` or `X-Api-Key: <key>`"
    )]
    MissingApiKey,
    /// Access control: the API key sent is not an accepted one.
    #[error("the API key is not valid")]
    InvalidApiKey,
    /// The client is over its rate limit (`RAGSCOPE_RATE_LIMIT`); the upstream was not called.
    #[error("rate limit exceeded; retry after {retry_after} s")]
    RateLimited {
        /// Whole seconds (rounded up) until a request would be allowed.
        retry_after: u64,
        /// The bucket size, for `x-ratelimit-limit`.
        limit: u32,
        /// Whole seconds until the bucket is full again, for `x-ratelimit-reset`.
        reset: u64,
    },
    /// The client's token budget (`RAGSCOPE_TOKEN_LIMIT`) cannot cover this request's
    /// reservation; the upstream was not called.
    #[error(
        "token budget exceeded: this request's estimated cost is more than the {limit}-token budget has left; retry after {retry_after} s"
    )]
    TokenLimited {
        /// Whole seconds (rounded up) until the budget covers the reservation.
        retry_after: u64,
        /// The budget per period, for `x-ratelimit-limit-tokens`.
        limit: u64,
        /// Until the budget is full again, for `x-ratelimit-reset-tokens`.
        reset: Duration,
    },
    /// The client's spend budget (`RAGSCOPE_COST_LIMIT`) cannot cover this request's
    /// reservation; the upstream was not called.
    #[error(
        "spend budget exceeded: this request's estimated cost is more than the budget of {} per period has left; retry after {retry_after} s",
        crate::limit::tokens::amount(*limit)
    )]
    CostLimited {
        /// Whole seconds (rounded up) until the budget covers the reservation.
        retry_after: u64,
        /// The budget per period in micro-units, for `x-ratelimit-limit-cost`.
        limit: u64,
        /// Until the budget is full again, for `x-ratelimit-reset-cost`.
        reset: Duration,
    },
    /// A feedback body that does not say what it must (trace id, numeric score).
    #[error("invalid feedback: {0}")]
    InvalidFeedback(String),
    /// A protocol ragscope does not proxy (CONNECT tunnels; an `Upgrade` on a connection that
    /// cannot run the session): refused rather than forwarded as a plain request with the
    /// upgrade silently stripped.
    #[error("ragscope does not proxy {0}")]
    UnsupportedProtocol(&'static str),
    /// A gRPC request while the upstream is spoken to in HTTP/1.1, which cannot carry it
    /// (no trailers, no full-duplex streams): a configuration to fix, said plainly.
    #[error(
        "gRPC needs HTTP/2 to the upstream, which is spoken to in HTTP/1.1: set RAGSCOPE_UPSTREAM_PROTOCOL=h2c (cleartext), h2 or auto (TLS)"
    )]
    GrpcNeedsHttp2,
}

impl ProxyError {
    /// The status the client receives.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::UpstreamUnreachable { .. }
            | ProxyError::UpstreamReset { .. }
            | ProxyError::GrpcNeedsHttp2 => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamConnectTimeout(_) | ProxyError::UpstreamTimeout(_) => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::RequestBodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ProxyError::BadRequest(_)
            | ProxyError::ClientBody { .. }
            | ProxyError::InvalidFeedback(_) => StatusCode::BAD_REQUEST,
            ProxyError::Draining => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::MissingApiKey | ProxyError::InvalidApiKey => StatusCode::UNAUTHORIZED,
            ProxyError::RateLimited { .. }
            | ProxyError::TokenLimited { .. }
            | ProxyError::CostLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::UnsupportedProtocol(_) => StatusCode::NOT_IMPLEMENTED,
        }
    }

    /// Low-cardinality identifier: the JSON `type`, the span's and metrics' `error.type`.
    pub fn error_type(&self) -> &'static str {
        match self {
            ProxyError::UpstreamUnreachable { .. } => "upstream_unreachable",
            ProxyError::UpstreamConnectTimeout(_) => "upstream_connect_timeout",
            ProxyError::UpstreamTimeout(_) => "upstream_timeout",
            ProxyError::UpstreamReset { .. } => "upstream_reset",
            ProxyError::BodyTooLarge { .. } => "request_body_too_large",
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::ClientBody { .. } => "client_body_error",
            ProxyError::RequestBodyTimeout(_) => "request_body_timeout",
            ProxyError::Draining => "draining",
            ProxyError::MissingApiKey => "missing_api_key",
            ProxyError::InvalidApiKey => "invalid_api_key",
            ProxyError::RateLimited { .. } => "rate_limited",
            ProxyError::TokenLimited { .. } => "token_limit_exceeded",
            ProxyError::CostLimited { .. } => "cost_limit_exceeded",
            ProxyError::InvalidFeedback(_) => "invalid_feedback",
            ProxyError::UnsupportedProtocol(_) => "unsupported_protocol",
            ProxyError::GrpcNeedsHttp2 => "grpc_needs_http2",
        }
    }

    /// Whose fault it was.
    pub fn origin(&self) -> Origin {
        match self {
            ProxyError::UpstreamUnreachable { .. }
            | ProxyError::UpstreamConnectTimeout(_)
            | ProxyError::UpstreamTimeout(_)
            | ProxyError::UpstreamReset { .. } => Origin::Upstream,
            ProxyError::BodyTooLarge { .. }
            | ProxyError::BadRequest(_)
            | ProxyError::ClientBody { .. }
            | ProxyError::RequestBodyTimeout(_)
            | ProxyError::MissingApiKey
            | ProxyError::InvalidApiKey
            | ProxyError::RateLimited { .. }
            | ProxyError::TokenLimited { .. }
            | ProxyError::CostLimited { .. }
            | ProxyError::InvalidFeedback(_)
            | ProxyError::UnsupportedProtocol(_) => Origin::Downstream,
            ProxyError::Draining | ProxyError::GrpcNeedsHttp2 => Origin::Proxy,
        }
    }

    /// Detail for logs that is not shown to clients (it may name internal addresses).
    pub fn detail(&self) -> Option<&str> {
        match self {
            ProxyError::UpstreamUnreachable { detail }
            | ProxyError::UpstreamReset { detail }
            | ProxyError::ClientBody { detail } => Some(detail),
            _ => None,
        }
    }

    /// The response: `{"error":{"type":"...","message":"..."}}` with the right status. The only
    /// place an error becomes a response.
    pub fn to_response(&self) -> Response<Bytes> {
        let body = serde_json::json!({
            "error": { "type": self.error_type(), "message": self.to_string() }
        })
        .to_string();
        let mut response = Response::new(Bytes::from(body));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match self {
            // The client's request may not have been read to its end: close rather than try to
            // find the next request in the remains of this one.
            ProxyError::BodyTooLarge { .. }
            | ProxyError::BadRequest(_)
            | ProxyError::ClientBody { .. }
            | ProxyError::RequestBodyTimeout(_)
            | ProxyError::UnsupportedProtocol(_) => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            ProxyError::Draining => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            // RFC 6750: the challenge, with `invalid_token` when a key was sent but refused.
            ProxyError::MissingApiKey => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"ragscope\""),
                );
            }
            ProxyError::InvalidApiKey => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(
                        "Bearer realm=\"ragscope\", error=\"invalid_token\", error_description=\"the API key is not valid\"",
                    ),
                );
            }
            ProxyError::RateLimited {
                retry_after,
                limit,
                reset,
            } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
                headers.insert("x-ratelimit-limit", HeaderValue::from(*limit));
                headers.insert("x-ratelimit-remaining", HeaderValue::from_static("0"));
                headers.insert("x-ratelimit-reset", HeaderValue::from(*reset));
            }
            ProxyError::TokenLimited {
                retry_after,
                limit,
                reset,
            } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
                crate::limit::tokens::add_headers(headers, *limit, 0, *reset);
            }
            ProxyError::CostLimited {
                retry_after,
                limit,
                reset,
            } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
                crate::limit::tokens::Unit::Cost.add_headers(headers, *limit, 0, *reset);
            }
            _ => {}
        }
        response
    }
}
