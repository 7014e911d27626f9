//! The client-facing listener: accepts TCP connections (capped), optionally terminates TLS
//! ([`crate::tls`]: HTTP/2 when ALPN says `h2`), serves HTTP/1.1 and HTTP/2 (prior knowledge
//! in cleartext) on one port with production limits, and drains on shutdown. HTTP/1.1
//! connections may be upgraded (WebSocket): the session then runs on in the connection's task
//! ([`crate::proxy::SessionSlot`]), so it is drained and counted like the connection it is.
//!
//! Failures that happen before a request exists (malformed or oversized headers that hyper
//! answers itself, header read timeouts, resets, failed TLS handshakes) have no request span:
//! they are counted in `ragscope.connection.errors` and logged here. A failed handshake costs
//! only its own connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use opentelemetry::KeyValue;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;

use crate::proxy::{Proxy, SessionSlot};
use crate::settings::Config;
use crate::tls::ListenerTls;

mod http1;

/// hyper's connection builders, each with every limit set on purpose.
struct Builders {
    h1: hyper::server::conn::http1::Builder,
    h2: hyper::server::conn::http2::Builder<TokioExecutor>,
}

fn connection_builders(config: &Config) -> Builders {
    let mut h1 = hyper::server::conn::http1::Builder::new();
    h1
        // Without a timer hyper silently has no header timeout (slowloris). This one also
        // tells the connection loop when hyper waits idle for a request (see http1.rs).
        .timer(http1::HeadTimer::new(http1::IDLE_GRACE))
        .header_read_timeout(config.header_read_timeout)
        // The read buffer starts at hyper's 8 KiB (enough for a typical request head and the
        // start of its body) and may grow up to the header limit, not hyper's ~400 KiB: a
        // request head cannot be larger, and body bytes leave the buffer frame by frame.
        .max_buf_size(config.max_header_bytes)
        .max_headers(config.max_headers)
        .keep_alive(true);
    let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_concurrent_streams(config.h2_max_concurrent_streams)
        .max_header_list_size(config.max_header_bytes as u32)
        // Envoy's edge values: 64 KiB per stream, 1 MiB per connection. Flow control keeps a
        // slow reader from making us buffer a fast upstream's stream.
        .initial_stream_window_size(64 * 1024)
        .initial_connection_window_size(1024 * 1024)
        .max_send_buf_size(256 * 1024)
        // Rapid-reset protection (CVE-2023-44487), kept at hyper's defaults on purpose.
        .max_pending_accept_reset_streams(20)
        .max_local_error_reset_streams(1024)
        // Finds dead peers of long idle streams.
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20));
    Builders { h1, h2 }
}

/// Accepts and serves connections until `shutdown` turns true, then stops accepting at once
/// and lets open connections finish for up to the drain timeout. Each worker runs one of these
/// on its own listener; `permits` (`RAGSCOPE_MAX_CONNECTIONS`) is shared by all of them.
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    config: Arc<Config>,
    tls: Option<Arc<ListenerTls>>,
    permits: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
) {
    let builders = Arc::new(connection_builders(&config));
    let instruments = proxy.telemetry().instruments().clone();
    // Every connection task of this worker, so the drain timeout can close them (issue 11).
    let mut connections = JoinSet::new();

    loop {
        // Accept first, then wait for a place: with one listener per worker, a worker holding
        // a place while idle in accept() could keep it from the worker whose backlog has the
        // next client. At the cap each worker holds at most this one accepted connection
        // unserved and stops accepting; further clients wait in the kernel's backlog.
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            // Finished connections leave the set, so it holds only open ones.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            _ = stopped(&mut shutdown) => break,
        };
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = stopped(&mut shutdown) => break,
        };
        let _ = stream.set_nodelay(true);
        let conn = Accepted {
            peer,
            proxy: proxy.clone(),
            builders: builders.clone(),
            first_byte: config.header_read_timeout,
            shutdown: shutdown.clone(),
            // Also released when the drain timeout aborts the task.
            open: OpenConnection::new(instruments.clone(), permit),
        };
        // Two task types rather than one holding both paths: a task is allocated at the size
        // of its largest state, and a cleartext connection must not pay for a TLS session.
        match &tls {
            None => connections.spawn(conn.serve(stream, "http", None)),
            Some(tls) => connections.spawn(conn.serve_tls(stream, tls.clone())),
        };
    }
    // Dropping the listener closes the socket: new connections are refused from here on.
    drop(listener);
    tracing::info!(timeout = ?config.drain_timeout, "draining open connections");
    // Each connection saw the signal and closes once its requests are answered (an upgraded
    // session runs on until it closes or the drain timeout).
    let drained = tokio::time::timeout(config.drain_timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    match drained {
        Ok(()) => tracing::info!("all connections drained"),
        Err(_) => {
            tracing::warn!(
                open = connections.len(),
                "drain timeout reached; closing the remaining connections, their requests are recorded as cancelled by shutdown"
            );
            // Before the aborts: the exchanges dropped with them read it.
            crate::workers::start_closing();
            connections.abort_all();
        }
    }
    // Aborted tasks are dropped (and their exchanges recorded) as this worker polls them;
    // connections still in their TLS handshake end within its own timeout.
    while connections.join_next().await.is_some() {}
}

