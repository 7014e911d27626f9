//! Body wrappers on both directions of the stream. They pass frames through as they come (no
//! buffering) and observe them on the way: the request side counts bytes and enforces the size
//! limit; the response side counts bytes, cuts a stream that stays silent past the idle
//! timeout, notes the end of the request's [`Exchange`] when the last frame leaves, and hands
//! the exchange on when hyper drops the body (after the last frame, or when the client goes
//! away).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

use super::buffered::Buffered;
use super::exchange::Exchange;
use super::stream_usage::UsageFilter;
use crate::error::Origin;
use crate::observe::Ending;

/// Errors a body wrapper raises into hyper.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The request body went past the limit.
    #[error("request body exceeds {0} bytes")]
    TooLarge(u64),
    /// The upstream sent nothing for the idle timeout.
    #[error("upstream sent nothing for {0:?}")]
    IdleTimeout(Duration),
    /// The client sent nothing of its request body for the request body timeout.
    #[error("client sent nothing of its request body for {0:?}")]
    RequestBodyTimeout(Duration),
    /// The underlying stream failed.
    #[error(transparent)]
    Stream(#[from] hyper::Error),
}

/// How the request body's trip to the upstream goes, shared by the body wrapper (polled in
/// the upstream connection's task) and the forward phase, which starts the response timeout
/// only once the body has been sent, and needs to know whose fault a stop was.
#[derive(Debug, Default)]
pub struct Upload {
    failure: AtomicU8,
    sent: AtomicBool,
    /// Wakes the forward phase once the body has been sent.
    sent_signal: Notify,
    /// Times the upstream side asked for more of the body: progress the forward phase watches.
    polls: AtomicU64,
    /// The last poll is waiting for the client (not for the upstream to take a frame).
    waiting_on_client: AtomicBool,
}

impl Upload {
    const TOO_LARGE: u8 = 1;
    const CLIENT: u8 = 2;
    const TIMEOUT: u8 = 3;

    /// The body went past the size limit.
    pub fn too_large(&self) -> bool {
        self.failure.load(Ordering::Acquire) == Self::TOO_LARGE
    }

    /// The client's side of the body failed (reset, closed early).
    pub fn client_failed(&self) -> bool {
        self.failure.load(Ordering::Acquire) == Self::CLIENT
    }

    /// The client stalled mid-upload past the request body timeout.
    pub fn client_stalled(&self) -> bool {
        self.failure.load(Ordering::Acquire) == Self::TIMEOUT
    }

    /// The whole body has been handed to the upstream connection.
    pub fn sent(&self) -> bool {
        self.sent.load(Ordering::Acquire)
    }

    /// Resolves once the body has been sent (at once if it has).
    pub async fn wait_sent(&self) {
        while !self.sent() {
            self.sent_signal.notified().await;
        }
    }

    /// How many times the upstream side has asked for more of the body so far.
    pub fn progress(&self) -> u64 {
        self.polls.load(Ordering::Relaxed)
    }

    /// Whether the body is waiting for the client rather than for the upstream.
    pub fn waiting_on_client(&self) -> bool {
        self.waiting_on_client.load(Ordering::Relaxed)
    }

    fn fail(&self, why: u8) {
        self.failure.store(why, Ordering::Release);
    }

    fn mark_sent(&self) {
        if !self.sent.swap(true, Ordering::AcqRel) {
            // notify_one keeps a permit if the forward phase is not waiting yet.
            self.sent_signal.notify_one();
        }
    }
}

/// The client's request body on its way to the upstream.
pub struct RequestBody {
    inner: Incoming,
    limit: u64,
    seen: u64,
    counter: Arc<AtomicU64>,
    upload: Arc<Upload>,
    /// Longest silence of the client mid-body.
    idle: IdleTimer,
    /// The bounded copy the GenAI observation parses once the exchange ends.
    tee: Option<crate::genai::RequestTee>,
    /// The body's head, when admission read it ([`super::buffered`]): forwarded first.
    head: Option<Buffered>,
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestBody")
            .field("seen", &self.seen)
            .finish_non_exhaustive()
    }
}

