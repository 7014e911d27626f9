//! One request/response pair as telemetry sees it: the SERVER span, the CLIENT span for the
//! upstream call, the HTTP metrics and the access-log line, all closed out in one place
//! ([`Exchange::finish`]) when the response body ends, fails, or the client goes away.
//!
//! The exchange travels with the request: the proxy creates it when a request is admitted and
//! hands it to the response body, whose end (or drop) finishes it. Dropping an unfinished
//! exchange counts as a client cancel, so a request abandoned at any point is still recorded.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, Version};
use opentelemetry::trace::{SpanContext, SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue, trace::Span as _};
use opentelemetry_http::HeaderInjector;
use opentelemetry_sdk::trace::Span;
use opentelemetry_semantic_conventions::attribute as semconv;

use super::Telemetry;
use super::access_log::{self, AccessRecord};
use super::trace_context::StrictExtractor;

/// What is known about a request when it arrives.
#[derive(Debug, Clone)]
pub struct RequestFacts {
    /// The request method.
    pub method: Method,
    /// The path, for `url.path` and the access log (the query is kept apart, redacted).
    pub path: String,
    /// The query with every value replaced, for `url.query`.
    pub redacted_query: Option<String>,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// The HTTP version the client spoke.
    pub version: Version,
    /// Host and port the client addressed (Host or `:authority`).
    pub server_address: Option<(String, Option<u16>)>,
    /// The client's socket address.
    pub peer: SocketAddr,
    /// `User-Agent`, if any.
    pub user_agent: Option<String>,
}

impl RequestFacts {
    /// Gathers the facts from a request's head.
    pub fn from_request(
        method: &Method,
        uri: &Uri,
        version: Version,
        headers: &HeaderMap,
        peer: SocketAddr,
        scheme: &'static str,
    ) -> RequestFacts {
        let authority = uri.authority().map(|a| a.as_str()).or_else(|| {
            headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
        });
        let server_address = authority.and_then(|a| {
            let a: http::uri::Authority = a.parse().ok()?;
            Some((a.host().to_owned(), a.port_u16()))
        });
        RequestFacts {
            method: method.clone(),
            path: uri.path().to_owned(),
            redacted_query: uri.query().map(redact_query),
            scheme,
            version,
            server_address,
            peer,
            user_agent: headers
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        }
    }
}

/// `a=1&b=secret&flag` → `a=REDACTED&b=REDACTED&flag`: names are kept for debugging, values
/// (tokens, keys, user text) never reach telemetry.
pub fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) => format!("{name}=REDACTED"),
            None => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// The semconv method: known methods as they are, anything else `_OTHER`.
fn semconv_method(method: &Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "CONNECT" => "CONNECT",
        "OPTIONS" => "OPTIONS",
        "TRACE" => "TRACE",
        "PATCH" => "PATCH",
        "QUERY" => "QUERY",
        _ => "_OTHER",
    }
}

