//! Token and spend budgets per client (`RAGSCOPE_TOKEN_LIMIT`, `RAGSCOPE_COST_LIMIT`, issue
//! 14): a recognised LLM request reserves its estimated cost before it is forwarded
//! ([`estimate`], priced by [`cost`] for a spend budget), and its reservation is settled when
//! the exchange is recorded: replaced by the usage the response reported (or an estimate from
//! what was streamed, flagged so), the rest refunded, a stream past its reservation charged in
//! full (the key goes into debt and waits, see [`bucket`]). Streams are never cut by a budget.
//!
//! One implementation for both: a budget counts whole [`Unit`]s (tokens, or micro-units of the
//! price file's currency), and the unit only names its telemetry, headers and Redis keys.
//! Keyed, capped, swept and shared on Redis like the request limit ([`super`]); a reservation
//! taken on Redis is settled there, asynchronously and never waited for; one taken by the
//! local fallback is settled locally.

pub mod bucket;
pub mod cost;
pub mod estimate;
mod instruments;
mod redis;
mod settings;
mod settle;
mod unit;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::state::keyed::ShrinkableKeyedStateStore;
use http::{Extensions, HeaderMap};
use opentelemetry::KeyValue;
use opentelemetry::metrics::Meter;
use tokio::sync::Notify;

use super::key::{Keyer, LocalKey};
use super::redis::RedisConn;
use super::{Backend, BoundedStore, ClientIp, KeyType, LimitError, RateLimitConfig, RateMode};
use crate::error::ProxyError;
use crate::genai::api::Recognised;
use crate::genai::prices::Prices;
use bucket::{Bucket, Step};
use estimate::Estimate;
use instruments::Instruments;
use redis::{RedisSlot, TokenRedis};

pub use estimate::{Outcome, Usage};
pub use settings::{CostRate, TokenLimitConfig, TokenRate};
pub use settle::{BudgetAccount, Reservation, Settlement};
pub use unit::{Unit, amount, reset_value};

/// How often idle (full) keys are swept out of the local store.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// A budget's decision about one request.
#[derive(Debug, Clone, Copy)]
pub struct BudgetDecision {
    unit: Unit,
    step: Step,
    limit: u64,
    reserved: u64,
    /// A spend budget found no price for the request's model: admitted, nothing reserved.
    unpriced: bool,
    mode: RateMode,
    key_type: KeyType,
    backend: Backend,
}

impl BudgetDecision {
    /// `allowed`, `limited`, `shadow_limited` (over the budget, but forwarded) or, under a
    /// spend budget, `unpriced` (the model has no price: admitted, nothing reserved).
    pub fn outcome(&self) -> &'static str {
        match (self.unpriced, self.step.allowed, self.mode) {
            (true, ..) => "unpriced",
            (false, true, _) => "allowed",
            (false, false, RateMode::Enforce) => "limited",
            (false, false, RateMode::Shadow) => "shadow_limited",
        }
    }

    /// What the budget counts.
    pub fn unit(&self) -> Unit {
        self.unit
    }

    /// Units reserved for the request (0 when refused or unpriced).
    pub fn reserved(&self) -> u64 {
        self.reserved
    }

    /// The refusal to answer with, when the request must not be forwarded.
    pub fn refusal(&self) -> Option<ProxyError> {
        (!self.step.allowed && self.mode == RateMode::Enforce).then(|| {
            self.unit.refusal(
                super::ceil_secs(self.step.retry_after).max(1),
                self.limit,
                self.step.reset,
            )
        })
    }

    /// Span attributes: decision, key type, backend (never the key).
    pub fn span_attributes(&self) -> [KeyValue; 3] {
        let names = self.unit.names();
        [
            KeyValue::new(names.decision, self.outcome()),
            KeyValue::new(names.key_type, self.key_type.as_str()),
            KeyValue::new(names.backend, self.backend.as_str()),
        ]
    }

    /// Adds the unit's `x-ratelimit-limit-*`, `-remaining-*` and `-reset-*` headers (the reset
    /// a duration like `6m0s`, as OpenAI writes it) to a response. Shadow mode adds nothing.
    /// An unpriced request adds nothing either (its budget was not looked at).
    pub fn add_headers(&self, headers: &mut HeaderMap) {
        if self.mode == RateMode::Shadow || self.unpriced {
            return;
        }
        self.unit
            .add_headers(headers, self.limit, self.step.remaining, self.step.reset);
    }
}

