//! The budget limiters end to end in memory: reserve, refuse, settle, shadow mode, headers;
//! tokens and spend.

use super::*;
use crate::config::Reader;
use http::HeaderValue;

fn limiter(vars: &[(&str, &str)]) -> Arc<BudgetLimiter> {
    let config = RateLimitConfig::from_reader(&Reader::new(vars)).expect("config");
    let meter = opentelemetry::global::meter("test");
    BudgetLimiter::from_config(&config, &meter)
        .expect("limiter")
        .expect("on")
}

fn estimate(input: u64, output: u64) -> Estimate {
    Estimate {
        input,
        output,
        model: None,
    }
}

async fn reserve(l: &Arc<BudgetLimiter>, e: Estimate) -> BudgetAccount {
    let peer: IpAddr = "192.0.2.1".parse().expect("ip");
    l.reserve(&HeaderMap::new(), &Extensions::new(), peer, &e)
        .await
}

fn reported(input: i64, output: i64) -> Outcome {
    Outcome {
        input_tokens: Some(input),
        output_tokens: Some(output),
        success: true,
        ..Outcome::default()
    }
}

#[tokio::test]
async fn a_settled_reservation_returns_what_was_not_used() {
    let l = limiter(&[("RAGSCOPE_TOKEN_LIMIT", "1000/h")]);
    let mut a = reserve(&l, estimate(100, 800)).await;
    assert_eq!(a.decision().outcome(), "allowed");
    assert_eq!(a.decision().reserved(), 900);
    // 900 of 1000 are held: a second request of 200 does not fit.
    let refused = reserve(&l, estimate(100, 100)).await;
    assert_eq!(refused.decision().outcome(), "limited");
    match refused.decision().refusal() {
        Some(ProxyError::TokenLimited {
            retry_after, limit, ..
        }) => {
            // 100 tokens missing at 1000/h: 360 s.
            assert_eq!(limit, 1000);
            assert!((359..=361).contains(&retry_after), "{retry_after}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    a.settle(&reported(100, 50), &[], "complete");
    let s = *a.settlement().expect("settled");
    assert_eq!((s.reserved, s.charged, s.refunded), (900, 150, 750));
    assert_eq!(s.usage, Usage::Reported);
    // Now 850 are there.
    let b = reserve(&l, estimate(100, 700)).await;
    assert_eq!(b.decision().outcome(), "allowed");
}

#[tokio::test]
async fn a_charge_past_the_reservation_puts_the_key_in_debt() {
    let l = limiter(&[("RAGSCOPE_TOKEN_LIMIT", "1000/h")]);
    let mut a = reserve(&l, estimate(10, 90)).await;
    a.settle(&reported(10, 1490), &[], "complete");
    assert_eq!(a.settlement().map(|s| s.refunded), Some(0));
    let refused = reserve(&l, estimate(1, 0)).await;
    assert_eq!(refused.decision().outcome(), "limited");
    let mut headers = HeaderMap::new();
    refused.decision().add_headers(&mut headers);
    assert_eq!(headers["x-ratelimit-remaining-tokens"], "0");
    assert_eq!(headers["x-ratelimit-limit-tokens"], "1000");
    // 500 of debt and a full bucket to go back to: 1h30m.
    assert_eq!(headers["x-ratelimit-reset-tokens"], "1h30m0s");
}

#[tokio::test]
async fn an_unsettled_reservation_keeps_its_tokens() {
    let l = limiter(&[("RAGSCOPE_TOKEN_LIMIT", "100/m")]);
    drop(reserve(&l, estimate(60, 0)).await);
    let refused = reserve(&l, estimate(50, 0)).await;
    assert_eq!(refused.decision().outcome(), "limited");
}

#[tokio::test]
async fn shadow_mode_reserves_and_records_but_never_refuses_or_tells() {
    let l = limiter(&[
        ("RAGSCOPE_TOKEN_LIMIT", "100/m"),
        ("RAGSCOPE_TOKEN_MODE", "shadow"),
    ]);
    let _held = reserve(&l, estimate(100, 0)).await;
    let over = reserve(&l, estimate(10, 0)).await;
    assert_eq!(over.decision().outcome(), "shadow_limited");
    assert!(over.decision().refusal().is_none());
    let mut headers = HeaderMap::new();
    over.decision().add_headers(&mut headers);
    assert!(headers.is_empty());
}

#[tokio::test]
async fn each_key_has_its_own_budget_and_the_store_stays_at_the_cap() {
    let l = limiter(&[
        ("RAGSCOPE_TOKEN_LIMIT", "100/m"),
        ("RAGSCOPE_RATE_KEY", "header:x-team"),
        ("RAGSCOPE_RATE_MAX_KEYS", "100"),
    ]);
    let peer: IpAddr = "192.0.2.1".parse().expect("ip");
    let mut overflowed = 0;
    for i in 0..1000u32 {
        let mut h = HeaderMap::new();
        h.insert("x-team", HeaderValue::from(i));
        let a = l
            .reserve(&h, &Extensions::new(), peer, &estimate(1, 0))
            .await;
        overflowed += usize::from(a.decision().key_type == KeyType::Overflow);
    }
    assert!(l.tracked_keys() <= 100, "{}", l.tracked_keys());
    assert_eq!(overflowed, 900);
}

#[test]
fn reset_values_read_like_openai_writes_them() {
    assert_eq!(reset_value(Duration::from_millis(250)), "250ms");
    assert_eq!(reset_value(Duration::from_micros(1)), "1ms");
    assert_eq!(reset_value(Duration::ZERO), "0ms");
    assert_eq!(reset_value(Duration::from_millis(45_200)), "46s");
    assert_eq!(reset_value(Duration::from_secs(360)), "6m0s");
    assert_eq!(reset_value(Duration::from_secs(3723)), "1h2m3s");
}

/// A spend limiter of `limit` over a price file of one line per `(model, input, output)`.
fn cost_limiter(limit: &str, prices: &str) -> Arc<BudgetLimiter> {
    let dir = std::env::temp_dir().join(format!("ragscope-cost-{}", rand_nonce()));
    std::fs::write(&dir, prices).expect("price file");
    let loaded = Arc::new(crate::genai::prices::Prices::load(&dir).expect("prices"));
    let _ = std::fs::remove_file(&dir);
    let vars = [("RAGSCOPE_COST_LIMIT", limit), ("RAGSCOPE_PRICES", "set")];
    let config = RateLimitConfig::from_reader(&Reader::new(&vars[..])).expect("config");
    let meter = opentelemetry::global::meter("test");
    BudgetLimiter::cost_from_config(&config, Some(&loaded), &meter)
        .expect("limiter")
        .expect("on")
}

#[tokio::test]
async fn a_spend_budget_reserves_the_priced_estimate_and_charges_the_priced_usage() {
    // 1 per million input tokens, 10 per million output: 0.01 a minute is 10000 micro-units.
    let l = cost_limiter("0.01/m", "m* 1 10 - - USD\n");
    assert_eq!(l.unit(), Unit::Cost);
    let e = Estimate {
        input: 1000,
        output: 500,
        model: Some("m1".into()),
    };
    let mut a = reserve(&l, e.clone()).await;
    assert_eq!(a.decision().outcome(), "allowed");
    assert_eq!(a.decision().reserved(), 1000 + 5000);
    let mut headers = HeaderMap::new();
    a.decision().add_headers(&mut headers);
    assert_eq!(headers["x-ratelimit-limit-cost"], "0.01");
    assert_eq!(headers["x-ratelimit-remaining-cost"], "0.004");
    // 6000 of 10000 held: a second one does not fit, and is refused as spend.
    let refused = reserve(&l, e.clone()).await;
    assert_eq!(refused.decision().outcome(), "limited");
    assert!(matches!(
        refused.decision().refusal(),
        Some(ProxyError::CostLimited { limit: 10_000, .. })
    ));
    a.settle(&reported(200, 30), &["m1"], "complete");
    let s = *a.settlement().expect("settled");
    assert_eq!((s.charged, s.refunded), (200 + 300, 5500));
    let attributes = a.span_attributes();
    let charged = attributes
        .iter()
        .find(|kv| kv.key.as_str() == "ragscope.cost_limit.charged")
        .expect("charged");
    assert_eq!(charged.value, opentelemetry::Value::F64(0.0005));
    assert_eq!(reserve(&l, e).await.decision().outcome(), "allowed");
}

#[tokio::test]
async fn a_model_without_a_price_is_admitted_unpriced_and_charged_nothing() {
    let l = cost_limiter("0.000001/m", "priced 1 1 - - USD\n");
    for model in [Some("other".to_owned()), None] {
        let mut a = reserve(
            &l,
            Estimate {
                input: 1_000_000,
                output: 0,
                model,
            },
        )
        .await;
        assert_eq!(a.decision().outcome(), "unpriced");
        assert!(a.decision().refusal().is_none());
        let mut headers = HeaderMap::new();
        a.decision().add_headers(&mut headers);
        assert!(headers.is_empty(), "the budget was not looked at");
        a.settle(&reported(5, 5), &["other"], "complete");
        assert!(
            a.settlement().is_none(),
            "nothing reserved, nothing settled"
        );
    }
}
