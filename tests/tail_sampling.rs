//! Tail sampling (`RAGSCOPE_TAIL_SAMPLING`) over real sockets with the in-process receiver:
//! exactly the traces the rules keep are exported, with their reason; metrics still count every
//! request; low feedback exports a held dropped trace; held memory stays within its bounds.
//!
//! Absence is proven by order: spans of one exchange are exported before the next exchange's,
//! so once a later marker trace (one the rules must keep) has arrived, an earlier dropped trace
//! would have arrived too.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use http::StatusCode;
use serde_json::json;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(10);

/// A trace id whose ratio decision is known: the SDK's rule keeps a trace at ratio `r` when
/// the low 64 bits, shifted right once, are below `r * 2^63`. `keep` ids have small low bits
/// (kept at any ratio above 0), others have the largest (dropped at any ratio below 1).
fn trace_id(n: u64, keep: bool) -> String {
    let low = if keep { n } else { u64::MAX - n };
    format!("{:016x}{low:016x}", n + 1)
}

fn traceparent(trace_id: &str) -> String {
    format!("00-{trace_id}-00f067aa0ba902b7-01")
}

/// What the SDK's `TraceIdRatioBased` decides for `trace_id` at `ratio`.
fn ratio_keeps(trace_id: &str, ratio: f64) -> bool {
    let low = u64::from_str_radix(&trace_id[16..], 16).expect("hex trace id");
    let bound = (ratio * (1u64 << 63) as f64) as u64;
    (low >> 1) < bound
}

/// Trace ids of the exported SERVER spans.
fn exported(otlp: &OtlpReceiver) -> BTreeSet<String> {
    otlp.spans()
        .into_iter()
        .filter(|s| s.kind == SpanKind::Server)
        .map(|s| s.trace_id)
        .collect()
}

async fn get_in(client: &Client, url: String, trace_id: &str) -> Reply {
    client
        .get_with(url, &[("traceparent", &traceparent(trace_id))])
        .await
}

/// Waits for the SERVER span of `trace_id` and returns it.
async fn wait_trace(otlp: &OtlpReceiver, trace_id: &str) -> CollectedSpan {
    otlp.wait_for_spans(
        |s| s.kind == SpanKind::Server && s.trace_id == trace_id,
        1,
        WAIT,
    )
    .await
    .remove(0)
}

/// The summed value of the tail-sampling counter's points matching `decision` (and `reason`).
fn decisions(otlp: &OtlpReceiver, decision: &str, reason: Option<&str>) -> i64 {
    otlp.latest_metric("ragscope.tail_sampling.traces")
        .map(|m| {
            m.number_points()
                .iter()
                .filter(|p| {
                    p.attr("ragscope.sampling.decision").and_then(Value::as_str) == Some(decision)
                })
                .filter(|p| {
                    reason.is_none_or(|r| {
                        p.attr("ragscope.sampling.reason").and_then(Value::as_str) == Some(r)
                    })
                })
                .filter_map(|p| p.as_i64())
                .sum()
        })
        .unwrap_or(0)
}

/// ragscope in front of `up`, exporting to `otlp`, with these tail-sampling rules.
async fn start(up: &Upstream, otlp: &OtlpReceiver, rules: &str) -> Proxy {
    Proxy::builder()
        .upstream(up)
        .otlp(otlp)
        .env("RAGSCOPE_TAIL_SAMPLING", rules)
        .run()
        .await
}