fn protocol_version(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// The upstream's `server.address` and `server.port`, built once: they are the same for every
/// request, and cloning them shares the strings.
#[derive(Debug, Clone)]
pub struct UpstreamAttributes([KeyValue; 2]);

impl UpstreamAttributes {
    /// For the upstream at `host:port`.
    pub fn new(host: &str, port: u16) -> Self {
        UpstreamAttributes([
            KeyValue::new(semconv::SERVER_ADDRESS, host.to_owned()),
            KeyValue::new(semconv::SERVER_PORT, i64::from(port)),
        ])
    }
}

/// How the response ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The last byte was handed to the client.
    Complete,
    /// The client went away first. Not an error, per the semantic conventions.
    Cancelled,
    /// The response broke off mid-stream for this reason (`error.type`).
    Failed(&'static str),
}

/// The telemetry of one request/response pair.
#[derive(Debug)]
pub struct Exchange {
    telemetry: Arc<Telemetry>,
    facts: RequestFacts,
    start: Instant,
    parent: Context,
    server_span: Option<Span>,
    /// `00-<trace id>-<server span id>-<flags>`, formatted once for `traceresponse` and the log.
    trace_header: Option<String>,
    client_span: Option<Span>,
    upstream_start: Option<Instant>,
    /// The upstream's `server.address` and `server.port`, for the client metric.
    upstream: Option<[KeyValue; 2]>,
    status: Option<StatusCode>,
    error_type: Option<Cow<'static, str>>,
    request_bytes: Arc<AtomicU64>,
    response_bytes: u64,
    finished: bool,
    /// The GenAI/RAG observation, when the request is observed.
    genai: Option<crate::genai::Observation>,
    /// issue 16: the operator's view this exchange is counted in.
    overview: Option<Arc<crate::overview::Overview>>,
}

impl Exchange {
    /// Starts the SERVER span (continuing a valid incoming trace) and counts the request active.
    pub fn begin(telemetry: Arc<Telemetry>, facts: RequestFacts, headers: &HeaderMap) -> Exchange {
        let start = Instant::now();
        let parent = match &telemetry.propagator {
            Some(p) if telemetry.tracer.is_some() => {
                use opentelemetry::propagation::TextMapPropagator as _;
                p.extract(&StrictExtractor::new(headers))
            }
            _ => Context::new(),
        };
        let method = semconv_method(&facts.method);
        let server_span = telemetry.tracer.as_ref().map(|tracer| {
            let mut attributes = vec![
                KeyValue::new(semconv::HTTP_REQUEST_METHOD, method),
                KeyValue::new(semconv::URL_PATH, facts.path.clone()),
                KeyValue::new(semconv::URL_SCHEME, facts.scheme),
                KeyValue::new(
                    semconv::NETWORK_PROTOCOL_VERSION,
                    protocol_version(facts.version),
                ),
                KeyValue::new(semconv::CLIENT_ADDRESS, facts.peer.ip().to_string()),
                KeyValue::new(semconv::NETWORK_PEER_ADDRESS, facts.peer.ip().to_string()),
                KeyValue::new(semconv::NETWORK_PEER_PORT, i64::from(facts.peer.port())),
            ];
            if method == "_OTHER" {
                attributes.push(KeyValue::new(
                    semconv::HTTP_REQUEST_METHOD_ORIGINAL,
                    facts.method.as_str().to_owned(),
                ));
            }
            if let Some(q) = &facts.redacted_query {
                attributes.push(KeyValue::new(semconv::URL_QUERY, q.clone()));
            }
            if let Some((host, port)) = &facts.server_address {
                attributes.push(KeyValue::new(semconv::SERVER_ADDRESS, host.clone()));
                if let Some(port) = port {
                    attributes.push(KeyValue::new(semconv::SERVER_PORT, i64::from(*port)));
                }
            }
            if let Some(ua) = &facts.user_agent {
                attributes.push(KeyValue::new(semconv::USER_AGENT_ORIGINAL, ua.clone()));
            }
            tracer
                .span_builder(span_name(method))
                .with_kind(SpanKind::Server)
                .with_attributes(attributes)
                .start_with_context(tracer, &parent)
        });
        telemetry
            .instruments
            .server_active
            .add(1, &active_attributes(&facts));
        let trace_header = server_span.as_ref().map(|s| w3c_header(s.span_context()));
        Exchange {
            telemetry,
            facts,
            start,
            parent,
            server_span,
            trace_header,
            client_span: None,
            upstream_start: None,
            upstream: None,
            status: None,
            error_type: None,
            request_bytes: Arc::new(AtomicU64::new(0)),
            response_bytes: 0,
            finished: false,
            genai: None,
            overview: None,
        }
    }

    /// The shared counter the request body wrapper adds to.
    pub fn request_bytes(&self) -> Arc<AtomicU64> {
        self.request_bytes.clone()
    }

    /// The SERVER span's context, when traces are on.
    pub fn span_context(&self) -> Option<&SpanContext> {
        self.server_span.as_ref().map(|s| s.span_context())
    }

    /// The W3C `traceresponse` header value carrying our trace id back to the client.
    pub fn traceresponse(&self) -> Option<HeaderValue> {
        HeaderValue::from_str(self.trace_header.as_deref()?).ok()
    }

    /// Starts the CLIENT span for the upstream call and writes its context into the upstream
    /// request's headers, so the upstream's own spans nest under it. `upstream` is the
    /// upstream's `server.address` and `server.port`, built once by the proxy.
    pub fn begin_upstream(
        &mut self,
        upstream: &UpstreamAttributes,
        uri: &Uri,
        headers: &mut HeaderMap,
    ) {
        self.upstream_start = Some(Instant::now());
        self.upstream = Some(upstream.0.clone());
        let (Some(tracer), Some(server_span)) = (&self.telemetry.tracer, &self.server_span) else {
            return;
        };
        let method = semconv_method(&self.facts.method);
        let mut attributes = vec![
            KeyValue::new(semconv::HTTP_REQUEST_METHOD, method),
            KeyValue::new(semconv::URL_FULL, redacted_url(uri)),
        ];
        attributes.extend(upstream.0.iter().cloned());
        if method == "_OTHER" {
            attributes.push(KeyValue::new(
                semconv::HTTP_REQUEST_METHOD_ORIGINAL,
                self.facts.method.as_str().to_owned(),
            ));
        }
        let server_cx = self
            .parent
            .with_remote_span_context(server_span.span_context().clone());
        let client_span = tracer
            .span_builder(span_name(method))
            .with_kind(SpanKind::Client)
            .with_attributes(attributes)
            .start_with_context(tracer, &server_cx);
        if let Some(propagator) = &self.telemetry.propagator {
            use opentelemetry::propagation::TextMapPropagator as _;
            // The caller's trace headers are replaced, not merged: an invalid tracestate that was
            // not continued must not be forwarded beside our traceparent.
            headers.remove("traceparent");
            headers.remove("tracestate");
            let cx = self
                .parent
                .with_remote_span_context(client_span.span_context().clone());
            propagator.inject_context(&cx, &mut HeaderInjector(headers));
            // The SDK writes `tracestate` even when it is empty; an empty header is noise.
            if headers.get("tracestate").is_some_and(|v| v.is_empty()) {
                headers.remove("tracestate");
            }
        }
        self.client_span = Some(client_span);
    }

    /// The response status is known: the upstream's, or one the proxy answers itself with the
    /// `error.type` it stands for.
    pub fn respond(&mut self, status: StatusCode, error_type: Option<&'static str>) {
        self.status = Some(status);
        // For an upstream 5xx, error.type is the status code, as the semantic conventions advise.
        self.error_type = match error_type {
            Some(e) => Some(Cow::Borrowed(e)),
            None => status
                .is_server_error()
                .then(|| Cow::Owned(status.as_u16().to_string())),
        };
        if let Some(span) = &mut self.client_span
            && error_type.is_none()
        {
            span.set_attribute(KeyValue::new(
                semconv::HTTP_RESPONSE_STATUS_CODE,
                i64::from(status.as_u16()),
            ));
        }
    }

    /// Bytes of response body handed to the client so far.
    pub fn add_response_bytes(&mut self, n: u64) {
        self.response_bytes += n;
    }

    /// Attaches the request's GenAI observation; it is concluded when the exchange finishes.
    pub fn set_genai(&mut self, observation: crate::genai::Observation) {
        self.genai = Some(observation);
    }

    /// issue 16: counts this exchange in the operator's view when it finishes.
    pub fn set_overview(&mut self, overview: Arc<crate::overview::Overview>) {
        self.overview = Some(overview);
    }

    /// The GenAI observation, if the request has one.
    pub fn genai_mut(&mut self) -> Option<&mut crate::genai::Observation> {
        self.genai.as_mut()
    }

    /// A response frame was handed to the client: count it and let the GenAI observation
    /// read its copy.
    pub fn observe_response_data(&mut self, data: &[u8]) {
        self.response_bytes += data.len() as u64;
        if let Some(genai) = &mut self.genai {
            genai.response_data(data);
        }
    }

    /// Adds an attribute to the SERVER span (no-op when traces are off). For facts other
    /// phases learn about the request: who the client is, what was decided about it.
    pub fn set_server_attribute(&mut self, attribute: KeyValue) {
        if let Some(span) = &mut self.server_span {
            span.set_attribute(attribute);
        }
    }

    /// Adds an attribute to the CLIENT span of the upstream call, once it has started.
    pub fn set_upstream_attribute(&mut self, attribute: KeyValue) {
        if let Some(span) = &mut self.client_span {
            span.set_attribute(attribute);
        }
    }

    /// Closes out the exchange: ends both spans, records metrics and writes the access log.
    /// Runs once; later calls (and the drop) do nothing.
    pub fn finish(&mut self, ending: Ending) {
        if self.finished {
            return;
        }
        self.finished = true;
        let now = Instant::now();
        let duration = now.duration_since(self.start).as_secs_f64();
        if let Ending::Failed(kind) = ending {
            self.error_type = Some(Cow::Borrowed(kind));
        }
        let cancelled = ending == Ending::Cancelled;
        let request_bytes = self.request_bytes.load(Ordering::Relaxed);
        let instruments = &self.telemetry.instruments;

        // Metrics: bounded attributes only (no path, no client address).
        let mut attrs = active_attributes(&self.facts);
        instruments.server_active.add(-1, &attrs);
        attrs.push(KeyValue::new(
            semconv::NETWORK_PROTOCOL_VERSION,
            protocol_version(self.facts.version),
        ));
        if let Some(status) = self.status {
            attrs.push(KeyValue::new(
                semconv::HTTP_RESPONSE_STATUS_CODE,
                i64::from(status.as_u16()),
            ));
        }
        if let Some(e) = &self.error_type {
            attrs.push(KeyValue::new(semconv::ERROR_TYPE, e.clone()));
        }
        instruments.server_duration.record(duration, &attrs);
        instruments
            .server_request_size
            .record(request_bytes, &attrs);
        instruments
            .server_response_size
            .record(self.response_bytes, &attrs);

        if let Some(upstream_start) = self.upstream_start {
            let mut attrs = vec![KeyValue::new(
                semconv::HTTP_REQUEST_METHOD,
                semconv_method(&self.facts.method),
            )];
            if let Some(status) = self.status {
                attrs.push(KeyValue::new(
                    semconv::HTTP_RESPONSE_STATUS_CODE,
                    i64::from(status.as_u16()),
                ));
            }
            if let Some(e) = self.client_error_type() {
                attrs.push(KeyValue::new(semconv::ERROR_TYPE, e));
            }
            if let Some(upstream) = &self.upstream {
                attrs.extend(upstream.iter().cloned());
            }
            instruments
                .client_duration
                .record(now.duration_since(upstream_start).as_secs_f64(), &attrs);
        }

        // GenAI attributes, span name and metrics, before either span ends.
        let mut genai_sample = None;
        if let Some(genai) = self.genai.take() {
            let error_type = self.client_error_type();
            genai_sample = genai.finish(
                self.client_span.as_mut(),
                self.server_span.as_mut(),
                self.start,
                error_type.as_deref(),
            );
        }
        // issue 16: the operator's view (the lead moves this to the record consumer).
        if let Some(overview) = &self.overview {
            overview.record(crate::overview::ExchangeSample {
                end: std::time::SystemTime::now(),
                duration: now.duration_since(self.start),
                status: self.status.map(|s| s.as_u16()),
                error: self.error_type.is_some(),
                rate_limited: self.error_type.as_deref() == Some("rate_limited"),
                cancelled,
                trace_id: self
                    .server_span
                    .as_ref()
                    .map(|s| s.span_context().trace_id().to_bytes()),
                genai: genai_sample,
            });
        }

        // Spans: the CLIENT span ends before its parent.
        if let Some(mut span) = self.client_span.take() {
            if let Some(e) = self.client_error_type() {
                span.set_attribute(KeyValue::new(semconv::ERROR_TYPE, e.clone()));
                span.set_status(Status::error(e));
            }
            if cancelled {
                span.set_attribute(KeyValue::new("ragscope.cancelled", true));
            }
            span.end();
        }
        if let Some(span) = &mut self.server_span {
            if let Some(status) = self.status {
                span.set_attribute(KeyValue::new(
                    semconv::HTTP_RESPONSE_STATUS_CODE,
                    i64::from(status.as_u16()),
                ));
            }
            span.set_attribute(KeyValue::new(
                "http.request.body.size",
                request_bytes as i64,
            ));
            span.set_attribute(KeyValue::new(
                "http.response.body.size",
                self.response_bytes as i64,
            ));
            if let Some(e) = &self.error_type {
                span.set_attribute(KeyValue::new(semconv::ERROR_TYPE, e.clone()));
            }
            if cancelled {
                // A client going away is not a server error: status stays unset.
                span.set_attribute(KeyValue::new("ragscope.cancelled", true));
            }
            let server_failed = self.status.is_none_or(|s| s.is_server_error())
                || matches!(ending, Ending::Failed(_));
            if server_failed && !cancelled {
                span.set_status(Status::error(self.error_type.clone().unwrap_or_default()));
            }
            span.end();
        }

        let ids = self.trace_header.as_deref().unwrap_or_default();
        access_log::write(&AccessRecord {
            trace_id: ids.get(3..35).unwrap_or_default(),
            span_id: ids.get(36..52).unwrap_or_default(),
            method: self.facts.method.as_str(),
            path: &self.facts.path,
            protocol: protocol_version(self.facts.version),
            status: self.status.map(|s| s.as_u16()),
            duration_ms: duration * 1000.0,
            request_bytes,
            response_bytes: self.response_bytes,
            error_type: self.error_type.as_deref(),
            cancelled,
            client: self.facts.peer.ip(),
        });
    }

    /// `error.type` from the upstream call's point of view: the proxy's own error, or the
    /// status code of any 4xx/5xx (for an HTTP client both are errors, per semconv).
    fn client_error_type(&self) -> Option<Cow<'static, str>> {
        self.error_type.clone().or_else(|| {
            self.status
                .filter(|s| s.is_client_error() || s.is_server_error())
                .map(|s| Cow::Owned(s.as_u16().to_string()))
        })
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.finish(Ending::Cancelled);
    }
}

