use super::*;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn sample(secs: u64, ms: u64, model: Option<&str>) -> ExchangeSample {
    ExchangeSample {
        end: at(secs),
        duration: Duration::from_millis(ms),
        status: Some(200),
        error: false,
        rate_limited: false,
        cancelled: false,
        trace_id: None,
        genai: model.map(|m| GenAiSample {
            model: Some(m.to_owned()),
            input_tokens: Some(1000),
            output_tokens: Some(500),
            ttft: Some(Duration::from_millis(ms / 2)),
            ..GenAiSample::default()
        }),
    }
}

const NOW: u64 = 1_800_000_000;

#[test]
fn totals_series_and_percentiles() {
    let o = Overview::new();
    for i in 1..=100 {
        o.record(sample(NOW - 30, i, None));
    }
    o.record(ExchangeSample {
        error: true,
        status: Some(502),
        ..sample(NOW, 5, None)
    });
    o.record(ExchangeSample {
        rate_limited: true,
        error: true,
        ..sample(NOW, 1, None)
    });
    // Outside the 15 minutes: not counted.
    o.record(sample(NOW - 16 * 60, 1, None));
    let v = o.json(at(NOW));
    assert_eq!(v["window_seconds"], 900);
    assert_eq!(v["totals"]["requests"], 102);
    assert_eq!(v["totals"]["errors"], 2);
    assert_eq!(v["totals"]["rate_limited"], 1);
    let p95 = v["totals"]["p95_ms"].as_f64().expect("p95");
    assert!((95.0..=104.0).contains(&p95), "{p95}");
    let series = v["series"].as_array().expect("series");
    assert_eq!(series.len(), 60);
    let last = &series[59];
    assert_eq!(last["requests"], 2);
    assert_eq!(last["error_rate"], 1.0);
    assert_eq!(series[57]["requests"], 100);
    assert!(
        series[0]["p95_ms"].is_null(),
        "an empty bucket has no percentile"
    );
    assert_eq!(v["models"], serde_json::json!([]));
}

#[test]
fn models_are_bounded_and_cost_is_summed_where_known() {
    let o = Overview::new();
    let priced = |cost: Option<f64>| {
        let mut s = sample(NOW, 10, Some("m-0"));
        if let Some(g) = &mut s.genai {
            g.cost = cost;
        }
        s
    };
    o.record(priced(Some(0.007)));
    for i in 1..(MAX_MODELS + 5) {
        o.record(sample(NOW, 10, Some(&format!("m-{i}"))));
    }
    o.record(priced(Some(0.007)));
    // Not a figure: ignored rather than spoiling the sum.
    o.record(priced(Some(f64::NAN)));
    let v = o.json(at(NOW));
    let models = v["models"].as_array().expect("models");
    assert_eq!(models.len(), MAX_MODELS + 1, "named ones plus other");
    assert_eq!(models[0]["model"], "m-0");
    assert_eq!(models[0]["requests"], 3);
    let cost = models[0]["cost_usd"].as_f64().expect("cost");
    assert!((cost - 0.014).abs() < 1e-9, "{cost}");
    assert!(models[1]["cost_usd"].is_null(), "no price, no cost");
    let other = models
        .iter()
        .find(|m| m["model"] == "other")
        .expect("other");
    assert_eq!(other["requests"], 5);
    assert_eq!(v["totals"]["input_tokens"], 1000 * (MAX_MODELS as u64 + 7));
    let total = v["cost_usd"].as_f64().expect("total cost");
    assert!((total - 0.014).abs() < 1e-9, "{total}");
    let none = Overview::new();
    none.record(sample(NOW, 10, Some("m")));
    let v = none.json(at(NOW));
    assert!(v["cost_usd"].is_null() && v["models"][0]["cost_usd"].is_null());
    assert!(v["totals"]["ttft_p95_ms"].as_f64().is_some());
}

#[test]
fn retrievals_and_feedback() {
    let o = Overview::new();
    let t1 = [1u8; 16];
    let t2 = [2u8; 16];
    let mut rag = sample(NOW, 10, Some("m"));
    rag.trace_id = Some(t1);
    if let Some(g) = &mut rag.genai {
        g.documents = Some(3);
        g.top_score = Some(0.9);
        g.input_messages = Some(
            serde_json::json!([
                {"role": "system", "parts": [{"type": "text", "content": "be brief"}]},
                {"role": "user", "parts": [{"type": "text", "content": "first"}]},
                {"role": "user", "parts": [{"type": "text", "content": "why?"}]},
            ])
            .to_string(),
        );
        g.output_messages = Some(
            serde_json::json!([{"role": "assistant", "parts": [{"type": "text", "content": "because"}],
                "finish_reason": "stop"}])
            .to_string(),
        );
    }
    o.record(rag);
    let mut empty = sample(NOW, 10, Some("m"));
    empty.trace_id = Some(t2);
    if let Some(g) = &mut empty.genai {
        g.documents = Some(0);
    }
    o.record(empty);
    for (trace_id, score) in [(t1, 1.0), (t2, -1.0), ([3; 16], 0.5)] {
        o.record_feedback(FeedbackSample {
            trace_id,
            time: at(NOW),
            score,
            label: Some("x".repeat(500)),
            comment: None,
        });
    }
    let v = o.json(at(NOW));
    assert_eq!(v["totals"]["retrievals"], 2);
    assert_eq!(v["totals"]["empty_retrieval_rate"], 0.5);
    assert_eq!(v["totals"]["feedback"], 3);
    assert_eq!(v["totals"]["feedback_mean"], 0.5 / 3.0);

    let newest = o.feedback(false, None);
    assert_eq!(newest[0].feedback.trace_id, [3; 16]);
    assert_eq!(newest[0].model, None, "unknown request: nothing joined");
    let lowest = o.feedback(true, None);
    assert_eq!(lowest[0].feedback.score, -1.0);
    assert_eq!(lowest[0].documents, Some(0));
    assert_eq!(
        lowest[2].question.as_deref(),
        Some("why?"),
        "the last user message"
    );
    assert_eq!(lowest[2].answer.as_deref(), Some("because"));
    assert_eq!(lowest[0].question, None, "nothing captured, nothing shown");
    assert_eq!(
        lowest[2].feedback.label.as_ref().map(|l| l.len()),
        Some(MAX_LABEL_CHARS)
    );
    assert_eq!(o.feedback(false, Some(t1)).len(), 1);
    let j = o.feedback_json(true, Some(2));
    assert_eq!(j["sort"], "score");
    assert_eq!(j["feedback"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        j["feedback"][0]["trace_url"],
        format!("/traces/{}", "02".repeat(16))
    );
}

#[test]
fn feedback_is_bounded() {
    let o = Overview::new();
    for i in 0..(FEEDBACK_CAPACITY + 10) {
        o.record_feedback(FeedbackSample {
            trace_id: [0; 16],
            time: at(NOW),
            score: i as f64,
            label: None,
            comment: None,
        });
    }
    let all = o.feedback(false, None);
    assert_eq!(all.len(), FEEDBACK_CAPACITY);
    assert_eq!(all[0].feedback.score, (FEEDBACK_CAPACITY + 9) as f64);
}

#[test]
fn trace_ids_round_trip() {
    let id = parse_trace_id("4bf92f3577b34da6a3ce929d0e0e4736").expect("id");
    assert_eq!(hex(&id), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(parse_trace_id("4bf9"), None);
    assert_eq!(parse_trace_id(&"g".repeat(32)), None);
}
