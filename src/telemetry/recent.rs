//! Recent requests in bounded memory, for the admin listener's `/traces` view: a span processor
//! that keeps each finished SERVER span with the spans under it, the newest
//! `RAGSCOPE_RECENT_TRACES` of them, whether or not a collector is configured.
//!
//! Cheap on the data path: ending a span moves its already-built `SpanData` into a ring under a
//! mutex held for a push and maybe a pop; all formatting happens when someone reads the view.
//! The data are the spans as exported, so they hold no more than the collector gets (no secrets,
//! per the telemetry contract).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanId, SpanKind, Status};
use opentelemetry::{Array, Context, Value};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanProcessor};
use serde_json::{Map, Value as Json, json};

/// Child spans waiting for their SERVER span to end. Children end before their parent, so this
/// holds a handful of spans per request in flight; the cap only matters for spans whose parent
/// never ends here (a late span parented to an already recorded request), which are dropped.
const MAX_PENDING_PARENTS: usize = 4096;

/// One request: its SERVER span and every span recorded under it.
#[derive(Debug)]
pub struct RecentTrace {
    root: SpanData,
    children: Vec<SpanData>,
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
    /// Ended spans by parent span id, until the parent's request is recorded.
    pending: HashMap<SpanId, Vec<SpanData>>,
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

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves a consistent ring (push/pop are atomic for us).
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, span: SpanData) {
        let mut inner = self.lock();
        if span.span_kind != SpanKind::Server {
            if inner.pending.len() >= MAX_PENDING_PARENTS
                && !inner.pending.contains_key(&span.parent_span_id)
            {
                inner.pending.clear();
            }
            inner
                .pending
                .entry(span.parent_span_id)
                .or_default()
                .push(span);
            return;
        }
        let mut children = Vec::new();
        let mut parents = vec![span.span_context.span_id()];
        while let Some(parent) = parents.pop() {
            if let Some(spans) = inner.pending.remove(&parent) {
                parents.extend(spans.iter().map(|s| s.span_context.span_id()));
                children.extend(spans);
            }
        }
        children.sort_by_key(|s| s.start_time);
        if inner.ring.len() >= self.capacity {
            inner.ring.pop_front();
        }
        inner.ring.push_back(Arc::new(RecentTrace {
            root: span,
            children,
        }));
    }

    /// The requests matching `filter`, newest first.
    pub fn snapshot(&self, filter: &TraceFilter) -> Vec<Arc<RecentTrace>> {
        // Cloning the Arcs keeps the lock short; filtering happens outside it.
        let all: Vec<Arc<RecentTrace>> = self.lock().ring.iter().rev().cloned().collect();
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

    /// The span processor that fills this ring.
    pub fn processor(self: &Arc<Self>) -> RingProcessor {
        RingProcessor(self.clone())
    }
}

/// Records every ended span into a [`RecentTraces`] ring.
#[derive(Debug)]
pub struct RingProcessor(Arc<RecentTraces>);

impl SpanProcessor for RingProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if span.span_context.is_sampled() {
            self.0.record(span);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

impl RecentTrace {
    /// The trace id, lowercase hex.
    pub fn trace_id(&self) -> String {
        self.root.span_context.trace_id().to_string()
    }

    /// From the first byte of the request to the last of the response.
    pub fn duration(&self) -> Duration {
        self.root
            .end_time
            .duration_since(self.root.start_time)
            .unwrap_or_default()
    }

    /// A request failed when it has an `error.type` (proxy-made errors, upstream 5xx, broken
    /// streams) or its span status is Error.
    pub fn is_error(&self) -> bool {
        matches!(self.root.status, Status::Error { .. }) || attr(&self.root, "error.type").is_some()
    }

    /// An attribute of the request: the SERVER span's, else the first child's that has it (the
    /// GenAI attributes live on the upstream call's span).
    fn find(&self, key: &str) -> Option<&Value> {
        attr(&self.root, key).or_else(|| self.children.iter().find_map(|s| attr(s, key)))
    }

