//! The facts of one request/response pair, as plain data: the one seam between the parts that
//! observe traffic (the proxy, its body wrappers, GenAI/RAG reading) and telemetry, which turns
//! a finished [`Record`] into spans, metrics, the access-log line and the `/traces` entry.
//!
//! A record is owned, `Send + 'static` and holds no telemetry object, so it can be handed to
//! another thread as it is. This module imports no runtime module that records telemetry.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::{HeaderMap, Method, StatusCode, Uri, Version};
use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};

use crate::error::Origin;
use crate::genai;
use crate::limit::Decision;
use crate::limit::tokens::{BudgetAccount, Outcome};
use crate::tls::TlsInfo;

/// Longest `User-Agent` kept, in bytes (a client chooses it).
const MAX_USER_AGENT: usize = 512;
/// Longest path or redacted query kept, in bytes.
const MAX_TARGET: usize = 4096;

/// Everything known about one exchange once it is over.
#[derive(Debug)]
pub struct Record {
    /// The trace this exchange belongs to; `None` when traces are off.
    pub ids: Option<TraceIds>,
    /// When things happened.
    pub times: Times,
    /// What the request said.
    pub http: HttpFacts,
    /// The response status: the upstream's, or the one the proxy answered with.
    pub status: Option<StatusCode>,
    /// `error.type`, and whose failure it was.
    pub error: Option<ErrorFact>,
    /// How the response ended.
    pub ending: Ending,
    /// Request body bytes read from the client.
    pub request_bytes: u64,
    /// Response body bytes handed to the client.
    pub response_bytes: u64,
    /// What the TLS connection negotiated, for a request over TLS.
    pub tls: Option<Arc<TlsInfo>>,
    /// The name of the API key that admitted the request (never the key).
    pub api_key: Option<String>,
    /// The rate limiter's decision, when one was taken.
    pub rate_limit: Option<Decision>,
    /// The token budget's decision and reservation, when the request was under one; settled
    /// by [`Record::settle_tokens`] where the record is concluded.
    pub tokens: Option<BudgetAccount>,
    /// The spend budget's (`RAGSCOPE_COST_LIMIT`), likewise.
    pub cost: Option<BudgetAccount>,
    /// The upstream call, when the request was forwarded.
    pub upstream: Option<UpstreamCall>,
    /// What GenAI/RAG reading found, when the exchange carried any: filled by
    /// [`Record::conclude`] from `observation`, off the I/O path.
    pub genai: Option<genai::Facts>,
    /// The GenAI observation's copies, not yet parsed: the data path hands them on as they
    /// are, so no parse, redaction or rule runs before (or between) the frames of a response.
    pub observation: Option<genai::Observation>,
    /// Why a cancelled exchange was cancelled, when it was not the client: `shutdown` when the
    /// drain timeout closed its connection.
    pub cancelled_by: Option<&'static str>,
    /// Feedback received on the feedback endpoint.
    pub feedback: Option<genai::feedback::FeedbackFact>,
    /// The gRPC call, when the request was one.
    pub rpc: Option<crate::grpc::RpcFacts>,
    /// Where the canary rollout sent the request, when there is one.
    pub route: Option<crate::canary::Route>,
    /// The session that followed, when the upstream switched protocols (101).
    pub upgrade: Option<UpgradeFacts>,
}

/// An upgraded session (WebSocket or another `Upgrade` protocol), from the 101 to the close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeFacts {
    /// The protocol switched to (`websocket`), lower-cased and bounded.
    pub protocol: String,
    /// How it ended: `client_close`, `upstream_close`, `idle_timeout`, `drain` or `error`.
    pub ending: &'static str,
    /// Bytes copied from the client to the upstream.
    pub to_upstream: u64,
    /// Bytes copied from the upstream to the client.
    pub to_client: u64,
}

impl Record {
    /// A record for a request that just arrived.
    pub fn new(ids: Option<TraceIds>, http: HttpFacts) -> Record {
        Record {
            ids,
            times: Times::now(),
            http,
            status: None,
            error: None,
            ending: Ending::Cancelled,
            request_bytes: 0,
            response_bytes: 0,
            tls: None,
            api_key: None,
            rate_limit: None,
            tokens: None,
            cost: None,
            upstream: None,
            genai: None,
            observation: None,
            cancelled_by: None,
            feedback: None,
            rpc: None,
            route: None,
            upgrade: None,
        }
    }

