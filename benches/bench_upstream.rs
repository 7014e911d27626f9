//! Fast fake LLM upstream for the side-by-side load benchmark (`benches/load.sh`).
//!
//! It is the backend that the benchmark puts behind nginx and behind ragscope,
//! and also loads directly as the baseline. It answers every request, whatever
//! the method or path, with `200 OK`, `content-type: application/json` and a
//! small fixed body shaped like an OpenAI-style chat completion, so that the
//! numbers measure the proxies rather than the backend.
//!
//! It speaks HTTP/1.1 and cleartext HTTP/2 (h2c, prior knowledge) on the same
//! port, on a multi-threaded tokio runtime.
//!
//! Usage: `bench_upstream [ADDR]`, where `ADDR` defaults to `127.0.0.1:8000`.
//! Build it with `cargo build --release --example bench_upstream`.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// The fixed response body: an OpenAI-style chat completion with usage, ~300 bytes, so the
/// proxy's GenAI observation has a model, finish reason and token counts to read.
const BODY: &[u8] = br#"{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"bench-model","choices":[{"index":0,"message":{"role":"assistant","content":"Retrieval-augmented generation answers from documents it retrieves."},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":9,"total_tokens":21}}"#;

const DEFAULT_ADDR: &str = "127.0.0.1:8000";

async fn answer(_req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut resp = Response::new(Full::new(Bytes::from_static(BODY)));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let arg = std::env::args().nth(1);
    let addr: SocketAddr = arg.as_deref().unwrap_or(DEFAULT_ADDR).parse()?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(addr))
}

async fn serve(addr: SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
    let listener = TcpListener::bind(addr).await?;
    eprintln!("bench_upstream listening on {}", listener.local_addr()?);

    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, _peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(err) => {
                // E.g. EMFILE under heavy load: back off briefly, keep serving.
                eprintln!("bench_upstream: accept failed: {err}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        tokio::spawn(async move {
            // Connection errors (client resets etc.) are expected under load.
            let _ = builder
                .serve_connection(TokioIo::new(stream), service_fn(answer))
                .await;
        });
    }
}
