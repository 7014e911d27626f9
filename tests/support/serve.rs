//! The accept loop shared by the test servers: HTTP/1.1 and cleartext HTTP/2
//! (prior knowledge) on one loopback port, with per-connection accounting.

#![allow(dead_code)]

use std::convert::Infallible;
use std::error::Error as StdError;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// Connection counters of one server.
#[derive(Debug, Default)]
pub(crate) struct ConnStats {
    accepted: AtomicUsize,
    closed: AtomicUsize,
}

impl ConnStats {
    /// TCP connections accepted so far.
    pub(crate) fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Connections whose HTTP serving finished (cleanly or with an error).
    pub(crate) fn closed(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }
}

/// Binds a listener on `127.0.0.1:0` and returns it with its address.
pub(crate) async fn bind_loopback() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback test listener");
    let addr = listener
        .local_addr()
        .expect("read the test listener's local address");
    (listener, addr)
}

/// Spawns the accept loop serving `handler` on `listener`.
///
/// Each connection is served by hyper-util's auto builder (HTTP/1.1, or HTTP/2
/// when the client opens with the h2 preface) in a task owned by the loop's
/// [`JoinSet`]: aborting the returned handle drops the set and with it every
/// open connection.
pub(crate) fn spawn_http_server<H, Fut, B>(
    listener: TcpListener,
    stats: Arc<ConnStats>,
    handler: H,
) -> JoinHandle<()>
where
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    tokio::spawn(async move {
        let builder = auto::Builder::new(TokioExecutor::new());
        let mut connections = JoinSet::new();
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _peer)) => stream,
                Err(_) => {
                    // Transient (e.g. EMFILE): back off and keep serving.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            // Reap finished connection tasks so the set does not grow forever.
            while connections.try_join_next().is_some() {}
            stats.accepted.fetch_add(1, Ordering::SeqCst);
            // Best effort: small frames (SSE events) should leave immediately.
            let _ = stream.set_nodelay(true);

            let builder = builder.clone();
            let stats = Arc::clone(&stats);
            let handler = handler.clone();
            connections.spawn(async move {
                let service = service_fn(move |req| {
                    let response = handler(req);
                    async move { Ok::<_, Infallible>(response.await) }
                });
                // Errors (peer resets, aborted streams) are part of what the
                // tests provoke; the close is what gets counted.
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                stats.closed.fetch_add(1, Ordering::SeqCst);
            });
        }
    })
}
