//! The operator's view over real sockets: traffic through the proxy (JSON and streamed chat, RAG
//! queries with documents and an empty retrieval, feedback posts), then `/overview`,
//! `/feedback`, `/traces` and a trace's page loaded in a real headless Chromium with the DOM
//! asserted on, the JSON twins checked field by field, and `RAGSCOPE_ADMIN_TOKEN` on an admin
//! listener bound to `0.0.0.0` (every interface, so not loopback) reached through 127.0.0.1.

mod support;

use std::time::Duration;

use ::ragscope::demo::DemoUpstream;
use bytes::Bytes;
use http::Method;
use http_body_util::Full;
use serde_json::{Value, json};
use support::*;

/// Longest wait for anything asynchronous; only reached when something is wrong.
const WAIT: Duration = Duration::from_secs(20);
const TOKEN: &str = "s3cret-admin-token-0123456789";

async fn post_json(url: String, body: Value) -> Reply {
    let req = request(Method::POST, &url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request");
    Client::http1().request(req).await
}

async fn get_with(url: String, auth: Option<&str>) -> Reply {
    let mut req = request(Method::GET, &url);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    Client::http1()
        .request(req.body(Full::default()).expect("request"))
        .await
}

fn trace_id(reply: &Reply) -> String {
    reply
        .header("traceresponse")
        .and_then(|h| h.get(3..35))
        .expect("traceresponse carries the trace id")
        .to_owned()
}

/// Polls `/overview.json` until `ready` holds for it.
async fn overview_when(proxy: &Proxy, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let v = Client::http1()
            .get(proxy.admin_url("/overview.json"))
            .await
            .json();
        if ready(&v) {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "never ready: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn usage(reply: &Reply) -> (u64, u64) {
    let v = reply.json();
    (
        v["usage"]["prompt_tokens"].as_u64().expect("prompt tokens"),
        v["usage"]["completion_tokens"]
            .as_u64()
            .expect("completion tokens"),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn overview_feedback_and_rag_pages_after_real_traffic() {
    let demo = DemoUpstream::start("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("demo upstream");
    let proxy = Proxy::builder()
        .upstream(&demo.addr())
        .env(
            "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT",
            "SPAN_ONLY",
        )
        .run()
        .await;

    // Two JSON chats on one model, one stream on another.
    let mut chats = Vec::new();
    for q in ["what is ragscope?", "how do I deploy it?"] {
        let r = post_json(
            proxy.url("/v1/chat/completions"),
            json!({"model": "demo-rag-1", "messages": [{"role": "user", "content": q}]}),
        )
        .await;
        assert_eq!(r.status, 200);
        chats.push(r);
    }
    let stream = post_json(
        proxy.url("/v1/chat/completions"),
        json!({"model": "demo-rag-2", "stream": true, "stream_options": {"include_usage": true},
               "messages": [{"role": "user", "content": "stream please"}]}),
    )
    .await;
    assert_eq!(stream.status, 200);
    assert!(String::from_utf8_lossy(&stream.body).contains("[DONE]"));
    // RAG answers: one with three documents, one empty retrieval.
    let rag = post_json(
        proxy.url("/query"),
        json!({"question": "reset the cache", "top_k": 3}),
    )
    .await;
    let empty = post_json(
        proxy.url("/query"),
        json!({"question": "unknown topic", "top_k": 0}),
    )
    .await;
    assert_eq!((rag.status.as_u16(), empty.status.as_u16()), (200, 200));
    let (rag_id, empty_id, chat_id) = (trace_id(&rag), trace_id(&empty), trace_id(&chats[0]));

    // Wait until the five requests are counted, so every joined fact is in place.
    overview_when(&proxy, |v| v["totals"]["requests"] == 5).await;
    for (trace, score, label, comment) in [
        (&rag_id, 1.0, "good", "exactly the right section"),
        (&empty_id, -1.0, "no_sources", "found nothing at all"),
        (&chat_id, 0.5, "ok", "fine"),
    ] {
        let r = post_json(
            proxy.url("/ragscope/feedback"),
            json!({"trace_id": trace, "score": score, "label": label, "comment": comment}),
        )
        .await;
        assert_eq!(r.status, 202, "{:?}", r.body);
    }
    let v = overview_when(&proxy, |v| v["totals"]["requests"] == 8).await;

    // /overview.json, field by field.
    let (in1, out1) = usage(&chats[0]);
    let (in2, out2) = usage(&chats[1]);
    let t = &v["totals"];
    assert_eq!(v["window_seconds"], 900);
    assert_eq!(v["bucket_seconds"], 15);
    assert_eq!(t["errors"], 0);
    assert_eq!(t["error_rate"], 0.0);
    assert_eq!(t["rate_limited"], 0);
    assert_eq!(t["retrievals"], 2);
    assert_eq!(t["empty_retrievals"], 1);
    assert_eq!(t["empty_retrieval_rate"], 0.5);
    assert_eq!(t["feedback"], 3);
    assert_eq!(t["feedback_mean"], 0.5 / 3.0);
    assert!(t["p50_ms"].as_f64().is_some_and(|p| p > 0.0), "{t}");
    assert!(t["p95_ms"].as_f64() >= t["p50_ms"].as_f64(), "{t}");
    assert!(
        t["ttft_p95_ms"].as_f64().is_some_and(|p| p > 0.0),
        "the stream has a time to first token: {t}"
    );
    assert!(t["input_tokens"].as_u64() > Some(in1 + in2), "{t}");
    let series = v["series"].as_array().expect("series");
    assert_eq!(series.len(), 60);
    let counted: u64 = series.iter().filter_map(|b| b["requests"].as_u64()).sum();
    assert_eq!(counted, 8);
    assert!(
        series
            .windows(2)
            .all(|w| w[0]["start"].as_u64() < w[1]["start"].as_u64())
    );

    let models = v["models"].as_array().expect("models");
    assert_eq!(models.len(), 2, "{models:?}");
    let m1 = &models[0];
    assert_eq!(m1["model"], "demo-rag-1");
    assert_eq!(m1["requests"], 2);
    assert_eq!(m1["errors"], 0);
    assert_eq!(m1["input_tokens"], in1 + in2);
    assert_eq!(m1["output_tokens"], out1 + out2);
    // No price is known for any inference, so no cost is made up.
    assert!(m1["cost_usd"].is_null() && v["cost_usd"].is_null(), "{v}");
    assert!(m1["ttft_p95_ms"].is_null(), "no stream on this model");
    let m2 = &models[1];
    assert_eq!(m2["model"], "demo-rag-2");
    assert_eq!(m2["requests"], 1);
    assert!(m2["cost_usd"].is_null(), "no price known");
    assert!(m2["ttft_p95_ms"].as_f64().is_some_and(|p| p > 0.0));
    assert!(m2["output_tokens"].as_u64().is_some_and(|n| n > 0));

    // /overview in a browser: charts drawn with points, the model table filled; and the same
    // page as served, without running anything: no script, nothing external.
    let served = Client::http1().get(proxy.admin_url("/overview")).await;
    assert_eq!(served.status, 200);
    let html = String::from_utf8_lossy(&served.body).into_owned();
    assert!(!html.contains("<script") && !html.contains("src=") && !html.contains("<link"));
    assert!(
        html.contains("<tr class=\"model\">"),
        "tables are in the HTML itself"
    );
    let dom = rendered_dom(proxy.admin_url("/overview")).await;
    for chart in [
        "chart-rate",
        "chart-errors",
        "chart-latency",
        "chart-ttft",
        "chart-tokens",
        "chart-rate-limited",
        "chart-empty",
        "chart-feedback",
    ] {
        let start = dom
            .find(&format!("id=\"{chart}\""))
            .unwrap_or_else(|| panic!("{chart} missing: {dom}"));
        let figure = &dom[start..start + dom[start..].find("</figure>").expect("figure end")];
        assert!(
            figure.contains("<svg") && figure.contains("<circle class=\"point"),
            "{chart} has no data point: {figure}"
        );
    }
    assert_eq!(dom.matches("<tr class=\"model\">").count(), 2, "{dom}");
    assert!(
        dom.contains(">demo-rag-1<") && dom.contains(">demo-rag-2<"),
        "{dom}"
    );
    let row = &dom[dom.find(">demo-rag-1<").expect("row")..];
    let row = &row[..row.find("</tr>").expect("row end")];
    assert!(
        row.ends_with("<td class=\"num\">\u{2014}</td>"),
        "no cost shown without a price: {row}"
    );
    let root = Client::http1().get(proxy.admin_url("/")).await;
    let root = String::from_utf8_lossy(&root.body);
    assert!(
        root.contains("<title>ragscope \u{b7} overview</title>")
            && root.matches("<tr class=\"model\">").count() == 2,
        "/ is the overview"
    );

    // /feedback.json, lowest score first, joined with what the request was.
    let fb = Client::http1()
        .get(proxy.admin_url("/feedback.json?sort=score"))
        .await
        .json();
    assert_eq!(fb["sort"], "score");
    assert_eq!(fb["capacity"], 500);
    let entries = fb["feedback"].as_array().expect("entries");
    assert_eq!(entries.len(), 3);
    let low = &entries[0];
    assert_eq!(low["trace_id"], empty_id.as_str());
    assert_eq!(low["trace_url"], format!("/traces/{empty_id}"));
    assert_eq!(low["score"], -1.0);
    assert_eq!(low["label"], "no_sources");
    assert_eq!(low["comment"], "found nothing at all");
    assert_eq!(low["documents"], 0);
    assert!(low["time"].as_u64().is_some_and(|t| t > 1_700_000_000_000));
    assert_eq!(entries[1]["trace_id"], chat_id.as_str());
    assert_eq!(entries[1]["model"], "demo-rag-1");
    assert_eq!(entries[1]["question"], "what is ragscope?");
    let answer = chats[0].json()["choices"][0]["message"]["content"].clone();
    assert_eq!(entries[1]["answer"], answer);
    assert_eq!(entries[2]["documents"], 3);
    let newest = Client::http1()
        .get(proxy.admin_url("/feedback.json?limit=1"))
        .await
        .json();
    assert_eq!(newest["sort"], "time");
    assert_eq!(newest["feedback"][0]["trace_id"], chat_id.as_str());
    assert_eq!(newest["feedback"].as_array().map(Vec::len), Some(1));

    // /feedback in a browser, lowest first, each row linked to its trace view.
    let dom = rendered_dom(proxy.admin_url("/feedback?sort=score")).await;
    let rows = table_body(&dom);
    assert_eq!(rows.matches("<tr class=\"entry").count(), 3, "{rows}");
    let order: Vec<usize> = [&empty_id, &chat_id, &rag_id]
        .iter()
        .map(|id| rows.find(&format!("href=\"/traces/{id}\"")).expect("link"))
        .collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "lowest first: {rows}"
    );
    assert!(rows.contains("<tr class=\"entry low\">"), "{rows}");
    assert!(rows.contains(">found nothing at all<") && rows.contains(">what is ragscope?<"));

    // The links resolve: the trace view shows the documents and the joined feedback.
    let page = rendered_dom(proxy.admin_url(&format!("/traces/{rag_id}"))).await;
    assert_eq!(page.matches("<tr class=\"document\">").count(), 3, "{page}");
    assert!(
        page.contains(">doc-1<") && page.contains(">0.920<"),
        "{page}"
    );
    assert!(
        page.contains("Feedback (1)") && page.contains(">good<"),
        "{page}"
    );
    let page = rendered_dom(proxy.admin_url(&format!("/traces/{empty_id}"))).await;
    assert!(
        page.contains("Empty retrieval: no document was returned."),
        "{page}"
    );
    assert!(page.contains(">no_sources<"), "{page}");

    // RAG in the request list: document count and top score, the empty retrieval marked.
    let list = rendered_dom(proxy.admin_url("/traces")).await;
    let rows = table_body(&list);
    assert!(rows.contains(">3 docs, top 0.920<"), "{rows}");
    assert!(
        rows.contains("<td class=\"rag empty-retrieval\">empty retrieval</td>"),
        "{rows}"
    );
    let json = Client::http1()
        .get(proxy.admin_url(&format!("/traces.json?trace_id={rag_id}")))
        .await
        .json();
    assert_eq!(json["traces"][0]["documents"], 3);
    assert_eq!(json["traces"][0]["top_score"], 0.92);
    assert_eq!(json["traces"][0]["empty_retrieval"], false);
    assert_eq!(
        json["feedback"][0]["label"], "good",
        "the trace's twin has its feedback"
    );
    assert_eq!(json["feedback"].as_array().map(Vec::len), Some(1));
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_and_rate_limits_show_in_the_overview() {
    let up = Upstream::start().await;
    let proxy = Proxy::builder()
        .upstream(&up)
        .env("RAGSCOPE_RATE_LIMIT", "2/m")
        .env("RAGSCOPE_RATE_BURST", "2")
        .run()
        .await;
    let client = Client::http1();
    assert_eq!(client.get(proxy.url("/status/503")).await.status, 503);
    assert_eq!(client.get(proxy.url("/json")).await.status, 200);
    assert_eq!(client.get(proxy.url("/json")).await.status, 429);
    let v = overview_when(&proxy, |v| v["totals"]["requests"] == 3).await;
    assert_eq!(v["totals"]["errors"], 2, "503 and 429: {v}");
    assert_eq!(v["totals"]["rate_limited"], 1);
    assert_eq!(v["totals"]["error_rate"], 2.0 / 3.0);
    assert_eq!(v["models"], json!([]), "no GenAI traffic, no model rows");
    let dom = rendered_dom(proxy.admin_url("/overview")).await;
    let start = dom.find("id=\"chart-rate-limited\"").expect("chart");
    let figure = &dom[start..start + dom[start..].find("</figure>").expect("end")];
    assert_eq!(
        figure.matches("<circle class=\"point").count(),
        60,
        "{figure}"
    );
    assert!(dom.contains("No GenAI traffic in the window yet."), "{dom}");
    proxy.shutdown().await;
}

const PROTECTED: [&str; 8] = [
    "/overview",
    "/overview.json",
    "/",
    "/traces",
    "/traces.json",
    "/feedback",
    "/feedback.json",
    "/debug/config",
];

/// The admin listener bound to 0.0.0.0 (not loopback), reached through 127.0.0.1.
fn exposed_admin_url(proxy: &Proxy, path: &str) -> String {
    let addr = proxy.admin_addr().expect("admin on");
    assert!(addr.ip().is_unspecified(), "{addr}");
    format!("http://127.0.0.1:{}{path}", addr.port())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exposed_admin_listener_without_a_token_serves_only_the_open_endpoints() {
    let up = Upstream::start().await;
    let proxy = Proxy::builder()
        .upstream(&up)
        .env("RAGSCOPE_ADMIN_LISTEN", "0.0.0.0:0")
        .run()
        .await;
    assert_eq!(Client::http1().get(proxy.url("/json")).await.status, 200);
    for open in ["/healthz", "/readyz", "/metrics"] {
        let r = get_with(exposed_admin_url(&proxy, open), None).await;
        assert_eq!(r.status, 200, "{open}");
    }
    for path in PROTECTED {
        let r = get_with(
            exposed_admin_url(&proxy, path),
            Some("Bearer whatever-it-is-1234"),
        )
        .await;
        assert_eq!(r.status, 403, "{path}");
        assert_eq!(r.error_type(), "admin_token_unset", "{path}");
        assert!(
            r.json()["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("RAGSCOPE_ADMIN_TOKEN"))
        );
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exposed_admin_listener_with_a_token_needs_the_bearer() {
    let up = Upstream::start().await;
    let proxy = Proxy::builder()
        .upstream(&up)
        .env("RAGSCOPE_ADMIN_LISTEN", "0.0.0.0:0")
        .env("RAGSCOPE_ADMIN_TOKEN", TOKEN)
        .run()
        .await;
    assert_eq!(Client::http1().get(proxy.url("/json")).await.status, 200);
    for open in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(
            get_with(exposed_admin_url(&proxy, open), None).await.status,
            200
        );
    }
    let good = format!("Bearer {TOKEN}");
    let wrong = format!("Bearer {}x", &TOKEN[..TOKEN.len() - 1]);
    for path in PROTECTED {
        let url = exposed_admin_url(&proxy, path);
        let none = get_with(url.clone(), None).await;
        assert_eq!(none.status, 401, "{path}");
        assert_eq!(none.error_type(), "admin_token_missing");
        assert_eq!(
            none.header("www-authenticate"),
            Some("Bearer realm=\"ragscope admin\"")
        );
        let bad = get_with(url.clone(), Some(&wrong)).await;
        assert_eq!(bad.status, 401, "{path}");
        assert_eq!(bad.error_type(), "admin_token_invalid");
        let ok = get_with(url, Some(&good)).await;
        assert_eq!(ok.status, 200, "{path}");
        assert!(
            !String::from_utf8_lossy(&ok.body).contains(TOKEN),
            "{path} shows the token"
        );
    }
    let config = get_with(exposed_admin_url(&proxy, "/debug/config"), Some(&good))
        .await
        .json();
    assert_eq!(config["RAGSCOPE_ADMIN_TOKEN"], "***");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_binary_never_logs_the_token_and_refuses_a_weak_one() {
    let up = Upstream::start().await;
    let mut weak = Proxy::builder()
        .upstream(&up)
        .env("RAGSCOPE_ADMIN_TOKEN", "short-one")
        .spawn();
    let status = weak.wait_exit(WAIT).await.expect("exits");
    assert_eq!(status.code(), Some(2));
    let stderr = weak.stderr_lines().join("\n");
    assert!(stderr.contains("RAGSCOPE_ADMIN_TOKEN"), "{stderr}");
    assert!(
        !stderr.contains("short-one"),
        "the bad value is a secret too: {stderr}"
    );

    let bin = Proxy::builder()
        .upstream(&up)
        .env("RAGSCOPE_ADMIN_LISTEN", "0.0.0.0:0")
        .env("RAGSCOPE_ADMIN_TOKEN", TOKEN)
        .env("RAGSCOPE_LOG", "debug")
        .spawn();
    let (listen, admin) = bin.wait_serving().await;
    let admin = admin.expect("admin on");
    let base = format!("http://127.0.0.1:{}", admin.port());
    assert_eq!(
        Client::http1()
            .get(format!("http://{listen}/json"))
            .await
            .status,
        200
    );
    let good = format!("Bearer {TOKEN}");
    assert_eq!(
        get_with(format!("{base}/debug/config"), Some(&good))
            .await
            .status,
        200
    );
    assert_eq!(
        get_with(format!("{base}/traces"), Some("Bearer nope"))
            .await
            .status,
        401
    );
    assert!(
        wait_until(WAIT, || bin.access_log().len() == 1).await,
        "{:?}",
        bin.lines()
    );
    let all = [bin.lines(), bin.stderr_lines()].concat().join("\n");
    assert!(!all.contains(TOKEN), "the token was logged: {all}");
}
