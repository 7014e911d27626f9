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

use crate::config::{
    ExporterKind, OtlpProtocol, OtlpSignal, ParentRoot, SamplerConfig, TelemetryConfig,
};

pub use exchange::{Ending, Exchange, RequestFacts, UpstreamAttributes};
pub use metrics::Instruments;

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
}

impl Telemetry {
    /// Builds the pipeline. Must run inside the tokio runtime (the gRPC exporter needs it).
    pub fn start(config: &TelemetryConfig) -> Result<Arc<Telemetry>, TelemetryError> {
        let resource = resource(config);

        let mut meter_builder = SdkMeterProvider::builder().with_resource(resource.clone());
        if !config.sdk_disabled {
            match config.metrics_exporter {
                ExporterKind::Otlp => {
                    let exporter = otlp_metric_exporter(&config.metrics)?;
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
        // A provider without readers hands out no-op instruments: recording costs nothing.
        let meter_provider = meter_builder.build();
        let instruments = Instruments::new(&meter_provider.meter("ragscope"));

        let tracer_provider = if config.sdk_disabled {
            None
        } else {
            match config.traces_exporter {
                ExporterKind::Otlp => {
                    let exporter = otlp_span_exporter(&config.traces)?;
                    Some(tracer_provider(config, resource, exporter, &instruments))
                }
                ExporterKind::Console => Some(tracer_provider(
                    config,
                    resource,
                    opentelemetry_stdout::SpanExporter::default(),
                    &instruments,
                )),
                ExporterKind::None => None,
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
        }))
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
    /// A meter on the pipeline's provider.
    pub fn meter(&self, name: &'static str) -> opentelemetry::metrics::Meter {
        self.meter_provider.meter(name)
    }

    /// The tracer, when traces are on.
    pub fn tracer(&self) -> Option<&SdkTracer> {
        self.tracer.as_ref()
    }
}

fn tracer_provider<E>(
    config: &TelemetryConfig,
    resource: Resource,
    exporter: E,
    instruments: &Instruments,
) -> SdkTracerProvider
where
    E: opentelemetry_sdk::trace::SpanExporter + 'static,
{
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
    SdkTracerProvider::builder()
        .with_resource(resource)
        .with_sampler(sampler(&config.sampler))
        .with_span_processor(processor_gate.wrap(batch))
        .build()
}

fn otlp_span_exporter(
    signal: &OtlpSignal,
) -> Result<opentelemetry_otlp::SpanExporter, TelemetryError> {
    let built = match signal.protocol {
        OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(signal.endpoint.clone())
            .with_timeout(signal.timeout)
            .with_metadata(grpc_metadata(&signal.headers))
            .build(),
        OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(signal.endpoint.clone())
            .with_timeout(signal.timeout)
            .with_headers(signal.headers.iter().cloned().collect())
            .build(),
    };
    built.map_err(|source| TelemetryError::Exporter {
        signal: "traces",
        endpoint: signal.endpoint.clone(),
        source,
    })
}

fn otlp_metric_exporter(
    signal: &OtlpSignal,
) -> Result<opentelemetry_otlp::MetricExporter, TelemetryError> {
    let built = match signal.protocol {
        OtlpProtocol::Grpc => opentelemetry_otlp::MetricExporter::builder()
            .with_tonic()
            .with_endpoint(signal.endpoint.clone())
            .with_timeout(signal.timeout)
            .with_metadata(grpc_metadata(&signal.headers))
            .build(),
        OtlpProtocol::HttpProtobuf => opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(signal.endpoint.clone())
            .with_timeout(signal.timeout)
            .with_headers(signal.headers.iter().cloned().collect())
            .build(),
    };
    built.map_err(|source| TelemetryError::Exporter {
        signal: "metrics",
        endpoint: signal.endpoint.clone(),
        source,
    })
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
