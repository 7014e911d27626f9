//! One metric aggregation for every reader that can share it. The SDK builds one pipeline per
//! registered reader and aggregates every measurement once per pipeline, so `/metrics` (pull)
//! beside OTLP (push) used to cost every measurement twice. [`Shared`] is registered once and
//! hands its single pipeline to each reader it wraps: the Prometheus reader collects from it on
//! a scrape, the periodic reader on its timer. Only cumulative readers can share (a collect never
//! resets cumulative state); a reader asking for delta gets a pipeline of its own.

use std::sync::Weak;
use std::time::Duration;

use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::reader::MetricReader;
use opentelemetry_sdk::metrics::{InstrumentKind, Pipeline, Temporality};

/// Readers that read one pipeline (or a single reader, passed through).
#[derive(Debug)]
pub(super) struct Shared {
    readers: Vec<Box<dyn MetricReader>>,
}

const KINDS: [InstrumentKind; 7] = [
    InstrumentKind::Counter,
    InstrumentKind::UpDownCounter,
    InstrumentKind::Histogram,
    InstrumentKind::Gauge,
    InstrumentKind::ObservableCounter,
    InstrumentKind::ObservableUpDownCounter,
    InstrumentKind::ObservableGauge,
];

/// Whether `reader` wants cumulative data for every kind of instrument.
fn cumulative(reader: &dyn MetricReader) -> bool {
    KINDS
        .into_iter()
        .all(|k| reader.temporality(k) == Temporality::Cumulative)
}

/// Groups `readers` into as few pipelines as their temporalities allow: every cumulative reader
/// in one [`Shared`], each other reader alone.
pub(super) fn group(readers: Vec<Box<dyn MetricReader>>) -> Vec<Shared> {
    let (shared, alone): (Vec<_>, Vec<_>) = readers.into_iter().partition(|r| cumulative(&**r));
    let mut groups: Vec<Shared> = alone
        .into_iter()
        .map(|r| Shared { readers: vec![r] })
        .collect();
    if !shared.is_empty() {
        groups.push(Shared { readers: shared });
    }
    groups
}

fn all(results: impl Iterator<Item = OTelSdkResult>) -> OTelSdkResult {
    // Every reader is told (collected first), whatever the first one said; the first error wins.
    let results: Vec<OTelSdkResult> = results.collect();
    results.into_iter().find(Result::is_err).unwrap_or(Ok(()))
}

impl MetricReader for Shared {
    fn register_pipeline(&self, pipeline: Weak<Pipeline>) {
        for r in &self.readers {
            r.register_pipeline(pipeline.clone());
        }
    }

    fn collect(&self, rm: &mut ResourceMetrics) -> OTelSdkResult {
        // Every reader reads the same data; the first one's view is as good as any.
        match self.readers.first() {
            Some(r) => r.collect(rm),
            None => Ok(()),
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        all(self.readers.iter().map(|r| r.force_flush()))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        all(self
            .readers
            .iter()
            .map(|r| r.shutdown_with_timeout(timeout)))
    }

    fn temporality(&self, kind: InstrumentKind) -> Temporality {
        match self.readers.as_slice() {
            [one] => one.temporality(kind),
            // A group of several is cumulative by construction.
            _ => Temporality::Cumulative,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
    use opentelemetry_sdk::metrics::{ManualReader, SdkMeterProvider};
    use std::sync::Arc;

    /// A manual reader the test keeps a handle on after the provider took it.
    #[derive(Debug, Clone)]
    struct Probe(Arc<ManualReader>);

    impl MetricReader for Probe {
        fn register_pipeline(&self, pipeline: Weak<Pipeline>) {
            self.0.register_pipeline(pipeline)
        }
        fn collect(&self, rm: &mut ResourceMetrics) -> OTelSdkResult {
            self.0.collect(rm)
        }
        fn force_flush(&self) -> OTelSdkResult {
            self.0.force_flush()
        }
        fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
            self.0.shutdown_with_timeout(timeout)
        }
        fn temporality(&self, kind: InstrumentKind) -> Temporality {
            self.0.temporality(kind)
        }
    }

    fn probe(temporality: Temporality) -> Probe {
        Probe(Arc::new(
            ManualReader::builder()
                .with_temporality(temporality)
                .build(),
        ))
    }

    /// The counter's total as `reader` sees it.
    fn total(reader: &Probe) -> u64 {
        let mut rm = ResourceMetrics::default();
        reader.collect(&mut rm).expect("collect");
        rm.scope_metrics()
            .flat_map(|s| s.metrics())
            .filter(|m| m.name() == "requests")
            .map(|m| match m.data() {
                AggregatedMetrics::U64(MetricData::Sum(sum)) => {
                    sum.data_points().map(|p| p.value()).sum::<u64>()
                }
                other => panic!("unexpected data {other:?}"),
            })
            .sum::<u64>()
    }

    #[test]
    fn cumulative_readers_share_one_pipeline_and_delta_gets_its_own() {
        let (pull, push, delta) = (
            probe(Temporality::Cumulative),
            probe(Temporality::Cumulative),
            probe(Temporality::Delta),
        );
        let groups = group(vec![
            Box::new(pull.clone()),
            Box::new(push.clone()),
            Box::new(delta.clone()),
        ]);
        assert_eq!(groups.len(), 2, "the cumulative pair shares one pipeline");
        let mut builder = SdkMeterProvider::builder();
        for g in groups {
            builder = builder.with_reader(g);
        }
        let provider = builder.build();
        let counter = provider.meter("test").u64_counter("requests").build();
        counter.add(3, &[]);
        // Both cumulative readers read the same aggregate, and reading it resets nothing.
        assert_eq!(total(&pull), 3);
        assert_eq!(total(&push), 3);
        assert_eq!(total(&pull), 3);
        // The delta reader has its own pipeline: it sees the 3 once.
        assert_eq!(total(&delta), 3);
        counter.add(2, &[]);
        assert_eq!(total(&delta), 2);
        assert_eq!(total(&push), 5);
    }
}
