//! Typed configuration: every `RAGSCOPE_*` and `OTEL_*` variable, parsed once at start-up.
//!
//! Values are read through [`Source`] so tests hand in a map and never touch the process
//! environment. `RAGSCOPE_*` variables are ours: a bad value stops start-up with a
//! [`ConfigError`] naming the variable, the value and the accepted form. `OTEL_*` variables
//! follow the OpenTelemetry specification instead: an invalid value is warned about and ignored
//! (the warnings are returned in [`Config::warnings`] so they can be logged once logging is up).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::Uri;

/// Where configuration values come from.
pub trait Source {
    /// The raw value of `name`, or `None` when it is not set.
    fn get(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Env;

impl Source for Env {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Source for HashMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        HashMap::get(self, name).cloned()
    }
}

impl Source for [(&str, &str)] {
    fn get(&self, name: &str) -> Option<String> {
        self.iter()
            .rev()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
    }
}

/// A `RAGSCOPE_*` variable that does not parse. Its message is the one line printed at start-up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {var}={value:?}: expected {expected}")]
pub struct ConfigError {
    /// The variable's name.
    pub var: &'static str,
    /// The value that was given.
    pub value: String,
    /// The accepted form, written for a person.
    pub expected: String,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (the default: what log pipelines ingest).
    Json,
    /// Human-readable text.
    Text,
}

/// Everything ragscope needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// `RAGSCOPE_LISTEN`: the proxy listener.
    pub listen: SocketAddr,
    /// `RAGSCOPE_UPSTREAM`: the server we sit beside.
    pub upstream: Upstream,
    /// `RAGSCOPE_ADMIN_LISTEN`: the admin listener, `None` when `off`.
    pub admin_listen: Option<SocketAddr>,
    /// `RAGSCOPE_LOG`: tracing `EnvFilter` directives.
    pub log: String,
    /// `RAGSCOPE_LOG_FORMAT`.
    pub log_format: LogFormat,
    /// `RAGSCOPE_CONNECT_TIMEOUT`: TCP (and TLS) connect to the upstream.
    pub connect_timeout: Duration,
    /// `RAGSCOPE_RESPONSE_TIMEOUT`: from sending the request to the upstream's response headers.
    pub response_timeout: Duration,
    /// `RAGSCOPE_IDLE_TIMEOUT`: the longest silence allowed inside a streaming body.
    pub idle_timeout: Duration,
    /// `RAGSCOPE_MAX_REQUEST_BODY`: bytes; a larger request body gets 413.
    pub max_request_body: u64,
    /// `RAGSCOPE_DRAIN_TIMEOUT`: how long in-flight requests may run on after SIGTERM.
    pub drain_timeout: Duration,
    /// `RAGSCOPE_HEADER_READ_TIMEOUT`: a client must send its request headers within this.
    pub header_read_timeout: Duration,
    /// `RAGSCOPE_MAX_CONNECTIONS`: open client connections; past it, accepting pauses.
    pub max_connections: usize,
    /// `RAGSCOPE_MAX_HEADER_BYTES`: request header block size; larger gets 431.
    pub max_header_bytes: usize,
    /// `RAGSCOPE_MAX_HEADERS`: request header count; more gets 431.
    pub max_headers: usize,
    /// `RAGSCOPE_H2_MAX_CONCURRENT_STREAMS`: per HTTP/2 connection.
    pub h2_max_concurrent_streams: u32,
    // -- TLS and access control --
    /// `RAGSCOPE_TLS_CERT` and `RAGSCOPE_TLS_KEY`: TLS on the listener when both are set.
    pub tls: Option<TlsFiles>,
    /// `RAGSCOPE_TLS_CLIENT_CA`: CA bundle; set = a valid client certificate is required.
    pub tls_client_ca: Option<PathBuf>,
    /// `RAGSCOPE_TLS_HANDSHAKE_TIMEOUT`: a client must finish the TLS handshake within this.
    pub tls_handshake_timeout: Duration,
    /// `RAGSCOPE_UPSTREAM_CA`: CA bundle the https upstream is verified against instead of
    /// the system roots.
    pub upstream_ca: Option<PathBuf>,
    /// `RAGSCOPE_API_KEYS_FILE`: accepted API keys; set = a key is required.
    pub api_keys_file: Option<PathBuf>,
    /// `RAGSCOPE_API_KEYS_FORWARD`: whether the header that carried the key goes upstream.
    pub api_keys_forward: bool,
    /// Rate limiting (`RAGSCOPE_RATE_*`, `RAGSCOPE_TRUSTED_PROXIES`).
    pub rate_limit: RateLimitConfig,
    /// Telemetry settings from the `OTEL_*` variables.
    pub telemetry: TelemetryConfig,
    /// Operations: recent-requests view and active health checks (`RAGSCOPE_RECENT_TRACES`,
    /// `RAGSCOPE_HEALTH_*`).
    pub ops: OpsConfig,
    /// `OTEL_*` values that were invalid and ignored, per the OpenTelemetry specification.
    pub warnings: Vec<String>,
    /// GenAI and RAG observation (`RAGSCOPE_GENAI*`, `RAGSCOPE_PARSE_MAX_BYTES`, ...).
    pub genai: GenAiConfig,
    /// Operator's view (issue 16): `RAGSCOPE_ADMIN_TOKEN`, `RAGSCOPE_MODEL_PRICES`.
    pub overview: OverviewConfig,
}

/// The listener's certificate chain and private key (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// `RAGSCOPE_TLS_CERT`: the certificate chain, leaf first.
    pub cert: PathBuf,
    /// `RAGSCOPE_TLS_KEY`: the private key (PKCS#8, SEC1 or RSA).
    pub key: PathBuf,
}

/// The upstream server, from `RAGSCOPE_UPSTREAM`.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// `http` or `https`.
    pub scheme: http::uri::Scheme,
    /// `host:port` as given.
    pub authority: http::uri::Authority,
    /// The host name or address.
    pub host: String,
    /// The port, defaulted from the scheme.
    pub port: u16,
}

impl Upstream {
    /// The upstream URL for a request's path and query.
    pub fn uri_for(
        &self,
        path_and_query: Option<&http::uri::PathAndQuery>,
    ) -> Result<Uri, http::Error> {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(
            path_and_query
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
        );
        Ok(Uri::from_parts(parts)?)
    }
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
    /// Trace export.
    pub traces: OtlpSignal,
    /// Metric export.
    pub metrics: OtlpSignal,
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
}

