//! The logs signal (`OTEL_LOGS_EXPORTER`): the access-log record of every request and
//! ragscope's own warnings, as OTLP log records carrying the request's `trace_id`/`span_id`,
//! over the same endpoint rules as traces and metrics (`OTEL_EXPORTER_OTLP_LOGS_*`, `/v1/logs`,
//! TLS). Off by default: it is one more export per request (README, "Performance").
//!
//! Access records are emitted on the telemetry thread from the same `AccessRecord` the log line
//! is made of; warnings come through a `tracing` layer installed at start-up, before the
//! pipeline exists, so it reads the logger from a cell filled when the pipeline starts (the
//! `opentelemetry-appender-tracing` bridge needs its provider when the subscriber is built, and
//! reads no trace ids from event fields, which is how our warnings carry them).

use std::sync::OnceLock;
use std::time::SystemTime;

use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _, Severity};
use opentelemetry::trace::{SpanId, TraceFlags, TraceId};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::logs::{
    BatchConfigBuilder, BatchLogProcessor, SdkLogger, SdkLoggerProvider,
};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::Context;

use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};

use super::access_log::AccessRecord;
use super::settings::{ExporterKind, OtlpProtocol, OtlpSignal, TelemetryConfig};
use super::{TelemetryError, grpc_metadata, otlp_tls};

/// The running logs pipeline.
#[derive(Debug, Clone)]
pub(super) struct Logs {
    provider: SdkLoggerProvider,
    logger: SdkLogger,
}

impl Logs {
    /// The pipeline `OTEL_LOGS_EXPORTER` asks for; `None` when it is `none` (the default) or
    /// the SDK is disabled.
    pub(super) fn start(
        config: &TelemetryConfig,
        resource: &Resource,
    ) -> Result<Option<Logs>, TelemetryError> {
        if config.sdk_disabled {
            return Ok(None);
        }
        // Batching follows the span processor's settings: the same burst sizes and delay.
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(config.bsp_max_queue_size)
            .with_scheduled_delay(config.bsp_schedule_delay)
            .with_max_export_batch_size(config.bsp_max_export_batch_size)
            .build();
        let processor = match config.logs_exporter {
            ExporterKind::None => return Ok(None),
            ExporterKind::Otlp => {
                let exporter = otlp_log_exporter(config)?;
                BatchLogProcessor::builder(exporter)
                    .with_batch_config(batch)
                    .build()
            }
            ExporterKind::Console => {
                BatchLogProcessor::builder(opentelemetry_stdout::LogExporter::default())
                    .with_batch_config(batch)
                    .build()
            }
        };
        let provider = SdkLoggerProvider::builder()
            .with_resource(resource.clone())
            .with_log_processor(processor)
            .build();
        let logger = provider.logger("ragscope");
        // The first pipeline of the process serves the warnings layer (there is one outside
        // tests, which start several servers but install no layer).
        let _ = WARNINGS.set(logger.clone());
        Ok(Some(Logs { provider, logger }))
    }

    /// One request's access record as a log record (INFO, event `ragscope.access`).
    pub(super) fn access(&self, r: &AccessRecord<'_>) {
        let mut rec = self.logger.create_log_record();
        rec.set_event_name("ragscope.access");
        rec.set_timestamp(r.at);
        rec.set_observed_timestamp(r.at);
        rec.set_severity_number(Severity::Info);
        rec.set_severity_text("INFO");
        rec.set_body(AnyValue::from(format!(
            "{} {} {}",
            r.method,
            r.path,
            r.status.map_or("-".to_owned(), |s| s.to_string())
        )));
        rec.add_attribute("http.request.method", r.method.to_owned());
        rec.add_attribute("url.path", r.path.to_owned());
        rec.add_attribute("network.protocol.version", r.protocol.to_owned());
        if let Some(s) = r.status {
            rec.add_attribute("http.response.status_code", i64::from(s));
        }
        rec.add_attribute("ragscope.duration_ms", r.duration_ms);
        rec.add_attribute("http.request.body.size", r.request_bytes as i64);
        rec.add_attribute("http.response.body.size", r.response_bytes as i64);
        if let Some(e) = r.error_type {
            rec.add_attribute("error.type", e.to_owned());
        }
        rec.add_attribute("ragscope.cancelled", r.cancelled);
        rec.add_attribute("client.address", r.client.to_string());
        set_trace(&mut rec, r.trace_id, r.span_id);
        self.logger.emit(rec);
    }