impl RequestBody {
    /// Wraps `inner` (behind `head`, what admission read of it), failing once more than
    /// `limit` bytes pass or the client sends nothing for `idle_timeout` mid-body.
    pub fn new(
        inner: Incoming,
        head: Option<Buffered>,
        limit: u64,
        idle_timeout: Duration,
        counter: Arc<AtomicU64>,
        upload: Arc<Upload>,
    ) -> Self {
        let head = head.filter(|h| !h.is_drained());
        if inner.is_end_stream() && head.is_none() {
            // No body: hyper will not poll it, and it is sent with the head.
            upload.mark_sent();
        }
        RequestBody {
            inner,
            limit,
            seen: 0,
            counter,
            upload,
            idle: IdleTimer::new(idle_timeout),
            tee: None,
            head,
        }
    }

    /// Also copies the body (bounded) into `tee` as it streams to the upstream.
    pub fn with_tee(mut self, tee: Option<crate::genai::RequestTee>) -> Self {
        self.tee = tee;
        self
    }
}

/// What both wrappers' `poll_frame` returns.
type PolledFrame = Poll<Option<Result<Frame<Bytes>, BodyError>>>;

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> PolledFrame {
        let this = self.get_mut();
        if this.upload.polls.fetch_add(1, Ordering::Relaxed) == 0 {
            // The client's silence counts from when the upstream first asks for the body, not
            // from before the upstream connection was made.
            this.idle.activity();
        }
        let from_head = match &mut this.head {
            Some(head) => head.next_frame(),
            None => None,
        };
        let polled = match from_head {
            Some(frame) => Poll::Ready(Some(Ok(frame))),
            None => {
                this.head = None;
                Pin::new(&mut this.inner).poll_frame(cx)
            }
        };
        let polled = match polled {
            Poll::Ready(polled) => polled,
            Poll::Pending => {
                this.upload.waiting_on_client.store(true, Ordering::Relaxed);
                if this.idle.poll_expired(cx) {
                    this.upload.fail(Upload::TIMEOUT);
                    return Poll::Ready(Some(Err(BodyError::RequestBodyTimeout(
                        this.idle.timeout,
                    ))));
                }
                return Poll::Pending;
            }
        };
        this.upload
            .waiting_on_client
            .store(false, Ordering::Relaxed);
        this.idle.activity();
        match polled {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    this.seen += n;
                    this.counter.fetch_add(n, Ordering::Relaxed);
                    if this.seen > this.limit {
                        this.upload.fail(Upload::TOO_LARGE);
                        return Poll::Ready(Some(Err(BodyError::TooLarge(this.limit))));
                    }
                    if let Some(tee) = &this.tee
                        && let Ok(mut tee) = tee.lock()
                    {
                        tee.push(data);
                    }
                }
                if this.head.as_ref().is_none_or(Buffered::is_drained) && this.inner.is_end_stream()
                {
                    // hyper does not poll again after a frame that ends the body.
                    this.upload.mark_sent();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                this.upload.fail(Upload::CLIENT);
                Poll::Ready(Some(Err(BodyError::Stream(e))))
            }
            None => {
                this.upload.mark_sent();
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.head.as_ref().is_none_or(Buffered::is_drained) && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.inner.size_hint();
        if let Some(head) = self.head.as_ref().filter(|h| !h.is_drained()) {
            let n = head.len() as u64;
            if let Some(upper) = hint.upper() {
                hint.set_upper(upper + n);
            }
            hint.set_lower(hint.lower() + n);
        }
        hint
    }
}

enum Source {
    /// Streamed from the upstream, guarded by the idle timer.
    Upstream { body: Incoming, idle: IdleTimer },
    /// A response the proxy wrote itself.
    Local(Option<Bytes>),
}

impl Source {
    fn is_done(&self) -> bool {
        match self {
            Source::Upstream { body, .. } => body.is_end_stream(),
            Source::Local(b) => b.is_none(),
        }
    }
}

