//! Sticky, weighted assignment of a client to a version.
//!
//! A client is named as the rate limit names it (`RAGSCOPE_RATE_KEY`: address, header value or
//! API key name; [`crate::limit::ClientKeys`]), and that name is hashed into a bucket in
//! [0, 100) percent, in hundredths: the first 8 bytes of
//! `SHA-256("ragscope-canary\0" + canary version + "\0" + fleet key)`, read big-endian and
//! scaled to 0..10000. The client goes to the canary when its bucket is below the weight.
//!
//! So the assignment is the same in every process and across restarts (SHA-256, no per-process
//! seed), a client stays on its version while the weight is unchanged, raising the weight only
//! moves clients from stable to the canary (never back), and a new canary version draws a new
//! sample of clients rather than the same ones every rollout.

use std::sync::Arc;

use opentelemetry::KeyValue;

/// The two upstreams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arm {
    /// `RAGSCOPE_UPSTREAM`.
    Stable,
    /// `RAGSCOPE_UPSTREAM_CANARY`.
    Canary,
}

impl Arm {
    /// `0` for stable, `1` for the canary: an index into per-arm tables.
    pub fn index(self) -> usize {
        match self {
            Arm::Stable => 0,
            Arm::Canary => 1,
        }
    }

    /// `stable` or `canary`.
    pub fn as_str(self) -> &'static str {
        match self {
            Arm::Stable => "stable",
            Arm::Canary => "canary",
        }
    }
}

/// Why a request went where it went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Its bucket against the weight.
    Weight,
    /// The version header (`RAGSCOPE_CANARY_HEADER`) asked for it.
    Forced,
    /// Its bucket chose the canary, but the canary's health checks say it is down.
    CanaryDown,
}

impl Reason {
    /// Low-cardinality name, for the span.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Weight => "weight",
            Reason::Forced => "forced",
            Reason::CanaryDown => "canary_down",
        }
    }
}

/// Where one request goes, and why: decided at admission, noted in the record.
#[derive(Debug, Clone)]
pub struct Route {
    /// The upstream chosen (stable after a failover).
    pub arm: Arm,
    /// Its version name.
    pub version: Arc<str>,
    /// Why.
    pub reason: Reason,
    /// The canary could not be connected to (nothing was sent) and stable served the request.
    pub failover: bool,
}

impl Route {
    /// The span attributes: `ragscope.upstream.version`, `ragscope.canary.assignment` and,
    /// after a failover, `ragscope.canary.failover`.
    pub fn span_attributes(&self) -> impl Iterator<Item = KeyValue> + '_ {
        [
            Some(KeyValue::new(
                super::VERSION_ATTRIBUTE,
                opentelemetry::StringValue::from(self.version.clone()),
            )),
            Some(KeyValue::new(
                "ragscope.canary.assignment",
                self.reason.as_str(),
            )),
            self.failover
                .then(|| KeyValue::new("ragscope.canary.failover", true)),
        ]
        .into_iter()
        .flatten()
    }
}

/// The client's bucket in hundredths of a percent, 0..10000 (see the module docs).
pub fn bucket(canary_version: &str, fleet_key: &str) -> u32 {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    context.update(b"ragscope-canary\0");
    context.update(canary_version.as_bytes());
    context.update(b"\0");
    context.update(fleet_key.as_bytes());
    let digest = context.finish();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    // Scaling (not a modulo) keeps every bucket equally likely.
    ((u128::from(u64::from_be_bytes(first)) * 10_000) >> 64) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_stable_and_spread() {
        assert_eq!(bucket("v2", "k"), bucket("v2", "k"));
        assert_ne!(
            bucket("v2", "k"),
            bucket("v3", "k"),
            "a new rollout draws anew"
        );
        let n = 20_000u32;
        let below = (0..n)
            .filter(|i| bucket("v2", &format!("client-{i}")) < 2_500)
            .count() as f64;
        // Binomial(20000, 0.25): sd ≈ 61; 5 sd either side.
        assert!((below - 5_000.0).abs() < 310.0, "{below}");
        assert!((0..1000).all(|i| bucket("x", &i.to_string()) < 10_000));
    }
}
