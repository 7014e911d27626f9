//! Telemetry settings from the `OTEL_*` variables, read per the OpenTelemetry specification: an
//! empty value is unset, and an invalid value is warned about and ignored (never fatal). Also the
//! process log settings (`RAGSCOPE_LOG`, `RAGSCOPE_LOG_FORMAT`).

use std::path::PathBuf;
use std::time::Duration;

use crate::config::{ConfigError, Reader, Source};

/// `OTEL_BSP_MAX_QUEUE_SIZE` unless set: spans waiting for export.
pub const DEFAULT_BSP_MAX_QUEUE_SIZE: usize = 32 * 1024;
/// `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` unless set: spans per export request.
pub const DEFAULT_BSP_MAX_EXPORT_BATCH_SIZE: usize = 2048;

/// Log line format (`RAGSCOPE_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (the default: what log pipelines ingest).
    Json,
    /// Human-readable text.
    Text,
}

/// `RAGSCOPE_LOG`: tracing `EnvFilter` directives, checked here so a typo stops start-up.
pub fn read_log<S: Source + ?Sized>(r: &Reader<'_, S>) -> Result<(String, LogFormat), ConfigError> {
    let log = r.parse(
        "RAGSCOPE_LOG",
        "info",
        "a log filter like info or ragscope=debug,warn",
        |v| {
            tracing_subscriber::EnvFilter::builder()
                .parse(v)
                .ok()
                .map(|_| v.to_owned())
        },
    )?;
    let format = r.one_of(
        "RAGSCOPE_LOG_FORMAT",
        "json",
        &[("json", LogFormat::Json), ("text", LogFormat::Text)],
    )?;
    Ok((log, format))
}

/// Which exporter a signal uses (`OTEL_TRACES_EXPORTER`, `OTEL_METRICS_EXPORTER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExporterKind {
    /// OTLP to a collector (the default).
    Otlp,
    /// Human-readable lines on stdout, for debugging.
    Console,
    /// Nothing is exported.
    None,
}

/// OTLP transport (`OTEL_EXPORTER_OTLP_PROTOCOL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP/gRPC, port 4317.
    Grpc,
    /// OTLP/HTTP with protobuf bodies, port 4318 (the specification's default).
    HttpProtobuf,
}

/// One signal's OTLP export settings.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpSignal {
    /// Transport.
    pub protocol: OtlpProtocol,
    /// Full URL the exporter posts to (for HTTP, including `/v1/traces` or `/v1/metrics`).
    pub endpoint: String,
    /// Export timeout.
    pub timeout: Duration,
    /// Extra request headers (`OTEL_EXPORTER_OTLP_HEADERS`): never logged, they hold credentials.
    pub headers: Vec<(String, String)>,
    /// TLS files for an `https://` endpoint.
    pub tls: OtlpTls,
}

/// TLS to the collector (`OTEL_EXPORTER_OTLP_CERTIFICATE`, `..._CLIENT_CERTIFICATE`,
/// `..._CLIENT_KEY`, each with its per-signal variant). Only paths here: the files are read when
/// the exporter is built (src/telemetry/otlp_tls.rs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OtlpTls {
    /// PEM CA bundle that replaces the system roots for the collector's certificate.
    pub certificate: Option<(String, PathBuf)>,
    /// PEM client certificate chain for mTLS (with `client_key`).
    pub client_certificate: Option<(String, PathBuf)>,
    /// PEM private key of the client certificate.
    pub client_key: Option<(String, PathBuf)>,
}

/// Sampler (`OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerConfig {
    /// Record every trace.
    AlwaysOn,
    /// Record none.
    AlwaysOff,
    /// Record this fraction of traces, by trace id.
    TraceIdRatio(f64),
    /// Follow the caller's sampled flag; for new traces use the inner sampler.
    ParentBased(ParentRoot),
}