/// The first point of the latest export of `name` (a gauge, or a counter without attributes).
fn gauge(otlp: &OtlpReceiver, name: &str) -> Option<i64> {
    otlp.latest_metric(name)
        .and_then(|m| m.number_points().first().and_then(|p| p.as_i64()))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rules_export_exactly_the_traces_they_keep_and_metrics_count_every_request() {
    let up = Upstream::start().await;
    let otlp = OtlpReceiver::start().await;
    let proxy = start(
        &up,
        &otlp,
        "errors,refused,cancelled,slow=2s,ttft=800ms,rest=0.25",
    )
    .await;
    let client = Client::http1();
    let mut expected = BTreeSet::new();
    let mut total = 0;

    // Healthy and unremarkable: dropped (the ids are above any ratio's bound).
    for (n, path) in [(1, "/json"), (2, "/status/404"), (3, "/sse?events=2")] {
        let id = trace_id(n, false);
        let reply = get_in(&client, proxy.url(path), &id).await;
        assert!(reply.status.as_u16() < 500, "{path}: {}", reply.status);
        total += 1;
    }
    // Each rule keeps its trace.
    let kept = [
        (10, "/status/503", "error"),
        (11, "/status/429", "refused"),
        (12, "/status/401", "refused"),
        (13, "/slow?delay_ms=2200", "slow"),
        (14, "/sse?events=1&gap_ms=1000", "ttft"),
    ];
    for (n, path, _) in kept {
        let id = trace_id(n, false);
        get_in(&client, proxy.url(path), &id).await;
        expected.insert(id);
        total += 1;
    }
    // A client that hangs up mid-stream.
    let cancelled = trace_id(15, false);
    let mut stream = tokio::net::TcpStream::connect(proxy.addr())
        .await
        .expect("connect");
    let head = format!(
        "GET /sse?events=50&gap_ms=50 HTTP/1.1\r\nHost: rag.example\r\ntraceparent: {}\r\n\r\n",
        traceparent(&cancelled)
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("data: {\"i\":0}") {
        let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("the first event arrives")
            .expect("read");
        assert!(n > 0, "closed early");
        seen.extend_from_slice(&buf[..n]);
    }
    drop(stream);
    wait_trace(&otlp, &cancelled).await;
    expected.insert(cancelled.clone());
    total += 1;

    // The rest, by trace id: ragscope chooses the ids, the test recomputes the rule.
    let mut ratio_kept = 0;
    for _ in 0..200 {
        let reply = client.get(proxy.url("/json")).await;
        let header = reply.header("traceresponse").expect("traceresponse");
        let id = header[3..35].to_owned();
        if ratio_keeps(&id, 0.25) {
            expected.insert(id);
            ratio_kept += 1;
        }
        total += 1;
    }
    // 200 draws at 0.25: mean 50, standard deviation about 6.1; five of them either side.
    assert!((20..=80).contains(&ratio_kept), "{ratio_kept} of 200 kept");

    // The marker: kept by ratio, sent last.
    let marker = trace_id(99, true);
    get_in(&client, proxy.url("/json"), &marker).await;
    expected.insert(marker.clone());
    total += 1;
    let span = wait_trace(&otlp, &marker).await;
    assert_eq!(span.str_attr("ragscope.sampling.reason"), Some("ratio"));
    assert_eq!(span.double_attr("ragscope.sampling.ratio"), Some(0.25));

    assert_eq!(exported(&otlp), expected);
    for (n, _, reason) in kept {
        let id = trace_id(n, false);
        let spans: Vec<_> = otlp
            .spans()
            .into_iter()
            .filter(|s| s.trace_id == id)
            .collect();
        assert_eq!(spans.len(), 2, "{reason}: SERVER and CLIENT spans");
        for s in spans {
            assert_eq!(s.str_attr("ragscope.sampling.reason"), Some(reason));
            assert!(!s.has_attr("ragscope.sampling.ratio"));
        }
    }
    let span = wait_trace(&otlp, &cancelled).await;
    assert_eq!(span.str_attr("ragscope.sampling.reason"), Some("cancelled"));

    // Metrics see every request, kept or not; the decision counter adds up.
    let total = total as u64;
    otlp.wait_for_metric_where(
        "http.server.request.duration",
        |m| m.histogram_points().iter().map(|p| p.count).sum::<u64>() == total,
        WAIT,
    )
    .await;
    let all = otlp
        .wait_for_metric_where(
            "ragscope.tail_sampling.traces",
            |m| {
                m.number_points()
                    .iter()
                    .filter_map(|p| p.as_i64())
                    .sum::<i64>()
                    == total as i64
            },
            WAIT,
        )
        .await;
    assert!(all.is_monotonic_sum());
    assert_eq!(decisions(&otlp, "kept", None), expected.len() as i64);
    assert_eq!(decisions(&otlp, "kept", Some("refused")), 2);
    assert_eq!(decisions(&otlp, "kept", Some("ratio")), ratio_kept + 1);
    assert_eq!(
        decisions(&otlp, "dropped", None),
        total as i64 - expected.len() as i64
    );
    // The /traces ring holds every request too, dropped ones marked as such.
    let ring = client.get(proxy.admin_url("/traces.json")).await.json();
    let ring = ring["traces"].as_array().expect("traces");
    assert_eq!(ring.len() as u64, total);
    let dropped = ring
        .iter()
        .filter(|t| t["spans"][0]["attributes"]["ragscope.sampling.reason"] == "dropped")
        .count() as u64;
    assert_eq!(dropped, total - expected.len() as u64);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn low_feedback_exports_a_dropped_trace_that_is_still_held() {
    let up = Upstream::start().await;
    let otlp = OtlpReceiver::start().await;
    let proxy = start(&up, &otlp, "errors,low_feedback=0.3").await;
    let client = Client::http1();

    let bad = trace_id(1, true);
    let good = trace_id(2, true);
    for id in [&bad, &good] {
        assert_eq!(
            get_in(&client, proxy.url("/json"), id).await.status,
            StatusCode::OK
        );
    }
    for (id, score) in [(&good, 0.9), (&bad, 0.1)] {
        let reply = client
            .post_json(
                proxy.url("/ragscope/feedback"),
                &json!({"trace_id": id, "score": score}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::ACCEPTED);
    }
    let spans = otlp
        .wait_for_spans(
            |s| s.trace_id == bad && s.kind != SpanKind::Internal,
            2,
            WAIT,
        )
        .await;
    for s in &spans {
        assert_eq!(s.str_attr("ragscope.sampling.reason"), Some("low_feedback"));
        assert_eq!(s.resource_str("service.name"), Some("ragscope"));
    }
    let marker = trace_id(3, false);
    get_in(&client, proxy.url("/status/500"), &marker).await;
    wait_trace(&otlp, &marker).await;
    assert_eq!(exported(&otlp), BTreeSet::from([bad.clone(), marker]));
    // The feedback span of the trace still held waits with it; the released one's follows it.
    let feedback: BTreeSet<String> = otlp
        .spans_named("ragscope.feedback")
        .into_iter()
        .map(|s| s.trace_id)
        .collect();
    assert_eq!(feedback, BTreeSet::from([bad.clone()]));
    otlp.wait_for_metric_where(
        "ragscope.tail_sampling.traces",
        |m| {
            m.point_with(&[
                ("ragscope.sampling.decision", Value::from("released")),
                ("ragscope.sampling.reason", Value::from("low_feedback")),
            ])
            .and_then(|p| p.as_i64())
                == Some(1)
        },
        WAIT,
    )
    .await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn held_traces_stay_within_their_count_and_byte_bounds_under_a_spray() {
    let up = Upstream::start().await;
    let otlp = OtlpReceiver::start().await;
    let proxy = start(
        &up,
        &otlp,
        "errors,low_feedback=0.3,hold=20,hold_bytes=1MiB",
    )
    .await;
    let client = Client::http1();
    let ids: Vec<String> = (0..100).map(|n| trace_id(n, true)).collect();
    for id in &ids {
        get_in(&client, proxy.url("/json"), id).await;
    }
    otlp.wait_for_metric_where(
        "ragscope.tail_sampling.held.evicted",
        |m| m.number_points().first().and_then(|p| p.as_i64()) == Some(80),
        WAIT,
    )
    .await;
    assert_eq!(gauge(&otlp, "ragscope.tail_sampling.held.traces"), Some(20));

    // The oldest were evicted: their feedback finds nothing; the newest are still held.
    for id in [&ids[0], &ids[99]] {
        client
            .post_json(
                proxy.url("/ragscope/feedback"),
                &json!({"trace_id": id, "score": 0.0}),
            )
            .await;
    }
    wait_trace(&otlp, &ids[99]).await;
    let marker = trace_id(500, false);
    get_in(&client, proxy.url("/status/502"), &marker).await;
    wait_trace(&otlp, &marker).await;
    assert_eq!(exported(&otlp), BTreeSet::from([ids[99].clone(), marker]));
    proxy.shutdown().await;

    // The byte bound binds before the count.
    let otlp = OtlpReceiver::start().await;
    let proxy = start(&up, &otlp, "errors,low_feedback=0.3,hold_bytes=16KiB").await;
    for n in 0..100 {
        get_in(&client, proxy.url("/json"), &trace_id(n, true)).await;
    }
    // Every trace is either still held or was evicted, once the exports caught up.
    let settled = wait_until(WAIT, || {
        let held = gauge(&otlp, "ragscope.tail_sampling.held.traces").unwrap_or(0);
        let evicted = gauge(&otlp, "ragscope.tail_sampling.held.evicted").unwrap_or(0);
        evicted > 0 && held + evicted == 100
    })
    .await;
    assert!(
        settled,
        "held {:?}, evicted {:?}",
        gauge(&otlp, "ragscope.tail_sampling.held.traces"),
        gauge(&otlp, "ragscope.tail_sampling.held.evicted")
    );
    let bytes = gauge(&otlp, "ragscope.tail_sampling.held.size").expect("held bytes");
    assert!(bytes > 0 && bytes <= 16 << 10, "{bytes} bytes held");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn off_by_default_every_trace_is_exported_without_a_reason() {
    let up = Upstream::start().await;
    let otlp = OtlpReceiver::start().await;
    let proxy = Proxy::builder().upstream(&up).otlp(&otlp).run().await;
    let client = Client::http1();
    let id = trace_id(1, false);
    get_in(&client, proxy.url("/json"), &id).await;
    let span = wait_trace(&otlp, &id).await;
    assert!(!span.has_attr("ragscope.sampling.reason"));
    proxy.shutdown().await;
}