impl Config {
    /// Parses the whole configuration from `source`.
    pub fn from_source(source: &(impl Source + ?Sized)) -> Result<Config, ConfigError> {
        let r = Reader { source };
        let mut warnings = Vec::new();
        let telemetry = TelemetryConfig::from_source(source, &mut warnings);
        let genai = GenAiConfig::from_source(&r, source, &mut warnings)?;
        let path = |var: &str| non_empty(source.get(var)).map(|v| PathBuf::from(v.trim()));
        let tls = match (path("RAGSCOPE_TLS_CERT"), path("RAGSCOPE_TLS_KEY")) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            (Some(cert), None) => {
                return Err(ConfigError {
                    var: "RAGSCOPE_TLS_KEY",
                    value: String::new(),
                    expected: format!(
                        "the private key file, because RAGSCOPE_TLS_CERT={} is set (set both or neither)",
                        cert.display()
                    ),
                });
            }
            (None, Some(key)) => {
                return Err(ConfigError {
                    var: "RAGSCOPE_TLS_CERT",
                    value: String::new(),
                    expected: format!(
                        "the certificate file, because RAGSCOPE_TLS_KEY={} is set (set both or neither)",
                        key.display()
                    ),
                });
            }
        };
        let tls_client_ca = path("RAGSCOPE_TLS_CLIENT_CA");
        if let (Some(ca), None) = (&tls_client_ca, &tls) {
            return Err(ConfigError {
                var: "RAGSCOPE_TLS_CLIENT_CA",
                value: ca.display().to_string(),
                expected: "to be set only together with RAGSCOPE_TLS_CERT and RAGSCOPE_TLS_KEY (client certificates need TLS)".to_owned(),
            });
        }
        Ok(Config {
            tls,
            tls_client_ca,
            tls_handshake_timeout: r.parse(
                "RAGSCOPE_TLS_HANDSHAKE_TIMEOUT",
                "10s",
                DURATION_FORM,
                |v| parse_duration(v).filter(|d| !d.is_zero()),
            )?,
            upstream_ca: path("RAGSCOPE_UPSTREAM_CA"),
            api_keys_file: path("RAGSCOPE_API_KEYS_FILE"),
            api_keys_forward: r.parse("RAGSCOPE_API_KEYS_FORWARD", "false", "true or false", |v| {
                match v.to_ascii_lowercase().as_str() {
                    "true" => Some(true),
                    "false" => Some(false),
                    _ => None,
                }
            })?,
            listen: r.parse("RAGSCOPE_LISTEN", "0.0.0.0:8080", SOCKET_FORM, parse_socket_addr)?,
            upstream: r.parse(
                "RAGSCOPE_UPSTREAM",
                "http://127.0.0.1:8000",
                "an http:// or https:// URL with a host and optional port and no path, like http://127.0.0.1:8000",
                parse_upstream,
            )?,
            admin_listen: r.parse(
                "RAGSCOPE_ADMIN_LISTEN",
                "127.0.0.1:9901",
                "an address like 127.0.0.1:9901, or off",
                |v| {
                    if v.eq_ignore_ascii_case("off") {
                        Some(None)
                    } else {
                        parse_socket_addr(v).map(Some)
                    }
                },
            )?,
            log: r.parse("RAGSCOPE_LOG", "info", "a log filter like info or ragscope=debug,warn", |v| {
                tracing_subscriber::EnvFilter::builder()
                    .parse(v)
                    .ok()
                    .map(|_| v.to_owned())
            })?,
            log_format: r.parse("RAGSCOPE_LOG_FORMAT", "json", "json or text", |v| {
                match v.to_ascii_lowercase().as_str() {
                    "json" => Some(LogFormat::Json),
                    "text" => Some(LogFormat::Text),
                    _ => None,
                }
            })?,
            connect_timeout: r.parse("RAGSCOPE_CONNECT_TIMEOUT", "5s", DURATION_FORM, parse_duration)?,
            response_timeout: r.parse("RAGSCOPE_RESPONSE_TIMEOUT", "60s", DURATION_FORM, parse_duration)?,
            idle_timeout: r.parse("RAGSCOPE_IDLE_TIMEOUT", "60s", DURATION_FORM, parse_duration)?,
            max_request_body: r.parse("RAGSCOPE_MAX_REQUEST_BODY", "16MiB", SIZE_FORM, parse_size)?,
            drain_timeout: r.parse("RAGSCOPE_DRAIN_TIMEOUT", "30s", DURATION_FORM, parse_duration)?,
            header_read_timeout: r.parse(
                "RAGSCOPE_HEADER_READ_TIMEOUT",
                "10s",
                DURATION_FORM,
                parse_duration,
            )?,
            max_connections: r.parse(
                "RAGSCOPE_MAX_CONNECTIONS",
                "10000",
                "a whole number of connections, at least 1",
                |v| v.parse::<usize>().ok().filter(|n| *n >= 1),
            )?,
            max_header_bytes: r.parse(
                "RAGSCOPE_MAX_HEADER_BYTES",
                "64KiB",
                "a size between 8KiB and 1MiB, like 64KiB",
                |v| {
                    parse_size(v)
                        .filter(|n| (8192..=1 << 20).contains(n))
                        .map(|n| n as usize)
                },
            )?,
            max_headers: r.parse(
                "RAGSCOPE_MAX_HEADERS",
                "100",
                "a whole number of headers between 1 and 1000",
                |v| v.parse::<usize>().ok().filter(|n| (1..=1000).contains(n)),
            )?,
            h2_max_concurrent_streams: r.parse(
                "RAGSCOPE_H2_MAX_CONCURRENT_STREAMS",
                "100",
                "a whole number of streams, at least 1",
                |v| v.parse::<u32>().ok().filter(|n| *n >= 1),
            )?,
            rate_limit: RateLimitConfig::from_reader(&r)?,
            telemetry,
            ops: OpsConfig::from_reader(&r)?,
            // issue 16: the operator's view.
            overview: OverviewConfig::from_reader(&r)?,
            warnings,
            genai,
        })
    }
}

/// Operations settings: what the admin listener shows and how the upstream is watched.
#[derive(Debug, Clone, PartialEq)]
pub struct OpsConfig {
    /// `RAGSCOPE_RECENT_TRACES`: requests kept for `/traces` (0 = off).
    pub recent_traces: usize,
    /// Active health checks of the upstream; `None` (no `RAGSCOPE_HEALTH_PATH`) = passive only.
    pub health: Option<HealthCheckConfig>,
}

/// Active health checks (`RAGSCOPE_HEALTH_*`).
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheckConfig {
    /// `RAGSCOPE_HEALTH_PATH`: path (and query) of the upstream's health endpoint; 2xx = healthy.
    pub path: http::uri::PathAndQuery,
    /// `RAGSCOPE_HEALTH_INTERVAL`: time between checks.
    pub interval: Duration,
    /// `RAGSCOPE_HEALTH_TIMEOUT`: one check's limit (at most the interval).
    pub timeout: Duration,
    /// `RAGSCOPE_HEALTH_UNHEALTHY_THRESHOLD`: consecutive failures that mark the upstream down.
    pub unhealthy_threshold: u32,
    /// `RAGSCOPE_HEALTH_HEALTHY_THRESHOLD`: consecutive successes that mark it up again.
    pub healthy_threshold: u32,
}

