//! Protocol upgrades (RFC 9110 7.8: WebSocket, and any other `Upgrade` token) passed through.
//!
//! The upgrade request is admitted and forwarded like any other, its `Upgrade` and
//! `Connection: upgrade` kept. When the upstream answers 101, the client gets the 101 and both
//! connections are joined: bytes are copied both ways as they come until either side closes,
//! nothing is read into or changed. A session is one exchange: its SERVER span runs from the
//! request to the close, with the bytes each way and how it ended.
//!
//! The session runs in the client connection's own task, after hyper has handed the
//! connection over ([`SessionSlot`]): it keeps its place under `RAGSCOPE_MAX_CONNECTIONS`, counts
//! as an open connection, and the drain closes it with the other connections at the drain
//! timeout (until then it runs on). `RAGSCOPE_IDLE_TIMEOUT` closes a session in which no byte
//! went either way for that long.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, header};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::ResponseBody;
use super::exchange::Exchange;
use super::headers;
use super::respond::finish_head;
use super::websocket::FrameScanner;
use crate::error::Origin;
use crate::observe::{Ending, UpgradeFacts};
use crate::telemetry::Instruments;

/// Longest `Upgrade` protocol name kept for telemetry (the client chooses it).
const MAX_PROTOCOL: usize = 64;

/// A session waiting for its connection's task to run it.
type SessionFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Where the proxy leaves a connection's upgraded session for the connection's task, which
/// runs it once hyper has let go of the connection. One per client connection.
#[derive(Default)]
pub struct SessionSlot(Mutex<Option<SessionFuture>>);

impl std::fmt::Debug for SessionSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionSlot").finish_non_exhaustive()
    }
}

impl SessionSlot {
    /// The session left here, if a request of this connection was upgraded.
    pub fn take(&self) -> Option<Pin<Box<dyn Future<Output = ()> + Send>>> {
        self.0.lock().ok()?.take()
    }

    fn put(&self, session: SessionFuture) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(session);
        }
    }

    /// Lends `slot` to `req` when it may ask for an upgrade: only then is the request's
    /// extension map touched, so an ordinary request costs one header lookup.
    pub fn lend<B>(slot: &Arc<SessionSlot>, req: &mut Request<B>) {
        if req.headers().contains_key(header::UPGRADE) {
            req.extensions_mut().insert(slot.clone());
        }
    }
}

/// An upgrade request (RFC 9110 7.8) over HTTP/1.1: `Upgrade` named in `Connection`. A bare
/// `Upgrade` header asks for nothing and is stripped as hop-by-hop like the others.
pub(super) fn asks_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == http::Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && headers::tokens(req.headers(), header::CONNECTION)
            .any(|token| token.eq_ignore_ascii_case("upgrade"))
}

/// The client's side of an upgrade being asked for: taken from the request before it is
/// forwarded, joined to the upstream's side if the answer is 101.
pub(super) struct Pending {
    client: OnUpgrade,
    slot: Arc<SessionSlot>,
    /// `Upgrade` as the client sent it, restored on the forwarded request.
    upgrade: HeaderValue,
}

impl Pending {
    /// The pending upgrade of `req`, when it asks for one on a connection that can run it.
    pub(super) fn take<B>(req: &mut Request<B>) -> Option<Pending> {
        if !asks_upgrade(req) {
            return None;
        }
        let slot = req.extensions_mut().remove::<Arc<SessionSlot>>()?;
        let upgrade = req.headers().get(header::UPGRADE)?.clone();
        Some(Pending {
            client: hyper::upgrade::on(req),
            slot,
            upgrade,
        })
    }

    /// Puts `Upgrade` and `Connection: upgrade` back on the forwarded request, after the
    /// hop-by-hop headers were stripped.
    pub(super) fn restore(&self, headers: &mut HeaderMap) {
        keep_upgrade(headers, self.upgrade.clone());
    }

    /// The upstream switched protocols: the client gets the 101 (with the upstream's
    /// `Upgrade`), and the session (the exchange, carried to the close) is left for the
    /// connection's task.
    pub(super) fn switch(
        self,
        mut response: Response<Incoming>,
        mut exchange: Exchange,
        instruments: &Instruments,
        idle: Duration,
    ) -> Response<ResponseBody> {
        // Taken before the head is rewritten: the upstream's side of the session and what it
        // switched to.
        let upstream = hyper::upgrade::on(&mut response);
        let (mut parts, _) = response.into_parts();
        let switched = parts.headers.get(header::UPGRADE).cloned();
        headers::strip_hop_by_hop(&mut parts.headers, false);
        let switched = switched.unwrap_or(self.upgrade);
        keep_upgrade(&mut parts.headers, switched.clone());
        finish_head(&mut parts, &mut exchange, None);
        let protocol = switched
            .to_str()
            .unwrap_or("")
            .split(',')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let session = Session {
            exchange: exchange.detach(),
            facts: UpgradeFacts {
                protocol: crate::genai::inference::cut(&protocol, MAX_PROTOCOL).to_owned(),
                ending: "drain",
                to_upstream: 0,
                to_client: 0,
            },
            activity: Activity::new(),
            instruments: instruments.clone(),
        };
        instruments.upgrade_sessions_active.add(1, &[]);
        self.slot
            .put(Box::pin(session.run(self.client, upstream, idle)));
        // The exchange left here has nothing to record: the session records it.
        Response::from_parts(parts, ResponseBody::local(Bytes::new(), exchange))
    }
}

/// Sets `Upgrade: value` and `Connection: upgrade` (request or 101 response).
fn keep_upgrade(headers: &mut HeaderMap, value: HeaderValue) {
    headers.insert(header::UPGRADE, value);
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
}

