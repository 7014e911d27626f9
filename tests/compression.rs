//! Compressed bodies are observed, never altered (issue 12): a chat completion answered as
//! JSON or as an event stream under each `Content-Encoding` ragscope undoes (gzip, deflate, br,
//! zstd, and two stacked) has its usage recorded, while the client receives exactly the bytes
//! the upstream sent; the stream is read as it passes (time to first token measured at the
//! content event, not at the end); a compressed request body is read too; an unknown coding
//! is skipped and said so, never "malformed"; a gigabyte of zeros gzipped is cut off at
//! `RAGSCOPE_PARSE_MAX_BYTES` and the answer still reaches the client whole.

mod support;

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::Full;
use serde_json::json;
use support::*;

const WAIT: Duration = Duration::from_secs(20);
/// The pause before the content event of a stream.
const THINK: Duration = Duration::from_millis(150);
/// The pause before the stream's last event.
const TAIL: Duration = Duration::from_millis(600);

/// One compressor of a stack, flushed after every piece so each frame decodes on arrival.
enum Layer {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Deflate(flate2::write::ZlibEncoder<Vec<u8>>),
    Br(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl Layer {
    fn new(name: &str) -> Layer {
        let level = flate2::Compression::default();
        match name {
            "gzip" => Layer::Gzip(flate2::write::GzEncoder::new(Vec::new(), level)),
            "deflate" => Layer::Deflate(flate2::write::ZlibEncoder::new(Vec::new(), level)),
            "br" => Layer::Br(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                4096,
                5,
                22,
            ))),
            "zstd" => Layer::Zstd(zstd::stream::write::Encoder::new(Vec::new(), 3).expect("zstd")),
            other => panic!("no encoder for {other}"),
        }
    }

    /// Compresses `data`, flushed; returns the bytes produced so far.
    fn push(&mut self, data: &[u8]) -> Vec<u8> {
        let writer: &mut dyn Write = match self {
            Layer::Gzip(e) => e,
            Layer::Deflate(e) => e,
            Layer::Br(e) => e.as_mut(),
            Layer::Zstd(e) => e,
        };
        writer.write_all(data).expect("compresses");
        writer.flush().expect("flushes");
        std::mem::take(match self {
            Layer::Gzip(e) => e.get_mut(),
            Layer::Deflate(e) => e.get_mut(),
            Layer::Br(e) => e.get_mut(),
            Layer::Zstd(e) => e.get_mut(),
        })
    }

    fn finish(self) -> Vec<u8> {
        match self {
            Layer::Gzip(e) => e.finish().expect("gzip"),
            Layer::Deflate(e) => e.finish().expect("deflate"),
            Layer::Br(e) => e.into_inner(),
            Layer::Zstd(e) => e.finish().expect("zstd"),
        }
    }
}

/// `pieces` compressed with `encoding` (a `Content-Encoding` value, codings in the order
/// applied), one frame per piece, the streams' ends on the last.
fn pack(encoding: &str, pieces: &[&[u8]]) -> Vec<Vec<u8>> {
    let mut layers: Vec<Layer> = encoding.split(',').map(|c| Layer::new(c.trim())).collect();
    let mut frames: Vec<Vec<u8>> = pieces
        .iter()
        .map(|piece| {
            layers
                .iter_mut()
                .fold(piece.to_vec(), |data, layer| layer.push(&data))
        })
        .collect();
    let mut tail = Vec::new();
    for mut layer in layers {
        let mut out = layer.push(&tail);
        out.extend(layer.finish());
        tail = out;
    }
    frames.last_mut().expect("a piece").extend(tail);
    frames
}

fn chat_json(model: &str) -> String {
    json!({
        "id": "c1", "object": "chat.completion", "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
    })
    .to_string()
}

