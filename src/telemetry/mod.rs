//! Telemetry: span processors and the meter provider with their OTLP exporters, logging, and
//! the one place a finished [`Record`] becomes spans, metrics and an access-log line
//! ([`Telemetry::record`]). Trace ids are chosen when a request arrives ([`Telemetry::begin`]);
//! no SDK span object exists on the data path.
//!
//! Export runs off the data path: spans go through a bounded batch queue on its own thread
//! (full queue = dropped and counted, never a wait), metrics are aggregated in memory and pushed
//! by a periodic reader thread. Shutdown is bounded by a timeout whatever the collector does.

pub mod access_log;
mod canary;
mod exchange;
mod export;
mod genai;
mod genai_instruments;
mod genai_series;
mod held;
pub mod logging;
mod metrics;
mod otlp_tls;
mod overview;
pub mod prometheus;
mod queue;
mod readers;
pub mod recent;
mod record;
mod rpc;
mod sampling;
mod settings;
mod spans;
pub mod trace_context;

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::reader::MetricReader;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::{Sampler, SpanProcessor};

use crate::observe::{HttpFacts, Record, TraceIds};
use queue::Drain as _;
use trace_context::StrictExtractor;

pub use genai_instruments::GenAiInstruments;
pub use metrics::Instruments;
pub use prometheus::PrometheusEndpoint;
pub use recent::{RecentTraces, TraceFilter};
pub use sampling::{TAIL_SAMPLING_FORM, TailRules, Verdict, read_tail_sampling};
pub use settings::{
    DEFAULT_BSP_MAX_EXPORT_BATCH_SIZE, DEFAULT_BSP_MAX_QUEUE_SIZE, ExporterKind, LogFormat,
    OtlpProtocol, OtlpSignal, ParentRoot, Propagators, SamplerConfig, TelemetryConfig, read_log,
};

/// A telemetry pipeline that could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter rejected its configuration.
    #[error("cannot build the OTLP {signal} exporter for {endpoint}: {source}")]
    Exporter {
        /// `traces`, `metrics` or `logs`.
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
        let https = signal.endpoint.starts_with("https://");
        let built = match signal.protocol {
            OtlpProtocol::Grpc => {
                let builder = <$exporter>::builder()
                    .with_tonic()
                    .with_endpoint(signal.endpoint.clone())
                    .with_timeout(signal.timeout)
                    .with_metadata(grpc_metadata(&signal.headers));
                if https {
                    builder
                        .with_tls_config(otlp_tls::tonic_config($name, signal))
                        .build()
                } else {
                    builder.build()
                }
            }
            // Our own client always: reqwest is built without a crypto provider of its own (it
            // would bring aws-lc-rs), so its default client could not do TLS.
            OtlpProtocol::HttpProtobuf => match otlp_tls::http_client($name, signal) {
                Ok(client) => <$exporter>::builder()
                    .with_http()
                    .with_http_client(client)
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                    .with_endpoint(signal.endpoint.clone())
                    .with_timeout(signal.timeout)
                    .with_headers(signal.headers.iter().cloned().collect())
                    .build(),
                Err(why) => Err(opentelemetry_otlp::ExporterBuildError::InternalFailure(why)),
            },
        };
        built.map_err(|source| TelemetryError::Exporter {
            signal: $name,
            endpoint: signal.endpoint.clone(),
            source,
        })
    }};
}

// After the macro, which it uses.
mod logs;
pub use logs::WarningsLayer;

