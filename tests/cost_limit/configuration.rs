//! Prices and limits as configuration: a reload in another currency is refused, one in time
//! prices the settle; mistakes stop start-up with one line and exit code 2.

use super::*;

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
