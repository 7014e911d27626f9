//! A fake RAG/LLM upstream for the proxy to forward to, plus upstreams that
//! misbehave at the TCP level ([`BlackHole`], [`dead_addr`]).
//!
//! [`Upstream`] serves HTTP/1.1 and cleartext HTTP/2 (prior knowledge) on one
//! loopback port. Its routes (query parameters are `key=value` pairs split on
//! `&`, with `%XX` and `+` decoded; unknown routes answer 404 JSON):
//!
//! | route | response |
//! |---|---|
//! | `/json?status=NNN` | `{"ok":true}` with status `NNN` (default 200) |
//! | `/echo?set_header=name:value` | JSON description of the request; each `set_header` adds a response header |
//! | `/sse?events=N&gap_ms=M` | `text/event-stream`: `N` (default 3) events `data: {"i":k}`, each after `M` ms (default 0), then `data: [DONE]` |
//! | `/large?bytes=N&chunk=C` | `N` bytes (default 1 MiB) of [`pattern_byte`], in `C`-byte frames (default 64 KiB), with `content-length` |
//! | `/upload` | `{"bytes":N}`, the request body size |
//! | `/slow?delay_ms=M` | `{"ok":true}` after `M` ms (default 100) |
//! | `/stall?after_bytes=N` | `text/event-stream`: `N` bytes (default 0), then nothing, forever |
//! | `/status/NNN` | status `NNN`, body `{"status":NNN}` |
//! | `/hop` | body `ok` with hop-by-hop response headers (see [`HOP_ROUTE_HEADERS`]) |
//!
//! Every request body is drained frame by frame (never buffered) before the
//! route answers, and the request is then recorded as a [`SeenRequest`].

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::serve::{ConnStats, bind_loopback, spawn_http_server};
use super::wait_until;

/// The response body type of the test upstream.
type RespBody = UnsyncBoxBody<Bytes, Infallible>;

/// Default frame size of the `/large` route.
pub const DEFAULT_LARGE_CHUNK: usize = 64 * 1024;

/// How much of each request body the upstream keeps in [`SeenRequest::body`].
pub const BODY_CAPTURE: usize = 64 * 1024;

/// The response body type of the test upstream and of [`Script`]s.
pub type UpstreamBody = RespBody;

/// A test's own routes, tried before the built-in ones: `Some` answers the request.
///
/// The request body has been read (and its first [`BODY_CAPTURE`] bytes kept) before the
/// script sees the request.
pub type Script = Arc<dyn Fn(&SeenRequest) -> Option<Response<RespBody>> + Send + Sync>;

/// Default size of the `/large` route's body.
pub const DEFAULT_LARGE_BYTES: u64 = 1024 * 1024;

/// Headers the `/hop` route answers with, in order. `connection` lists
/// `x-private`, so a conforming proxy must strip `x-private`, `connection`,
/// `keep-alive` and `proxy-connection`, and forward only `x-kept`.
pub const HOP_ROUTE_HEADERS: &[(&str, &str)] = &[
    ("x-private", "secret"),
    ("connection", "x-private"),
    ("keep-alive", "timeout=5"),
    ("proxy-connection", "keep-alive"),
    ("x-kept", "yes"),
];

/// Byte `i` of the `/large` route's body: `(i % 251) as u8`.
pub fn pattern_byte(i: u64) -> u8 {
    (i % 251) as u8
}

/// Whether `body` is exactly the first `body.len()` bytes of the `/large` pattern.
pub fn is_large_pattern(body: &[u8]) -> bool {
    body.iter()
        .enumerate()
        .all(|(i, &b)| b == pattern_byte(i as u64))
}

/// One request the [`Upstream`] received, recorded once its body was fully read.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    /// Request method.
    pub method: Method,
    /// Path and query of the request target, e.g. `/echo?x=1`.
    pub uri: String,
    /// HTTP version the request arrived with (`HTTP_11` or `HTTP_2`).
    pub version: Version,
    /// Request headers as received (for HTTP/2 the authority is in the URI, not here).
    pub headers: HeaderMap,
    /// Number of body bytes read.
    pub body_bytes: u64,
    /// The first [`BODY_CAPTURE`] bytes of the body (what scripted routes answer from).
    pub body: Bytes,
    /// `false` when reading the body failed part-way (e.g. the client went away).
    pub body_complete: bool,
}

