//! Rate limiting in the admit phase: a budget per client (address, header value or API key
//! name), kept in memory by governor with a cap on keys, or shared by a fleet through Redis.
//!
//! A decision is one of allowed, limited (429 unless in shadow mode) and records itself on the
//! request's span (decision, key type, backend: never the key) and in the
//! `ragscope.rate_limit.decisions` counter. The store is swept of idle keys on a timer and holds
//! at most `RAGSCOPE_RATE_MAX_KEYS` keys: a key first seen while it is full shares one overflow
//! bucket with all other such keys (see [`store`]).

mod client_ip;
mod key;
mod redis;
mod settings;
mod store;
pub mod tokens;

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Weak};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::{Quota, RateLimiter as Governor};
use http::{Extensions, HeaderMap, HeaderName, HeaderValue};
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Meter, ObservableGauge};
use tokio::sync::Notify;

use crate::error::ProxyError;
use key::{Keyer, LocalKey};

pub use client_ip::{ClientIp, ForwardedHeader, group as group_ip};
pub use redis::{Fallback, RedisUrlError};
pub use settings::{Rate, RateKeyKind, RateLimitConfig, RateMode};
pub use store::BoundedStore;

/// How often idle keys are swept out of the local store.
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// The least time between two sweeps, however often the store overflows.
const SWEEP_MIN_GAP: Duration = Duration::from_secs(1);

const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// What a budget belonged to, for telemetry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// The client address.
    Ip,
    /// A request header's value.
    Header,
    /// The API key name.
    ApiKey,
    /// A new key while the store was full: the shared overflow bucket.
    Overflow,
}

impl KeyType {
    /// Low-cardinality name.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::Ip => "ip",
            KeyType::Header => "header",
            KeyType::ApiKey => "api_key",
            KeyType::Overflow => "overflow",
        }
    }
}

/// Who decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The in-memory limiter (no Redis configured).
    Local,
    /// Redis, shared by the fleet.
    Redis,
    /// The in-memory limiter because Redis was slow or down.
    LocalFallback,
}

impl Backend {
    /// Low-cardinality name.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Local => "local",
            Backend::Redis => "redis",
            Backend::LocalFallback => "local_fallback",
        }
    }
}

/// What a limiter said about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Within budget.
    pub allowed: bool,
    /// Requests left right now.
    pub remaining: u32,
    /// Until the bucket is full again.
    pub reset: Duration,
    /// When refused: until a request would be allowed.
    pub retry_after: Duration,
}

/// The decision about one request, as the proxy acts on it.
#[derive(Debug, Clone, Copy)]
pub struct Decision {
    verdict: Verdict,
    limit: u32,
    mode: RateMode,
    key_type: KeyType,
    backend: Backend,
}

impl Decision {
    /// `allowed`, `limited` or `shadow_limited` (over the limit, but forwarded).
    pub fn outcome(&self) -> &'static str {
        match (self.verdict.allowed, self.mode) {
            (true, _) => "allowed",
            (false, RateMode::Enforce) => "limited",
            (false, RateMode::Shadow) => "shadow_limited",
        }
    }

    /// What the budget belonged to.
    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    /// Who decided.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The refusal to answer with, when the request must not be forwarded.
    pub fn refusal(&self) -> Option<ProxyError> {
        (!self.verdict.allowed && self.mode == RateMode::Enforce).then(|| ProxyError::RateLimited {
            retry_after: ceil_secs(self.verdict.retry_after).max(1),
            limit: self.limit,
            reset: ceil_secs(self.verdict.reset),
        })
    }

    /// Span attributes: the decision, key type and backend (never the key).
    pub fn span_attributes(&self) -> [KeyValue; 3] {
        [
            KeyValue::new("ragscope.rate_limit.decision", self.outcome()),
            KeyValue::new("ragscope.rate_limit.key_type", self.key_type.as_str()),
            KeyValue::new("ragscope.rate_limit.backend", self.backend.as_str()),
        ]
    }

    /// Adds `x-ratelimit-limit`, `-remaining` and `-reset` (seconds until the bucket is full)
    /// to a response. Shadow mode adds nothing: clients must not see a limit that is not
    /// enforced.
    pub fn add_headers(&self, headers: &mut HeaderMap) {
        if self.mode == RateMode::Shadow {
            return;
        }
        headers.insert(X_RATELIMIT_LIMIT, HeaderValue::from(self.limit));
        headers.insert(
            X_RATELIMIT_REMAINING,
            HeaderValue::from(self.verdict.remaining),
        );
        headers.insert(
            X_RATELIMIT_RESET,
            HeaderValue::from(ceil_secs(self.verdict.reset)),
        );
    }
}