impl OpsConfig {
    fn from_reader<S: Source + ?Sized>(r: &Reader<'_, S>) -> Result<OpsConfig, ConfigError> {
        let recent_traces = r.parse(
            "RAGSCOPE_RECENT_TRACES",
            "1000",
            "a whole number of requests between 0 (off) and 100000",
            |v| v.parse::<usize>().ok().filter(|n| *n <= 100_000),
        )?;
        let path = r.parse(
            "RAGSCOPE_HEALTH_PATH",
            "off",
            "a path starting with / like /health, or off",
            |v| {
                if v.eq_ignore_ascii_case("off") {
                    return Some(None);
                }
                v.starts_with('/')
                    .then(|| v.parse::<http::uri::PathAndQuery>().ok())
                    .flatten()
                    .map(Some)
            },
        )?;
        let interval = r.parse(
            "RAGSCOPE_HEALTH_INTERVAL",
            "10s",
            "a duration of at least 100ms, like 10s",
            |v| parse_duration(v).filter(|d| *d >= Duration::from_millis(100)),
        )?;
        let timeout = r.parse(
            "RAGSCOPE_HEALTH_TIMEOUT",
            "2s",
            "a duration of at least 10ms, like 2s",
            |v| parse_duration(v).filter(|d| *d >= Duration::from_millis(10)),
        )?;
        let threshold_form = "a whole number of consecutive checks between 1 and 10";
        let threshold = |v: &str| v.parse::<u32>().ok().filter(|n| (1..=10).contains(n));
        let unhealthy_threshold = r.parse(
            "RAGSCOPE_HEALTH_UNHEALTHY_THRESHOLD",
            "2",
            threshold_form,
            threshold,
        )?;
        let healthy_threshold = r.parse(
            "RAGSCOPE_HEALTH_HEALTHY_THRESHOLD",
            "2",
            threshold_form,
            threshold,
        )?;
        Ok(OpsConfig {
            recent_traces,
            health: path.map(|path| HealthCheckConfig {
                path,
                interval,
                // A check that outlives its interval would delay the next one: cap it.
                timeout: timeout.min(interval),
                unhealthy_threshold,
                healthy_threshold,
            }),
        })
    }
}

const SOCKET_FORM: &str = "an IP address and port like 0.0.0.0:8080 or [::]:8080";
const DURATION_FORM: &str = "a duration like 250ms, 5s, 2m or 1h";
const SIZE_FORM: &str = "a size in bytes like 1048576, 512KiB, 16MiB or 1GiB";

/// Reads one `RAGSCOPE_*` variable: unset or empty means the default.
struct Reader<'a, S: Source + ?Sized> {
    source: &'a S,
}

impl<S: Source + ?Sized> Reader<'_, S> {
    fn parse<T>(
        &self,
        var: &'static str,
        default: &str,
        expected: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<T, ConfigError> {
        let given = non_empty(self.source.get(var));
        let raw = given.as_deref().unwrap_or(default);
        parse(raw.trim()).ok_or_else(|| ConfigError {
            var,
            value: raw.to_owned(),
            expected: expected.to_owned(),
        })
    }
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.trim().is_empty())
}

/// `0.0.0.0:8080`, `[::]:8080`, `localhost:8080`.
fn parse_socket_addr(v: &str) -> Option<SocketAddr> {
    if let Ok(addr) = v.parse() {
        return Some(addr);
    }
    let (host, port) = v.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    if host.eq_ignore_ascii_case("localhost") {
        return Some(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    None
}

fn parse_upstream(v: &str) -> Option<Upstream> {
    let uri: Uri = v.parse().ok()?;
    let scheme = uri.scheme()?.clone();
    let default_port = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let authority = uri.authority()?.clone();
    if authority.as_str().contains('@') {
        return None;
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return None;
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    if host.is_empty() {
        return None;
    }
    Some(Upstream {
        port: authority.port_u16().unwrap_or(default_port),
        scheme,
        authority,
        host,
    })
}

/// `250ms`, `5s`, `2m`, `1h`; a bare number is seconds.
pub fn parse_duration(v: &str) -> Option<Duration> {
    let v = v.trim();
    let split = v
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: f64 = num.parse().ok()?;
    if !n.is_finite() || n < 0.0 {
        return None;
    }
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(secs).ok()
}

/// `1048576`, `512KiB`, `16MiB`, `1GiB`, also `KB`/`MB`/`GB` (decimal) and `k`/`M`/`G` (binary).
pub fn parse_size(v: &str) -> Option<u64> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "k" | "K" | "Ki" => 1 << 10,
        "MiB" | "M" | "Mi" => 1 << 20,
        "GiB" | "G" | "Gi" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

impl TelemetryConfig {
    fn from_source(source: &(impl Source + ?Sized), warnings: &mut Vec<String>) -> TelemetryConfig {
        let otel = OtelReader { source };
        let mut warn = |var: &str, value: &str, expected: &str| {
            warnings.push(format!(
                "ignoring invalid {var}={value:?}: expected {expected}"
            ));
        };

        let sdk_disabled = otel
            .get("OTEL_SDK_DISABLED")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));

        let exporter = |var: &str, warn: &mut dyn FnMut(&str, &str, &str)| match otel.get(var) {
            None => ExporterKind::Otlp,
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
                    warn(var, &v, "otlp, console or none");
                    ExporterKind::Otlp
                }
            }
        };
        let traces_exporter = exporter("OTEL_TRACES_EXPORTER", &mut warn);
        let metrics_exporter = exporter("OTEL_METRICS_EXPORTER", &mut warn);

        let traces = otel.signal("TRACES", "/v1/traces", &mut warn);
        let metrics = otel.signal("METRICS", "/v1/metrics", &mut warn);

        let service_name = otel.get("OTEL_SERVICE_NAME");
        let resource_attributes = otel
            .get("OTEL_RESOURCE_ATTRIBUTES")
            .map(|v| parse_key_values(&v))
            .unwrap_or_default();

        let ratio =
            |warn: &mut dyn FnMut(&str, &str, &str)| match otel.get("OTEL_TRACES_SAMPLER_ARG") {
                None => 1.0,
                Some(v) => match v.parse::<f64>() {
                    Ok(r) if (0.0..=1.0).contains(&r) => r,
                    _ => {
                        warn("OTEL_TRACES_SAMPLER_ARG", &v, "a ratio between 0 and 1");
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
                "traceidratio" => SamplerConfig::TraceIdRatio(ratio(&mut warn)),
                "parentbased_always_on" => SamplerConfig::ParentBased(ParentRoot::AlwaysOn),
                "parentbased_always_off" => SamplerConfig::ParentBased(ParentRoot::AlwaysOff),
                "parentbased_traceidratio" => {
                    SamplerConfig::ParentBased(ParentRoot::TraceIdRatio(ratio(&mut warn)))
                }
                _ => {
                    warn(
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
                        other => warn("OTEL_PROPAGATORS", other, "tracecontext, baggage or none"),
                    }
                }
                p
            }
        };

        let mut number = |var: &str, default: usize| match otel.get(var) {
            None => default,
            Some(v) => match v.parse::<usize>() {
                Ok(n) if n > 0 => n,
                _ => {
                    warn(var, &v, "a positive whole number");
                    default
                }
            },
        };
        let bsp_max_queue_size = number("OTEL_BSP_MAX_QUEUE_SIZE", 2048);
        let bsp_max_export_batch_size =
            number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512).min(bsp_max_queue_size);
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
            traces,
            metrics,
            service_name,
            resource_attributes,
            sampler,
            propagators,
            bsp_max_queue_size,
            bsp_schedule_delay,
            bsp_max_export_batch_size,
            metric_export_interval,
            metric_export_timeout,
        }
    }
}

