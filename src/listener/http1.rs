//! HTTP/1 connections that give hyper's per-connection state back while idle.
//!
//! hyper 1.12 keeps an HTTP/1 connection's 8 KiB read buffer, 8 KiB write buffer and the rest
//! of its state for the connection's whole life, idle or not (~17-20 KiB; benches/README.md).
//! Here a keep-alive connection that has answered its request and waits for the next one is
//! taken apart ([`UpgradeableConnection::into_parts`]): the socket and the service are kept,
//! hyper's state is freed, and a new hyper connection is built on the same socket when its
//! next bytes arrive. An idle connection then holds its socket and a small task.
//!
//! hyper has no "idle" signal, so it is observed: [`HeadTimer`] (hyper's timer, which in an
//! HTTP/1 server only ever times the wait for a request head) and [`ConnIo`] (the socket) note
//! on a per-thread [`Probe`] what happened during one poll of the connection. hyper is idle
//! when it polled its head timer (it is waiting for a new head: no request in flight, the
//! previous response written), no byte reached it since that wait began (its read buffer is
//! empty; `into_parts` hands back any bytes anyway), and its last write did not block (its
//! write buffer is flushed). A poll is synchronous and on one thread, so the probe sees exactly
//! that connection.
//!
//! A connection is taken apart only once it has waited [`IDLE_GRACE`] for its next request.
//! Under load a keep-alive client's next request follows within milliseconds, and taking the
//! connection apart and building it again for every request cost 10-15% more CPU per request
//! (`off` scenario, session 5); a connection that waits longer is idle in the sense that
//! matters for memory. The grace needs no timer of its own: hyper's head timer, which it arms
//! for every wait anyway, first runs to the end of the grace ([`HeadSleep`]).
//!
//! The idle wait keeps hyper's deadline (`RAGSCOPE_HEADER_READ_TIMEOUT` from the end of the
//! previous response, as before) and ends on drain; the head of the next request then has the
//! full header read timeout from its first byte, as on a new connection.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use hyper::body::Incoming;
use hyper::rt::{Sleep, Timer};
use hyper::server::conn::http1;
use hyper::service::HttpService;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::stopped;

/// What hyper did during one poll of an HTTP/1 connection on this thread.
#[derive(Clone, Copy, Default)]
struct Probe {
    /// hyper armed its head timer: a wait for a new request head began.
    armed: bool,
    /// Bytes reached hyper (after the last arming, when it was armed in this poll).
    read: bool,
    /// Bytes reached hyper at any point of this poll (a request read and answered within one
    /// poll leaves `read` false: the arming after its response cleared it).
    read_any: bool,
    /// hyper polled its head timer (its head parse is waiting for bytes): the deadline.
    head_wait: Option<Instant>,
    /// The last write or flush returned `Pending`: hyper's write buffer is not empty.
    write_blocked: bool,
}

thread_local! {
    static PROBE: Cell<Probe> = const {
        Cell::new(Probe {
            armed: false,
            read: false,
            read_any: false,
            head_wait: None,
            write_blocked: false,
        })
    };
}

fn note(f: impl FnOnce(&mut Probe)) {
    PROBE.with(|p| {
        let mut probe = p.get();
        f(&mut probe);
        p.set(probe);
    });
}

/// How long a keep-alive connection waits for its next request before hyper's state is given
/// back. Well above the gap between the requests of a busy client (milliseconds), well below
/// the header read timeout's default (the usual idle keep-alive horizon).
pub(super) const IDLE_GRACE: Duration = Duration::from_secs(1);

/// hyper's timer for the HTTP/1 server: tokio's, with each head-timer event noted, and the
/// head wait reported only after `grace` (see the module's comment).
#[derive(Clone, Copy, Debug)]
pub(super) struct HeadTimer {
    grace: Duration,
}

impl HeadTimer {
    /// A timer whose head waits count as idle after `grace`.
    pub(super) fn new(grace: Duration) -> Self {
        HeadTimer { grace }
    }

    /// Where the sleep runs to first: the end of the grace, or the deadline if that is sooner.
    fn first_stop(&self, deadline: Instant) -> Instant {
        deadline.min(self.now() + self.grace)
    }
}