/// The token headers, as on every response under a token limit (the 429 included).
pub fn add_headers(headers: &mut HeaderMap, limit: u64, remaining: u64, reset: Duration) {
    Unit::Tokens.add_headers(headers, limit, remaining, reset);
}

/// A budget every recognised LLM request passes through: tokens when `RAGSCOPE_TOKEN_LIMIT`
/// is set, spend when `RAGSCOPE_COST_LIMIT` is (one limiter each).
pub struct BudgetLimiter {
    unit: Unit,
    /// The price file a spend budget prices with (`None` for tokens).
    prices: Option<Arc<Prices>>,
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

impl std::fmt::Debug for BudgetLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BudgetLimiter")
            .field("unit", &self.unit)
            .field("mode", &self.mode)
            .field("key", &self.keyer.kind)
            .field("bucket", &self.bucket)
            .field("tracked_keys", &self.store.tracked())
            .field("redis", &self.redis)
            .finish_non_exhaustive()
    }
}

impl BudgetLimiter {
    /// The token limiter for `config.tokens`, or `None` when token budgets are off. Starts
    /// the sweeper task, so it must run inside the tokio runtime.
    pub fn from_config(
        config: &RateLimitConfig,
        meter: &Meter,
    ) -> Result<Option<Arc<BudgetLimiter>>, LimitError> {
        let Some(rate) = config.tokens.limit else {
            return Ok(None);
        };
        let bucket = Bucket::new(rate.tokens, rate.period);
        Self::start(
            Unit::Tokens,
            None,
            bucket,
            config.tokens.mode,
            config,
            meter,
        )
        .map(Some)
    }

    /// The spend limiter for `config.tokens.cost`, pricing with `prices`, or `None` when
    /// spend budgets are off (or there is no price file, which the configuration refuses).
    pub fn cost_from_config(
        config: &RateLimitConfig,
        prices: Option<&Arc<Prices>>,
        meter: &Meter,
    ) -> Result<Option<Arc<BudgetLimiter>>, LimitError> {
        let (Some(rate), Some(prices)) = (config.tokens.cost, prices) else {
            return Ok(None);
        };
        let bucket = Bucket::new(rate.micros, rate.period);
        let mode = config.tokens.cost_mode;
        Self::start(
            Unit::Cost,
            Some(prices.clone()),
            bucket,
            mode,
            config,
            meter,
        )
        .map(Some)
    }

    fn start(
        unit: Unit,
        prices: Option<Arc<Prices>>,
        bucket: Bucket,
        mode: RateMode,
        config: &RateLimitConfig,
        meter: &Meter,
    ) -> Result<Arc<BudgetLimiter>, LimitError> {
        let tokens = &config.tokens;
        let redis = config
            .redis
            .as_deref()
            .map(|url| RedisConn::new(url, config.redis_timeout))
            .transpose()?
            .map(|conn| TokenRedis::new(Arc::new(conn), &bucket, tokens.reservation_ttl));
        let store = BoundedStore::new(config.max_keys);
        let limiter = Arc::new(BudgetLimiter {
            unit,
            prices,
            mode,
            keyer: Keyer::new(
                tokens.key.clone(),
                ClientIp::new(config.trusted_proxies.clone(), config.forwarded_header),
            ),
            bucket,
            default_output: tokens.default_max_output,
            instruments: Instruments::new(unit, meter, store.clone()),
            store,
            start: Instant::now(),
            redis,
            runtime: tokio::runtime::Handle::current(),
            nonce: rand_nonce(),
            next_id: AtomicU64::new(0),
            sweep: Notify::new(),
        });
        tokio::spawn(sweeper(Arc::downgrade(&limiter)));
        Ok(limiter)
    }