/// Reads `OTEL_*` variables: empty means unset, per the specification.
struct OtelReader<'a, S: Source + ?Sized> {
    source: &'a S,
}

impl<S: Source + ?Sized> OtelReader<'_, S> {
    fn get(&self, var: &str) -> Option<String> {
        non_empty(self.source.get(var)).map(|v| v.trim().to_owned())
    }

    /// The per-signal variable if set, else the generic one.
    fn get_signal(&self, signal: &str, suffix: &str) -> Option<(String, String)> {
        let specific = format!("OTEL_EXPORTER_OTLP_{signal}_{suffix}");
        if let Some(v) = self.get(&specific) {
            return Some((specific, v));
        }
        let generic = format!("OTEL_EXPORTER_OTLP_{suffix}");
        self.get(&generic).map(|v| (generic, v))
    }

    fn signal(
        &self,
        signal: &str,
        path: &str,
        warn: &mut dyn FnMut(&str, &str, &str),
    ) -> OtlpSignal {
        let protocol = match self.get_signal(signal, "PROTOCOL") {
            None => OtlpProtocol::HttpProtobuf,
            Some((var, v)) => match v.as_str() {
                "grpc" => OtlpProtocol::Grpc,
                "http/protobuf" => OtlpProtocol::HttpProtobuf,
                _ => {
                    warn(&var, &v, "grpc or http/protobuf");
                    OtlpProtocol::HttpProtobuf
                }
            },
        };
        let specific = format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT");
        let endpoint = if let Some(v) = self.get(&specific) {
            // A per-signal endpoint is used as it is.
            v
        } else {
            let base = self
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
        let timeout = match self.get_signal(signal, "TIMEOUT") {
            None => Duration::from_secs(10),
            Some((var, v)) => match v.parse::<u64>() {
                Ok(ms) => Duration::from_millis(ms),
                Err(_) => {
                    warn(&var, &v, "a timeout in milliseconds");
                    Duration::from_secs(10)
                }
            },
        };
        let headers = self
            .get_signal(signal, "HEADERS")
            .map(|(_, v)| parse_key_values(&v))
            .unwrap_or_default();
        OtlpSignal {
            protocol,
            endpoint,
            timeout,
            headers,
        }
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

// ---- rate limiting -------------------------------------------------------------------------

/// Rate limiting settings. `limit: None` means rate limiting is off (the default).
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitConfig {
    /// `RAGSCOPE_RATE_LIMIT`: requests per key per period.
    pub limit: Option<Rate>,
    /// `RAGSCOPE_RATE_BURST`: bucket size; defaults to the per-second rate rounded up, at least 1.
    pub burst: u32,
    /// `RAGSCOPE_RATE_KEY`: what a budget belongs to.
    pub key: RateKeyKind,
    /// `RAGSCOPE_TRUSTED_PROXIES`: peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// `RAGSCOPE_RATE_MAX_KEYS`: most keys tracked in memory at once.
    pub max_keys: usize,
    /// `RAGSCOPE_RATE_MODE`: refuse, or only record.
    pub mode: RateMode,
    /// `RAGSCOPE_RATE_LIMIT_REDIS`: a `redis://host:port/db` URL for a fleet-wide budget.
    pub redis: Option<String>,
    /// `RAGSCOPE_RATE_LIMIT_REDIS_TIMEOUT`: longest wait for Redis before the local limiter
    /// decides.
    pub redis_timeout: Duration,
}

/// `N/s`, `N/m` or `N/h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests allowed per `period`.
    pub count: u32,
    /// The period.
    pub period: Duration,
}

impl Rate {
    /// The time one request's worth of budget takes to come back.
    pub fn interval(&self) -> Duration {
        self.period / self.count
    }

    /// The default burst: the per-second rate rounded up, at least 1.
    pub fn default_burst(&self) -> u32 {
        let per_second = f64::from(self.count) / self.period.as_secs_f64();
        (per_second.ceil() as u32).max(1)
    }
}

/// What a rate-limit budget belongs to (`RAGSCOPE_RATE_KEY`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateKeyKind {
    /// The client address (IPv6 grouped by /64).
    Ip,
    /// The value of a request header; the client address when it is missing.
    Header(http::HeaderName),
    /// The API key name access control admitted the request with; the client address without.
    ApiKey,
}

/// `RAGSCOPE_RATE_MODE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateMode {
    /// Over the limit gets 429 (the default).
    Enforce,
    /// Decide and record, but forward everything.
    Shadow,
}

impl RateLimitConfig {
    fn from_reader<S: Source + ?Sized>(r: &Reader<'_, S>) -> Result<RateLimitConfig, ConfigError> {
        let limit = r.parse(
            "RAGSCOPE_RATE_LIMIT",
            "off",
            "requests per period like 50/s, 600/m or 10000/h (or off)",
            |v| {
                if v.eq_ignore_ascii_case("off") {
                    Some(None)
                } else {
                    parse_rate(v).map(Some)
                }
            },
        )?;
        let default_burst = limit.map(|l| l.default_burst()).unwrap_or(1).to_string();
        Ok(RateLimitConfig {
            limit,
            burst: r.parse(
                "RAGSCOPE_RATE_BURST",
                &default_burst,
                "a whole number of requests, at least 1",
                |v| v.parse::<u32>().ok().filter(|n| *n >= 1),
            )?,
            key: r.parse(
                "RAGSCOPE_RATE_KEY",
                "ip",
                "ip, api-key or header:NAME (like header:x-api-key)",
                parse_rate_key,
            )?,
            trusted_proxies: r.parse(
                "RAGSCOPE_TRUSTED_PROXIES",
                "",
                "a comma-separated list of CIDRs or addresses, like 10.0.0.0/8,fd00::/8,192.0.2.7",
                parse_cidrs,
            )?,
            max_keys: r.parse(
                "RAGSCOPE_RATE_MAX_KEYS",
                "100000",
                "a whole number of keys, at least 1",
                |v| v.parse::<usize>().ok().filter(|n| *n >= 1),
            )?,
            mode: r.parse(
                "RAGSCOPE_RATE_MODE",
                "enforce",
                "enforce or shadow",
                |v| match v.to_ascii_lowercase().as_str() {
                    "enforce" => Some(RateMode::Enforce),
                    "shadow" => Some(RateMode::Shadow),
                    _ => None,
                },
            )?,
            redis: r.parse(
                "RAGSCOPE_RATE_LIMIT_REDIS",
                "off",
                "a Redis URL like redis://127.0.0.1:6379/0 (or off)",
                |v| {
                    if v.eq_ignore_ascii_case("off") {
                        return Some(None);
                    }
                    let uri: Uri = v.parse().ok()?;
                    // The client library's own parser catches the rest (database number...).
                    (uri.scheme_str() == Some("redis")
                        && uri.host().is_some_and(|h| !h.is_empty())
                        && redis::Client::open(v).is_ok())
                    .then(|| Some(v.to_owned()))
                },
            )?,
            redis_timeout: r.parse(
                "RAGSCOPE_RATE_LIMIT_REDIS_TIMEOUT",
                "50ms",
                "a duration between 1ms and 10s, like 50ms",
                |v| {
                    parse_duration(v).filter(|d| {
                        (Duration::from_millis(1)..=Duration::from_secs(10)).contains(d)
                    })
                },
            )?,
        })
    }
}

