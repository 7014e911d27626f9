//! Active health checks of the upstream: a GET of `RAGSCOPE_HEALTH_PATH` every
//! `RAGSCOPE_HEALTH_INTERVAL`, with thresholds of consecutive failures (down) and successes (up).
//! The state drives `/readyz`, the gauge `ragscope.upstream.up` and a log line per transition;
//! each check's latency goes to `ragscope.upstream.health_check.duration`.
//!
//! The checks use their own small client, not the proxy's pool: a check must not borrow a
//! connection a request could use, and must not appear as traffic in spans or HTTP metrics.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Instant;

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::Empty;
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Histogram, Meter, ObservableGauge};

use crate::settings::HealthCheckConfig;
use crate::upstream::{ClientError, Settings, Upstream};

/// The health checker could not be built.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// The upstream URL and the health path do not make a URL.
    #[error("RAGSCOPE_HEALTH_PATH does not make a valid URL with RAGSCOPE_UPSTREAM: {0}")]
    Url(#[from] http::Error),
    /// The checks' client could not be built.
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// Buckets for the check latency, seconds: health endpoints answer in milliseconds, a struggling
/// one takes up to the timeout.
const CHECK_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// What the checks concluded so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamState {
    /// No check has finished yet.
    Unknown,
    /// Healthy.
    Up,
    /// Unhealthy.
    Down,
}

/// The upstream's health as the checker last concluded, shared with `/readyz` and the gauge.
#[derive(Debug)]
pub struct UpstreamHealth {
    state: AtomicU8,
}

impl UpstreamHealth {
    fn new() -> Arc<UpstreamHealth> {
        Arc::new(UpstreamHealth {
            state: AtomicU8::new(0),
        })
    }

    /// The current state.
    pub fn state(&self) -> UpstreamState {
        match self.state.load(Ordering::Acquire) {
            1 => UpstreamState::Up,
            2 => UpstreamState::Down,
            _ => UpstreamState::Unknown,
        }
    }

    fn set(&self, state: UpstreamState) {
        let v = match state {
            UpstreamState::Unknown => 0,
            UpstreamState::Up => 1,
            UpstreamState::Down => 2,
        };
        self.state.store(v, Ordering::Release);
    }
}

/// The running checker: its shared state and the instruments it keeps alive.
#[derive(Debug)]
pub struct HealthChecker {
    health: Arc<UpstreamHealth>,
    task: tokio::task::JoinHandle<()>,
    _gauge: ObservableGauge<i64>,
}

impl HealthChecker {
    /// Starts checking the upstream of `settings` (the proxy's, so checks reach it the same
    /// way, over the same protocol, trusting the same certificates; connecting within the
    /// check's timeout) per `config`; the first check runs at once. With a canary rollout each
    /// upstream has a checker, and `version` tells their gauges apart
    /// (`ragscope.upstream.version`).
    pub fn start(
        config: &HealthCheckConfig,
        settings: &Settings,
        meter: &Meter,
        version: Option<Arc<str>>,
    ) -> Result<HealthChecker, HealthError> {
        let health = UpstreamHealth::new();
        let attributes: Vec<KeyValue> = version
            .into_iter()
            .map(|v| KeyValue::new(crate::canary::VERSION_ATTRIBUTE, v.to_string()))
            .collect();
        let gauge = {
            let health = health.clone();
            meter
                // No unit: with "1" the Prometheus name would become `ragscope_upstream_up_ratio`.
                .i64_observable_gauge("ragscope.upstream.up")
                .with_description(
                    "1 when the upstream passes its active health checks, 0 when it is down.",
                )
                .with_callback(move |observer| match health.state() {
                    UpstreamState::Up => observer.observe(1, &attributes),
                    UpstreamState::Down => observer.observe(0, &attributes),
                    // Nothing is claimed before the first check has an answer.
                    UpstreamState::Unknown => {}
                })
                .build()
        };
        let duration = meter
            .f64_histogram("ragscope.upstream.health_check.duration")
            .with_unit("s")
            .with_description("Latency of the active health checks of the upstream, by result.")
            .with_boundaries(CHECK_BUCKETS.to_vec())
            .build();
        let settings = Settings {
            connect_timeout: config.timeout,
            ..settings.clone()
        };
        // The checks run on the control runtime: one client, no workers.
        let upstream = Upstream::new(&settings, 0)?;
        let uri = upstream.uri_for(Some(&config.path))?;
        let checker = Checker {
            client: upstream,
            uri,
            config: config.clone(),
            health: health.clone(),
            duration,
        };
        Ok(HealthChecker {
            health,
            task: tokio::spawn(checker.run()),
            _gauge: gauge,
        })
    }