/// One upgraded session: the exchange it finishes and what it learned on the way.
struct Session {
    exchange: Exchange,
    facts: UpgradeFacts,
    activity: Activity,
    instruments: Instruments,
}

impl Session {
    async fn run(mut self, client: OnUpgrade, upstream: OnUpgrade, idle: Duration) {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(both) => both,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade did not complete");
                self.facts.ending = "error";
                self.end(Ending::Failed("upgrade_failed", Origin::Proxy));
                return;
            }
        };
        let websocket = self.facts.protocol == "websocket";
        let mut client = Counted::new(TokioIo::new(client), &self.activity, CLIENT, websocket);
        let mut upstream =
            Counted::new(TokioIo::new(upstream), &self.activity, UPSTREAM, websocket);
        let ending = tokio::select! {
            copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => match copied {
                Ok(_) => match self.activity.closed_by() {
                    CLIENT => ("client_close", Ending::Complete),
                    _ => ("upstream_close", Ending::Complete),
                },
                Err(e) => {
                    tracing::debug!(error = %e, "upgraded session failed");
                    match self.activity.failed.load(Ordering::Relaxed) {
                        CLIENT => ("error", Ending::Failed("upgrade_client_error", Origin::Downstream)),
                        _ => ("error", Ending::Failed("upgrade_upstream_error", Origin::Upstream)),
                    }
                }
            },
            () = self.activity.idle(idle) => ("idle_timeout", Ending::Complete),
        };
        // The connections close here, before the session is recorded.
        drop((client, upstream));
        self.facts.ending = ending.0;
        self.end(ending.1);
    }

    /// Notes the session's facts and hands the exchange on.
    fn end(&mut self, ending: Ending) {
        self.note();
        self.exchange.finish(ending);
    }

    fn note(&mut self) {
        self.facts.to_upstream = self.activity.bytes[usize::from(CLIENT)].load(Ordering::Relaxed);
        self.facts.to_client = self.activity.bytes[usize::from(UPSTREAM)].load(Ordering::Relaxed);
        if let Some(record) = self.exchange.record() {
            record.upgrade = Some(self.facts.clone());
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.instruments.upgrade_sessions_active.add(-1, &[]);
        // Dropped before its end: the drain timeout closed the connection (the ending stays
        // `drain`), or the server went away with it. Recorded as a complete session: a
        // drained session is not a failure.
        self.note();
        self.exchange.finish(Ending::Complete);
    }
}

const CLIENT: u8 = 1;
const UPSTREAM: u8 = 2;

/// What both directions of a session share: bytes read from each side, the last time a byte
/// went either way, which side closed or failed first.
struct Activity {
    start: Instant,
    /// Bytes read from the client (index 1) and from the upstream (index 2).
    bytes: [AtomicU64; 3],
    /// Milliseconds since `start` of the last byte either way.
    last: AtomicU64,
    /// The side whose stream ended first.
    first_close: AtomicU8,
    /// The side that sent the first WebSocket Close frame.
    close_frame: AtomicU8,
    failed: AtomicU8,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            bytes: Default::default(),
            last: AtomicU64::new(0),
            first_close: AtomicU8::new(0),
            close_frame: AtomicU8::new(0),
            failed: AtomicU8::new(0),
        }
    }

    /// Who ended the session: the side that began the WebSocket closing handshake, else the
    /// side whose stream ended first.
    fn closed_by(&self) -> u8 {
        match self.close_frame.load(Ordering::Relaxed) {
            0 => self.first_close.load(Ordering::Relaxed),
            side => side,
        }
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last.store(ms, Ordering::Relaxed);
    }

    /// Resolves once no byte has gone either way for `timeout`.
    async fn idle(&self, timeout: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last.load(Ordering::Relaxed));
            if Instant::now() >= last + timeout {
                return;
            }
            tokio::time::sleep_until(last + timeout).await;
        }
    }
}

/// One side of a session, counting what is read from it and noting when it closes or fails
/// (and, for WebSocket, when it sends a Close frame).
struct Counted<'a, T> {
    io: T,
    activity: &'a Activity,
    side: u8,
    frames: Option<FrameScanner>,
}

impl<'a, T> Counted<'a, T> {
    fn new(io: T, activity: &'a Activity, side: u8, websocket: bool) -> Self {
        Counted {
            io,
            activity,
            side,
            frames: websocket.then(FrameScanner::default),
        }
    }

    /// Reads the frame headers of what was just read from this side.
    fn scan(&mut self, read: &[u8]) {
        if let Some(frames) = &mut self.frames
            && !frames.saw_close()
        {
            frames.scan(read);
            if frames.saw_close() {
                let _ = self.activity.close_frame.compare_exchange(
                    0,
                    self.side,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
        }
    }

    fn fail<V>(&self, polled: Poll<io::Result<V>>) -> Poll<io::Result<V>> {
        if let Poll::Ready(Err(_)) = &polled {
            let _ = self.activity.failed.compare_exchange(
                0,
                self.side,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        polled
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<'_, T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let n = (buf.filled().len() - before) as u64;
            if n > 0 {
                this.activity.bytes[usize::from(this.side)].fetch_add(n, Ordering::Relaxed);
                this.activity.touch();
                this.scan(&buf.filled()[before..]);
            } else if buf.remaining() > 0 {
                let _ = this.activity.first_close.compare_exchange(
                    0,
                    this.side,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
        }
        this.fail(polled)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<'_, T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        this.fail(polled)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_flush(cx);
        this.fail(polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_shutdown(cx);
        this.fail(polled)
    }
}
