//! Telemetry: the OpenTelemetry tracer and meter providers, their OTLP exporters, logging, and
//! the per-request [`Exchange`] that turns one request/response pair into spans, metrics and an
//! access-log line.
//!
//! Export runs off the data path: spans go through a bounded batch queue on its own thread
//! (full queue = dropped and counted, never a wait), metrics are aggregated in memory and pushed
//! by a periodic reader thread. Shutdown is bounded by a timeout whatever the collector does.

pub mod access_log;
mod exchange;
mod export;
pub mod logging;
mod metrics;
pub mod prometheus;
pub mod recent;
mod settings;
pub mod trace_context;

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider,
};

pub use exchange::{Ending, Exchange, RequestFacts, UpstreamAttributes};
pub use metrics::Instruments;
pub use prometheus::PrometheusEndpoint;
pub use recent::{RecentTraces, TraceFilter};
pub use settings::{
    ExporterKind, LogFormat, OtlpProtocol, OtlpSignal, ParentRoot, Propagators, SamplerConfig,
    TelemetryConfig, read_log,
};

/// A telemetry pipeline that could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter rejected its configuration.
    #[error("cannot build the OTLP {signal} exporter for {endpoint}: {source}")]
    Exporter {
        /// `traces` or `metrics`.
        signal: &'static str,
        /// The endpoint it was built for.
        endpoint: String,
        /// What the exporter said.
        source: opentelemetry_otlp::ExporterBuildError,
    },
}

/// Builds the OTLP exporter of one signal. The span and metric exporter builders have the
/// same methods but share no trait, so one macro serves both.
macro_rules! otlp_exporter {
    ($exporter:ty, $signal:expr, $name:literal) => {{
        let signal: &OtlpSignal = $signal;
        let built = match signal.protocol {
            OtlpProtocol::Grpc => <$exporter>::builder()
                .with_tonic()
                .with_endpoint(signal.endpoint.clone())
                .with_timeout(signal.timeout)
                .with_metadata(grpc_metadata(&signal.headers))
                .build(),
            OtlpProtocol::HttpProtobuf => <$exporter>::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(signal.endpoint.clone())
                .with_timeout(signal.timeout)
                .with_headers(signal.headers.iter().cloned().collect())
                .build(),
        };
        built.map_err(|source| TelemetryError::Exporter {
            signal: $name,
            endpoint: signal.endpoint.clone(),
            source,
        })
    }};
}

/// The running telemetry pipeline, shared by every request.
#[derive(Debug)]
pub struct Telemetry {
    /// `None` when traces are off (`OTEL_SDK_DISABLED`, `OTEL_TRACES_EXPORTER=none`).
    tracer: Option<SdkTracer>,
    /// `None` when `OTEL_PROPAGATORS=none` or the SDK is disabled: trace headers pass untouched.
    propagator: Option<TextMapCompositePropagator>,
    instruments: Instruments,
    tracer_provider: Option<SdkTracerProvider>,
    meter_provider: SdkMeterProvider,
    /// The registry `/metrics` renders; `None` when the SDK is disabled.
    prometheus: Option<PrometheusEndpoint>,
    /// Recent requests for `/traces`; `None` when the ring is off or the SDK is disabled.
    recent: Option<Arc<RecentTraces>>,
}

impl Telemetry {
    /// Builds the pipeline without the recent-requests ring. Must run inside the tokio runtime
    /// (the gRPC exporter needs it).
    pub fn start(config: &TelemetryConfig) -> Result<Arc<Telemetry>, TelemetryError> {
        Telemetry::start_with_recent(config, 0)
    }

