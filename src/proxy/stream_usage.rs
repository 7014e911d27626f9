//! `RAGSCOPE_STREAM_USAGE=inject` (issue 13, item 8): the one place where ragscope changes a
//! body. An OpenAI chat or completions streaming request that does not ask for usage gets
//! `"stream_options":{"include_usage":true}` added (read through the same bounded read as the
//! token budget's estimate: a body over `RAGSCOPE_PARSE_MAX_BYTES`, or one that is not a JSON
//! object asking for a stream, passes unchanged), so its span gets real token counts; the
//! response's usage-only chunk is then taken out of the stream (after the observation has read
//! it), as is the `"usage":null` OpenAI adds to every other chunk, so the client sees the stream
//! it asked for.

use bytes::{Bytes, BytesMut};
use http::request::Parts;
use http::{HeaderValue, header};
use hyper::body::Incoming;
use serde_json::Value;

use super::Proxy;
use super::buffered::{self, Buffered};
use crate::error::ProxyError;
use crate::genai::Settings;
use crate::genai::api::{Api, Recognised};

/// What is added to a request's top-level object.
const INJECTED: &[u8] = br#""stream_options":{"include_usage":true},"#;
/// What OpenAI adds to every chunk of a stream with usage, taken out again.
const NULL_USAGE: &[&[u8]] = &[br#","usage":null"#, br#""usage":null,"#];

/// Marks a response whose request had usage injected (in the response's extensions).
#[derive(Debug, Clone, Copy)]
pub struct UsageInjected;

impl Proxy {
    /// When `RAGSCOPE_STREAM_USAGE=inject` and the request is an OpenAI chat or completions
    /// request: reads its body's head (unless admission did), and when the whole body is a
    /// stream request without usage, rewrites it and its Content-Length. Returns the head to
    /// forward and whether usage was injected.
    pub(super) async fn inject_usage(
        &self,
        parts: &mut Parts,
        body: &mut Incoming,
        head: Option<Buffered>,
    ) -> Result<(Option<Buffered>, bool), ProxyError> {
        if !self.genai.config().inject_stream_usage {
            return Ok((head, false));
        }
        let openai = Recognised::from_request(&parts.method, parts.uri.path())
            .is_some_and(|r| matches!(r.api, Api::OpenAiChat | Api::OpenAiCompletions));
        if !openai {
            return Ok((head, false));
        }
        let mut head = match head {
            Some(head) => head,
            None => {
                let bound = self.genai.config().parse_max_bytes;
                let timeout = self.config.request_body_timeout;
                buffered::read_bounded(body, bound, self.genai.budget(), timeout).await?
            }
        };
        let rewritten = head.is_complete().then(|| inject(head.bytes())).flatten();
        let Some(rewritten) = rewritten else {
            return Ok((Some(head), false));
        };
        if parts.headers.contains_key(header::CONTENT_LENGTH) {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(rewritten.len()));
        }
        head.replace(rewritten);
        Ok((Some(head), true))
    }
}

/// The filter for a response whose request had usage injected, when it is a successful
/// event stream; its Content-Length (if the upstream sent one) no longer holds and goes.
pub fn filter_for(parts: &mut http::response::Parts, genai: &Settings) -> Option<UsageFilter> {
    parts.extensions.remove::<UsageInjected>()?;
    let stream = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("text/event-stream"));
    if !parts.status.is_success() || !stream {
        return None;
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    Some(UsageFilter::new(genai.parse_max_bytes))
}

/// The request body with usage asked for, or `None` when it stays as it is: not a JSON
/// object, no `"stream": true`, or `stream_options` already there (asked for or declined by
/// the client in its own words: left alone).
pub fn inject(body: &[u8]) -> Option<Bytes> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let object = value.as_object()?;
    if object.get("stream") != Some(&Value::Bool(true)) || object.contains_key("stream_options") {
        return None;
    }
    // Inserted as text after the opening brace: the client's own bytes (order, spacing,
    // numbers) stay exactly as they were. The object is not empty (it has "stream").
    let open = body.iter().position(|b| *b == b'{')?;
    let mut out = BytesMut::with_capacity(body.len() + INJECTED.len());
    out.extend_from_slice(&body[..=open]);
    out.extend_from_slice(INJECTED);
    out.extend_from_slice(&body[open + 1..]);
    Some(out.freeze())
}

/// Takes the usage the client did not ask for out of an OpenAI event stream, frame by frame.
/// Whole events pass as soon as they are complete; an unfinished one waits for its end (an SSE
/// client cannot use it before either). What waits is bounded: past `max` bytes without an
/// event boundary it is passed on unfiltered.
#[derive(Debug)]
pub struct UsageFilter {
    pending: BytesMut,
    max: usize,
}

impl UsageFilter {
    /// A filter holding at most `max` bytes of an unfinished event.
    pub fn new(max: usize) -> UsageFilter {
        UsageFilter {
            pending: BytesMut::new(),
            max,
        }
    }

    /// What still waits (an event the stream ended in the middle of), handed on at the end.
    pub fn flush(&mut self) -> Option<Bytes> {
        (!self.pending.is_empty()).then(|| self.pending.split().freeze())
    }

