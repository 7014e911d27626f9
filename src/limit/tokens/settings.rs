//! Token- and spend-budget settings (`RAGSCOPE_TOKEN_*`, `RAGSCOPE_COST_*`), parsed once. The key cap, Redis URL and timeout,
//! trusted proxies and forwarding header are the request limit's (`RAGSCOPE_RATE_*`).

use std::time::Duration;

use super::super::settings::{RateKeyKind, RateMode, parse_rate_key};
use super::unit::MICROS;
use crate::config::{ConfigError, Reader, Source};

/// Token budget settings. `limit: None` means token budgets are off (the default).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLimitConfig {
    /// `RAGSCOPE_TOKEN_LIMIT`: tokens per key per period.
    pub limit: Option<TokenRate>,
    /// `RAGSCOPE_TOKEN_KEY`: what a budget belongs to; defaults to `RAGSCOPE_RATE_KEY`.
    pub key: RateKeyKind,
    /// `RAGSCOPE_TOKEN_MODE`: refuse, or only record.
    pub mode: RateMode,
    /// `RAGSCOPE_TOKEN_DEFAULT_MAX_OUTPUT`: the output tokens reserved when a request names
    /// no output cap (`max_tokens`, `max_output_tokens`, ...).
    pub default_max_output: u64,
    /// `RAGSCOPE_TOKEN_RESERVATION_TTL`: how long a Redis reservation holds budget when the
    /// replica that took it never settles it (it died): then it returns on its own.
    pub reservation_ttl: Duration,
    /// `RAGSCOPE_COST_LIMIT`: spend per key per period, in the price file's currency; keyed,
    /// estimated and shared like the token budget.
    pub cost: Option<CostRate>,
    /// `RAGSCOPE_COST_MODE`: refuse, or only record.
    pub cost_mode: RateMode,
}

/// `AMOUNT/m`, `AMOUNT/h` or `AMOUNT/d` of the price file's currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CostRate {
    /// Millionths of the currency per `period`: also the bucket's size.
    pub micros: u64,
    /// The period.
    pub period: Duration,
}

/// `N/m`, `N/h` or `N/d` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenRate {
    /// Tokens per `period`: also the bucket's size.
    pub tokens: u64,
    /// The period.
    pub period: Duration,
}

impl TokenLimitConfig {
    /// Reads the token settings; `rate_key` is `RAGSCOPE_RATE_KEY`'s value, the default key.
    pub fn from_reader<S: Source + ?Sized>(
        r: &Reader<'_, S>,
        rate_key: &RateKeyKind,
    ) -> Result<TokenLimitConfig, ConfigError> {
        let limit = r.optional(
            "RAGSCOPE_TOKEN_LIMIT",
            "off",
            "tokens per period like 100000/m, 2000000/h or 10000000/d (or off)",
            parse_token_rate,
        )?;
        if limit.is_some() && !r.on_off("RAGSCOPE_GENAI", true)? {
            // Settling needs the usage the GenAI layer reads from the responses.
            return Err(ConfigError::new(
                "RAGSCOPE_TOKEN_LIMIT",
                r.get("RAGSCOPE_TOKEN_LIMIT").unwrap_or_default(),
                "off while RAGSCOPE_GENAI is off (token budgets read usage from LLM responses)",
            ));
        }
        let cost = r.optional(
            "RAGSCOPE_COST_LIMIT",
            "off",
            "an amount of the RAGSCOPE_PRICES currency per period like 5/h, 0.50/m or 100/d (or off)",
            parse_cost_rate,
        )?;
        if let Some(why) = cost.and_then(|_| {
            // The price file and the usage of the responses are what a spend is measured with.
            if r.get("RAGSCOPE_PRICES").is_none() {
                Some("off while RAGSCOPE_PRICES is unset (a spend budget prices tokens with it)")
            } else if !r.on_off("RAGSCOPE_GENAI", true).unwrap_or(true) {
                Some(
                    "off while RAGSCOPE_GENAI is off (spend budgets read usage from LLM responses)",
                )
            } else {
                None
            }
        }) {
            return Err(ConfigError::new(
                "RAGSCOPE_COST_LIMIT",
                r.get("RAGSCOPE_COST_LIMIT").unwrap_or_default(),
                why,
            ));
        }
        Ok(TokenLimitConfig {
            cost,
            cost_mode: r.one_of(
                "RAGSCOPE_COST_MODE",
                "enforce",
                &[("enforce", RateMode::Enforce), ("shadow", RateMode::Shadow)],
            )?,
            limit,
            key: match r.get("RAGSCOPE_TOKEN_KEY") {
                None => rate_key.clone(),
                Some(_) => r.parse(
                    "RAGSCOPE_TOKEN_KEY",
                    "ip",
                    "ip, api-key or header:NAME (like header:x-api-key)",
                    parse_rate_key,
                )?,
            },
            mode: r.one_of(
                "RAGSCOPE_TOKEN_MODE",
                "enforce",
                &[("enforce", RateMode::Enforce), ("shadow", RateMode::Shadow)],
            )?,
            default_max_output: r.count_in(
                "RAGSCOPE_TOKEN_DEFAULT_MAX_OUTPUT",
                4096u64,
                "tokens",
                1..=100_000_000,
            )?,
            reservation_ttl: r.duration_in(
                "RAGSCOPE_TOKEN_RESERVATION_TTL",
                Duration::from_secs(15 * 60),
                Duration::from_secs(1)..=Duration::from_secs(24 * 3600),
            )?,
        })
    }
}