impl SeenRequest {
    /// The path part of [`SeenRequest::uri`].
    pub fn path(&self) -> &str {
        self.uri.split('?').next().unwrap_or_default()
    }

    /// The captured body as JSON; `Null` when it is not JSON (or was cut at the capture bound).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The first value of query parameter `name`, decoded.
    pub fn query(&self, name: &str) -> Option<String> {
        let query = self.uri.split_once('?').map(|(_, q)| q);
        Query::parse(query).get(name)
    }

    /// The value of a request header as a string, if present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Shared state between the [`Upstream`] handle and its connection tasks.
#[derive(Default)]
struct State {
    requests: Mutex<Vec<SeenRequest>>,
    script: Option<Script>,
    aborted: AtomicUsize,
    conns: Arc<ConnStats>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("requests", &self.requests)
            .field("aborted", &self.aborted)
            .field("scripted", &self.script.is_some())
            .finish_non_exhaustive()
    }
}

impl State {
    fn record_abort(&self) {
        self.aborted.fetch_add(1, Ordering::SeqCst);
    }
}

/// A fake RAG/LLM server on `127.0.0.1`, speaking HTTP/1.1 and h2c.
///
/// See the [module docs](self) for the routes. Dropping it stops the server
/// and closes every connection it holds.
#[derive(Debug)]
pub struct Upstream {
    addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl Upstream {
    /// Binds `127.0.0.1:0` and starts serving.
    pub async fn start() -> Upstream {
        Upstream::serve(State::default()).await
    }

    /// Like [`Upstream::start`], with `script` answering first (see [`Script`]); requests it
    /// declines (`None`) go to the built-in routes.
    pub async fn scripted(
        script: impl Fn(&SeenRequest) -> Option<Response<RespBody>> + Send + Sync + 'static,
    ) -> Upstream {
        Upstream::serve(State {
            script: Some(Arc::new(script)),
            ..State::default()
        })
        .await
    }

    async fn serve(state: State) -> Upstream {
        let (listener, addr) = bind_loopback().await;
        let state = Arc::new(state);
        let handler_state = Arc::clone(&state);
        let task = spawn_http_server(listener, Arc::clone(&state.conns), move |req| {
            handle(Arc::clone(&handler_state), req)
        });
        Upstream { addr, state, task }
    }

    /// The socket address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL, `http://127.0.0.1:PORT` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far, in the order their bodies completed.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.state
            .requests
            .lock()
            .expect("upstream request log poisoned")
            .clone()
    }

    /// The most recent request.
    ///
    /// # Panics
    /// If no request has been received.
    pub fn last_request(&self) -> SeenRequest {
        self.requests()
            .pop()
            .expect("the upstream has not received any request")
    }

    /// Number of requests received so far.
    pub fn request_count(&self) -> usize {
        self.state
            .requests
            .lock()
            .expect("upstream request log poisoned")
            .len()
    }

