//! Canary settings (`RAGSCOPE_UPSTREAM_CANARY`, `RAGSCOPE_CANARY_*`, `RAGSCOPE_UPSTREAM_VERSION`,
//! `RAGSCOPE_SHARED_REDIS`), parsed once at start-up.

use std::time::Duration;

use crate::config::{ConfigError, Reader, Source};
use crate::settings::{UPSTREAM_FORM, Upstream, parse_upstream};

/// Longest version name, in bytes: it becomes a metric attribute and a span attribute.
pub const MAX_VERSION: usize = 64;

const VERSION_FORM: &str = "a version name of 1 to 64 letters, digits, '.', '_' or '-'";

/// Everything the canary needs; `None` from [`CanarySettings::from_reader`] when
/// `RAGSCOPE_UPSTREAM_CANARY` is unset.
#[derive(Debug, Clone)]
pub struct CanarySettings {
    /// `RAGSCOPE_UPSTREAM_CANARY`: the second upstream.
    pub upstream: Upstream,
    /// `RAGSCOPE_CANARY_WEIGHT`: percent of clients sent to the canary, in hundredths of a
    /// percent (0..=10000): `12.5` is 1250.
    pub weight: u32,
    /// `RAGSCOPE_UPSTREAM_VERSION`: the stable upstream's version name.
    pub stable_version: String,
    /// `RAGSCOPE_CANARY_VERSION`: the canary's version name.
    pub canary_version: String,
    /// `RAGSCOPE_CANARY_HEADER`: a request header naming the version to use (testing).
    pub header: Option<http::HeaderName>,
    /// Thresholds of the automatic rollback.
    pub rules: Rules,
    /// `RAGSCOPE_SHARED_REDIS` (else `RAGSCOPE_RATE_LIMIT_REDIS`): shared figures and state.
    pub redis: Option<String>,
}

/// When the canary counts as worse than stable (see README "Canary rollouts").
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    /// `RAGSCOPE_CANARY_AUTO_ROLLBACK`: whether a verdict rolls back (off: only reported).
    pub auto_rollback: bool,
    /// `RAGSCOPE_CANARY_WINDOW`: the sliding window compared.
    pub window: Duration,
    /// `RAGSCOPE_CANARY_MIN_SAMPLES`: requests each side needs in the window before any verdict
    /// (time-to-first-token needs as many streamed answers on each side).
    pub min_samples: u64,
    /// `RAGSCOPE_CANARY_MAX_ERROR_RATE_INCREASE`: fraction (0..1) by which the canary's error
    /// rate may exceed stable's.
    pub error_rate_increase: f64,
    /// `RAGSCOPE_CANARY_MAX_LATENCY_RATIO`: how many times stable's p95 the canary's p95
    /// (latency and time to first token) may be.
    pub latency_ratio: f64,
    /// `RAGSCOPE_CANARY_LATENCY_SLACK`: a p95 difference below this never counts, however large
    /// the ratio (1 ms against 2 ms is noise).
    pub latency_slack: Duration,
    /// `RAGSCOPE_CANARY_MIN_FEEDBACK`: feedback each side needs before scores are compared.
    pub min_feedback: u64,
    /// `RAGSCOPE_CANARY_MAX_SCORE_DROP`: how far below stable's mean score the canary's may be.
    pub score_drop: f64,
}

impl CanarySettings {
    /// Reads the canary settings; `None` unless `RAGSCOPE_UPSTREAM_CANARY` is set.
    pub fn from_reader<S: Source + ?Sized>(
        r: &Reader<'_, S>,
    ) -> Result<Option<CanarySettings>, ConfigError> {
        // The other canary variables are read (and checked) only with a canary.
        let Some(upstream) = r.optional("RAGSCOPE_UPSTREAM_CANARY", "off", UPSTREAM_FORM, |v| {
            parse_upstream(v)
        })?
        else {
            return Ok(None);
        };
        let stable_version = r.parse(
            "RAGSCOPE_UPSTREAM_VERSION",
            "stable",
            VERSION_FORM,
            parse_version,
        )?;
        let canary_version = r.parse(
            "RAGSCOPE_CANARY_VERSION",
            "canary",
            VERSION_FORM,
            parse_version,
        )?;
        if canary_version == stable_version {
            return Err(ConfigError::new(
                "RAGSCOPE_CANARY_VERSION",
                &canary_version,
                "a version name other than RAGSCOPE_UPSTREAM_VERSION's",
            ));
        }
        let rules = Rules {
            auto_rollback: r.on_off("RAGSCOPE_CANARY_AUTO_ROLLBACK", true)?,
            window: r.duration_in(
                "RAGSCOPE_CANARY_WINDOW",
                Duration::from_secs(300),
                Duration::from_secs(5)..=Duration::from_secs(24 * 3600),
            )?,
            min_samples: r.count_in("RAGSCOPE_CANARY_MIN_SAMPLES", 100, "requests", 1..)?,
            error_rate_increase: r.parse(
                "RAGSCOPE_CANARY_MAX_ERROR_RATE_INCREASE",
                "0.05",
                "a fraction from 0 to 1, like 0.05 (5 percentage points)",
                |v| parse_f64(v).filter(|f| (0.0..=1.0).contains(f)),
            )?,
            latency_ratio: r.parse(
                "RAGSCOPE_CANARY_MAX_LATENCY_RATIO",
                "1.5",
                "a ratio of at least 1, like 1.5",
                |v| parse_f64(v).filter(|f| *f >= 1.0),
            )?,
            latency_slack: r.duration("RAGSCOPE_CANARY_LATENCY_SLACK", "50ms")?,
            min_feedback: r.count_in("RAGSCOPE_CANARY_MIN_FEEDBACK", 20, "feedback", 1..)?,
            score_drop: r.parse(
                "RAGSCOPE_CANARY_MAX_SCORE_DROP",
                "0.1",
                "a non-negative number in feedback score units, like 0.1",
                |v| parse_f64(v).filter(|f| *f >= 0.0),
            )?,
        };
        let shared = r.optional(
            "RAGSCOPE_SHARED_REDIS",
            "off",
            "a Redis URL like redis://127.0.0.1:6379/0 (or off)",
            |v| Some(v.to_owned()),
        )?;
        Ok(Some(CanarySettings {
            upstream,
            weight: r.parse(
                "RAGSCOPE_CANARY_WEIGHT",
                "0",
                "a percentage from 0 to 100, decimals allowed (hundredths), like 5 or 12.5",
                parse_weight,
            )?,
            stable_version,
            canary_version,
            header: r.optional(
                "RAGSCOPE_CANARY_HEADER",
                "off",
                "a header name like x-ragscope-version (or off)",
                |v| http::HeaderName::try_from(v).ok(),
            )?,
            rules,
            // A rate-limit Redis is reused unless the canary is given its own.
            redis: shared.or_else(|| r.get("RAGSCOPE_RATE_LIMIT_REDIS")),
        }))
    }
}

