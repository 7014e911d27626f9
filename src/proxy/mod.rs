//! The proxy: one request walks four phases in a fixed order.
//!
//! 1. **observe** — the [`Exchange`] (the request's observers) starts first, so every request
//!    (even one refused at once) has a record: a span, metrics and a log line.
//! 2. **admit** — refuse what must not be forwarded: a missing or unknown API key (access
//!    control, which also names the client for later checks), draining, malformed framing, a
//!    declared body over the limit; then the rate limit ([`crate::limit`]), keyed by what
//!    access control learned, whose headers go on every response; then, for a recognised LLM
//!    request under `RAGSCOPE_TOKEN_LIMIT`, the token budget ([`crate::limit::tokens`]), which
//!    reads the body's head first ([`buffered`]) to estimate the request's cost.
//! 3. **forward** — choose the upstream (stable, or the canary as [`crate::canary`] assigns
//!    the client), strip hop-by-hop headers, then add ours (forwarded-for, trace context), and
//!    send the request to the [`crate::upstream`] (call.rs: the send, the response timeout, what a
//!    failure was), the body streaming behind it. A gRPC call needs HTTP/2 to the upstream.
//! 4. **respond** — strip the response's hop-by-hop headers and stream its body back frame by
//!    frame (the feedback endpoint answers locally instead of forwarding).
//! 5. **record** — the body wrapper finishes the exchange when the last byte leaves (or the
//!    client goes away): the observers conclude and telemetry records the [`crate::observe::Record`].
//!
//! An error in any phase becomes a response in exactly one place, [`ProxyError::to_response`].

mod body;
pub mod buffered;
mod call;
mod exchange;
mod headers;
mod respond;
mod route;
pub mod stream_usage;
mod tokens;
mod upgrade;
mod websocket;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, Version, header};
use hyper::body::Incoming;

use crate::auth::{ApiKeys, Refusal};
use crate::error::ProxyError;
use crate::genai::GenAi;
use crate::limit::tokens::BudgetLimiter;
use crate::limit::{Decision, RateLimiter};
use crate::observe::HttpFacts;
use crate::settings::Config;
use crate::telemetry::Telemetry;
use crate::upstream::{ClientError, Wire};

pub use body::{BodyError, RequestBody, ResponseBody, Upload};
pub use exchange::Exchange;
use respond::{Answer, error_response, finish_head};
pub use route::{CanaryRoute, Reclaim};
pub use upgrade::SessionSlot;

/// The upstream requests are forwarded to, sending the client's body as it streams.
pub type Upstream = crate::upstream::Upstream<RequestBody>;

/// Shared state of the proxy: configuration, the upstream client, telemetry.
#[derive(Debug)]
pub struct Proxy {
    config: Arc<Config>,
    /// The stable upstream (`RAGSCOPE_UPSTREAM`).
    upstream: Upstream,
    /// The canary upstream and the rollout, when `RAGSCOPE_UPSTREAM_CANARY` is set.
    canary: Option<CanaryRoute>,
    telemetry: Arc<Telemetry>,
    draining: AtomicBool,
    /// Access control, when `RAGSCOPE_API_KEYS_FILE` is set.
    api_keys: Option<Arc<ApiKeys>>,
    rate_limiter: Option<Arc<RateLimiter>>,
    /// Token budgets, when `RAGSCOPE_TOKEN_LIMIT` is set.
    token_limiter: Option<Arc<BudgetLimiter>>,
    /// Spend budgets, when `RAGSCOPE_COST_LIMIT` is set.
    cost_limiter: Option<Arc<BudgetLimiter>>,
    genai: Arc<GenAi>,
}

/// What admission lets through: the decisions whose headers go on the response, and the
/// request body's head when admission had to read it (forwarded ahead of the rest).
#[derive(Debug, Default)]
struct Admitted {
    rate: Option<Decision>,
    budgets: tokens::Budgets,
    head: Option<buffered::Buffered>,
}

