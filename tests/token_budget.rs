//! Token budgets over real sockets (issue 14): reservations at admission, settlement from
//! reported usage or an estimate of what was streamed, cancels that refund, a burst of long
//! streams that cannot overrun the budget, the 429 and the x-ratelimit-*-tokens headers, and
//! one budget shared by two ragscope processes through a real `redis-server` that may die, as
//! may a replica mid-stream.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Response};
use http_body_util::{BodyExt, Full};
use serde_json::{Value as Json, json};
use support::*;

const WAIT: Duration = Duration::from_secs(15);
/// Input and output tokens the stand-in reports when asked to.
const PROMPT_TOKENS: u64 = 11;

/// The stand-in LLM server: chat completions whose length, pace and usage the request picks
/// (`x_events` content chunks, `x_delay_ms` between them, usage when `x_usage` is not false
/// for JSON, when `stream_options.include_usage` for streams).
fn route(seen: &SeenRequest) -> Option<Response<UpstreamBody>> {
    if !seen.path().ends_with("/v1/chat/completions") {
        return None;
    }
    let request = seen.json();
    let events = request["x_events"].as_u64().unwrap_or(5);
    let delay = Duration::from_millis(request["x_delay_ms"].as_u64().unwrap_or(0));
    let usage = json!({"prompt_tokens": PROMPT_TOKENS, "completion_tokens": events,
                       "total_tokens": PROMPT_TOKENS + events});
    if request["stream"] != true {
        let mut answer = json!({"id": "c1", "object": "chat.completion", "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "word ".repeat(events as usize)},
                         "finish_reason": "stop"}],
            "received_bytes": seen.body_bytes});
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
            chunk(json!({"id": "c1", "model": "m",
                         "choices": [{"index": 0, "delta": {"content": "word "}}]})),
        ));
    }
    if request["stream_options"]["include_usage"] == true {
        frames.push((
            Duration::ZERO,
            chunk(json!({"id": "c1", "model": "m", "choices": [], "usage": usage})),
        ));
    }
    frames.push((Duration::ZERO, Bytes::from_static(b"data: [DONE]\n\n")));
    Some(canned_sse(frames, &[]))
}

/// A chat request: `max_tokens`, and what the stand-in should answer.
fn chat(max_tokens: u64, stream: bool, events: u64, delay_ms: u64) -> Json {
    json!({"model": "m", "max_tokens": max_tokens, "stream": stream,
           "stream_options": {"include_usage": false},
           "messages": [{"role": "user", "content": "What is the capital of France?"}],
           "x_events": events, "x_delay_ms": delay_ms})
}

