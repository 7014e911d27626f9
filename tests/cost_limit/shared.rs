//! One spend budget shared by two ragscope processes through a real `redis-server`, and a
//! settle Redis did not answer, retried without charging twice.

use super::*;

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
