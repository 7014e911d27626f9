//! Counting what telemetry drops: the SDK's batch processor drops spans silently when its queue
//! is full (its own counter is behind an experimental feature), so we gate the queue ourselves.
//!
//! A gate in front of the batch processor counts spans handed in; a wrapper around the exporter
//! counts spans taken out. When the difference reaches the queue size, the gate drops the span
//! itself and counts it, so the processor's queue can never overflow unseen. Batches the exporter
//! fails to deliver (collector down, timeout) are counted too.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::Counter;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};

/// Builds the gate and the counting exporter that share one in-flight count.
pub(super) fn counting<E: SpanExporter>(
    exporter: E,
    max_queue: usize,
    dropped: Counter<u64>,
) -> (Gate, CountingExporter<E>) {
    let pending = Arc::new(AtomicUsize::new(0));
    (
        Gate {
            pending: pending.clone(),
            max_queue,
            dropped: dropped.clone(),
        },
        CountingExporter {
            inner: exporter,
            pending,
            dropped,
        },
    )
}

/// The gate before the batch processor is wrapped around it.
#[derive(Debug)]
pub(super) struct Gate {
    pending: Arc<AtomicUsize>,
    max_queue: usize,
    dropped: Counter<u64>,
}

impl Gate {
    pub(super) fn wrap<P: SpanProcessor>(self, inner: P) -> GatedProcessor<P> {
        GatedProcessor { gate: self, inner }
    }
}

/// A span processor that refuses (and counts) spans once `max_queue` are waiting for export.
#[derive(Debug)]
pub(super) struct GatedProcessor<P> {
    gate: Gate,
    inner: P,
}

impl<P: SpanProcessor> SpanProcessor for GatedProcessor<P> {
    fn on_start(&self, span: &mut Span, cx: &opentelemetry::Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        let g = &self.gate;
        if g.pending.fetch_add(1, Ordering::AcqRel) >= g.max_queue {
            g.pending.fetch_sub(1, Ordering::AcqRel);
            g.dropped.add(1, &[KeyValue::new("reason", "queue_full")]);
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// An exporter that releases queue places as batches leave and counts failed batches.
#[derive(Debug)]
pub(super) struct CountingExporter<E> {
    inner: E,
    pending: Arc<AtomicUsize>,
    dropped: Counter<u64>,
}

impl<E: SpanExporter> SpanExporter for CountingExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        self.pending.fetch_sub(n, Ordering::AcqRel);
        let result = self.inner.export(batch).await;
        if result.is_err() {
            self.dropped
                .add(n as u64, &[KeyValue::new("reason", "export_failed")]);
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}
