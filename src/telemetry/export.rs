//! The span export processor: spans collect in one queue and leave in whole batches from an
//! export thread of our own, replacing the SDK's `BatchSpanProcessor`.
//!
//! Every span reaches the export path on the telemetry thread, a drain's worth at a time. The
//! SDK's processor moved each span through a channel of its own (a send and a receive per span,
//! plus the bookkeeping of its batch trigger); here a span is pushed onto a `Vec` under an
//! uncontended lock, and the export thread takes the whole `Vec` at once when a batch is full
//! (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`), when the schedule delay (`OTEL_BSP_SCHEDULE_DELAY`) is up,
//! or on flush and shutdown, and hands the exporter batches of at most the batch size.
//!
//! What it drops, it counts (`ragscope.telemetry.spans.dropped`): spans refused because
//! `OTEL_BSP_MAX_QUEUE_SIZE` are waiting (`reason=queue_full`, never a wait on the data path)
//! and batches the exporter failed to deliver (`reason=export_failed`). Shutdown exports what is
//! queued and stops the exporter within its timeout, whatever the collector does.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use opentelemetry::metrics::Counter;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};

/// How long `force_flush` waits for the export thread (the SDK's processor waits as long).
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// The batch sizes and delay (`OTEL_BSP_*`).
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// Spans waiting at most; more are dropped and counted.
    pub(super) max_queue: usize,
    /// Spans per export call at most; a full batch wakes the export thread.
    pub(super) max_batch: usize,
    /// How long a span waits at most when batches do not fill.
    pub(super) delay: Duration,
}

/// The processor the exchange's spans are handed to; the exporter runs on its own thread.
#[derive(Debug)]
pub(super) struct BatchExport {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Wakes the export thread (a full batch, flush, shutdown).
    wake: Condvar,
    /// Wakes whoever waits for a flush or shutdown to be done.
    done: Condvar,
    limits: Limits,
    dropped: Counter<u64>,
}

#[derive(Debug, Default)]
struct State {
    queued: Vec<SpanData>,
    /// Flushes asked for and flushes done: a flush is done when the export thread has exported
    /// everything queued before it was asked.
    flush_asked: u64,
    flush_done: u64,
    /// Set by shutdown, with the exporter's shutdown budget.
    shutdown: Option<Duration>,
    /// The export thread has stopped (after shutdown, or it could not start).
    stopped: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl BatchExport {
    /// Starts the export thread around `exporter`, told `resource` first.
    pub(super) fn start<E: SpanExporter + 'static>(
        mut exporter: E,
        resource: &Resource,
        limits: Limits,
        dropped: Counter<u64>,
    ) -> BatchExport {
        exporter.set_resource(resource);
        let limits = Limits {
            max_queue: limits.max_queue.max(1),
            max_batch: limits.max_batch.clamp(1, limits.max_queue.max(1)),
            ..limits
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queued: Vec::with_capacity(limits.max_batch),
                ..State::default()
            }),
            wake: Condvar::new(),
            done: Condvar::new(),
            limits,
            dropped,
        });
        let for_thread = shared.clone();
        let thread = thread::Builder::new()
            .name("ragscope-export".to_owned())
            .spawn(move || run(&for_thread, &exporter));
        let thread = match thread {
            Ok(handle) => Some(handle),
            Err(e) => {
                tracing::warn!(error = %e, "no span export thread: spans are not exported");
                shared.lock().stopped = true;
                None
            }
        };
        BatchExport {
            shared,
            thread: Mutex::new(thread),
        }
    }

    /// Waits until the export thread has answered flush `asked` (or stopped), within `timeout`.
    fn wait_done(&self, asked: u64, timeout: Duration) -> OTelSdkResult {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        while state.flush_done < asked && !state.stopped {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(OTelSdkError::Timeout(timeout));
            }
            state = match self.shared.done.wait_timeout(state, left) {
                Ok((s, _)) => s,
                Err(p) => p.into_inner().0,
            };
        }
        Ok(())
    }
}