/// Whole seconds, rounded up.
fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// A rate limiter that could not be built.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    /// The Redis URL was refused.
    #[error(transparent)]
    Redis(#[from] RedisUrlError),
}

type Local = Governor<LocalKey, BoundedStore<LocalKey>, DefaultClock, StateInformationMiddleware>;

/// The rate limiter every request passes through when `RAGSCOPE_RATE_LIMIT` is set.
pub struct RateLimiter {
    mode: RateMode,
    keyer: Keyer,
    burst: u32,
    interval: Duration,
    local: Local,
    store: BoundedStore<LocalKey>,
    redis: Option<redis::RedisLimiter>,
    decisions: Counter<u64>,
    fallbacks: Counter<u64>,
    _keys_gauge: ObservableGauge<u64>,
    sweep: Notify,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("mode", &self.mode)
            .field("key", &self.keyer.kind)
            .field("burst", &self.burst)
            .field("interval", &self.interval)
            .field("tracked_keys", &self.store.tracked())
            .field("redis", &self.redis)
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// The limiter for `config`, or `None` when rate limiting is off. Starts the sweeper task,
    /// so it must run inside the tokio runtime.
    pub fn from_config(
        config: &RateLimitConfig,
        meter: &Meter,
    ) -> Result<Option<Arc<RateLimiter>>, LimitError> {
        let Some(rate) = config.limit else {
            return Ok(None);
        };
        let burst = NonZeroU32::new(config.burst).unwrap_or(NonZeroU32::MIN);
        let interval = rate.interval().max(Duration::from_nanos(1));
        let quota = Quota::with_period(interval)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst);
        let store = BoundedStore::new(config.max_keys);
        let local: Local = Governor::new(quota, store.clone(), DefaultClock::default());
        let redis = config
            .redis
            .as_deref()
            .map(|url| redis::RedisConn::new(url, config.redis_timeout))
            .transpose()?
            .map(|conn| redis::RedisLimiter::new(Arc::new(conn), interval, burst.get()));
        let gauge_store = store.clone();
        let limiter = Arc::new(RateLimiter {
            mode: config.mode,
            keyer: Keyer::new(
                config.key.clone(),
                ClientIp::new(config.trusted_proxies.clone(), config.forwarded_header),
            ),
            burst: burst.get(),
            interval,
            local,
            store,
            redis,
            decisions: meter
                .u64_counter("ragscope.rate_limit.decisions")
                .with_unit("{decision}")
                .with_description(
                    "Rate-limit decisions by outcome (allowed, limited, shadow_limited), key type and backend.",
                )
                .build(),
            fallbacks: meter
                .u64_counter("ragscope.rate_limit.redis.fallbacks")
                .with_unit("{decision}")
                .with_description(
                    "Decisions the local limiter took because Redis was slow or down, by reason.",
                )
                .build(),
            _keys_gauge: meter
                .u64_observable_gauge("ragscope.rate_limit.keys")
                .with_unit("{key}")
                .with_description("Keys the local rate limiter tracks in memory.")
                .with_callback(move |observer| observer.observe(gauge_store.tracked() as u64, &[]))
                .build(),
            sweep: Notify::new(),
        });
        tokio::spawn(sweeper(Arc::downgrade(&limiter)));
        Ok(Some(limiter))
    }

    /// The number of keys the local store tracks.
    pub fn tracked_keys(&self) -> usize {
        self.store.tracked()
    }

    /// Decides about a request from `peer` with `headers` and `extensions`.
    pub async fn decide(
        &self,
        headers: &HeaderMap,
        extensions: &Extensions,
        peer: IpAddr,
    ) -> Decision {
        let (key, mut key_type, stable) = self.keyer.key_for(headers, extensions, peer);
        let (verdict, backend) = match &self.redis {
            Some(redis) => match redis
                .check(&self.keyer.redis_key(redis::RATE_PREFIX, &stable))
                .await
            {
                Ok(verdict) => (verdict, Backend::Redis),
                Err(reason) => {
                    self.fallbacks
                        .add(1, &[KeyValue::new("reason", reason.as_str())]);
                    (self.check_local(key, &mut key_type), Backend::LocalFallback)
                }
            },
            None => (self.check_local(key, &mut key_type), Backend::Local),
        };
        let decision = Decision {
            verdict,
            limit: self.burst,
            mode: self.mode,
            key_type,
            backend,
        };
        self.decisions.add(
            1,
            &[
                KeyValue::new("outcome", decision.outcome()),
                KeyValue::new("key_type", key_type.as_str()),
                KeyValue::new("backend", backend.as_str()),
            ],
        );
        decision
    }

    fn check_local(&self, key: LocalKey, key_type: &mut KeyType) -> Verdict {
        if self.store.would_overflow(&key) {
            *key_type = KeyType::Overflow;
            self.sweep.notify_one();
        }
        match self.local.check_key(&key) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                Verdict {
                    allowed: true,
                    remaining,
                    reset: self.interval * (self.burst.saturating_sub(remaining)),
                    retry_after: Duration::ZERO,
                }
            }
            Err(not_until) => {
                let retry_after = not_until.wait_time_from(self.local.clock().now());
                Verdict {
                    allowed: false,
                    remaining: 0,
                    reset: retry_after + self.interval * self.burst.saturating_sub(1),
                    retry_after,
                }
            }
        }
    }

    fn sweep_now(&self) {
        self.local.retain_recent();
        self.local.shrink_to_fit();
    }
}

