//! Forwarding: any method, path and query reach the upstream; headers follow the intermediary
//! rules; bodies stream both ways; malformed requests get the right status.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Method;
use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn any_method_path_and_query_reach_the_upstream() {
    let up = Upstream::start().await;
    let proxy = Proxy::builder().upstream(&up).run().await;
    let client = Client::http1();

    for method in ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "PURGE"] {
        let m = Method::from_bytes(method.as_bytes()).expect("method");
        let reply = client
            .send_body(
                m,
                &proxy.url("/echo?q=rag&top_k=5"),
                Bytes::from_static(b"hello"),
            )
            .await;
        assert_eq!(reply.status, 200, "{method}");
        let echo = reply.json();
        assert_eq!(echo["method"], method);
        assert_eq!(echo["path"], "/echo");
        assert_eq!(echo["query"], "q=rag&top_k=5");
        assert_eq!(echo["body_bytes"], 5, "{method}");
    }
    let head = client
        .send_body(Method::HEAD, &proxy.url("/json"), Bytes::new())
        .await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_status_and_body_pass_through() {
    let up = Upstream::start().await;
    let proxy = Proxy::builder().upstream(&up).run().await;
    let reply = Client::http1().get(proxy.url("/status/418")).await;
    assert_eq!(reply.status, 418);
    let reply = Client::http1().get(proxy.url("/json?status=503")).await;
    assert_eq!(
        reply.status, 503,
        "an upstream 5xx is passed through, not replaced"
    );
    assert_eq!(reply.json()["ok"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_headers_are_set_and_host_is_the_upstreams() {
    let up = Upstream::start().await;
    let proxy = Proxy::builder().upstream(&up).run().await;
    let reply = Client::http1()
        .get_with(
            proxy.url("/echo"),
            &[
                ("host", "rag.example.com"),
                ("x-forwarded-for", "203.0.113.9"),
            ],
        )
        .await;
    let seen = up.last_request();
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("203.0.113.9, 127.0.0.1")
    );
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-forwarded-host"), Some("rag.example.com"));
    assert_eq!(seen.header("host"), Some(up.addr().to_string().as_str()));
    assert_eq!(reply.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn hop_by_hop_headers_are_stripped_before_ours_are_added() {
    let up = Upstream::start().await;
    let proxy = Proxy::builder().upstream(&up).run().await;
    let raw = raw_exchange(
        proxy.addr(),
        b"GET /echo HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, x-forwarded-for, x-private, close\r\n\
          X-Private: secret\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers, gzip\r\n\
          Upgrade: websocket\r\nX-Kept: yes\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    let seen = up.last_request();
    for gone in [
        "x-private",
        "keep-alive",
        "proxy-connection",
        "upgrade",
        "connection",
    ] {
        assert_eq!(seen.header(gone), None, "{gone} must not be forwarded");
    }
    assert_eq!(
        seen.header("te"),
        Some("trailers"),
        "TE: trailers survives (gRPC needs it)"
    );
    assert_eq!(seen.header("x-kept"), Some("yes"));
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("127.0.0.1"),
        "a client cannot strip our X-Forwarded-For by naming it in Connection"
    );

    // Response direction.
    let reply = Client::http1().get(proxy.url("/hop")).await;
    assert_eq!(reply.status, 200);
    for gone in ["x-private", "keep-alive", "proxy-connection"] {
        assert_eq!(reply.header(gone), None, "{gone} must not reach the client");
    }
    assert_eq!(reply.header("x-kept"), Some("yes"));
}

#[tokio::test(flavor = "multi_thread")]
async fn http11_without_host_or_with_two_hosts_is_400() {
    let up = Upstream::start().await;
    let proxy = Proxy::builder().upstream(&up).run().await;
    for req in [
        &b"GET /json HTTP/1.1\r\n\r\n"[..],
        &b"GET /json HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"[..],
    ] {
        let raw = raw_exchange(proxy.addr(), req, Duration::from_secs(5)).await;
        assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
        assert!(raw.contains(r#""type":"bad_request""#), "{raw}");
    }
    assert_eq!(up.request_count(), 0, "the upstream is not called");

    // HTTP/1.0 has no Host requirement.
    let raw = raw_exchange(
        proxy.addr(),
        b"GET /json HTTP/1.0\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(raw.starts_with("HTTP/1.0 200"), "{raw}");
}

#[tokio::test(flavor = "multi_thread")]
async fn content_length_and_transfer_encoding_are_never_forwarded_together() {
    let up = Upstream::start().await;
    let proxy = Proxy::builder().upstream(&up).run().await;
    let raw = raw_exchange(
        proxy.addr(),
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    if raw.starts_with("HTTP/1.1 200") {
        let seen = up.last_request();
        assert_eq!(
            seen.body_bytes, 5,
            "Transfer-Encoding alone frames the body"
        );
        assert!(
            seen.header("content-length").is_none() || seen.header("transfer-encoding").is_none(),
            "never both"
        );
    } else {
        assert!(
            raw.starts_with("HTTP/1.1 400"),
            "rejected is the other allowed answer: {raw}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn large_bodies_stream_both_ways() {
    let up = Upstream::start().await;
    let proxy = Proxy::builder().upstream(&up).run().await;
    let client = Client::http1();
    let eight_mib = 8 * 1024 * 1024;

    let reply = client
        .get(proxy.url(&format!("/large?bytes={eight_mib}")))
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body.len(), eight_mib);
    assert!(
        is_large_pattern(&reply.body),
        "bytes arrive intact and in order"
    );

    let upload = Bytes::from(vec![7u8; eight_mib]);
    let reply = client
        .send_body(Method::POST, &proxy.url("/upload"), upload)
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["bytes"], eight_mib);
}

#[tokio::test(flavor = "multi_thread")]
async fn request_body_over_the_limit_is_413() {
    let up = Upstream::start().await;
    let proxy = Proxy::builder()
        .upstream(&up)
        .env("RAGSCOPE_MAX_REQUEST_BODY", "1KiB")
        .run()
        .await;

    // Declared too large: refused before the upstream is called.
    let reply = Client::http1()
        .send_body(
            Method::POST,
            &proxy.url("/upload"),
            Bytes::from(vec![0u8; 4096]),
        )
        .await;
    assert_eq!(reply.status, 413);
    assert_eq!(reply.error_type(), "request_body_too_large");
    assert_eq!(up.request_count(), 0);

    // Chunked, no length declared: cut off when the limit is crossed.
    let mut raw =
        b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..4 {
        raw.extend_from_slice(b"400\r\n");
        raw.extend_from_slice(&[b'x'; 1024]);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let reply = raw_exchange(proxy.addr(), &raw, Duration::from_secs(5)).await;
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");

    // At the limit is fine.
    let reply = Client::http1()
        .send_body(
            Method::POST,
            &proxy.url("/upload"),
            Bytes::from(vec![0u8; 1024]),
        )
        .await;
    assert_eq!(reply.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_prior_knowledge_is_served_on_the_same_port() {
    let up = Upstream::start().await;
    let proxy = Proxy::builder().upstream(&up).run().await;
    let reply = Client::http2().get(proxy.url("/echo?x=1")).await;
    assert_eq!(reply.status, 200);
    let echo = reply.json();
    assert_eq!(echo["path"], "/echo");
    assert_eq!(
        up.last_request().header("x-forwarded-host"),
        Some(proxy.addr().to_string().as_str()),
        "the :authority travels as X-Forwarded-Host"
    );
    let reply = Client::http1().get(proxy.url("/json")).await;
    assert_eq!(reply.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_or_too_many_headers_get_431() {
    let up = Upstream::start().await;
    let proxy = Proxy::builder()
        .upstream(&up)
        .env("RAGSCOPE_MAX_HEADER_BYTES", "16KiB")
        .env("RAGSCOPE_MAX_HEADERS", "20")
        .run()
        .await;
    let big = format!(
        "GET /json HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "a".repeat(32 * 1024)
    );
    let raw = raw_exchange(proxy.addr(), big.as_bytes(), Duration::from_secs(5)).await;
    assert!(raw.starts_with("HTTP/1.1 431"), "{raw}");

    let mut many = String::from("GET /json HTTP/1.1\r\nHost: a\r\n");
    for i in 0..40 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let raw = raw_exchange(proxy.addr(), many.as_bytes(), Duration::from_secs(5)).await;
    assert!(raw.starts_with("HTTP/1.1 431"), "{raw}");
    assert_eq!(up.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_request_line_is_400() {
    let up = Upstream::start().await;
    let proxy = Proxy::builder().upstream(&up).run().await;
    let raw = raw_exchange(
        proxy.addr(),
        b"GARBAGE\x01\x02 / HTTP/9\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_header_senders_are_cut_off() {
    let up = Upstream::start().await;
    let proxy = Proxy::builder()
        .upstream(&up)
        .env("RAGSCOPE_HEADER_READ_TIMEOUT", "300ms")
        .run()
        .await;
    // Headers that never finish, and not one byte at all (hyper-util's protocol sniff has no
    // timer of its own: the proxy's wait for the first byte is what closes that one): both
    // connections are closed after the header read timeout.
    for sent in [&b"GET /json HTTP/1.1\r\nHost: a\r\n"[..], b""] {
        let started = std::time::Instant::now();
        let raw = raw_exchange(proxy.addr(), sent, Duration::from_secs(5)).await;
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "closed by the proxy, not our timeout ({sent:?})"
        );
        assert!(!raw.contains("200 OK"), "{raw}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_past_the_cap_wait_for_a_free_place() {
    let up = Upstream::start().await;
    let proxy = Proxy::builder()
        .upstream(&up)
        .env("RAGSCOPE_MAX_CONNECTIONS", "1")
        .run()
        .await;
    // The first connection holds the only place with a slow request.
    let first = tokio::spawn({
        let url = proxy.url("/slow?delay_ms=600");
        async move { Client::http1().get(url).await.status }
    });
    // The slow request has reached the upstream, so its connection holds the place.
    assert!(
        up.wait_requests(1, Duration::from_secs(5)).await,
        "the first request never reached the upstream"
    );
    let started = std::time::Instant::now();
    let raw = raw_exchange(
        proxy.addr(),
        b"GET /json HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert_eq!(first.await.expect("first request"), 200);
    // The upstream holds the first request for 600 ms after it arrived, and `started` is
    // later than that arrival: only a second connection that waited can take this long.
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "the second connection was served only after the first released its place"
    );
}

/// A burst of more concurrent requests than a worker keeps idle (128 upstream connections):
/// the connections beyond the cap close as their requests end instead of idling for 90 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_upstream_connections_are_capped_per_worker() {
    const BURST: usize = 160;
    const CAP: usize = 128;
    // Each answer takes a second, so the burst's requests overlap and each needs its own
    // upstream connection.
    let up = Upstream::scripted(|_| {
        Some(canned_sse(
            vec![(Duration::from_secs(1), Bytes::from_static(b"data: x\n\n"))],
            &[],
        ))
    })
    .await;
    let proxy = Proxy::builder()
        .upstream(&up)
        .env("RAGSCOPE_WORKERS", "1")
        .run()
        .await;
    let client = Client::http1();
    let url = proxy.url("/v1/burst");
    let replies = futures_util::future::join_all((0..BURST).map(|_| client.get(&url))).await;
    assert!(replies.iter().all(|r| r.status == 200));
    let opened = up.connections_accepted();
    assert!(
        opened > CAP,
        "the burst opened only {opened} upstream connections"
    );
    assert!(
        up.wait_connections_closed(opened - CAP, Duration::from_secs(10))
            .await,
        "{opened} opened, {} closed: more than {CAP} kept idle",
        up.connections_closed()
    );
}
