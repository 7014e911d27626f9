//! The proxy: one request walks four phases in a fixed order.
//!
//! 1. **observe** — the [`Exchange`] starts first, so every request (even one refused at once)
//!    has a span, metrics and a log line.
//! 2. **admit** — refuse what must not be forwarded: a missing or unknown API key (access
//!    control, which also names the client for later checks), draining, malformed framing, a
//!    declared body over the limit; then the rate limit ([`crate::limit`]), keyed by what
//!    access control learned, whose headers go on every response.
//! 3. **forward** — strip hop-by-hop headers, then add ours (forwarded-for, trace context), and
//!    send the request to the upstream over the pooled client, the body streaming behind it.
//! 4. **respond** — strip the response's hop-by-hop headers and stream its body back frame by
//!    frame; the body wrapper finishes the exchange (record) when the last byte leaves.
//!
//! An error in any phase becomes a response in exactly one place, [`ProxyError::to_response`].

mod body;
mod headers;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::{HeaderValue, Request, Response, Version, header};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::auth::{ApiKeys, Refusal};
use crate::config::Config;
use crate::error::ProxyError;
use crate::genai::GenAi;
use crate::limit::{Decision, RateLimiter};
use crate::telemetry::{Exchange, RequestFacts, Telemetry, UpstreamAttributes};

pub use body::{BodyError, RequestBody, RequestBodyFailure, ResponseBody};

/// TCP, then TLS for an https upstream.
pub type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// Shared state of the proxy: configuration, the upstream client, telemetry.
#[derive(Debug)]
pub struct Proxy {
    config: Arc<Config>,
    client: Client<Connector, RequestBody>,
    telemetry: Arc<Telemetry>,
    upstream_attributes: UpstreamAttributes,
    draining: AtomicBool,
    /// Access control, when `RAGSCOPE_API_KEYS_FILE` is set.
    api_keys: Option<Arc<ApiKeys>>,
    rate_limiter: Option<Arc<RateLimiter>>,
    genai: Arc<GenAi>,
    /// issue 16: the operator's view, fed by every exchange and feedback.
    overview: Arc<crate::overview::Overview>,
}

