//! Operations settings: the recent-requests view behind `/traces` and active health checks of
//! the upstream (`RAGSCOPE_RECENT_TRACES`, `RAGSCOPE_HEALTH_*`).

use std::time::Duration;

use crate::config::{ConfigError, Reader, Source};

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
    /// Reads the operations settings; health checks are on when `RAGSCOPE_HEALTH_PATH` is set.
    pub fn from_reader<S: Source + ?Sized>(r: &Reader<'_, S>) -> Result<OpsConfig, ConfigError> {
        let recent_traces = r.parse(
            "RAGSCOPE_RECENT_TRACES",
            "1000",
            "a whole number of requests between 0 (off) and 100000",
            |v| v.parse::<usize>().ok().filter(|n| *n <= 100_000),
        )?;
        let path = r.optional(
            "RAGSCOPE_HEALTH_PATH",
            "off",
            "a path starting with / like /health, or off",
            |v| {
                v.starts_with('/')
                    .then(|| v.parse::<http::uri::PathAndQuery>().ok())
                    .flatten()
            },
        )?;
        let interval = r.duration_in(
            "RAGSCOPE_HEALTH_INTERVAL",
            Duration::from_secs(10),
            Duration::from_millis(100)..,
        )?;
        let timeout = r.duration_in(
            "RAGSCOPE_HEALTH_TIMEOUT",
            Duration::from_secs(2),
            Duration::from_millis(10)..,
        )?;
        let threshold = |var| r.count_in(var, 2u32, "consecutive checks", 1..=10);
        let unhealthy_threshold = threshold("RAGSCOPE_HEALTH_UNHEALTHY_THRESHOLD")?;
        let healthy_threshold = threshold("RAGSCOPE_HEALTH_HEALTHY_THRESHOLD")?;
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
