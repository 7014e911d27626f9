//! `ragscope demo`: a first look in one command. Starts a small built-in RAG server (OpenAI-style
//! chat, JSON and streamed, and a `/query` endpoint with sources) and ragscope in front of it,
//! then prints what to try. Nothing is sent until the user sends it, and no collector is needed:
//! the admin listener's `/traces` shows the user's own requests.
//!
//! `ragscope demo-upstream` runs the demo server alone (the upstream of deploy/docker-compose.yml).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::ExitCode;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body::{Body, Frame};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::config::{Env, Source};
use crate::server::Server;
use crate::settings::Config;

/// Gap between streamed chunks: slow enough that time to first token and the stream's length
/// differ visibly in the waterfall.
const STREAM_GAP: Duration = Duration::from_millis(40);

/// The demo RAG server, serving until dropped.
#[derive(Debug)]
pub struct DemoUpstream {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl DemoUpstream {
    /// Binds `addr` (port 0 = any) and serves.
    pub async fn start(addr: SocketAddr) -> std::io::Result<DemoUpstream> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let builder = std::sync::Arc::new(auto::Builder::new(TokioExecutor::new()));
            // Connections live in this set, so stopping the server closes them too (a stopped
            // server that kept answering on old keep-alive connections would not look down).
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                while connections.try_join_next().is_some() {}
                let builder = builder.clone();
                connections.spawn(async move {
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service_fn(handle))
                        .await;
                });
            }
        });
        Ok(DemoUpstream { addr, task })
    }

    /// The address it serves on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for DemoUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A response body fed chunk by chunk from a task, for the SSE stream.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b))))
    }
}

type DemoBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

async fn handle(req: Request<Incoming>) -> Result<Response<DemoBody>, Infallible> {
    let (parts, body) = req.into_parts();
    // Demo requests are small; a cap keeps a stray upload from filling memory.
    let body = http_body_util::Limited::new(body, 1 << 20)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    Ok(match (&parts.method, parts.uri.path()) {
        (&Method::GET, "/health") => json_response(StatusCode::OK, &json!({"status": "ok"})),
        (&Method::POST, "/v1/chat/completions") => chat(&request),
        (&Method::POST, "/query") => query(&request),
        (&Method::GET, "/") => json_response(
            StatusCode::OK,
            &json!({"service": "ragscope demo RAG server", "routes": ["POST /v1/chat/completions", "POST /query", "GET /health"]}),
        ),
        _ => json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": {"type": "not_found", "message": "try POST /v1/chat/completions or POST /query"}}),
        ),
    })
}

