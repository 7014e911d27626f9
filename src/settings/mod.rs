//! The whole configuration, [`Config`]: every `RAGSCOPE_*` and `OTEL_*` variable, parsed once at
//! start-up. This module sits above the concerns: each concern parses its own settings with the
//! readers in [`crate::config`] ([`crate::genai::Settings`], [`crate::limit::RateLimitConfig`],
//! [`crate::tls::Settings`], [`crate::telemetry::TelemetryConfig`], [`OpsConfig`], [`AdminConfig`]), and
//! [`Config::from_source`] assembles them. The listener and upstream settings are `Config`'s
//! own fields, read here.

mod admin;
mod ops;
mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{ConfigError, Reader, Source};
use crate::genai;
use crate::limit::RateLimitConfig;
use crate::telemetry::{LogFormat, TelemetryConfig};

pub use admin::{AdminConfig, AdminToken};
pub use ops::{HealthCheckConfig, OpsConfig};
pub use upstream::{Protocol, UPSTREAM_FORM, Upstream, parse_upstream};

/// Everything ragscope needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// `RAGSCOPE_LISTEN`: the proxy listener.
    pub listen: SocketAddr,
    /// `RAGSCOPE_UPSTREAM`: the server we sit beside.
    pub upstream: Upstream,
    /// `RAGSCOPE_UPSTREAM_PROTOCOL`: HTTP/1.1, h2c, h2 over TLS, or as ALPN agrees.
    pub upstream_protocol: Protocol,
    /// `RAGSCOPE_ADMIN_LISTEN`: the admin listener, `None` when `off`.
    pub admin_listen: Option<SocketAddr>,
    /// `RAGSCOPE_LOG`: tracing `EnvFilter` directives.
    pub log: String,
    /// `RAGSCOPE_LOG_FORMAT`.
    pub log_format: LogFormat,
    /// `RAGSCOPE_CONNECT_TIMEOUT`: TCP (and TLS) connect to the upstream.
    pub connect_timeout: Duration,
    /// `RAGSCOPE_RESPONSE_TIMEOUT`: from the request body having been sent to the upstream's
    /// response headers.
    pub response_timeout: Duration,
    /// `RAGSCOPE_IDLE_TIMEOUT`: the longest silence allowed inside a streaming body.
    pub idle_timeout: Duration,
    /// `RAGSCOPE_REQUEST_BODY_TIMEOUT`: the longest silence of a client mid-upload.
    pub request_body_timeout: Duration,
    /// `RAGSCOPE_MAX_REQUEST_BODY`: bytes; a larger request body gets 413.
    pub max_request_body: u64,
    /// `RAGSCOPE_DRAIN_TIMEOUT`: how long in-flight requests may run on after SIGTERM.
    pub drain_timeout: Duration,
    /// `RAGSCOPE_HEADER_READ_TIMEOUT`: a client must send its request headers within this.
    pub header_read_timeout: Duration,
    /// `RAGSCOPE_MAX_CONNECTIONS`: open client connections; past it, accepting pauses.
    pub max_connections: usize,
    /// `RAGSCOPE_WORKERS`: proxy worker threads, each with its own runtime, listener and
    /// upstream pool (`auto`: one per available core).
    pub workers: usize,
    /// `RAGSCOPE_MAX_HEADER_BYTES`: request header block size; larger gets 431.
    pub max_header_bytes: usize,
    /// `RAGSCOPE_MAX_HEADERS`: request header count; more gets 431.
    pub max_headers: usize,
    /// `RAGSCOPE_H2_MAX_CONCURRENT_STREAMS`: per HTTP/2 connection.
    pub h2_max_concurrent_streams: u32,
    /// `RAGSCOPE_UPSTREAM_CA`: CA bundle the https upstream is verified against instead of
    /// the system roots.
    pub upstream_ca: Option<PathBuf>,
    /// TLS on the listener (`RAGSCOPE_TLS_*`).
    pub tls: crate::tls::Settings,
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
    pub genai: genai::Settings,
    /// Admin listener access (`RAGSCOPE_ADMIN_TOKEN`).
    pub admin: AdminConfig,
    /// The canary rollout (`RAGSCOPE_UPSTREAM_CANARY`, `RAGSCOPE_CANARY_*`); `None` when off.
    pub canary: Option<crate::canary::CanarySettings>,
}