    /// Builds the pipeline, keeping the last `recent_traces` requests for `/traces` (0 = off).
    /// The ring needs spans, so with a ring traces are recorded even when no trace exporter is
    /// configured; they are then only kept in memory.
    pub fn start_with_recent(
        config: &TelemetryConfig,
        recent_traces: usize,
    ) -> Result<Arc<Telemetry>, TelemetryError> {
        let resource = resource(config);

        let mut meter_builder = SdkMeterProvider::builder().with_resource(resource.clone());
        let mut prometheus = None;
        if !config.sdk_disabled {
            // The Prometheus pull reader sits beside the push exporter, whatever that is.
            match PrometheusEndpoint::new() {
                Ok((endpoint, reader)) => {
                    meter_builder = meter_builder.with_reader(reader);
                    prometheus = Some(endpoint);
                }
                Err(e) => tracing::warn!(error = %e, "/metrics is not available"),
            }
            match config.metrics_exporter {
                ExporterKind::Otlp => {
                    let exporter = otlp_exporter!(
                        opentelemetry_otlp::MetricExporter,
                        &config.metrics,
                        "metrics"
                    )?;
                    meter_builder = meter_builder.with_reader(
                        PeriodicReader::builder(exporter)
                            .with_interval(config.metric_export_interval)
                            .build(),
                    );
                }
                ExporterKind::Console => {
                    meter_builder = meter_builder.with_reader(
                        PeriodicReader::builder(opentelemetry_stdout::MetricExporter::default())
                            .with_interval(config.metric_export_interval)
                            .build(),
                    );
                }
                ExporterKind::None => {}
            }
        }
        // With the SDK disabled the provider has no readers and hands out no-op instruments:
        // recording costs nothing.
        let meter_provider = meter_builder.build();
        let instruments = Instruments::new(&meter_provider.meter("ragscope"));

        let recent =
            (!config.sdk_disabled && recent_traces > 0).then(|| RecentTraces::new(recent_traces));
        let ring = recent.as_ref().map(|r| r.processor());
        let tracer_provider = if config.sdk_disabled {
            None
        } else {
            match config.traces_exporter {
                ExporterKind::Otlp => {
                    let exporter =
                        otlp_exporter!(opentelemetry_otlp::SpanExporter, &config.traces, "traces")?;
                    Some(tracer_provider(
                        config,
                        resource,
                        Some(exporter),
                        ring,
                        &instruments,
                    ))
                }
                ExporterKind::Console => Some(tracer_provider(
                    config,
                    resource,
                    Some(opentelemetry_stdout::SpanExporter::default()),
                    ring,
                    &instruments,
                )),
                ExporterKind::None => ring.map(|ring| {
                    tracer_provider::<opentelemetry_stdout::SpanExporter>(
                        config,
                        resource,
                        None,
                        Some(ring),
                        &instruments,
                    )
                }),
            }
        };
        let tracer = tracer_provider.as_ref().map(|p| p.tracer("ragscope"));

        let propagator = (!config.sdk_disabled).then(|| {
            let mut list: Vec<
                Box<dyn opentelemetry::propagation::TextMapPropagator + Send + Sync>,
            > = Vec::new();
            if config.propagators.trace_context {
                list.push(Box::new(TraceContextPropagator::new()));
            }
            if config.propagators.baggage {
                list.push(Box::new(BaggagePropagator::new()));
            }
            TextMapCompositePropagator::new(list)
        });
        let propagator = propagator.filter(|_| config.propagators != Default::default());

        Ok(Arc::new(Telemetry {
            tracer,
            propagator,
            instruments,
            tracer_provider,
            meter_provider,
            prometheus,
            recent,
        }))
    }

    /// The registry behind `/metrics`, unless the SDK is disabled.
    pub fn prometheus(&self) -> Option<&PrometheusEndpoint> {
        self.prometheus.as_ref()
    }

    /// The recent requests behind `/traces`, unless the ring is off.
    pub fn recent_traces(&self) -> Option<&Arc<RecentTraces>> {
        self.recent.as_ref()
    }

    /// A meter on the provider every instrument of ragscope lives on, for parts that own their
    /// instruments (the active health check).
    pub fn meter(&self) -> opentelemetry::metrics::Meter {
        self.meter_provider.meter("ragscope")
    }

    /// The instruments requests record into.
    pub fn instruments(&self) -> &Instruments {
        &self.instruments
    }

