//! Test support for ragscope's integration tests: real servers on loopback.
//!
//! Every server binds `127.0.0.1:0`, runs on the test's tokio runtime and is
//! shut down when its handle is dropped, so tests never leak sockets or tasks.
//!
//! * [`Upstream`]: a fake RAG/LLM backend (HTTP/1.1 and h2c on one port) with
//!   JSON, echo, SSE, large, slow and stalling routes, plus request, connection
//!   and aborted-stream accounting.
//! * [`BlackHole`] and [`dead_addr`]: upstreams that never answer / refuse.
//! * [`Proxy`] and [`Binary`]: ragscope itself, in process or as the real binary, and
//!   [`Client`], the HTTP/1.1 and HTTP/2 client tests talk to it with.
//! * [`OtlpReceiver`]: an in-process OTLP collector accepting both OTLP/gRPC
//!   and OTLP/HTTP protobuf, flattening what it receives into
//!   [`CollectedSpan`]s and [`CollectedMetric`]s.
//!
//! * [`RedisServer`]: a real `redis-server` on a free port.
//! * [`canary`]: stand-ins for the canary tests (self-naming upstreams, `/canary` reads).
//! * [`browser`]: the DOM of an admin page as headless Chromium renders it.
//! * [`tls`]: a private CA (rcgen), certificate files, TLS clients and an https upstream.
//!
//! Integration tests use it with `mod support; use support::*;`.

#![allow(dead_code)]

pub mod browser;
pub mod canary;
pub mod otlp;
pub mod ragscope;
pub mod redis;
mod serve;
pub mod tls;
pub mod upstream;

// A test binary that uses only part of the library would otherwise warn.
#[allow(unused_imports)]
pub use browser::*;
#[allow(unused_imports)]
pub use canary::*;
#[allow(unused_imports)]
pub use otlp::*;
#[allow(unused_imports)]
pub use ragscope::*;
#[allow(unused_imports)]
pub use redis::*;
#[allow(unused_imports)]
pub use tls::*;
#[allow(unused_imports)]
pub use upstream::*;

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// How often the waits below look at their condition again.
const POLL: Duration = Duration::from_millis(10);

/// Polls `condition` every 10 ms until it returns `true` or `timeout` elapses.
///
/// Returns whether the condition was met; it is always checked at least once.
pub async fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    wait_until_async(timeout, || std::future::ready(condition())).await
}

/// [`wait_until`] for a condition that has to await (a request, a connect).
pub async fn wait_until_async<F, Fut>(timeout: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(timeout, || {
        let met = condition();
        async move { met.await.then_some(()) }
    })
    .await
    .is_some()
}

/// Polls `probe` every 10 ms until it yields a value or `timeout` elapses.
///
/// Returns the first value; `None` when the deadline passed. The probe always runs at
/// least once, and once more at the deadline, so a slow probe cannot make it give up early.
pub async fn wait_for<T, F, Fut>(timeout: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let expired = Instant::now() >= deadline;
        if let Some(value) = probe().await {
            return Some(value);
        }
        if expired {
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Whether `s` is exactly `len` lowercase hex digits (W3C trace-context fields).
pub fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Whether `s` is a valid W3C trace id (`len` 32) or span id (`len` 16): lowercase hex,
/// not all zero.
pub fn is_valid_id(s: &str, len: usize) -> bool {
    is_lower_hex(s, len) && s.bytes().any(|b| b != b'0')
}