/// `100000/m`, `2000000/h`, `10000000/d` (also `/min`, `/hour`, `/day`).
fn parse_token_rate(v: &str) -> Option<TokenRate> {
    let (count, unit) = v.split_once('/')?;
    let tokens: u64 = count
        .trim()
        .parse()
        .ok()
        .filter(|n| (1..=1 << 40).contains(n))?;
    Some(TokenRate {
        tokens,
        period: parse_period(unit)?,
    })
}

/// The most a spend budget may be per period (in currency units): far above any real one.
const MAX_COST: u64 = 1_000_000_000;

/// `5/h`, `0.50/m`, `100/d`: a decimal amount (at most six decimals, more than zero) per period.
pub(super) fn parse_cost_rate(v: &str) -> Option<CostRate> {
    let (amount, unit) = v.split_once('/')?;
    let (whole, frac) = match amount.trim().split_once('.') {
        Some((w, f)) => (w, f),
        None => (amount.trim(), ""),
    };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || !digits(frac) || frac.len() > 6 || whole.len() + frac.len() == 0 {
        return None;
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let frac: u64 = format!("{frac:0<6}").parse().ok()?;
    let micros = whole
        .checked_mul(MICROS)?
        .checked_add(frac)
        .filter(|m| (1..=MAX_COST * MICROS).contains(m))?;
    Some(CostRate {
        micros,
        period: parse_period(unit)?,
    })
}

fn parse_period(unit: &str) -> Option<Duration> {
    Some(match unit.trim() {
        "m" | "min" | "minute" => Duration::from_secs(60),
        "h" | "hour" => Duration::from_secs(3600),
        "d" | "day" => Duration::from_secs(86_400),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(vars: &[(&str, &str)]) -> Result<TokenLimitConfig, ConfigError> {
        TokenLimitConfig::from_reader(&Reader::new(vars), &RateKeyKind::ApiKey)
    }

    #[test]
    fn off_by_default_and_keyed_like_the_request_limit() {
        let c = parse(&[]).expect("parse");
        assert_eq!(c.limit, None);
        assert_eq!(c.key, RateKeyKind::ApiKey, "RAGSCOPE_RATE_KEY's value");
        assert_eq!(c.mode, RateMode::Enforce);
        assert_eq!(c.default_max_output, 4096);
        assert_eq!(c.reservation_ttl, Duration::from_secs(900));
        let c = parse(&[
            ("RAGSCOPE_TOKEN_LIMIT", "10000/d"),
            ("RAGSCOPE_TOKEN_KEY", "header:X-Team"),
            ("RAGSCOPE_TOKEN_MODE", "shadow"),
            ("RAGSCOPE_TOKEN_DEFAULT_MAX_OUTPUT", "256"),
            ("RAGSCOPE_TOKEN_RESERVATION_TTL", "2m"),
        ])
        .expect("parse");
        assert_eq!(
            c.limit,
            Some(TokenRate {
                tokens: 10_000,
                period: Duration::from_secs(86_400)
            })
        );
        assert_eq!(
            c.key,
            RateKeyKind::Header(http::HeaderName::from_static("x-team"))
        );
        assert_eq!(c.mode, RateMode::Shadow);
        assert_eq!(c.default_max_output, 256);
        assert_eq!(c.reservation_ttl, Duration::from_secs(120));
        assert_eq!(c.cost, None);
        let c = parse(&[
            ("RAGSCOPE_COST_LIMIT", "2.5/h"),
            ("RAGSCOPE_COST_MODE", "shadow"),
            ("RAGSCOPE_PRICES", "/p"),
        ])
        .expect("parse");
        assert_eq!(
            c.cost,
            Some(CostRate {
                micros: 2_500_000,
                period: Duration::from_secs(3600)
            })
        );
        assert_eq!((c.cost_mode, c.limit), (RateMode::Shadow, None));
    }

    #[test]
    fn cost_rates_are_decimal_amounts_per_period() {
        let rate = |v| parse_cost_rate(v).map(|r| (r.micros, r.period.as_secs()));
        assert_eq!(rate("5/h"), Some((5_000_000, 3600)));
        assert_eq!(rate("0.50/m"), Some((500_000, 60)));
        assert_eq!(rate(" 100 / day "), Some((100_000_000, 86_400)));
        assert_eq!(rate(".25/d"), Some((250_000, 86_400)));
        assert_eq!(rate("0.000001/m"), Some((1, 60)));
        assert_eq!(rate("1000000000/d"), Some((MAX_COST * MICROS, 86_400)));
        for bad in [
            "5",
            "0/h",
            "0.0000001/h",
            "-1/h",
            "1e3/h",
            "5/s",
            "5/w",
            "./h",
            "1.2.3/h",
            "$5/h",
            "1000000001/d",
            "5 USD/h",
            "",
        ] {
            assert_eq!(parse_cost_rate(bad), None, "{bad}");
        }
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (var, bad) in [
            ("RAGSCOPE_TOKEN_LIMIT", "1000"),
            ("RAGSCOPE_TOKEN_LIMIT", "0/m"),
            ("RAGSCOPE_TOKEN_LIMIT", "100/s"),
            ("RAGSCOPE_TOKEN_LIMIT", "100/w"),
            ("RAGSCOPE_TOKEN_KEY", "cookie"),
            ("RAGSCOPE_TOKEN_MODE", "dry-run"),
            ("RAGSCOPE_TOKEN_DEFAULT_MAX_OUTPUT", "0"),
            ("RAGSCOPE_TOKEN_RESERVATION_TTL", "100ms"),
        ] {
            let err = parse(&[(var, bad)]).expect_err(var);
            assert_eq!((err.var, err.value.as_str()), (var, bad));
        }
        let err = parse(&[("RAGSCOPE_TOKEN_LIMIT", "100/m"), ("RAGSCOPE_GENAI", "off")])
            .expect_err("needs the GenAI layer");
        assert_eq!(err.var, "RAGSCOPE_TOKEN_LIMIT");
        let err = parse(&[("RAGSCOPE_COST_LIMIT", "5/h")]).expect_err("needs prices");
        assert_eq!(
            (err.var, err.value.as_str()),
            ("RAGSCOPE_COST_LIMIT", "5/h")
        );
        assert!(err.expected.contains("RAGSCOPE_PRICES"), "{}", err.expected);
        for (var, bad) in [("RAGSCOPE_COST_LIMIT", "5"), ("RAGSCOPE_COST_MODE", "x")] {
            let err = parse(&[(var, bad), ("RAGSCOPE_PRICES", "/p")]).expect_err(var);
            assert_eq!((err.var, err.value.as_str()), (var, bad));
        }
    }
}
