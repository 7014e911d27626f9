//! Memory stays bounded under a spray of hundreds of thousands of distinct rate-limit keys.
//! The only test in this binary, so the resident size measured is the limiter's alone (the
//! real binary's cap and key gauge are tested over sockets in tests/rate_limit.rs).

use http::{Extensions, HeaderMap, HeaderValue};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .expect("proc status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[tokio::test(flavor = "multi_thread")]
async fn three_hundred_thousand_distinct_keys_stay_within_a_few_tens_of_mib() {
    let config = ragscope::Config::from_source(
        [
            ("RAGSCOPE_RATE_LIMIT", "100/s"),
            ("RAGSCOPE_RATE_KEY", "header:x-key"),
        ]
        .as_slice(),
    )
    .expect("config");
    let meter = opentelemetry::global::meter("memory-test");
    let limiter = ragscope::limit::RateLimiter::from_config(&config.rate_limit, &meter)
        .expect("limiter")
        .expect("rate limiting is on");
    let peer = "192.0.2.1".parse().expect("ip");
    let extensions = Extensions::new();
    let before = rss_kib();
    for i in 0..300_000u32 {
        let mut headers = HeaderMap::new();
        // Long values: the store keeps a digest, not the value.
        let value = format!("client-{i:010}-{}", "x".repeat(200));
        headers.insert("x-key", HeaderValue::from_str(&value).expect("value"));
        let _ = limiter.decide(&headers, &extensions, peer).await;
    }
    let grown_mib = rss_kib().saturating_sub(before) / 1024;
    assert!(
        limiter.tracked_keys() <= 100_000,
        "the default cap holds: {}",
        limiter.tracked_keys()
    );
    assert!(grown_mib <= 32, "grew by {grown_mib} MiB");
}