pin_project_lite::pin_project! {
    struct HeadSleep {
        #[pin]
        inner: tokio::time::Sleep,
        deadline: Instant,
        // Still sleeping to the end of the grace: the wait is not idle yet.
        in_grace: bool,
    }
}

impl Future for HeadSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        let deadline = *this.deadline;
        if *this.in_grace {
            if this.inner.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            *this.in_grace = false;
            if this.inner.deadline() >= deadline.into() {
                // The header read timeout came before the grace ended.
                return Poll::Ready(());
            }
            this.inner.as_mut().reset(deadline.into());
        }
        note(|p| p.head_wait = Some(deadline));
        this.inner.poll(cx)
    }
}

impl Sleep for HeadSleep {}

impl Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.sleep_until(self.now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        note(|p| {
            p.armed = true;
            p.read = false;
        });
        Box::pin(HeadSleep {
            inner: tokio::time::sleep_until(self.first_stop(deadline).into()),
            deadline,
            in_grace: true,
        })
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn Sleep>>, new_deadline: Instant) {
        note(|p| {
            p.armed = true;
            p.read = false;
        });
        if let Some(sleep) = sleep.as_mut().downcast_mut_pin::<HeadSleep>() {
            let this = sleep.project();
            *this.deadline = new_deadline;
            *this.in_grace = true;
            this.inner.reset(self.first_stop(new_deadline).into());
        }
    }

    fn now(&self) -> Instant {
        // tokio's clock, so paused time in tests moves hyper's timer too.
        tokio::time::Instant::now().into()
    }
}

/// A socket that can wait for its next bytes without reading them.
pub(super) trait WaitReadable {
    /// Whether idle connections on this socket are taken apart. Not over TLS for now: there
    /// it cost ~15% more CPU per keep-alive request in the `tls` scenario (benches/README.md).
    const RELEASE_IDLE: bool;

    /// Resolves when the peer sent something (or closed, or the socket failed).
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send;
}

impl WaitReadable for TcpStream {
    const RELEASE_IDLE: bool = true;

    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send {
        TcpStream::readable(self)
    }
}

impl WaitReadable for tokio_rustls::server::TlsStream<TcpStream> {
    const RELEASE_IDLE: bool = false;

    /// Only called after hyper's read returned `Pending`: rustls then holds no plaintext and
    /// the socket said it had nothing, so its next readiness is the next record's bytes.
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send {
        self.get_ref().0.readable()
    }
}

/// A client connection's socket as hyper sees it: bytes already read (the protocol sniff's,
/// or those hyper held when it was taken apart) are replayed first, and reads and writes are
/// noted on the probe.
pub(super) struct ConnIo<I> {
    inner: I,
    prefix: Bytes,
}

