//! Spend budgets over real sockets (issue 14, item 8: `RAGSCOPE_COST_LIMIT`): reservations
//! priced by `RAGSCOPE_PRICES`, charges at the cost the span reports (JSON and streams, with and
//! without usage), a model without a price, the 429 and the x-ratelimit-*-cost headers, `n`
//! choices, one spend budget shared by two ragscope processes through a real `redis-server`,
//! and the configuration mistakes that stop start-up.

mod support;

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

#[tokio::test(flavor = "multi_thread")]
async fn json_and_streamed_answers_are_charged_the_cost_the_span_reports() {
    let s = start("100/h", &[("RAGSCOPE_TOKEN_LIMIT", "1000000/h")]).await;
    let (otlp, c, url) = (&s.otlp, &s.client, s.url.clone());
    let body = chat("m1", 100, false, 5, 0);
    let first = send(c, &url, &body, "a").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("x-ratelimit-limit-cost"), Some("100"));
    assert!(close(
        header_f64(&first, "x-ratelimit-remaining-cost"),
        100.0 - money(reservation(&body))
    ));
    assert!(first.header("x-ratelimit-reset-cost").is_some());
    // Combinable: the token budget's headers are there too.
    assert!(first.header("x-ratelimit-remaining-tokens").is_some());
    let span = settled(otlp, "reported", 1).await.remove(0);
    let charged = span
        .double_attr("ragscope.cost_limit.charged")
        .expect("charged");
    assert!(close(
        charged,
        money(PROMPT_TOKENS * IN_MICROS + 5 * OUT_MICROS)
    ));
    // One cost function: the charge is what the span says the inference cost.
    assert_eq!(span.double_attr("ragscope.genai.cost"), Some(charged));
    assert!(close(
        span.double_attr("ragscope.cost_limit.reserved")
            .expect("reserved"),
        money(reservation(&body))
    ));
    assert!(close(
        span.double_attr("ragscope.cost_limit.refunded")
            .expect("refunded"),
        money(reservation(&body)) - charged
    ));
    assert_eq!(
        span.str_attr("ragscope.cost_limit.decision"),
        Some("allowed")
    );
    assert_eq!(span.str_attr("ragscope.cost_limit.backend"), Some("local"));
    assert!(span.int_attr("ragscope.token_limit.charged").is_some());

    // A stream with usage: reported; without: the token estimate, priced.
    let mut with = chat("m1", 500, true, 7, 0);
    with["stream_options"]["include_usage"] = json!(true);
    assert_eq!(send(c, &url, &with, "b").await.status, 200);
    let spans = settled(otlp, "reported", 2).await;
    assert!(spans.iter().any(|s| {
        s.double_attr("ragscope.cost_limit.charged")
            .is_some_and(|c| close(c, money(PROMPT_TOKENS * IN_MICROS + 7 * OUT_MICROS)))
    }));
    let without = chat("m1", 500, true, 7, 0);
    assert_eq!(send(c, &url, &without, "c").await.status, 200);
    let span = settled(otlp, "estimated", 1).await.remove(0);
    assert!(close(
        span.double_attr("ragscope.cost_limit.charged")
            .expect("charged"),
        money(input_tokens(&without) * IN_MICROS + 7 * OUT_MICROS)
    ));
    // A JSON answer without usage: estimated too, from the response's bytes.
    let mut quiet = chat("m1", 100, false, 5, 0);
    quiet["x_usage"] = json!(false);
    assert_eq!(send(c, &url, &quiet, "d").await.status, 200);
    let spans = settled(otlp, "estimated", 2).await;
    assert!(spans.iter().all(|s| {
        s.double_attr("ragscope.cost_limit.charged")
            .is_some_and(|c| c > 0.0)
    }));
    // The charge counter, in the price file's currency.
    otlp.wait_for_metric_where(
        "ragscope.cost_limit.charged",
        |m| {
            m.number_points()
                .iter()
                .any(|p| p.attr("usage").and_then(|v| v.as_str()) == Some("estimated"))
        },
        WAIT,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_model_without_a_price_is_admitted_unpriced_and_charged_nothing() {
    let s = start("0.000001/h", &[]).await;
    let (otlp, c, url) = (&s.otlp, &s.client, s.url.clone());
    for _ in 0..3 {
        let reply = send(c, &url, &chat("llama", 100, false, 5, 0), "a").await;
        assert_eq!(
            reply.status, 200,
            "a budget of one micro-unit refuses nothing unpriced"
        );
        assert!(reply.header("x-ratelimit-limit-cost").is_none());
    }
    let spans = otlp
        .wait_for_spans(
            |s| s.str_attr("ragscope.cost_limit.decision") == Some("unpriced"),
            3,
            WAIT,
        )
        .await;
    for span in spans {
        assert_eq!(span.double_attr("ragscope.cost_limit.reserved"), Some(0.0));
        assert!(!span.has_attr("ragscope.cost_limit.charged"));
        assert!(!span.has_attr("ragscope.genai.cost"), "no price, no cost");
    }
    otlp.wait_for_metric_where(
        "ragscope.cost_limit.decisions",
        |m| {
            m.number_points().iter().any(|p| {
                p.attr("outcome").and_then(|v| v.as_str()) == Some("unpriced") && p.as_f64() >= 3.0
            })
        },
        WAIT,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn over_the_budget_is_429_cost_limit_exceeded_with_retry_after_and_the_headers() {
    let s = start("0.5/h", &[]).await;
    let (up, c, url) = (&s.up, &s.client, s.url.clone());
    // Reserves ~0.3, then reports 300 output tokens: 0.611, past the budget into debt.
    let big = chat("m1", 100, false, 300, 0);
    assert!(reservation(&big) < 500_000);
    assert_eq!(send(c, &url, &big, "a").await.status, 200);
    let small = chat("m1", 1, false, 1, 0);
    let refused = wait_for(WAIT, || async {
        let r = send(c, &url, &small, "a").await;
        (r.status == 429).then_some(r)
    })
    .await
    .expect("the overrun was charged");
    assert_eq!(refused.error_type(), "cost_limit_exceeded");
    assert_eq!(refused.header("content-type"), Some("application/json"));
    let retry: u64 = refused
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("retry-after");
    // 0.111 of debt and the small request's ~0.03 at 0.5/h: over a minute.
    assert!(retry > 60, "{retry}");
    assert_eq!(refused.header("x-ratelimit-limit-cost"), Some("0.5"));
    assert_eq!(refused.header("x-ratelimit-remaining-cost"), Some("0"));
    let reset = refused.header("x-ratelimit-reset-cost").expect("reset");
    assert!(reset.contains('m'), "{reset}");
    let forwarded = up.request_count();
    let again = send(c, &url, &small, "a").await;
    assert_eq!(again.status, 429);
    assert_eq!(
        up.request_count(),
        forwarded,
        "a refused request never goes upstream"
    );
    // Another key has its own budget.
    assert_eq!(send(c, &url, &small, "b").await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn each_choice_asked_for_reserves_its_own_output() {
    let s = start("100/h", &[]).await;
    let (otlp, c, url) = (&s.otlp, &s.client, s.url.clone());
    let mut body = chat("m1", 50, false, 1, 0);
    body["n"] = json!(3);
    let reply = send(c, &url, &body, "a").await;
    assert_eq!(reply.status, 200);
    let span = settled(otlp, "reported", 1).await.remove(0);
    assert!(close(
        span.double_attr("ragscope.cost_limit.reserved")
            .expect("reserved"),
        money(input_tokens(&body) * IN_MICROS + 3 * 50 * OUT_MICROS)
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn two_ragscope_processes_on_one_redis_share_one_spend_budget() {
    let redis = RedisServer::start().await;
    let up = Upstream::scripted(route).await;
    let prices = price_file(PRICES);
    let fleet = || {
        builder(&up, &prices, "1/h")
            .env("RAGSCOPE_RATE_LIMIT_REDIS", redis.url())
            .env("RAGSCOPE_RATE_LIMIT_REDIS_TIMEOUT", "2s")
            .spawn()
    };
    let (a, b) = (fleet(), fleet());
    let (a_addr, _) = a.wait_serving().await;
    let (b_addr, _) = b.wait_serving().await;
    let c = Client::http1();
    // A's stream holds ~0.9 for about a second.
    let big = chat("m1", 420, true, 40, 25);
    assert!((850_000..1_000_000).contains(&reservation(&big)));
    let held = c
        .send(post(
            &format!("http://{a_addr}/v1/chat/completions"),
            &big,
            "t",
        ))
        .await;
    assert_eq!(held.status(), 200);
    let b_url = format!("http://{b_addr}/v1/chat/completions");
    // ~0.45: more than A's reservation leaves, less than what its charge (~0.15) does.
    let next = chat("m1", 200, false, 1, 0);
    let refused = send(&c, &b_url, &next, "t").await;
    assert_eq!(refused.status, 429, "B sees A's reservation");
    assert_eq!(refused.error_type(), "cost_limit_exceeded");
    let _ = held.into_body().collect().await.expect("stream completes");
    let fits = wait_until_async(WAIT, || async {
        send(&c, &b_url, &next, "t").await.status == 200
    })
    .await;
    assert!(fits, "A's settlement never reached B");
    let stored = redis.cli(&["KEYS", "*"]);
    assert!(
        stored.contains("ragscope:cb:") && !stored.contains("ragscope:tb:"),
        "{stored}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_settle_redis_did_not_answer_is_retried_and_never_charged_twice() {
    let redis = RedisServer::start().await;
    let up = Upstream::scripted(route).await;
    let otlp = OtlpReceiver::start().await;
    let prices = price_file(PRICES);
    let proxy = builder(&up, &prices, "1/h")
        .otlp(&otlp)
        .env("RAGSCOPE_RATE_LIMIT_REDIS", redis.url())
        .env("RAGSCOPE_RATE_LIMIT_REDIS_TIMEOUT", "200ms")
        .run()
        .await;
    let c = Client::http1();
    let url = proxy.url("/v1/chat/completions");
    let stream = chat("m1", 420, true, 40, 0);
    let charge = input_tokens(&stream) * IN_MICROS + 40 * OUT_MICROS;
    // Fits after one charge of the stream, not after two.
    let next = chat("m1", 370, false, 1, 0);
    assert!((1_000_000 - 2 * charge..1_000_000 - charge).contains(&reservation(&next)));
    // A first exchange loads both scripts and settles (its open reservation is gone), so the
    // settle below is sent as the script itself runs it, not as a lookup Redis would refuse.
    assert_eq!(
        send(&c, &url, &chat("m1", 1, false, 1, 0), "w")
            .await
            .status,
        200
    );
    let settled = wait_until(WAIT, || redis.cli(&["KEYS", "*:held"]).is_empty()).await;
    assert!(settled, "the first exchange never settled");
    let held = c.send(post(&url, &stream, "t")).await;
    assert_eq!(held.status(), 200);
    // Redis stops answering (its socket stays open): the settle times out, though Redis runs
    // it once it resumes; the retry must find it applied.
    let pid = redis.pid().expect("running").to_string();
    let signal = |sig: &str| {
        std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill runs")
    };
    signal("-STOP");
    let _ = held.into_body().collect().await.expect("stream completes");
    let counted = |name: &'static str, key: &'static str, value: &'static str| {
        let otlp = &otlp;
        async move {
            otlp.wait_for_metric_where(
                name,
                |m| {
                    m.number_points()
                        .iter()
                        .any(|p| p.attr(key).and_then(|v| v.as_str()) == Some(value))
                },
                WAIT,
            )
            .await
        }
    };
    counted("ragscope.cost_limit.redis.fallbacks", "operation", "settle").await;
    signal("-CONT");
    counted(
        "ragscope.cost_limit.redis.settle_retries",
        "outcome",
        "already_applied",
    )
    .await;
    let reply = send(&c, &url, &next, "t").await;
    assert_eq!(reply.status, 200, "charged twice: {:?}", reply.headers);
    assert_eq!(reply.header("x-ratelimit-limit-cost"), Some("1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_price_reload_in_another_currency_is_refused_and_one_in_time_prices_the_settle() {
    let up = Upstream::scripted(route).await;
    let otlp = OtlpReceiver::start().await;
    let prices = price_file(PRICES);
    let ragscope = builder(&up, &prices, "100/h").otlp(&otlp).spawn();
    let (addr, _) = ragscope.wait_serving().await;
    let url = format!("http://{addr}/v1/chat/completions");
    prices.replace("m* 1 1 - - EUR\n");
    let refused = ragscope.wait_line("not valid", WAIT).await;
    assert!(
        refused.contains("EUR") && refused.contains("USD"),
        "{refused}"
    );
    // A stream reserved at the old prices, running while the prices double.
    let c = Client::http1();
    let mut body = chat("m1", 100, true, 40, 100);
    body["stream_options"]["include_usage"] = json!(true);
    let stream = c.send(post(&url, &body, "a")).await;
    assert_eq!(stream.status(), 200);
    prices.replace("m* 2000 4000 - - USD\n");
    ragscope.wait_line("reloaded the price file", WAIT).await;
    let rest = stream
        .into_body()
        .collect()
        .await
        .expect("stream")
        .to_bytes();
    assert!(
        rest.ends_with(b"data: [DONE]\n\n"),
        "the stream outlived the reload"
    );
    let span = settled(&otlp, "reported", 1).await.remove(0);
    assert!(close(
        span.double_attr("ragscope.cost_limit.reserved")
            .expect("reserved"),
        money(reservation(&body))
    ));
    let at_new_prices = 2 * (PROMPT_TOKENS * IN_MICROS + 40 * OUT_MICROS);
    assert!(close(
        span.double_attr("ragscope.cost_limit.charged")
            .expect("charged"),
        money(at_new_prices)
    ));
    assert_eq!(
        span.double_attr("ragscope.genai.cost"),
        Some(money(at_new_prices))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cost_limit_mistakes_stop_start_up_with_one_line_and_exit_code_2() {
    let two = price_file("a* 1 1 - - USD\nb* 1 1 - - EUR\n");
    let one = price_file(PRICES);
    for (vars, names) in [
        (
            vec![("RAGSCOPE_COST_LIMIT", "5/h")],
            ["RAGSCOPE_COST_LIMIT", "RAGSCOPE_PRICES"],
        ),
        (
            vec![
                ("RAGSCOPE_COST_LIMIT", "5 dollars/h"),
                ("RAGSCOPE_PRICES", one.path.as_str()),
            ],
            ["RAGSCOPE_COST_LIMIT", "0.50/m"],
        ),
        (
            vec![
                ("RAGSCOPE_COST_LIMIT", "5/h"),
                ("RAGSCOPE_PRICES", two.path.as_str()),
            ],
            ["RAGSCOPE_PRICES", "EUR, USD"],
        ),
    ] {
        let mut ragscope = vars
            .iter()
            .fold(Proxy::builder(), |b, (k, v)| b.env(k, *v))
            .spawn();
        let status = ragscope
            .wait_exit(Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("{vars:?}: ragscope kept running"));
        assert_eq!(status.code(), Some(2), "{vars:?}: {status}");
        ragscope.wait_output_closed(Duration::from_secs(5)).await;
        let stderr = ragscope.stderr_lines();
        assert_eq!(stderr.len(), 1, "{vars:?}: one line: {stderr:#?}");
        for name in names {
            assert!(stderr[0].contains(name), "{name} in {}", stderr[0]);
        }
    }
}
