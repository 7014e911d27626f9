//! `RAGSCOPE_STREAM_USAGE=inject` over real sockets (issue 13, item 8): an OpenAI streaming
//! request without usage is asked for it, the client gets the stream it asked for (no usage
//! chunk, no `"usage":null`), and the span gets the real token counts; off by default, a body
//! over the bound or a client that asked for usage itself passes unchanged.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Response};
use http_body_util::Full;
use serde_json::{Value as Json, json};
use support::*;

const WAIT: Duration = Duration::from_secs(15);

/// An OpenAI-style server: streams three chunks; with `include_usage` every chunk carries
/// `"usage":null` and a usage-only chunk comes before `[DONE]`, as OpenAI sends them.
fn route(seen: &SeenRequest) -> Option<Response<UpstreamBody>> {
    if !seen.path().ends_with("/v1/chat/completions") {
        return None;
    }
    let request = seen.json();
    let usage = request["stream_options"]["include_usage"] == true;
    let mut frames = Vec::new();
    for word in ["Paris ", "is ", "there."] {
        let mut chunk = json!({"id": "c1", "object": "chat.completion.chunk", "model": "m",
                               "choices": [{"index": 0, "delta": {"content": word}}]});
        if usage {
            chunk["usage"] = Json::Null;
        }
        frames.push((Duration::ZERO, Bytes::from(format!("data: {chunk}\n\n"))));
    }
    if usage {
        let last = json!({"id": "c1", "object": "chat.completion.chunk", "model": "m", "choices": [],
                          "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}});
        frames.push((Duration::ZERO, Bytes::from(format!("data: {last}\n\n"))));
    }
    frames.push((Duration::ZERO, Bytes::from_static(b"data: [DONE]\n\n")));
    Some(canned_sse(frames, &[]))
}

fn chat(extra: Json) -> Json {
    let mut body = json!({"model": "m", "stream": true,
                          "messages": [{"role": "user", "content": "Where is the Louvre?"}]});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    body
}

async fn stream(proxy: &Proxy, body: &Json) -> String {
    let req = request(Method::POST, &proxy.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request");
    let reply = Client::http1().request(req).await;
    assert_eq!(reply.status, 200);
    String::from_utf8(reply.body.to_vec()).expect("utf-8")
}

/// The stream as a client without usage sees it from the upstream directly.
fn plain_stream() -> String {
    ["Paris ", "is ", "there."]
        .iter()
        .map(|w| {
            let chunk = json!({"id": "c1", "object": "chat.completion.chunk", "model": "m",
                               "choices": [{"index": 0, "delta": {"content": w}}]});
            format!("data: {chunk}\n\n")
        })
        .chain(["data: [DONE]\n\n".to_owned()])
        .collect()
}

async fn output_tokens(otlp: &OtlpReceiver) -> Option<i64> {
    let span = otlp
        .wait_for_spans(
            |s| s.str_attr("gen_ai.operation.name") == Some("chat"),
            1,
            WAIT,
        )
        .await
        .remove(0);
    span.int_attr("gen_ai.usage.output_tokens")
}

#[tokio::test(flavor = "multi_thread")]
async fn injected_usage_reaches_the_span_and_never_the_client() {
    let up = Upstream::scripted(route).await;
    let otlp = OtlpReceiver::start().await;
    let proxy = Proxy::builder()
        .upstream(&up)
        .otlp(&otlp)
        .env("RAGSCOPE_STREAM_USAGE", "inject")
        .run()
        .await;
    let body = chat(json!({}));
    let got = stream(&proxy, &body).await;
    assert_eq!(
        got,
        plain_stream(),
        "exactly the stream the client asked for"
    );
    let seen = up.last_request();
    assert_eq!(seen.json()["stream_options"]["include_usage"], true);
    assert_eq!(
        seen.header("content-length")
            .and_then(|v| v.parse::<usize>().ok()),
        Some(seen.body.len()),
        "the rewritten body's length"
    );
    // Everything else the client wrote is byte for byte what it sent.
    let sent = body.to_string();
    let forwarded = String::from_utf8_lossy(&seen.body).into_owned();
    assert_eq!(
        forwarded.replacen(r#""stream_options":{"include_usage":true},"#, "", 1),
        sent
    );
    assert_eq!(output_tokens(&otlp).await, Some(3));
}

#[tokio::test(flavor = "multi_thread")]
async fn off_by_default_and_clients_that_chose_keep_their_choice() {
    let up = Upstream::scripted(route).await;
    let otlp = OtlpReceiver::start().await;
    let proxy = Proxy::builder().upstream(&up).otlp(&otlp).run().await;
    let body = chat(json!({}));
    assert_eq!(stream(&proxy, &body).await, plain_stream());
    assert_eq!(up.last_request().body, Bytes::from(body.to_string()));
    assert_eq!(
        output_tokens(&otlp).await,
        None,
        "no usage without injection"
    );

    let up = Upstream::scripted(route).await;
    let proxy = Proxy::builder()
        .upstream(&up)
        .env("RAGSCOPE_STREAM_USAGE", "inject")
        .run()
        .await;
    // Asked for usage itself: it gets it, untouched.
    let asked = chat(json!({"stream_options": {"include_usage": true}}));
    let got = stream(&proxy, &asked).await;
    assert!(got.contains(r#""completion_tokens":3"#) && got.contains(r#""usage":null"#));
    // Declined in its own words: left alone.
    let declined = chat(json!({"stream_options": {"include_usage": false}}));
    assert_eq!(stream(&proxy, &declined).await, plain_stream());
    assert_eq!(up.last_request().body, Bytes::from(declined.to_string()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_over_the_bound_passes_unchanged() {
    let up = Upstream::scripted(route).await;
    let proxy = Proxy::builder()
        .upstream(&up)
        .env("RAGSCOPE_STREAM_USAGE", "inject")
        .env("RAGSCOPE_PARSE_MAX_BYTES", "1KiB")
        .run()
        .await;
    let big = chat(json!({"messages": [{"role": "user", "content": "x".repeat(4000)}]}));
    assert_eq!(stream(&proxy, &big).await, plain_stream());
    let seen = up.last_request();
    assert_eq!(seen.body_bytes, big.to_string().len() as u64);
    assert_eq!(
        seen.json()["model"],
        "m",
        "the whole body reached the upstream"
    );
    assert!(seen.json()["stream_options"].is_null(), "not rewritten");
}
