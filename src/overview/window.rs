//! Fixed time buckets and fixed log-scaled histograms: the bounded memory behind the overview.
//!
//! A [`Window`] is a ring of `len` buckets of `width` seconds; a bucket is reused (reset) when
//! its slot comes round again, so memory never grows and old data ages out without a timer.
//! Percentiles come from [`LogHistogram`]: counts per bucket of a geometric scale, never stored
//! samples, so recording is O(1) and a percentile is exact to one bucket (about 9 %).

/// Smallest value the histogram tells apart (seconds); anything below lands in bucket 0.
const MIN: f64 = 0.000_5;
/// Buckets per doubling: 8 gives a bucket ratio of 2^(1/8) ≈ 1.09.
const PER_DOUBLING: f64 = 8.0;
/// 0.5 ms · 2^(144/8) ≈ 131 s; slower values share the last bucket.
pub const HISTOGRAM_BUCKETS: usize = 144;

/// Counts per geometric bucket.
#[derive(Debug, Clone)]
pub struct LogHistogram {
    counts: Box<[u32; HISTOGRAM_BUCKETS]>,
    total: u32,
}

impl Default for LogHistogram {
    fn default() -> Self {
        LogHistogram {
            counts: Box::new([0; HISTOGRAM_BUCKETS]),
            total: 0,
        }
    }
}

impl LogHistogram {
    fn index(v: f64) -> usize {
        if v.is_nan() || v <= MIN {
            return 0;
        }
        let i = ((v / MIN).log2() * PER_DOUBLING).floor() as usize + 1;
        i.min(HISTOGRAM_BUCKETS - 1)
    }

    /// The upper bound of bucket `i`, the value a percentile in it is reported as.
    fn upper(i: usize) -> f64 {
        MIN * (i as f64 / PER_DOUBLING).exp2()
    }

    /// Counts one value (seconds). Non-finite values are ignored.
    pub fn record(&mut self, v: f64) {
        if !v.is_finite() {
            return;
        }
        let i = Self::index(v);
        self.counts[i] = self.counts[i].saturating_add(1);
        self.total = self.total.saturating_add(1);
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, other: &LogHistogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a = a.saturating_add(*b);
        }
        self.total = self.total.saturating_add(other.total);
    }

    /// How many values were counted.
    pub fn count(&self) -> u32 {
        self.total
    }

    /// The `q` quantile (0..=1), as the upper bound of the bucket it falls in; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * f64::from(self.total)).ceil() as u32).max(1);
        let mut seen = 0u32;
        for (i, c) in self.counts.iter().enumerate() {
            seen = seen.saturating_add(*c);
            if seen >= rank {
                return Some(Self::upper(i));
            }
        }
        Some(Self::upper(HISTOGRAM_BUCKETS - 1))
    }

    /// The non-empty buckets as (index, count): the histogram in a form another process can
    /// read back with [`LogHistogram::add_bucket`] (the canary pools replicas' figures).
    pub fn nonzero(&self) -> Vec<(u16, u32)> {
        (0u16..)
            .zip(self.counts.iter())
            .filter(|(_, c)| **c > 0)
            .map(|(i, c)| (i, *c))
            .collect()
    }

    /// Adds `count` values to bucket `index` (an index from [`LogHistogram::nonzero`]);
    /// an index out of range is ignored.
    pub fn add_bucket(&mut self, index: u16, count: u32) {
        if let Some(c) = self.counts.get_mut(usize::from(index)) {
            *c = c.saturating_add(count);
            self.total = self.total.saturating_add(count);
        }
    }

    fn clear(&mut self) {
        self.counts.fill(0);
        self.total = 0;
    }
}

/// What one bucket of time holds.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Requests that ended in the bucket.
    pub requests: u64,
    /// Of which failed (`error.type` set: proxy errors, upstream 5xx, broken streams).
    pub errors: u64,
    /// Of which refused by the rate limit.
    pub rate_limited: u64,
    /// Of which the client went away first.
    pub cancelled: u64,
    /// Responses that carried a retrieval (a documents list).
    pub retrievals: u64,
    /// Of which returned no document.
    pub empty_retrievals: u64,
    /// Input tokens reported.
    pub input_tokens: u64,
    /// Output tokens reported.
    pub output_tokens: u64,
    /// Cost in USD, where the model's price is configured.
    pub cost: f64,
    /// Requests whose cost is known.
    pub costed: u64,
    /// Feedback received.
    pub feedback: u64,
    /// Sum of the feedback scores.
    pub feedback_sum: f64,
    /// Request durations (s).
    pub latency: LogHistogram,
    /// Time to first token of streamed answers (s).
    pub ttft: LogHistogram,
}

