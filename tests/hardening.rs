//! Hardening against hostile or clumsy clients (issue 11): CONNECT tunnels, which ragscope does
//! not proxy, are refused with 501 and their own `error.type` (upgrades are passed through since
//! issue 12: tests/websocket.rs); an early answer that leaves a request body
//! unread says `Connection: close`, so a client that writes head and body apart does not fail
//! its next request on a connection the server has already closed; a large JSON answer reaches
//! the client whole and its GenAI facts are read from all of it (the wrap-up runs after the
//! last frame, off the I/O path: the ordering itself is unit-tested in `src/proxy/body.rs`);
//! the response timeout starts once the request body has been sent, and a client that stalls
//! mid-upload gets its own 408, never the upstream's 504.

mod support;

use std::time::Duration;

use http::{Method, StatusCode};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread")]
async fn connect_gets_501_and_never_reaches_the_upstream() {
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

#[tokio::test(flavor = "multi_thread")]
async fn a_large_json_answer_arrives_whole_and_is_read_to_its_last_byte() {
    // ~900 KB of content, under RAGSCOPE_PARSE_MAX_BYTES (1 MiB): the usage comes last.
    let content = "x".repeat(900 * 1024);
    let answer = serde_json::json!({
        "id": "chatcmpl-large",
        "model": "big-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 230_000}
    });
    let expected = answer.to_string();
    let up = Upstream::scripted(move |req| {
        (req.path() == "/v1/chat/completions").then(|| canned_json(&answer, &[]))
    })
    .await;
    let otlp = OtlpReceiver::start().await;
    let proxy = Proxy::builder()
        .upstream(&up)
        .otlp(&otlp)
        .env("RAGSCOPE_WORKERS", "1")
        .run()
        .await;

    let reply = Client::http1()
        .post_json(
            proxy.url("/v1/chat/completions"),
            &serde_json::json!({"model": "big-model", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.body.len(),
        expected.len(),
        "every byte, the last included"
    );
    assert_eq!(&reply.body[..], expected.as_bytes());

    let client = otlp
        .wait_for_spans(
            |s| s.kind == SpanKind::Client && s.has_attr("gen_ai.usage.output_tokens"),
            1,
            WAIT,
        )
        .await
        .remove(0);
    assert_eq!(client.int_attr("gen_ai.usage.input_tokens"), Some(11));
    assert_eq!(client.int_attr("gen_ai.usage.output_tokens"), Some(230_000));
    assert_eq!(
        client.str_attr("gen_ai.response.id"),
        Some("chatcmpl-large")
    );
}

/// Writes a request head declaring `declared` body bytes, then `sent` of them, then waits
/// for the answer without sending the rest.
async fn stalled_upload(addr: std::net::SocketAddr, declared: usize, sent: usize) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: {declared}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    stream
        .write_all(&vec![b'a'; sent])
        .await
        .expect("part of the body");
    stream.flush().await.expect("flush");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stalls_mid_upload_gets_408_not_the_upstreams_504() {
    let up = Upstream::start().await;
    let otlp = OtlpReceiver::start().await;
    // The response timeout is far shorter than the upload's: before the fix it ran during the
    // upload and answered 504 upstream_timeout.
    let proxy = Proxy::builder()
        .upstream(&up)
        .otlp(&otlp)
        .env("RAGSCOPE_RESPONSE_TIMEOUT", "200ms")
        .env("RAGSCOPE_REQUEST_BODY_TIMEOUT", "1s")
        .run()
        .await;

    let raw = stalled_upload(proxy.addr(), 1000, 10).await;
    assert!(raw.starts_with("HTTP/1.1 408"), "{raw}");
    assert!(raw.contains("\"type\":\"request_body_timeout\""), "{raw}");
    assert!(
        raw.to_ascii_lowercase().contains("connection: close"),
        "{raw}"
    );

    let server = otlp
        .wait_for_spans(
            |s| s.kind == SpanKind::Server && s.str_attr("error.type").is_some(),
            1,
            WAIT,
        )
        .await
        .remove(0);
    assert_eq!(server.str_attr("error.type"), Some("request_body_timeout"));
    assert_eq!(server.int_attr("http.response.status_code"), Some(408));
    assert_eq!(
        server.status_code,
        SpanStatusCode::Unset,
        "a client's fault is not a server error"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_upload_that_keeps_sending_outlasts_the_response_timeout() {
    let up = Upstream::start().await;
    let proxy = Proxy::builder()
        .upstream(&up)
        .env("RAGSCOPE_RESPONSE_TIMEOUT", "300ms")
        .env("RAGSCOPE_REQUEST_BODY_TIMEOUT", "5s")
        .run()
        .await;

    // Five chunks 150 ms apart: the upload alone lasts longer than the response timeout.
    let (tx, body) = ChannelBody::new(None);
    let send = tokio::spawn(async move {
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            if tx
                .send(bytes::Bytes::from_static(&[b'z'; 100]))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let reply = support::request(Method::POST, &proxy.url("/upload"))
        .body(body)
        .expect("request");
    let res = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http()
        .request(reply)
        .await
        .expect("an answer");
    assert_eq!(res.status(), StatusCode::OK);
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .expect("body")
        .to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["bytes"], 500, "{v}");
    send.await.expect("sender");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_that_takes_none_of_the_body_still_times_out() {
    // The black hole accepts and never reads: once the socket buffers are full, the upload
    // stops on the upstream's side, not the client's, and the response timeout applies.
    let hole = BlackHole::start().await;
    let proxy = Proxy::builder()
        .upstream(&hole)
        .env("RAGSCOPE_RESPONSE_TIMEOUT", "500ms")
        .env("RAGSCOPE_REQUEST_BODY_TIMEOUT", "30s")
        .env("RAGSCOPE_MAX_REQUEST_BODY", "1GiB")
        .run()
        .await;
    let total: usize = 512 << 20;
    let stream = tokio::net::TcpStream::connect(proxy.addr())
        .await
        .expect("connect");
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        let head = format!(
            "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: {total}\r\n\r\n"
        );
        wr.write_all(head.as_bytes()).await.expect("head");
        let chunk = vec![b'u'; 64 << 10];
        let mut sent = 0;
        // Blocks once nothing more is taken; fails once the proxy closes.
        while sent < total && wr.write_all(&chunk).await.is_ok() {
            sent += chunk.len();
        }
    });
    let mut out = Vec::new();
    let answered = tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 4096];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
            if String::from_utf8_lossy(&out).contains("}}") {
                return;
            }
        }
    })
    .await;
    writer.abort();
    let raw = String::from_utf8_lossy(&out);
    assert!(answered.is_ok(), "no answer within {WAIT:?}: {raw}");
    assert!(raw.starts_with("HTTP/1.1 504"), "{raw}");
    assert!(raw.contains("\"type\":\"upstream_timeout\""), "{raw}");
}