/// The root sampler under `parentbased_*`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ParentRoot {
    /// `parentbased_always_on` (the specification's default).
    AlwaysOn,
    /// `parentbased_always_off`.
    AlwaysOff,
    /// `parentbased_traceidratio`.
    TraceIdRatio(f64),
}

/// Context propagation formats (`OTEL_PROPAGATORS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Propagators {
    /// W3C `traceparent`/`tracestate`.
    pub trace_context: bool,
    /// W3C `baggage`.
    pub baggage: bool,
}

/// Telemetry settings.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// `OTEL_SDK_DISABLED=true`: no spans, no metrics, no propagation of our own.
    pub sdk_disabled: bool,
    /// `OTEL_TRACES_EXPORTER`.
    pub traces_exporter: ExporterKind,
    /// `OTEL_METRICS_EXPORTER`.
    pub metrics_exporter: ExporterKind,
    /// `OTEL_LOGS_EXPORTER`: `none` unless set (the access log is on stdout anyway; exporting
    /// it is one more record per request).
    pub logs_exporter: ExporterKind,
    /// Trace export.
    pub traces: OtlpSignal,
    /// Metric export.
    pub metrics: OtlpSignal,
    /// Log export.
    pub logs: OtlpSignal,
    /// `OTEL_SERVICE_NAME`, when set (it wins over `service.name` in `OTEL_RESOURCE_ATTRIBUTES`;
    /// with neither, the service is `ragscope`).
    pub service_name: Option<String>,
    /// `OTEL_RESOURCE_ATTRIBUTES`.
    pub resource_attributes: Vec<(String, String)>,
    /// Sampler.
    pub sampler: SamplerConfig,
    /// Propagation formats.
    pub propagators: Propagators,
    /// `OTEL_BSP_MAX_QUEUE_SIZE`: spans waiting for export; past it they are dropped and counted.
    pub bsp_max_queue_size: usize,
    /// `OTEL_BSP_SCHEDULE_DELAY`.
    pub bsp_schedule_delay: Duration,
    /// `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`.
    pub bsp_max_export_batch_size: usize,
    /// `OTEL_METRIC_EXPORT_INTERVAL`.
    pub metric_export_interval: Duration,
    /// `OTEL_METRIC_EXPORT_TIMEOUT`.
    pub metric_export_timeout: Duration,
    /// `RAGSCOPE_TAIL_SAMPLING` (read with the `RAGSCOPE_*` settings, where a bad value stops
    /// start-up); `None` = off.
    pub tail_sampling: Option<super::TailRules>,
}