/// What ragscope reserves for `body`: its bytes over four, plus its `max_tokens`.
fn reservation(body: &Json) -> u64 {
    (body.to_string().len() as u64).div_ceil(4) + body["max_tokens"].as_u64().unwrap_or(0)
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

fn header_u64(reply: &Reply, name: &str) -> u64 {
    reply
        .header(name)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing or not a number: {:?}", reply.headers))
}

/// The server span that settled a token reservation, with `team`'s request... the first
/// `count` of them.
async fn settled_spans(otlp: &OtlpReceiver, count: usize) -> Vec<CollectedSpan> {
    otlp.wait_for_spans(
        |s| s.int_attr("ragscope.token_limit.charged").is_some(),
        count,
        WAIT,
    )
    .await
}

fn builder(up: &Upstream) -> ProxyBuilder {
    Proxy::builder()
        .upstream(up)
        .env("RAGSCOPE_RATE_KEY", "header:x-team")
}

/// The stand-in, a collector, and ragscope in front with `limit` and `vars`.
struct Setup {
    up: Upstream,
    otlp: OtlpReceiver,
    proxy: Proxy,
    client: Client,
    url: String,
}

async fn start(limit: &str, vars: &[(&str, &str)]) -> Setup {
    let up = Upstream::scripted(route).await;
    let otlp = OtlpReceiver::start().await;
    let proxy = vars
        .iter()
        .fold(builder(&up).otlp(&otlp), |b, (k, v)| b.env(k, *v))
        .env("RAGSCOPE_TOKEN_LIMIT", limit)
        .run()
        .await;
    let url = proxy.url("/v1/chat/completions");
    Setup {
        up,
        otlp,
        proxy,
        client: Client::http1(),
        url,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_json_answer_is_charged_its_reported_usage_and_the_rest_comes_back() {
    let s = start("1000/h", &[]).await;
    let (otlp, proxy, c, url) = (&s.otlp, &s.proxy, &s.client, s.url.clone());
    let body = chat(900, false, 5, 0);
    let reserved = reservation(&body);
    let first = send(c, &url, &body, "a").await;
    assert_eq!(first.status, 200);
    assert_eq!(header_u64(&first, "x-ratelimit-limit-tokens"), 1000);
    assert_eq!(
        header_u64(&first, "x-ratelimit-remaining-tokens"),
        1000 - reserved
    );
    let reset = first.header("x-ratelimit-reset-tokens").expect("reset");
    assert!(reset.ends_with('s') && reset.contains('m'), "{reset}");
    // The body reached the upstream unchanged although ragscope read it first.
    assert_eq!(
        first.json()["received_bytes"].as_u64(),
        Some(body.to_string().len() as u64)
    );
    // Once settled at 11 + 5, the same request fits again (before, 1000 - ~950 did not).
    let again = wait_until_async(WAIT, || async {
        send(c, &url, &body, "a").await.status == 200
    })
    .await;
    assert!(again, "the reservation was never settled");
    let span = settled_spans(otlp, 1).await.remove(0);
    assert_eq!(
        span.int_attr("ragscope.token_limit.reserved"),
        Some(reserved as i64)
    );
    assert_eq!(
        span.int_attr("ragscope.token_limit.charged"),
        Some(PROMPT_TOKENS as i64 + 5)
    );
    assert_eq!(
        span.int_attr("ragscope.token_limit.refunded"),
        Some((reserved - PROMPT_TOKENS - 5) as i64)
    );
    assert_eq!(
        span.str_attr("ragscope.token_limit.usage"),
        Some("reported")
    );
    assert_eq!(
        span.str_attr("ragscope.token_limit.decision"),
        Some("allowed")
    );
    // HTTP/2 requests are read, estimated and forwarded the same way.
    let h2 = Client::http2()
        .request(post(&url, &chat(10, false, 1, 0), "h2"))
        .await;
    assert_eq!(h2.status, 200);
    assert!(h2.header("x-ratelimit-remaining-tokens").is_some());
    assert_eq!(
        h2.json()["received_bytes"].as_u64(),
        Some(chat(10, false, 1, 0).to_string().len() as u64)
    );
    // Requests that are not LLM requests are not under the token limit.
    let plain = c.get(proxy.url("/json")).await;
    assert_eq!(plain.status, 200);
    assert!(plain.header("x-ratelimit-limit-tokens").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn streams_are_charged_their_final_usage_or_an_estimate_flagged_as_such() {
    let s = start("100000/h", &[]).await;
    let (otlp, c, url) = (&s.otlp, &s.client, s.url.clone());
    let without = chat(500, true, 7, 0);
    let reply = send(c, &url, &without, "a").await;
    assert_eq!(reply.status, 200);
    assert!(reply.header("x-ratelimit-remaining-tokens").is_some());
    let span = settled_spans(otlp, 1).await.remove(0);
    let input = (without.to_string().len() as i64 + 3) / 4;
    assert_eq!(
        span.str_attr("ragscope.token_limit.usage"),
        Some("estimated")
    );
    assert_eq!(
        span.int_attr("ragscope.token_limit.charged"),
        Some(input + 7),
        "the input estimate and one token per content chunk"
    );
    let mut with = chat(500, true, 7, 0);
    with["stream_options"]["include_usage"] = json!(true);
    assert_eq!(send(c, &url, &with, "b").await.status, 200);
    let spans = settled_spans(otlp, 2).await;
    let reported = spans
        .iter()
        .find(|s| s.str_attr("ragscope.token_limit.usage") == Some("reported"))
        .expect("a reported settlement");
    assert_eq!(
        reported.int_attr("ragscope.token_limit.charged"),
        Some(PROMPT_TOKENS as i64 + 7)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_long_streams_cannot_take_more_than_the_budget_and_the_overrun_is_debt() {
    let s = start("1000/h", &[]).await;
    let (up, c, url) = (&s.up, &s.client, s.url.clone());
    // Each asks for 100 output tokens, then streams 300 (past its reservation).
    let body = chat(100, true, 300, 2);
    let reserved = reservation(&body);
    let fit = 1000 / reserved;
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (url, body) = (url.clone(), body.clone());
            tokio::spawn(async move {
                let reply = send(&Client::http1(), &url, &body, "burst").await;
                (reply.status.as_u16(), reply)
            })
        })
        .collect();
    let mut admitted = 0;
    for task in tasks {
        let (status, reply) = task.await.expect("task");
        match status {
            200 => {
                admitted += 1;
                let text = String::from_utf8_lossy(&reply.body).into_owned();
                assert_eq!(text.matches("word").count(), 300, "never cut by the budget");
                assert!(text.ends_with("data: [DONE]\n\n"));
            }
            429 => {
                assert_eq!(reply.error_type(), "token_limit_exceeded");
                assert_eq!(reply.header("content-type"), Some("application/json"));
                assert!(header_u64(&reply, "retry-after") >= 1);
                assert_eq!(header_u64(&reply, "x-ratelimit-remaining-tokens"), 0);
                assert_eq!(header_u64(&reply, "x-ratelimit-limit-tokens"), 1000);
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(
        (1..=fit).contains(&admitted),
        "{admitted} admitted, {fit} reservations fit the budget"
    );
    assert_eq!(
        up.request_count() as u64,
        admitted,
        "refused ones never went upstream"
    );
    // Each admitted stream ran ~200 tokens past its reservation: the key is in debt, and
    // even a one-token request waits (the wait covers the debt: minutes at 1000/h).
    let small = chat(1, false, 1, 0);
    let in_debt = wait_for(WAIT, || async {
        let r = send(c, &url, &small, "burst").await;
        (r.status == 429 && header_u64(&r, "retry-after") > 60).then_some(r)
    })
    .await;
    assert!(in_debt.is_some(), "the overrun was not charged");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_goes_away_mid_stream_pays_for_what_it_got_and_the_rest_returns() {
    let s = start("1000/h", &[]).await;
    let (otlp, c, url) = (&s.otlp, &s.client, s.url.clone());
    let body = chat(800, true, 200, 20);
    let reserved = reservation(&body);
    let response = c.send(post(&url, &body, "a")).await;
    assert_eq!(response.status(), 200);
    let mut stream = response.into_body();
    let mut got = 0;
    while got < 3 {
        let frame = stream.frame().await.expect("a frame").expect("ok");
        got += frame
            .data_ref()
            .map_or(0, |d| d.windows(4).filter(|w| w == b"word").count());
    }
    drop(stream);
    let span = settled_spans(otlp, 1).await.remove(0);
    let charged = span
        .int_attr("ragscope.token_limit.charged")
        .expect("charged") as u64;
    let input = (body.to_string().len() as u64).div_ceil(4);
    assert!(
        (input + 3..input + 40).contains(&charged),
        "charged {charged}: the input and the few chunks that went by"
    );
    assert_eq!(
        span.int_attr("ragscope.token_limit.refunded"),
        Some((reserved - charged) as i64)
    );
    // The refund is there: another large request fits.
    assert_eq!(
        send(c, &url, &chat(800, false, 1, 0), "a").await.status,
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_over_the_parse_bound_streams_through_and_reserves_from_its_length() {
    let s = start(
        "1000000/h",
        &[
            ("RAGSCOPE_PARSE_MAX_BYTES", "1KiB"),
            ("RAGSCOPE_TOKEN_DEFAULT_MAX_OUTPUT", "100"),
        ],
    )
    .await;
    let (otlp, url) = (&s.otlp, s.url.clone());
    let mut body = chat(5, false, 1, 0);
    body["messages"][0]["content"] = json!("x".repeat(20_000));
    let text = body.to_string();
    // Chunked (no Content-Length): the head is read up to the bound, the rest streams.
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let feeder = tokio::spawn(async move {
        for part in text.as_bytes().chunks(700) {
            tx.send(Bytes::copy_from_slice(part)).await.expect("send");
        }
    });
    let req = request(Method::POST, &url)
        .header("content-type", "application/json")
        .body(ChannelRequestBody(rx))
        .expect("request");
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<ChannelRequestBody>();
    let reply = client.request(req).await.expect("reply");
    assert_eq!(reply.status(), 200);
    let answer = reply.into_body().collect().await.expect("body").to_bytes();
    feeder.await.expect("feeder");
    let answer: Json = serde_json::from_slice(&answer).expect("json");
    assert_eq!(
        answer["received_bytes"].as_u64(),
        Some(body.to_string().len() as u64),
        "every byte reached the upstream"
    );
    let span = settled_spans(otlp, 1).await.remove(0);
    let reserved = span
        .int_attr("ragscope.token_limit.reserved")
        .expect("reserved");
    // The bytes read (past the 1 KiB bound) over four, plus the default cap: the body's
    // own max_tokens was never parsed.
    assert!((256 + 100..=512 + 100).contains(&reserved), "{reserved}");
}

/// A request body fed by a channel (no declared length: chunked on HTTP/1.1).
struct ChannelRequestBody(tokio::sync::mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelRequestBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|next| next.map(|data| Ok(http_body::Frame::data(data))))
    }
}

// ---- Redis ---------------------------------------------------------------------------------

fn fleet(up: &Upstream, redis: &RedisServer) -> ProxyBuilder {
    builder(up)
        .env("RAGSCOPE_TOKEN_LIMIT", "1000/h")
        .env("RAGSCOPE_RATE_LIMIT_REDIS", redis.url())
        // Generous on a shared 2-core machine: a fallback here would split the budget.
        .env("RAGSCOPE_RATE_LIMIT_REDIS_TIMEOUT", "2s")
}

#[tokio::test(flavor = "multi_thread")]
async fn two_ragscope_processes_on_one_redis_share_one_token_budget() {
    let redis = RedisServer::start().await;
    let up = Upstream::scripted(route).await;
    let a = fleet(&up, &redis).spawn();
    let b = fleet(&up, &redis).spawn();
    let (a_addr, _) = a.wait_serving().await;
    let (b_addr, _) = b.wait_serving().await;
    let c = Client::http1();
    let big = chat(900, true, 40, 25);
    // A's stream holds ~950 tokens for about a second.
    let held = c
        .send(post(
            &format!("http://{a_addr}/v1/chat/completions"),
            &big,
            "t",
        ))
        .await;
    assert_eq!(held.status(), 200);
    let b_url = format!("http://{b_addr}/v1/chat/completions");
    // ~850 tokens: more than the ~50 A's reservation leaves, less than what its charge does.
    let next = chat(800, false, 1, 0);
    let refused = send(&c, &b_url, &next, "t").await;
    assert_eq!(refused.status, 429, "B sees A's reservation");
    assert_eq!(refused.error_type(), "token_limit_exceeded");
    // A's stream ends and settles on Redis at 40 + its input: B's request fits then.
    let _ = held.into_body().collect().await.expect("stream completes");
    let fits = wait_until_async(WAIT, || async {
        send(&c, &b_url, &next, "t").await.status == 200
    })
    .await;
    assert!(fits, "A's settlement never reached B");
    let stored = redis.cli(&["KEYS", "*"]);
    assert!(
        stored.contains("ragscope:tb:") && !stored.contains("\"t\""),
        "{stored}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_killed_mid_stream_loses_no_request_and_the_local_budget_takes_over() {
    let mut redis = RedisServer::start().await;
    let up = Upstream::scripted(route).await;
    let otlp = OtlpReceiver::start().await;
    let proxy = fleet(&up, &redis)
        .otlp(&otlp)
        .env("RAGSCOPE_RATE_LIMIT_REDIS_TIMEOUT", "100ms")
        .run()
        .await;
    let c = Client::http1();
    let url = proxy.url("/v1/chat/completions");
    let stream = c.send(post(&url, &chat(50, true, 20, 20), "k")).await;
    assert_eq!(stream.status(), 200);
    redis.kill();
    let body = stream
        .into_body()
        .collect()
        .await
        .expect("the stream completes");
    assert!(String::from_utf8_lossy(&body.to_bytes()).ends_with("data: [DONE]\n\n"));
    for i in 0..5 {
        let reply = send(&c, &url, &chat(50, false, 1, 0), "k").await;
        assert_eq!(reply.status, 200, "request {i}");
        assert!(reply.header("x-ratelimit-remaining-tokens").is_some());
    }
    otlp.wait_for_spans(
        |s| s.str_attr("ragscope.token_limit.backend") == Some("local_fallback"),
        1,
        WAIT,
    )
    .await;
    // The stream's settle could not reach Redis either: counted.
    otlp.wait_for_metric_where(
        "ragscope.token_limit.redis.fallbacks",
        |m| {
            m.number_points().iter().any(|p| {
                p.attr("operation").and_then(|v| v.as_str()) == Some("settle") && p.as_f64() >= 1.0
            })
        },
        WAIT,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_killed_mid_stream_frees_its_reservation_after_the_expiry() {
    let redis = RedisServer::start().await;
    let up = Upstream::scripted(route).await;
    let a = fleet(&up, &redis)
        .env("RAGSCOPE_TOKEN_RESERVATION_TTL", "2s")
        .spawn();
    let b = fleet(&up, &redis)
        .env("RAGSCOPE_TOKEN_RESERVATION_TTL", "2s")
        .spawn();
    let (a_addr, _) = a.wait_serving().await;
    let (b_addr, _) = b.wait_serving().await;
    let c = Client::http1();
    // A long, slow stream: A dies while it runs.
    let held = c
        .send(post(
            &format!("http://{a_addr}/v1/chat/completions"),
            &chat(900, true, 1000, 50),
            "t",
        ))
        .await;
    assert_eq!(held.status(), 200);
    a.signal("KILL");
    let b_url = format!("http://{b_addr}/v1/chat/completions");
    let small_enough = chat(500, false, 1, 0);
    assert_eq!(send(&c, &b_url, &small_enough, "t").await.status, 429);
    let started = std::time::Instant::now();
    let freed = wait_until_async(WAIT, || async {
        send(&c, &b_url, &small_enough, "t").await.status == 200
    })
    .await;
    assert!(freed, "the dead replica's reservation never expired");
    assert!(started.elapsed() < Duration::from_secs(10));
    drop(held);
}