impl<I> ConnIo<I> {
    pub(super) fn new(inner: I, prefix: Bytes) -> Self {
        ConnIo { inner, prefix }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for ConnIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if self.prefix.is_empty() {
                // Frees the allocation rather than keeping an empty view of it.
                self.prefix = Bytes::new();
            }
            note(|p| {
                p.read = true;
                p.read_any = true;
            });
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            note(|p| {
                p.read = true;
                p.read_any = true;
            });
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> ConnIo<I> {
    fn noted<T>(polled: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        let blocked = polled.is_pending();
        note(|p| p.write_blocked = blocked);
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for ConnIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Self::noted(Pin::new(&mut self.inner).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Self::noted(Pin::new(&mut self.inner).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Self::noted(Pin::new(&mut self.inner).poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// How an HTTP/1 connection ended.
pub(super) enum Ended {
    /// hyper finished with it (closed, upgraded, drained), with hyper's result.
    Served(hyper::Result<()>),
    /// Idle past the header read timeout: closed, as hyper closes it.
    IdleTimeout,
}

/// Serves HTTP/1 on `io`, taking hyper's state apart whenever the connection is idle, until
/// the connection ends; on drain, an idle connection is closed and a busy one finishes its
/// request first (hyper's graceful shutdown).
pub(super) async fn serve<I, S, B>(
    builder: &http1::Builder,
    io: ConnIo<I>,
    service: S,
    shutdown: &mut watch::Receiver<bool>,
) -> Ended
where
    I: AsyncRead + AsyncWrite + WaitReadable + Unpin + Send + 'static,
    S: HttpService<Incoming, ResBody = B> + Unpin,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (mut io, mut service) = (TokioIo::new(io), service);
    // An idle connection is taken apart only after its hyper connection read something: a
    // wake-up without data then never loops through rebuilds.
    let mut deadline: Option<Instant> = None;
    loop {
        // Boxed: the idle task is then the size of its socket and service, not of hyper's
        // connection.
        let mut conn = Box::new(builder.serve_connection(io, service).with_upgrades());
        let mut served_bytes = false;
        let mut clean = false;
        let idle = std::future::poll_fn(|cx| {
            PROBE.with(|p| p.set(Probe::default()));
            let polled = Pin::new(&mut *conn).poll(cx);
            let probe = PROBE.with(|p| p.take());
            match polled {
                Poll::Ready(result) => Poll::Ready(Some(result)),
                Poll::Pending => {
                    if probe.armed {
                        clean = !probe.read;
                    } else if probe.read {
                        clean = false;
                    }
                    served_bytes |= probe.read_any;
                    match probe.head_wait {
                        Some(at)
                            if I::RELEASE_IDLE && clean && served_bytes && !probe.write_blocked =>
                        {
                            deadline = Some(at);
                            Poll::Ready(None)
                        }
                        _ => Poll::Pending,
                    }
                }
            }
        });
        let idle = tokio::select! {
            idle = idle => idle,
            () = stopped(shutdown) => {
                Pin::new(&mut *conn).graceful_shutdown();
                return Ended::Served((&mut *conn).await);
            }
        };
        if let Some(result) = idle {
            return Ended::Served(result);
        }
        let Some(parts) = conn.into_parts() else {
            // Only an upgraded connection has no parts, and it would have been Ready.
            return Ended::Served(Ok(()));
        };
        #[cfg(test)]
        tests::RELEASES.with(|r| r.set(r.get() + 1));
        (io, service) = (parts.io, parts.service);
        if !parts.read_buf.is_empty() {
            // The start of a pipelined request hyper had read: replayed to the next one.
            io = TokioIo::new(ConnIo::new(io.into_inner().inner, parts.read_buf));
            continue;
        }
        let Some(until) = deadline else { continue };
        tokio::select! {
            ready = tokio::time::timeout_at(until.into(), io.inner().inner.readable()) => {
                // A socket error is for hyper's first read to report.
                if ready.is_err() {
                    return Ended::IdleTimeout;
                }
            }
            () = stopped(shutdown) => return Ended::Served(Ok(())),
        }
    }
}

/// Reads the start of a connection to tell HTTP/2 (its 24-byte preface) from HTTP/1, within
/// `timeout` of connecting. `Ok(None)`: drained or closed before a byte; the bytes read go
/// back to hyper through [`ConnIo`].
pub(super) async fn sniff<I: AsyncRead + Unpin>(
    io: &mut I,
    timeout: Duration,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Option<(bool, Bytes)>, Duration> {
    use tokio::io::AsyncReadExt;
    const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut buf = [0u8; 24];
    let read = async {
        let mut len = 0;
        while len < buf.len() {
            match io.read(&mut buf[len..]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => len += n,
            }
            if buf[..len] != PREFACE[..len] {
                break;
            }
        }
        len
    };
    let len = tokio::select! {
        r = tokio::time::timeout(timeout, read) => r.map_err(|_| timeout)?,
        () = stopped(shutdown) => return Ok(None),
    };
    if len == 0 {
        return Ok(None);
    }
    Ok(Some((buf == *PREFACE, Bytes::copy_from_slice(&buf[..len]))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    thread_local! {
        /// Connections taken apart on this thread (a current-thread test runtime's).
        pub(super) static RELEASES: Cell<u32> = const { Cell::new(0) };
    }

    /// A keep-alive connection served by [`serve`] with `grace`, and its client's socket.
    async fn keep_alive_connection(grace: Duration) -> (TcpStream, watch::Sender<bool>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        let (stop, mut shutdown) = watch::channel(false);
        tokio::spawn(async move {
            let mut builder = http1::Builder::new();
            builder
                .timer(HeadTimer::new(grace))
                .header_read_timeout(Duration::from_secs(30))
                .keep_alive(true);
            let service = hyper::service::service_fn(|_req| async {
                let body = http_body_util::Full::new(Bytes::from_static(b"ok"));
                Ok::<_, std::convert::Infallible>(hyper::Response::new(body))
            });
            serve(
                &builder,
                ConnIo::new(server, Bytes::new()),
                service,
                &mut shutdown,
            )
            .await
        });
        (client, stop)
    }

    /// Sends one request on `client` and reads its whole (2-byte) response.
    async fn round_trip(client: &mut TcpStream) {
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
            .await
            .expect("write");
        let mut seen = Vec::new();
        let mut buf = [0u8; 512];
        while !seen.ends_with(b"\r\n\r\nok") {
            let n = client.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&buf[..n]);
        }
    }

    #[tokio::test]
    async fn a_busy_keep_alive_connection_keeps_hyper_within_the_grace() {
        let (mut client, _stop) = keep_alive_connection(Duration::from_secs(60)).await;
        for _ in 0..5 {
            round_trip(&mut client).await;
            // Let the connection's task run to its idle wait before the next request.
            tokio::task::yield_now().await;
        }
        assert_eq!(RELEASES.with(Cell::get), 0, "rebuilt within the grace");
    }

    #[tokio::test]
    async fn a_connection_idle_past_the_grace_is_taken_apart_and_still_serves() {
        let (mut client, _stop) = keep_alive_connection(Duration::from_millis(20)).await;
        round_trip(&mut client).await;
        // Waits for the condition (the release), bounded so a broken grace fails the test.
        let released = tokio::time::timeout(Duration::from_secs(10), async {
            while RELEASES.with(Cell::get) == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        assert!(released.await.is_ok(), "never taken apart after the grace");
        round_trip(&mut client).await;
    }

    async fn sniffed(chunks: &[&[u8]]) -> Option<(bool, Bytes)> {
        let (mut client, mut server) = tokio::io::duplex(64);
        for chunk in chunks {
            client.write_all(chunk).await.expect("write");
        }
        drop(client);
        let (_tx, mut rx) = watch::channel(false);
        sniff(&mut server, Duration::from_secs(5), &mut rx)
            .await
            .expect("no timeout")
    }

    #[tokio::test]
    async fn http1_is_told_apart_at_its_first_differing_byte() {
        let (h2, prefix) = sniffed(&[b"GET / HTTP/1.1\r\n\r\n"]).await.expect("bytes");
        assert!(!h2);
        assert_eq!(&prefix[..], b"GET / HTTP/1.1\r\n\r\n");
        let (h2, _) = sniffed(&[b"POST / HTTP/1.1\r\n\r\n"]).await.expect("bytes");
        assert!(!h2);
    }

    #[tokio::test]
    async fn the_http2_preface_is_recognised_even_when_split() {
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        let (h2, prefix) = sniffed(&[&preface[..5], &preface[5..]])
            .await
            .expect("bytes");
        assert!(h2);
        assert_eq!(&prefix[..], preface);
        // A short, matching start that then ends is HTTP/1 (hyper reports it).
        let (h2, prefix) = sniffed(&[b"PRI"]).await.expect("bytes");
        assert!(!h2);
        assert_eq!(&prefix[..], b"PRI");
        assert!(sniffed(&[]).await.is_none());
    }

    #[tokio::test]
    async fn replayed_bytes_come_before_the_socket_and_are_noted() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b" world").await.expect("write");
        drop(client);
        let mut io = ConnIo::new(server, Bytes::from_static(b"hello"));
        PROBE.with(|p| p.set(Probe::default()));
        let mut all = String::new();
        io.read_to_string(&mut all).await.expect("read");
        assert_eq!(all, "hello world");
        assert!(PROBE.with(|p| p.get()).read);
    }
}
