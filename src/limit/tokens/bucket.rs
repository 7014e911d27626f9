//! The arithmetic of a token bucket with debt, kept as a theoretical arrival time (TAT): the
//! moment the bucket is full again. Level = capacity − (TAT − now) / time-per-token, so a TAT
//! in the past is a full bucket, and a TAT more than one period ahead is debt (the level is
//! below zero; the key waits until it has paid it back). One number per key, so the local
//! store is the request limit's ([`super::super::BoundedStore`]) and the Redis script keeps
//! the same number.
//!
//! A reservation is admitted when the level covers it; it moves the TAT forward by its size.
//! Settling moves the TAT by the difference between what was charged and what was reserved:
//! back (a refund) or forward (a stream past its reservation is charged in full).

use std::time::Duration;

/// A bucket's shape: its size and refill speed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    /// Tokens in a full bucket: the limit per period.
    pub capacity: u64,
    /// Nanoseconds for one token to come back (period / capacity).
    pub ns_per_token: f64,
}

/// What a reservation step found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// The level covered the reservation.
    pub allowed: bool,
    /// Whole tokens left after the step (0 in debt).
    pub remaining: u64,
    /// Until the bucket is full again.
    pub reset: Duration,
    /// When refused: until the level covers the reservation.
    pub retry_after: Duration,
}

impl Bucket {
    /// The bucket for `capacity` tokens per `period`.
    pub fn new(capacity: u64, period: Duration) -> Bucket {
        let capacity = capacity.max(1);
        Bucket {
            capacity,
            ns_per_token: period.as_nanos() as f64 / capacity as f64,
        }
    }

    fn span(&self, tokens: u64) -> f64 {
        tokens as f64 * self.ns_per_token
    }

    fn remaining(&self, backlog_ns: f64) -> u64 {
        (self.capacity as f64 - backlog_ns / self.ns_per_token)
            .floor()
            .max(0.0) as u64
    }

    /// One reservation of `tokens` (at most the capacity: see [`Bucket::clamp`]) at `now` on
    /// a key whose TAT is `tat` (`None`: never seen, or full long enough to be forgotten).
    /// Returns the step and, when allowed, the new TAT.
    pub fn reserve(&self, tat: Option<u64>, now: u64, tokens: u64) -> (Step, Option<u64>) {
        let base = tat.unwrap_or(now).max(now);
        let backlog = (base - now) as f64;
        let room = self.span(self.capacity - self.clamp(tokens));
        if backlog > room {
            let step = Step {
                allowed: false,
                remaining: self.remaining(backlog),
                reset: nanos(backlog),
                retry_after: nanos((backlog - room).ceil()),
            };
            return (step, None);
        }
        let next = base.saturating_add(self.span(self.clamp(tokens)).round() as u64);
        let backlog = (next - now) as f64;
        let step = Step {
            allowed: true,
            remaining: self.remaining(backlog),
            reset: nanos(backlog),
            retry_after: Duration::ZERO,
        };
        (step, Some(next))
    }

    /// The TAT after settling: `delta` tokens more (debt) or fewer (refund) than reserved.
    /// Never 0, which the store reads as "no state".
    pub fn settle(&self, tat: Option<u64>, now: u64, delta: i64) -> u64 {
        let base = tat.unwrap_or(now).max(now) as f64;
        let moved = base + delta as f64 * self.ns_per_token;
        (moved.round().max(1.0) as u64).max(1)
    }

    /// A reservation is never larger than the whole bucket: a request that asks for more
    /// than the limit per period is admitted once the bucket is full (and charged what it
    /// really used when it ends), rather than refused for ever.
    pub fn clamp(&self, tokens: u64) -> u64 {
        tokens.min(self.capacity)
    }
}

fn nanos(ns: f64) -> Duration {
    Duration::from_nanos(ns.max(0.0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    /// 600 tokens a minute: one token every 100 ms.
    fn bucket() -> Bucket {
        Bucket::new(600, Duration::from_secs(60))
    }

    #[test]
    fn a_full_bucket_admits_up_to_its_capacity_then_refuses_with_the_wait() {
        let b = bucket();
        let now = 100 * SEC;
        let (step, tat) = b.reserve(None, now, 400);
        assert!(step.allowed);
        assert_eq!(step.remaining, 200);
        assert_eq!(step.reset, Duration::from_secs(40));
        let (step, tat) = b.reserve(tat, now, 200);
        assert!(step.allowed);
        assert_eq!(step.remaining, 0);
        let (step, none) = b.reserve(tat, now, 50);
        assert!(!step.allowed);
        assert_eq!(none, None, "a refusal changes nothing");
        assert_eq!(
            step.retry_after,
            Duration::from_secs(5),
            "50 tokens at 10/s"
        );
        assert_eq!(step.reset, Duration::from_secs(60));
        // Five seconds later the 50 tokens are there.
        let (step, _) = b.reserve(tat, now + 5 * SEC, 50);
        assert!(step.allowed);
    }

    #[test]
    fn refunds_come_back_and_debt_makes_the_key_wait() {
        let b = bucket();
        let now = 10 * SEC;
        let (_, tat) = b.reserve(None, now, 600);
        // Charged 100 of 600: 500 return at once.
        let tat = b.settle(tat, now, 100 - 600);
        let (step, _) = b.reserve(Some(tat), now, 500);
        assert!(step.allowed, "{step:?}");
        // Charged 900 of 600 reserved: 300 of debt past an empty bucket.
        let (_, tat) = b.reserve(None, now, 600);
        let tat = b.settle(tat, now, 900 - 600);
        let (step, _) = b.reserve(Some(tat), now, 1);
        assert!(!step.allowed);
        assert_eq!(step.remaining, 0);
        assert_eq!(
            step.retry_after,
            Duration::from_millis(30_100),
            "the debt, then one token"
        );
    }

    #[test]
    fn a_refund_never_fills_past_full() {
        let b = bucket();
        let now = 10 * SEC;
        let (_, tat) = b.reserve(None, now, 100);
        // Long after the bucket refilled, a refund of 100 changes nothing.
        let later = now + 60 * SEC;
        let tat = b.settle(tat, later, -100);
        assert!(tat <= later);
        let (step, tat) = b.reserve(Some(tat), later, 600);
        assert!(step.allowed);
        let (step, _) = b.reserve(tat, later, 1);
        assert!(!step.allowed, "600 is the most a full bucket holds");
    }

    #[test]
    fn a_reservation_larger_than_the_bucket_waits_for_a_full_bucket() {
        let b = bucket();
        assert_eq!(b.clamp(10_000), 600);
        let now = 5 * SEC;
        let (_, tat) = b.reserve(None, now, 1);
        let (step, _) = b.reserve(tat, now, 10_000);
        assert!(!step.allowed);
        assert_eq!(step.retry_after, Duration::from_millis(100));
        let (step, _) = b.reserve(tat, now + SEC / 10, 10_000);
        assert!(step.allowed);
    }
}
