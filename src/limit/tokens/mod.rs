//! Token budgets per client (`RAGSCOPE_TOKEN_LIMIT`, issue 14): a recognised LLM request
//! reserves its estimated cost before it is forwarded ([`estimate`]), and its reservation is
//! settled when the exchange is recorded: replaced by the usage the response reported (or an
//! estimate from what was streamed, flagged so), the rest refunded, a stream past its
//! reservation charged in full (the key goes into debt and waits, see [`bucket`]). Streams are
//! never cut by the budget.
//!
//! Keyed, capped, swept and shared on Redis like the request limit ([`super`]); a reservation
//! taken on Redis is settled there, asynchronously and never waited for; one taken by the
//! local fallback is settled locally.

pub mod bucket;
pub mod estimate;
mod redis;
mod settings;
mod settle;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::state::keyed::ShrinkableKeyedStateStore;
use http::{Extensions, HeaderMap, HeaderName, HeaderValue};
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Meter, ObservableGauge};
use tokio::sync::Notify;

use super::key::{Keyer, LocalKey};
use super::redis::RedisConn;
use super::{Backend, BoundedStore, ClientIp, KeyType, LimitError, RateLimitConfig, RateMode};
use crate::error::ProxyError;
use crate::genai::api::Recognised;
use bucket::{Bucket, Step};
use estimate::Estimate;
use redis::{RedisSlot, TokenRedis};

pub use estimate::{Outcome, Usage};
pub use settings::{TokenLimitConfig, TokenRate};
pub use settle::{Reservation, Settlement, TokenAccount};

/// The prefix of token-budget keys on Redis.
const REDIS_PREFIX: &str = "ragscope:tb:";
/// How often idle (full) keys are swept out of the local store.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

const LIMIT_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-limit-tokens");
const REMAINING_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-tokens");
const RESET_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-reset-tokens");

/// The token-budget decision about one request.
#[derive(Debug, Clone, Copy)]
pub struct TokenDecision {
    step: Step,
    limit: u64,
    reserved: u64,
    mode: RateMode,
    key_type: KeyType,
    backend: Backend,
}

impl TokenDecision {
    /// `allowed`, `limited` or `shadow_limited` (over the budget, but forwarded).
    pub fn outcome(&self) -> &'static str {
        match (self.step.allowed, self.mode) {
            (true, _) => "allowed",
            (false, RateMode::Enforce) => "limited",
            (false, RateMode::Shadow) => "shadow_limited",
        }
    }

    /// Tokens reserved for the request (0 when refused).
    pub fn reserved(&self) -> u64 {
        self.reserved
    }

    /// The refusal to answer with, when the request must not be forwarded.
    pub fn refusal(&self) -> Option<ProxyError> {
        (!self.step.allowed && self.mode == RateMode::Enforce).then(|| ProxyError::TokenLimited {
            retry_after: super::ceil_secs(self.step.retry_after).max(1),
            limit: self.limit,
            reset: self.step.reset,
        })
    }

    /// Span attributes: decision, key type, backend (never the key).
    pub fn span_attributes(&self) -> [KeyValue; 3] {
        [
            KeyValue::new("ragscope.token_limit.decision", self.outcome()),
            KeyValue::new("ragscope.token_limit.key_type", self.key_type.as_str()),
            KeyValue::new("ragscope.token_limit.backend", self.backend.as_str()),
        ]
    }

    /// Adds `x-ratelimit-limit-tokens`, `-remaining-tokens` and `-reset-tokens` (a duration
    /// like `6m0s`, as OpenAI writes it) to a response. Shadow mode adds nothing.
    pub fn add_headers(&self, headers: &mut HeaderMap) {
        if self.mode == RateMode::Shadow {
            return;
        }
        add_headers(headers, self.limit, self.step.remaining, self.step.reset);
    }
}

/// The token headers, as on every response under a token limit (the 429 included).
pub fn add_headers(headers: &mut HeaderMap, limit: u64, remaining: u64, reset: Duration) {
    headers.insert(LIMIT_TOKENS, HeaderValue::from(limit));
    headers.insert(REMAINING_TOKENS, HeaderValue::from(remaining));
    if let Ok(v) = HeaderValue::try_from(reset_value(reset)) {
        headers.insert(RESET_TOKENS, v);
    }
}

/// A duration the way OpenAI's `x-ratelimit-reset-*` headers write it: `250ms`, `45s`,
/// `6m0s`, `1h2m3s` (whole seconds rounded up from one second on).
pub fn reset_value(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        return format!(
            "{}ms",
            d.as_millis() + u128::from(d.subsec_nanos() % 1_000_000 > 0)
        );
    }
    let s = super::ceil_secs(d);
    let (h, m, s) = (s / 3600, s / 60 % 60, s % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, m) => format!("{m}m{s}s"),
        (h, m) => format!("{h}h{m}m{s}s"),
    }
}