impl Stats {
    /// Adds another bucket's figures.
    pub fn merge(&mut self, o: &Stats) {
        self.requests += o.requests;
        self.errors += o.errors;
        self.rate_limited += o.rate_limited;
        self.cancelled += o.cancelled;
        self.retrievals += o.retrievals;
        self.empty_retrievals += o.empty_retrievals;
        self.input_tokens += o.input_tokens;
        self.output_tokens += o.output_tokens;
        self.cost += o.cost;
        self.costed += o.costed;
        self.feedback += o.feedback;
        self.feedback_sum += o.feedback_sum;
        self.latency.merge(&o.latency);
        self.ttft.merge(&o.ttft);
    }

    fn clear(&mut self) {
        let (mut latency, mut ttft) = (
            std::mem::take(&mut self.latency),
            std::mem::take(&mut self.ttft),
        );
        latency.clear();
        ttft.clear();
        *self = Stats {
            latency,
            ttft,
            ..Stats::default()
        };
    }
}

/// A ring of `len` buckets of `width` seconds each.
#[derive(Debug, Clone)]
pub struct Window {
    width: u64,
    /// (bucket number = unix seconds / width, its figures); a slot whose number is not the
    /// one asked for is stale.
    slots: Vec<(u64, Stats)>,
}

impl Window {
    /// `len` buckets of `width` seconds (both at least 1).
    pub fn new(len: usize, width: u64) -> Window {
        Window {
            width: width.max(1),
            slots: vec![(u64::MAX, Stats::default()); len.max(1)],
        }
    }

    /// Seconds per bucket.
    pub fn width(&self) -> u64 {
        self.width
    }

    /// Number of buckets.
    pub fn buckets(&self) -> usize {
        self.slots.len()
    }

    /// The bucket for unix time `secs`, reset first when its slot held an older bucket.
    pub fn at(&mut self, secs: u64) -> &mut Stats {
        let n = secs / self.width;
        let len = self.slots.len() as u64;
        let slot = &mut self.slots[(n % len) as usize];
        if slot.0 != n {
            slot.0 = n;
            slot.1.clear();
        }
        &mut slot.1
    }

    /// The buckets that end at unix time `now`, oldest first, as (bucket start in unix
    /// seconds, figures); buckets without data are empty, never missing.
    pub fn series(&self, now: u64) -> Vec<(u64, Option<&Stats>)> {
        let newest = now / self.width;
        let len = self.slots.len() as u64;
        (0..len)
            .rev()
            .filter_map(|back| newest.checked_sub(back))
            .map(|n| {
                let slot = &self.slots[(n % len) as usize];
                (n * self.width, (slot.0 == n).then_some(&slot.1))
            })
            .collect()
    }

    /// Everything in the window ending at `now`, merged.
    pub fn total(&self, now: u64) -> Stats {
        let mut all = Stats::default();
        for (_, s) in self.series(now) {
            if let Some(s) = s {
                all.merge(s);
            }
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_one_bucket() {
        let mut h = LogHistogram::default();
        assert_eq!(h.quantile(0.5), None);
        for ms in 1..=100 {
            h.record(ms as f64 / 1000.0);
        }
        let p50 = h.quantile(0.5).expect("p50");
        let p95 = h.quantile(0.95).expect("p95");
        assert!((0.050..=0.050 * 1.1).contains(&p50), "{p50}");
        assert!((0.095..=0.095 * 1.1).contains(&p95), "{p95}");
        assert_eq!(h.count(), 100);
        // Out-of-range values are clamped, not lost; non-finite ones are ignored.
        h.record(0.0);
        h.record(10_000.0);
        h.record(f64::NAN);
        assert_eq!(h.count(), 102);
        assert!(h.quantile(1.0).expect("max") > 100.0);
        assert!(h.quantile(0.0).expect("min") <= MIN);
    }

    #[test]
    fn merging_adds_counts() {
        let (mut a, mut b) = (LogHistogram::default(), LogHistogram::default());
        a.record(0.01);
        b.record(1.0);
        b.record(1.0);
        a.merge(&b);
        assert_eq!(a.count(), 3);
        assert!(a.quantile(0.9).expect("q") >= 1.0);
    }

    #[test]
    fn buckets_age_out_and_are_reused() {
        let mut w = Window::new(4, 10);
        w.at(1000).requests += 1;
        w.at(1009).requests += 1;
        w.at(1010).requests += 5;
        let series = w.series(1015);
        assert_eq!(series.len(), 4);
        assert_eq!(series[3].0, 1010);
        assert_eq!(series[3].1.map(|s| s.requests), Some(5));
        assert_eq!(series[2].1.map(|s| s.requests), Some(2));
        assert!(series[0].1.is_none(), "no data is empty, not missing");
        assert_eq!(w.total(1015).requests, 7);
        // 40 s later the old buckets are outside the window; the slot of 1010 is reused.
        assert_eq!(w.total(1055).requests, 0);
        w.at(1050).requests += 1;
        assert_eq!(w.total(1055).requests, 1);
        assert!(
            w.series(1055)
                .iter()
                .all(|(start, s)| s.is_none() || *start == 1050)
        );
        assert_eq!(w.buckets(), 4);
    }
}
