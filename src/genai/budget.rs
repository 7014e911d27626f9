//! The process-wide budget for observation copies (`RAGSCOPE_PARSE_BUDGET`, issue 11): every
//! bounded copy a GenAI observation keeps of a JSON body (one per direction, each at most
//! `RAGSCOPE_PARSE_MAX_BYTES`) reserves its bytes here first. With 10,000 connections and
//! HTTP/2 streams, the per-copy bound alone would not bound the total; this does. Past the
//! budget a copy is not made (the exchange's span says so, a metric counts it) and traffic is
//! untouched: the frames were handed on before they were copied.
//!
//! Lock-free: a reservation is one compare-and-swap on a shared counter, taken a few times per
//! body (copies grow in doubling steps), never per frame; it is given back when the copy is
//! dropped, whatever ended the exchange (complete, cancelled, dropped with its connection, or
//! a record dropped by a full telemetry queue).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use opentelemetry::metrics::Meter;

/// The shared budget: bytes reserved by live copies, and copies skipped for want of room.
#[derive(Debug)]
pub struct ParseBudget {
    limit: usize,
    used: AtomicUsize,
    skipped: AtomicU64,
}

impl ParseBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> ParseBudget {
        ParseBudget {
            limit,
            used: AtomicUsize::new(0),
            skipped: AtomicU64::new(0),
        }
    }

    /// Reserves `bytes`, unless that would take the total past the limit.
    #[must_use]
    pub fn try_reserve(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }

    /// Gives back `bytes` reserved earlier.
    pub fn release(&self, bytes: usize) {
        if bytes > 0 {
            self.used.fetch_sub(bytes, Ordering::AcqRel);
        }
    }

    /// Counts a copy that was not made (or let go of) for want of room.
    pub fn note_skipped(&self) {
        self.skipped.fetch_add(1, Ordering::Relaxed);
    }

    /// Bytes reserved by live copies now.
    pub fn in_use(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// Copies skipped so far.
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    /// The limit in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Publishes the budget as metrics, read when a reader collects (nothing per request):
    /// `ragscope.genai.parse_budget.used` (By, gauge), `ragscope.genai.parse_budget.limit`
    /// (By, gauge) and `ragscope.genai.parse_budget.skipped` ({copy}, counter).
    pub fn register(self: &Arc<Self>, meter: &Meter) {
        let used = self.clone();
        meter
            .u64_observable_gauge("ragscope.genai.parse_budget.used")
            .with_unit("By")
            .with_description("Bytes held by GenAI observation copies (RAGSCOPE_PARSE_BUDGET)")
            .with_callback(move |o| o.observe(used.in_use() as u64, &[]))
            .build();
        let limit = self.limit as u64;
        meter
            .u64_observable_gauge("ragscope.genai.parse_budget.limit")
            .with_unit("By")
            .with_description("RAGSCOPE_PARSE_BUDGET")
            .with_callback(move |o| o.observe(limit, &[]))
            .build();
        let skipped = self.clone();
        meter
            .u64_observable_counter("ragscope.genai.parse_budget.skipped")
            .with_unit("{copy}")
            .with_description(
                "Body copies not parsed because RAGSCOPE_PARSE_BUDGET was in use by others",
            )
            .with_callback(move |o| o.observe(skipped.skipped(), &[]))
            .build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_stop_at_the_limit_and_come_back() {
        let budget = ParseBudget::new(100);
        assert!(budget.try_reserve(60));
        assert!(!budget.try_reserve(41), "past the limit");
        assert!(budget.try_reserve(40), "up to it exactly");
        assert_eq!(budget.in_use(), 100);
        budget.release(60);
        assert!(budget.try_reserve(60));
        budget.release(100);
        assert_eq!(budget.in_use(), 0);
        assert!(!budget.try_reserve(usize::MAX), "no overflow");
    }

    #[test]
    fn concurrent_reservers_never_exceed_the_limit() {
        let budget = Arc::new(ParseBudget::new(1000));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let budget = budget.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        if budget.try_reserve(7) {
                            assert!(budget.in_use() <= 1000);
                            budget.release(7);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert_eq!(budget.in_use(), 0);
    }
}
