//! Self-tests of the integration-test support library (`tests/support/`):
//! each helper is exercised over real loopback sockets with a plain hyper
//! client, so proxy tests can trust what the helpers report.
//!
//! This file holds the plain clients; the tests are in `fake_upstream` (the scripted
//! upstream, dead and black-holed addresses) and `otlp_receiver` (the OTLP collector).

#[path = "../support/mod.rs"]
mod support;

mod fake_upstream;
mod otlp_receiver;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use support::*;

const TIMEOUT: Duration = Duration::from_secs(5);

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// An HTTP/1.1 client.
fn h1_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A cleartext HTTP/2 client (prior knowledge).
fn h2_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

async fn get(client: &HttpClient, url: String) -> Response<Incoming> {
    let request = Request::get(url)
        .body(Full::default())
        .expect("valid GET request");
    tokio::time::timeout(TIMEOUT, client.request(request))
        .await
        .expect("response headers in time")
        .expect("request succeeds")
}

async fn body_bytes(response: Response<Incoming>) -> Bytes {
    tokio::time::timeout(TIMEOUT, response.into_body().collect())
        .await
        .expect("body in time")
        .expect("body reads cleanly")
        .to_bytes()
}

async fn body_json(response: Response<Incoming>) -> serde_json::Value {
    serde_json::from_slice(&body_bytes(response).await).expect("JSON body")
}

/// Reads the next non-empty data frame of `body`, skipping trailers and the
/// empty end-of-stream DATA frame HTTP/2 may send; `None` at the end.
async fn next_data(body: &mut Incoming) -> Option<Bytes> {
    while let Some(frame) = body.frame().await {
        match frame.expect("frame reads cleanly").into_data() {
            Ok(data) if !data.is_empty() => return Some(data),
            _ => {}
        }
    }
    None
}