    /// The row of the list view.
    pub fn summary(&self) -> Json {
        let method = self
            .find("http.request.method_original")
            .or_else(|| self.find("http.request.method"));
        let model = self
            .find("gen_ai.response.model")
            .or_else(|| self.find("gen_ai.request.model"));
        json!({
            "trace_id": self.trace_id(),
            "span_id": self.root.span_context.span_id().to_string(),
            "time": unix_ms(self.root.start_time),
            "method": method.map(value_json),
            "path": self.find("url.path").map(value_json),
            "status": self.find("http.response.status_code").map(value_json),
            "duration_ms": ms(self.duration()),
            "error": self.is_error(),
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

    /// The summary plus every span, with start offsets relative to the request's start.
    pub fn detail(&self) -> Json {
        let mut summary = self.summary();
        let origin = self.root.start_time;
        let spans: Vec<Json> = std::iter::once(&self.root)
            .chain(self.children.iter())
            .map(|s| span_json(s, origin))
            .collect();
        if let Json::Object(map) = &mut summary {
            map.insert("spans".to_owned(), Json::Array(spans));
        }
        summary
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
    use opentelemetry::KeyValue;
    use opentelemetry::trace::{SpanContext, TraceFlags, TraceId, TraceState};
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};

    fn span(
        trace: u128,
        id: u64,
        parent: u64,
        kind: SpanKind,
        start_ms: u64,
        dur_ms: u64,
        attributes: Vec<KeyValue>,
    ) -> SpanData {
        let start = UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + start_ms);
        SpanData {
            span_context: SpanContext::new(
                TraceId::from(trace),
                SpanId::from(id),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: SpanId::from(parent),
            parent_span_is_remote: false,
            span_kind: kind,
            name: "GET".into(),
            start_time: start,
            end_time: start + Duration::from_millis(dur_ms),
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: Default::default(),
        }
    }

    fn request(ring: &RecentTraces, trace: u128, dur_ms: u64, status: i64) {
        ring.record(span(
            trace,
            2,
            1,
            SpanKind::Client,
            1,
            dur_ms - 2,
            vec![
                KeyValue::new("gen_ai.request.model", "m-1"),
                KeyValue::new("gen_ai.usage.output_tokens", 7_i64),
                KeyValue::new("gen_ai.response.time_to_first_chunk", 0.25),
            ],
        ));
        let mut attrs = vec![
            KeyValue::new("http.request.method", "POST"),
            KeyValue::new("url.path", "/v1/chat/completions"),
            KeyValue::new("http.response.status_code", status),
        ];
        if status >= 500 {
            attrs.push(KeyValue::new("error.type", status.to_string()));
        }
        ring.record(span(trace, 1, 0, SpanKind::Server, 0, dur_ms, attrs));
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
        assert_eq!(all[0].children.len(), 1);
        assert!(ring.lock().pending.is_empty());

        let s = all[1].summary();
        assert_eq!(s["method"], "POST");
        assert_eq!(s["status"], 502);
        assert_eq!(s["model"], "m-1");
        assert_eq!(s["output_tokens"], 7);
        assert_eq!(s["ttft_ms"], 250.0);
        assert_eq!(s["duration_ms"], 900.0);
        assert_eq!(s["error"], true);
        let d = all[1].detail();
        assert_eq!(d["spans"][1]["kind"], "client");
        assert_eq!(d["spans"][1]["start_ms"], 1.0);
        assert_eq!(d["spans"][1]["parent_span_id"], format!("{:016x}", 1));
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
    fn orphans_are_bounded() {
        let ring = RecentTraces::new(10);
        for i in 0..(MAX_PENDING_PARENTS as u64 + 10) {
            ring.record(span(
                1,
                i + 10,
                i + 100_000,
                SpanKind::Internal,
                0,
                1,
                vec![],
            ));
        }
        assert!(ring.lock().pending.len() <= MAX_PENDING_PARENTS);
    }
}