    /// Flushes and stops, giving up after `timeout`.
    pub(super) fn shutdown(&self, timeout: std::time::Duration) {
        if let Err(e) = self.provider.shutdown_with_timeout(timeout) {
            tracing::warn!(error = %e, "log export did not shut down cleanly");
        }
    }
}

/// The trace context from the hex ids our records and warnings carry; none when absent or
/// malformed (traces off).
fn set_trace(rec: &mut impl opentelemetry::logs::LogRecord, trace_id: &str, span_id: &str) {
    if let (Ok(t), Ok(s)) = (TraceId::from_hex(trace_id), SpanId::from_hex(span_id))
        && t != TraceId::INVALID
        && s != SpanId::INVALID
    {
        rec.set_trace_context(t, s, Some(TraceFlags::SAMPLED));
    }
}

/// The OTLP log exporter, built like the span and metric ones.
fn otlp_log_exporter(
    config: &TelemetryConfig,
) -> Result<opentelemetry_otlp::LogExporter, TelemetryError> {
    otlp_exporter!(opentelemetry_otlp::LogExporter, &config.logs, "logs")
}

/// The logger ragscope's own warnings go to, once the pipeline runs.
static WARNINGS: OnceLock<SdkLogger> = OnceLock::new();

/// A `tracing` layer that exports ragscope's own warnings and errors as log records. The SDK's
/// own events are left out (an export failure must not produce another export), and so is the
/// access log (it is exported from the record itself).
#[derive(Debug, Default)]
pub struct WarningsLayer;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for WarningsLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _cx: Context<'_, S>) {
        let meta = event.metadata();
        if *meta.level() > tracing::Level::WARN
            || !meta.target().starts_with("ragscope")
            || meta.target() == "ragscope::access"
        {
            return;
        }
        let Some(logger) = WARNINGS.get() else {
            return;
        };
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut rec = logger.create_log_record();
        let now = SystemTime::now();
        rec.set_timestamp(now);
        rec.set_observed_timestamp(now);
        let (number, text) = if *meta.level() == tracing::Level::ERROR {
            (Severity::Error, "ERROR")
        } else {
            (Severity::Warn, "WARN")
        };
        rec.set_severity_number(number);
        rec.set_severity_text(text);
        rec.set_target(meta.target().to_owned());
        rec.set_body(AnyValue::from(fields.message));
        set_trace(&mut rec, &fields.trace_id, &fields.span_id);
        for (k, v) in fields.rest {
            rec.add_attribute(k, v);
        }
        logger.emit(rec);
    }
}

/// A warning's fields: the message, the ids, the rest as attributes (bounded: a warning has a
/// handful of fields, each cut to 1 KiB, since some quote a client's input).
#[derive(Default)]
struct Fields {
    message: String,
    trace_id: String,
    span_id: String,
    rest: Vec<(&'static str, String)>,
}

const FIELD_MAX: usize = 1024;
const FIELDS_MAX: usize = 32;

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        let mut value = value.to_owned();
        if value.len() > FIELD_MAX {
            let mut cut = FIELD_MAX;
            while !value.is_char_boundary(cut) {
                cut -= 1;
            }
            value.truncate(cut);
        }
        match field.name() {
            "message" => self.message = value,
            "trace_id" => self.trace_id = value,
            "span_id" => self.span_id = value,
            name if self.rest.len() < FIELDS_MAX => self.rest.push((name, value)),
            _ => {}
        }
    }
}
