//! Settling: the reservation handle that travels with the exchange, and what settling it
//! found. Settling runs where the exchange is recorded (the telemetry thread): locally it is
//! one compare-and-swap; on Redis it is a script sent from the runtime, never waited for,
//! bounded by the Redis timeout. A Redis settle that fails is counted and tried again after
//! [`RETRY_FIRST`], doubling, [`TRIES`] times in all (a retry that finds its reservation gone
//! before it could have expired knows an earlier try was applied and does nothing); when every
//! try failed the charge goes to the local budget, the one that decides while Redis is away,
//! and the reservation expires on Redis (the fleet then under-charges that request). A
//! reservation dropped unsettled (its record was dropped by a full telemetry queue) keeps what
//! it reserved as its charge.

use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;

use super::estimate::{self, Outcome, Usage};
use super::redis::RedisSlot;
use super::{BudgetDecision, BudgetLimiter, LocalKey, Unit, cost};

/// Tries of a Redis settle, the first included.
const TRIES: u32 = 5;
/// The wait before the first retry (then 2 s, 4 s, 8 s: about 15 s in all).
const RETRY_FIRST: Duration = Duration::from_secs(1);
/// How long before its expiry a reservation may already be gone, for a retry: the Redis clock
/// and ours differ, and the reservation was taken a round trip after `taken`.
const EXPIRY_MARGIN: Duration = Duration::from_secs(5);

/// A reservation not yet settled.
pub struct Reservation {
    limiter: Arc<BudgetLimiter>,
    key: LocalKey,
    /// On Redis; `None` when the local store holds it (no Redis, or the fallback).
    slot: Option<RedisSlot>,
    units: u64,
    input_estimate: u64,
    taken: Instant,
    settled: bool,
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("units", &self.units)
            .field("redis", &self.slot.is_some())
            .finish_non_exhaustive()
    }
}

/// What settling a reservation found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settlement {
    /// Units reserved at admission.
    pub reserved: u64,
    /// Units charged.
    pub charged: u64,
    /// Reserved units returned (the rest of the reservation).
    pub refunded: u64,
    /// Whether the charge is the reported usage or an estimate.
    pub usage: Usage,
}

impl Reservation {
    pub(super) fn new(
        limiter: Arc<BudgetLimiter>,
        key: LocalKey,
        slot: Option<RedisSlot>,
        units: u64,
        input_estimate: u64,
    ) -> Reservation {
        Reservation {
            limiter,
            key,
            slot,
            units,
            input_estimate,
            taken: Instant::now(),
            settled: false,
        }
    }

    /// Settles at the charge `outcome` implies (priced at the first of `models` with a price,
    /// for a spend budget: none has one, nothing is charged); `ending` names how the exchange
    /// ended (`complete`, `cancelled`, `failed`) for the metrics.
    pub fn settle(
        mut self,
        outcome: &Outcome,
        models: &[&str],
        ending: &'static str,
    ) -> Settlement {
        let (charged, usage) = match (&self.limiter.prices, self.limiter.unit) {
            (Some(prices), Unit::Cost) => {
                let (charged, usage) =
                    cost::charge(&prices.table(), models, self.input_estimate, outcome);
                (charged.unwrap_or(0), usage)
            }
            _ => estimate::charge(self.input_estimate, outcome),
        };
        self.apply(charged, usage, ending)
    }

    fn apply(&mut self, charged: u64, usage: Usage, ending: &'static str) -> Settlement {
        self.settled = true;
        let reserved = self.units;
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
                let (key, taken) = (self.key, self.taken);
                l.runtime.spawn(async move {
                    settle_on_redis(limiter, key, slot, taken, reserved, charged).await;
                });
            }
            None => l.settle_local(self.key, delta(charged, reserved)),
        }
        Settlement {
            reserved,
            charged,
            refunded,
            usage,
        }
    }
}

fn delta(charged: u64, reserved: u64) -> i64 {
    i64::try_from(charged)
        .unwrap_or(i64::MAX)
        .saturating_sub(i64::try_from(reserved).unwrap_or(i64::MAX))
}

/// The Redis settle, retried on failure (see the module's doc).
async fn settle_on_redis(
    limiter: Arc<BudgetLimiter>,
    key: LocalKey,
    slot: RedisSlot,
    taken: Instant,
    reserved: u64,
    charged: u64,
) {
    let Some(redis) = &limiter.redis else { return };
    let mut wait = RETRY_FIRST;
    for attempt in 0..TRIES {
        if attempt > 0 {
            tokio::time::sleep(wait).await;
            wait *= 2;
        }
        // The first try charges a reservation that is gone (it expired); a retry does so only
        // when it could have expired, else an earlier try was applied and lost its reply.
        let may_have_expired = attempt == 0 || taken.elapsed() + EXPIRY_MARGIN >= redis.ttl;
        match redis
            .settle(&slot, reserved, charged, may_have_expired)
            .await
        {
            Ok((held, moved)) => {
                if attempt > 0 {
                    let done = if held || moved {
                        "applied"
                    } else {
                        "already_applied"
                    };
                    limiter.retried(done);
                }
                return;
            }
            Err(reason) => limiter.fell_back("settle", reason),
        }
    }
    // Redis stayed away: the local budget (deciding meanwhile) learns of the charge.
    limiter.retried("given_up");
    limiter.settle_local(key, delta(charged, 0));
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.settled {
            self.apply(self.units, Usage::Estimated, "unobserved");
        }
    }
}

/// One exchange's budget: the decision, the reservation until it is settled, then the
/// settlement.
#[derive(Debug)]
pub struct BudgetAccount {
    decision: BudgetDecision,
    reservation: Option<Reservation>,
    settlement: Option<Settlement>,
}

impl BudgetAccount {
    pub(super) fn new(decision: BudgetDecision, reservation: Option<Reservation>) -> BudgetAccount {
        BudgetAccount {
            decision,
            reservation,
            settlement: None,
        }
    }

    /// The admission decision.
    pub fn decision(&self) -> &BudgetDecision {
        &self.decision
    }

    /// Settles the reservation (once; later calls do nothing). `models`: the response model,
    /// then the request model, for a spend budget's price.
    pub fn settle(&mut self, outcome: &Outcome, models: &[&str], ending: &'static str) {
        if let Some(reservation) = self.reservation.take() {
            self.settlement = Some(reservation.settle(outcome, models, ending));
        }
    }

    /// What settling found, once settled.
    pub fn settlement(&self) -> Option<&Settlement> {
        self.settlement.as_ref()
    }

    /// Span attributes: the decision's, and reserved, charged, refunded and whether the
    /// charge was reported or estimated (tokens as integers, spend as currency amounts).
    pub fn span_attributes(&self) -> Vec<KeyValue> {
        let unit = self.decision.unit();
        let names = unit.names();
        let mut attributes = self.decision.span_attributes().to_vec();
        attributes.push(KeyValue::new(
            names.reserved,
            unit.attribute(self.decision.reserved()),
        ));
        if let Some(s) = &self.settlement {
            attributes.extend([
                KeyValue::new(names.charged, unit.attribute(s.charged)),
                KeyValue::new(names.refunded, unit.attribute(s.refunded)),
                KeyValue::new(names.usage, s.usage.as_str()),
            ]);
        }
        attributes
    }
}