fn chat_events(model: &str) -> Vec<String> {
    let chunk = |delta: serde_json::Value, finish: Option<&str>, usage: bool| {
        let mut c = json!({"id": "c1", "object": "chat.completion.chunk", "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        if usage {
            c["usage"] = json!({"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18});
        }
        format!("data: {c}\n\n")
    };
    vec![
        chunk(json!({"role": "assistant", "content": ""}), None, false),
        chunk(json!({"content": "Hello"}), None, false),
        chunk(json!({}), Some("stop"), true) + "data: [DONE]\n\n",
    ]
}

/// The upstream's answer for `model` under `encoding` (`stream`: an event stream), as frames.
fn answer(model: &str, encoding: &str, stream: bool) -> Vec<Vec<u8>> {
    if stream {
        let events = chat_events(model);
        let pieces: Vec<&[u8]> = events.iter().map(|e| e.as_bytes()).collect();
        pack(encoding, &pieces)
    } else {
        pack(encoding, &[chat_json(model).as_bytes()])
    }
}

/// Answers chat completions compressed as `x-encode` says (`x-stream: 1` for a stream).
async fn upstream() -> Upstream {
    Upstream::scripted(|seen| {
        let encoding = seen.header("x-encode")?.to_owned();
        let model = seen.header("x-model").unwrap_or("m").to_owned();
        let stream = seen.header("x-stream") == Some("1");
        let frames = answer(&model, &encoding, stream);
        let headers = [("content-encoding", encoding.as_str())];
        Some(if stream {
            let delays = [Duration::ZERO, THINK, TAIL];
            let timed = frames
                .into_iter()
                .zip(delays)
                .map(|(f, d)| (d, Bytes::from(f)))
                .collect();
            canned_sse(timed, &headers)
        } else {
            let mut all = vec![("content-type", "application/json")];
            all.extend_from_slice(&headers);
            canned(200, &all, frames.concat())
        })
    })
    .await
}

async fn proxy(up: &Upstream, otlp: &OtlpReceiver) -> Proxy {
    Proxy::builder()
        .upstream(up)
        .otlp(otlp)
        .env("RAGSCOPE_PARSE_MAX_BYTES", "1MiB")
        .run()
        .await
}

/// Sends a chat completion for `model`, answered under `encoding`; returns the reply.
async fn chat(proxy: &Proxy, model: &str, encoding: &str, stream: bool) -> Reply {
    let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}],
                      "stream": stream});
    let req = request(Method::POST, &proxy.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("x-encode", encoding)
        .header("x-model", model)
        .header("x-stream", if stream { "1" } else { "0" })
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request");
    Client::http1().request(req).await
}

