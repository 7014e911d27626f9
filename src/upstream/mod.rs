//! The upstream side: one [`Upstream`] is an address and the pooled client that reaches it,
//! built from [`Settings`] (target, protocol, CA, connect timeout). It opens connections
//! ([`connect`]: TCP, TLS with ALPN, or a Unix socket), speaks HTTP/1.1 or HTTP/2 as
//! `RAGSCOPE_UPSTREAM_PROTOCOL` says, and sends requests; what to send and what the answer
//! means stay with the proxy.
//!
//! The client is kept per worker thread ([`crate::workers`]): a request's upstream connection
//! task then runs on the thread that serves the request, never waking another core. With
//! HTTP/2 each worker multiplexes its requests over its own connection.

mod connect;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Uri};
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioTimer};

pub use connect::{Connector, Stream, probe};

use crate::observe::UpstreamAddress;
use crate::settings::{Config, Protocol, Upstream as Target};
use crate::workers::PerWorker;

/// How long an idle upstream connection is kept for reuse.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Idle HTTP/1.1 connections a worker keeps to one upstream; more are closed when their
/// request ends. Without a cap, a burst of 500 concurrent first requests left ~530
/// connections idle for [`IDLE_TIMEOUT`]. 128 per worker is twice what a worker carries at
/// wrk's 64 connections over 2 workers, so steady keep-alive traffic does not churn; it is
/// the same order as nginx's `keepalive` (connections kept per worker, 64 in load.sh).
const MAX_IDLE_PER_WORKER: usize = 128;

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

/// What an upstream is built from.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where it is (`RAGSCOPE_UPSTREAM`).
    pub target: Target,
    /// What is spoken to it (`RAGSCOPE_UPSTREAM_PROTOCOL`).
    pub protocol: Protocol,
    /// The CA bundle an https upstream is verified against (`RAGSCOPE_UPSTREAM_CA`).
    pub ca: Option<PathBuf>,
    /// TCP/TLS (or Unix socket) connect timeout.
    pub connect_timeout: Duration,
}

impl Settings {
    /// The proxy's upstream, as configured.
    pub fn from_config(config: &Config) -> Settings {
        Settings {
            target: config.upstream.clone(),
            protocol: config.upstream_protocol,
            ca: config.upstream_ca.clone(),
            connect_timeout: config.connect_timeout,
        }
    }

    /// Another upstream (the canary) reached the way the proxy's is: same protocol, CA and
    /// connect timeout.
    pub fn for_target(config: &Config, target: Target) -> Settings {
        Settings {
            target,
            ..Settings::from_config(config)
        }
    }
}

/// Which HTTP version requests travel in, as far as is known before connecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// HTTP/1.1 only.
    Http1,
    /// HTTP/2 only (h2c with prior knowledge, or h2 required by ALPN).
    Http2,
    /// Whatever ALPN agrees on per connection.
    Negotiated,
}

/// One upstream: its address and the pooled client (one per worker) that reaches it, sending
/// request bodies of type `B`.
#[derive(Debug)]
pub struct Upstream<B> {
    target: Target,
    address: UpstreamAddress,
    wire: Wire,
    clients: PerWorker<Client<Connector, B>>,
}

impl<B> Upstream<B>
where
    B: http_body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// Builds the connector and one pooled client per worker (`workers` + 1 for the threads
    /// that are not workers).
    pub fn new(settings: &Settings, workers: usize) -> Result<Upstream<B>, ClientError> {
        let connector = Connector::new(
            &settings.target,
            settings.protocol,
            settings.ca.as_deref(),
            settings.connect_timeout,
        )?;
        let wire = match settings.protocol {
            Protocol::Http1 => Wire::Http1,
            Protocol::H2c | Protocol::H2 => Wire::Http2,
            Protocol::Auto if settings.target.is_https() => Wire::Negotiated,
            Protocol::Auto => Wire::Http1,
        };
        let clients = PerWorker::new(workers, |_| {
            Ok::<_, ClientError>(
                Client::builder(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .pool_timer(TokioTimer::new())
                    .pool_idle_timeout(IDLE_TIMEOUT)
                    .pool_max_idle_per_host(MAX_IDLE_PER_WORKER)
                    .http2_only(wire == Wire::Http2)
                    // Finds a dead HTTP/2 connection under long-lived streams; idle ones are
                    // closed by the pool timeout instead.
                    .http2_keep_alive_interval(Duration::from_secs(30))
                    .http2_keep_alive_timeout(Duration::from_secs(20))
                    .build(connector.clone()),
            )
        })?;
        let address = match &settings.target.socket {
            Some(path) => UpstreamAddress {
                host: Arc::from(path.display().to_string()),
                port: None,
            },
            None => UpstreamAddress {
                host: Arc::from(settings.target.host.as_str()),
                port: Some(settings.target.port),
            },
        };
        Ok(Upstream {
            target: settings.target.clone(),
            address,
            wire,
            clients,
        })
    }

    /// Sends `req` (its URI made by [`Upstream::uri_for`]) over the calling thread's pool.
    pub fn send(&self, req: Request<B>) -> ResponseFuture {
        self.clients.get().request(req)
    }
}

impl<B> Upstream<B> {
    /// Where the upstream is, for telemetry (`server.address`, `server.port`, transport).
    pub fn address(&self) -> &UpstreamAddress {
        &self.address
    }

    /// The upstream as configured (`http://host:port`, `unix:/path`).
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Which HTTP version requests travel in.
    pub fn wire(&self) -> Wire {
        self.wire
    }

    /// The Host (HTTP/1.1) or `:authority` (HTTP/2) the upstream sees.
    pub fn authority(&self) -> &http::uri::Authority {
        &self.target.authority
    }

    /// The upstream URL for a request's path and query.
    pub fn uri_for(
        &self,
        path_and_query: Option<&http::uri::PathAndQuery>,
    ) -> Result<Uri, http::Error> {
        self.target.uri_for(path_and_query)
    }
}