/// `50/s`, `600/m`, `10000/h` (also `/sec`, `/min`, `/hour`).
fn parse_rate(v: &str) -> Option<Rate> {
    let (count, unit) = v.split_once('/')?;
    let count: u32 = count.trim().parse().ok().filter(|n| *n >= 1)?;
    let period = match unit.trim() {
        "s" | "sec" | "second" => Duration::from_secs(1),
        "m" | "min" | "minute" => Duration::from_secs(60),
        "h" | "hour" => Duration::from_secs(3600),
        _ => return None,
    };
    Some(Rate { count, period })
}

fn parse_rate_key(v: &str) -> Option<RateKeyKind> {
    match v.to_ascii_lowercase().as_str() {
        "ip" => Some(RateKeyKind::Ip),
        "api-key" => Some(RateKeyKind::ApiKey),
        other => {
            let name = other.strip_prefix("header:")?.trim();
            http::HeaderName::from_bytes(name.as_bytes())
                .ok()
                .map(RateKeyKind::Header)
        }
    }
}

/// `10.0.0.0/8, fd00::/8, 192.0.2.7`: a bare address is a single host.
fn parse_cidrs(v: &str) -> Option<Vec<ipnet::IpNet>> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<ipnet::IpNet>()
                .ok()
                .or_else(|| s.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
                .map(|n| n.trunc())
        })
        .collect()
}

#[cfg(test)]
mod rate_limit_tests {
    use super::*;

    fn parse(vars: &[(&str, &str)]) -> Result<RateLimitConfig, ConfigError> {
        Config::from_source(vars).map(|c| c.rate_limit)
    }

    #[test]
    fn off_by_default() {
        let c = parse(&[]).expect("parse");
        assert_eq!(c.limit, None);
        assert_eq!(c.key, RateKeyKind::Ip);
        assert_eq!(c.mode, RateMode::Enforce);
        assert_eq!(c.max_keys, 100_000);
        assert_eq!(c.redis, None);
        assert_eq!(c.redis_timeout, Duration::from_millis(50));
        assert!(c.trusted_proxies.is_empty());
    }

    #[test]
    fn rates_and_default_bursts() {
        let c = parse(&[("RAGSCOPE_RATE_LIMIT", "50/s")]).expect("parse");
        assert_eq!(
            c.limit,
            Some(Rate {
                count: 50,
                period: Duration::from_secs(1)
            })
        );
        assert_eq!(c.burst, 50);
        assert_eq!(
            c.limit.map(|l| l.interval()),
            Some(Duration::from_millis(20))
        );
        let c = parse(&[("RAGSCOPE_RATE_LIMIT", "600/m")]).expect("parse");
        assert_eq!(c.burst, 10);
        let c = parse(&[("RAGSCOPE_RATE_LIMIT", "10000/h")]).expect("parse");
        assert_eq!(c.burst, 3, "2.78/s rounds up");
        let c = parse(&[("RAGSCOPE_RATE_LIMIT", "5/h")]).expect("parse");
        assert_eq!(c.burst, 1, "at least 1");
        let c = parse(&[
            ("RAGSCOPE_RATE_LIMIT", "5/h"),
            ("RAGSCOPE_RATE_BURST", "20"),
        ])
        .expect("parse");
        assert_eq!(c.burst, 20);
    }