    /// Parses what the GenAI observation copied into [`Record::genai`]. Runs where the record
    /// is consumed (the telemetry thread), never on the I/O path; later calls do nothing.
    pub fn conclude(&mut self) {
        if let Some(observation) = self.observation.take() {
            self.genai = observation.conclude();
        }
    }

    /// Settles the token and spend reservations (after [`Record::conclude`], which reads the
    /// usage): from the reported usage, else estimated from what was streamed. Off the I/O
    /// path; never waits (a Redis settle is sent from the runtime).
    pub fn settle_tokens(&mut self) {
        if self.tokens.is_none() && self.cost.is_none() {
            return;
        }
        let facts = self.genai.as_ref();
        let success = self
            .upstream
            .as_ref()
            .and_then(|u| u.status)
            .is_some_and(|s| s.is_success());
        let outcome = Outcome {
            input_tokens: facts.and_then(|f| f.input_tokens),
            output_tokens: facts.and_then(|f| f.output_tokens),
            content_events: facts.map_or(0, |f| f.content_events),
            streamed: facts.is_some_and(|f| f.streamed),
            response_bytes: self.response_bytes,
            success,
            cancelled: self.ending == Ending::Cancelled,
            cache_read_tokens: facts.and_then(|f| f.detail.cache_read_tokens).unwrap_or(0),
            cache_write_tokens: facts
                .and_then(|f| f.detail.cache_creation_tokens)
                .unwrap_or(0),
        };
        let ending = match self.ending {
            Ending::Complete => "complete",
            Ending::Cancelled => "cancelled",
            Ending::Failed(..) => "failed",
        };
        // The price lookup of `ragscope.genai.cost`: the response model, then the request's.
        let models = facts.map_or([None, None], |f| {
            [f.response_model.as_deref(), f.request_model.as_deref()]
        });
        let models: Vec<&str> = models.into_iter().flatten().collect();
        for account in [&mut self.tokens, &mut self.cost].into_iter().flatten() {
            account.settle(&outcome, &models, ending);
        }
    }

    /// The response status is known: the upstream's (`error` is `None`), or one the proxy
    /// answers itself with the `error.type` it stands for. For an upstream 5xx, `error.type`
    /// is the status code, as the semantic conventions advise.
    pub fn respond(&mut self, status: StatusCode, error: Option<(&'static str, Origin)>) {
        self.status = Some(status);
        self.times.response_head = Some(Instant::now());
        if error.is_none()
            && let Some(upstream) = &mut self.upstream
        {
            upstream.status = Some(status);
        }
        self.error = match error {
            Some((kind, origin)) => Some(ErrorFact {
                kind: Cow::Borrowed(kind),
                origin,
            }),
            None => status.is_server_error().then(|| ErrorFact {
                kind: Cow::Owned(status.as_u16().to_string()),
                origin: Origin::Upstream,
            }),
        };
    }

    /// A gRPC call's `grpc-status` arrived (trailers, or a trailers-only head): the first one
    /// counts. A code other than OK is the `error.type` (its name), unless the exchange
    /// already failed otherwise.
    pub fn rpc_status(&mut self, code: u8) {
        let Some(rpc) = self.rpc.as_mut().filter(|rpc| rpc.status.is_none()) else {
            return;
        };
        rpc.status = Some(code);
        if code != 0 && self.error.is_none() {
            self.error = Some(ErrorFact {
                kind: Cow::Borrowed(crate::grpc::status_name(code)),
                origin: Origin::Upstream,
            });
        }
    }

    /// The response ended; a failure mid-stream replaces any earlier `error.type`.
    pub fn end(&mut self, ending: Ending) {
        self.ending = ending;
        self.times.end = (Instant::now(), SystemTime::now());
        if let Ending::Failed(kind, origin) = ending {
            self.error = Some(ErrorFact {
                kind: Cow::Borrowed(kind),
                origin,
            });
        }
    }
}

/// The ids of the exchange's trace, chosen when the request arrives: the upstream needs
/// `traceparent` and the client `traceresponse` before anything is finished.
#[derive(Debug, Clone)]
pub struct TraceIds {
    /// The trace: the caller's, or a new one.
    pub trace_id: TraceId,
    /// The SERVER span's id.
    pub server_span_id: SpanId,
    /// The CLIENT span's id (the upstream call).
    pub client_span_id: SpanId,
    /// The caller's span, or [`SpanId::INVALID`] for a new trace.
    pub parent_span_id: SpanId,
    /// Whether the parent came from another process.
    pub parent_remote: bool,
    /// Flags as propagated (sampled bit included).
    pub flags: TraceFlags,
    /// `tracestate`, as the sampler left it.
    pub state: TraceState,
    /// Whether spans are recorded and exported.
    pub sampled: bool,
}

/// When the exchange's events happened. Monotonic times measure, wall-clock times stamp.
#[derive(Debug, Clone, Copy)]
pub struct Times {
    /// The request arrived.
    pub start: (Instant, SystemTime),
    /// The upstream call started.
    pub upstream_start: Option<(Instant, SystemTime)>,
    /// The response head was known.
    pub response_head: Option<Instant>,
    /// The first response body byte was handed on.
    pub first_byte: Option<(Instant, SystemTime)>,
    /// The response ended.
    pub end: (Instant, SystemTime),
}

impl Times {
    fn now() -> Times {
        let now = (Instant::now(), SystemTime::now());
        Times {
            start: now,
            upstream_start: None,
            response_head: None,
            first_byte: None,
            end: now,
        }
    }
}

/// An `error.type` and where the failure came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFact {
    /// Low-cardinality `error.type` (an error name, or a status code).
    pub kind: Cow<'static, str>,
    /// Whose failure it was.
    pub origin: Origin,
}

