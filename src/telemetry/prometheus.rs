//! The Prometheus pull side: every OpenTelemetry instrument of ragscope plus the process's own
//! metrics (CPU seconds, resident memory, open file descriptors) in the text exposition format,
//! for the admin listener's `/metrics`.
//!
//! The OTel → Prometheus conversion (names with unit suffixes such as `_seconds` and `_bytes`,
//! `_total` for monotonic counters, histograms as `_bucket`/`_sum`/`_count`, label escaping) is
//! done by `opentelemetry-prometheus`, an extra reader on the same meter provider: OTLP push keeps
//! running beside it, and a scrape never touches the data path (it reads the aggregates).

use prometheus::{Encoder as _, Registry, TextEncoder};

/// Could not render the metrics for a scrape.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    /// The registry could not be gathered or encoded.
    #[error("cannot encode the Prometheus metrics: {0}")]
    Encode(#[from] prometheus::Error),
}

/// The registry `/metrics` renders.
#[derive(Debug, Clone)]
pub struct PrometheusEndpoint {
    registry: Registry,
}

/// The `Content-Type` of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

impl PrometheusEndpoint {
    /// A registry with the process collector, and the metric reader that feeds it from the
    /// meter provider. `None` when the reader cannot be built (then `/metrics` is off, and the
    /// reason is logged by the caller).
    pub(super) fn new() -> Result<
        (
            PrometheusEndpoint,
            opentelemetry_prometheus::PrometheusExporter,
        ),
        opentelemetry_sdk::error::OTelSdkError,
    > {
        let registry = Registry::new();
        // CPU time, resident/virtual memory, open and max fds, threads, start time, from /proc.
        // Registration only fails on a duplicate name, which cannot happen in a fresh registry.
        if let Err(e) = registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        )) {
            tracing::warn!(error = %e, "process metrics are not available on /metrics");
        }
        let reader = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .build()?;
        Ok((PrometheusEndpoint { registry }, reader))
    }

    /// The current metrics in the text exposition format 0.0.4.
    pub fn render(&self) -> Result<Vec<u8>, ScrapeError> {
        let families = self.registry.gather();
        let mut out = Vec::with_capacity(16 * 1024);
        TextEncoder::new().encode(&families, &mut out)?;
        Ok(out)
    }
}