    /// Waits until at least `n` requests were received; returns whether they were.
    pub async fn wait_requests(&self, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.request_count() >= n).await
    }

    /// Number of streamed responses (`/sse`, `/large`, `/stall`) whose remaining
    /// frames could not be delivered because the response body was dropped
    /// (the client closed the connection or reset the stream).
    pub fn aborted_streams(&self) -> usize {
        self.state.aborted.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` streams were aborted; returns whether they were.
    pub async fn wait_aborted(&self, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.aborted_streams() >= n).await
    }

    /// TCP connections accepted so far.
    pub fn connections_accepted(&self) -> usize {
        self.state.conns.accepted()
    }

    /// Connections that have been closed (their serving finished) so far.
    pub fn connections_closed(&self) -> usize {
        self.state.conns.closed()
    }

    /// Waits until at least `n` connections were closed; returns whether they were.
    pub async fn wait_connections_closed(&self, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.connections_closed() >= n).await
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Returns a loopback address nothing listens on: connecting to it is refused.
///
/// The port was free a moment ago; another test could in theory grab it, which
/// is unlikely enough for tests.
pub fn dead_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback listener");
    listener
        .local_addr()
        .expect("read the listener's local address")
}

/// A server that accepts TCP connections and then never reads nor writes.
///
/// Connections stay open until the `BlackHole` is dropped.
#[derive(Debug)]
pub struct BlackHole {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl BlackHole {
    /// Binds `127.0.0.1:0` and starts swallowing connections.
    pub async fn start() -> BlackHole {
        let (listener, addr) = bind_loopback().await;
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        let task = tokio::spawn(async move {
            // Owned by the task, so aborting the task closes every connection.
            let mut held = Vec::new();
            loop {
                match listener.accept().await {
                    Ok((stream, _peer)) => {
                        counter.fetch_add(1, Ordering::SeqCst);
                        held.push(stream);
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        });
        BlackHole {
            addr,
            accepted,
            task,
        }
    }

    /// The socket address the black hole listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// TCP connections accepted so far.
    pub fn connections_accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A body fed by a channel, one frame per message; it ends when the sender is dropped. The
/// upstream's streaming routes answer with it, and tests use it for request bodies (or
/// scripted answers) they pace themselves.
///
/// The producer task learns that the body was dropped (client gone) when its
/// send fails or `Sender::closed` resolves.
pub struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
    /// Bytes still to come, when known (`/large`).
    remaining: Option<u64>,
}

impl ChannelBody {
    /// The sender and the body; `remaining` is the body's length when known.
    pub fn new(remaining: Option<u64>) -> (mpsc::Sender<Bytes>, ChannelBody) {
        let (tx, rx) = mpsc::channel(1);
        (tx, ChannelBody { rx, remaining })
    }
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        this.rx.poll_recv(cx).map(|next| {
            next.map(|data| {
                if let Some(remaining) = this.remaining.as_mut() {
                    *remaining = remaining.saturating_sub(data.len() as u64);
                }
                Ok(Frame::data(data))
            })
        })
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// Parsed query parameters, in order (keys may repeat).
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(query: Option<&str>) -> Query {
        let pairs = query
            .unwrap_or_default()
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                (percent_decode(key), percent_decode(value))
            })
            .collect();
        Query(pairs)
    }

    /// The first value of `key`, parsed; `None` if absent or unparsable.
    fn get<T: std::str::FromStr>(&self, key: &str) -> Option<T> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.parse().ok())
    }

    /// Every value of `key`, in order.
    fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Decodes `%XX` escapes and `+` (as space); malformed escapes are kept verbatim.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match bytes.get(i + 1..i + 3) {
                Some(&[hi, lo]) if hi.is_ascii_hexdigit() && lo.is_ascii_hexdigit() => {
                    out.push(hex_value(hi) << 4 | hex_value(lo));
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The value of an ASCII hex digit (callers check `is_ascii_hexdigit`).
fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        _ => digit.to_ascii_lowercase() - b'a' + 10,
    }
}

fn full(body: impl Into<Bytes>) -> RespBody {
    Full::new(body.into()).boxed_unsync()
}

/// A canned answer: `status`, `headers` and a whole `body`, for [`Script`]s.
pub fn canned(status: u16, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Response<RespBody> {
    let mut response = Response::new(full(body));
    *response.status_mut() = StatusCode::from_u16(status).expect("a valid status code");
    for (name, value) in headers {
        response.headers_mut().append(
            HeaderName::from_bytes(name.as_bytes()).expect("a valid header name"),
            HeaderValue::from_str(value).expect("a valid header value"),
        );
    }
    response
}

/// A canned `200 application/json` answer with extra `headers`.
pub fn canned_json(value: &serde_json::Value, headers: &[(&str, &str)]) -> Response<RespBody> {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    canned(200, &all, value.to_string())
}

/// A canned `200 text/event-stream` answer: each frame sent after its delay, in order.
///
/// The delays are the behaviour under test (a model thinking, tokens trickling out).
pub fn canned_sse(frames: Vec<(Duration, Bytes)>, headers: &[(&str, &str)]) -> Response<RespBody> {
    let mut response = canned(200, headers, Bytes::new());
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    *response.body_mut() = timed_body(frames);
    response
}

/// Cuts `frames` into frames of `size` bytes each (the last may be shorter), sent at once:
/// proves a parser does not depend on where frames end.
pub fn split_frames(frames: &[(Duration, Bytes)], size: usize) -> Vec<(Duration, Bytes)> {
    let all: Vec<u8> = frames.iter().flat_map(|(_, b)| b.iter().copied()).collect();
    all.chunks(size.max(1))
        .map(|c| (Duration::ZERO, Bytes::copy_from_slice(c)))
        .collect()
}

/// A body sent as `frames`, each after its delay.
fn timed_body(frames: Vec<(Duration, Bytes)>) -> RespBody {
    let (tx, body) = ChannelBody::new(None);
    tokio::spawn(async move {
        for (delay, data) in frames {
            if !delay.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = tx.closed() => return,
                }
            }
            if tx.send(data).await.is_err() {
                return;
            }
        }
    });
    body.boxed_unsync()
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<RespBody> {
    let mut response = Response::new(full(value.to_string()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn streaming_response(content_type: &'static str, body: ChannelBody) -> Response<RespBody> {
    let mut response = Response::new(body.boxed_unsync());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Drains the request body frame by frame, returning the byte count, the first
/// [`BODY_CAPTURE`] bytes and whether the body completed without error.
async fn drain(mut body: Incoming) -> (u64, Bytes, bool) {
    let mut bytes = 0u64;
    let mut kept = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    bytes += data.len() as u64;
                    let room = BODY_CAPTURE.saturating_sub(kept.len());
                    kept.extend_from_slice(&data[..data.len().min(room)]);
                }
            }
            Err(_) => return (bytes, kept.into(), false),
        }
    }
    (bytes, kept.into(), true)
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<RespBody> {
    let (parts, body) = req.into_parts();
    let (body_bytes, body, body_complete) = drain(body).await;
    let seen = SeenRequest {
        method: parts.method.clone(),
        uri: parts
            .uri
            .path_and_query()
            .map(|pq| pq.as_str().to_owned())
            .unwrap_or_else(|| "/".to_owned()),
        version: parts.version,
        headers: parts.headers.clone(),
        body_bytes,
        body,
        body_complete,
    };
    state
        .requests
        .lock()
        .expect("upstream request log poisoned")
        .push(seen.clone());

    if !body_complete {
        return json_response(
            StatusCode::BAD_REQUEST,
            &json!({"error": "request body failed", "body_bytes": body_bytes}),
        );
    }

    if let Some(answer) = state.script.as_ref().and_then(|script| script(&seen)) {
        return answer;
    }
    let query = Query::parse(parts.uri.query());
    let path = parts.uri.path();
    match path {
        "/json" => {
            let status = query
                .get::<u16>("status")
                .and_then(|s| StatusCode::from_u16(s).ok())
                .unwrap_or(StatusCode::OK);
            json_response(status, &json!({"ok": true}))
        }
        "/echo" => echo(&seen, &parts.uri, &query),
        "/sse" => sse(
            state,
            query.get("events").unwrap_or(3),
            Duration::from_millis(query.get("gap_ms").unwrap_or(0)),
        ),
        "/large" => large(
            state,
            query.get("bytes").unwrap_or(DEFAULT_LARGE_BYTES),
            query
                .get("chunk")
                .filter(|&c: &usize| c > 0)
                .unwrap_or(DEFAULT_LARGE_CHUNK),
        ),
        "/upload" => json_response(StatusCode::OK, &json!({"bytes": body_bytes})),
        "/slow" => {
            let delay = Duration::from_millis(query.get("delay_ms").unwrap_or(100));
            tokio::time::sleep(delay).await;
            json_response(StatusCode::OK, &json!({"ok": true}))
        }
        "/stall" => stall(state, query.get("after_bytes").unwrap_or(0)),
        "/hop" => {
            let mut response = Response::new(full("ok"));
            for (name, value) in HOP_ROUTE_HEADERS {
                response.headers_mut().append(
                    HeaderName::from_static(name),
                    HeaderValue::from_static(value),
                );
            }
            response
        }
        _ => match path
            .strip_prefix("/status/")
            .and_then(|code| code.parse::<u16>().ok())
            .and_then(|code| StatusCode::from_u16(code).ok())
        {
            Some(status) => json_response(status, &json!({"status": status.as_u16()})),
            None => json_response(
                StatusCode::NOT_FOUND,
                &json!({"error": "not found", "path": path}),
            ),
        },
    }
}

/// `/echo`: describes the request as JSON; `set_header=name:value` adds response headers.
fn echo(seen: &SeenRequest, uri: &http::Uri, query: &Query) -> Response<RespBody> {
    let mut headers = serde_json::Map::new();
    for name in seen.headers.keys() {
        let values = seen
            .headers
            .get_all(name)
            .iter()
            .map(|v| serde_json::Value::from(String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        headers.insert(name.as_str().to_owned(), serde_json::Value::Array(values));
    }
    let description = json!({
        "method": seen.method.as_str(),
        "path": uri.path(),
        "query": uri.query(),
        "version": format!("{:?}", seen.version),
        "headers": headers,
        "body_bytes": seen.body_bytes,
    });
    let mut response = json_response(StatusCode::OK, &description);
    for spec in query.all("set_header") {
        let (name, value) = spec.split_once(':').unwrap_or((spec, ""));
        let name = HeaderName::from_bytes(name.trim().as_bytes());
        let value = HeaderValue::from_str(value.trim());
        if let (Ok(name), Ok(value)) = (name, value) {
            response.headers_mut().append(name, value);
        }
    }
    response
}

/// `/sse`: `events` events spaced by `gap`, then `[DONE]`.
fn sse(state: Arc<State>, events: u32, gap: Duration) -> Response<RespBody> {
    let (tx, body) = ChannelBody::new(None);
    tokio::spawn(async move {
        for i in 0..events {
            if !gap.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(gap) => {}
                    () = tx.closed() => return state.record_abort(),
                }
            }
            let event = Bytes::from(format!("data: {{\"i\":{i}}}\n\n"));
            if tx.send(event).await.is_err() {
                return state.record_abort();
            }
        }
        if tx
            .send(Bytes::from_static(b"data: [DONE]\n\n"))
            .await
            .is_err()
        {
            state.record_abort();
        }
    });
    streaming_response("text/event-stream", body)
}

/// `/large`: `total` pattern bytes in `chunk`-byte frames, with `content-length`.
fn large(state: Arc<State>, total: u64, chunk: usize) -> Response<RespBody> {
    let (tx, body) = ChannelBody::new(Some(total));
    tokio::spawn(async move {
        let mut offset = 0u64;
        while offset < total {
            let len = chunk.min(usize::try_from(total - offset).unwrap_or(usize::MAX));
            let data: Bytes = (offset..offset + len as u64).map(pattern_byte).collect();
            if tx.send(data).await.is_err() {
                return state.record_abort();
            }
            offset += len as u64;
        }
    });
    let mut response = Response::new(body.boxed_unsync());
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(CONTENT_LENGTH, HeaderValue::from(total));
    response
}

/// `/stall`: `after_bytes` bytes, then silence until the body is dropped.
fn stall(state: Arc<State>, after_bytes: usize) -> Response<RespBody> {
    let (tx, body) = ChannelBody::new(None);
    tokio::spawn(async move {
        if after_bytes > 0 && tx.send(Bytes::from(vec![b'x'; after_bytes])).await.is_err() {
            return state.record_abort();
        }
        tx.closed().await;
        state.record_abort();
    });
    streaming_response("text/event-stream", body)
}
