//! The HTTP metrics: request duration with the advised buckets and no high-cardinality
//! attributes, requests in flight, body sizes, the client-side duration.

use super::*;

/// The advised buckets for `http.*.request.duration`, seconds.
const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Attributes that would make a metric's cardinality unbounded (or leak who called).
const NEVER_ON_METRICS: [&str; 10] = [
    "url.path",
    "url.query",
    "url.full",
    "client.address",
    "server.address",
    "server.port",
    "network.peer.address",
    "network.peer.port",
    "user_agent.original",
    "http.request.method_original",
];

// ---------------------------------------------------------------------------
// 4. Metrics
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn server_request_duration_follows_semconv_without_high_cardinality() {
    let up = Upstream::start().await;
    let otlp = OtlpReceiver::start().await;
    let proxy = Proxy::builder().upstream(&up).otlp(&otlp).run().await;

    let h1 = Client::http1();
    for i in 0..3 {
        let reply = h1.get(proxy.url(&format!("/slow?delay_ms=60&n={i}"))).await;
        assert_eq!(reply.status, 200);
    }
    assert_eq!(Client::http2().get(proxy.url("/json")).await.status, 200);

    let get_200 = |version: &str| {
        vec![
            ("http.request.method", str_value("GET")),
            ("url.scheme", str_value("http")),
            ("http.response.status_code", Value::Int(200)),
            ("network.protocol.version", str_value(version)),
        ]
    };
    let (metric, h1_point) =
        wait_histogram(&otlp, "http.server.request.duration", &get_200("1.1"), 3).await;
    let (metric2, h2_point) =
        wait_histogram(&otlp, "http.server.request.duration", &get_200("2"), 1).await;
    assert_eq!(
        h1_point.count, 3,
        "one measurement per request, whatever the path or query"
    );
    assert_eq!(h2_point.count, 1);

    assert_eq!(metric.unit, "s");
    assert!(matches!(metric.data, MetricData::Histogram { .. }));
    assert_eq!(
        h1_point.explicit_bounds,
        DURATION_BUCKETS.to_vec(),
        "the advised buckets"
    );
    assert_eq!(h1_point.bucket_counts.len(), DURATION_BUCKETS.len() + 1);
    let sum = h1_point.sum.expect("sum");
    assert!(
        (0.18..3.0).contains(&sum),
        "three 60 ms requests, in seconds: {sum}"
    );
    assert_eq!(
        h1_point.bucket_counts[..4].iter().sum::<u64>(),
        0,
        "no 60 ms request lands in a bucket at or below 0.05 s: {h1_point:?}"
    );

    for m in [&metric, &metric2] {
        for point in m.histogram_points() {
            let keys = keys(&point.attributes);
            for never in NEVER_ON_METRICS {
                assert!(!keys.contains(&never), "{never} on {}: {keys:?}", m.name);
            }
        }
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn active_requests_counts_requests_in_flight() {
    let up = Upstream::start().await;
    let otlp = OtlpReceiver::start().await;
    let proxy = Proxy::builder().upstream(&up).otlp(&otlp).run().await;
    let attributes = [
        ("http.request.method", str_value("GET")),
        ("url.scheme", str_value("http")),
    ];

    // A stream that stays open for about 1.6 s.
    let url = proxy.url("/sse?events=2&gap_ms=800");
    let in_flight = tokio::spawn(async move { Client::http1().get(url).await });
    let (metric, value) = wait_sum(&otlp, "http.server.active_requests", &attributes, |v| {
        v == 1.0
    })
    .await;
    assert_eq!(value, 1.0);
    assert_eq!(metric.unit, "{request}");
    assert!(
        matches!(
            metric.data,
            MetricData::Sum {
                monotonic: false,
                ..
            }
        ),
        "an UpDownCounter: {metric:?}"
    );
    for point in metric.number_points() {
        let keys = keys(&point.attributes);
        for never in NEVER_ON_METRICS {
            assert!(
                !keys.contains(&never),
                "{never} on active_requests: {keys:?}"
            );
        }
    }

    let reply = in_flight.await.expect("request task");
    assert_eq!(reply.status, 200);
    wait_sum(&otlp, "http.server.active_requests", &attributes, |v| {
        v == 0.0
    })
    .await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn body_size_metrics_sum_the_bytes_sent() {
    let up = Upstream::start().await;
    let otlp = OtlpReceiver::start().await;
    let proxy = Proxy::builder().upstream(&up).otlp(&otlp).run().await;
    let client = Client::http1();

    let upload = client
        .send_body(Method::POST, &proxy.url("/upload"), vec![b'x'; 1000])
        .await;
    assert_eq!(upload.json()["bytes"], 1000);
    let large = client.get(proxy.url("/large?bytes=5000&chunk=1000")).await;
    assert_eq!(large.body.len(), 5000);

    let post = [("http.request.method", str_value("POST"))];
    let get = [("http.request.method", str_value("GET"))];
    let (request_size, post_in) =
        wait_histogram(&otlp, "http.server.request.body.size", &post, 1).await;
    let (response_size, post_out) =
        wait_histogram(&otlp, "http.server.response.body.size", &post, 1).await;
    let (_, get_in) = wait_histogram(&otlp, "http.server.request.body.size", &get, 1).await;
    let (_, get_out) = wait_histogram(&otlp, "http.server.response.body.size", &get, 1).await;

    assert_eq!(request_size.unit, "By");
    assert_eq!(response_size.unit, "By");
    assert_eq!((post_in.count, post_in.sum), (1, Some(1000.0)));
    assert_eq!(
        (post_out.count, post_out.sum),
        (1, Some(upload.body.len() as f64))
    );
    assert_eq!((get_in.count, get_in.sum), (1, Some(0.0)));
    assert_eq!((get_out.count, get_out.sum), (1, Some(5000.0)));

    // The same sizes are on the spans.
    let (server, _) = server_span_of(&otlp, &upload).await;
    assert_eq!(server.int_attr("http.request.body.size"), Some(1000));
    assert_eq!(
        server.int_attr("http.response.body.size"),
        Some(upload.body.len() as i64)
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn client_request_duration_measures_the_upstream_call() {
    let up = Upstream::start().await;
    let otlp = OtlpReceiver::start().await;
    let proxy = Proxy::builder().upstream(&up).otlp(&otlp).run().await;

    let reply = Client::http1().get(proxy.url("/slow?delay_ms=100")).await;
    assert_eq!(reply.status, 200);
    let (metric, point) = wait_histogram(
        &otlp,
        "http.client.request.duration",
        &[
            ("http.request.method", str_value("GET")),
            ("http.response.status_code", Value::Int(200)),
        ],
        1,
    )
    .await;
    assert_eq!(metric.unit, "s");
    assert_eq!(point.count, 1);
    assert_eq!(point.explicit_bounds, DURATION_BUCKETS.to_vec());
    let sum = point.sum.expect("sum");
    assert!(
        (0.1..3.0).contains(&sum),
        "a 100 ms upstream call, in seconds: {sum}"
    );
    let keys = keys(&point.attributes);
    for never in ["url.full", "url.path", "client.address"] {
        assert!(!keys.contains(&never), "{never}: {keys:?}");
    }

    // Semconv: server.address and server.port are Required on http.client.request.duration
    // (the upstream is one fixed address, so they cost no cardinality).
    assert_eq!(
        point.attr("server.address"),
        Some(&str_value("127.0.0.1")),
        "{keys:?}"
    );
    assert_eq!(
        point.attr("server.port"),
        Some(&Value::Int(i64::from(up.addr().port()))),
        "{keys:?}"
    );
    proxy.shutdown().await;
}
