//! A hostile client against the process-wide parse budget (issue 11, `RAGSCOPE_PARSE_BUDGET`):
//! many concurrent large JSON bodies, all in flight at once. Every request succeeds untouched;
//! the copies that found no room were skipped, counted in the budget metric and flagged on
//! their spans; the proxy's resident memory stays under a stated bound far below what the
//! copies would take without a budget.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use support::*;

const WAIT: Duration = Duration::from_secs(30);
/// Concurrent requests.
const CLIENTS: usize = 48;
/// Each request body: ~3.5 MB of JSON, under `RAGSCOPE_PARSE_MAX_BYTES` (4 MiB here).
const BODY_BYTES: usize = 3_500_000;
/// `RAGSCOPE_PARSE_BUDGET`: room for two such copies.
const BUDGET: usize = 8 << 20;
/// The stated bound on the growth of the proxy's RSS while every request is in flight. The
/// copies alone would take `CLIENTS` x 4 MiB = 192 MiB without the budget (measured: +254 MiB
/// with the budget raised to 1 GiB; +43 to +68 MiB with it, connection buffers and the
/// allocator's retained pages included).
const RSS_GROWTH_BOUND_KIB: u64 = 96 << 10;

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn many_concurrent_large_bodies_stay_within_the_budget_and_all_succeed() {
    // Each answer's body waits on a channel the test holds: the exchange stays in flight,
    // holding its request copy, until the test answers.
    let answers: Arc<Mutex<Vec<tokio::sync::mpsc::Sender<Bytes>>>> = Arc::default();
    let held = answers.clone();
    let up = Upstream::scripted(move |req| {
        (req.path() == "/v1/rag/query").then(|| {
            let (tx, body) = ChannelBody::new(None);
            held.lock().expect("answers").push(tx);
            let mut response = http::Response::new(body.boxed_unsync());
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            response
        })
    })
    .await;
    let otlp = OtlpReceiver::start().await;
    let ragscope = Proxy::builder()
        .upstream(&up)
        .otlp(&otlp)
        .env("RAGSCOPE_WORKERS", "2")
        .env("RAGSCOPE_PARSE_MAX_BYTES", "4MiB")
        .env("RAGSCOPE_PARSE_BUDGET", BUDGET.to_string())
        .spawn();
    let (proxy, admin) = ragscope.wait_serving().await;
    let admin = admin.expect("admin on");
    let baseline = ragscope.rss_kib();

    let body =
        Bytes::from(serde_json::json!({"query": "q".repeat(BODY_BYTES), "top_k": 3}).to_string());
    let client = Client::http1();
    let requests: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (client, body) = (client.clone(), body.clone());
            let url = format!("http://{proxy}/v1/rag/query");
            tokio::spawn(async move {
                client
                    .request(
                        request(Method::POST, &url)
                            .header("content-type", "application/json")
                            .body(Full::new(body))
                            .expect("request"),
                    )
                    .await
            })
        })
        .collect();

    // Every body has reached the upstream whole, and every exchange is still in flight.
    assert!(
        up.wait_requests(CLIENTS, WAIT).await,
        "{} of {CLIENTS} bodies arrived",
        up.request_count()
    );
    assert!(
        up.requests()
            .iter()
            .all(|r| r.body_bytes == body.len() as u64)
    );
    let in_flight = ragscope.rss_kib();
    let metrics = Client::http1().get(format!("http://{admin}/metrics")).await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    let used = metric(&text, "ragscope_genai_parse_budget_used").expect("used gauge");
    let skipped = metric(&text, "ragscope_genai_parse_budget_skipped").expect("skips counted");
    eprintln!(
        "RSS baseline {baseline} KiB, in flight {in_flight} KiB (+{} KiB); budget used {used}, skipped {skipped}",
        in_flight.saturating_sub(baseline)
    );
    assert!(used <= BUDGET as f64, "{used} > {BUDGET}");
    // At most two copies fit: every other request's copy was skipped.
    assert!(skipped >= (CLIENTS - 2) as f64, "skipped {skipped}");
    assert!(
        in_flight.saturating_sub(baseline) < RSS_GROWTH_BOUND_KIB,
        "RSS grew {} KiB (bound {RSS_GROWTH_BOUND_KIB} KiB)",
        in_flight.saturating_sub(baseline)
    );

    // Traffic was untouched: every request completes.
    let senders = std::mem::take(&mut *answers.lock().expect("answers"));
    assert_eq!(senders.len(), CLIENTS);
    for tx in senders {
        tx.send(Bytes::from_static(b"{\"ok\":true}"))
            .await
            .expect("the exchange is still in flight");
    }
    for r in requests {
        let reply = r.await.expect("client task");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(&reply.body[..], b"{\"ok\":true}");
    }
    // The skipped copies are flagged on their spans; the budget is all given back.
    let flagged = otlp
        .wait_for_spans(
            |s| {
                s.kind == SpanKind::Server
                    && s.bool_attr("ragscope.genai.parse_budget_exceeded") == Some(true)
            },
            CLIENTS - 2,
            WAIT,
        )
        .await;
    assert!(flagged.len() <= CLIENTS);
    let drained = wait_until_async(WAIT, || async {
        let m = Client::http1().get(format!("http://{admin}/metrics")).await;
        metric(
            &String::from_utf8_lossy(&m.body),
            "ragscope_genai_parse_budget_used",
        ) == Some(0.0)
    })
    .await;
    assert!(
        drained,
        "every reservation is released once the exchanges are recorded"
    );
}