impl Config {
    /// Parses the whole configuration from `source`, stopping at the first bad `RAGSCOPE_*`
    /// variable.
    pub fn from_source(source: &(impl Source + ?Sized)) -> Result<Config, ConfigError> {
        let r = Reader::new(source);
        let mut telemetry = TelemetryConfig::from_reader(&r);
        telemetry.tail_sampling = crate::telemetry::read_tail_sampling(&r)?;
        let genai = genai::Settings::from_reader(&r)?;
        let tls = crate::tls::Settings::from_reader(&r)?;
        let (log, log_format) = crate::telemetry::read_log(&r)?;
        let upstream = r.parse(
            "RAGSCOPE_UPSTREAM",
            "http://127.0.0.1:8000",
            UPSTREAM_FORM,
            parse_upstream,
        )?;
        let config = Config {
            upstream_protocol: Protocol::from_reader(&r, &upstream)?,
            upstream,
            tls,
            upstream_ca: r.path("RAGSCOPE_UPSTREAM_CA"),
            api_keys_file: r.path("RAGSCOPE_API_KEYS_FILE"),
            api_keys_forward: r.boolean("RAGSCOPE_API_KEYS_FORWARD", false)?,
            listen: r.socket_addr("RAGSCOPE_LISTEN", "0.0.0.0:8080")?,
            admin_listen: r.optional(
                "RAGSCOPE_ADMIN_LISTEN",
                "127.0.0.1:9901",
                "an address like 127.0.0.1:9901, or off",
                crate::config::parse_socket_addr,
            )?,
            log,
            log_format,
            connect_timeout: r.duration("RAGSCOPE_CONNECT_TIMEOUT", "5s")?,
            response_timeout: r.duration("RAGSCOPE_RESPONSE_TIMEOUT", "60s")?,
            idle_timeout: r.duration("RAGSCOPE_IDLE_TIMEOUT", "60s")?,
            request_body_timeout: r.duration("RAGSCOPE_REQUEST_BODY_TIMEOUT", "30s")?,
            max_request_body: r.size("RAGSCOPE_MAX_REQUEST_BODY", "16MiB")?,
            drain_timeout: r.duration("RAGSCOPE_DRAIN_TIMEOUT", "30s")?,
            header_read_timeout: r.duration("RAGSCOPE_HEADER_READ_TIMEOUT", "10s")?,
            max_connections: r.count_in("RAGSCOPE_MAX_CONNECTIONS", 10_000, "connections", 1..)?,
            workers: r.parse(
                "RAGSCOPE_WORKERS",
                "auto",
                "auto (one per available core) or a whole number of threads from 1 to 1024",
                parse_workers,
            )?,
            max_header_bytes: r.size_in("RAGSCOPE_MAX_HEADER_BYTES", 64 << 10, 8192..=1 << 20)?,
            max_headers: r.count_in("RAGSCOPE_MAX_HEADERS", 100, "headers", 1..=1000)?,
            h2_max_concurrent_streams: r.count_in(
                "RAGSCOPE_H2_MAX_CONCURRENT_STREAMS",
                100,
                "streams",
                1..,
            )?,
            rate_limit: RateLimitConfig::from_reader(&r)?,
            telemetry,
            ops: OpsConfig::from_reader(&r)?,
            admin: AdminConfig::from_reader(&r)?,
            canary: crate::canary::CanarySettings::from_reader(&r)?,
            warnings: Vec::new(),
            genai,
        };
        Ok(Config {
            warnings: r.into_warnings(),
            ..config
        })
    }
}

#[cfg(test)]
mod tests;

/// `auto` (the cores this process may run on) or 1..=1024 worker threads.
pub(crate) fn parse_workers(v: &str) -> Option<usize> {
    if v.eq_ignore_ascii_case("auto") {
        return Some(std::thread::available_parallelism().map_or(1, |n| n.get()));
    }
    v.parse::<usize>().ok().filter(|n| (1..=1024).contains(n))
}