/// An open client connection: counted in `ragscope.connections.active` and holding its place
/// under `RAGSCOPE_MAX_CONNECTIONS` until its task ends, however it ends.
struct OpenConnection {
    instruments: crate::telemetry::Instruments,
    _permit: OwnedSemaphorePermit,
}

impl OpenConnection {
    fn new(instruments: crate::telemetry::Instruments, permit: OwnedSemaphorePermit) -> Self {
        instruments.connections_active.add(1, &[]);
        OpenConnection {
            instruments,
            _permit: permit,
        }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.instruments.connections_active.add(-1, &[]);
    }
}

/// An accepted connection's context. Nothing in it is per request, and none of hyper's
/// buffers exist yet: they are created when the connection's first bytes arrive.
struct Accepted {
    peer: SocketAddr,
    proxy: Arc<Proxy>,
    builders: Arc<Builders>,
    /// How long a new connection may stay silent (the header read timeout).
    first_byte: Duration,
    /// Turns true when the server drains: the connection then closes once idle.
    shutdown: watch::Receiver<bool>,
    /// Counted as open and holding its place under `RAGSCOPE_MAX_CONNECTIONS` until it closes.
    open: OpenConnection,
}

impl Accepted {
    /// Serves a TLS connection: the handshake runs here, in the connection's own task, so a
    /// slow or hostile client never holds up the accept loop.
    async fn serve_tls(self, stream: TcpStream, tls: Arc<ListenerTls>) {
        match tls.accept(stream).await {
            Ok((stream, info)) => self.serve(stream, "https", Some(Arc::new(info))).await,
            Err(e) => record_handshake_error(&e, self.peer, &self.open.instruments),
        }
    }

