//! gRPC as seen on the wire: a request is gRPC when its `content-type` is `application/grpc`
//! (or `application/grpc+proto`, `+json`...); its method comes from the path
//! (`/package.Service/Method`), its outcome from `grpc-status` in the trailers, or in the
//! headers of a trailers-only response. Facts only: telemetry names them.

use http::{HeaderMap, HeaderValue, header};

use crate::error::ProxyError;

/// Longest method path kept, in bytes (a client chooses it).
const MAX_METHOD: usize = 256;

/// The 17 gRPC status codes by number, as `rpc.response.status_code` and `error.type` write
/// them.
pub const STATUS_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

const UNKNOWN: u8 = 2;

/// The name of status `code` (UNKNOWN for a number outside the 17).
pub fn status_name(code: u8) -> &'static str {
    STATUS_NAMES
        .get(usize::from(code))
        .copied()
        .unwrap_or(STATUS_NAMES[usize::from(UNKNOWN)])
}
const UNIMPLEMENTED: u8 = 12;

/// What is known of one gRPC call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcFacts {
    /// `package.Service/Method`, or `None` when the path is not of that shape.
    pub method: Option<String>,
    /// The path as sent (bounded), for `rpc.method_original` when `method` is `None`.
    pub path: String,
    /// The `grpc-status` the call ended with, once known (0..=16).
    pub status: Option<u8>,
}

impl RpcFacts {
    /// The facts of a request, when it is gRPC.
    pub fn from_request(headers: &HeaderMap, path: &str) -> Option<RpcFacts> {
        if !is_grpc(headers) {
            return None;
        }
        let path = crate::genai::inference::cut(path, MAX_METHOD);
        let method = path
            .strip_prefix('/')
            .and_then(|p| p.split_once('/'))
            .filter(|(service, method)| {
                !service.is_empty() && !method.is_empty() && !method.contains('/')
            })
            .map(|(service, method)| format!("{service}/{method}"));
        Some(RpcFacts {
            method,
            path: path.to_owned(),
            status: None,
        })
    }

    /// `package.Service`, when the method is known.
    pub fn service(&self) -> Option<&str> {
        self.method.as_deref()?.split_once('/').map(|(s, _)| s)
    }

    /// The status's name (`OK`, `NOT_FOUND`...), once known.
    pub fn status_name(&self) -> Option<&'static str> {
        self.status.map(status_name)
    }

    /// Whether the server did not know the method: then `rpc.method` on metrics is `_OTHER`
    /// (a client must not be able to mint metric series with made-up paths).
    pub fn unknown_method(&self) -> bool {
        self.status == Some(UNIMPLEMENTED)
    }
}

/// Whether `headers` say gRPC (`application/grpc`, `application/grpc+proto`, ...; gRPC-Web is
/// another protocol and not matched).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            let ct = ct.trim();
            ct.get(..16)
                .is_some_and(|p| p.eq_ignore_ascii_case("application/grpc"))
                && matches!(ct.as_bytes().get(16), None | Some(b'+' | b';'))
        })
}

/// The `grpc-status` in `headers` (trailers, or the head of a trailers-only response). A value
/// outside the 17 codes counts as UNKNOWN, as gRPC clients read it.
pub fn status(headers: &HeaderMap) -> Option<u8> {
    let value = headers.get("grpc-status")?;
    let code = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u8>().ok())
        .filter(|c| usize::from(*c) < STATUS_NAMES.len())
        .unwrap_or(UNKNOWN);
    Some(code)
}

/// Codes that are the server's failure, per the gRPC semantic conventions (the SERVER span's
/// status is Error only for these; a CLIENT span's for any code but OK).
pub fn is_server_error(code: u8) -> bool {
    matches!(code, 2 | 4 | 12 | 13 | 14 | 15)
}

/// The status a gRPC client gets for an error the proxy answers itself.
pub fn code_for(error: &ProxyError) -> u8 {
    match error {
        ProxyError::UpstreamUnreachable { .. }
        | ProxyError::UpstreamReset { .. }
        | ProxyError::UpstreamConnectTimeout(_)
        | ProxyError::Draining => 14,
        ProxyError::UpstreamTimeout(_) | ProxyError::RequestBodyTimeout(_) => 4,
        ProxyError::BodyTooLarge { .. }
        | ProxyError::RateLimited { .. }
        | ProxyError::TokenLimited { .. }
        | ProxyError::CostLimited { .. } => 8,
        ProxyError::MissingApiKey | ProxyError::InvalidApiKey => 16,
        ProxyError::BadRequest(_) | ProxyError::InvalidFeedback(_) => 3,
        ProxyError::ClientBody { .. } => 1,
        ProxyError::UnsupportedProtocol(_) => UNIMPLEMENTED,
        ProxyError::GrpcNeedsHttp2 => 13,
    }
}

/// Turns the proxy's JSON error head into a trailers-only gRPC response: HTTP 200 with
/// `grpc-status` and `grpc-message`, which every gRPC client reads as the call's outcome (a
/// bare 502 would reach the application as an opaque UNAVAILABLE or UNKNOWN).
pub fn trailers_only(parts: &mut http::response::Parts, code: u8, message: &str) {
    parts.status = http::StatusCode::OK;
    let h = &mut parts.headers;
    h.remove(header::CONTENT_LENGTH);
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from(u16::from(code)));
    if let Ok(v) = HeaderValue::try_from(percent_encode(message)) {
        h.insert("grpc-message", v);
    }
}

/// `grpc-message` encoding: bytes outside printable ASCII, and `%`, as `%XX`.
fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(ct: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(ct).expect("value"),
        );
        h
    }

    #[test]
    fn grpc_content_types() {
        for ct in [
            "application/grpc",
            "application/grpc+proto",
            "Application/GRPC;x=1",
        ] {
            assert!(is_grpc(&headers(ct)), "{ct}");
        }
        for ct in [
            "application/grpc-web",
            "application/json",
            "application/grp",
        ] {
            assert!(!is_grpc(&headers(ct)), "{ct}");
        }
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn methods_from_the_path() {
        let h = headers("application/grpc");
        let f = RpcFacts::from_request(&h, "/inference.Predict/ModelInfer").expect("grpc");
        assert_eq!(f.method.as_deref(), Some("inference.Predict/ModelInfer"));
        assert_eq!(f.service(), Some("inference.Predict"));
        for odd in ["/", "/onlyservice", "/a/b/c", "//m", "/s/"] {
            let f = RpcFacts::from_request(&h, odd).expect("grpc");
            assert_eq!(f.method, None, "{odd}");
            assert_eq!(f.path, odd);
        }
        let long = format!("/s/{}", "m".repeat(1000));
        assert!(RpcFacts::from_request(&h, &long).expect("grpc").path.len() <= MAX_METHOD);
    }

    #[test]
    fn statuses_are_bounded_to_the_17_codes() {
        let mut h = HeaderMap::new();
        assert_eq!(status(&h), None);
        for (v, code) in [
            ("0", 0),
            ("5", 5),
            ("16", 16),
            ("17", 2),
            ("x", 2),
            ("-1", 2),
        ] {
            h.insert("grpc-status", HeaderValue::from_static(v));
            assert_eq!(status(&h), Some(code), "{v}");
        }
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(percent_encode("50% off é"), "50%25 off %C3%A9");
    }
}
