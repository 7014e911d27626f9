//! Issue 11, defect 1, over real sockets: feedback posted on one trace in a loop (2 KB
//! comments, kept because content capture is on) must not grow memory without bound. The
//! `/traces` ring files feedback spans under the request they are about, at most
//! `MAX_FEEDBACK_SPANS` per request (the rest counted, not kept), so the trace's view stops
//! growing while every post is still accepted and counted.

mod support;

use std::time::Duration;

use ::ragscope::telemetry::recent::MAX_FEEDBACK_SPANS;
use bytes::Bytes;
use http::Method;
use http_body_util::Full;
use serde_json::{Value, json};
use support::*;

/// Longest wait for anything asynchronous; only reached when something is wrong.
const WAIT: Duration = Duration::from_secs(30);
/// Feedback posts sprayed at the one trace.
const POSTS: usize = 300;

async fn post_json(client: &Client, url: String, body: Value) -> Reply {
    let req = request(Method::POST, &url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request");
    client.request(req).await
}

/// Polls `/traces.json?trace_id=` until `ready` holds for the trace's entry.
async fn trace_when(proxy: &Proxy, trace_id: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let v = Client::http1()
            .get(proxy.admin_url(&format!("/traces.json?trace_id={trace_id}")))
            .await
            .json();
        let entry = v["traces"][0].clone();
        if ready(&entry) {
            return entry;
        }
        assert!(tokio::time::Instant::now() < deadline, "never ready: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn feedback_sprayed_on_one_trace_stays_within_the_per_request_cap() {
    let up = Upstream::start().await;
    let proxy = Proxy::builder()
        .upstream(&up)
        // Comments are kept on the feedback spans only with capture on: the costly case.
        .env(
            "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT",
            "SPAN_ONLY",
        )
        .run()
        .await;
    let client = Client::http1();
    let reply = client.get(proxy.url("/json?n=1")).await;
    assert_eq!(reply.status, 200);
    let trace_id = reply
        .header("traceresponse")
        .and_then(|h| h.get(3..35))
        .expect("traceresponse carries the trace id")
        .to_owned();
    // The request is in the ring before feedback arrives, as it is for a real client.
    trace_when(&proxy, &trace_id, |t| t["path"] == "/json").await;

    let comment = "c".repeat(2048);
    for i in 0..POSTS {
        let reply = post_json(
            &client,
            proxy.url("/ragscope/feedback"),
            json!({"trace_id": trace_id, "score": 1, "label": "good", "comment": format!("{i} {comment}")}),
        )
        .await;
        assert_eq!(reply.status, 202, "{:?}", reply.body);
    }

    // Every post was handled (and counted as dropped past the cap), and the trace holds no
    // more than the cap: its server and client spans plus MAX_FEEDBACK_SPANS feedback spans.
    let dropped = (POSTS - MAX_FEEDBACK_SPANS) as u64;
    let entry = trace_when(&proxy, &trace_id, |t| {
        t["feedback_spans_dropped"].as_u64() == Some(dropped)
    })
    .await;
    let spans = entry["spans"].as_array().expect("spans");
    let feedback: Vec<&Value> = spans
        .iter()
        .filter(|s| s["name"] == "ragscope.feedback")
        .collect();
    assert_eq!(feedback.len(), MAX_FEEDBACK_SPANS, "{entry}");
    assert_eq!(spans.len(), 2 + MAX_FEEDBACK_SPANS, "{entry}");
    // The kept ones are the first ones, each with its 2 KB comment.
    let explanation = &feedback[0]["events"][0]["attributes"]["gen_ai.evaluation.explanation"];
    assert!(
        explanation.as_str().is_some_and(|c| c.len() > 2000),
        "{explanation}"
    );
    proxy.shutdown().await;
}
