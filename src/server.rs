//! Wires the pieces together: binds the listeners, starts telemetry and the proxy, runs until
//! told to stop, then drains and flushes in that order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::proxy::Proxy;
use crate::settings::Config;
use crate::telemetry::{Telemetry, TelemetryError};
use crate::upstream::ClientError;

/// Longest wait for the exporters to flush at exit, whatever the collector does.
const TELEMETRY_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why ragscope could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener address is taken or not ours.
    #[error("cannot listen on {addr} ({var}): {source}")]
    Bind {
        /// The variable that named the address.
        var: &'static str,
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The telemetry pipeline could not be built.
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
    /// The upstream client could not be built.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The active health checker could not be built.
    #[error(transparent)]
    Health(#[from] crate::health::HealthError),
    /// The listener's TLS files cannot be used.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The API-key file cannot be used.
    #[error(transparent)]
    ApiKeys(#[from] crate::auth::KeyFileError),
    /// A worker thread or its runtime could not be started.
    #[error("cannot start a proxy worker thread (RAGSCOPE_WORKERS): {0}")]
    Worker(std::io::Error),
    /// The rate limiter could not be built.
    #[error(transparent)]
    RateLimit(#[from] crate::limit::LimitError),
    /// The canary rollout could not be set up.
    #[error(transparent)]
    Canary(#[from] crate::canary::CanaryError),
}

/// A running ragscope: the proxy and admin listeners, bound and serving.
#[derive(Debug)]
pub struct Server {
    proxy_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    /// Set draining before the signal goes out, so readiness is 503 by the time the
    /// listeners stop accepting (a task setting it after the signal raced the listeners).
    proxy: Arc<crate::proxy::Proxy>,
    task: JoinHandle<()>,
}

impl Server {
    /// Binds both listeners, starts telemetry and begins serving. Must run inside a tokio
    /// multi-thread runtime.
    pub async fn start(config: Config) -> Result<Server, StartError> {
        let config = Arc::new(config);
        let listen_error = |source| StartError::Bind {
            var: "RAGSCOPE_LISTEN",
            addr: config.listen,
            source,
        };
        let listeners =
            crate::workers::bind_reuseport(config.listen, config.workers).map_err(listen_error)?;
        let proxy_addr = listeners[0].local_addr().map_err(listen_error)?;
        let admin = match config.admin_listen {
            Some(addr) => Some(bind("RAGSCOPE_ADMIN_LISTEN", addr).await?),
            None => None,
        };
        let admin_addr = admin.as_ref().and_then(|l| l.local_addr().ok());

        let config_upstream = config.upstream.display();
        // Files are checked before anything starts: a bad certificate or key file stops
        // start-up with a line naming it.
        let tls = match &config.tls.files {
            Some(files) => Some(Arc::new(crate::tls::ListenerTls::new(
                files,
                config.tls.client_ca.as_deref(),
                config.tls.handshake_timeout,
            )?)),
            None => None,
        };
        let api_keys = match &config.api_keys_file {
            Some(path) => Some(Arc::new(crate::auth::ApiKeys::load(path)?)),
            None => None,
        };
        let telemetry = Telemetry::start_with_recent(&config.telemetry, config.ops.recent_traces)?;
        let limiter =
            crate::limit::RateLimiter::from_config(&config.rate_limit, &telemetry.meter())?;
        let token_limiter = crate::limit::tokens::BudgetLimiter::from_config(
            &config.rate_limit,
            &telemetry.meter(),
        )?;
        let cost_limiter = crate::limit::tokens::BudgetLimiter::cost_from_config(
            &config.rate_limit,
            config.genai.prices.as_ref(),
            &telemetry.meter(),
        )?;
        let mut proxy = Proxy::new(config.clone(), telemetry.clone())?
            .with_rate_limiter(limiter)
            .with_token_limiter(token_limiter)
            .with_cost_limiter(cost_limiter);
        let canary = match &config.canary {
            Some(settings) => {
                let keys = crate::limit::ClientKeys::new(&config.rate_limit);
                let canary =
                    crate::canary::Canary::start(settings.clone(), keys, &telemetry.meter())?;
                proxy = proxy.with_canary(canary.clone())?;
                telemetry.watch_canary(canary.clone());
                Some(canary)
            }
            None => None,
        };
        let mut watchers = Vec::new();
        if let Some(keys) = api_keys {
            watchers.push(keys.watch(crate::reload::POLL_INTERVAL));
            proxy = proxy.with_api_keys(keys);
        }
        if let Some(tls) = &tls {
            watchers.push(tls.watch(crate::reload::POLL_INTERVAL));
        }
        if let Some(prices) = &config.genai.prices {
            watchers.push(prices.watch(crate::reload::POLL_INTERVAL));
        }
        let proxy = Arc::new(proxy);
        let tls_on = tls.is_some();
        let api_keys_on = config.api_keys_file.is_some();
        let (shutdown, shutdown_rx) = watch::channel(false);

        let version = |arm| canary.as_ref().map(|c| c.version(arm).clone());
        let health_checker = match &config.ops.health {
            Some(health) => Some(crate::health::HealthChecker::start(
                health,
                &crate::upstream::Settings::from_config(&config),
                &telemetry.meter(),
                version(crate::canary::Arm::Stable),
            )?),
            None => None,
        };
        // Per version: a canary its checks find down gets no traffic (readiness follows stable).
        let canary_checker = match (&config.ops.health, &canary) {
            (Some(health), Some(canary)) => {
                let checker = crate::health::HealthChecker::start(
                    health,
                    &crate::upstream::Settings::for_target(
                        &config,
                        canary.settings().upstream.clone(),
                    ),
                    &telemetry.meter(),
                    version(crate::canary::Arm::Canary),
                )?;
                let state = checker.health().clone();
                canary.watch_health(move || state.state() == crate::health::UpstreamState::Down);
                Some(checker)
            }
            _ => None,
        };
        let admin_task = admin.map(|listener| {
            tokio::spawn(crate::admin::serve(
                listener,
                crate::admin::AdminContext {
                    proxy: proxy.clone(),
                    config: config.clone(),
                    health: health_checker.as_ref().map(|h| h.health().clone()),
                    probe_timeout: config.connect_timeout.min(Duration::from_secs(2)),
                    canary: canary.clone(),
                },
            ))
        });
        let permits = Arc::new(tokio::sync::Semaphore::new(config.max_connections));
        let mut workers = Vec::with_capacity(listeners.len());
        for (index, listener) in listeners.into_iter().enumerate() {
            let (proxy, config, tls) = (proxy.clone(), config.clone(), tls.clone());
            let (permits, shutdown) = (permits.clone(), shutdown_rx.clone());
            let finished = crate::workers::spawn(index, move || async move {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => {
                        crate::listener::serve(listener, proxy, config, tls, permits, shutdown)
                            .await
                    }
                    Err(e) => tracing::error!(worker = index, error = %e, "worker cannot listen"),
                }
            })
            .map_err(StartError::Worker)?;
            workers.push(finished);
        }
        let draining_proxy = proxy.clone();
        let task = tokio::spawn(async move {
            let mut draining = shutdown_rx.clone();
            let drain_flag = {
                let proxy = proxy.clone();
                // Readiness turns 503 and late requests get 503 the moment the signal comes,
                // while the listener stops accepting.
                tokio::spawn(async move {
                    crate::listener::stopped(&mut draining).await;
                    proxy.start_draining();
                })
            };
            for worker in workers {
                let _ = worker.await;
            }
            drain_flag.abort();
            drop(health_checker);
            drop(canary_checker);
            for watcher in watchers {
                watcher.abort();
            }
            // Telemetry is flushed last, so the drained requests' spans are in it.
            telemetry.shutdown(TELEMETRY_FLUSH_TIMEOUT).await;
            if let Some(admin) = admin_task {
                admin.abort();
            }
        });
        tracing::info!(
            listen = %proxy_addr,
            admin = admin_addr.map(|a| a.to_string()).unwrap_or_else(|| "off".to_owned()),
            upstream = %config_upstream,
            upstream_protocol = config.upstream_protocol.as_str(),
            workers = config.workers,
            tls = tls_on,
            api_keys = api_keys_on,
            "ragscope is serving"
        );
        Ok(Server {
            proxy_addr,
            admin_addr,
            shutdown,
            proxy: draining_proxy,
            task,
        })
    }

    /// The proxy listener's address (with the real port when 0 was asked for).
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_addr
    }

    /// The admin listener's address, unless it is off.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Begins a graceful shutdown: stop accepting, drain, flush telemetry.
    pub fn shutdown(&self) {
        self.proxy.start_draining();
        let _ = self.shutdown.send(true);
    }

    /// Waits until the shutdown has completed.
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

async fn bind(var: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    };
    let bind_error = |source| StartError::Bind { var, addr, source };
    let socket = socket.map_err(bind_error)?;
    // A restarted sidecar must be able to bind while old connections sit in TIME_WAIT.
    socket.set_reuseaddr(true).map_err(bind_error)?;
    socket.bind(addr).map_err(bind_error)?;
    socket.listen(4096).map_err(bind_error)
}