/// How the response ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The last byte was handed to the client.
    Complete,
    /// The client went away first. Not an error, per the semantic conventions.
    Cancelled,
    /// The response broke off mid-stream for this reason (`error.type`).
    Failed(&'static str, Origin),
}

/// The upstream call.
#[derive(Debug, Clone)]
pub struct UpstreamCall {
    /// The URL called, its query values redacted.
    pub url: String,
    /// The status the upstream answered with; `None` when the call failed.
    pub status: Option<StatusCode>,
    /// The HTTP version the upstream answered in.
    pub version: Option<Version>,
    /// The upstream's address.
    pub address: UpstreamAddress,
}

/// The upstream's host and port, built once: cloning shares the host string (an `Arc`), and
/// telemetry's `server.address` attribute shares it too.
#[derive(Debug, Clone)]
pub struct UpstreamAddress {
    /// The host, as configured; the socket's path for a Unix socket.
    pub host: Arc<str>,
    /// The port; `None` for a Unix socket.
    pub port: Option<u16>,
}

impl UpstreamAddress {
    /// `network.transport`: `tcp`, or `unix` for a Unix domain socket.
    pub fn transport(&self) -> &'static str {
        if self.port.is_some() { "tcp" } else { "unix" }
    }
}

/// What is known about a request when it arrives. Client-chosen strings are bounded.
#[derive(Debug, Clone)]
pub struct HttpFacts {
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

impl HttpFacts {
    /// Gathers the facts from a request's head.
    pub fn from_request(
        method: &Method,
        uri: &Uri,
        version: Version,
        headers: &HeaderMap,
        peer: SocketAddr,
        scheme: &'static str,
    ) -> HttpFacts {
        let authority = uri.authority().map(|a| a.as_str()).or_else(|| {
            headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
        });
        let server_address = authority.and_then(|a| {
            let a: http::uri::Authority = a.parse().ok()?;
            Some((a.host().to_owned(), a.port_u16()))
        });
        HttpFacts {
            method: method.clone(),
            path: bounded(uri.path(), MAX_TARGET),
            redacted_query: uri.query().map(|q| bounded(&redact_query(q), MAX_TARGET)),
            scheme,
            version,
            server_address,
            peer,
            user_agent: headers
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(|ua| bounded(ua, MAX_USER_AGENT)),
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

/// `uri` with its query values redacted, for `url.full`.
pub fn redacted_url(uri: &Uri) -> String {
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

/// `s` cut to at most `max` bytes, on a character boundary (the one cut GenAI fields use too).
fn bounded(s: &str, max: usize) -> String {
    genai::inference::cut(s, max).to_owned()
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
    fn client_strings_are_bounded_on_char_boundaries() {
        assert_eq!(bounded("abc", 5), "abc");
        assert_eq!(bounded("abcdef", 3), "abc");
        assert_eq!(bounded("aé", 2), "a");
    }

    #[test]
    fn record_is_send_and_static() {
        fn check<T: Send + 'static>() {}
        check::<Record>();
    }
}