/// Names clients the way the rate limit does (`RAGSCOPE_RATE_KEY`), the same in every process,
/// whether or not rate limiting is on: for parts that must treat one client alike everywhere
/// (the canary's sticky assignment).
#[derive(Debug, Clone)]
pub struct ClientKeys {
    keyer: Arc<Keyer>,
}

impl ClientKeys {
    /// Keys per the rate-limit settings.
    pub fn new(config: &RateLimitConfig) -> ClientKeys {
        ClientKeys {
            keyer: Arc::new(Keyer::new(
                config.key.clone(),
                ClientIp::new(config.trusted_proxies.clone(), config.forwarded_header),
            )),
        }
    }

    /// The client's key as the fleet-wide limiter names it: a digest, never the value.
    pub fn fleet_key(&self, headers: &HeaderMap, extensions: &Extensions, peer: IpAddr) -> String {
        let stable = self.keyer.stable_for(headers, extensions, peer);
        self.keyer.redis_key(redis::RATE_PREFIX, &stable)
    }
}

/// Forgets idle keys every [`SWEEP_EVERY`], and soon after the store overflows; ends with the
/// limiter.
async fn sweeper(limiter: Weak<RateLimiter>) {
    loop {
        {
            let Some(l) = limiter.upgrade() else { return };
            // Waiting holds the limiter: release it when the wait ends, so the task cannot keep
            // a dropped proxy alive for more than one period.
            let _ = tokio::time::timeout(SWEEP_EVERY, l.sweep.notified()).await;
            l.sweep_now();
        }
        tokio::time::sleep(SWEEP_MIN_GAP).await;
    }
}

#[cfg(test)]
mod tests;
