//! Fast fake LLM upstream for the side-by-side load benchmark (`benches/load.sh`).
//!
//! It is the backend that the benchmark puts behind nginx and behind ragscope,
//! and also loads directly as the baseline. It answers every request, whatever
//! the method or path, with `200 OK`, `content-type: application/json` and a
//! small fixed body shaped like an OpenAI-style chat completion, so that the
//! numbers measure the proxies rather than the backend.
//!
//! A request that accepts `text/event-stream` gets a Server-Sent Events stream instead:
//! [`SSE_EVENTS`] `chat.completion.chunk` events and `data: [DONE]`, each written as its own
//! frame and flushed on its own (the body yields between events), as an LLM server streams
//! tokens, so the proxies handle one small read and write per event.
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
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{Full, StreamBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// The fixed response body: an OpenAI-style chat completion with usage, ~300 bytes, so the
/// proxy's GenAI observation has a model, finish reason and token counts to read.
const BODY: &[u8] = br#"{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"bench-model","choices":[{"index":0,"message":{"role":"assistant","content":"Retrieval-augmented generation answers from documents it retrieves."},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":9,"total_tokens":21}}"#;

const DEFAULT_ADDR: &str = "127.0.0.1:8000";

/// Events in one streamed answer (`benches/load.sh`'s SSE scenario divides by it).
const SSE_EVENTS: u32 = 500;

/// One streamed token, shaped like an OpenAI `chat.completion.chunk` (~150 bytes).
const SSE_EVENT: &[u8] = b"data: {\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"bench-model\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" token\"},\"finish_reason\":null}]}\n\n";

const SSE_DONE: &[u8] = b"data: [DONE]\n\n";

type AnyBody = UnsyncBoxBody<Bytes, Infallible>;

async fn answer(req: Request<Incoming>) -> Result<Response<AnyBody>, Infallible> {
    let streamed = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    let (body, content_type) = if streamed {
        (events(), "text/event-stream")
    } else {
        (
            AnyBody::new(Full::new(Bytes::from_static(BODY))),
            "application/json",
        )
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    Ok(resp)
}

/// The SSE answer: [`SSE_EVENTS`] - 1 token events, then `[DONE]`. Before each event the
/// stream yields once, so hyper writes and flushes every event on its own instead of gathering
/// them into one large write.
fn events() -> AnyBody {
    let stream = futures_util::stream::unfold(SSE_EVENTS, |left| async move {
        if left == 0 {
            return None;
        }
        tokio::task::yield_now().await;
        let event = if left == 1 { SSE_DONE } else { SSE_EVENT };
        Some((Ok(Frame::data(Bytes::from_static(event))), left - 1))
    });
    AnyBody::new(StreamBody::new(stream))
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