struct Instruments {
    decisions: Counter<u64>,
    reserved: Counter<u64>,
    charged: Counter<u64>,
    refunded: Counter<u64>,
    fallbacks: Counter<u64>,
    _keys: ObservableGauge<u64>,
}

/// The token limiter every recognised LLM request passes through when
/// `RAGSCOPE_TOKEN_LIMIT` is set.
pub struct TokenLimiter {
    mode: RateMode,
    keyer: Keyer,
    bucket: Bucket,
    default_output: u64,
    store: BoundedStore<LocalKey>,
    start: Instant,
    redis: Option<TokenRedis>,
    /// Where Redis settles run: the telemetry thread that settles is not a runtime thread.
    runtime: tokio::runtime::Handle,
    /// Reservation ids: this process's random prefix and a counter.
    nonce: u64,
    next_id: AtomicU64,
    instruments: Instruments,
    sweep: Notify,
}

impl std::fmt::Debug for TokenLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenLimiter")
            .field("mode", &self.mode)
            .field("key", &self.keyer.kind)
            .field("bucket", &self.bucket)
            .field("tracked_keys", &self.store.tracked())
            .field("redis", &self.redis)
            .finish_non_exhaustive()
    }
}

impl TokenLimiter {
    /// The limiter for `config.tokens`, or `None` when token budgets are off. Starts the
    /// sweeper task, so it must run inside the tokio runtime.
    pub fn from_config(
        config: &RateLimitConfig,
        meter: &Meter,
    ) -> Result<Option<Arc<TokenLimiter>>, LimitError> {
        let tokens = &config.tokens;
        let Some(rate) = tokens.limit else {
            return Ok(None);
        };
        let bucket = Bucket::new(rate.tokens, rate.period);
        let redis = config
            .redis
            .as_deref()
            .map(|url| RedisConn::new(url, config.redis_timeout))
            .transpose()?
            .map(|conn| TokenRedis::new(Arc::new(conn), &bucket, tokens.reservation_ttl));
        let store = BoundedStore::new(config.max_keys);
        let gauge_store = store.clone();
        let counter = |name: &'static str, unit: &'static str, description: &'static str| {
            meter
                .u64_counter(name)
                .with_unit(unit)
                .with_description(description)
                .build()
        };
        let instruments = Instruments {
            decisions: counter(
                "ragscope.token_limit.decisions",
                "{decision}",
                "Token-budget decisions by outcome (allowed, limited, shadow_limited), key type and backend.",
            ),
            reserved: counter(
                "ragscope.token_limit.tokens.reserved",
                "{token}",
                "Tokens reserved at admission, by decision outcome.",
            ),
            charged: counter(
                "ragscope.token_limit.tokens.charged",
                "{token}",
                "Tokens charged when exchanges ended, by ending and usage (reported or estimated).",
            ),
            refunded: counter(
                "ragscope.token_limit.tokens.refunded",
                "{token}",
                "Reserved tokens returned when exchanges ended, by ending.",
            ),
            fallbacks: counter(
                "ragscope.token_limit.redis.fallbacks",
                "{operation}",
                "Token-budget operations Redis did not take (slow or down), by operation and reason.",
            ),
            _keys: meter
                .u64_observable_gauge("ragscope.token_limit.keys")
                .with_unit("{key}")
                .with_description("Keys the local token limiter tracks in memory.")
                .with_callback(move |o| o.observe(gauge_store.tracked() as u64, &[]))
                .build(),
        };
        let limiter = Arc::new(TokenLimiter {
            mode: tokens.mode,
            keyer: Keyer::new(
                tokens.key.clone(),
                ClientIp::new(config.trusted_proxies.clone(), config.forwarded_header),
            ),
            bucket,
            default_output: tokens.default_max_output,
            store,
            start: Instant::now(),
            redis,
            runtime: tokio::runtime::Handle::current(),
            nonce: rand_nonce(),
            next_id: AtomicU64::new(0),
            instruments,
            sweep: Notify::new(),
        });
        tokio::spawn(sweeper(Arc::downgrade(&limiter)));
        Ok(Some(limiter))
    }

    /// The estimate for a request whose body was read whole.
    pub fn estimate_body(&self, recognised: &Recognised, body: &[u8]) -> Estimate {
        Estimate::from_body(recognised, body, self.default_output)
    }

    /// The estimate for a request whose body is too large to read whole at admission.
    pub fn estimate_length(&self, recognised: &Recognised, len: u64) -> Estimate {
        Estimate::from_length(recognised, len, self.default_output)
    }

    /// The number of keys the local store tracks.
    pub fn tracked_keys(&self) -> usize {
        self.store.tracked()
    }

    /// Reserves `estimate` for a request from `peer` with `headers` and `extensions`. The
    /// account holds the reservation when one was taken; it travels with the exchange and is
    /// settled where the exchange is recorded.
    pub async fn reserve(
        self: &Arc<Self>,
        headers: &HeaderMap,
        extensions: &Extensions,
        peer: IpAddr,
        estimate: Estimate,
    ) -> TokenAccount {
        let (key, mut key_type, stable) = self.keyer.key_for(headers, extensions, peer);
        let tokens = self.bucket.clamp(estimate.total());
        let (step, backend, slot) = match &self.redis {
            Some(redis) => {
                let id = format!(
                    "{:016x}{:x}",
                    self.nonce,
                    self.next_id.fetch_add(1, Ordering::Relaxed)
                );
                let slot = RedisSlot::new(&self.keyer.redis_key(REDIS_PREFIX, &stable), id);
                match redis.reserve(&slot, tokens).await {
                    Ok(step) => (step, Backend::Redis, Some(slot)),
                    Err(reason) => {
                        self.fell_back("reserve", reason);
                        let step = self.reserve_local(key, &mut key_type, tokens);
                        (step, Backend::LocalFallback, None)
                    }
                }
            }
            None => (
                self.reserve_local(key, &mut key_type, tokens),
                Backend::Local,
                None,
            ),
        };
        let decision = TokenDecision {
            step,
            limit: self.bucket.capacity,
            reserved: if step.allowed { tokens } else { 0 },
            mode: self.mode,
            key_type,
            backend,
        };
        let outcome = [KeyValue::new("outcome", decision.outcome())];
        self.instruments.decisions.add(
            1,
            &[
                outcome[0].clone(),
                KeyValue::new("key_type", key_type.as_str()),
                KeyValue::new("backend", backend.as_str()),
            ],
        );
        let reservation = step.allowed.then(|| {
            self.instruments.reserved.add(tokens, &outcome);
            Reservation::new(self.clone(), key, slot, tokens, estimate.input)
        });
        TokenAccount::new(decision, reservation)
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }

    fn reserve_local(&self, key: LocalKey, key_type: &mut KeyType, tokens: u64) -> Step {
        if self.store.would_overflow(&key) {
            *key_type = KeyType::Overflow;
            self.sweep.notify_one();
        }
        let now = self.now();
        let stepped = self.store.measure_and_replace(&key, |tat| {
            match self.bucket.reserve(tat.map(Nanos::as_u64), now, tokens) {
                (step, Some(next)) => Ok((step, Nanos::from(next))),
                (step, None) => Err(step),
            }
        });
        stepped.unwrap_or_else(|refused| refused)
    }

    /// Moves `key`'s bucket by `delta` tokens (a refund when negative).
    fn settle_local(&self, key: LocalKey, delta: i64) {
        if delta == 0 {
            return;
        }
        let now = self.now();
        let _ = self.store.measure_and_replace(&key, |tat| {
            let next = self.bucket.settle(tat.map(Nanos::as_u64), now, delta);
            Ok::<_, ()>(((), Nanos::from(next)))
        });
    }

    fn fell_back(&self, op: &'static str, reason: super::Fallback) {
        self.instruments.fallbacks.add(
            1,
            &[
                KeyValue::new("operation", op),
                KeyValue::new("reason", reason.as_str()),
            ],
        );
    }

    fn sweep_now(&self) {
        // A key whose bucket is full again holds nothing worth keeping.
        self.store.retain_recent(Nanos::from(self.now()));
        self.store.shrink_to_fit();
    }
}

/// A per-process random number, so reservation ids of two replicas never collide.
fn rand_nonce() -> u64 {
    let mut bytes = [0u8; 8];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
        // The id only needs to differ between live replicas: the clock is enough then.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        return t.as_nanos() as u64 ^ u64::from(std::process::id());
    }
    u64::from_le_bytes(bytes)
}

/// Forgets full keys every [`SWEEP_EVERY`], and soon after the store overflows; ends with the
/// limiter.
async fn sweeper(limiter: Weak<TokenLimiter>) {
    loop {
        {
            let Some(l) = limiter.upgrade() else { return };
            let _ = tokio::time::timeout(SWEEP_EVERY, l.sweep.notified()).await;
            l.sweep_now();
        }
        tokio::time::sleep(super::SWEEP_MIN_GAP).await;
    }
}

#[cfg(test)]
mod tests;