/// The export thread: waits for a full batch, the delay, a flush or shutdown, then exports
/// everything queued in batches of at most `max_batch`.
fn run<E: SpanExporter>(shared: &Shared, exporter: &E) {
    // The exporter's own telemetry (its HTTP client's) must not feed back into ours.
    let _suppress = opentelemetry::Context::enter_telemetry_suppressed_scope();
    let limits = shared.limits;
    // The thread's half of the queue: swapped with the queue's, so its capacity is reused.
    let mut taken: Vec<SpanData> = Vec::with_capacity(limits.max_batch);
    let mut last_export = Instant::now();
    loop {
        let mut state = shared.lock();
        loop {
            if state.shutdown.is_some()
                || state.flush_asked > state.flush_done
                || state.queued.len() >= limits.max_batch
            {
                break;
            }
            let left = limits.delay.saturating_sub(last_export.elapsed());
            if left.is_zero() {
                break;
            }
            state = match shared.wake.wait_timeout(state, left) {
                Ok((s, _)) => s,
                Err(p) => p.into_inner().0,
            };
        }
        std::mem::swap(&mut state.queued, &mut taken);
        let flush = state.flush_asked;
        let shutdown = state.shutdown;
        drop(state);

        last_export = Instant::now();
        while !taken.is_empty() {
            let n = taken.len().min(limits.max_batch);
            let batch: Vec<SpanData> = if n == taken.len() {
                std::mem::replace(&mut taken, Vec::with_capacity(limits.max_batch))
            } else {
                taken.drain(..n).collect()
            };
            if let Err(e) = futures_executor::block_on(exporter.export(batch)) {
                // Where and as the SDK's processor logged it, so the log throttle still applies
                // (telemetry/logging.rs).
                tracing::error!(
                    name: "BatchSpanProcessor.ExportError",
                    target: "opentelemetry_sdk",
                    error = %e
                );
                shared
                    .dropped
                    .add(n as u64, &[KeyValue::new("reason", "export_failed")]);
            }
        }

        if let Some(timeout) = shutdown {
            if let Err(e) = exporter.shutdown_with_timeout(timeout) {
                tracing::debug!(error = %e, "span exporter did not shut down cleanly");
            }
            let mut state = shared.lock();
            state.flush_done = state.flush_asked;
            state.stopped = true;
            drop(state);
            shared.done.notify_all();
            return;
        }
        let mut state = shared.lock();
        if state.flush_done < flush {
            state.flush_done = flush;
            drop(state);
            shared.done.notify_all();
        }
    }
}

impl SpanProcessor for BatchExport {
    fn on_start(&self, _span: &mut Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        let shared = &self.shared;
        let mut state = shared.lock();
        if state.stopped || state.shutdown.is_some() {
            // After shutdown nothing is exported any more (as with the SDK's processor).
            return;
        }
        if state.queued.len() >= shared.limits.max_queue {
            drop(state);
            shared
                .dropped
                .add(1, &[KeyValue::new("reason", "queue_full")]);
            return;
        }
        state.queued.push(span);
        let full = state.queued.len() == shared.limits.max_batch;
        drop(state);
        if full {
            // Once per batch, not per span.
            shared.wake.notify_one();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        let asked = {
            let mut state = self.shared.lock();
            if state.stopped {
                return Ok(());
            }
            state.flush_asked += 1;
            state.flush_asked
        };
        self.shared.wake.notify_one();
        self.wait_done(asked, FLUSH_TIMEOUT)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        {
            let mut state = self.shared.lock();
            if state.shutdown.is_some() || state.stopped {
                return Ok(());
            }
            state.shutdown = Some(timeout);
        }
        self.shared.wake.notify_one();
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        while !state.stopped {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                // The thread goes on alone; the process does not wait for it.
                return Err(OTelSdkError::Timeout(timeout));
            }
            state = match self.shared.done.wait_timeout(state, left) {
                Ok((s, _)) => s,
                Err(p) => p.into_inner().0,
            };
        }
        drop(state);
        let handle = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
        Ok(())
    }

    fn set_resource(&mut self, _resource: &Resource) {
        // The exporter was told the resource before its thread started (`start`).
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::metrics::MeterProvider as _;

    /// Keeps the size of every batch it is handed.
    #[derive(Debug, Clone, Default)]
    struct Sizes(Arc<Mutex<Vec<usize>>>);

    impl SpanExporter for Sizes {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0.lock().expect("sizes").push(batch.len());
            Ok(())
        }
    }

    fn span() -> SpanData {
        use opentelemetry::trace::{SpanContext, SpanId, SpanKind, TraceFlags, TraceId};
        let now = std::time::SystemTime::now();
        super::super::spans::span(
            SpanContext::new(
                TraceId::from(1),
                SpanId::from(1),
                TraceFlags::SAMPLED,
                false,
                Default::default(),
            ),
            (SpanId::INVALID, false),
            SpanKind::Server,
            "GET",
            (now, now),
            Vec::new(),
        )
    }

    #[test]
    fn batches_stay_within_the_batch_size_and_shutdown_exports_the_rest() {
        let sizes = Sizes::default();
        let dropped = opentelemetry_sdk::metrics::SdkMeterProvider::default()
            .meter("test")
            .u64_counter("dropped")
            .build();
        let limits = Limits {
            max_queue: 100,
            max_batch: 2,
            // Long: only full batches, flush and shutdown export here.
            delay: Duration::from_secs(3600),
        };
        let export =
            BatchExport::start(sizes.clone(), &Resource::builder().build(), limits, dropped);
        for _ in 0..5 {
            export.on_end(span());
        }
        export.force_flush().expect("flush");
        let total = |s: &Sizes| s.0.lock().expect("sizes").iter().sum::<usize>();
        assert_eq!(total(&sizes), 5);
        assert!(sizes.0.lock().expect("sizes").iter().all(|&n| n <= 2));
        export.on_end(span());
        export
            .shutdown_with_timeout(Duration::from_secs(5))
            .expect("shutdown");
        assert_eq!(total(&sizes), 6);
        // After shutdown nothing more is taken.
        export.on_end(span());
        assert_eq!(total(&sizes), 6);
    }
}