    /// What the budget counts.
    pub fn unit(&self) -> Unit {
        self.unit
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

    /// What `estimate` reserves: its tokens, or their price (`None`: the model has none).
    fn amount(&self, estimate: &Estimate) -> Option<u64> {
        match &self.prices {
            None => Some(estimate.total()),
            Some(prices) => cost::reservation(&prices.table(), estimate),
        }
    }

    /// Reserves `estimate` for a request from `peer` with `headers` and `extensions`. The
    /// account holds the reservation when one was taken; it travels with the exchange and is
    /// settled where the exchange is recorded.
    pub async fn reserve(
        self: &Arc<Self>,
        headers: &HeaderMap,
        extensions: &Extensions,
        peer: IpAddr,
        estimate: &Estimate,
    ) -> BudgetAccount {
        let (key, mut key_type, stable) = self.keyer.key_for(headers, extensions, peer);
        let amount = self.amount(estimate);
        let units = self.bucket.clamp(amount.unwrap_or(0));
        let (step, backend, slot) = match (&self.redis, amount) {
            // Unpriced: nothing to reserve or decide, so no round trip.
            (_, None) => {
                let free = Step {
                    allowed: true,
                    remaining: 0,
                    reset: Duration::ZERO,
                    retry_after: Duration::ZERO,
                };
                (free, Backend::Local, None)
            }
            (Some(redis), Some(_)) => {
                let id = format!(
                    "{:016x}{:x}",
                    self.nonce,
                    self.next_id.fetch_add(1, Ordering::Relaxed)
                );
                let prefix = self.unit.names().redis_prefix;
                let slot = RedisSlot::new(&self.keyer.redis_key(prefix, &stable), id);
                match redis.reserve(&slot, units).await {
                    Ok(step) => (step, Backend::Redis, Some(slot)),
                    Err(reason) => {
                        self.fell_back("reserve", reason);
                        let step = self.reserve_local(key, &mut key_type, units);
                        (step, Backend::LocalFallback, None)
                    }
                }
            }
            (None, Some(_)) => (
                self.reserve_local(key, &mut key_type, units),
                Backend::Local,
                None,
            ),
        };
        let decision = BudgetDecision {
            unit: self.unit,
            step,
            limit: self.bucket.capacity,
            reserved: if step.allowed { units } else { 0 },
            unpriced: amount.is_none(),
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
        let reservation = (step.allowed && amount.is_some()).then(|| {
            self.instruments.reserved.add(units, &outcome);
            Reservation::new(self.clone(), key, slot, units, estimate.input)
        });
        BudgetAccount::new(decision, reservation)
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }

    fn reserve_local(&self, key: LocalKey, key_type: &mut KeyType, units: u64) -> Step {
        if self.store.would_overflow(&key) {
            *key_type = KeyType::Overflow;
            self.sweep.notify_one();
        }
        let now = self.now();
        let stepped = self.store.measure_and_replace(&key, |tat| {
            match self.bucket.reserve(tat.map(Nanos::as_u64), now, units) {
                (step, Some(next)) => Ok((step, Nanos::from(next))),
                (step, None) => Err(step),
            }
        });
        stepped.unwrap_or_else(|refused| refused)
    }

    /// Moves `key`'s bucket by `delta` units (a refund when negative).
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

    fn retried(&self, outcome: &'static str) {
        self.instruments
            .retries
            .add(1, &[KeyValue::new("outcome", outcome)]);
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
async fn sweeper(limiter: Weak<BudgetLimiter>) {
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
