//! Recent requests in bounded memory, for the admin listener's `/traces` view: the newest
//! `RAGSCOPE_RECENT_TRACES` finished exchanges, whether or not a collector is configured.
//!
//! Cheap where requests are recorded: the ring keeps each exchange's [`Record`] itself (moved,
//! no copy) with its tail-sampling verdict; its SERVER and CLIENT spans are built from it, the
//! same way as for export, only when someone reads the view. So the view holds no more than the
//! collector gets (no secrets, per the telemetry contract), and costs nothing until it is read.
//!
//! Feedback arrives after its request is recorded: a `ragscope.feedback` span joins the entry
//! of the request it is about, at most [`MAX_FEEDBACK_SPANS`] per request and
//! [`MAX_FEEDBACK_BYTES`] in the whole ring (more is counted, not kept), so a client posting
//! feedback on one trace in a loop cannot grow memory. Feedback on a request no longer (or
//! never) in the ring is not kept here; it is still exported and counted.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanId, SpanKind, Status};
use opentelemetry::{Array, Value};
use opentelemetry_sdk::trace::SpanData;
use serde_json::{Map, Value as Json, json};

use super::exchange;
use super::sampling::Verdict;
use super::spans::estimate;
use crate::observe::{Record, TraceIds};

/// Feedback spans kept per request; later ones are counted in the entry, not kept.
pub const MAX_FEEDBACK_SPANS: usize = 16;
/// Bytes of feedback spans kept in the whole ring (estimated as held traces are).
pub const MAX_FEEDBACK_BYTES: u64 = 4 << 20;

/// One request: its record, the spans built from it on demand, and the feedback about it.
#[derive(Debug)]
pub struct RecentTrace {
    ids: TraceIds,
    record: Record,
    verdict: Option<Verdict>,
    feedback: Mutex<Feedback>,
}

#[derive(Debug, Default)]
struct Feedback {
    spans: Vec<SpanData>,
    bytes: u64,
    /// Feedback spans refused by the caps.
    dropped: u64,
}

/// The ring of recent requests, newest last.
#[derive(Debug)]
pub struct RecentTraces {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    ring: VecDeque<Arc<RecentTrace>>,
    /// Bytes of the feedback spans filed under the ring's entries.
    feedback_bytes: u64,
}

/// Which requests a reader wants.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TraceFilter {
    /// Only failed requests (see [`RecentTrace::is_error`]).
    pub errors: bool,
    /// Only requests that took at least this long.
    pub slow: Option<Duration>,
    /// Only this trace id (lowercase hex).
    pub trace_id: Option<String>,
    /// At most this many, newest first.
    pub limit: Option<usize>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock leaves consistent data (each change is one push or pop).
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl RecentTraces {
    /// An empty ring keeping the last `capacity` requests.
    pub fn new(capacity: usize) -> Arc<RecentTraces> {
        Arc::new(RecentTraces {
            capacity,
            inner: Mutex::new(Inner::default()),
        })
    }

    /// How many requests the ring keeps.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Keeps a finished, sampled exchange (its ids taken out of the record), evicting the
    /// oldest past the capacity.
    pub(super) fn record(&self, ids: TraceIds, record: Record, verdict: Option<Verdict>) {
        let entry = Arc::new(RecentTrace {
            ids,
            record,
            verdict,
            feedback: Mutex::new(Feedback::default()),
        });
        let evicted = {
            let mut inner = lock(&self.inner);
            let evicted = if inner.ring.len() >= self.capacity {
                inner.ring.pop_front()
            } else {
                None
            };
            if let Some(old) = &evicted {
                inner.feedback_bytes -= lock(&old.feedback).bytes;
            }
            inner.ring.push_back(entry);
            evicted
        };
        // Dropped outside the lock: freeing a record is not free.
        drop(evicted);
    }

    /// Files a feedback span under the request it is about (its parent), within the caps.
    /// Returns whether it was kept.
    pub(super) fn feedback(&self, span: SpanData) -> bool {
        let size = estimate(&span);
        let mut inner = lock(&self.inner);
        let trace_id = span.span_context.trace_id();
        let Some(entry) = inner
            .ring
            .iter()
            .rev()
            .find(|t| t.ids.server_span_id == span.parent_span_id && t.ids.trace_id == trace_id)
            .cloned()
        else {
            return false;
        };
        let mut feedback = lock(&entry.feedback);
        if feedback.spans.len() >= MAX_FEEDBACK_SPANS
            || inner.feedback_bytes + size > MAX_FEEDBACK_BYTES
        {
            feedback.dropped += 1;
            return false;
        }
        feedback.spans.push(span);
        feedback.bytes += size;
        inner.feedback_bytes += size;
        true
    }

    /// Bytes of feedback spans the ring holds (bounded by [`MAX_FEEDBACK_BYTES`]).
    pub fn feedback_bytes(&self) -> u64 {
        lock(&self.inner).feedback_bytes
    }

    /// The requests matching `filter`, newest first.
    pub fn snapshot(&self, filter: &TraceFilter) -> Vec<Arc<RecentTrace>> {
        // Cloning the Arcs keeps the lock short; filtering happens outside it.
        let all: Vec<Arc<RecentTrace>> = lock(&self.inner).ring.iter().rev().cloned().collect();
        all.into_iter()
            .filter(|t| !filter.errors || t.is_error())
            .filter(|t| filter.slow.is_none_or(|s| t.duration() >= s))
            .filter(|t| {
                filter
                    .trace_id
                    .as_deref()
                    .is_none_or(|id| t.trace_id() == id)
            })
            .take(filter.limit.unwrap_or(usize::MAX))
            .collect()
    }
}

