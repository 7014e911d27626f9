//! The fake upstream: its routes over HTTP/1.1 and h2, scripts, captured bodies, aborted and
//! stalled streams, connection counts; `dead_addr` and `BlackHole`.

use super::*;

// ---------------------------------------------------------------------------
// Upstream
// ---------------------------------------------------------------------------

#[tokio::test]
async fn json_route_over_http1_and_h2() {
    let upstream = Upstream::start().await;
    for (client, version) in [
        (h1_client(), Version::HTTP_11),
        (h2_client(), Version::HTTP_2),
    ] {
        let response = get(&client, format!("{}/json", upstream.url())).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.version(), version);
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(body_json(response).await, serde_json::json!({"ok": true}));

        let response = get(&client, format!("{}/json?status=503", upstream.url())).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let seen = upstream.last_request();
        assert_eq!(seen.version, version);
        assert_eq!(seen.uri, "/json?status=503");
        assert_eq!(seen.path(), "/json");
    }
    assert_eq!(upstream.requests().len(), 4);
    assert_eq!(upstream.connections_accepted(), 2);
}

#[tokio::test]
async fn echo_describes_the_request_and_sets_headers() {
    let upstream = Upstream::start().await;
    let request = Request::builder()
        .method(Method::PUT)
        .uri(format!(
            "{}/echo?a=1&set_header=x-one:1&set_header=x-two:%20two",
            upstream.url()
        ))
        .header("x-custom", "first")
        .header("x-custom", "second")
        .body(Full::new(Bytes::from(vec![7u8; 1234])))
        .expect("valid request");
    let response = h1_client().request(request).await.expect("echo answers");
    assert_eq!(response.headers()["x-one"], "1");
    assert_eq!(response.headers()["x-two"], "two");
    let echo = body_json(response).await;
    assert_eq!(echo["method"], "PUT");
    assert_eq!(echo["path"], "/echo");
    assert_eq!(
        echo["query"],
        "a=1&set_header=x-one:1&set_header=x-two:%20two"
    );
    assert_eq!(echo["version"], "HTTP/1.1");
    assert_eq!(
        echo["headers"]["x-custom"],
        serde_json::json!(["first", "second"])
    );
    assert_eq!(echo["body_bytes"], 1234);

    let seen = upstream.last_request();
    assert_eq!(seen.method, Method::PUT);
    assert_eq!(seen.body_bytes, 1234);
    assert!(seen.body_complete);
    assert_eq!(seen.header("x-custom"), Some("first"));

    let response = get(&h2_client(), format!("{}/echo", upstream.url())).await;
    let echo = body_json(response).await;
    assert_eq!(echo["version"], "HTTP/2.0");
    assert_eq!(echo["query"], serde_json::Value::Null);
}

#[tokio::test]
async fn sse_events_arrive_spaced_and_end_with_done() {
    let upstream = Upstream::start().await;
    for client in [h1_client(), h2_client()] {
        let response = get(
            &client,
            format!("{}/sse?events=4&gap_ms=100", upstream.url()),
        )
        .await;
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        assert_eq!(response.headers()["cache-control"], "no-cache");
        let mut body = response.into_body();
        let mut events = Vec::new();
        let mut arrivals = Vec::new();
        while let Some(data) = next_data(&mut body).await {
            arrivals.push(Instant::now());
            events.push(String::from_utf8(data.to_vec()).expect("UTF-8 event"));
        }
        assert_eq!(
            events,
            [
                "data: {\"i\":0}\n\n",
                "data: {\"i\":1}\n\n",
                "data: {\"i\":2}\n\n",
                "data: {\"i\":3}\n\n",
                "data: [DONE]\n\n"
            ]
        );
        for pair in arrivals[..4].windows(2) {
            let gap = pair[1] - pair[0];
            assert!(
                gap >= Duration::from_millis(40),
                "events too close: {gap:?}"
            );
        }
    }
    assert_eq!(upstream.aborted_streams(), 0);
}

#[tokio::test]
async fn large_streams_the_pattern_with_content_length() {
    let upstream = Upstream::start().await;
    for client in [h1_client(), h2_client()] {
        let response = get(
            &client,
            format!("{}/large?bytes=300001&chunk=10000", upstream.url()),
        )
        .await;
        assert_eq!(response.headers()["content-length"], "300001");
        assert_eq!(
            response.headers()["content-type"],
            "application/octet-stream"
        );
        let body = body_bytes(response).await;
        assert_eq!(body.len(), 300_001);
        assert!(is_large_pattern(&body));
    }
    assert_eq!(upstream.aborted_streams(), 0);
}

#[tokio::test]
async fn upload_counts_the_streamed_body() {
    let upstream = Upstream::start().await;
    let request = Request::post(format!("{}/upload", upstream.url()))
        .body(Full::new(Bytes::from(vec![1u8; 3 * 1024 * 1024 + 5])))
        .expect("valid request");
    let response = h2_client().request(request).await.expect("upload answers");
    assert_eq!(
        body_json(response).await,
        serde_json::json!({"bytes": 3 * 1024 * 1024 + 5})
    );
    assert_eq!(upstream.last_request().body_bytes, 3 * 1024 * 1024 + 5);
}

#[tokio::test]
async fn slow_status_hop_and_unknown_routes() {
    let upstream = Upstream::start().await;
    let client = h1_client();

    let started = Instant::now();
    let response = get(&client, format!("{}/slow?delay_ms=200", upstream.url())).await;
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(body_json(response).await, serde_json::json!({"ok": true}));

    let response = get(&client, format!("{}/status/418", upstream.url())).await;
    assert_eq!(response.status(), StatusCode::IM_A_TEAPOT);
    assert_eq!(
        body_json(response).await,
        serde_json::json!({"status": 418})
    );

    let response = get(&client, format!("{}/nope", upstream.url())).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(body_json(response).await["path"], "/nope");

    let response = get(&client, format!("{}/hop", upstream.url())).await;
    for (name, value) in HOP_ROUTE_HEADERS {
        assert_eq!(response.headers()[*name], *value, "header {name}");
    }
    assert_eq!(body_bytes(response).await, "ok");
}

