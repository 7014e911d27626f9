//! What a budget counts: tokens (`RAGSCOPE_TOKEN_LIMIT`) or spend (`RAGSCOPE_COST_LIMIT`, in
//! millionths of the price file's currency). The machinery is one ([`super::BudgetLimiter`]);
//! a unit only names things (metrics, span attributes, headers, Redis keys, the refusal) and
//! says how an amount reads.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::Value;

use crate::error::ProxyError;

/// Millionths of a currency unit in one unit: spend budgets count micro-units.
pub const MICROS: u64 = 1_000_000;

/// What a budget counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Tokens.
    Tokens,
    /// Spend, in millionths of the price file's currency.
    Cost,
}

/// The names a unit's telemetry, headers and Redis keys go by.
#[derive(Debug)]
pub(super) struct Names {
    pub decision: &'static str,
    pub key_type: &'static str,
    pub backend: &'static str,
    pub reserved: &'static str,
    pub charged: &'static str,
    pub refunded: &'static str,
    pub usage: &'static str,
    pub decisions_metric: &'static str,
    pub reserved_metric: &'static str,
    pub charged_metric: &'static str,
    pub refunded_metric: &'static str,
    pub fallbacks_metric: &'static str,
    pub retries_metric: &'static str,
    pub keys_metric: &'static str,
    /// The amount counters' unit (empty: the amount is in the price file's currency).
    pub unit: &'static str,
    pub redis_prefix: &'static str,
    pub headers: [HeaderName; 3],
}

static TOKENS: Names = Names {
    decision: "ragscope.token_limit.decision",
    key_type: "ragscope.token_limit.key_type",
    backend: "ragscope.token_limit.backend",
    reserved: "ragscope.token_limit.reserved",
    charged: "ragscope.token_limit.charged",
    refunded: "ragscope.token_limit.refunded",
    usage: "ragscope.token_limit.usage",
    decisions_metric: "ragscope.token_limit.decisions",
    reserved_metric: "ragscope.token_limit.tokens.reserved",
    charged_metric: "ragscope.token_limit.tokens.charged",
    refunded_metric: "ragscope.token_limit.tokens.refunded",
    fallbacks_metric: "ragscope.token_limit.redis.fallbacks",
    retries_metric: "ragscope.token_limit.redis.settle_retries",
    keys_metric: "ragscope.token_limit.keys",
    unit: "{token}",
    redis_prefix: "ragscope:tb:",
    headers: [
        HeaderName::from_static("x-ratelimit-limit-tokens"),
        HeaderName::from_static("x-ratelimit-remaining-tokens"),
        HeaderName::from_static("x-ratelimit-reset-tokens"),
    ],
};

static COST: Names = Names {
    decision: "ragscope.cost_limit.decision",
    key_type: "ragscope.cost_limit.key_type",
    backend: "ragscope.cost_limit.backend",
    reserved: "ragscope.cost_limit.reserved",
    charged: "ragscope.cost_limit.charged",
    refunded: "ragscope.cost_limit.refunded",
    usage: "ragscope.cost_limit.usage",
    decisions_metric: "ragscope.cost_limit.decisions",
    reserved_metric: "ragscope.cost_limit.reserved",
    charged_metric: "ragscope.cost_limit.charged",
    refunded_metric: "ragscope.cost_limit.refunded",
    fallbacks_metric: "ragscope.cost_limit.redis.fallbacks",
    retries_metric: "ragscope.cost_limit.redis.settle_retries",
    keys_metric: "ragscope.cost_limit.keys",
    // As `ragscope.genai.cost`: the amount is in the price file's (one) currency.
    unit: "",
    redis_prefix: "ragscope:cb:",
    headers: [
        HeaderName::from_static("x-ratelimit-limit-cost"),
        HeaderName::from_static("x-ratelimit-remaining-cost"),
        HeaderName::from_static("x-ratelimit-reset-cost"),
    ],
};