impl RecentTrace {
    /// The trace id, lowercase hex.
    pub fn trace_id(&self) -> String {
        self.ids.trace_id.to_string()
    }

    /// From the first byte of the request to the last of the response.
    pub fn duration(&self) -> Duration {
        let t = &self.record.times;
        t.end.1.duration_since(t.start.1).unwrap_or_default()
    }

    /// A request failed when it has an `error.type` (proxy-made errors, upstream 5xx, broken
    /// streams) or its span status is Error.
    pub fn is_error(&self) -> bool {
        self.record.error.is_some()
            || matches!(exchange::server_status(&self.record), Status::Error { .. })
    }

    /// The spans, built from the record as they are for export, and the feedback about it.
    fn view(&self) -> View {
        let (client, root) = exchange::build(&self.ids, &self.record, self.verdict);
        let feedback = lock(&self.feedback);
        let mut children: Vec<SpanData> = client.into_iter().collect();
        children.extend(feedback.spans.iter().cloned());
        children.sort_by_key(|s| s.start_time);
        View {
            root,
            children,
            feedback_dropped: feedback.dropped,
        }
    }

    /// The row of the list view.
    pub fn summary(&self) -> Json {
        self.view().summary(self)
    }

    /// The summary plus every span, with start offsets relative to the request's start.
    pub fn detail(&self) -> Json {
        let view = self.view();
        let mut summary = view.summary(self);
        let origin = view.root.start_time;
        let spans: Vec<Json> = std::iter::once(&view.root)
            .chain(view.children.iter())
            .map(|s| span_json(s, origin))
            .collect();
        if let Json::Object(map) = &mut summary {
            map.insert("spans".to_owned(), Json::Array(spans));
            map.insert(
                "feedback_spans_dropped".to_owned(),
                Json::from(view.feedback_dropped),
            );
        }
        summary
    }
}

/// One request's spans, built for reading.
struct View {
    root: SpanData,
    children: Vec<SpanData>,
    feedback_dropped: u64,
}

impl View {
    /// An attribute of the request: the SERVER span's, else the first child's that has it (the
    /// GenAI attributes live on the upstream call's span).
    fn find(&self, key: &str) -> Option<&Value> {
        attr(&self.root, key).or_else(|| self.children.iter().find_map(|s| attr(s, key)))
    }

    fn summary(&self, trace: &RecentTrace) -> Json {
        let method = self
            .find("http.request.method_original")
            .or_else(|| self.find("http.request.method"));
        let model = self
            .find("gen_ai.response.model")
            .or_else(|| self.find("gen_ai.request.model"));
        json!({
            "trace_id": trace.trace_id(),
            "span_id": self.root.span_context.span_id().to_string(),
            "time": unix_ms(self.root.start_time),
            "method": method.map(value_json),
            "path": self.find("url.path").map(value_json),
            "status": self.find("http.response.status_code").map(value_json),
            "duration_ms": ms(trace.duration()),
            "error": trace.is_error(),
            "error_type": self.find("error.type").map(value_json),
            "cancelled": self.find("ragscope.cancelled").is_some_and(|v| matches!(v, Value::Bool(true))),
            "model": model.map(value_json),
            "input_tokens": self.find("gen_ai.usage.input_tokens").map(value_json),
            "output_tokens": self.find("gen_ai.usage.output_tokens").map(value_json),
            "ttft_ms": self.find("gen_ai.response.time_to_first_chunk").and_then(seconds_to_ms),
            // RAG in the request list.
            "documents": self.find("ragscope.rag.documents").map(value_json),
            "top_score": self.top_score(),
            "empty_retrieval": self.find("ragscope.rag.documents").is_some_and(|v| matches!(v, Value::I64(0))),
        })
    }