impl Proxy {
    /// Builds the proxy and its pooled upstream client.
    pub fn new(config: Arc<Config>, telemetry: Arc<Telemetry>) -> Result<Proxy, ClientError> {
        let settings = crate::upstream::Settings::from_config(&config);
        let upstream = Upstream::new(&settings, config.workers)?;
        let genai = Arc::new(GenAi::new(config.genai.clone()));
        genai.budget().register(&telemetry.meter());
        Ok(Proxy {
            genai,
            config,
            upstream,
            canary: None,
            telemetry,
            draining: AtomicBool::new(false),
            api_keys: None,
            rate_limiter: None,
            token_limiter: None,
            cost_limiter: None,
        })
    }

    /// Turns access control on: every request must carry one of these keys.
    pub fn with_api_keys(mut self, keys: Arc<ApiKeys>) -> Proxy {
        self.api_keys = Some(keys);
        self
    }

    /// Splits traffic between stable and the canary upstream (`RAGSCOPE_UPSTREAM_CANARY`) as
    /// `canary` decides.
    pub fn with_canary(mut self, canary: Arc<crate::canary::Canary>) -> Result<Proxy, ClientError> {
        let settings =
            crate::upstream::Settings::for_target(&self.config, canary.settings().upstream.clone());
        let target = crate::upstream::Upstream::new(&settings, self.config.workers)?;
        self.canary = Some(CanaryRoute { canary, target });
        Ok(self)
    }

    /// Puts requests under `limiter` (`None`: no rate limit).
    pub fn with_rate_limiter(mut self, limiter: Option<Arc<RateLimiter>>) -> Proxy {
        self.rate_limiter = limiter;
        self
    }

    /// Puts recognised LLM requests under token budgets (`None`: no token limit).
    pub fn with_token_limiter(mut self, limiter: Option<Arc<BudgetLimiter>>) -> Proxy {
        self.token_limiter = limiter;
        self
    }