async fn inference_span(otlp: &OtlpReceiver, model: &str) -> CollectedSpan {
    otlp.wait_for_spans(
        |s| s.kind == SpanKind::Client && s.str_attr("gen_ai.request.model") == Some(model),
        1,
        WAIT,
    )
    .await
    .remove(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn each_encoding_on_json_and_sse_records_usage_and_passes_the_bytes_unchanged() {
    let up = upstream().await;
    let otlp = OtlpReceiver::start().await;
    let proxy = proxy(&up, &otlp).await;

    for encoding in ["gzip", "deflate", "br", "zstd", "br, gzip"] {
        for stream in [false, true] {
            let model = format!("m-{}-{stream}", encoding.replace(", ", "+"));
            let reply = chat(&proxy, &model, encoding, stream).await;
            assert_eq!(reply.status, StatusCode::OK, "{model}");
            assert_eq!(reply.header("content-encoding"), Some(encoding), "{model}");
            let sent = answer(&model, encoding, stream).concat();
            assert!(
                reply.body == sent,
                "{model}: the client gets the upstream's bytes exactly"
            );

            let span = inference_span(&otlp, &model).await;
            assert_eq!(
                span.int_attr("gen_ai.usage.input_tokens"),
                Some(11),
                "{model}"
            );
            assert_eq!(
                span.int_attr("gen_ai.usage.output_tokens"),
                Some(7),
                "{model}"
            );
            assert_eq!(span.str_attr("gen_ai.response.model"), Some(model.as_str()));
            assert!(
                !span.has_attr("ragscope.genai.parse_error"),
                "{model}: {span:?}"
            );
            assert!(!span.has_attr("ragscope.genai.skipped"), "{model}");
            if stream {
                // Read as it passed: the first token when the content event went by, well
                // before the stream's last event.
                let ttft = span
                    .double_attr("gen_ai.response.time_to_first_chunk")
                    .unwrap_or_else(|| panic!("{model}: time to first token {span:?}"));
                let (think, tail) = (THINK.as_secs_f64(), (THINK + TAIL).as_secs_f64());
                assert!(ttft >= think * 0.9 && ttft < tail * 0.9, "{model}: {ttft}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_compressed_request_body_is_read_and_forwarded_as_it_came() {
    let up = upstream().await;
    let otlp = OtlpReceiver::start().await;
    let proxy = proxy(&up, &otlp).await;

    let body = json!({"model": "m-gzipped-request", "max_tokens": 42,
                      "messages": [{"role": "user", "content": "hi"}]})
    .to_string();
    let packed = pack("gzip", &[body.as_bytes()]).concat();
    let req = request(Method::POST, &proxy.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .header("x-encode", "zstd")
        .header("x-model", "m-gzipped-request")
        .body(Full::new(Bytes::from(packed.clone())))
        .expect("request");
    let reply = Client::http1().request(req).await;
    assert_eq!(reply.status, StatusCode::OK);
    let seen = up.last_request();
    assert_eq!(seen.header("content-encoding"), Some("gzip"));
    assert!(
        seen.body == packed,
        "the upstream gets the client's bytes exactly"
    );

    let span = inference_span(&otlp, "m-gzipped-request").await;
    assert_eq!(span.int_attr("gen_ai.request.max_tokens"), Some(42));
    assert_eq!(span.int_attr("gen_ai.usage.output_tokens"), Some(7));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_encoding_is_skipped_and_said_so_never_malformed() {
    let up = Upstream::scripted(|seen| {
        (seen.path() == "/v1/chat/completions").then(|| {
            let headers = [
                ("content-type", "application/json"),
                ("content-encoding", "compress"),
            ];
            canned(200, &headers, &b"\x1f\x9d\x90not really lzw"[..])
        })
    })
    .await;
    let otlp = OtlpReceiver::start().await;
    let proxy = proxy(&up, &otlp).await;

    let reply = chat(&proxy, "m-lzw", "compress", false).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.body == b"\x1f\x9d\x90not really lzw"[..]);
    let span = inference_span(&otlp, "m-lzw").await;
    assert_eq!(
        span.str_attr("ragscope.genai.skipped"),
        Some("encoding"),
        "{span:?}"
    );
    assert!(!span.has_attr("ragscope.genai.parse_error"), "{span:?}");
}

/// 1 GiB of zeros, gzipped (about 1 MiB): 1024 gzip members of 1 MiB of zeros each, as gzip
/// allows (RFC 1952 2.2), so the test does not spend its time compressing a gigabyte.
fn gzip_bomb() -> Bytes {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(&vec![0u8; 1 << 20]).expect("compresses");
    let member = e.finish().expect("finishes");
    Bytes::from(member.repeat(1024))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_decompression_bomb_is_cut_off_at_the_bound_and_still_reaches_the_client_whole() {
    let bomb = gzip_bomb();
    assert!(bomb.len() < 2 << 20, "{}", bomb.len());
    let served = bomb.clone();
    let up = Upstream::scripted(move |seen| {
        let stream = seen.header("x-stream") == Some("1");
        let content_type = if stream {
            "text/event-stream"
        } else {
            "application/json"
        };
        let headers = [("content-type", content_type), ("content-encoding", "gzip")];
        Some(canned(200, &headers, served.clone()))
    })
    .await;
    let otlp = OtlpReceiver::start().await;
    let proxy = proxy(&up, &otlp).await;

    for (model, stream) in [("m-bomb-json", false), ("m-bomb-sse", true)] {
        let reply = chat(&proxy, model, "gzip", stream).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert!(reply.body == bomb, "{model}: the bytes pass as they came");
        let span = inference_span(&otlp, model).await;
        assert_eq!(
            span.bool_attr("ragscope.genai.parse_truncated"),
            Some(true),
            "{span:?}"
        );
        assert!(!span.has_attr("ragscope.genai.parse_error"), "{span:?}");
    }
    // Nothing of the copies is held once the exchanges are over.
    let budget = otlp
        .wait_for_metric_where(
            "ragscope.genai.parse_budget.used",
            |m| m.number_points().iter().all(|p| p.as_f64() == 0.0),
            WAIT,
        )
        .await;
    assert!(!budget.number_points().is_empty());
}