    /// Flushes and stops the exporters, giving up after `timeout` so a dead or black-holed
    /// collector cannot hold the process. The SDK's shutdown blocks, so it runs on the blocking
    /// pool, never on a runtime worker.
    pub async fn shutdown(&self, timeout: Duration) {
        let tracer_provider = self.tracer_provider.clone();
        let meter_provider = self.meter_provider.clone();
        // Both flushes run side by side so they share one budget instead of adding up.
        let traces = tokio::task::spawn_blocking(move || {
            if let Some(p) = tracer_provider
                && let Err(e) = p.shutdown_with_timeout(timeout)
            {
                tracing::warn!(error = %e, "trace export did not shut down cleanly");
            }
        });
        let metrics = tokio::task::spawn_blocking(move || {
            if let Err(e) = meter_provider.shutdown_with_timeout(timeout) {
                tracing::warn!(error = %e, "metric export did not shut down cleanly");
            }
        });
        let work = async {
            let _ = tokio::join!(traces, metrics);
        };
        if tokio::time::timeout(timeout + Duration::from_millis(500), work)
            .await
            .is_err()
        {
            tracing::warn!(
                ?timeout,
                "telemetry shutdown timed out; unexported data was dropped"
            );
        }
    }
}

fn resource(config: &TelemetryConfig) -> Resource {
    let mut attributes: Vec<KeyValue> = config
        .resource_attributes
        .iter()
        .filter(|(k, _)| k != "service.name")
        .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
        .collect();
    attributes.push(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    // OTEL_SERVICE_NAME wins over service.name in OTEL_RESOURCE_ATTRIBUTES, per the spec; the
    // resource attribute is used when only it is given.
    let service_name = config
        .service_name
        .clone()
        .or_else(|| {
            config
                .resource_attributes
                .iter()
                .rev()
                .find(|(k, _)| k == "service.name")
                .map(|(_, v)| v.clone())
        })
        .unwrap_or_else(|| "ragscope".to_owned());
    Resource::builder()
        .with_service_name(service_name)
        .with_attributes(attributes)
        .build()
}

fn sampler(config: &SamplerConfig) -> Sampler {
    match *config {
        SamplerConfig::AlwaysOn => Sampler::AlwaysOn,
        SamplerConfig::AlwaysOff => Sampler::AlwaysOff,
        SamplerConfig::TraceIdRatio(r) => Sampler::TraceIdRatioBased(r),
        SamplerConfig::ParentBased(root) => Sampler::ParentBased(Box::new(match root {
            ParentRoot::AlwaysOn => Sampler::AlwaysOn,
            ParentRoot::AlwaysOff => Sampler::AlwaysOff,
            ParentRoot::TraceIdRatio(r) => Sampler::TraceIdRatioBased(r),
        })),
    }
}

/// Access for other concerns that record telemetry of their own (GenAI observation).
impl Telemetry {
    /// The tracer, when traces are on.
    pub fn tracer(&self) -> Option<&SdkTracer> {
        self.tracer.as_ref()
    }
}

fn tracer_provider<E>(
    config: &TelemetryConfig,
    resource: Resource,
    exporter: Option<E>,
    ring: Option<recent::RingProcessor>,
    instruments: &Instruments,
) -> SdkTracerProvider
where
    E: opentelemetry_sdk::trace::SpanExporter + 'static,
{
    let mut builder = SdkTracerProvider::builder()
        .with_resource(resource)
        .with_sampler(sampler(&config.sampler));
    if let Some(ring) = ring {
        builder = builder.with_span_processor(ring);
    }
    let Some(exporter) = exporter else {
        return builder.build();
    };
    let (processor_gate, exporter) = export::counting(
        exporter,
        config.bsp_max_queue_size,
        instruments.spans_dropped.clone(),
    );
    let batch = BatchSpanProcessor::builder(exporter)
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_max_queue_size(config.bsp_max_queue_size)
                .with_max_export_batch_size(config.bsp_max_export_batch_size)
                .with_scheduled_delay(config.bsp_schedule_delay)
                .build(),
        )
        .build();
    builder
        .with_span_processor(processor_gate.wrap(batch))
        .build()
}

fn grpc_metadata(
    headers: &[(String, String)],
) -> opentelemetry_otlp::tonic_types::metadata::MetadataMap {
    let mut map = http::HeaderMap::new();
    for (k, v) in headers {
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::try_from(k.as_str()),
            http::HeaderValue::try_from(v.as_str()),
        ) {
            map.append(k, v);
        }
    }
    opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(map)
}
