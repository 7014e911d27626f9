//! `RAGSCOPE_UPSTREAM_PROTOCOL` beyond gRPC (tests/grpc.rs): plain and streaming requests over
//! h2c to the upstream, trailers passing both ways untouched, and a bad value stopping
//! start-up.

mod support;

use std::convert::Infallible;
use std::process::{Command, Stdio};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::net::{TcpListener, TcpStream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_and_streaming_requests_travel_over_h2c() {
    let up = Upstream::start().await;
    let proxy = Proxy::builder()
        .upstream(&up)
        .env("RAGSCOPE_UPSTREAM_PROTOCOL", "h2c")
        .env("RAGSCOPE_WORKERS", "1")
        .run()
        .await;
    for client in [Client::http1(), Client::http2()] {
        let reply = client.get(proxy.url("/json")).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(up.last_request().version, Version::HTTP_2);
        let reply = client.get(proxy.url("/sse?events=5")).await;
        let body = String::from_utf8_lossy(&reply.body).into_owned();
        assert_eq!(body.matches("data: {\"i\":").count(), 5, "{body}");
        assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
        assert_eq!(up.last_request().version, Version::HTTP_2);
    }
    // Requests of both clients multiplex over the worker's one HTTP/2 connection.
    assert_eq!(up.connections_accepted(), 1);
}

/// An h2c server that reads the whole request, then answers with the request trailer
/// `x-request-trailer` echoed in its own trailers (with `x-response-trailer: done`).
async fn trailer_echo() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|req: Request<Incoming>| async move {
                    let collected = req.into_body().collect().await.expect("request body");
                    let echoed = collected
                        .trailers()
                        .and_then(|t| t.get("x-request-trailer"))
                        .cloned()
                        .unwrap_or_else(|| HeaderValue::from_static("missing"));
                    let mut trailers = HeaderMap::new();
                    trailers.insert("x-echoed", echoed);
                    trailers.insert("x-response-trailer", HeaderValue::from_static("done"));
                    let body = collected.to_bytes();
                    let frames = vec![
                        Ok::<_, Infallible>(Frame::data(body)),
                        Ok(Frame::trailers(trailers)),
                    ];
                    Ok::<_, Infallible>(Response::new(StreamBody::new(futures_util::stream::iter(
                        frames,
                    ))))
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_pass_both_ways_over_http2() {
    let (upstream, task) = trailer_echo().await;
    let proxy = Proxy::builder()
        .upstream(&upstream)
        .env("RAGSCOPE_UPSTREAM_PROTOCOL", "h2c")
        .run()
        .await;
    let tcp = TcpStream::connect(proxy.addr()).await.expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2c handshake with ragscope");
    tokio::spawn(connection);
    let mut trailers = HeaderMap::new();
    trailers.insert("x-request-trailer", HeaderValue::from_static("checksum-42"));
    let frames = vec![
        Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"payload"))),
        Ok(Frame::trailers(trailers)),
    ];
    let req = Request::post(format!("http://{}/upload", proxy.addr()))
        .header("te", "trailers")
        .body(StreamBody::new(futures_util::stream::iter(frames)))
        .expect("request");
    let response = sender.send_request(req).await.expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let collected = response.into_body().collect().await.expect("body");
    let trailers = collected
        .trailers()
        .cloned()
        .expect("response trailers arrive");
    assert_eq!(
        trailers.get("x-echoed").map(HeaderValue::as_bytes),
        Some(&b"checksum-42"[..]),
        "the request trailer reached the upstream"
    );
    assert_eq!(
        trailers
            .get("x-response-trailer")
            .map(HeaderValue::as_bytes),
        Some(&b"done"[..])
    );
    assert_eq!(collected.to_bytes(), Bytes::from_static(b"payload"));
    task.abort();
}

#[test]
fn a_bad_protocol_stops_start_up_with_exit_2() {
    for (upstream, protocol) in [
        ("http://127.0.0.1:8000", "http2"),
        ("http://127.0.0.1:8000", "h2"),
        ("https://127.0.0.1:8443", "h2c"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_ragscope"))
            .env("RAGSCOPE_UPSTREAM", upstream)
            .env("RAGSCOPE_UPSTREAM_PROTOCOL", protocol)
            .env("RAGSCOPE_LISTEN", "127.0.0.1:0")
            .env("RAGSCOPE_ADMIN_LISTEN", "off")
            .stdin(Stdio::null())
            .output()
            .expect("ragscope runs");
        assert_eq!(out.status.code(), Some(2), "{protocol}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("RAGSCOPE_UPSTREAM_PROTOCOL") && stderr.contains(protocol),
            "{stderr}"
        );
    }
}
