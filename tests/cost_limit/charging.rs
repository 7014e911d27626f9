//! What one ragscope reserves, charges and refuses: the cost the span reports for JSON and
//! streamed answers, a model without a price, the 429 with its headers, `n` choices.

use super::*;

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