/// The response body handed to hyper: the upstream's stream or a local answer.
pub struct ResponseBody {
    source: Source,
    exchange: Exchange,
    /// Takes injected usage out of the stream (`RAGSCOPE_STREAM_USAGE=inject`).
    filter: Option<Box<UsageFilter>>,
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody").finish_non_exhaustive()
    }
}

impl ResponseBody {
    /// Streams the upstream's body, cutting it after `idle_timeout` of silence.
    pub fn upstream(body: Incoming, exchange: Exchange, idle_timeout: Duration) -> Self {
        ResponseBody {
            source: Source::Upstream {
                body,
                idle: IdleTimer::new(idle_timeout),
            },
            exchange,
            filter: None,
        }
    }

    /// Also passes the stream through `filter` after it has been observed.
    pub fn with_filter(mut self, filter: UsageFilter) -> Self {
        self.filter = Some(Box::new(filter));
        self
    }

    /// A complete body the proxy answers itself.
    pub fn local(bytes: Bytes, exchange: Exchange) -> Self {
        ResponseBody {
            source: Source::Local(Some(bytes).filter(|b| !b.is_empty())),
            exchange,
            filter: None,
        }
    }

    fn source_done(&self) -> bool {
        self.source.is_done()
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> PolledFrame {
        let this = self.get_mut();
        let polled = match &mut this.source {
            Source::Local(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Source::Upstream { body, idle } => match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    // Any frame, even an empty keep-alive one, proves the stream is alive.
                    idle.activity();
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => {
                    this.exchange
                        .finish(Ending::Failed("upstream_body_error", Origin::Upstream));
                    return Poll::Ready(Some(Err(BodyError::Stream(e))));
                }
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => {
                    if idle.poll_expired(cx) {
                        let ending = Ending::Failed("upstream_idle_timeout", Origin::Upstream);
                        this.exchange.finish(ending);
                        return Poll::Ready(Some(Err(BodyError::IdleTimeout(idle.timeout))));
                    }
                    Poll::Pending
                }
            },
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    // The frame itself is handed on untouched; the exchange reads a copy.
                    this.exchange.observe_response_data(data);
                } else if let Some(trailers) = frame.trailers_ref() {
                    // Trailers pass as they came; a gRPC call's status is read from them.
                    this.exchange.observe_trailers(trailers);
                }
                // The last frame is leaving: the response is complete now, not when hyper
                // next polls (it may never poll again once it sees the end), so the end is
                // noted here. The record is handed on only when hyper drops the body, which it
                // does after taking this frame (issue 11): no hand-off, and no GenAI parse at
                // all (that runs on the telemetry thread), comes before the last bytes.
                if this.source_done() {
                    this.exchange.end(Ending::Complete);
                }
            }
            Poll::Ready(None) => this.exchange.end(Ending::Complete),
            _ => {}
        }
        match (&mut this.filter, polled) {
            (None, polled) => polled,
            (Some(filter), Poll::Ready(Some(Ok(frame)))) => match frame.into_data() {
                Ok(data) => {
                    let last = this.source.is_done();
                    Poll::Ready(Some(Ok(Frame::data(filter.filter(data, last)))))
                }
                Err(frame) => Poll::Ready(Some(Ok(frame))),
            },
            (Some(filter), Poll::Ready(None)) => {
                Poll::Ready(filter.flush().map(|rest| Ok(Frame::data(rest))))
            }
            (Some(_), polled) => polled,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.source_done()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Upstream { body, .. } => body.size_hint(),
            Source::Local(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

/// The idle timer of a streaming body (either direction), kept cheap on the hot path: a frame only notes the time
/// (no timer-wheel update per frame), and the timer itself is armed only once the stream first
/// has to wait, so a response that arrives in one go never touches a timer. When the timer
/// fires it checks the last activity and re-arms if the stream spoke in the meantime.
struct IdleTimer {
    timeout: Duration,
    last_activity: Instant,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl IdleTimer {
    fn new(timeout: Duration) -> Self {
        IdleTimer {
            timeout,
            last_activity: Instant::now(),
            sleep: None,
        }
    }

    fn activity(&mut self) {
        self.last_activity = Instant::now();
    }

    /// Registers for wake-up at the deadline; true once the stream has been silent too long.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            let deadline = self.last_activity + self.timeout;
            let sleep = self
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            if sleep.deadline() != deadline {
                sleep.as_mut().reset(deadline);
            }
            if sleep.as_mut().poll(cx).is_pending() {
                return false;
            }
            if Instant::now() >= self.last_activity + self.timeout {
                return true;
            }
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // hyper drops an empty body (HEAD, 204, 304) without polling it: that is a complete
        // response. Anything else dropped before its end means the client went away.
        let ending = if self.source_done() {
            Ending::Complete
        } else {
            Ending::Cancelled
        };
        self.exchange.finish(ending);
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use http::{HeaderMap, HeaderValue, Method, Version, header};

    use super::*;
    use crate::genai::GenAi;
    use crate::observe::HttpFacts;
    use crate::settings::Config;
    use crate::telemetry::Telemetry;

    /// An exchange for `POST /v1/chat/completions` with a GenAI observation expecting JSON.
    fn chat_exchange() -> Exchange {
        let config = Config::from_source(&[("OTEL_SDK_DISABLED", "true")][..]).expect("config");
        let telemetry = Telemetry::start(&config.telemetry).expect("telemetry");
        let uri: http::Uri = "/v1/chat/completions".parse().expect("uri");
        let headers = HeaderMap::new();
        let http = HttpFacts::from_request(
            &Method::POST,
            &uri,
            Version::HTTP_11,
            &headers,
            "127.0.0.1:1".parse().expect("addr"),
            "http",
        );
        let mut exchange = Exchange::begin(telemetry, http, &headers);
        let genai = Arc::new(GenAi::new(config.genai.clone()));
        let mut observation = genai.observe(&Method::POST, uri.path()).expect("observed");
        let mut head = HeaderMap::new();
        head.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        observation.response_head(&head);
        exchange.set_genai(observation);
        exchange
    }

    const ANSWER: &str = r#"{"id":"c1","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":7}}"#;

    #[tokio::test]
    async fn the_last_frame_leaves_before_the_record_is_handed_on_or_parsed() {
        let mut body = ResponseBody::local(Bytes::from_static(ANSWER.as_bytes()), chat_exchange());
        let mut cx = Context::from_waker(Waker::noop());
        let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut body).poll_frame(&mut cx) else {
            panic!("the answer is one ready frame");
        };
        assert_eq!(frame.data_ref().map(|d| d.len()), Some(ANSWER.len()));
        assert!(body.is_end_stream(), "hyper sees the end with this frame");
        // The frame is in hyper's hands while the record is still here: ended (its end time
        // taken with the last frame), not handed to telemetry, nothing parsed.
        let record = body.exchange.record().expect("still held until the drop");
        assert_eq!(record.ending, Ending::Complete);
        assert!(record.genai.is_none() && record.observation.is_none());
        assert_eq!(record.response_bytes, ANSWER.len() as u64);
    }

    #[tokio::test]
    async fn the_record_carries_the_copies_unparsed_and_telemetry_concludes_them() {
        let mut exchange = chat_exchange();
        exchange.observe_response_data(ANSWER.as_bytes());
        exchange.end(Ending::Complete);
        // A later ending (the drop's "cancelled") does not replace the first.
        let mut record = exchange.take_record(Ending::Cancelled).expect("a record");
        assert_eq!(record.ending, Ending::Complete);
        assert!(record.genai.is_none(), "no parse on the I/O path");
        assert!(
            record.observation.is_some(),
            "the copies travel as they are"
        );
        record.conclude();
        let facts = record.genai.expect("parsed where the record is consumed");
        assert_eq!(
            (facts.input_tokens, facts.output_tokens),
            (Some(3), Some(7))
        );
        assert!(record.observation.is_none());
    }
}