    /// The best score in `gen_ai.retrieval.documents` (read when the view is, not per request).
    fn top_score(&self) -> Option<f64> {
        let Value::String(docs) = self.find("gen_ai.retrieval.documents")? else {
            return None;
        };
        let docs: Vec<Json> = serde_json::from_str(docs.as_str()).ok()?;
        docs.iter()
            .filter_map(|d| d["score"].as_f64())
            .reduce(f64::max)
    }
}

fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .rev()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

fn span_json(span: &SpanData, origin: SystemTime) -> Json {
    let offset = |t: SystemTime| ms(t.duration_since(origin).unwrap_or_default());
    let attributes: Map<String, Json> = span
        .attributes
        .iter()
        .map(|kv| (kv.key.as_str().to_owned(), value_json(&kv.value)))
        .collect();
    let events: Vec<Json> = span
        .events
        .iter()
        .map(|e| {
            let attributes: Map<String, Json> = e
                .attributes
                .iter()
                .map(|kv| (kv.key.as_str().to_owned(), value_json(&kv.value)))
                .collect();
            json!({"name": e.name, "offset_ms": offset(e.timestamp), "attributes": attributes})
        })
        .collect();
    let (status, message) = match &span.status {
        Status::Unset => ("unset", None),
        Status::Ok => ("ok", None),
        Status::Error { description } => ("error", Some(description.to_string())),
    };
    let parent = (span.parent_span_id != SpanId::INVALID).then(|| span.parent_span_id.to_string());
    json!({
        "span_id": span.span_context.span_id().to_string(),
        "parent_span_id": parent,
        "name": span.name,
        "kind": kind_name(&span.span_kind),
        "start_ms": offset(span.start_time),
        "duration_ms": ms(span.end_time.duration_since(span.start_time).unwrap_or_default()),
        "status": status,
        "status_message": message,
        "attributes": attributes,
        "events": events,
    })
}

fn kind_name(kind: &SpanKind) -> &'static str {
    match kind {
        SpanKind::Server => "server",
        SpanKind::Client => "client",
        SpanKind::Producer => "producer",
        SpanKind::Consumer => "consumer",
        SpanKind::Internal => "internal",
    }
}

fn value_json(v: &Value) -> Json {
    match v {
        Value::Bool(b) => Json::Bool(*b),
        Value::I64(i) => Json::from(*i),
        Value::F64(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
        Value::String(s) => Json::String(s.as_str().to_owned()),
        Value::Array(Array::Bool(a)) => Json::from(a.clone()),
        Value::Array(Array::I64(a)) => Json::from(a.clone()),
        Value::Array(Array::F64(a)) => Json::Array(
            a.iter()
                .map(|f| serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number))
                .collect(),
        ),
        Value::Array(Array::String(a)) => Json::Array(
            a.iter()
                .map(|s| Json::String(s.as_str().to_owned()))
                .collect(),
        ),
        // Value and Array are non-exhaustive: a future kind is shown as text.
        #[allow(unreachable_patterns)]
        other => Json::String(other.to_string()),
    }
}

fn seconds_to_ms(v: &Value) -> Option<Json> {
    let s = match v {
        Value::F64(f) => *f,
        Value::I64(i) => *i as f64,
        _ => return None,
    };
    serde_json::Number::from_f64(s * 1000.0).map(Json::Number)
}