/// The running telemetry pipeline, shared by every request.
#[derive(Debug)]
pub struct Telemetry {
    /// `None` when traces are off (`OTEL_SDK_DISABLED`, `OTEL_TRACES_EXPORTER=none`, no ring).
    spans: Option<Arc<spans::Spans>>,
    /// `None` when `OTEL_PROPAGATORS=none` or the SDK is disabled: trace headers pass untouched.
    propagator: Option<TextMapCompositePropagator>,
    instruments: Instruments,
    /// The instruments' series bound to their (bounded) attribute sets.
    series: metrics::Series,
    genai_instruments: GenAiInstruments,
    /// `rpc.server.call.duration`, for gRPC calls.
    rpc: rpc::RpcMetrics,
    meter_provider: SdkMeterProvider,
    /// The registry `/metrics` renders; `None` when the SDK is disabled.
    prometheus: Option<PrometheusEndpoint>,
    /// Recent requests for `/traces`; `None` when the ring is off or the SDK is disabled.
    recent: Option<Arc<RecentTraces>>,
    /// The operator's view (`/overview`, `/feedback`), fed from every record like the metrics.
    overview: Arc<crate::overview::Overview>,
    /// `RAGSCOPE_TAIL_SAMPLING`; `None` when off (every recorded trace is exported).
    tail: Option<sampling::Tail>,
    /// Finished records on their way to the telemetry thread.
    queue: queue::Queue,
    /// The access log's line buffer, reused by every drain.
    log_buffer: std::sync::Mutex<String>,
    /// `OTEL_LOGS_EXPORTER`; `None` when off (the default).
    logs: Option<logs::Logs>,
    /// The canary rollout, fed each routed exchange's outcome and each feedback.
    canary: std::sync::OnceLock<Arc<crate::canary::Canary>>,
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
            let mut readers: Vec<Box<dyn MetricReader>> = Vec::new();
            // The Prometheus pull reader sits beside the push exporter, whatever that is.
            match PrometheusEndpoint::new() {
                Ok((endpoint, reader)) => {
                    readers.push(Box::new(reader));
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
                    readers.push(Box::new(
                        PeriodicReader::builder(exporter)
                            .with_interval(config.metric_export_interval)
                            .build(),
                    ));
                }
                ExporterKind::Console => {
                    readers.push(Box::new(
                        PeriodicReader::builder(opentelemetry_stdout::MetricExporter::default())
                            .with_interval(config.metric_export_interval)
                            .build(),
                    ));
                }
                ExporterKind::None => {}
            }
            // One aggregation for /metrics and OTLP, unless the exporter asks for delta.
            for shared in readers::group(readers) {
                meter_builder = meter_builder.with_reader(shared);
            }
        }
        // With the SDK disabled the provider has no readers and hands out no-op instruments:
        // recording costs nothing.
        let meter_provider = meter_builder.build();
        let instruments = Instruments::new(&meter_provider.meter("ragscope"));
        let genai_instruments = GenAiInstruments::new(&meter_provider.meter("ragscope"));
        let rpc = rpc::RpcMetrics::new(&meter_provider.meter("ragscope"));

        let recent =
            (!config.sdk_disabled && recent_traces > 0).then(|| RecentTraces::new(recent_traces));
        let tail = config
            .tail_sampling
            .clone()
            .filter(|_| !config.sdk_disabled)
            .map(|rules| sampling::Tail::new(rules, &meter_provider.meter("ragscope")));
        let spans = if config.sdk_disabled {
            None
        } else {
            let exporter: Option<Box<dyn SpanProcessor>> = match config.traces_exporter {
                ExporterKind::Otlp => {
                    let exporter =
                        otlp_exporter!(opentelemetry_otlp::SpanExporter, &config.traces, "traces")?;
                    Some(batch(config, exporter, &resource, &instruments))
                }
                ExporterKind::Console => Some(batch(
                    config,
                    opentelemetry_stdout::SpanExporter::default(),
                    &resource,
                    &instruments,
                )),
                ExporterKind::None => None,
            };
            // The one point tail sampling acts: between the record and the export processor.
            let exporter = exporter.map(|e| match &tail {
                Some(tail) => Box::new(tail.gate(e)) as Box<dyn SpanProcessor>,
                None => e,
            });
            // The ring needs trace ids even when nothing is exported.
            (exporter.is_some() || recent.is_some()).then(|| {
                Arc::new(spans::Spans::new(
                    sampler(&config.sampler),
                    &resource,
                    exporter,
                ))
            })
        };

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

        let logs = logs::Logs::start(config, &resource)?;

        let telemetry = Arc::new(Telemetry {
            spans,
            propagator,
            series: metrics::Series::new(&instruments),
            instruments,
            genai_instruments,
            rpc,
            meter_provider,
            prometheus,
            recent,
            overview: Arc::new(crate::overview::Overview::new()),
            tail,
            queue: queue::Queue::new(),
            log_buffer: std::sync::Mutex::new(String::new()),
            logs,
            canary: std::sync::OnceLock::new(),
        });
        if let Err(e) = queue::Queue::start(&telemetry) {
            tracing::warn!(error = %e, "no telemetry thread: records are handled on the data path");
            telemetry.queue.run_inline();
        }
        Ok(telemetry)
    }

    /// The registry behind `/metrics`, unless the SDK is disabled.
    pub fn prometheus(&self) -> Option<&PrometheusEndpoint> {
        self.prometheus.as_ref()
    }

    /// The recent requests behind `/traces`, unless the ring is off.
    pub fn recent_traces(&self) -> Option<&Arc<RecentTraces>> {
        self.recent.as_ref()
    }

    /// The operator's view behind `/overview` and `/feedback`.
    pub fn overview(&self) -> &Arc<crate::overview::Overview> {
        &self.overview
    }

    /// A meter on the provider every instrument of ragscope lives on, for parts that own their
    /// instruments (the active health check).
    pub fn meter(&self) -> opentelemetry::metrics::Meter {
        self.meter_provider.meter("ragscope")
    }

    /// From now on, each finished exchange's outcome and each feedback also reaches `canary`
    /// (on the telemetry thread, like the metrics). Set once; later calls do nothing.
    pub fn watch_canary(&self, canary: Arc<crate::canary::Canary>) {
        let _ = self.canary.set(canary);
    }

    /// The instruments requests record into.
    pub fn instruments(&self) -> &Instruments {
        &self.instruments
    }

    /// A request arrived: counts it active and chooses its trace ids, continuing a valid
    /// incoming trace (extracted with the configured propagator) as the sampler decides.
    /// Returns the ids (`None` when traces are off) and the parent context, which carries the
    /// caller's baggage to [`Telemetry::inject`].
    pub fn begin(&self, http: &HttpFacts, headers: &HeaderMap) -> (Option<TraceIds>, Context) {
        self.active(http, 1);
        let Some(spans) = &self.spans else {
            return (None, Context::new());
        };
        let parent = match &self.propagator {
            Some(p) => {
                use opentelemetry::propagation::TextMapPropagator as _;
                p.extract(&StrictExtractor::new(headers))
            }
            None => Context::new(),
        };
        let name = exchange::span_name(exchange::semconv_method(&http.method));
        (Some(spans.begin(&parent, name)), parent)
    }

    /// Writes the upstream call's trace context into its request headers (replacing the
    /// caller's), unless propagation is off.
    pub fn inject(&self, parent: &Context, ids: &TraceIds, headers: &mut HeaderMap) {
        if let Some(propagator) = &self.propagator {
            spans::inject(propagator, parent, ids, headers);
        }
    }

    /// The W3C `traceresponse` header value carrying the trace back to the client.
    pub fn traceresponse(ids: &TraceIds) -> Option<HeaderValue> {
        let header = spans::w3c_header(ids.trace_id, ids.server_span_id, ids.flags);
        // The string's buffer becomes the header's: no second copy.
        HeaderValue::from_maybe_shared(bytes::Bytes::from(header)).ok()
    }

    /// Hands a finished exchange to the telemetry thread, which records its metrics, the
    /// operator's view, spans (when sampled and kept) and access-log line within
    /// [`queue::DRAIN_INTERVAL`]. Never waits: when the queue is full the record is dropped and
    /// counted (`ragscope.telemetry.records.dropped`).
    pub fn record(&self, record: Record) {
        match self.queue.push(record) {
            Ok(()) => {
                if self.queue.stopped() {
                    queue::drain(self);
                }
            }
            Err(queue::Refused::Stopped(record)) => {
                self.handle(&mut std::iter::once(record));
            }
            Err(queue::Refused::Full(record)) => {
                self.instruments.records_dropped.add(1, &[]);
                // It was counted active when it began.
                self.active(&record.http, -1);
            }
        }
    }

    /// Counts a request in or out of `http.server.active_requests`, through the bound series
    /// (no attribute set built on the data path).
    fn active(&self, http: &HttpFacts, delta: i64) {
        let method = exchange::semconv_method(&http.method);
        match self.series.active(method, http.scheme) {
            Some(counter) => counter.add(delta),
            None => self
                .instruments
                .server_active
                .add(delta, &exchange::active_attributes(http)),
        }
    }

    /// Drains the record queue, then flushes and stops the exporters, giving up after `timeout`
    /// so a dead or black-holed collector cannot hold the process. The SDK's shutdown blocks,
    /// so it runs on the blocking pool, never on a runtime worker.
    pub async fn shutdown(self: &Arc<Self>, timeout: Duration) {
        let me = self.clone();
        // Every finished record reaches the exporters before they flush.
        let _ = tokio::task::spawn_blocking(move || queue::Queue::stop(&*me)).await;
        let spans = self.spans.clone();
        let meter_provider = self.meter_provider.clone();
        // Both flushes run side by side so they share one budget instead of adding up.
        let traces = tokio::task::spawn_blocking(move || {
            if let Some(spans) = spans {
                spans.shutdown(timeout);
            }
        });
        let metrics = tokio::task::spawn_blocking(move || {
            if let Err(e) = meter_provider.shutdown_with_timeout(timeout) {
                tracing::warn!(error = %e, "metric export did not shut down cleanly");
            }
        });
        let logs = self.logs.clone();
        let logs = tokio::task::spawn_blocking(move || {
            if let Some(logs) = logs {
                logs.shutdown(timeout);
            }
        });
        let work = async {
            let _ = tokio::join!(traces, metrics, logs);
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

impl queue::Drain for Telemetry {
    fn handle(&self, records: &mut dyn Iterator<Item = Record>) {
        // The batch's buffer is kept between drains, so it is not grown again every 25 ms.
        let buffer =
            std::mem::take(&mut *self.log_buffer.lock().unwrap_or_else(|p| p.into_inner()));
        let mut log = access_log::Batch::reusing(buffer, self.logs.as_ref());
        for mut r in records {
            // The GenAI parse happens here, on the telemetry thread (issue 11).
            r.conclude();
            // The token reservation settles from the usage just read (issue 14).
            r.settle_tokens();
            record::record(self, r, &mut log);
        }
        *self.log_buffer.lock().unwrap_or_else(|p| p.into_inner()) = log.write();
    }

    fn queue(&self) -> &queue::Queue {
        &self.queue
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

/// The batch export processor in front of `exporter` (`OTEL_BSP_*` sizes), counting drops.
fn batch<E>(
    config: &TelemetryConfig,
    exporter: E,
    resource: &Resource,
    instruments: &Instruments,
) -> Box<dyn SpanProcessor>
where
    E: opentelemetry_sdk::trace::SpanExporter + 'static,
{
    Box::new(export::BatchExport::start(
        exporter,
        resource,
        export::Limits {
            max_queue: config.bsp_max_queue_size,
            max_batch: config.bsp_max_export_batch_size,
            delay: config.bsp_schedule_delay,
        },
        instruments.spans_dropped.clone(),
    ))
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