impl TelemetryConfig {
    /// Reads every `OTEL_*` variable ragscope honours; problems become warnings on `otel`.
    pub fn from_reader<S: Source + ?Sized>(otel: &Reader<'_, S>) -> TelemetryConfig {
        let sdk_disabled = otel
            .get("OTEL_SDK_DISABLED")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));

        let exporter = |var: &str, default: ExporterKind| match otel.get(var) {
            None => default,
            Some(v) => {
                // The variable is a list; a single exporter per signal is what we support,
                // and "none" anywhere in the list wins as the specification says.
                let items: Vec<String> = v
                    .split(',')
                    .map(|s| s.trim().to_ascii_lowercase())
                    .collect();
                if items.iter().any(|s| s == "none") {
                    ExporterKind::None
                } else if items.iter().any(|s| s == "otlp") {
                    ExporterKind::Otlp
                } else if items.iter().any(|s| s == "console") {
                    ExporterKind::Console
                } else {
                    otel.warn(var, &v, "otlp, console or none");
                    default
                }
            }
        };
        let traces_exporter = exporter("OTEL_TRACES_EXPORTER", ExporterKind::Otlp);
        let metrics_exporter = exporter("OTEL_METRICS_EXPORTER", ExporterKind::Otlp);
        let logs_exporter = exporter("OTEL_LOGS_EXPORTER", ExporterKind::None);

        let traces = signal(otel, "TRACES", "/v1/traces");
        let metrics = signal(otel, "METRICS", "/v1/metrics");
        let logs = signal(otel, "LOGS", "/v1/logs");

        let service_name = otel.get("OTEL_SERVICE_NAME");
        let resource_attributes = otel
            .get("OTEL_RESOURCE_ATTRIBUTES")
            .map(|v| parse_key_values(&v))
            .unwrap_or_default();

        let ratio = || match otel.get("OTEL_TRACES_SAMPLER_ARG") {
            None => 1.0,
            Some(v) => match v.parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => r,
                _ => {
                    otel.warn("OTEL_TRACES_SAMPLER_ARG", &v, "a ratio between 0 and 1");
                    1.0
                }
            },
        };
        let sampler = match otel
            .get("OTEL_TRACES_SAMPLER")
            .map(|v| v.to_ascii_lowercase())
        {
            None => SamplerConfig::ParentBased(ParentRoot::AlwaysOn),
            Some(v) => match v.as_str() {
                "always_on" => SamplerConfig::AlwaysOn,
                "always_off" => SamplerConfig::AlwaysOff,
                "traceidratio" => SamplerConfig::TraceIdRatio(ratio()),
                "parentbased_always_on" => SamplerConfig::ParentBased(ParentRoot::AlwaysOn),
                "parentbased_always_off" => SamplerConfig::ParentBased(ParentRoot::AlwaysOff),
                "parentbased_traceidratio" => {
                    SamplerConfig::ParentBased(ParentRoot::TraceIdRatio(ratio()))
                }
                _ => {
                    otel.warn(
                        "OTEL_TRACES_SAMPLER",
                        &v,
                        "always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off or parentbased_traceidratio",
                    );
                    SamplerConfig::ParentBased(ParentRoot::AlwaysOn)
                }
            },
        };

        let propagators = match otel.get("OTEL_PROPAGATORS") {
            None => Propagators {
                trace_context: true,
                baggage: true,
            },
            Some(v) => {
                let mut p = Propagators::default();
                for item in v.split(',').map(|s| s.trim().to_ascii_lowercase()) {
                    match item.as_str() {
                        "tracecontext" => p.trace_context = true,
                        "baggage" => p.baggage = true,
                        "none" => {}
                        other => {
                            otel.warn("OTEL_PROPAGATORS", other, "tracecontext, baggage or none")
                        }
                    }
                }
                p
            }
        };

        let number = |var: &str, default: usize| match otel.get(var) {
            None => default,
            Some(v) => match v.parse::<usize>() {
                Ok(n) if n > 0 => n,
                _ => {
                    otel.warn(var, &v, "a positive whole number");
                    default
                }
            },
        };
        // Larger than the spec's 2048/512: records reach the batch processor in bursts (one
        // drain of the record queue every 25 ms, ~5,000 spans at 100k requests/s), and the
        // export thread sends one batch at a time, so the queue must hold a few bursts while a
        // batch is on the wire. 2048 spans make a ~1-2 MB request, under a collector's usual
        // 4 MiB gRPC message limit.
        let bsp_max_queue_size = number("OTEL_BSP_MAX_QUEUE_SIZE", DEFAULT_BSP_MAX_QUEUE_SIZE);
        let bsp_max_export_batch_size = number(
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
            DEFAULT_BSP_MAX_EXPORT_BATCH_SIZE,
        )
        .min(bsp_max_queue_size);
        let bsp_schedule_delay =
            Duration::from_millis(number("OTEL_BSP_SCHEDULE_DELAY", 5000) as u64);
        let metric_export_interval =
            Duration::from_millis(number("OTEL_METRIC_EXPORT_INTERVAL", 60_000) as u64);
        let metric_export_timeout =
            Duration::from_millis(number("OTEL_METRIC_EXPORT_TIMEOUT", 30_000) as u64);

        TelemetryConfig {
            sdk_disabled,
            traces_exporter,
            metrics_exporter,
            logs_exporter,
            traces,
            metrics,
            logs,
            service_name,
            resource_attributes,
            sampler,
            propagators,
            bsp_max_queue_size,
            bsp_schedule_delay,
            bsp_max_export_batch_size,
            metric_export_interval,
            metric_export_timeout,
            tail_sampling: None,
        }
    }
}