fn json_response(status: StatusCode, body: &Value) -> Response<DemoBody> {
    let mut r = Response::new(
        http_body_util::Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

/// The last user message, for a canned but request-dependent answer.
fn question(request: &Value) -> String {
    request["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .or_else(|| request["query"].as_str())
        .unwrap_or("your question")
        .chars()
        .take(200)
        .collect()
}

fn answer_words(question: &str) -> Vec<String> {
    format!("Here is what the documents say about \"{question}\": ragscope records spans, tokens and time to first token for every request.")
        .split(' ')
        .map(str::to_owned)
        .collect()
}

/// A rough token count: words, as a demo server would estimate.
fn count_tokens(s: &str) -> u64 {
    s.split_whitespace().count().max(1) as u64
}

fn chat(request: &Value) -> Response<DemoBody> {
    let model = request["model"].as_str().unwrap_or("demo-rag-1").to_owned();
    let q = question(request);
    let words = answer_words(&q);
    let prompt_tokens = count_tokens(&q) + 12;
    let completion_tokens = words.len() as u64;
    let id = format!(
        "chatcmpl-demo-{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    });
    if request["stream"] != Value::Bool(true) {
        return json_response(
            StatusCode::OK,
            &json!({
                "id": id,
                "object": "chat.completion",
                "model": model,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": words.join(" ")},
                    "finish_reason": "stop",
                }],
                "usage": usage,
            }),
        );
    }
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        let chunk = |delta: Value, finish: Value, usage: Value| {
            let mut c = json!({
                "id": id, "object": "chat.completion.chunk", "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            });
            if !usage.is_null() {
                c["usage"] = usage;
            }
            Bytes::from(format!("data: {c}\n\n"))
        };
        // A model "thinks" before its first token.
        tokio::time::sleep(STREAM_GAP * 3).await;
        let mut events = vec![chunk(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
            Value::Null,
        )];
        for (i, w) in words.iter().enumerate() {
            let text = if i == 0 { w.clone() } else { format!(" {w}") };
            events.push(chunk(json!({"content": text}), Value::Null, Value::Null));
        }
        events.push(chunk(json!({}), json!("stop"), Value::Null));
        // The final usage chunk, as OpenAI sends with stream_options.include_usage.
        let mut last = json!({"id": id, "object": "chat.completion.chunk", "model": model, "choices": [], "usage": usage});
        last["usage"] = usage.clone();
        events.push(Bytes::from(format!("data: {last}\n\n")));
        events.push(Bytes::from_static(b"data: [DONE]\n\n"));
        for e in events {
            if tx.send(e).await.is_err() {
                return;
            }
            tokio::time::sleep(STREAM_GAP).await;
        }
    });
    let mut r = Response::new(ChannelBody(rx).boxed_unsync());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream"),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    r
}

fn query(request: &Value) -> Response<DemoBody> {
    let q = question(request);
    let top_k = request["top_k"].as_u64().unwrap_or(3).min(10);
    let sources: Vec<Value> = (0..top_k)
        .map(|i| {
            json!({
                "id": format!("doc-{}", i + 1),
                "title": format!("Operations handbook, section {}", i + 1),
                "score": ((0.92 - 0.11 * i as f64) * 1000.0).round() / 1000.0,
            })
        })
        .collect();
    json_response(
        StatusCode::OK,
        &json!({"answer": answer_words(&q).join(" "), "sources": sources}),
    )
}

/// The demo's configuration: its own defaults, the environment on top (except the upstream,
/// which is always the demo server).
struct DemoSource {
    defaults: HashMap<&'static str, String>,
    upstream: String,
}

impl Source for DemoSource {
    fn get(&self, name: &str) -> Option<String> {
        if name == "RAGSCOPE_UPSTREAM" {
            return Some(self.upstream.clone());
        }
        Env.get(name)
            .filter(|v| !v.trim().is_empty())
            .or_else(|| self.defaults.get(name).cloned())
    }
}

fn demo_defaults() -> HashMap<&'static str, String> {
    let mut d = HashMap::from([
        ("RAGSCOPE_LISTEN", "127.0.0.1:8080".to_owned()),
        ("RAGSCOPE_ADMIN_LISTEN", "127.0.0.1:9901".to_owned()),
        ("RAGSCOPE_HEALTH_PATH", "/health".to_owned()),
        ("RAGSCOPE_HEALTH_INTERVAL", "5s".to_owned()),
        ("RAGSCOPE_LOG_FORMAT", "text".to_owned()),
        (
            "RAGSCOPE_LOG",
            "warn,ragscope=info,ragscope::access=off".to_owned(),
        ),
    ]);
    // Without a collector configured, export nothing rather than log failed exports: /traces
    // and /metrics work without one.
    if Env.get("OTEL_EXPORTER_OTLP_ENDPOINT").is_none()
        && Env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_none()
    {
        d.insert("OTEL_TRACES_EXPORTER", "none".to_owned());
        d.insert("OTEL_METRICS_EXPORTER", "none".to_owned());
    }
    d
}

/// `ragscope demo`.
pub fn main() -> ExitCode {
    run(|| async {
        let upstream_addr: SocketAddr = match Env.get("RAGSCOPE_DEMO_UPSTREAM_LISTEN") {
            Some(a) => match a.parse() {
                Ok(a) => a,
                Err(_) => {
                    eprintln!(
                        "ragscope: invalid RAGSCOPE_DEMO_UPSTREAM_LISTEN={a:?}: expected an address like 127.0.0.1:8000"
                    );
                    return ExitCode::from(2);
                }
            },
            None => SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let upstream = match DemoUpstream::start(upstream_addr).await {
            Ok(u) => u,
            Err(e) => {
                eprintln!("ragscope: cannot start the demo RAG server on {upstream_addr}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let source = DemoSource {
            defaults: demo_defaults(),
            upstream: format!("http://{}", upstream.addr()),
        };
        let config = match Config::from_source(&source) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("ragscope: {e}");
                return ExitCode::from(2);
            }
        };
        let _log_guard = crate::telemetry::logging::init(&config.log, config.log_format);
        let server = match Server::start(config).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("ragscope: {e}");
                return ExitCode::FAILURE;
            }
        };
        println!(
            "{}",
            banner(server.proxy_addr(), server.admin_addr(), upstream.addr())
        );
        shutdown_signal().await;
        server.shutdown();
        server.wait().await;
        drop(upstream);
        ExitCode::SUCCESS
    })
}

