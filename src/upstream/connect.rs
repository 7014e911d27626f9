//! Connections to the upstream: TCP (then TLS for https, ALPN offering what the protocol
//! allows), or a Unix domain socket. One connector type for both, so the pooled client, the
//! health checks and readiness reach the upstream the same way.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpStream, UnixStream};

use super::ClientError;
use crate::settings::{Protocol, Upstream as Target};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Opens connections to one upstream (the URI the client passes is only its pool key).
#[derive(Clone, Debug)]
pub struct Connector {
    route: Route,
}

#[derive(Clone, Debug)]
enum Route {
    Tcp(HttpsConnector<HttpConnector>),
    Unix { path: Arc<Path>, timeout: Duration },
}

impl Connector {
    /// TCP with `connect_timeout`, then TLS for an https upstream, verified against the system
    /// roots or the `ca` bundle (`RAGSCOPE_UPSTREAM_CA`); or the target's Unix socket.
    pub fn new(
        target: &Target,
        protocol: Protocol,
        ca: Option<&Path>,
        connect_timeout: Duration,
    ) -> Result<Connector, ClientError> {
        if let Some(path) = &target.socket {
            return Ok(Connector {
                route: Route::Unix {
                    path: Arc::from(path.as_path()),
                    timeout: connect_timeout,
                },
            });
        }
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(connect_timeout));
        http.set_nodelay(true);
        http.enforce_http(false);
        http.set_keepalive(Some(Duration::from_secs(60)));

        // A private CA replaces the system roots rather than adding to them: an upstream
        // with an internal certificate should not also be trusted on a public CA's word.
        let roots = match ca {
            Some(path) => crate::tls::load_ca_bundle("RAGSCOPE_UPSTREAM_CA", path)?,
            None => match crate::tls::system_roots() {
                (_, Some(why)) if target.is_https() => return Err(ClientError::NoRoots(why)),
                (roots, _) => roots,
            },
        };
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        // ALPN offers exactly what may be spoken: `h2` alone, both (the server picks), or
        // HTTP/1.1 alone (h2c is never negotiated: it is spoken with prior knowledge).
        let https = match protocol {
            Protocol::H2 => builder.enable_http2().wrap_connector(http),
            Protocol::Auto => builder.enable_all_versions().wrap_connector(http),
            Protocol::Http1 | Protocol::H2c => builder.enable_http1().wrap_connector(http),
        };
        Ok(Connector {
            route: Route::Tcp(https),
        })
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = Stream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Stream, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match &mut self.route {
            Route::Tcp(https) => https.poll_ready(cx),
            Route::Unix { .. } => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        match &mut self.route {
            Route::Tcp(https) => {
                let connecting = https.call(uri);
                Box::pin(async move { connecting.await.map(Stream::Tcp) })
            }
            Route::Unix { path, timeout } => {
                let (path, timeout) = (path.clone(), *timeout);
                Box::pin(async move {
                    let stream = connect_unix(&path, timeout).await?;
                    Ok(Stream::Unix(TokioIo::new(stream)))
                })
            }
        }
    }
}

/// Connects to the Unix socket at `path` within `timeout`; the error names the socket (a
/// missing file or a refused connection says which path was tried).
async fn connect_unix(path: &Path, timeout: Duration) -> io::Result<UnixStream> {
    match tokio::time::timeout(timeout, UnixStream::connect(path)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(io::Error::new(
            e.kind(),
            format!("unix:{}: {e}", path.display()),
        )),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("unix:{}: no connection within {timeout:?}", path.display()),
        )),
    }
}

/// Whether a connection to the upstream can be opened within `timeout` (readiness without
/// active health checks): a TCP connect, or a connect to the Unix socket.
pub async fn probe(target: &Target, timeout: Duration) -> bool {
    match &target.socket {
        Some(path) => connect_unix(path, timeout).await.is_ok(),
        None => {
            let connect = TcpStream::connect((target.host.as_str(), target.port));
            matches!(tokio::time::timeout(timeout, connect).await, Ok(Ok(_)))
        }
    }
}

/// A connection to the upstream.
// The TLS state makes the TCP variant large, as it was before Unix sockets came in: a stream
// lives once per connection, inside its connection task, and boxing it would add an
// indirection to every read and write.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Stream {
    /// TCP, with TLS for an https upstream.
    Tcp(MaybeHttpsStream<TokioIo<TcpStream>>),
    /// A Unix domain socket.
    Unix(TokioIo<UnixStream>),
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        match self {
            // Carries whether ALPN agreed on h2, which the client then speaks.
            Stream::Tcp(s) => s.connected(),
            Stream::Unix(_) => Connected::new(),
        }
    }
}

impl hyper::rt::Read for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl hyper::rt::Write for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Unix(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