    /// Puts recognised LLM requests under spend budgets (`None`: no cost limit).
    pub fn with_cost_limiter(mut self, limiter: Option<Arc<BudgetLimiter>>) -> Proxy {
        self.cost_limiter = limiter;
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
        let mut exchange = self.observe(&req, peer, scheme);
        let version = req.version();
        // An early answer leaves a declared body unread; on HTTP/1 the connection then cannot
        // carry another request, so the answer must say `Connection: close` (hyper closes it).
        let unread_body = version != Version::HTTP_2 && declares_body(&req);
        let admitted = self.admit(&mut req, peer, &mut exchange).await;
        let body_left_unread = unread_body && admitted.is_err();
        let mut pending = None;
        if admitted.is_ok() {
            self.remember(&mut exchange);
            pending = upgrade::Pending::take(&mut req);
        }
        let (decisions, outcome) = match admitted {
            Ok(admitted) if self.genai.is_feedback(req.method(), req.uri().path()) => (
                admitted,
                self.feedback(req, &mut exchange).await.map(Answer::Local),
            ),
            Ok(mut admitted) => {
                let head = admitted.head.take();
                let forwarded = self
                    .forward(req, head, peer, scheme, &mut exchange, pending.as_ref())
                    .await;
                (admitted, forwarded.map(Answer::Upstream))
            }
            Err(e) => (Admitted::default(), Err(e)),
        };
        let mut response = match outcome {
            Ok(answer) => self.respond(answer, exchange, version, pending),
            Err(error) => {
                let mut response = error_response(&error, exchange, version);
                if body_left_unread {
                    response
                        .headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                response
            }
        };
        if let Some(decision) = decisions.rate {
            decision.add_headers(response.headers_mut());
        }
        decisions.budgets.add_headers(response.headers_mut());
        Ok(response)
    }

    /// observe: the request's observers start, with the facts of its head and connection.
    fn observe(&self, req: &Request<Incoming>, peer: SocketAddr, scheme: &'static str) -> Exchange {
        let http = HttpFacts::from_request(
            req.method(),
            req.uri(),
            req.version(),
            req.headers(),
            peer,
            scheme,
        );
        let mut exchange = Exchange::begin(self.telemetry.clone(), http, req.headers());
        if let Some(record) = exchange.record() {
            record.tls = req.extensions().get::<Arc<crate::tls::TlsInfo>>().cloned();
            record.rpc = crate::grpc::RpcFacts::from_request(req.headers(), req.uri().path());
        }
        exchange
    }

    /// The feedback join remembers the trace of an admitted request only: a client refused by
    /// access control or the rate limit cannot evict remembered traces.
    fn remember(&self, exchange: &mut Exchange) {
        if let Some(ids) = exchange
            .record()
            .and_then(|record| record.ids.as_ref())
            .filter(|ids| ids.sampled)
        {
            self.genai.remember(ids.trace_id, ids.server_span_id);
        }
    }

    /// admit: access control, the request's framing, the rate limit, then the token budget.
    /// The decisions (for the response's headers) come back when the request may go on.
    async fn admit(
        &self,
        req: &mut Request<Incoming>,
        peer: SocketAddr,
        exchange: &mut Exchange,
    ) -> Result<Admitted, ProxyError> {
        self.authenticate(req, exchange)?;
        self.check(req)?;
        let rate = self.rate_limit(req, peer, exchange).await?;
        let (budgets, head) = self.token_budget(req, peer, exchange).await?;
        Ok(Admitted {
            rate,
            budgets,
            head,
        })
    }

    /// Takes the rate-limit decision and notes it in the record; refuses when over the limit
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
        if let Some(record) = exchange.record() {
            record.rate_limit = Some(decision);
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
                if let Some(record) = exchange.record() {
                    record.api_key = Some(accepted.name.as_str().to_owned());
                }
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
    fn check(&self, req: &Request<Incoming>) -> Result<(), ProxyError> {
        if self.is_draining() {
            return Err(ProxyError::Draining);
        }
        if req.method() == http::Method::CONNECT {
            return Err(ProxyError::UnsupportedProtocol("CONNECT tunnels"));
        }
        if upgrade::asks_upgrade(req) && req.extensions().get::<Arc<SessionSlot>>().is_none() {
            // A connection that cannot run a session (none was lent to the request).
            return Err(ProxyError::UnsupportedProtocol(
                "protocol upgrades (Upgrade) on this connection",
            ));
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
        head: Option<buffered::Buffered>,
        peer: SocketAddr,
        scheme: &'static str,
        exchange: &mut Exchange,
        upgrade: Option<&upgrade::Pending>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let route = self.route(&req, peer, exchange);
        let (mut parts, mut body) = req.into_parts();
        let (head, injected) = self.inject_usage(&mut parts, &mut body, head).await?;
        let host = parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::try_from(a.as_str()).ok())
            .or_else(|| parts.headers.get(header::HOST).cloned());

        // Hop-by-hop headers go first, before any header of ours is added.
        headers::strip_hop_by_hop(&mut parts.headers, true);
        if let Some(upgrade) = upgrade {
            upgrade.restore(&mut parts.headers);
        }
        // The client sets Host from the upstream URL; the client's Host travels as
        // X-Forwarded-Host.
        parts.headers.remove(header::HOST);
        headers::add_forwarded(&mut parts.headers, peer.ip(), scheme, host.as_ref());

        let (target, address, wire) = self.target_of(route.as_ref());
        let uri = target
            .uri_for(parts.uri.path_and_query())
            .map_err(|_| ProxyError::BadRequest("the request target cannot be forwarded"))?;
        let grpc = exchange.is_grpc();
        if grpc && wire == Wire::Http1 {
            return Err(ProxyError::GrpcNeedsHttp2);
        }
        // `Upgrade` is an HTTP/1.1 mechanism: an upstream spoken to in HTTP/2 cannot take it
        // (extended CONNECT is off), so it is refused rather than sent as a plain request.
        if upgrade.is_some() && wire == Wire::Http2 {
            return Err(ProxyError::UnsupportedProtocol(
                "upgrades to an upstream spoken to in HTTP/2 (RAGSCOPE_UPSTREAM_PROTOCOL)",
            ));
        }
        exchange.begin_upstream(address, &uri, &mut parts.headers);
        parts.uri = uri;
        // A gRPC call must not go out over an HTTP/1.1 connection that ALPN chose: asking for
        // HTTP/2 makes the client refuse such a connection instead of mangling the call.
        parts.version = if grpc {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };

        // gRPC bodies are protobuf frames, never a GenAI API's JSON: not parsed.
        let mut observation = if grpc {
            None
        } else {
            self.genai.observe(&parts.method, parts.uri.path())
        };
        let tee = observation
            .as_mut()
            .and_then(|o| o.request_tee(&parts.headers));
        if let Some(o) = observation {
            exchange.set_genai(o);
        }
        let upload = Arc::new(Upload::default());
        let body = RequestBody::new(
            body,
            head,
            self.config.max_request_body,
            self.config.request_body_timeout,
            exchange.request_bytes(),
            upload.clone(),
        )
        .with_tee(tee);
        let request = Request::from_parts(parts, body);
        let mut response = self
            .call(request, &upload, grpc, wire, route.as_ref(), exchange)
            .await?;
        if injected {
            response
                .extensions_mut()
                .insert(stream_usage::UsageInjected);
        }
        Ok(response)
    }

    /// respond: the upstream's response streamed back, or the proxy's own answer.
    fn respond(
        &self,
        answer: Answer,
        mut exchange: Exchange,
        version: Version,
        upgrade: Option<upgrade::Pending>,
    ) -> Response<ResponseBody> {
        match answer {
            Answer::Upstream(response)
                if response.status() == http::StatusCode::SWITCHING_PROTOCOLS
                    && let Some(upgrade) = upgrade =>
            {
                let idle = self.config.idle_timeout;
                upgrade.switch(response, exchange, self.telemetry.instruments(), idle)
            }
            Answer::Upstream(response) => {
                let (mut parts, body) = response.into_parts();
                headers::strip_hop_by_hop(&mut parts.headers, false);
                finish_head(&mut parts, &mut exchange, None);
                // After the status: a trailers-only gRPC status refines its outcome.
                exchange.upstream_head(parts.version, &parts.headers);
                // We answer in the client's HTTP version, not the upstream's.
                parts.version = version;
                if let Some(genai) = exchange.genai_mut() {
                    genai.response_head(&parts.headers);
                }
                let filter = stream_usage::filter_for(&mut parts, self.genai.config());
                let body = ResponseBody::upstream(body, exchange, self.config.idle_timeout);
                let body = match filter {
                    Some(filter) => body.with_filter(filter),
                    None => body,
                };
                Response::from_parts(parts, body)
            }
            Answer::Local(response) => {
                let (mut parts, bytes) = response.into_parts();
                finish_head(&mut parts, &mut exchange, None);
                Response::from_parts(parts, ResponseBody::local(bytes, exchange))
            }
        }
    }

    /// The feedback endpoint (never forwarded): 202 with the feedback noted in the record,
    /// or the error (400/413) that becomes the response.
    async fn feedback(
        &self,
        req: Request<Incoming>,
        exchange: &mut Exchange,
    ) -> Result<Response<Bytes>, ProxyError> {
        let timeout = self.config.request_body_timeout;
        let (response, fact) =
            crate::genai::feedback::handle(&self.genai, req.into_body(), timeout).await?;
        if let Some(record) = exchange.record() {
            record.feedback = Some(fact);
        }
        Ok(response)
    }
}

/// Whether the request has a body still to come (declared by length or chunked framing).
fn declares_body(req: &Request<Incoming>) -> bool {
    !http_body::Body::is_end_stream(req.body())
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