    #[test]
    fn keys_proxies_mode_and_redis() {
        let c = parse(&[
            ("RAGSCOPE_RATE_KEY", "header:X-API-Key"),
            (
                "RAGSCOPE_TRUSTED_PROXIES",
                "10.0.0.0/8, 192.0.2.7 ,fd00::1/8",
            ),
            ("RAGSCOPE_RATE_MODE", "shadow"),
            ("RAGSCOPE_RATE_LIMIT_REDIS", "redis://127.0.0.1:6379/2"),
            ("RAGSCOPE_RATE_LIMIT_REDIS_TIMEOUT", "20ms"),
        ])
        .expect("parse");
        assert_eq!(
            c.key,
            RateKeyKind::Header(http::HeaderName::from_static("x-api-key"))
        );
        let nets: Vec<String> = c.trusted_proxies.iter().map(|n| n.to_string()).collect();
        assert_eq!(nets, ["10.0.0.0/8", "192.0.2.7/32", "fd00::/8"]);
        assert_eq!(c.mode, RateMode::Shadow);
        assert_eq!(c.redis.as_deref(), Some("redis://127.0.0.1:6379/2"));
        assert_eq!(c.redis_timeout, Duration::from_millis(20));
        assert_eq!(
            parse(&[("RAGSCOPE_RATE_KEY", "api-key")])
                .expect("parse")
                .key,
            RateKeyKind::ApiKey
        );
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (var, bad) in [
            ("RAGSCOPE_RATE_LIMIT", "50"),
            ("RAGSCOPE_RATE_LIMIT", "0/s"),
            ("RAGSCOPE_RATE_LIMIT", "50/d"),
            ("RAGSCOPE_RATE_LIMIT", "-5/s"),
            ("RAGSCOPE_RATE_BURST", "0"),
            ("RAGSCOPE_RATE_KEY", "cookie"),
            ("RAGSCOPE_RATE_KEY", "header:"),
            ("RAGSCOPE_RATE_KEY", "header:bad header"),
            ("RAGSCOPE_TRUSTED_PROXIES", "10.0.0.0/33"),
            ("RAGSCOPE_TRUSTED_PROXIES", "proxy.internal"),
            ("RAGSCOPE_RATE_MAX_KEYS", "0"),
            ("RAGSCOPE_RATE_MODE", "dry-run"),
            ("RAGSCOPE_RATE_LIMIT_REDIS", "http://127.0.0.1:6379"),
            ("RAGSCOPE_RATE_LIMIT_REDIS", "127.0.0.1:6379"),
            ("RAGSCOPE_RATE_LIMIT_REDIS_TIMEOUT", "0ms"),
            ("RAGSCOPE_RATE_LIMIT_REDIS_TIMEOUT", "1m"),
        ] {
            let err = parse(&[(var, bad)]).expect_err(var);
            assert_eq!(err.var, var);
            assert_eq!(err.value, bad);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// GenAI and RAG observation.

/// Content capture (`OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureMode {
    /// `NO_CONTENT` or unset: no message content anywhere (the default).
    Off,
    /// `true` or `SPAN_ONLY`: content as span attributes.
    Span,
    /// `EVENT_ONLY`: content on a span event only.
    Event,
    /// `SPAN_AND_EVENT`: both.
    SpanAndEvent,
}

/// GenAI and RAG observation settings.
#[derive(Debug, Clone)]
pub struct GenAiConfig {
    /// `RAGSCOPE_GENAI` (`on`/`off`): observe GenAI and RAG traffic at all.
    pub enabled: bool,
    /// `RAGSCOPE_GENAI_PROVIDER`: `gen_ai.provider.name`.
    pub provider: String,
    /// `RAGSCOPE_PARSE_MAX_BYTES`: the bounded copy of one body (or one SSE event).
    pub parse_max_bytes: usize,
    /// `RAGSCOPE_EXTRACT`: JSON-pointer rules for other APIs.
    pub extract: Vec<crate::genai::extract::Rule>,
    /// `RAGSCOPE_VERSION_HEADER`: response header carrying the model version; `None` when off.
    pub version_header: Option<http::HeaderName>,
    /// `OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`.
    pub capture: CaptureMode,
    /// `RAGSCOPE_CAPTURE_MAX_BYTES`: captured content per attribute.
    pub capture_max_bytes: usize,
    /// The built-in redaction patterns plus `RAGSCOPE_REDACT_PATTERNS`, compiled.
    pub redactor: crate::genai::redact::Redactor,
    /// `RAGSCOPE_FEEDBACK_PATH`: the feedback endpoint; `None` when off.
    pub feedback_path: Option<String>,
}

impl GenAiConfig {
    fn from_source<S: Source + ?Sized>(
        r: &Reader<'_, S>,
        source: &S,
        warnings: &mut Vec<String>,
    ) -> Result<GenAiConfig, ConfigError> {
        let capture = match non_empty(
            source.get("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"),
        ) {
            None => CaptureMode::Off,
            Some(v) => match v.trim().to_ascii_uppercase().as_str() {
                "TRUE" | "SPAN_ONLY" => CaptureMode::Span,
                "EVENT_ONLY" => CaptureMode::Event,
                "SPAN_AND_EVENT" => CaptureMode::SpanAndEvent,
                "FALSE" | "NO_CONTENT" => CaptureMode::Off,
                _ => {
                    warnings.push(format!(
                        "ignoring invalid OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT={v:?}: \
                         expected true, NO_CONTENT, SPAN_ONLY, EVENT_ONLY or SPAN_AND_EVENT"
                    ));
                    CaptureMode::Off
                }
            },
        };
        let patterns = non_empty(source.get("RAGSCOPE_REDACT_PATTERNS"));
        let extra: Vec<String> = patterns
            .as_deref()
            .unwrap_or_default()
            .split(';')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect();
        let redactor = crate::genai::redact::Redactor::new(&extra).map_err(|why| ConfigError {
            var: "RAGSCOPE_REDACT_PATTERNS",
            value: patterns.clone().unwrap_or_default(),
            expected: format!("regular expressions separated by ';' ({why})"),
        })?;
        let extract_spec = non_empty(source.get("RAGSCOPE_EXTRACT"));
        let extract = crate::genai::extract::parse_rules(extract_spec.as_deref().unwrap_or(""))
            .map_err(|why| ConfigError {
                var: "RAGSCOPE_EXTRACT",
                value: extract_spec.clone().unwrap_or_default(),
                expected: format!("{} ({why})", crate::genai::extract::FORM),
            })?;
        Ok(GenAiConfig {
            enabled: r.parse("RAGSCOPE_GENAI", "on", "on or off", |v| {
                match v.to_ascii_lowercase().as_str() {
                    "on" | "true" => Some(true),
                    "off" | "false" => Some(false),
                    _ => None,
                }
            })?,
            provider: r.parse(
                "RAGSCOPE_GENAI_PROVIDER",
                "openai",
                "a provider name like openai, vllm or azure.ai.openai",
                |v| (v.len() <= 64).then(|| v.to_owned()),
            )?,
            parse_max_bytes: r.parse(
                "RAGSCOPE_PARSE_MAX_BYTES",
                "1MiB",
                "a size between 1KiB and 64MiB, like 1MiB",
                |v| {
                    parse_size(v)
                        .filter(|n| (1024..=64 << 20).contains(n))
                        .map(|n| n as usize)
                },
            )?,
            extract,
            version_header: r.parse(
                "RAGSCOPE_VERSION_HEADER",
                "x-model-version",
                "a header name like x-model-version, or off",
                |v| {
                    if v.eq_ignore_ascii_case("off") {
                        Some(None)
                    } else {
                        crate::genai::header_name(v).map(Some)
                    }
                },
            )?,
            capture,
            capture_max_bytes: r.parse(
                "RAGSCOPE_CAPTURE_MAX_BYTES",
                "8KiB",
                "a size between 16 bytes and 1MiB, like 8KiB",
                |v| {
                    parse_size(v)
                        .filter(|n| (16..=1 << 20).contains(n))
                        .map(|n| n as usize)
                },
            )?,
            redactor,
            feedback_path: r.parse(
                "RAGSCOPE_FEEDBACK_PATH",
                "/ragscope/feedback",
                "a path starting with '/', like /ragscope/feedback, or off",
                |v| {
                    if v.eq_ignore_ascii_case("off") {
                        Some(None)
                    } else {
                        (v.starts_with('/') && !v.contains(['?', '#', ' ']))
                            .then(|| Some(v.to_owned()))
                    }
                },
            )?,
        })
    }
}

// -- issue 16: the operator's view (admin token, model prices) --

/// The admin token: a secret, so its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl AdminToken {
    /// The token's bytes, for the constant-time comparison.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(***)")
    }
}

/// A model's price in US dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelPrice {
    /// Per million input tokens.
    pub input: f64,
    /// Per million output tokens.
    pub output: f64,
}

/// The operator's view settings.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OverviewConfig {
    /// `RAGSCOPE_ADMIN_TOKEN`: bearer token for the admin pages that show request data.
    pub admin_token: Option<AdminToken>,
    /// `RAGSCOPE_MODEL_PRICES`: `model=input/output` USD per million tokens, for the cost column.
    pub model_prices: Vec<(String, ModelPrice)>,
}

impl OverviewConfig {
    fn from_reader<S: Source + ?Sized>(r: &Reader<'_, S>) -> Result<OverviewConfig, ConfigError> {
        let admin_token = r.parse(
            "RAGSCOPE_ADMIN_TOKEN",
            "",
            "at least 16 visible ASCII characters without spaces (e.g. from `openssl rand -hex 32`)",
            |v| {
                if v.is_empty() {
                    return Some(None);
                }
                (v.len() >= 16 && v.bytes().all(|b| b.is_ascii_graphic()))
                    .then(|| Some(AdminToken(v.to_owned())))
            },
        );
        // The value is a secret: the error must not repeat it.
        let admin_token = admin_token.map_err(|mut e| {
            e.value = "***".to_owned();
            e
        })?;
        let model_prices = r.parse(
            "RAGSCOPE_MODEL_PRICES",
            "",
            "comma-separated model=input/output prices in USD per million tokens, like gpt-4o=2.5/10,llama-3-8b=0/0 (at most 64 models)",
            parse_model_prices,
        )?;
        Ok(OverviewConfig {
            admin_token,
            model_prices,
        })
    }
}