/// A percentage 0..=100 with at most two decimals, as hundredths of a percent.
pub fn parse_weight(v: &str) -> Option<u32> {
    let (whole, frac) = v.trim().split_once('.').unwrap_or((v.trim(), ""));
    if whole.is_empty() || frac.len() > 2 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole: u32 = whole.parse().ok()?;
    let frac: u32 = format!("{frac:0<2}").parse().ok()?;
    let hundredths = whole.checked_mul(100)?.checked_add(frac)?;
    (hundredths <= 10_000).then_some(hundredths)
}

/// Shows hundredths of a percent as a percentage (`1250` is `12.5`).
pub fn show_weight(hundredths: u32) -> f64 {
    f64::from(hundredths) / 100.0
}

fn parse_version(v: &str) -> Option<String> {
    let ok = !v.is_empty()
        && v.len() <= MAX_VERSION
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    ok.then(|| v.to_owned())
}

fn parse_f64(v: &str) -> Option<f64> {
    v.trim().parse::<f64>().ok().filter(|f| f.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_hundredths() {
        assert_eq!(parse_weight("0"), Some(0));
        assert_eq!(parse_weight("100"), Some(10_000));
        assert_eq!(parse_weight("12.5"), Some(1250));
        assert_eq!(parse_weight("0.01"), Some(1));
        assert_eq!(parse_weight("100.01"), None);
        assert_eq!(parse_weight("1.234"), None);
        assert_eq!(parse_weight("-1"), None);
        assert_eq!(parse_weight(".5"), None);
        assert_eq!(parse_weight("5."), Some(500));
        assert_eq!(show_weight(1250), 12.5);
    }

    fn read(pairs: &[(&str, &str)]) -> Result<Option<CanarySettings>, ConfigError> {
        CanarySettings::from_reader(&Reader::new(pairs))
    }

    #[test]
    fn settings_parse_and_refuse_what_cannot_work() {
        assert!(read(&[]).expect("no canary").is_none());
        let c = read(&[
            ("RAGSCOPE_UPSTREAM_CANARY", "http://10.0.0.2:8000"),
            ("RAGSCOPE_CANARY_WEIGHT", "12.5"),
            ("RAGSCOPE_CANARY_VERSION", "v2"),
            ("RAGSCOPE_RATE_LIMIT_REDIS", "redis://r:6379/0"),
        ])
        .expect("parses")
        .expect("a canary");
        assert_eq!((c.weight, c.canary_version.as_str()), (1250, "v2"));
        assert_eq!(c.stable_version, "stable");
        assert_eq!(
            c.redis.as_deref(),
            Some("redis://r:6379/0"),
            "the rate limit's Redis"
        );
        assert_eq!(c.rules.min_samples, 100);
        assert_eq!(c.rules.window, Duration::from_secs(300));
        let canary = ("RAGSCOPE_UPSTREAM_CANARY", "http://10.0.0.2:8000");
        for (bad, var) in [
            (
                ("RAGSCOPE_CANARY_VERSION", "stable"),
                "RAGSCOPE_CANARY_VERSION",
            ),
            (("RAGSCOPE_CANARY_WEIGHT", "101"), "RAGSCOPE_CANARY_WEIGHT"),
            (("RAGSCOPE_CANARY_WINDOW", "1s"), "RAGSCOPE_CANARY_WINDOW"),
            (
                ("RAGSCOPE_CANARY_MAX_LATENCY_RATIO", "0.5"),
                "RAGSCOPE_CANARY_MAX_LATENCY_RATIO",
            ),
            (
                ("RAGSCOPE_UPSTREAM_CANARY", "ftp://x"),
                "RAGSCOPE_UPSTREAM_CANARY",
            ),
        ] {
            let e = read(&[canary, bad]).expect_err(var).to_string();
            assert!(e.contains(var), "{e}");
        }
    }

    #[test]
    fn version_names_are_bounded() {
        assert!(parse_version("v2.1-rc_1").is_some());
        assert!(parse_version("").is_none());
        assert!(parse_version("a b").is_none());
        assert!(parse_version(&"x".repeat(65)).is_none());
    }
}