/// The per-signal variable if set, else the generic one.
fn get_signal<S: Source + ?Sized>(
    otel: &Reader<'_, S>,
    signal: &str,
    suffix: &str,
) -> Option<(String, String)> {
    let specific = format!("OTEL_EXPORTER_OTLP_{signal}_{suffix}");
    if let Some(v) = otel.get(&specific) {
        return Some((specific, v));
    }
    let generic = format!("OTEL_EXPORTER_OTLP_{suffix}");
    otel.get(&generic).map(|v| (generic, v))
}

/// One signal's export settings: per-signal variables win over the generic ones.
fn signal<S: Source + ?Sized>(otel: &Reader<'_, S>, signal: &str, path: &str) -> OtlpSignal {
    let protocol = match get_signal(otel, signal, "PROTOCOL") {
        None => OtlpProtocol::HttpProtobuf,
        Some((var, v)) => match v.as_str() {
            "grpc" => OtlpProtocol::Grpc,
            "http/protobuf" => OtlpProtocol::HttpProtobuf,
            _ => {
                otel.warn(&var, &v, "grpc or http/protobuf");
                OtlpProtocol::HttpProtobuf
            }
        },
    };
    let specific = format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT");
    let endpoint = if let Some(v) = otel.get(&specific) {
        // A per-signal endpoint is used as it is.
        v
    } else {
        let base = otel
            .get("OTEL_EXPORTER_OTLP_ENDPOINT")
            .unwrap_or_else(|| match protocol {
                OtlpProtocol::Grpc => "http://localhost:4317".to_owned(),
                OtlpProtocol::HttpProtobuf => "http://localhost:4318".to_owned(),
            });
        match protocol {
            OtlpProtocol::Grpc => base,
            // With the generic endpoint, the signal's path is appended.
            OtlpProtocol::HttpProtobuf => format!("{}{path}", base.trim_end_matches('/')),
        }
    };
    let timeout = match get_signal(otel, signal, "TIMEOUT") {
        None => Duration::from_secs(10),
        Some((var, v)) => match v.parse::<u64>() {
            Ok(ms) => Duration::from_millis(ms),
            Err(_) => {
                otel.warn(&var, &v, "a timeout in milliseconds");
                Duration::from_secs(10)
            }
        },
    };
    let headers = get_signal(otel, signal, "HEADERS")
        .map(|(_, v)| parse_key_values(&v))
        .unwrap_or_default();
    // The variable's name travels with the path, so a warning about the file names it.
    let file = |suffix: &str| {
        get_signal(otel, signal, suffix)
            .filter(|(_, v)| !v.is_empty())
            .map(|(var, v)| (var, PathBuf::from(v)))
    };
    let tls = OtlpTls {
        certificate: file("CERTIFICATE"),
        client_certificate: file("CLIENT_CERTIFICATE"),
        client_key: file("CLIENT_KEY"),
    };
    OtlpSignal {
        protocol,
        endpoint,
        timeout,
        headers,
        tls,
    }
}

/// `k1=v1,k2=v2` with percent-encoded values, as `OTEL_RESOURCE_ATTRIBUTES` and
/// `OTEL_EXPORTER_OTLP_HEADERS` use. Malformed members are skipped.
fn parse_key_values(v: &str) -> Vec<(String, String)> {
    v.split(',')
        .filter_map(|member| {
            let (k, v) = member.split_once('=')?;
            let k = k.trim();
            (!k.is_empty()).then(|| (k.to_owned(), percent_decode(v.trim())))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