/// An upstream client that could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// https upstream but no trust anchors.
    #[error("RAGSCOPE_UPSTREAM is https but no system root certificates were found: {0}")]
    NoRoots(String),
    /// rustls refused the configuration.
    #[error("cannot configure TLS to the upstream: {0}")]
    Tls(#[from] rustls::Error),
    /// `RAGSCOPE_UPSTREAM_CA` cannot be used.
    #[error(transparent)]
    UpstreamCa(#[from] crate::tls::TlsError),
}

impl Proxy {
    /// Builds the proxy and its pooled upstream client.
    pub fn new(config: Arc<Config>, telemetry: Arc<Telemetry>) -> Result<Proxy, ClientError> {
        let connector = upstream_connector(&config, config.connect_timeout)?;
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(std::time::Duration::from_secs(90))
            .build(connector);
        let genai = Arc::new(GenAi::new(
            config.genai.clone(),
            &telemetry.meter(),
            telemetry.tracer().cloned(),
        ));
        Ok(Proxy {
            genai,
            overview: Arc::new(crate::overview::Overview::new(
                config.overview.model_prices.clone(),
            )),
            upstream_attributes: UpstreamAttributes::new(
                &config.upstream.host,
                config.upstream.port,
            ),
            config,
            client,
            telemetry,
            draining: AtomicBool::new(false),
            api_keys: None,
            rate_limiter: None,
        })
    }

    /// Turns access control on: every request must carry one of these keys.
    pub fn with_api_keys(mut self, keys: Arc<ApiKeys>) -> Proxy {
        self.api_keys = Some(keys);
        self
    }

    /// Puts requests under `limiter` (`None`: no rate limit).
    pub fn with_rate_limiter(mut self, limiter: Option<Arc<RateLimiter>>) -> Proxy {
        self.rate_limiter = limiter;
        self
    }

    /// From now on, new requests get 503 (connections are being closed by the listener).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Whether the proxy is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// The operator's view (issue 16) the admin pages read.
    pub fn overview(&self) -> &Arc<crate::overview::Overview> {
        &self.overview
    }

    /// The telemetry pipeline requests record into.
    pub fn telemetry(&self) -> &Arc<Telemetry> {
        &self.telemetry
    }

    /// Serves one request from a client at `peer` that reached us over `scheme`.
    pub async fn handle(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        peer: SocketAddr,
        scheme: &'static str,
    ) -> Result<Response<ResponseBody>, Infallible> {
        // observe
        let facts = RequestFacts::from_request(
            req.method(),
            req.uri(),
            req.version(),
            req.headers(),
            peer,
            scheme,
        );
        let mut exchange = Exchange::begin(self.telemetry.clone(), facts, req.headers());
        exchange.set_overview(self.overview.clone()); // issue 16
        let version = req.version();
        if let Some(tls) = req.extensions().get::<Arc<crate::tls::TlsInfo>>() {
            for attribute in tls.attributes() {
                exchange.set_server_attribute(attribute.clone());
            }
        }

        self.genai.remember(exchange.span_context());

        // admit, forward (the feedback endpoint is answered here, after admission)
        let mut rate = None;
        let admitted = self
            .authenticate(&mut req, &mut exchange)
            .and_then(|()| self.admit(&req));
        let outcome = match admitted {
            Ok(()) => match self.rate_limit(&req, peer, &mut exchange).await {
                Ok(decision) if self.genai.is_feedback(req.method(), req.uri().path()) => {
                    let mut response = self.feedback(req, exchange, version).await;
                    if let Some(decision) = decision {
                        decision.add_headers(response.headers_mut());
                    }
                    return Ok(response);
                }
                Ok(decision) => {
                    rate = decision;
                    self.forward(req, peer, scheme, &mut exchange).await
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };

        // respond (record happens when the response body ends)
        let mut response = match outcome {
            Ok(response) => self.respond(response, exchange, version),
            Err(error) => error_response(&error, exchange, version),
        };
        if let Some(decision) = rate {
            decision.add_headers(response.headers_mut());
        }
        Ok(response)
    }

    /// Takes the rate-limit decision and records it on the span; refuses when over the limit
    /// (unless in shadow mode).
    async fn rate_limit(
        &self,
        req: &Request<Incoming>,
        peer: SocketAddr,
        exchange: &mut Exchange,
    ) -> Result<Option<Decision>, ProxyError> {
        let Some(limiter) = &self.rate_limiter else {
            return Ok(None);
        };
        let decision = limiter
            .decide(req.headers(), req.extensions(), peer.ip())
            .await;
        for attribute in decision.span_attributes() {
            exchange.set_server_attribute(attribute);
        }
        match decision.refusal() {
            Some(refusal) => Err(refusal),
            None => Ok(Some(decision)),
        }
    }

    /// Access control: a listed API key admits the request, its name goes into the request's
    /// extensions (for rate limiting) and onto the span, and the header that carried it is
    /// removed unless `RAGSCOPE_API_KEYS_FORWARD` is on. Runs first, so a client without a
    /// key learns nothing else about the proxy or the upstream.
    fn authenticate(
        &self,
        req: &mut Request<Incoming>,
        exchange: &mut Exchange,
    ) -> Result<(), ProxyError> {
        let Some(keys) = &self.api_keys else {
            return Ok(());
        };
        match keys.check(req.headers()) {
            Ok(accepted) => {
                exchange.set_server_attribute(opentelemetry::KeyValue::new(
                    "ragscope.api_key.name",
                    accepted.name.as_str().to_owned(),
                ));
                if !self.config.api_keys_forward {
                    req.headers_mut().remove(&accepted.header);
                }
                req.extensions_mut().insert(accepted.name);
                Ok(())
            }
            Err(Refusal::Missing) => Err(ProxyError::MissingApiKey),
            Err(Refusal::Invalid) => Err(ProxyError::InvalidApiKey),
        }
    }

    /// Checks the request can be forwarded.
    ///
    /// Content-Length together with Transfer-Encoding (RFC 9112 6.1) never reaches here: hyper
    /// frames such a request by Transfer-Encoding alone and drops the Content-Length, and we
    /// strip Transfer-Encoding as hop-by-hop, so both are never forwarded.
    fn admit(&self, req: &Request<Incoming>) -> Result<(), ProxyError> {
        if self.is_draining() {
            return Err(ProxyError::Draining);
        }
        if req.version() == Version::HTTP_11 {
            // RFC 9112 3.2: exactly one Host.
            let mut hosts = req.headers().get_all(header::HOST).iter();
            match (hosts.next(), hosts.next()) {
                (None, _) => {
                    return Err(ProxyError::BadRequest(
                        "an HTTP/1.1 request needs a Host header",
                    ));
                }
                (Some(_), Some(_)) => {
                    return Err(ProxyError::BadRequest("more than one Host header"));
                }
                _ => {}
            }
        }
        if let Some(len) = declared_length(req)?
            && len > self.config.max_request_body
        {
            return Err(ProxyError::BodyTooLarge {
                limit: self.config.max_request_body,
            });
        }
        Ok(())
    }

    async fn forward(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        scheme: &'static str,
        exchange: &mut Exchange,
    ) -> Result<Response<Incoming>, ProxyError> {
        let (mut parts, body) = req.into_parts();
        let host = parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::try_from(a.as_str()).ok())
            .or_else(|| parts.headers.get(header::HOST).cloned());

        // Hop-by-hop headers go first, before any header of ours is added.
        headers::strip_hop_by_hop(&mut parts.headers, true);
        // The client sets Host from the upstream URL; the client's Host travels as
        // X-Forwarded-Host.
        parts.headers.remove(header::HOST);
        headers::add_forwarded(&mut parts.headers, peer.ip(), scheme, host.as_ref());

        let uri = self
            .config
            .upstream
            .uri_for(parts.uri.path_and_query())
            .map_err(|_| ProxyError::BadRequest("the request target cannot be forwarded"))?;
        exchange.begin_upstream(&self.upstream_attributes, &uri, &mut parts.headers);
        parts.uri = uri;
        parts.version = Version::HTTP_11;

        let observation = self.genai.observe(&parts.method, parts.uri.path());
        let tee = observation
            .as_ref()
            .and_then(|o| o.request_tee(&parts.headers));
        if let Some(o) = observation {
            exchange.set_genai(o);
        }
        let failure = Arc::new(RequestBodyFailure::default());
        let body = RequestBody::new(
            body,
            self.config.max_request_body,
            exchange.request_bytes(),
            failure.clone(),
        )
        .with_tee(tee);
        let timeout = self.config.response_timeout;
        match tokio::time::timeout(
            timeout,
            self.client.request(Request::from_parts(parts, body)),
        )
        .await
        {
            Err(_) => Err(ProxyError::UpstreamTimeout(timeout)),
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(self.classify(e, &failure)),
        }
    }

    fn classify(
        &self,
        e: hyper_util::client::legacy::Error,
        failure: &RequestBodyFailure,
    ) -> ProxyError {
        if failure.too_large() {
            return ProxyError::BodyTooLarge {
                limit: self.config.max_request_body,
            };
        }
        if failure.client_failed() {
            return ProxyError::ClientBody { detail: chain(&e) };
        }
        if e.is_connect() {
            let timed_out = std::iter::successors(std::error::Error::source(&e), |e| e.source())
                .filter_map(|e| e.downcast_ref::<std::io::Error>())
                .any(|io| io.kind() == std::io::ErrorKind::TimedOut);
            if timed_out {
                return ProxyError::UpstreamConnectTimeout(self.config.connect_timeout);
            }
            return ProxyError::UpstreamUnreachable { detail: chain(&e) };
        }
        ProxyError::UpstreamReset { detail: chain(&e) }
    }

    fn respond(
        &self,
        response: Response<Incoming>,
        mut exchange: Exchange,
        version: Version,
    ) -> Response<ResponseBody> {
        let (mut parts, body) = response.into_parts();
        // We answer in the client's HTTP version, not the upstream's.
        parts.version = version;
        headers::strip_hop_by_hop(&mut parts.headers, false);
        exchange.respond(parts.status, None);
        if let Some(genai) = exchange.genai_mut() {
            genai.response_head(&parts.headers);
        }
        if let Some(v) = exchange.traceresponse() {
            parts.headers.insert(TRACERESPONSE, v);
        }
        Response::from_parts(
            parts,
            ResponseBody::upstream(body, exchange, self.config.idle_timeout),
        )
    }
}

impl Proxy {
    /// Answers the feedback endpoint (never forwarded): 202, or 400/413 with a JSON error.
    async fn feedback(
        &self,
        req: Request<Incoming>,
        mut exchange: Exchange,
        version: Version,
    ) -> Response<ResponseBody> {
        let timeout = self.config.response_timeout;
        match crate::genai::feedback::handle(&self.genai, req.into_body(), timeout).await {
            Ok((response, feedback)) => {
                let (mut parts, bytes) = response.into_parts();
                exchange.set_server_attribute(opentelemetry::KeyValue::new(
                    "ragscope.feedback.trace_id",
                    feedback.trace_id.to_string(),
                ));
                // issue 16: feed the feedback review (moves to the record consumer on merge).
                self.overview
                    .record_feedback(crate::overview::FeedbackSample {
                        trace_id: feedback.trace_id.to_bytes(),
                        time: std::time::SystemTime::now(),
                        score: feedback.score,
                        comment: feedback
                            .comment
                            .as_deref()
                            .and_then(|c| self.genai.captured(c)),
                        label: feedback.label,
                    });
                exchange.respond(parts.status, None);
                if let Some(v) = exchange.traceresponse() {
                    parts.headers.insert(TRACERESPONSE, v);
                }
                Response::from_parts(parts, ResponseBody::local(bytes, exchange))
            }
            Err(error) => error_response(&error, exchange, version),
        }
    }
}

/// The connector to the upstream: TCP with the given connect timeout, then TLS for an https
/// upstream, verified against the system roots or `RAGSCOPE_UPSTREAM_CA`. Shared by the proxy's
/// client and the active health checks, so both trust the same certificates.
pub fn upstream_connector(
    config: &Config,
    connect_timeout: std::time::Duration,
) -> Result<Connector, ClientError> {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    http.enforce_http(false);
    http.set_keepalive(Some(std::time::Duration::from_secs(60)));

    // A private CA replaces the system roots rather than adding to them: an upstream
    // with an internal certificate should not also be trusted on a public CA's word.
    let roots = match &config.upstream_ca {
        Some(path) => crate::tls::load_ca_bundle("RAGSCOPE_UPSTREAM_CA", path)?,
        None => {
            let native = rustls_native_certs::load_native_certs();
            let mut roots = rustls::RootCertStore::empty();
            roots.add_parsable_certificates(native.certs);
            if config.upstream.scheme == http::uri::Scheme::HTTPS && roots.is_empty() {
                let why = native
                    .errors
                    .first()
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| "none installed".to_owned());
                return Err(ClientError::NoRoots(why));
            }
            roots
        }
    };
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http))
}

