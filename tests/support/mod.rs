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
//! * [`browser`]: the DOM of an admin page as headless Chromium renders it.
//! * [`tls`]: a private CA (rcgen), certificate files, TLS clients and an https upstream.
//!
//! Integration tests use it with `mod support; use support::*;`.

#![allow(dead_code)]

pub mod browser;
pub mod otlp;
pub mod ragscope;
mod serve;
pub mod tls;
pub mod upstream;

// A test binary that uses only part of the library would otherwise warn.
#[allow(unused_imports)]
pub use browser::*;
#[allow(unused_imports)]
pub use otlp::*;
#[allow(unused_imports)]
pub use ragscope::*;
#[allow(unused_imports)]
pub use tls::*;
#[allow(unused_imports)]
pub use upstream::*;

use std::time::Duration;

use tokio::time::Instant;

/// Polls `condition` every 10 ms until it returns `true` or `timeout` elapses.
///
/// Returns whether the condition was met; it is always checked at least once.
pub async fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
