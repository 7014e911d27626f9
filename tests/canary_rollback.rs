//! Automatic canary rollback over real sockets: a canary that answers 5xx (logged with its
//! figures, counted, gauge at 0, held until `POST /canary`, not before the sample minimum), whose
//! first token slows, or whose feedback scores drop; and two ragscope processes on one real
//! `redis-server` reaching one verdict from pooled figures.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http_body_util::Full;
use serde_json::{Value, json};
use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_canary_that_answers_5xx_is_rolled_back_logged_counted_and_held_until_an_operator_acts() {
    let failing = healthy();
    let (stable, canary) = upstreams(failing.clone()).await;
    let bin = builder(&stable, &canary, "50")
        .env("RAGSCOPE_CANARY_MIN_SAMPLES", "30")
        .env("RAGSCOPE_CANARY_WINDOW", "60s")
        .spawn();
    let (addr, admin) = bin.wait_serving().await;
    let admin = admin.expect("admin listener");
    failing.store(true, Ordering::SeqCst);
    let client = Client::http1();

    // A few errors, below the sample minimum: no verdict.
    let mut id = 0;
    while canary.request_count() < 10 {
        as_client(&client, addr, id).await;
        id += 1;
    }
    let seen = wait_for(Duration::from_secs(10), || async {
        let state = canary_state(admin).await;
        (state["window"]["canary"]["requests"].as_u64() >= Some(10)).then_some(state)
    })
    .await
    .expect("the window counts the canary's requests");
    assert_eq!(seen["rolled_back"], false, "{seen}");
    assert_eq!(seen["verdict"]["enough_samples"], false, "{seen}");
    assert_eq!(seen["weight"], 50.0);

    // Past the minimum, the canary is rolled back.
    let rolled = wait_for(Duration::from_secs(30), || {
        let client = &client;
        let start = id;
        id += 20;
        async move {
            for i in start..start + 20 {
                as_client(client, addr, i).await;
            }
            let state = canary_state(admin).await;
            (state["rolled_back"] == true).then_some(state)
        }
    })
    .await
    .expect("the canary is rolled back");
    assert_eq!(rolled["weight"], 0.0, "{rolled}");
    let rollback = &rolled["last_rollback"];
    assert_eq!(rollback["by"], "automatic");
    assert!(
        rollback["reason"]
            .as_str()
            .is_some_and(|r| r.contains("error_rate")),
        "{rollback}"
    );
    assert!(rollback["figures"]["canary"]["requests"].as_u64() >= Some(30));
    assert_eq!(rollback["figures"]["canary"]["error_rate"], 1.0);

    // Logged with the figures that triggered it.
    let line = bin
        .wait_line("canary ROLLED BACK", Duration::from_secs(5))
        .await;
    let log: Value = serde_json::from_str(&line).expect("JSON log line");
    let fields = if log["fields"].is_object() {
        &log["fields"]
    } else {
        &log
    };
    assert_eq!(fields["canary_error_rate"], 1.0, "{line}");
    assert_eq!(fields["stable_error_rate"], 0.0, "{line}");
    assert!(fields["canary_requests"].as_u64() >= Some(30), "{line}");

    // Counted, and the gauges say so.
    let text = metrics(admin).await;
    assert_eq!(
        sample(&text, "ragscope_canary_rollbacks_total", "canary"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(sample(&text, "ragscope_canary_weight", "canary"), Some(0.0));
    assert_eq!(
        sample(&text, "ragscope_canary_rolled_back", "canary"),
        Some(1.0)
    );

    // It stays back: new clients all go to stable, through later evaluations.
    let served = canary.request_count();
    let before = rolled["window"]["stable"]["requests"].as_u64().unwrap_or(0);
    let held = wait_for(Duration::from_secs(10), || {
        let client = &client;
        let start = id;
        id += 20;
        async move {
            for i in start..start + 20 {
                assert_eq!(as_client(client, addr, i).await, (200, "stable".into()));
            }
            let state = canary_state(admin).await;
            (state["window"]["stable"]["requests"].as_u64() > Some(before + 40)).then_some(state)
        }
    })
    .await
    .expect("later evaluations ran");
    assert_eq!(held["rolled_back"], true, "{held}");
    assert_eq!(
        canary.request_count(),
        served,
        "a rolled-back canary gets nothing"
    );

    // An operator acts: the canary (fixed) gets its share again.
    failing.store(false, Ordering::SeqCst);
    let reply = post_canary(admin, json!({"weight": 50})).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["rolled_back"], false);
    let after = spread(addr, 100_000..100_200).await;
    assert!(after.values().filter(|v| *v == "canary").count() > 50);
    assert_eq!(
        post_canary(admin, json!({"weight": 101})).await.status,
        400,
        "a weight past 100 is refused"
    );
}

/// An OpenAI-style stream: the first content after `first`, the end after `rest`.
fn stream(first: Duration, rest: Duration) -> http::Response<UpstreamBody> {
    let chunk = |content: Value| {
        Bytes::from(format!(
            "data: {}\n\n",
            json!({"id": "c1", "model": "m", "choices": [{"index": 0, "delta": content}]})
        ))
    };
    canned_sse(
        vec![
            (first, chunk(json!({"content": "Paris"}))),
            (rest, chunk(json!({}))),
            (Duration::ZERO, Bytes::from_static(b"data: [DONE]\n\n")),
        ],
        &[],
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_canary_whose_first_token_slows_is_rolled_back() {
    let gap = Duration::from_millis(250);
    // The same total time on both; only the first token comes late on the canary.
    let stable = Upstream::scripted(move |_| Some(stream(Duration::ZERO, gap))).await;
    let canary = Upstream::scripted(move |_| Some(stream(gap, Duration::ZERO))).await;
    let proxy = builder(&stable, &canary, "50")
        .env("RAGSCOPE_CANARY_MIN_SAMPLES", "20")
        .run()
        .await;
    let admin = proxy.admin_addr().expect("admin");
    let mut id = 0usize;
    let rolled = wait_for(Duration::from_secs(60), || {
        let start = id;
        id += 32;
        let url = proxy.url("/v1/chat/completions");
        async move {
            let mut tasks = tokio::task::JoinSet::new();
            for i in start..start + 32 {
                let url = url.clone();
                tasks.spawn(async move {
                    let body = json!({"model": "m", "stream": true,
                                      "messages": [{"role": "user", "content": "Capital of France?"}]});
                    let client = Client::http1();
                    let req = request(Method::POST, &url)
                        .header("content-type", "application/json")
                        .header("x-client", i.to_string())
                        .body(Full::new(Bytes::from(body.to_string())))
                        .expect("request");
                    client.request(req).await.status
                });
            }
            while let Some(status) = tasks.join_next().await {
                assert_eq!(status.expect("task"), 200);
            }
            let state = canary_state(admin).await;
            (state["rolled_back"] == true).then_some(state)
        }
    })
    .await
    .expect("the canary is rolled back");
    let measures: Vec<&str> = rolled["last_rollback"]["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["measure"].as_str())
        .collect();
    assert!(measures.contains(&"p95_ttft"), "{rolled}");
    assert!(!measures.contains(&"error_rate"), "{rolled}");
    let ttft = &rolled["last_rollback"]["figures"]["canary"]["p95_ttft_seconds"];
    assert!(ttft.as_f64() >= Some(0.25), "{rolled}");
    assert_eq!(rolled["weight"], 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_canary_with_lower_feedback_scores_is_rolled_back() {
    let (stable, canary) = upstreams(healthy()).await;
    let proxy = builder(&stable, &canary, "50")
        .env("RAGSCOPE_CANARY_MIN_SAMPLES", "10")
        .env("RAGSCOPE_CANARY_MIN_FEEDBACK", "10")
        .run()
        .await;
    let admin = proxy.admin_addr().expect("admin");
    let client = Client::http1();
    let mut id = 0usize;
    let rolled = wait_for(Duration::from_secs(30), || {
        let (client, proxy) = (&client, &proxy);
        let start = id;
        id += 10;
        async move {
            for i in start..start + 10 {
                let reply = client
                    .get_with(proxy.url("/json"), &[("x-client", &i.to_string())])
                    .await;
                let trace = reply
                    .header("traceresponse")
                    .and_then(|t| t.split('-').nth(1))
                    .expect("traceresponse")
                    .to_owned();
                // Users like stable's answers and not the canary's.
                let score = if reply.header(SERVED_BY) == Some("canary") {
                    0.2
                } else {
                    0.9
                };
                let fed = client
                    .post_json(
                        proxy.url("/ragscope/feedback"),
                        &json!({"trace_id": trace, "score": score}),
                    )
                    .await;
                assert_eq!(fed.status, 202);
            }
            let state = canary_state(admin).await;
            (state["rolled_back"] == true).then_some(state)
        }
    })
    .await
    .expect("the canary is rolled back on feedback");
    let findings = &rolled["last_rollback"]["findings"];
    assert_eq!(findings[0]["measure"], "mean_feedback_score", "{rolled}");
    assert_eq!(findings.as_array().map(Vec::len), Some(1), "{rolled}");
    let figures = &rolled["last_rollback"]["figures"];
    assert!(
        (figures["canary"]["mean_feedback_score"]
            .as_f64()
            .expect("score")
            - 0.2)
            .abs()
            < 1e-9
    );
    assert!(figures["stable"]["feedback"].as_u64() >= Some(10));
}

#[tokio::test(flavor = "multi_thread")]
async fn two_ragscope_processes_on_one_redis_reach_one_verdict() {
    let redis = RedisServer::start().await;
    let failing = Arc::new(AtomicBool::new(true));
    let (stable, canary) = upstreams(failing.clone()).await;
    let builder = builder(&stable, &canary, "50")
        .env("RAGSCOPE_CANARY_MIN_SAMPLES", "30")
        .env("RAGSCOPE_CANARY_HEADER", "x-ragscope-version")
        .env("RAGSCOPE_SHARED_REDIS", redis.url());
    let (a, b) = (builder.clone().spawn(), builder.spawn());
    let (a_addr, a_admin) = a.wait_serving().await;
    let (b_addr, b_admin) = b.wait_serving().await;
    let (a_admin, b_admin) = (a_admin.expect("admin"), b_admin.expect("admin"));
    let client = Client::http1();
    // Each replica serves 20 requests per version: under the minimum of 30 alone, over it
    // pooled. Then no more traffic: only the pooled figures can reach a verdict.
    for addr in [a_addr, b_addr] {
        for version in ["stable", "canary"] {
            for _ in 0..20 {
                let reply = client
                    .get_with(
                        format!("http://{addr}/json"),
                        &[("x-ragscope-version", version)],
                    )
                    .await;
                assert_eq!(reply.header(SERVED_BY), Some(version));
            }
        }
    }
    let first = wait_for(Duration::from_secs(15), || async {
        let (sa, sb) = (canary_state(a_admin).await, canary_state(b_admin).await);
        [sa, sb].into_iter().find(|s| s["rolled_back"] == true)
    })
    .await
    .expect("the fleet's pooled figures roll the canary back");
    assert_eq!(
        first["last_rollback"]["figures"]["canary"]["requests"], 40,
        "pooled: {first}"
    );
    // The other replica holds the same rollback within a second or two.
    let both = wait_for(Duration::from_secs(5), || async {
        let (sa, sb) = (canary_state(a_admin).await, canary_state(b_admin).await);
        (sa["rolled_back"] == true && sb["rolled_back"] == true).then_some((sa, sb))
    })
    .await
    .expect("both replicas are rolled back");
    assert_eq!(
        both.0["last_rollback"], both.1["last_rollback"],
        "one verdict"
    );
    assert_eq!(both.0["shared"], "redis");
    let rollbacks =
        |text: String| sample(&text, "ragscope_canary_rollbacks_total", "").unwrap_or(0.0);
    assert_eq!(
        rollbacks(metrics(a_admin).await) + rollbacks(metrics(b_admin).await),
        1.0,
        "decided once for the fleet"
    );

    // An operator on one replica sets the weight for both.
    failing.store(false, Ordering::SeqCst);
    assert_eq!(
        post_canary(b_admin, json!({"weight": 20})).await.status,
        200
    );
    assert!(
        wait_until_async(Duration::from_secs(5), || async {
            let sa = canary_state(a_admin).await;
            sa["rolled_back"] == false && sa["weight"] == 20.0
        })
        .await
    );

    // Redis down: the last state holds and traffic flows.
    drop(redis);
    for i in 0..20 {
        let (status, _) = as_client(&client, [a_addr, b_addr][i % 2], 500_000 + i).await;
        assert_eq!(status, 200);
    }
    assert!(
        wait_until_async(Duration::from_secs(5), || async {
            canary_state(a_admin).await["shared"] == "redis_unavailable"
        })
        .await
    );
    assert_eq!(canary_state(a_admin).await["weight"], 20.0);
}