    /// Serves HTTP on `io` (HTTP/2 when it starts with the HTTP/2 preface: prior knowledge in
    /// cleartext, ALPN `h2` over TLS; HTTP/1.1 otherwise) until the connection closes (or,
    /// draining, once it is idle), then runs the session a request of it was upgraded to.
    async fn serve<I>(
        mut self,
        mut io: I,
        scheme: &'static str,
        tls: Option<Arc<crate::tls::TlsInfo>>,
    ) where
        I: tokio::io::AsyncRead
            + tokio::io::AsyncWrite
            + http1::WaitReadable
            + Unpin
            + Send
            + 'static,
    {
        // hyper allocates its read and write buffers (8 KiB each) and its header timer as soon
        // as it starts on a connection; a client that connects ahead of need (a pre-warmed
        // pool) holds none of that until it sends something. The wait is bounded by the
        // header read timeout, so a silent connection is closed as hyper would close it.
        let instruments = self.open.instruments.clone();
        let (h2, prefix) = match http1::sniff(&mut io, self.first_byte, &mut self.shutdown).await {
            Ok(Some(sniffed)) => sniffed,
            Ok(None) => return,
            Err(after) => {
                let e = Silent::First(after);
                return record_connection_error(e.error_type(), &e, self.peer, &instruments);
            }
        };
        let io = http1::ConnIo::new(io, prefix);
        let (peer, proxy) = (self.peer, self.proxy.clone());
        let slot = Arc::new(SessionSlot::default());
        let lent = slot.clone();
        let service = service_fn(move |mut req: hyper::Request<_>| {
            if let Some(info) = &tls {
                req.extensions_mut().insert(info.clone());
            }
            SessionSlot::lend(&lent, &mut req);
            proxy.clone().handle(req, peer, scheme)
        });
        let result = if h2 {
            // Boxed: an HTTP/2 connection's state is large, and HTTP/1 tasks must not carry it.
            let mut served = Box::pin(self.builders.h2.serve_connection(TokioIo::new(io), service));
            tokio::select! {
                result = served.as_mut() => result,
                () = stopped(&mut self.shutdown) => {
                    served.as_mut().graceful_shutdown();
                    served.await
                }
            }
        } else {
            match http1::serve(&self.builders.h1, io, service, &mut self.shutdown).await {
                http1::Ended::Served(result) => result,
                http1::Ended::IdleTimeout => {
                    let e = Silent::Idle(self.first_byte);
                    record_connection_error(e.error_type(), &e, peer, &instruments);
                    Ok(())
                }
            }
        };
        if let Err(e) = result {
            record_connection_error(connection_error_type(&e), &e, peer, &instruments);
        }
        if let Some(session) = slot.take() {
            session.await;
        }
    }
}

/// A connection that sent nothing within the header read timeout.
#[derive(Debug, thiserror::Error)]
enum Silent {
    #[error("no request within {0:?} of connecting")]
    First(Duration),
    #[error("no request within {0:?} of the previous response")]
    Idle(Duration),
}

impl Silent {
    /// The same `error.type` as hyper's own header read timeout.
    fn error_type(&self) -> &'static str {
        "header_read_timeout"
    }
}

/// The `error.type` of a connection that ended in an error.
fn connection_error_type(e: &hyper::Error) -> &'static str {
    match e {
        e if e.is_parse_too_large() => "request_header_too_large",
        e if e.is_parse() || e.is_parse_status() => "malformed_request",
        e if e.is_timeout() => "header_read_timeout",
        e if e.is_incomplete_message() => "incomplete_request",
        e if e.is_canceled() || e.is_closed() => "closed",
        e if e.is_user() => "response_error",
        _ => "io",
    }
}

/// Records a connection that ended in an error.
fn record_connection_error(
    kind: &'static str,
    error: &dyn std::error::Error,
    peer: SocketAddr,
    instruments: &crate::telemetry::Instruments,
) {
    instruments
        .connection_errors
        .add(1, &[KeyValue::new("error.type", kind)]);
    match kind {
        // Peers closing or resetting is routine on the internet; keep it out of info logs.
        "io" | "closed" | "incomplete_request" => {
            tracing::debug!(target: "ragscope::connection", client = %peer.ip(), error_type = kind, error = %error, "connection error")
        }
        _ => {
            tracing::info!(target: "ragscope::connection", client = %peer.ip(), error_type = kind, error = %error, "connection error")
        }
    }
}

/// Records a failed TLS handshake.
fn record_handshake_error(
    error: &crate::tls::HandshakeError,
    peer: SocketAddr,
    instruments: &crate::telemetry::Instruments,
) {
    let kind = error.error_type();
    instruments
        .connection_errors
        .add(1, &[KeyValue::new("error.type", kind)]);
    if error.is_routine() {
        // A peer that connects and leaves (a TCP health probe) is not worth an info line.
        tracing::debug!(target: "ragscope::connection", client = %peer.ip(), error_type = kind, error = %error, "TLS handshake failed");
    } else {
        tracing::info!(target: "ragscope::connection", client = %peer.ip(), error_type = kind, error = %error, "TLS handshake failed");
    }
}

/// Resolves once shutdown has been asked for (or its sender is gone).
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}
