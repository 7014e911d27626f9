//! Upstream failures become the right answer, never a crash: dead (502), black-holed (504),
//! slow past the response timeout (504), connect timeout (504), and the proxy keeps serving.

mod support;

use std::time::{Duration, Instant};

use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn dead_upstream_is_502_with_a_json_error() {
    // No exporter and no recent-requests ring: nothing records spans, so no trace id either.
    let proxy = Proxy::builder()
        .upstream(&dead_addr())
        .env("RAGSCOPE_RECENT_TRACES", "0")
        .run()
        .await;
    let reply = Client::http1().get(proxy.url("/v1/chat/completions")).await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.error_type(), "upstream_unreachable");
    assert!(
        reply.json()["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    assert!(
        reply.header("traceresponse").is_none(),
        "traces are off in this test"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn black_holed_upstream_is_504_after_the_response_timeout() {
    let hole = BlackHole::start().await;
    let proxy = Proxy::builder()
        .upstream(&hole)
        .env("RAGSCOPE_RESPONSE_TIMEOUT", "300ms")
        .run()
        .await;
    let started = Instant::now();
    let reply = Client::http1().get(proxy.url("/json")).await;
    assert_eq!(reply.status, 504);
    assert_eq!(reply.error_type(), "upstream_timeout");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_upstream_within_the_timeout_is_fine_past_it_is_504() {
    let up = Upstream::start().await;
    let proxy = Proxy::builder()
        .upstream(&up)
        .env("RAGSCOPE_RESPONSE_TIMEOUT", "400ms")
        .run()
        .await;
    let reply = Client::http1().get(proxy.url("/slow?delay_ms=100")).await;
    assert_eq!(reply.status, 200);
    let reply = Client::http1().get(proxy.url("/slow?delay_ms=1500")).await;
    assert_eq!(reply.status, 504);
}

#[tokio::test(flavor = "multi_thread")]
async fn connect_timeout_is_504() {
    // A listener whose accept queue is full drops further SYNs, so connecting hangs: a
    // loopback stand-in for an unreachable host.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let full = socket.listen(0).expect("listen");
    let addr = full.local_addr().expect("addr");
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            fillers.push(s);
        }
    }
    let proxy = Proxy::builder()
        .upstream(&addr)
        .env("RAGSCOPE_CONNECT_TIMEOUT", "300ms")
        .run()
        .await;
    let started = Instant::now();
    let reply = Client::http1().get(proxy.url("/json")).await;
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(reply.status, 504, "{:?}", reply.body);
    assert_eq!(reply.error_type(), "upstream_connect_timeout");
    drop(full);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_proxy_keeps_serving_after_upstream_failures() {
    let up = Upstream::start().await;
    let proxy = Proxy::builder()
        .upstream(&up)
        .env("RAGSCOPE_IDLE_TIMEOUT", "200ms")
        .run()
        .await;
    let client = Client::http1();
    // A stream cut by the idle timeout...
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        let response = client
            .get_streaming(proxy.url("/stall?after_bytes=1"))
            .await;
        let _ = http_body_util::BodyExt::collect(response.into_body()).await;
    })
    .await;
    // ...leaves the proxy serving the next ones on fresh connections.
    for _ in 0..5 {
        assert_eq!(Client::http1().get(proxy.url("/json")).await.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_follows_the_upstream() {
    let up = Upstream::start().await;
    let proxy = Proxy::builder().upstream(&up).run().await;
    let client = Client::http1();
    assert_eq!(client.get(proxy.admin_url("/healthz")).await.status, 200);
    assert_eq!(client.get(proxy.admin_url("/readyz")).await.status, 200);

    let dead = Proxy::builder().upstream(&dead_addr()).run().await;
    assert_eq!(
        client.get(dead.admin_url("/healthz")).await.status,
        200,
        "alive even if the upstream is not"
    );
    let reply = client.get(dead.admin_url("/readyz")).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.json()["status"], "upstream_unreachable");

    // Draining, with a stream still in flight: not ready any more, the stream goes on.
    let stream = Client::http1()
        .get_streaming(proxy.url("/sse?events=6&gap_ms=150"))
        .await;
    proxy.begin_shutdown();
    assert!(
        wait_until_async(Duration::from_secs(2), || async {
            Client::http1().get(proxy.admin_url("/readyz")).await.status == 503
        })
        .await,
        "readyz turns 503 while draining"
    );
    let body = http_body_util::BodyExt::collect(stream.into_body())
        .await
        .expect("the in-flight stream completes")
        .to_bytes();
    assert!(String::from_utf8_lossy(&body).ends_with("data: [DONE]\n\n"));
}