fn ms(d: Duration) -> f64 {
    // Three decimals (microseconds) are plenty for a human and keep the JSON short.
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::{Ending, HttpFacts, UpstreamAddress, UpstreamCall};
    use opentelemetry::KeyValue;
    use opentelemetry::trace::{SpanContext, TraceFlags, TraceId, TraceState};
    use std::time::Instant;

    fn ids(trace: u128) -> TraceIds {
        TraceIds {
            trace_id: TraceId::from(trace),
            server_span_id: SpanId::from(1),
            client_span_id: SpanId::from(2),
            parent_span_id: SpanId::INVALID,
            parent_remote: false,
            flags: TraceFlags::SAMPLED,
            state: TraceState::default(),
            sampled: true,
        }
    }

    /// A forwarded request that took `dur_ms` and answered `status`.
    fn request(ring: &RecentTraces, trace: u128, dur_ms: u64, status: u16) {
        let http = HttpFacts::from_request(
            &http::Method::POST,
            &"/v1/chat/completions".parse().expect("uri"),
            http::Version::HTTP_11,
            &http::HeaderMap::new(),
            "127.0.0.1:1".parse().expect("addr"),
            "http",
        );
        let mut r = Record::new(None, http);
        let start = (
            Instant::now(),
            UNIX_EPOCH + Duration::from_millis(1_700_000_000_000),
        );
        r.upstream = Some(UpstreamCall {
            url: "http://up/v1/chat/completions".into(),
            status: http::StatusCode::from_u16(status).ok(),
            version: None,
            address: UpstreamAddress {
                host: "up".into(),
                port: Some(80),
            },
        });
        r.respond(http::StatusCode::from_u16(status).expect("status"), None);
        r.end(Ending::Complete);
        r.times.start = start;
        r.times.upstream_start = Some((start.0, start.1 + Duration::from_millis(1)));
        r.times.end = (
            start.0 + Duration::from_millis(dur_ms),
            start.1 + Duration::from_millis(dur_ms),
        );
        ring.record(ids(trace), r, None);
    }

    fn feedback_span(trace: u128, parent: u64, comment: &str) -> SpanData {
        let context = SpanContext::new(
            TraceId::from(trace),
            SpanId::from(99),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        let now = SystemTime::now();
        super::super::spans::span(
            context,
            (SpanId::from(parent), true),
            SpanKind::Internal,
            "ragscope.feedback",
            (now, now),
            vec![KeyValue::new("comment", comment.to_owned())],
        )
    }

    #[test]
    fn keeps_the_newest_requests_with_their_children() {
        let ring = RecentTraces::new(2);
        request(&ring, 1, 10, 200);
        request(&ring, 2, 900, 502);
        request(&ring, 3, 20, 200);
        let all = ring.snapshot(&TraceFilter::default());
        let ids: Vec<String> = all.iter().map(|t| t.trace_id()).collect();
        assert_eq!(ids, [format!("{:032x}", 3), format!("{:032x}", 2)]);

        let s = all[1].summary();
        assert_eq!(s["method"], "POST");
        assert_eq!(s["status"], 502);
        assert_eq!(s["duration_ms"], 900.0);
        assert_eq!(s["error"], true);
        assert_eq!(s["error_type"], "502");
        let d = all[1].detail();
        assert_eq!(d["spans"][1]["kind"], "client");
        assert_eq!(d["spans"][1]["start_ms"], 1.0);
        assert_eq!(d["spans"][1]["parent_span_id"], format!("{:016x}", 1));
        assert_eq!(all[0].summary()["error"], false);
    }

    #[test]
    fn filters() {
        let ring = RecentTraces::new(10);
        request(&ring, 1, 10, 200);
        request(&ring, 2, 900, 502);
        request(&ring, 3, 600, 200);
        let count = |f: TraceFilter| ring.snapshot(&f).len();
        assert_eq!(
            count(TraceFilter {
                errors: true,
                ..Default::default()
            }),
            1
        );
        let slow = Some(Duration::from_millis(500));
        assert_eq!(
            count(TraceFilter {
                slow,
                ..Default::default()
            }),
            2
        );
        assert_eq!(
            count(TraceFilter {
                slow,
                errors: true,
                ..Default::default()
            }),
            1
        );
        assert_eq!(
            count(TraceFilter {
                limit: Some(1),
                ..Default::default()
            }),
            1
        );
        let one = TraceFilter {
            trace_id: Some(format!("{:032x}", 3)),
            ..Default::default()
        };
        assert_eq!(count(one), 1);
    }

    #[test]
    fn feedback_is_bounded_per_request_and_in_total() {
        let ring = RecentTraces::new(1000);
        request(&ring, 1, 10, 200);
        let comment = "x".repeat(2048);
        for _ in 0..100 {
            ring.feedback(feedback_span(1, 1, &comment));
        }
        let d = ring.snapshot(&TraceFilter::default())[0].detail();
        let spans = d["spans"].as_array().expect("spans");
        // The server span, the client span, and the capped feedback.
        assert_eq!(spans.len(), 2 + MAX_FEEDBACK_SPANS);
        assert_eq!(d["feedback_spans_dropped"], 100 - MAX_FEEDBACK_SPANS as u64);
        // Unknown parents are not kept at all.
        assert!(!ring.feedback(feedback_span(1, 7, "x")));
        assert!(!ring.feedback(feedback_span(5, 1, "x")));

        // Across many requests the byte cap holds.
        for trace in 2..600 {
            request(&ring, trace, 10, 200);
            for _ in 0..MAX_FEEDBACK_SPANS {
                ring.feedback(feedback_span(trace, 1, &comment));
            }
        }
        assert!(ring.feedback_bytes() <= MAX_FEEDBACK_BYTES);
        assert!(ring.feedback_bytes() > MAX_FEEDBACK_BYTES / 2);
        // Evicting the requests frees their feedback's share.
        for trace in 1000..2000 {
            request(&ring, trace, 10, 200);
        }
        assert_eq!(ring.feedback_bytes(), 0);
    }
}
