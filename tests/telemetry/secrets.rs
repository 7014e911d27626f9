//! Secrets are never recorded: not in spans, events, resources or metrics.

use super::*;

// ---------------------------------------------------------------------------
// 7. Secrets are never recorded
// ---------------------------------------------------------------------------

/// Every place a secret could hide in what the collector received, as `(where, text)`.
fn everything_recorded(otlp: &OtlpReceiver) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut attributes = |place: String, attributes: &[(String, Value)]| {
        for (k, v) in attributes {
            out.push((format!("{place} attribute {k}"), format!("{k}={v:?}")));
        }
    };
    for span in otlp.spans() {
        let place = format!("span {} ({:?})", span.name, span.kind);
        attributes(format!("{place} resource"), &span.resource);
        attributes(place.clone(), &span.attributes);
        for event in &span.events {
            attributes(format!("{place} event {}", event.name), &event.attributes);
        }
    }
    for metric in otlp.metrics() {
        attributes(format!("metric {} resource", metric.name), &metric.resource);
        for point in metric.number_points() {
            attributes(format!("metric {}", metric.name), &point.attributes);
        }
        for point in metric.histogram_points() {
            attributes(format!("metric {}", metric.name), &point.attributes);
        }
    }
    for span in otlp.spans() {
        out.push((
            format!("span {} name/status", span.name),
            format!("{} {}", span.name, span.status_message),
        ));
        for event in &span.events {
            out.push((format!("span {} event name", span.name), event.name.clone()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_never_reach_spans_or_metrics() {
    let up = Upstream::start().await;
    let otlp = OtlpReceiver::start().await;
    let proxy = Proxy::builder().upstream(&up).otlp(&otlp).run().await;
    let secret_headers = [
        ("authorization", "Bearer sk-secret-1"),
        ("proxy-authorization", "Basic sk-secret-1b"),
        ("cookie", "session=sk-secret-2"),
        ("x-api-key", "sk-secret-3"),
        ("api-key", "sk-secret-3b"),
        ("user-agent", "telemetry-test/1.0"),
    ];
    // The upstream also answers with a Set-Cookie carrying a secret.
    let path = "/echo?api_key=sk-secret-4&set_header=set-cookie:token=sk-secret-5";

    let h1 = Client::http1()
        .get_with(&proxy.url(path), &secret_headers)
        .await;
    let h2 = Client::http2()
        .get_with(&proxy.url(path), &secret_headers)
        .await;
    let failed = Client::http1()
        .get_with(
            &proxy.url("/json?status=500&token=sk-secret-6"),
            &secret_headers,
        )
        .await;
    assert_eq!(
        (
            h1.status.as_u16(),
            h2.status.as_u16(),
            failed.status.as_u16()
        ),
        (200, 200, 500)
    );
    assert!(
        h1.header("set-cookie")
            .is_some_and(|c| c.contains("sk-secret-5")),
        "the test is real"
    );
    assert_eq!(
        up.last_request().header("authorization"),
        Some("Bearer sk-secret-1"),
        "forwarded, not recorded"
    );

    for reply in [&h1, &h2, &failed] {
        let (server, client) = server_span_of(&otlp, reply).await;
        assert!(
            server
                .str_attr("url.query")
                .is_some_and(|q| q.contains("=REDACTED")),
            "{server:#?}"
        );
        assert!(
            client
                .str_attr("url.full")
                .is_some_and(|u| u.contains("=REDACTED")),
            "{client:#?}"
        );
    }
    // Three exchanges measured (two 200s over HTTP/1.1 and HTTP/2, one 500).
    otlp.wait_for_metric_where(
        "http.server.request.duration",
        |m| m.histogram_points().iter().map(|p| p.count).sum::<u64>() >= 3,
        WAIT,
    )
    .await;

    let leaks: Vec<(String, String)> = everything_recorded(&otlp)
        .into_iter()
        .filter(|(_, text)| text.contains("sk-secret"))
        .collect();
    assert!(leaks.is_empty(), "secrets recorded: {leaks:#?}");
    // And anywhere else in what was received, whatever its shape.
    assert!(!format!("{:?}{:?}", otlp.spans(), otlp.metrics()).contains("sk-secret"));
    proxy.shutdown().await;
}
