//! The in-memory state behind the local limiter: a governor state store with a cap on keys.
//!
//! governor's own keyed stores grow with every key ever seen. This one holds at most `cap`
//! keys; a key first seen while the store is full does not get a state of its own but shares
//! one overflow bucket with every other such key, until the sweep ([`BoundedStore::retain_recent`]
//! through governor) frees the states of idle keys. Existing keys keep their own budget.

use std::hash::Hash;
use std::num::NonZeroU64;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::state::keyed::ShrinkableKeyedStateStore;

/// One GCRA state: the theoretical arrival time in nanoseconds since the limiter's start, or 0
/// for a fresh bucket (the encoding governor's `InMemoryState` uses).
#[derive(Debug, Default)]
struct Cell(AtomicU64);

impl Cell {
    /// governor's compare-and-swap loop: measure, decide, and only store if nobody raced us.
    fn measure_and_replace<T, E>(
        &self,
        f: impl Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    ) -> Result<T, E> {
        let mut prev = self.0.load(Ordering::Acquire);
        loop {
            let (result, next) = f(NonZeroU64::new(prev).map(|n| Nanos::from(n.get())))?;
            match self.0.compare_exchange_weak(
                prev,
                next.as_u64(),
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(result),
                Err(actual) => prev = actual,
            }
        }
    }

    fn older_than(&self, t: Nanos) -> bool {
        self.0.load(Ordering::Relaxed) <= t.as_u64()
    }
}

/// A keyed governor state store holding at most `cap` keys plus one shared overflow bucket.
///
/// A cheap handle: clones share the state, so the limiter's owner can watch the store that
/// governor's `RateLimiter` owns.
#[derive(Debug)]
pub struct BoundedStore<K: Hash + Eq>(Arc<Inner<K>>);

impl<K: Hash + Eq> Clone for BoundedStore<K> {
    fn clone(&self) -> Self {
        BoundedStore(self.0.clone())
    }
}

#[derive(Debug)]
struct Inner<K: Hash + Eq> {
    map: DashMap<K, Cell>,
    overflow: Cell,
    cap: usize,
}

impl<K: Hash + Eq + Clone> BoundedStore<K> {
    /// An empty store for up to `cap` keys.
    pub fn new(cap: usize) -> Self {
        BoundedStore(Arc::new(Inner {
            map: DashMap::new(),
            overflow: Cell::default(),
            cap: cap.max(1),
        }))
    }

    /// Whether a decision for `key` would use the shared overflow bucket: the key has no
    /// state of its own and the store is full.
    pub fn would_overflow(&self, key: &K) -> bool {
        !self.0.map.contains_key(key) && self.0.map.len() >= self.0.cap
    }

    /// The number of keys with a state of their own.
    pub fn tracked(&self) -> usize {
        self.0.map.len()
    }
}

impl<K: Hash + Eq + Clone> StateStore for BoundedStore<K> {
    type Key = K;

    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        if let Some(cell) = self.0.map.get(key) {
            return cell.measure_and_replace(f);
        }
        // The length is read without a lock, so a burst of new keys may overshoot the cap by
        // the number of threads racing here: a handful, never unbounded.
        if self.0.map.len() >= self.0.cap {
            return self.0.overflow.measure_and_replace(f);
        }
        let cell = self.0.map.entry(key.clone()).or_default();
        cell.measure_and_replace(f)
    }
}

impl<K: Hash + Eq + Clone> ShrinkableKeyedStateStore<K> for BoundedStore<K> {
    fn retain_recent(&self, drop_below: Nanos) {
        self.0.map.retain(|_, cell| !cell.older_than(drop_below));
    }

    fn shrink_to_fit(&self) {
        self.0.map.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.0.map.len()
    }

    fn is_empty(&self) -> bool {
        self.0.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;
    use governor::{Quota, RateLimiter};
    use std::num::NonZeroU32;
    use std::time::Duration;

    type Limiter = RateLimiter<
        u64,
        BoundedStore<u64>,
        FakeRelativeClock,
        governor::middleware::NoOpMiddleware<Nanos>,
    >;

    fn limiter(cap: usize, clock: &FakeRelativeClock) -> (Limiter, BoundedStore<u64>) {
        let quota = Quota::per_second(NonZeroU32::new(2).expect("non-zero"));
        let store = BoundedStore::new(cap);
        (RateLimiter::new(quota, store.clone(), clock.clone()), store)
    }

    #[test]
    fn each_key_has_its_own_budget() {
        let clock = FakeRelativeClock::default();
        let (l, _) = limiter(10, &clock);
        assert!(l.check_key(&1).is_ok());
        assert!(l.check_key(&1).is_ok());
        assert!(l.check_key(&1).is_err(), "burst of 2 is spent");
        assert!(l.check_key(&2).is_ok(), "another key is untouched");
        clock.advance(Duration::from_millis(500));
        assert!(l.check_key(&1).is_ok(), "one request's worth came back");
    }

    #[test]
    fn keys_beyond_the_cap_share_one_overflow_bucket() {
        let clock = FakeRelativeClock::default();
        let (l, store) = limiter(3, &clock);
        for k in 0..3 {
            assert!(l.check_key(&k).is_ok());
        }
        assert_eq!(l.len(), 3);
        // New keys past the cap share one bucket of 2.
        assert!(store.would_overflow(&100));
        assert!(!store.would_overflow(&1));
        assert!(l.check_key(&100).is_ok());
        assert!(l.check_key(&101).is_ok());
        assert!(l.check_key(&102).is_err());
        assert_eq!(l.len(), 3, "the store never grows past the cap");
        assert_eq!(store.tracked(), 3);
        // Tracked keys keep their own budget meanwhile.
        assert!(l.check_key(&0).is_ok());
    }

    #[test]
    fn idle_keys_are_forgotten() {
        let clock = FakeRelativeClock::default();
        let (l, _) = limiter(1000, &clock);
        for k in 0..500 {
            assert!(l.check_key(&k).is_ok());
        }
        assert_eq!(l.len(), 500);
        clock.advance(Duration::from_secs(2));
        assert!(l.check_key(&7).is_ok());
        l.retain_recent();
        l.shrink_to_fit();
        assert_eq!(l.len(), 1, "only the key used since is kept");
    }
}