#[tokio::test]
async fn a_script_answers_first_from_the_captured_body_and_declines_to_the_routes() {
    let upstream = Upstream::scripted(|seen| match seen.path() {
        "/scripted" => Some(canned_json(
            &serde_json::json!({"echo": seen.json()["say"], "n": seen.query("n")}),
            &[("x-script", "yes")],
        )),
        "/split" => {
            let frames = vec![
                (Duration::ZERO, Bytes::from_static(b"data: one\n\n")),
                (
                    Duration::from_millis(50),
                    Bytes::from_static(b"data: two\n\n"),
                ),
            ];
            Some(canned_sse(split_frames(&frames, 4), &[]))
        }
        _ => None,
    })
    .await;
    let client = support::Client::http1();

    let reply = client
        .post_json(
            format!("{}/scripted?n=a%20b", upstream.url()),
            &serde_json::json!({"say": "hi"}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("x-script"), Some("yes"));
    assert_eq!(reply.json(), serde_json::json!({"echo": "hi", "n": "a b"}));
    assert_eq!(upstream.last_request().body, r#"{"say":"hi"}"#);

    let mut body = client
        .get_streaming(format!("{}/split", upstream.url()))
        .await
        .into_body();
    let mut frames = Vec::new();
    while let Some(frame) = next_data(&mut body).await {
        frames.push(frame);
    }
    assert_eq!(frames.concat(), b"data: one\n\ndata: two\n\n");
    assert!(frames.iter().all(|f| f.len() <= 4), "{frames:?}");
    assert_eq!(frames.len(), 6, "22 bytes in frames of 4: {frames:?}");

    // Declined: the built-in routes answer.
    let reply = client.get(format!("{}/json", upstream.url())).await;
    assert_eq!(reply.json(), serde_json::json!({"ok": true}));
}

#[tokio::test]
async fn request_bodies_are_captured_up_to_the_bound() {
    let upstream = Upstream::start().await;
    let big = vec![b'x'; BODY_CAPTURE + 1000];
    let reply = support::Client::http1()
        .send_body(
            Method::POST,
            &format!("{}/upload", upstream.url()),
            big.clone(),
        )
        .await;
    assert_eq!(reply.json()["bytes"], big.len());
    let seen = upstream.last_request();
    assert_eq!(seen.body_bytes, big.len() as u64);
    assert_eq!(seen.body.len(), BODY_CAPTURE);
}

#[tokio::test]
async fn dropping_an_sse_body_counts_as_aborted() {
    let upstream = Upstream::start().await;
    for (n, client) in [h1_client(), h2_client()].into_iter().enumerate() {
        let response = get(
            &client,
            format!("{}/sse?events=100&gap_ms=20", upstream.url()),
        )
        .await;
        let mut body = response.into_body();
        assert_eq!(
            next_data(&mut body).await.as_deref(),
            Some(&b"data: {\"i\":0}\n\n"[..])
        );
        drop(body);
        assert!(
            upstream.wait_aborted(n + 1, TIMEOUT).await,
            "abort #{} not seen",
            n + 1
        );
    }
    // The HTTP/1 connection cannot be reused after an unfinished body.
    assert!(upstream.wait_connections_closed(1, TIMEOUT).await);
}

#[tokio::test]
async fn stall_holds_the_stream_until_dropped() {
    let upstream = Upstream::start().await;
    let response = get(
        &h2_client(),
        format!("{}/stall?after_bytes=10", upstream.url()),
    )
    .await;
    let mut body = response.into_body();
    assert_eq!(next_data(&mut body).await.map(|d| d.len()), Some(10));
    let next = tokio::time::timeout(Duration::from_millis(300), next_data(&mut body)).await;
    assert!(next.is_err(), "stall sent more: {next:?}");
    assert_eq!(upstream.aborted_streams(), 0);
    drop(body);
    assert!(upstream.wait_aborted(1, TIMEOUT).await);
}

#[tokio::test]
async fn connections_are_counted_and_closed_on_drop() {
    let upstream = Upstream::start().await;
    let url = upstream.url();
    {
        let client = h1_client();
        body_bytes(get(&client, format!("{url}/json")).await).await;
        assert_eq!(upstream.connections_accepted(), 1);
        assert_eq!(upstream.connections_closed(), 0);
    } // The client and its idle pooled connection are dropped here.
    assert!(upstream.wait_connections_closed(1, TIMEOUT).await);

    let addr = upstream.addr();
    drop(upstream);
    tokio::task::yield_now().await;
    let refused = tokio::net::TcpStream::connect(addr).await;
    assert!(refused.is_err(), "still listening after drop");
}

#[tokio::test]
async fn dead_addr_refuses_connections() {
    let error = tokio::net::TcpStream::connect(dead_addr())
        .await
        .expect_err("nothing listens on the dead address");
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[tokio::test]
async fn black_hole_accepts_but_never_answers() {
    let hole = BlackHole::start().await;
    let request = Request::get(format!("{}/json", hole.url()))
        .body(Full::default())
        .expect("valid request");
    let attempt =
        tokio::time::timeout(Duration::from_millis(300), h1_client().request(request)).await;
    assert!(attempt.is_err(), "the black hole answered: {attempt:?}");
    assert_eq!(hole.connections_accepted(), 1);
}
