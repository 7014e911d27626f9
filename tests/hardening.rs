//! Hardening against hostile or clumsy clients (issue 11): protocols ragscope does not proxy
//! are refused with 501 and their own `error.type`; an early answer that leaves a request body
//! unread says `Connection: close`, so a client that writes head and body apart does not fail
//! its next request on a connection the server has already closed.

mod support;

use std::time::Duration;

use http::StatusCode;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread")]
async fn connect_and_upgrade_get_501_and_never_reach_the_upstream() {
    let up = Upstream::start().await;
    let proxy = Proxy::builder().upstream(&up).run().await;

    let raw = raw_exchange(
        proxy.addr(),
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        WAIT,
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 501"), "{raw}");
    assert!(raw.contains("\"type\":\"unsupported_protocol\""), "{raw}");
    assert!(
        raw.to_ascii_lowercase().contains("connection: close"),
        "{raw}"
    );

    let reply = Client::http1()
        .get_with(
            &proxy.url("/json"),
            &[("connection", "upgrade"), ("upgrade", "websocket")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::NOT_IMPLEMENTED);
    assert_eq!(reply.error_type(), "unsupported_protocol");
    assert_eq!(reply.header("content-type"), Some("application/json"));

    // A plain request still goes through: the refusal is about the protocol only.
    let ok = Client::http1().get(proxy.url("/json")).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(
        up.request_count(),
        1,
        "only the plain request was forwarded"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_early_answer_with_the_body_unread_says_connection_close() {
    let up = Upstream::start().await;
    let proxy = Proxy::builder()
        .upstream(&up)
        .env("RAGSCOPE_RATE_LIMIT", "1/m")
        .env("RAGSCOPE_RATE_BURST", "1")
        .run()
        .await;
    // The one request of the budget.
    assert_eq!(
        Client::http1().get(proxy.url("/json")).await.status,
        StatusCode::OK
    );

    // As Python's http.client does: the head, then the body in a write of its own.
    let body = br#"{"model":"m","messages":[]}"#;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr())
        .await
        .expect("connect");
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    stream.flush().await.expect("flush");
    // The write may fail once the server has answered and closed: what matters is the answer.
    let _ = stream.write_all(body).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut out)).await;
    let raw = String::from_utf8_lossy(&out).to_ascii_lowercase();
    assert!(raw.starts_with("http/1.1 429"), "{raw}");
    assert!(raw.contains("connection: close"), "{raw}");
    assert_eq!(
        up.request_count(),
        1,
        "the refused request was not forwarded"
    );
}
