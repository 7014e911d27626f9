//! The limiter end to end in memory: keys, bursts, overflow and the sweeper.

use super::*;
use crate::config::Reader;
use crate::identity::ApiKeyName;

fn config(vars: &[(&str, &str)]) -> RateLimitConfig {
    RateLimitConfig::from_reader(&Reader::new(vars)).expect("config")
}

fn limiter(vars: &[(&str, &str)]) -> Arc<RateLimiter> {
    let meter = opentelemetry::global::meter("test");
    RateLimiter::from_config(&config(vars), &meter)
        .expect("limiter")
        .expect("on")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

#[tokio::test]
async fn api_key_name_is_the_key_and_the_address_the_fallback() {
    let l = limiter(&[
        ("RAGSCOPE_RATE_LIMIT", "2/m"),
        ("RAGSCOPE_RATE_BURST", "2"),
        ("RAGSCOPE_RATE_KEY", "api-key"),
    ]);
    let headers = HeaderMap::new();
    let mut team_a = Extensions::new();
    team_a.insert(ApiKeyName("team-a".into()));
    let mut team_b = Extensions::new();
    team_b.insert(ApiKeyName("team-b".into()));
    let peer = ip("192.0.2.1");

    for _ in 0..2 {
        let d = l.decide(&headers, &team_a, peer).await;
        assert_eq!((d.outcome(), d.key_type()), ("allowed", KeyType::ApiKey));
    }
    // The same key name from another address shares the budget.
    let d = l.decide(&headers, &team_a, ip("192.0.2.2")).await;
    assert_eq!(d.outcome(), "limited");
    assert!(d.refusal().is_some());
    let d = l.decide(&headers, &team_b, peer).await;
    assert_eq!(d.outcome(), "allowed", "another key has its own budget");
    // Without a key name, the address is the key.
    let d = l.decide(&headers, &Extensions::new(), peer).await;
    assert_eq!((d.outcome(), d.key_type()), ("allowed", KeyType::Ip));
}

#[tokio::test]
async fn verdicts_carry_remaining_reset_and_retry_after() {
    let l = limiter(&[("RAGSCOPE_RATE_LIMIT", "3/m")]);
    let (h, e, peer) = (HeaderMap::new(), Extensions::new(), ip("192.0.2.1"));
    let first = l.decide(&h, &e, peer).await;
    assert_eq!(first.verdict.remaining, 0, "burst defaults to 1 at 3/m");
    assert_eq!(first.limit, 1);
    let mut headers = HeaderMap::new();
    first.add_headers(&mut headers);
    assert_eq!(headers["x-ratelimit-limit"], "1");
    assert_eq!(headers["x-ratelimit-remaining"], "0");
    assert_eq!(headers["x-ratelimit-reset"], "20");
    let refused = l.decide(&h, &e, peer).await;
    match refused.refusal() {
        Some(ProxyError::RateLimited { retry_after, .. }) => {
            assert!((19..=20).contains(&retry_after), "{retry_after}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn shadow_mode_never_refuses_and_adds_no_headers() {
    let l = limiter(&[
        ("RAGSCOPE_RATE_LIMIT", "1/m"),
        ("RAGSCOPE_RATE_MODE", "shadow"),
    ]);
    let (h, e, peer) = (HeaderMap::new(), Extensions::new(), ip("192.0.2.1"));
    let _ = l.decide(&h, &e, peer).await;
    let d = l.decide(&h, &e, peer).await;
    assert_eq!(d.outcome(), "shadow_limited");
    assert!(d.refusal().is_none());
    let mut headers = HeaderMap::new();
    d.add_headers(&mut headers);
    assert!(headers.is_empty());
}

#[tokio::test]
async fn a_spray_of_keys_stays_at_the_cap() {
    let l = limiter(&[
        ("RAGSCOPE_RATE_LIMIT", "10/s"),
        ("RAGSCOPE_RATE_KEY", "header:x-key"),
        ("RAGSCOPE_RATE_MAX_KEYS", "1000"),
    ]);
    let e = Extensions::new();
    let mut overflowed = 0;
    for i in 0..20_000u32 {
        let mut h = HeaderMap::new();
        h.insert("x-key", HeaderValue::from(i));
        let d = l.decide(&h, &e, ip("192.0.2.1")).await;
        overflowed += usize::from(d.key_type() == KeyType::Overflow);
    }
    assert!(l.tracked_keys() <= 1000, "{}", l.tracked_keys());
    assert_eq!(overflowed, 19_000);
}

#[test]
fn seconds_round_up() {
    assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
    assert_eq!(ceil_secs(Duration::from_secs(2)), 2);
    assert_eq!(ceil_secs(Duration::from_millis(2001)), 3);
    assert_eq!(ceil_secs(Duration::ZERO), 0);
}