/// `gpt-4o=2.5/10,small=0.1/0.4`.
fn parse_model_prices(v: &str) -> Option<Vec<(String, ModelPrice)>> {
    let mut out: Vec<(String, ModelPrice)> = Vec::new();
    for item in v.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (model, prices) = item.rsplit_once('=')?;
        let (input, output) = prices.split_once('/')?;
        let price = |p: &str| {
            p.trim()
                .parse::<f64>()
                .ok()
                .filter(|p| p.is_finite() && *p >= 0.0)
        };
        let model = model.trim();
        if model.is_empty() || out.iter().any(|(m, _)| m == model) {
            return None;
        }
        out.push((
            model.to_owned(),
            ModelPrice {
                input: price(input)?,
                output: price(output)?,
            },
        ));
    }
    (out.len() <= 64).then_some(out)
}

#[cfg(test)]
mod overview_config_tests {
    use super::*;

    #[test]
    fn admin_token_and_prices() {
        let c = Config::from_source(
            &[
                ("RAGSCOPE_ADMIN_TOKEN", "0123456789abcdef0123"),
                ("RAGSCOPE_MODEL_PRICES", "gpt-4o=2.5/10, small=0/0.4"),
            ][..],
        )
        .expect("parse");
        assert_eq!(
            c.overview.admin_token.as_ref().map(AdminToken::as_bytes),
            Some(&b"0123456789abcdef0123"[..])
        );
        assert_eq!(
            format!("{:?}", c.overview.admin_token),
            "Some(AdminToken(***))"
        );
        assert_eq!(c.overview.model_prices.len(), 2);
        assert_eq!(
            c.overview.model_prices[0].1,
            ModelPrice {
                input: 2.5,
                output: 10.0
            }
        );
        let none = Config::from_source(&[][..] as &[(&str, &str)]).expect("parse");
        assert_eq!(none.overview, OverviewConfig::default());
    }

