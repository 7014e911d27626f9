//! Settling: the reservation handle that travels with the exchange, and what settling it
//! found. Settling runs where the exchange is recorded (the telemetry thread): locally it is
//! one compare-and-swap; on Redis it is a script sent from the runtime, never waited for,
//! bounded by the Redis timeout and counted when it fails (the reservation then expires on
//! Redis and returns on its own). A reservation dropped unsettled (its record was dropped by a
//! full telemetry queue) keeps what it reserved as its charge.

use std::sync::Arc;

use opentelemetry::KeyValue;

use super::estimate::{self, Outcome, Usage};
use super::redis::RedisSlot;
use super::{LocalKey, TokenDecision, TokenLimiter};

/// A reservation not yet settled.
pub struct Reservation {
    limiter: Arc<TokenLimiter>,
    key: LocalKey,
    /// On Redis; `None` when the local store holds it (no Redis, or the fallback).
    slot: Option<RedisSlot>,
    tokens: u64,
    input_estimate: u64,
    settled: bool,
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("tokens", &self.tokens)
            .field("redis", &self.slot.is_some())
            .finish_non_exhaustive()
    }
}

/// What settling a reservation found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settlement {
    /// Tokens reserved at admission.
    pub reserved: u64,
    /// Tokens charged.
    pub charged: u64,
    /// Reserved tokens returned (the rest of the reservation).
    pub refunded: u64,
    /// Whether the charge is the reported usage or an estimate.
    pub usage: Usage,
}

impl Reservation {
    pub(super) fn new(
        limiter: Arc<TokenLimiter>,
        key: LocalKey,
        slot: Option<RedisSlot>,
        tokens: u64,
        input_estimate: u64,
    ) -> Reservation {
        Reservation {
            limiter,
            key,
            slot,
            tokens,
            input_estimate,
            settled: false,
        }
    }

    /// Settles at the charge `outcome` implies; `ending` names how the exchange ended
    /// (`complete`, `cancelled`, `failed`) for the metrics.
    pub fn settle(mut self, outcome: &Outcome, ending: &'static str) -> Settlement {
        let (charged, usage) = estimate::charge(self.input_estimate, outcome);
        self.apply(charged, usage, ending)
    }

    fn apply(&mut self, charged: u64, usage: Usage, ending: &'static str) -> Settlement {
        self.settled = true;
        let reserved = self.tokens;
        let refunded = reserved.saturating_sub(charged);
        let l = &self.limiter;
        let ended = KeyValue::new("ending", ending);
        l.instruments.charged.add(
            charged,
            &[ended.clone(), KeyValue::new("usage", usage.as_str())],
        );
        l.instruments.refunded.add(refunded, &[ended]);
        match self.slot.take() {
            Some(slot) => {
                let limiter = l.clone();
                l.runtime.spawn(async move {
                    if let Some(redis) = &limiter.redis
                        && let Err(reason) = redis.settle(&slot, reserved, charged).await
                    {
                        limiter.fell_back("settle", reason);
                    }
                });
            }
            None => {
                let delta = i64::try_from(charged)
                    .unwrap_or(i64::MAX)
                    .saturating_sub(i64::try_from(reserved).unwrap_or(i64::MAX));
                l.settle_local(self.key, delta);
            }
        }
        Settlement {
            reserved,
            charged,
            refunded,
            usage,
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.settled {
            self.apply(self.tokens, Usage::Estimated, "unobserved");
        }
    }
}

/// One exchange's token budget: the decision, the reservation until it is settled, then the
/// settlement.
#[derive(Debug)]
pub struct TokenAccount {
    decision: TokenDecision,
    reservation: Option<Reservation>,
    settlement: Option<Settlement>,
}

impl TokenAccount {
    pub(super) fn new(decision: TokenDecision, reservation: Option<Reservation>) -> TokenAccount {
        TokenAccount {
            decision,
            reservation,
            settlement: None,
        }
    }

    /// The admission decision.
    pub fn decision(&self) -> &TokenDecision {
        &self.decision
    }

    /// Settles the reservation (once; later calls do nothing).
    pub fn settle(&mut self, outcome: &Outcome, ending: &'static str) {
        if let Some(reservation) = self.reservation.take() {
            self.settlement = Some(reservation.settle(outcome, ending));
        }
    }

    /// What settling found, once settled.
    pub fn settlement(&self) -> Option<&Settlement> {
        self.settlement.as_ref()
    }

    /// Span attributes: the decision's, and reserved, charged, refunded and whether the
    /// charge was reported or estimated.
    pub fn span_attributes(&self) -> Vec<KeyValue> {
        let mut attributes = self.decision.span_attributes().to_vec();
        let as_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        attributes.push(KeyValue::new(
            "ragscope.token_limit.reserved",
            as_i64(self.decision.reserved()),
        ));
        if let Some(s) = &self.settlement {
            attributes.extend([
                KeyValue::new("ragscope.token_limit.charged", as_i64(s.charged)),
                KeyValue::new("ragscope.token_limit.refunded", as_i64(s.refunded)),
                KeyValue::new("ragscope.token_limit.usage", s.usage.as_str()),
            ]);
        }
        attributes
    }
}