fn span_name(method: &'static str) -> &'static str {
    // No low-cardinality route is known to a generic proxy, so the name is the method alone
    // (never the raw path); `_OTHER` becomes `HTTP`, per the semantic conventions.
    if method == "_OTHER" { "HTTP" } else { method }
}

fn active_attributes(facts: &RequestFacts) -> Vec<KeyValue> {
    vec![
        KeyValue::new(semconv::HTTP_REQUEST_METHOD, semconv_method(&facts.method)),
        KeyValue::new(semconv::URL_SCHEME, facts.scheme),
    ]
}

/// `00-<32 hex>-<16 hex>-<2 hex>`, the W3C header form of a span context.
fn w3c_header(sc: &SpanContext) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(55);
    s.push_str("00-");
    let push_hex = |s: &mut String, bytes: &[u8]| {
        for b in bytes {
            s.push(HEX[usize::from(b >> 4)] as char);
            s.push(HEX[usize::from(b & 0xf)] as char);
        }
    };
    push_hex(&mut s, &sc.trace_id().to_bytes());
    s.push('-');
    push_hex(&mut s, &sc.span_id().to_bytes());
    s.push('-');
    push_hex(&mut s, &[sc.trace_flags().to_u8()]);
    s
}

fn redacted_url(uri: &Uri) -> String {
    let mut s = format!(
        "{}://{}{}",
        uri.scheme_str().unwrap_or("http"),
        uri.authority().map(|a| a.as_str()).unwrap_or(""),
        uri.path()
    );
    if let Some(q) = uri.query() {
        s.push('?');
        s.push_str(&redact_query(q));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_redacted() {
        assert_eq!(
            redact_query("a=1&key=sk-secret&flag"),
            "a=REDACTED&key=REDACTED&flag"
        );
        assert_eq!(redact_query(""), "");
    }

    #[test]
    fn w3c_header_form() {
        use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};
        let sc = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("id"),
            SpanId::from_hex("00f067aa0ba902b7").expect("id"),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        assert_eq!(
            w3c_header(&sc),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
    }

    #[test]
    fn methods_follow_semconv() {
        assert_eq!(semconv_method(&Method::GET), "GET");
        assert_eq!(
            semconv_method(&Method::from_bytes(b"PURGE").expect("method")),
            "_OTHER"
        );
        assert_eq!(span_name("_OTHER"), "HTTP");
    }
}