impl Unit {
    pub(super) fn names(self) -> &'static Names {
        match self {
            Unit::Tokens => &TOKENS,
            Unit::Cost => &COST,
        }
    }

    /// An amount as a span attribute: whole tokens, or the currency amount.
    pub fn attribute(self, amount: u64) -> Value {
        match self {
            Unit::Tokens => Value::I64(i64::try_from(amount).unwrap_or(i64::MAX)),
            Unit::Cost => Value::F64(money(amount)),
        }
    }

    /// The 429 for a request the budget cannot cover.
    pub(super) fn refusal(self, retry_after: u64, limit: u64, reset: Duration) -> ProxyError {
        match self {
            Unit::Tokens => ProxyError::TokenLimited {
                retry_after,
                limit,
                reset,
            },
            Unit::Cost => ProxyError::CostLimited {
                retry_after,
                limit,
                reset,
            },
        }
    }

    /// Adds the unit's `x-ratelimit-limit-*`, `-remaining-*` and `-reset-*` headers (tokens as
    /// whole numbers, spend as a decimal amount like `4.25`; the reset as OpenAI writes it).
    pub fn add_headers(self, headers: &mut HeaderMap, limit: u64, remaining: u64, reset: Duration) {
        let [l, r, t] = &self.names().headers;
        let value = |n: u64| match self {
            Unit::Tokens => HeaderValue::from(n),
            Unit::Cost => HeaderValue::try_from(amount(n)).unwrap_or(HeaderValue::from(0)),
        };
        headers.insert(l, value(limit));
        headers.insert(r, value(remaining));
        if let Ok(v) = HeaderValue::try_from(reset_value(reset)) {
            headers.insert(t, v);
        }
    }
}

/// Micro-units as a currency amount.
pub fn money(micros: u64) -> f64 {
    micros as f64 / MICROS as f64
}

/// Micro-units written as a decimal amount without trailing zeros: `5`, `0.5`, `0.000015`.
pub fn amount(micros: u64) -> String {
    let (whole, frac) = (micros / MICROS, micros % MICROS);
    if frac == 0 {
        return whole.to_string();
    }
    let frac = format!("{frac:06}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

/// A currency amount as micro-units, rounded to the nearest (an amount above zero is at least
/// one micro-unit: a priced inference is never free).
pub fn micros(amount: f64) -> u64 {
    if amount.is_nan() || amount <= 0.0 {
        return 0;
    }
    ((amount * MICROS as f64).round() as u64).max(1)
}

/// A duration the way OpenAI's `x-ratelimit-reset-*` headers write it: `250ms`, `45s`,
/// `6m0s`, `1h2m3s` (whole seconds rounded up from one second on).
pub fn reset_value(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        return format!(
            "{}ms",
            d.as_millis() + u128::from(d.subsec_nanos() % 1_000_000 > 0)
        );
    }
    let s = super::super::ceil_secs(d);
    let (h, m, s) = (s / 3600, s / 60 % 60, s % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, m) => format!("{m}m{s}s"),
        (h, m) => format!("{h}h{m}m{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_read_as_decimals_and_round_trip() {
        assert_eq!(amount(5 * MICROS), "5");
        assert_eq!(amount(500_000), "0.5");
        assert_eq!(amount(15), "0.000015");
        assert_eq!(amount(1_250_000), "1.25");
        assert_eq!(amount(0), "0");
        assert_eq!(micros(0.000_15), 150);
        assert_eq!(micros(1e-9), 1, "a priced inference is never free");
        assert_eq!(micros(0.0), 0);
        assert_eq!(micros(f64::NAN), 0);
        assert_eq!(money(2_500_000), 2.5);
    }

    #[test]
    fn cost_headers_are_decimal_amounts() {
        let mut h = HeaderMap::new();
        Unit::Cost.add_headers(&mut h, 5 * MICROS, 4_999_850, Duration::from_secs(3));
        assert_eq!(h["x-ratelimit-limit-cost"], "5");
        assert_eq!(h["x-ratelimit-remaining-cost"], "4.99985");
        assert_eq!(h["x-ratelimit-reset-cost"], "3s");
        assert!(h.get("x-ratelimit-limit-tokens").is_none());
    }
}