    /// The bytes to hand on for `data`; `last` (the stream's end) flushes what waits.
    pub fn filter(&mut self, data: Bytes, last: bool) -> Bytes {
        if self.pending.is_empty() && ends_an_event(&data) && !contains(&data, b"\"usage\"") {
            // The common frame: whole events without usage, handed on as they are.
            return data;
        }
        self.pending.extend_from_slice(&data);
        let mut out = BytesMut::with_capacity(self.pending.len());
        let mut rest: &[u8] = &self.pending;
        while let Some(end) = event_end(rest) {
            let (event, tail) = rest.split_at(end);
            keep(event, &mut out);
            rest = tail;
        }
        let consumed = self.pending.len() - rest.len();
        if last || rest.len() > self.max {
            out.extend_from_slice(rest);
            self.pending.clear();
        } else {
            let _ = self.pending.split_to(consumed);
        }
        out.freeze()
    }
}

/// Adds `event` to `out` unless it is the usage-only chunk, without `"usage":null`.
fn keep(event: &[u8], out: &mut BytesMut) {
    if !contains(event, b"\"usage\"") {
        out.extend_from_slice(event);
        return;
    }
    if is_usage_only(event) {
        return;
    }
    let mut rest = event;
    while let Some((at, len)) = NULL_USAGE
        .iter()
        .filter_map(|p| find(rest, p).map(|at| (at, p.len())))
        .min()
    {
        out.extend_from_slice(&rest[..at]);
        rest = &rest[at + len..];
    }
    out.extend_from_slice(rest);
}

/// The chunk OpenAI adds for usage: `choices` empty, `usage` an object.
fn is_usage_only(event: &[u8]) -> bool {
    let text = String::from_utf8_lossy(event);
    let data: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim_start)
        .collect();
    serde_json::from_str::<Value>(&data).is_ok_and(|v| {
        v.get("choices")
            .and_then(Value::as_array)
            .is_some_and(Vec::is_empty)
            && v.get("usage").is_some_and(Value::is_object)
    })
}

/// The length of the first complete event in `data` (through its blank line), if any.
fn event_end(data: &[u8]) -> Option<usize> {
    let lf = find(data, b"\n\n").map(|at| at + 2);
    let crlf = find(data, b"\r\n\r\n").map(|at| at + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn ends_an_event(data: &[u8]) -> bool {
    data.ends_with(b"\n\n") || data.ends_with(b"\r\n\r\n")
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    find(haystack, needle).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_asked_for_in_the_clients_own_bytes() {
        let body = br#" {"model":"m", "stream":true,"messages":[]}"#;
        let out = inject(body).expect("rewritten");
        assert_eq!(
            &out[..],
            &br#" {"stream_options":{"include_usage":true},"model":"m", "stream":true,"messages":[]}"#[..]
        );
        let v: Value = serde_json::from_slice(&out).expect("still JSON");
        assert_eq!(v["stream_options"]["include_usage"], true);
        for unchanged in [
            &br#"{"model":"m","stream":false}"#[..],
            br#"{"model":"m"}"#,
            br#"{"stream":true,"stream_options":{"include_usage":false}}"#,
            br#"{"stream":true,"stream_options":{}}"#,
            br#"[{"stream":true}]"#,
            b"not json",
        ] {
            assert_eq!(
                inject(unchanged),
                None,
                "{}",
                String::from_utf8_lossy(unchanged)
            );
        }
    }

    const CHUNK: &str = "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n";
    const USAGE: &str = "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\n";
    const DONE: &str = "data: [DONE]\n\n";
    const CLEAN: &str =
        "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n";

    fn run(frames: &[&[u8]]) -> String {
        let mut f = UsageFilter::new(1 << 20);
        let mut out = Vec::new();
        for (i, frame) in frames.iter().enumerate() {
            let last = i + 1 == frames.len();
            out.extend_from_slice(&f.filter(Bytes::copy_from_slice(frame), last));
        }
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn the_usage_chunk_and_null_usage_are_taken_out_wherever_frames_end() {
        let stream = format!("{CHUNK}{CHUNK}{USAGE}{DONE}");
        let expected = format!("{CLEAN}{CLEAN}{DONE}");
        assert_eq!(run(&[stream.as_bytes()]), expected);
        let bytes = stream.as_bytes();
        for cut in 1..bytes.len() {
            let (a, b) = bytes.split_at(cut);
            assert_eq!(run(&[a, b]), expected, "cut at {cut}");
        }
        let one_by_one: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(run(&one_by_one), expected);
    }

    #[test]
    fn other_events_pass_untouched_and_crlf_events_are_read_too() {
        let plain = format!("{CLEAN}{DONE}");
        assert_eq!(run(&[plain.as_bytes()]), plain);
        let crlf = USAGE.replace("\n\n", "\r\n\r\n");
        assert_eq!(run(&[crlf.as_bytes(), DONE.as_bytes()]), DONE);
        // A usage field that is not the usage-only chunk stays.
        let other = "data: {\"choices\":[{\"index\":0}],\"usage\":{\"x\":1}}\n\n";
        assert_eq!(run(&[other.as_bytes()]), other);
    }

    #[test]
    fn what_waits_for_an_event_end_is_bounded() {
        let mut f = UsageFilter::new(16);
        let out = f.filter(
            Bytes::from_static(b"data: {\"usage\": 123456789012345"),
            false,
        );
        assert_eq!(out.len(), 31, "past the bound it is handed on as it is");
        assert!(f.pending.is_empty());
        let mut f = UsageFilter::new(1024);
        assert!(
            f.filter(Bytes::from_static(b"data: {\"usage\""), false)
                .is_empty()
        );
        assert_eq!(
            &f.filter(Bytes::from_static(b":1}"), true)[..],
            b"data: {\"usage\":1}",
            "the stream's end flushes what waits"
        );
    }
}
