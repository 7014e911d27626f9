//! Rate limiting over real sockets: budgets per address, header value and trusted-proxy
//! client, 429 with Retry-After and the x-ratelimit headers, shadow mode, telemetry, and budgets
//! shared by two ragscopes through a real `redis-server` that may die and come back.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use http::Method;
use http_body_util::Full;
use support::*;

async fn status_with(client: &Client, url: &str, headers: &[(&str, &str)]) -> u16 {
    client.get_with(url, headers).await.status.as_u16()
}

#[tokio::test(flavor = "multi_thread")]
async fn over_the_limit_gets_429_with_retry_after_and_the_upstream_is_not_called() {
    let up = Upstream::start().await;
    let proxy = Proxy::builder()
        .upstream(&up)
        .env("RAGSCOPE_RATE_LIMIT", "3/m")
        .env("RAGSCOPE_RATE_BURST", "3")
        .run()
        .await;
    let client = Client::http1();
    for remaining in ["2", "1", "0"] {
        let reply = client.get(proxy.url("/json")).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("x-ratelimit-limit"), Some("3"));
        assert_eq!(reply.header("x-ratelimit-remaining"), Some(remaining));
        let reset: u64 = reply
            .header("x-ratelimit-reset")
            .and_then(|v| v.parse().ok())
            .expect("integer reset");
        assert!((1..=60).contains(&reset), "{reset}");
    }
    let refused = client.get(proxy.url("/json")).await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.error_type(), "rate_limited");
    assert_eq!(refused.header("content-type"), Some("application/json"));
    let retry_after: u64 = refused
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in whole seconds");
    // One request's worth comes back every 20 s.
    assert!((19..=20).contains(&retry_after), "{retry_after}");
    assert_eq!(refused.header("x-ratelimit-limit"), Some("3"));
    assert_eq!(refused.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(
        up.request_count(),
        3,
        "the refused request never reached the upstream"
    );

    // HTTP/2 clients share the same address budget and get the same answer.
    let refused = Client::http2().get(proxy.url("/json")).await;
    assert_eq!(refused.status, 429);
    assert!(refused.header("retry-after").is_some());
    assert_eq!(up.request_count(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_limit_nothing_is_limited_and_no_headers_are_added() {
    let up = Upstream::start().await;
    let proxy = Proxy::builder().upstream(&up).run().await;
    let client = Client::http1();
    for _ in 0..20 {
        let reply = client.get(proxy.url("/json")).await;
        assert_eq!(reply.status, 200);
        assert!(reply.header("x-ratelimit-limit").is_none());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn each_header_value_has_its_own_budget_and_a_missing_header_falls_back_to_the_address() {
    let up = Upstream::start().await;
    let proxy = Proxy::builder()
        .upstream(&up)
        .env("RAGSCOPE_RATE_LIMIT", "1/m")
        .env("RAGSCOPE_RATE_KEY", "header:x-api-key")
        .run()
        .await;
    let c = Client::http1();
    let url = proxy.url("/json");
    assert_eq!(status_with(&c, &url, &[("x-api-key", "team-a")]).await, 200);
    assert_eq!(status_with(&c, &url, &[("x-api-key", "team-a")]).await, 429);
    assert_eq!(status_with(&c, &url, &[("x-api-key", "team-b")]).await, 200);
    // No header, or an empty one: the client address is the key.
    assert_eq!(status_with(&c, &url, &[]).await, 200);
    assert_eq!(status_with(&c, &url, &[]).await, 429);
    assert_eq!(status_with(&c, &url, &[("x-api-key", "")]).await, 429);
    // Header budgets are untouched by the address budget.
    assert_eq!(status_with(&c, &url, &[("x-api-key", "team-c")]).await, 200);
    assert_eq!(up.request_count(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_for_from_an_untrusted_peer_is_ignored() {
    let up = Upstream::start().await;
    let proxy = Proxy::builder()
        .upstream(&up)
        .env("RAGSCOPE_RATE_LIMIT", "1/m")
        .env("RAGSCOPE_TRUSTED_PROXIES", "10.0.0.0/8")
        .run()
        .await;
    let c = Client::http1();
    let url = proxy.url("/json");
    assert_eq!(
        status_with(&c, &url, &[("x-forwarded-for", "203.0.113.1")]).await,
        200
    );
    assert_eq!(
        status_with(&c, &url, &[("x-forwarded-for", "203.0.113.2")]).await,
        429,
        "a new spoofed address does not buy a new budget"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn behind_a_trusted_proxy_the_right_most_untrusted_hop_is_the_client() {
    let up = Upstream::start().await;
    let proxy = Proxy::builder()
        .upstream(&up)
        .env("RAGSCOPE_RATE_LIMIT", "1/m")
        .env("RAGSCOPE_TRUSTED_PROXIES", "127.0.0.0/8, 10.0.0.0/8")
        .run()
        .await;
    let c = Client::http1();
    let url = proxy.url("/json");
    let xff = |v: &'static str| [("x-forwarded-for", v)];
    assert_eq!(
        status_with(&c, &url, &xff("6.6.6.6, 203.0.113.1, 10.0.0.5")).await,
        200
    );
    assert_eq!(
        status_with(&c, &url, &xff("7.7.7.7, 203.0.113.1, 10.0.0.9")).await,
        429,
        "what the client wrote left of its own address changes nothing"
    );
    assert_eq!(status_with(&c, &url, &xff("203.0.113.2")).await, 200);
    // IPv6 clients are grouped by /64.
    assert_eq!(status_with(&c, &url, &xff("2001:db8:1:2::1")).await, 200);
    assert_eq!(
        status_with(&c, &url, &xff("2001:db8:1:2:ffff::9")).await,
        429
    );
    assert_eq!(status_with(&c, &url, &xff("2001:db8:1:3::1")).await, 200);
    // Without the header, the trusted peer itself is the client.
    assert_eq!(status_with(&c, &url, &[]).await, 200);
    assert_eq!(status_with(&c, &url, &[]).await, 429);
}

#[tokio::test(flavor = "multi_thread")]
async fn behind_proxies_that_write_forwarded_that_header_names_the_client() {
    let up = Upstream::start().await;
    let proxy = Proxy::builder()
        .upstream(&up)
        .env("RAGSCOPE_RATE_LIMIT", "1/m")
        .env("RAGSCOPE_TRUSTED_PROXIES", "127.0.0.0/8, 10.0.0.0/8")
        .env("RAGSCOPE_FORWARDED_HEADER", "forwarded")
        .run()
        .await;
    let c = Client::http1();
    let url = proxy.url("/json");
    let fwd = |v: &'static str| [("forwarded", v)];
    assert_eq!(
        status_with(
            &c,
            &url,
            &fwd("for=6.6.6.6, for=203.0.113.1;proto=https, for=10.0.0.5")
        )
        .await,
        200
    );
    assert_eq!(
        status_with(&c, &url, &fwd("for=7.7.7.7, for=\"203.0.113.1:4711\"")).await,
        429,
        "the same client, whatever it wrote left of its own address"
    );
    assert_eq!(
        status_with(&c, &url, &fwd("for=\"[2001:db8:1:2::1]:80\"")).await,
        200
    );
    // In this mode X-Forwarded-For is whatever the client wrote: a new one buys nothing.
    assert_eq!(
        status_with(
            &c,
            &url,
            &[
                ("forwarded", "for=203.0.113.1"),
                ("x-forwarded-for", "198.51.100.7")
            ]
        )
        .await,
        429
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn shadow_mode_forwards_everything_and_records_what_it_would_have_refused() {
    let up = Upstream::start().await;
    let otlp = OtlpReceiver::start().await;
    let proxy = Proxy::builder()
        .upstream(&up)
        .otlp(&otlp)
        .env("RAGSCOPE_RATE_LIMIT", "1/m")
        .env("RAGSCOPE_RATE_MODE", "shadow")
        .run()
        .await;
    let c = Client::http1();
    for _ in 0..3 {
        let reply = c.get(proxy.url("/json")).await;
        assert_eq!(reply.status, 200);
        assert!(
            reply.header("x-ratelimit-limit").is_none(),
            "clients do not see a limit that is not enforced"
        );
    }
    assert_eq!(up.request_count(), 3);
    let spans = otlp
        .wait_for_spans(
            |s| s.str_attr("ragscope.rate_limit.decision") == Some("shadow_limited"),
            2,
            Duration::from_secs(10),
        )
        .await;
    assert!(
        spans
            .iter()
            .all(|s| s.int_attr("http.response.status_code") == Some(200))
    );
    otlp.wait_for_metric_where(
        "ragscope.rate_limit.decisions",
        |m| {
            m.point_with(&[("outcome", Value::Str("shadow_limited".into()))])
                .is_some_and(|p| p.as_f64() == 2.0)
                && m.point_with(&[("outcome", Value::Str("allowed".into()))])
                    .is_some_and(|p| p.as_f64() == 1.0)
        },
        Duration::from_secs(10),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn telemetry_records_the_decision_and_key_type_but_never_the_key() {
    let up = Upstream::start().await;
    let otlp = OtlpReceiver::start().await;
    let proxy = Proxy::builder()
        .upstream(&up)
        .otlp(&otlp)
        .env("RAGSCOPE_RATE_LIMIT", "1/m")
        .env("RAGSCOPE_RATE_KEY", "header:x-tenant")
        .run()
        .await;
    let c = Client::http1();
    let url = proxy.url("/json");
    assert_eq!(
        status_with(&c, &url, &[("x-tenant", "tenant-secret-42")]).await,
        200
    );
    assert_eq!(
        status_with(&c, &url, &[("x-tenant", "tenant-secret-42")]).await,
        429
    );

    let spans = otlp
        .wait_for_spans(
            |s| s.has_attr("ragscope.rate_limit.decision"),
            2,
            Duration::from_secs(10),
        )
        .await;
    let limited = spans
        .iter()
        .find(|s| s.str_attr("ragscope.rate_limit.decision") == Some("limited"))
        .expect("a limited span");
    assert_eq!(
        limited.str_attr("ragscope.rate_limit.key_type"),
        Some("header")
    );
    assert_eq!(
        limited.str_attr("ragscope.rate_limit.backend"),
        Some("local")
    );
    assert_eq!(limited.str_attr("error.type"), Some("rate_limited"));
    assert_eq!(limited.int_attr("http.response.status_code"), Some(429));
    let allowed = spans
        .iter()
        .find(|s| s.str_attr("ragscope.rate_limit.decision") == Some("allowed"))
        .expect("an allowed span");
    assert_eq!(
        allowed.str_attr("ragscope.rate_limit.key_type"),
        Some("header")
    );

    let decisions = otlp
        .wait_for_metric_where(
            "ragscope.rate_limit.decisions",
            |m| {
                m.point_with(&[("outcome", Value::Str("limited".into()))])
                    .is_some_and(|p| p.as_f64() == 1.0)
            },
            Duration::from_secs(10),
        )
        .await;
    let point = decisions
        .point_with(&[("outcome", Value::Str("allowed".into()))])
        .expect("allowed point");
    assert_eq!(point.attr("key_type"), Some(&Value::Str("header".into())));
    assert_eq!(point.attr("backend"), Some(&Value::Str("local".into())));
    let keys = otlp
        .wait_for_metric("ragscope.rate_limit.keys", Duration::from_secs(10))
        .await;
    assert_eq!(keys.number_points()[0].as_f64(), 1.0);

    let everything = format!("{:?}{:?}", otlp.spans(), otlp.metrics());
    assert!(
        !everything.contains("tenant-secret-42"),
        "the key leaked into telemetry"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_rate_variable_stops_start_up_with_exit_code_2() {
    for (var, value) in [
        ("RAGSCOPE_RATE_LIMIT", "fast"),
        ("RAGSCOPE_RATE_KEY", "cookie"),
        ("RAGSCOPE_TRUSTED_PROXIES", "10.0.0.0/40"),
        ("RAGSCOPE_RATE_LIMIT_REDIS", "http://redis:6379"),
    ] {
        let mut bin = Proxy::builder().env(var, value).spawn();
        let status = bin
            .wait_exit(Duration::from_secs(10))
            .await
            .expect("exits at once");
        assert_eq!(status.code(), Some(2), "{var}={value}");
        // The reader thread may still be collecting the last line after the exit.
        let named = |l: &String| l.contains(var) && l.contains(value);
        wait_until(Duration::from_secs(5), || {
            bin.stderr_lines().iter().any(named)
        })
        .await;
        let stderr = bin.stderr_lines();
        assert!(stderr.iter().any(named), "{stderr:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_real_binary_tracks_at_most_the_cap_and_reports_it() {
    let up = Upstream::start().await;
    let otlp = OtlpReceiver::start().await;
    let bin = Proxy::builder()
        .upstream(&up)
        .otlp(&otlp)
        .env("RAGSCOPE_LOG", "warn,ragscope::server=info")
        // Slow refill: a key stays tracked for minutes, so the sweep cannot make room.
        .env("RAGSCOPE_RATE_LIMIT", "1/m")
        .env("RAGSCOPE_RATE_BURST", "10")
        .env("RAGSCOPE_RATE_KEY", "header:x-key")
        .env("RAGSCOPE_RATE_MAX_KEYS", "2000")
        .spawn();
    let (addr, _) = bin.wait_serving().await;
    let before = bin.rss_kib();
    let url = format!("http://{addr}/json");
    let mut tasks = Vec::new();
    for worker in 0..8u32 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let client = Client::http1();
            let mut statuses = [0usize; 2];
            for i in 0..600u32 {
                let req = request(Method::GET, &url)
                    .header("x-key", format!("w{worker}-k{i}"))
                    .body(Full::default())
                    .expect("request");
                let status = client.request(req).await.status.as_u16();
                statuses[usize::from(status == 429)] += 1;
            }
            statuses
        }));
    }
    let mut limited = 0;
    for t in tasks {
        limited += t.await.expect("worker")[1];
    }
    // 4800 new keys against a cap of 2000: the other 2800 share one overflow bucket of 10
    // (the cap may be overshot by a few racing threads).
    assert!(
        (2750..=2790).contains(&limited),
        "overflow keys share one budget: {limited} limited"
    );
    otlp.wait_for_metric_where(
        "ragscope.rate_limit.keys",
        |m| {
            m.number_points()
                .first()
                .is_some_and(|p| (1900.0..=2010.0).contains(&p.as_f64()))
        },
        Duration::from_secs(10),
    )
    .await;
    let grown_mib = bin.rss_kib().saturating_sub(before) / 1024;
    assert!(grown_mib <= 40, "grew by {grown_mib} MiB");
}

// ---- Redis ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn two_ragscope_processes_on_one_redis_admit_in_total_what_one_limit_allows() {
    let redis = RedisServer::start().await;
    let up = Upstream::start().await;
    let builder = Proxy::builder()
        .upstream(&up)
        .env("RAGSCOPE_RATE_LIMIT", "10/m")
        .env("RAGSCOPE_RATE_BURST", "10")
        .env("RAGSCOPE_RATE_KEY", "header:x-api-key")
        .env("RAGSCOPE_RATE_LIMIT_REDIS", redis.url())
        // Generous on a shared 2-core machine: a fallback here would split the budget.
        .env("RAGSCOPE_RATE_LIMIT_REDIS_TIMEOUT", "2s");
    // Two real processes, as two replicas' sidecars would be.
    let a = builder.clone().spawn();
    let b = builder.spawn();
    let (a_addr, _) = a.wait_serving().await;
    let (b_addr, _) = b.wait_serving().await;
    let c = Client::http1();
    let mut allowed = 0;
    for i in 0..30 {
        let addr = if i % 2 == 0 { a_addr } else { b_addr };
        let reply = c
            .get_with(
                &format!("http://{addr}/json"),
                &[("x-api-key", "shared-key")],
            )
            .await;
        match reply.status.as_u16() {
            200 => allowed += 1,
            429 => assert!(reply.header("retry-after").is_some()),
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(allowed, 10, "one budget for the fleet, not one per replica");
    assert_eq!(up.request_count(), 10);
    assert_eq!(redis.keys(), 1, "one Redis key per client key");
    let stored = redis.cli(&["KEYS", "*"]);
    assert!(
        stored.starts_with("ragscope:rl:") && !stored.contains("shared-key"),
        "{stored}"
    );
    let ttl: i64 = redis.cli(&["PTTL", &stored]).parse().expect("ttl");
    assert!(
        ttl > 0 && ttl <= 62_000,
        "keys expire once the bucket is full again: {ttl}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_killed_mid_test_costs_no_request_and_sharing_resumes_when_it_returns() {
    let mut redis = RedisServer::start().await;
    let up = Upstream::start().await;
    let otlp = OtlpReceiver::start().await;
    let proxy = Proxy::builder()
        .upstream(&up)
        .otlp(&otlp)
        .env("RAGSCOPE_RATE_LIMIT", "1000/s")
        .env("RAGSCOPE_RATE_KEY", "header:x-api-key")
        .env("RAGSCOPE_RATE_LIMIT_REDIS", redis.url())
        .env("RAGSCOPE_RATE_LIMIT_REDIS_TIMEOUT", "100ms")
        .run()
        .await;
    let c = Client::http1();
    let url = proxy.url("/json");
    let mut slowest = Duration::ZERO;
    for i in 0..150 {
        if i == 50 {
            redis.kill();
        }
        let start = Instant::now();
        assert_eq!(
            status_with(&c, &url, &[("x-api-key", "steady")]).await,
            200,
            "request {i}"
        );
        slowest = slowest.max(start.elapsed());
    }
    assert!(
        slowest < Duration::from_secs(1),
        "a request waited {slowest:?} for Redis"
    );
    otlp.wait_for_metric_where(
        "ragscope.rate_limit.redis.fallbacks",
        |m| m.number_points().iter().map(|p| p.as_f64()).sum::<f64>() >= 50.0,
        Duration::from_secs(10),
    )
    .await;

    // Redis comes back (empty): decisions go to it again.
    redis.restart().await;
    // Keep sending until a decision lands in Redis: every request must still pass.
    let back = wait_until_async(Duration::from_secs(15), || async {
        assert_eq!(status_with(&c, &url, &[("x-api-key", "steady")]).await, 200);
        redis.keys() > 0
    })
    .await;
    assert!(back, "ragscope never went back to Redis");
    otlp.wait_for_spans(
        |s| s.str_attr("ragscope.rate_limit.backend") == Some("local_fallback"),
        1,
        Duration::from_secs(10),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_redis_down_from_the_start_the_local_limiter_still_enforces() {
    let dead = dead_addr();
    let up = Upstream::start().await;
    let proxy = Proxy::builder()
        .upstream(&up)
        .env("RAGSCOPE_RATE_LIMIT", "1/m")
        .env("RAGSCOPE_RATE_LIMIT_REDIS", format!("redis://{dead}/0"))
        .run()
        .await;
    let c = Client::http1();
    let start = Instant::now();
    assert_eq!(status_with(&c, &proxy.url("/json"), &[]).await, 200);
    assert_eq!(status_with(&c, &proxy.url("/json"), &[]).await, 429);
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_redis_is_waited_for_no_longer_than_the_timeout() {
    let redis = RedisServer::start().await;
    let up = Upstream::start().await;
    let proxy = Proxy::builder()
        .upstream(&up)
        .env("RAGSCOPE_RATE_LIMIT", "100/s")
        .env("RAGSCOPE_RATE_LIMIT_REDIS", redis.url())
        .env("RAGSCOPE_RATE_LIMIT_REDIS_TIMEOUT", "50ms")
        .run()
        .await;
    let c = Client::http1();
    assert_eq!(status_with(&c, &proxy.url("/json"), &[]).await, 200);
    // Stop Redis without closing its socket: it accepts but never answers.
    let pid = redis.pid().expect("running").to_string();
    let signal = |sig: &str| {
        Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill runs")
    };
    signal("-STOP");
    let start = Instant::now();
    for _ in 0..5 {
        assert_eq!(status_with(&c, &proxy.url("/json"), &[]).await, 200);
    }
    let took = start.elapsed();
    signal("-CONT");
    // At most one probe per half second pays the timeout; the rest decide locally at once.
    assert!(took < Duration::from_secs(1), "5 requests took {took:?}");
}
