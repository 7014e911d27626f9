//! Canary rollouts over real sockets, with two stand-in upstreams (tests/support/canary.rs): the
//! weighted split within binomial bounds, stickiness, the forced-version header, failover on a
//! refused canary, readiness and health per version, and per-version telemetry. Rollbacks are
//! in tests/canary_rollback.rs.

mod support;

use std::time::Duration;

use http::Method;
use serde_json::json;
use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn the_split_holds_its_weight_and_each_client_stays_on_its_version() {
    let (stable, canary) = upstreams(healthy()).await;
    let proxy = builder(&stable, &canary, "25").run().await;
    let n = 4000usize;
    let first = spread(proxy.addr(), 0..n).await;
    let on_canary = first.values().filter(|v| *v == "canary").count() as f64;
    assert_eq!(first.values().filter(|v| v.is_empty()).count(), 0);
    // Binomial(4000, 0.25): mean 1000, sd 27.4; 5 sd either side cannot flake.
    let sd = (n as f64 * 0.25 * 0.75).sqrt();
    assert!(
        (on_canary - 1000.0).abs() < 5.0 * sd,
        "{on_canary} of {n} on the canary"
    );

    // Sticky: the same clients again land where they did, while the weight is unchanged.
    let again = spread(proxy.addr(), 0..500).await;
    for (id, by) in &again {
        assert_eq!(Some(by), first.get(id), "client {id} flipped versions");
    }

    // A higher weight only moves clients to the canary, never back.
    let reply = post_canary(proxy.admin_addr().expect("admin"), json!({"weight": 60})).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.json()["weight"], 60.0);
    let after = spread(proxy.addr(), 0..500).await;
    for (id, by) in &after {
        if first[id] == "canary" {
            assert_eq!(
                by, "canary",
                "client {id} left the canary when the weight rose"
            );
        }
    }
    let moved = after.values().filter(|v| *v == "canary").count();
    assert!(moved > 250, "about 300 of 500 at 60%: {moved}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_version_header_forces_a_version_for_testing() {
    let (stable, canary) = upstreams(healthy()).await;
    let proxy = builder(&stable, &canary, "0")
        .env("RAGSCOPE_CANARY_HEADER", "x-ragscope-version")
        .env("RAGSCOPE_CANARY_VERSION", "v2")
        .run()
        .await;
    let client = Client::http1();
    let get = |version: &'static str| {
        let client = &client;
        let url = proxy.url("/json");
        async move {
            let reply = client
                .get_with(url, &[("x-ragscope-version", version)])
                .await;
            reply.header(SERVED_BY).unwrap_or_default().to_owned()
        }
    };
    assert_eq!(get("v2").await, "canary");
    assert_eq!(get("stable").await, "stable");
    // A value that names no version does not force anything: the weight (0) decides.
    assert_eq!(get("v3").await, "stable");
    // Without the header, weight 0 sends everyone to stable.
    assert!(
        spread(proxy.addr(), 0..50)
            .await
            .values()
            .all(|v| v == "stable")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_canary_fails_over_to_stable_with_the_body_intact_and_on_the_span() {
    let stable = versioned("stable", healthy()).await;
    let otlp = OtlpReceiver::start().await;
    let proxy = builder(&stable, &dead_addr(), "100")
        .otlp(&otlp)
        .run()
        .await;
    let body = vec![b'x'; 10_000];
    let reply = Client::http1()
        .send_body(Method::POST, &proxy.url("/upload"), body)
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["bytes"], 10_000, "stable got the whole body");
    let span = otlp.wait_span("POST", Duration::from_secs(10)).await;
    assert_eq!(span.bool_attr("ragscope.canary.failover"), Some(true));
    assert_eq!(span.str_attr("ragscope.upstream.version"), Some("stable"));
    assert!(span.status_message.is_empty(), "a failover is not an error");
    // The canary's refusal still counts against it.
    let admin = proxy.admin_addr().expect("admin");
    assert!(
        wait_until_async(Duration::from_secs(10), || async {
            canary_state(admin).await["window"]["canary"]["errors"].as_u64() >= Some(1)
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_follows_stable_and_a_down_canary_gets_no_traffic() {
    let stable = versioned("stable", healthy()).await;
    let proxy = builder(&stable, &dead_addr(), "100")
        .env("RAGSCOPE_HEALTH_PATH", "/json")
        .env("RAGSCOPE_HEALTH_INTERVAL", "100ms")
        .run()
        .await;
    let admin = proxy.admin_addr().expect("admin");
    assert!(
        wait_until_async(Duration::from_secs(10), || async {
            canary_state(admin).await["canary_down"] == true
        })
        .await,
        "the canary's own health checks find it down"
    );
    let ready = Client::http1().get(format!("http://{admin}/readyz")).await;
    assert_eq!(ready.status, 200, "readiness follows stable");
    let text = metrics(admin).await;
    assert_eq!(
        sample(&text, "ragscope_upstream_up", "\"canary\""),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "ragscope_upstream_up", "\"stable\""),
        Some(1.0)
    );
    let served = spread(proxy.addr(), 0..20).await;
    assert!(served.values().all(|v| v == "stable"), "{served:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_span_and_metric_carries_its_version() {
    let (stable, canary) = upstreams(healthy()).await;
    let otlp = OtlpReceiver::start().await;
    let proxy = builder(&stable, &canary, "50").otlp(&otlp).run().await;
    spread(proxy.addr(), 0..40).await;
    // A server and a client span per request.
    let spans = otlp
        .wait_for_spans(|_| true, 80, Duration::from_secs(10))
        .await;
    let mut versions = std::collections::HashSet::new();
    for span in &spans {
        let v = span.str_attr("ragscope.upstream.version");
        assert!(matches!(v, Some("stable" | "canary")), "{span:?}");
        versions.insert(v.map(str::to_owned));
    }
    assert_eq!(versions.len(), 2);
    for name in [
        "http.server.request.duration",
        "http.client.request.duration",
    ] {
        let found = wait_for(Duration::from_secs(10), || {
            let metric = otlp.latest_metric(name);
            std::future::ready(metric.filter(|m| {
                ["stable", "canary"].iter().all(|v| {
                    m.histogram_points().iter().any(|p| {
                        p.attr("ragscope.upstream.version").and_then(|a| a.as_str()) == Some(v)
                    })
                })
            }))
        })
        .await;
        let metric = found.unwrap_or_else(|| panic!("{name} per version"));
        assert!(
            metric
                .histogram_points()
                .iter()
                .all(|p| p.attr("ragscope.upstream.version").is_some()),
            "{name}"
        );
    }
}