/// `ragscope demo-upstream`: the demo RAG server alone, on `RAGSCOPE_DEMO_UPSTREAM_LISTEN`
/// (default `0.0.0.0:8000`).
pub fn upstream_main() -> ExitCode {
    run(|| async {
        let raw = Env
            .get("RAGSCOPE_DEMO_UPSTREAM_LISTEN")
            .unwrap_or_else(|| "0.0.0.0:8000".to_owned());
        let Ok(addr) = raw.parse::<SocketAddr>() else {
            eprintln!(
                "ragscope: invalid RAGSCOPE_DEMO_UPSTREAM_LISTEN={raw:?}: expected an address like 0.0.0.0:8000"
            );
            return ExitCode::from(2);
        };
        match DemoUpstream::start(addr).await {
            Ok(up) => {
                println!("demo RAG server listening on http://{}", up.addr());
                shutdown_signal().await;
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ragscope: cannot start the demo RAG server on {addr}: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

fn run<F, Fut>(f: F) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ExitCode>,
{
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => {
            let code = rt.block_on(f());
            rt.shutdown_timeout(Duration::from_millis(200));
            code
        }
        Err(e) => {
            eprintln!("ragscope: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn banner(proxy: SocketAddr, admin: Option<SocketAddr>, upstream: SocketAddr) -> String {
    let p = format!("http://{proxy}");
    let mut s = format!(
        "\nragscope demo: ragscope on {p} in front of a demo RAG server on http://{upstream}\n\n\
         Try:\n\
         \x20 curl -s {p}/v1/chat/completions -H 'content-type: application/json' \\\n\
         \x20      -d '{{\"model\":\"demo-rag-1\",\"messages\":[{{\"role\":\"user\",\"content\":\"What is ragscope?\"}}]}}'\n\
         \x20 curl -sN {p}/v1/chat/completions -H 'content-type: application/json' \\\n\
         \x20      -d '{{\"model\":\"demo-rag-1\",\"stream\":true,\"stream_options\":{{\"include_usage\":true}},\"messages\":[{{\"role\":\"user\",\"content\":\"Stream it\"}}]}}'\n\
         \x20 curl -s {p}/query -H 'content-type: application/json' -d '{{\"query\":\"How do I deploy it?\"}}'\n"
    );
    if let Some(a) = admin {
        s.push_str(&format!(
            "\nThen open:\n\
             \x20 http://{a}/traces         recent requests: spans, tokens, time to first token\n\
             \x20 http://{a}/metrics        Prometheus metrics\n\
             \x20 http://{a}/debug/config   effective configuration\n"
        ));
    }
    s.push_str("\nStop with Ctrl-C.\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn question_is_the_last_user_message() {
        let r = json!({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]});
        assert_eq!(question(&r), "c");
        assert_eq!(question(&json!({"query": "q"})), "q");
        assert_eq!(question(&Value::Null), "your question");
    }

    #[test]
    fn banner_names_the_urls() {
        let b = banner(
            "127.0.0.1:8080".parse().expect("addr"),
            Some("127.0.0.1:9901".parse().expect("addr")),
            "127.0.0.1:8000".parse().expect("addr"),
        );
        assert!(b.contains("http://127.0.0.1:9901/traces"));
        assert!(b.contains("curl -s http://127.0.0.1:8080/query"));
    }
}