    /// The shared state.
    pub fn health(&self) -> &Arc<UpstreamHealth> {
        &self.health
    }
}

impl Drop for HealthChecker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Checker {
    client: Upstream<Empty<Bytes>>,
    uri: http::Uri,
    config: HealthCheckConfig,
    health: Arc<UpstreamHealth>,
    duration: Histogram<f64>,
}

impl Checker {
    async fn run(self) {
        let mut ticks = tokio::time::interval(self.config.interval);
        // A slow check delays the next one instead of firing a burst to catch up.
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut successes, mut failures) = (0u32, 0u32);
        loop {
            ticks.tick().await;
            let start = Instant::now();
            let outcome = self.check().await;
            let elapsed = start.elapsed().as_secs_f64();
            let result = if outcome.is_ok() {
                "success"
            } else {
                "failure"
            };
            self.duration
                .record(elapsed, &[KeyValue::new("result", result)]);
            match outcome {
                Ok(()) => {
                    successes += 1;
                    failures = 0;
                }
                Err(reason) => {
                    failures += 1;
                    successes = 0;
                    tracing::debug!(%reason, failures, "upstream health check failed");
                    self.transition(&reason, successes, failures);
                    continue;
                }
            }
            self.transition("", successes, failures);
        }
    }

    /// Applies the thresholds. The first answer decides at once: before it, nothing is known
    /// and waiting for a threshold would leave readiness undecided for several intervals.
    fn transition(&self, reason: &str, successes: u32, failures: u32) {
        let before = self.health.state();
        let after = match before {
            UpstreamState::Unknown if successes > 0 => UpstreamState::Up,
            UpstreamState::Unknown => UpstreamState::Down,
            UpstreamState::Up if failures >= self.config.unhealthy_threshold => UpstreamState::Down,
            UpstreamState::Down if successes >= self.config.healthy_threshold => UpstreamState::Up,
            state => state,
        };
        if after == before {
            return;
        }
        self.health.set(after);
        match after {
            UpstreamState::Down => tracing::warn!(
                upstream = %self.uri,
                reason,
                consecutive_failures = failures,
                "upstream is DOWN: active health check failing"
            ),
            _ => tracing::info!(
                upstream = %self.uri,
                consecutive_successes = successes,
                "upstream is UP: active health check passing"
            ),
        }
    }

    async fn check(&self) -> Result<(), String> {
        // The client writes Host (HTTP/1.1) or `:authority` (HTTP/2) from the URI.
        let req = Request::get(self.uri.clone())
            .header(
                header::USER_AGENT,
                concat!("ragscope-health-check/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(self.config.timeout, async {
            let res = self.client.send(req).await.map_err(|e| {
                let mut msg = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    msg = format!("{msg}: {s}");
                    source = s.source();
                }
                msg
            })?;
            let status = res.status();
            // Drain the (small) body so the connection can be reused for the next check.
            use http_body_util::BodyExt as _;
            let _ = res.into_body().collect().await;
            Ok::<StatusCode, String>(status)
        })
        .await
        .map_err(|_| format!("no answer within {:?}", self.config.timeout))??;
        if response.is_success() {
            Ok(())
        } else {
            Err(format!("status {}", response.as_u16()))
        }
    }
}