const TRACERESPONSE: header::HeaderName = header::HeaderName::from_static("traceresponse");

/// Turns an error into the client's response and records it on the exchange.
fn error_response(
    error: &ProxyError,
    mut exchange: Exchange,
    version: Version,
) -> Response<ResponseBody> {
    if matches!(error, ProxyError::RateLimited { .. }) {
        // Refusals are routine and can come by the thousand a second: counted, not logged.
        tracing::debug!(error_type = error.error_type(), "{error}");
    } else {
        tracing::warn!(
            origin = error.origin().as_str(),
            error_type = error.error_type(),
            detail = error.detail(),
            "{error}"
        );
    }
    let (mut parts, bytes) = error.to_response().into_parts();
    if version == Version::HTTP_2 {
        // Connection-specific headers are forbidden in HTTP/2.
        parts.headers.remove(header::CONNECTION);
    }
    exchange.respond(parts.status, Some(error.error_type()));
    if let Some(v) = exchange.traceresponse() {
        parts.headers.insert(TRACERESPONSE, v);
    }
    Response::from_parts(parts, ResponseBody::local(bytes, exchange))
}

/// The request's declared body length, if it has a valid one.
fn declared_length(req: &Request<Incoming>) -> Result<Option<u64>, ProxyError> {
    match req.headers().get(header::CONTENT_LENGTH) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(Some)
            .ok_or(ProxyError::BadRequest("invalid Content-Length")),
    }
}

/// An error and its sources on one line, for logs.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
