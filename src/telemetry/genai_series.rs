//! The GenAI metrics' series bound once per attribute set, as the HTTP ones are
//! (`telemetry/metrics.rs`): a chat request records its duration and token counts into handles
//! found by one hash of the borrowed facts, instead of building, sorting and hashing an
//! attribute vector (with a copy of every string) per measurement. The sets are bounded by the
//! observer (models past its limit are `other`); past [`MAX_BOUND`] the caller records unbound.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use opentelemetry::KeyValue;
use opentelemetry::metrics::BoundHistogram;

use super::genai_instruments::GenAiInstruments;

/// Attribute sets bound at most (the SDK's own cardinality limit is 2,000 per stream).
const MAX_BOUND: usize = 2048;

/// `gen_ai.token.type` values, in the order of [`Series::tokens`].
pub(super) const TOKEN_TYPES: [&str; 5] = [
    "input",
    "output",
    "cache_read",
    "cache_creation",
    "reasoning",
];

/// The attribute values a GenAI series is keyed by, borrowed from the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Key<'a> {
    pub(super) upstream_version: Option<&'a str>,
    pub(super) operation: &'a str,
    pub(super) provider: &'a str,
    pub(super) request_model: Option<&'a str>,
    pub(super) response_model: Option<&'a str>,
    pub(super) model_version: Option<&'a str>,
    /// Only on the duration histogram.
    pub(super) error: Option<&'a str>,
}

/// A key's values, owned: made once, when its series are bound.
#[derive(Debug)]
struct Owned {
    upstream_version: Option<Box<str>>,
    operation: Box<str>,
    provider: Box<str>,
    request_model: Option<Box<str>>,
    response_model: Option<Box<str>>,
    model_version: Option<Box<str>>,
    error: Option<Box<str>>,
}

impl Owned {
    fn of(k: &Key<'_>) -> Owned {
        Owned {
            upstream_version: k.upstream_version.map(Box::from),
            operation: k.operation.into(),
            provider: k.provider.into(),
            request_model: k.request_model.map(Box::from),
            response_model: k.response_model.map(Box::from),
            model_version: k.model_version.map(Box::from),
            error: k.error.map(Box::from),
        }
    }

    fn key(&self) -> Key<'_> {
        Key {
            upstream_version: self.upstream_version.as_deref(),
            operation: &self.operation,
            provider: &self.provider,
            request_model: self.request_model.as_deref(),
            response_model: self.response_model.as_deref(),
            model_version: self.model_version.as_deref(),
            error: self.error.as_deref(),
        }
    }
}

/// The series of one attribute set. Each is bound when first recorded into, so a series no
/// request ever recorded (a token type the API does not report) is never exported.
#[derive(Debug)]
pub(super) struct Series {
    /// The set without `error.type` (tokens and the streaming timings).
    attributes: Vec<KeyValue>,
    /// `error.type`, added for the duration.
    error: Option<KeyValue>,
    duration: OnceLock<BoundHistogram<f64>>,
    tokens: [OnceLock<BoundHistogram<u64>>; 5],
    time_to_first_token: OnceLock<BoundHistogram<f64>>,
    time_per_output_token: OnceLock<BoundHistogram<f64>>,
}

impl Series {
    pub(super) fn duration(&self, i: &GenAiInstruments) -> &BoundHistogram<f64> {
        self.duration.get_or_init(|| {
            let mut a = self.attributes.clone();
            a.extend(self.error.clone());
            i.request_duration.bind(&a)
        })
    }

    /// The token histogram of `TOKEN_TYPES[kind]`.
    pub(super) fn tokens(&self, i: &GenAiInstruments, kind: usize) -> Option<&BoundHistogram<u64>> {
        let cell = self.tokens.get(kind)?;
        Some(cell.get_or_init(|| {
            let mut a = self.attributes.clone();
            a.push(KeyValue::new("gen_ai.token.type", TOKEN_TYPES[kind]));
            i.token_usage.bind(&a)
        }))
    }

    pub(super) fn time_to_first_token(&self, i: &GenAiInstruments) -> &BoundHistogram<f64> {
        self.time_to_first_token
            .get_or_init(|| i.time_to_first_token.bind(&self.attributes))
    }

    pub(super) fn time_per_output_token(&self, i: &GenAiInstruments) -> &BoundHistogram<f64> {
        self.time_per_output_token
            .get_or_init(|| i.time_per_output_token.bind(&self.attributes))
    }
}

/// FNV-1a: the keys are a handful of short strings hashed on one thread, where SipHash's
/// resistance to chosen collisions buys nothing (the sets are bounded before they get here).
#[derive(Debug, Default)]
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

/// The bound series by key hash (keys of equal hash share a bucket and are compared).
#[derive(Debug, Default)]
pub(super) struct GenAiSeries {
    map: Mutex<Map>,
}

/// The sets whose key hashes to one value, each with its series.
type Bucket = Vec<(Owned, Arc<Series>)>;

#[derive(Debug, Default)]
struct Map {
    buckets: HashMap<u64, Bucket, BuildHasherDefault<Fnv>>,
    len: usize,
}

impl GenAiSeries {
    /// The series of `key`, made from `attributes` (the set without `error.type`) the first
    /// time; `None` once [`MAX_BOUND`] sets are bound.
    pub(super) fn get(
        &self,
        key: &Key<'_>,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> Option<Arc<Series>> {
        let hash = {
            let mut h = Fnv::default();
            std::hash::Hash::hash(key, &mut h);
            h.finish()
        };
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(bucket) = map.buckets.get(&hash)
            && let Some((_, s)) = bucket.iter().find(|(k, _)| k.key() == *key)
        {
            return Some(s.clone());
        }
        if map.len >= MAX_BOUND {
            return None;
        }
        let series = Arc::new(Series {
            attributes: attributes(),
            error: key.error.map(|e| KeyValue::new("error.type", e.to_owned())),
            duration: OnceLock::new(),
            tokens: Default::default(),
            time_to_first_token: OnceLock::new(),
            time_per_output_token: OnceLock::new(),
        });
        map.len += 1;
        map.buckets
            .entry(hash)
            .or_default()
            .push((Owned::of(key), series.clone()));
        Some(series)
    }
}
