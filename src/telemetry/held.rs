//! Dropped traces held in memory for late evidence: low feedback arriving after the exchange
//! ended exports the trace. Bounded by a trace count and a byte estimate; past either bound the
//! oldest trace is evicted (and counted). Gauges show what is held.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use opentelemetry::Value;
use opentelemetry::metrics::{Counter, Meter};
use opentelemetry::trace::TraceId;
use opentelemetry_sdk::trace::{SpanData, SpanProcessor};

use super::sampling::REASON;
use super::spans::estimate;

/// The held traces, oldest first.
pub(super) struct Held {
    max_traces: usize,
    max_bytes: u64,
    inner: Arc<Mutex<Inner>>,
    /// The export processor released traces go to; set once when the pipeline is built.
    exporter: OnceLock<Arc<dyn SpanProcessor>>,
    evicted: Counter<u64>,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held")
            .field("max_traces", &self.max_traces)
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Inner {
    traces: HashMap<TraceId, Entry>,
    /// Arrival order; a trace appears once, when its first span is held.
    order: VecDeque<TraceId>,
    bytes: u64,
    totals: Arc<Totals>,
}

struct Entry {
    spans: Vec<SpanData>,
    bytes: u64,
}

/// Mirrors of the held totals the gauges read without taking the lock.
#[derive(Default)]
struct Totals {
    traces: AtomicU64,
    bytes: AtomicU64,
}

impl Held {
    /// An empty store bounded by `max_traces` and `max_bytes`, its gauges on `meter`.
    pub(super) fn new(max_traces: usize, max_bytes: u64, meter: &Meter) -> Arc<Held> {
        let totals = Arc::new(Totals::default());
        let t = totals.clone();
        meter
            .u64_observable_gauge("ragscope.tail_sampling.held.traces")
            .with_unit("{trace}")
            .with_description("Dropped traces held in memory for late low feedback")
            .with_callback(move |o| o.observe(t.traces.load(Ordering::Relaxed), &[]))
            .build();
        let t = totals.clone();
        meter
            .u64_observable_gauge("ragscope.tail_sampling.held.size")
            .with_unit("By")
            .with_description("Estimated bytes of the held dropped traces")
            .with_callback(move |o| o.observe(t.bytes.load(Ordering::Relaxed), &[]))
            .build();
        Arc::new(Held {
            max_traces,
            max_bytes,
            inner: Arc::new(Mutex::new(Inner {
                totals,
                ..Inner::default()
            })),
            exporter: OnceLock::new(),
            evicted: meter
                .u64_counter("ragscope.tail_sampling.held.evicted")
                .with_unit("{trace}")
                .with_description("Held dropped traces evicted to stay within the bounds")
                .build(),
        })
    }

    /// The export processor released traces go to; the first one given stays.
    pub(super) fn set_exporter(&self, exporter: &Arc<dyn SpanProcessor>) {
        self.exporter.get_or_init(|| exporter.clone());
    }

    /// Holds a span of a dropped trace, evicting the oldest traces past the bounds.
    pub(super) fn hold(&self, span: SpanData) {
        let size = estimate(&span);
        let trace_id = span.span_context.trace_id();
        let mut inner = self.lock();
        let mut evicted = 0;
        if size > self.max_bytes {
            // Larger than the whole store: holding it would evict everything else.
            evicted += 1;
        } else {
            match inner.traces.get_mut(&trace_id) {
                Some(entry) => {
                    entry.bytes += size;
                    entry.spans.push(span);
                }
                None => {
                    inner.traces.insert(
                        trace_id,
                        Entry {
                            spans: vec![span],
                            bytes: size,
                        },
                    );
                    inner.order.push_back(trace_id);
                }
            }
            inner.bytes += size;
            while inner.traces.len() > self.max_traces || inner.bytes > self.max_bytes {
                let Some(oldest) = inner.order.pop_front() else {
                    break;
                };
                if let Some(entry) = inner.traces.remove(&oldest) {
                    inner.bytes -= entry.bytes;
                    evicted += 1;
                }
            }
        }
        inner.publish();
        drop(inner);
        if evicted > 0 {
            self.evicted.add(evicted, &[]);
        }
    }

    /// Adds `span` to its trace when that trace is held; otherwise gives it back.
    pub(super) fn join(&self, span: SpanData) -> Option<SpanData> {
        let trace_id = span.span_context.trace_id();
        if !self.lock().traces.contains_key(&trace_id) {
            return Some(span);
        }
        self.hold(span);
        None
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Exports a held trace, its reason now `low_feedback`; false when it is not held.
    pub(super) fn release(&self, trace_id: TraceId) -> bool {
        let entry = {
            let mut inner = self.lock();
            let Some(entry) = inner.traces.remove(&trace_id) else {
                return false;
            };
            inner.bytes -= entry.bytes;
            inner.order.retain(|id| *id != trace_id);
            inner.publish();
            entry
        };
        let Some(exporter) = self.exporter.get() else {
            return false;
        };
        for mut span in entry.spans {
            for kv in span.attributes.iter_mut().take(2) {
                if kv.key.as_str() == REASON {
                    kv.value = Value::from("low_feedback");
                }
            }
            exporter.on_end(span);
        }
        true
    }
}

impl Inner {
    fn publish(&self) {
        self.totals
            .traces
            .store(self.traces.len() as u64, Ordering::Relaxed);
        self.totals.bytes.store(self.bytes, Ordering::Relaxed);
    }
}
