//! Spend budgets over real sockets (issue 14, item 8: `RAGSCOPE_COST_LIMIT`): reservations
//! priced by `RAGSCOPE_PRICES`, charges at the cost the span reports (JSON and streams, with and
//! without usage), a model without a price, the 429 and the x-ratelimit-*-cost headers, `n`
//! choices, one spend budget shared by two ragscope processes through a real `redis-server`,
//! and the configuration mistakes that stop start-up.
//!
//! This file holds the stand-in LLM server, the price file and the set-up; the tests are in
//! `charging` (what is reserved, charged and refused), `shared` (one budget through Redis) and
//! `configuration` (price reloads, start-up mistakes).

#[path = "../support/mod.rs"]
mod support;

mod charging;
mod configuration;
mod shared;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Response};
use http_body_util::{BodyExt, Full};
use serde_json::{Value as Json, json};
use support::*;

const WAIT: Duration = Duration::from_secs(15);
/// Input tokens the stand-in reports.
const PROMPT_TOKENS: u64 = 11;
/// `m*` costs 1000 a million input tokens and 2000 a million output: 1000 and 2000
/// micro-units a token (so amounts are easy to read).
const PRICES: &str = "# test prices\nm* 1000 2000 - - USD\n";
const IN_MICROS: u64 = 1000;
const OUT_MICROS: u64 = 2000;

/// The stand-in LLM server: chat completions answered by the request's model, `x_events`
/// content chunks `x_delay_ms` apart, usage unless `x_usage` is false (JSON) or when
/// `stream_options.include_usage` (streams).
fn route(seen: &SeenRequest) -> Option<Response<UpstreamBody>> {
    if !seen.path().ends_with("/v1/chat/completions") {
        return None;
    }
    let request = seen.json();
    let model = request["model"].clone();
    let events = request["x_events"].as_u64().unwrap_or(5);
    let delay = Duration::from_millis(request["x_delay_ms"].as_u64().unwrap_or(0));
    let usage = json!({"prompt_tokens": PROMPT_TOKENS, "completion_tokens": events,
                       "total_tokens": PROMPT_TOKENS + events});
    if request["stream"] != true {
        let mut answer = json!({"id": "c1", "object": "chat.completion", "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "word ".repeat(events as usize)},
                         "finish_reason": "stop"}]});
        if request["x_usage"] != false {
            answer["usage"] = usage;
        }
        return Some(canned_json(&answer, &[]));
    }
    let chunk = |body: Json| Bytes::from(format!("data: {body}\n\n"));
    let mut frames = vec![];
    for _ in 0..events {
        frames.push((
            delay,
            chunk(json!({"id": "c1", "model": model,
                         "choices": [{"index": 0, "delta": {"content": "word "}}]})),
        ));
    }
    if request["stream_options"]["include_usage"] == true {
        frames.push((
            Duration::ZERO,
            chunk(json!({"id": "c1", "model": model, "choices": [], "usage": usage})),
        ));
    }
    frames.push((Duration::ZERO, Bytes::from_static(b"data: [DONE]\n\n")));
    Some(canned_sse(frames, &[]))
}

/// A chat request to `model`: `max_tokens`, and what the stand-in should answer.
fn chat(model: &str, max_tokens: u64, stream: bool, events: u64, delay_ms: u64) -> Json {
    json!({"model": model, "max_tokens": max_tokens, "stream": stream,
           "stream_options": {"include_usage": false},
           "messages": [{"role": "user", "content": "What is the capital of France?"}],
           "x_events": events, "x_delay_ms": delay_ms})
}

fn input_tokens(body: &Json) -> u64 {
    (body.to_string().len() as u64).div_ceil(4)
}

/// What ragscope reserves for `body`, in micro-units: its input estimate and its output cap
/// (times `n`), priced.
fn reservation(body: &Json) -> u64 {
    let choices = body["n"].as_u64().unwrap_or(1);
    input_tokens(body) * IN_MICROS + body["max_tokens"].as_u64().unwrap_or(0) * choices * OUT_MICROS
}

fn money(micros: u64) -> f64 {
    micros as f64 / 1e6
}

fn post(url: &str, body: &Json, team: &str) -> http::Request<Full<Bytes>> {
    request(Method::POST, url)
        .header("content-type", "application/json")
        .header("x-team", team)
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request")
}

async fn send(client: &Client, url: &str, body: &Json, team: &str) -> Reply {
    client.request(post(url, body, team)).await
}

fn header_f64(reply: &Reply, name: &str) -> f64 {
    reply
        .header(name)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing or not a number: {:?}", reply.headers))
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

/// The price file, kept on disk while the test runs.
struct PriceFile {
    _dir: tempfile::TempDir,
    path: String,
}

impl PriceFile {
    /// Replaces the file whole (a rename), so the watcher never reads half of it.
    fn replace(&self, text: &str) {
        let next = format!("{}.next", self.path);
        std::fs::write(&next, text).expect("write prices");
        std::fs::rename(&next, &self.path).expect("replace prices");
    }
}

fn price_file(text: &str) -> PriceFile {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("prices.txt");
    std::fs::write(&path, text).expect("write prices");
    PriceFile {
        path: path.display().to_string(),
        _dir: dir,
    }
}

fn builder(up: &Upstream, prices: &PriceFile, limit: &str) -> ProxyBuilder {
    Proxy::builder()
        .upstream(up)
        .env("RAGSCOPE_RATE_KEY", "header:x-team")
        .env("RAGSCOPE_PRICES", &prices.path)
        .env("RAGSCOPE_COST_LIMIT", limit)
}

struct Setup {
    up: Upstream,
    otlp: OtlpReceiver,
    _prices: PriceFile,
    _proxy: Proxy,
    client: Client,
    url: String,
}

async fn start(limit: &str, vars: &[(&str, &str)]) -> Setup {
    let up = Upstream::scripted(route).await;
    let otlp = OtlpReceiver::start().await;
    let prices = price_file(PRICES);
    let proxy = vars
        .iter()
        .fold(builder(&up, &prices, limit).otlp(&otlp), |b, (k, v)| {
            b.env(k, *v)
        })
        .run()
        .await;
    let url = proxy.url("/v1/chat/completions");
    Setup {
        up,
        otlp,
        _prices: prices,
        _proxy: proxy,
        client: Client::http1(),
        url,
    }
}

/// The server span whose spend reservation settled with `usage` (`reported`, `estimated`).
async fn settled(otlp: &OtlpReceiver, usage: &str, count: usize) -> Vec<CollectedSpan> {
    otlp.wait_for_spans(
        |s| s.str_attr("ragscope.cost_limit.usage") == Some(usage),
        count,
        WAIT,
    )
    .await
}