    #[test]
    fn bad_values_stop_start_up_without_echoing_the_token() {
        let e = Config::from_source(&[("RAGSCOPE_ADMIN_TOKEN", "short")][..]).expect_err("short");
        assert_eq!(e.var, "RAGSCOPE_ADMIN_TOKEN");
        assert!(!e.to_string().contains("short"), "{e}");
        for bad in ["m=1", "m=a/1", "=1/1", "m=1/-1", "m=1/1,m=2/2"] {
            let e = Config::from_source(&[("RAGSCOPE_MODEL_PRICES", bad)][..]).expect_err(bad);
            assert_eq!(e.var, "RAGSCOPE_MODEL_PRICES");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_source(vars)
    }

    #[test]
    fn ops_defaults_and_forms() {
        let c = parse(&[]).expect("defaults");
        assert_eq!(c.ops.recent_traces, 1000);
        assert_eq!(c.ops.health, None);
        let c = parse(&[
            ("RAGSCOPE_HEALTH_PATH", "/health?deep=1"),
            ("RAGSCOPE_HEALTH_INTERVAL", "1s"),
            ("RAGSCOPE_HEALTH_TIMEOUT", "5s"),
            ("RAGSCOPE_HEALTH_UNHEALTHY_THRESHOLD", "3"),
            ("RAGSCOPE_RECENT_TRACES", "0"),
        ])
        .expect("valid");
        let h = c.ops.health.expect("health checks on");
        assert_eq!(h.path.as_str(), "/health?deep=1");
        assert_eq!(h.interval, Duration::from_secs(1));
        assert_eq!(h.timeout, Duration::from_secs(1), "capped at the interval");
        assert_eq!((h.unhealthy_threshold, h.healthy_threshold), (3, 2));
        assert_eq!(c.ops.recent_traces, 0);
        for (var, value) in [
            ("RAGSCOPE_HEALTH_PATH", "health"),
            ("RAGSCOPE_HEALTH_INTERVAL", "10ms"),
            ("RAGSCOPE_HEALTH_UNHEALTHY_THRESHOLD", "0"),
            ("RAGSCOPE_HEALTH_HEALTHY_THRESHOLD", "11"),
            ("RAGSCOPE_RECENT_TRACES", "lots"),
        ] {
            let e = parse(&[(var, value)]).expect_err(var);
            assert_eq!((e.var, e.value.as_str()), (var, value));
        }
    }

    #[test]
    fn defaults() {
        let c = parse(&[]).expect("defaults parse");
        assert_eq!(c.listen, "0.0.0.0:8080".parse().expect("addr"));
        assert_eq!(c.upstream.authority.as_str(), "127.0.0.1:8000");
        assert_eq!(
            c.admin_listen,
            Some("127.0.0.1:9901".parse().expect("addr"))
        );
        assert_eq!(c.connect_timeout, Duration::from_secs(5));
        assert_eq!(c.response_timeout, Duration::from_secs(60));
        assert_eq!(c.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.drain_timeout, Duration::from_secs(30));
        assert_eq!(c.max_request_body, 16 << 20);
        assert_eq!(c.log_format, LogFormat::Json);
        let t = &c.telemetry;
        assert!(!t.sdk_disabled);
        assert_eq!(t.traces.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(t.traces.endpoint, "http://localhost:4318/v1/traces");
        assert_eq!(t.metrics.endpoint, "http://localhost:4318/v1/metrics");
        assert_eq!(t.sampler, SamplerConfig::ParentBased(ParentRoot::AlwaysOn));
        assert_eq!(
            t.propagators,
            Propagators {
                trace_context: true,
                baggage: true
            }
        );
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("7"), Some(Duration::from_secs(7)));
        for bad in ["", "s", "5x", "-1s", "5 parsecs", "ms5", "1e9999s"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("512KiB"), Some(512 << 10));
        assert_eq!(parse_size("16MiB"), Some(16 << 20));
        assert_eq!(parse_size("1GiB"), Some(1 << 30));
        assert_eq!(parse_size("10MB"), Some(10_000_000));
        for bad in [
            "",
            "MiB",
            "1.5MiB",
            "-3",
            "16 parsecs",
            "99999999999999999999GiB",
        ] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }

    #[test]
    fn bad_value_names_variable_value_and_form() {
        let err = parse(&[("RAGSCOPE_CONNECT_TIMEOUT", "5x")]).expect_err("must fail");
        assert_eq!(err.var, "RAGSCOPE_CONNECT_TIMEOUT");
        let line = err.to_string();
        assert!(line.contains("RAGSCOPE_CONNECT_TIMEOUT"), "{line}");
        assert!(line.contains("\"5x\""), "{line}");
        assert!(line.contains("250ms"), "{line}");
        for (var, bad) in [
            ("RAGSCOPE_LISTEN", "8080"),
            ("RAGSCOPE_UPSTREAM", "ftp://x"),
            ("RAGSCOPE_UPSTREAM", "http://x/prefix"),
            ("RAGSCOPE_UPSTREAM", "127.0.0.1:8000"),
            ("RAGSCOPE_ADMIN_LISTEN", "nope"),
            ("RAGSCOPE_LOG_FORMAT", "xml"),
            ("RAGSCOPE_LOG", "=="),
            ("RAGSCOPE_MAX_REQUEST_BODY", "lots"),
            ("RAGSCOPE_RESPONSE_TIMEOUT", "soon"),
            ("RAGSCOPE_IDLE_TIMEOUT", "-1s"),
            ("RAGSCOPE_DRAIN_TIMEOUT", "30 s s"),
            ("RAGSCOPE_MAX_CONNECTIONS", "0"),
        ] {
            let err = parse(&[(var, bad)]).expect_err(var);
            assert_eq!(err.var, var);
            assert_eq!(err.value, bad);
        }
    }

    #[test]
    fn tls_and_access_control() {
        let c = parse(&[]).expect("defaults");
        assert!(c.tls.is_none() && c.api_keys_file.is_none() && !c.api_keys_forward);
        assert_eq!(c.tls_handshake_timeout, Duration::from_secs(10));
        let c = parse(&[
            ("RAGSCOPE_TLS_CERT", "/tls/tls.crt"),
            ("RAGSCOPE_TLS_KEY", "/tls/tls.key"),
            ("RAGSCOPE_TLS_CLIENT_CA", "/tls/ca.crt"),
            ("RAGSCOPE_API_KEYS_FILE", "/keys/keys.txt"),
            ("RAGSCOPE_API_KEYS_FORWARD", "TRUE"),
        ])
        .expect("parse");
        let tls = c.tls.expect("tls on");
        assert_eq!(tls.cert, PathBuf::from("/tls/tls.crt"));
        assert_eq!(tls.key, PathBuf::from("/tls/tls.key"));
        assert_eq!(c.tls_client_ca, Some(PathBuf::from("/tls/ca.crt")));
        assert!(c.api_keys_forward);

        let err = parse(&[("RAGSCOPE_TLS_CERT", "/tls/tls.crt")]).expect_err("key missing");
        assert_eq!(err.var, "RAGSCOPE_TLS_KEY");
        assert!(err.to_string().contains("RAGSCOPE_TLS_CERT"), "{err}");
        let err = parse(&[("RAGSCOPE_TLS_KEY", "/k")]).expect_err("cert missing");
        assert_eq!(err.var, "RAGSCOPE_TLS_CERT");
        let err = parse(&[("RAGSCOPE_TLS_CLIENT_CA", "/ca")]).expect_err("mTLS without TLS");
        assert_eq!(err.var, "RAGSCOPE_TLS_CLIENT_CA");
        for (var, bad) in [
            ("RAGSCOPE_API_KEYS_FORWARD", "yes"),
            ("RAGSCOPE_TLS_HANDSHAKE_TIMEOUT", "0s"),
        ] {
            assert_eq!(parse(&[(var, bad)]).expect_err(var).var, var);
        }
    }

    #[test]
    fn empty_means_default() {
        let c = parse(&[("RAGSCOPE_LISTEN", ""), ("OTEL_SERVICE_NAME", "")]).expect("parse");
        assert_eq!(c.listen.port(), 8080);
        assert_eq!(c.telemetry.service_name, None);
    }

    #[test]
    fn upstream_forms() {
        let c = parse(&[("RAGSCOPE_UPSTREAM", "https://rag.internal")]).expect("parse");
        assert_eq!(c.upstream.port, 443);
        assert_eq!(c.upstream.host, "rag.internal");
        let c = parse(&[("RAGSCOPE_UPSTREAM", "http://[::1]:9000/")]).expect("parse");
        assert_eq!(c.upstream.port, 9000);
        assert_eq!(c.upstream.host, "::1");
        let c = parse(&[("RAGSCOPE_ADMIN_LISTEN", "off")]).expect("parse");
        assert_eq!(c.admin_listen, None);
    }

    #[test]
    fn otlp_endpoints_follow_the_spec() {
        let c = parse(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
            (
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                "http://m:9999/custom",
            ),
        ])
        .expect("parse");
        assert_eq!(
            c.telemetry.traces.endpoint,
            "http://collector:4318/v1/traces"
        );
        assert_eq!(c.telemetry.metrics.endpoint, "http://m:9999/custom");

        let c = parse(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]).expect("parse");
        assert_eq!(c.telemetry.traces.protocol, OtlpProtocol::Grpc);
        assert_eq!(c.telemetry.traces.endpoint, "http://localhost:4317");

        let c = parse(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=abc%3D,x=1"),
        ])
        .expect("parse");
        assert_eq!(c.telemetry.traces.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(c.telemetry.metrics.protocol, OtlpProtocol::Grpc);
        assert_eq!(c.telemetry.traces.timeout, Duration::from_millis(2500));
        assert_eq!(
            c.telemetry.traces.headers,
            vec![
                ("api-key".to_owned(), "abc=".to_owned()),
                ("x".to_owned(), "1".to_owned())
            ]
        );
    }

    #[test]
    fn otel_switches_and_invalid_values_are_warned_and_ignored() {
        let c = parse(&[
            ("OTEL_SDK_DISABLED", "TRUE"),
            ("OTEL_TRACES_EXPORTER", "none"),
            ("OTEL_METRICS_EXPORTER", "console"),
            ("OTEL_PROPAGATORS", "tracecontext,b3"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "many"),
        ])
        .expect("OTEL_* problems never stop start-up");
        let t = &c.telemetry;
        assert!(t.sdk_disabled);
        assert_eq!(t.traces_exporter, ExporterKind::None);
        assert_eq!(t.metrics_exporter, ExporterKind::Console);
        assert_eq!(
            t.propagators,
            Propagators {
                trace_context: true,
                baggage: false
            }
        );
        assert_eq!(
            t.sampler,
            SamplerConfig::ParentBased(ParentRoot::TraceIdRatio(0.25))
        );
        assert_eq!(t.traces.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(t.bsp_max_queue_size, 2048);
        assert_eq!(c.warnings.len(), 4, "{:?}", c.warnings);
        assert!(c.warnings.iter().any(|w| w.contains("OTEL_PROPAGATORS")));

        let c = parse(&[("OTEL_SDK_DISABLED", "1")]).expect("parse");
        assert!(!c.telemetry.sdk_disabled, "only 'true' is true");
    }

    #[test]
    fn resource_attributes() {
        let c = parse(&[(
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment=prod,team=rag%20ops,bad",
        )])
        .expect("parse");
        assert_eq!(
            c.telemetry.resource_attributes,
            vec![
                ("deployment.environment".to_owned(), "prod".to_owned()),
                ("team".to_owned(), "rag ops".to_owned())
            ]
        );
    }
}
