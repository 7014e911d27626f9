//! Rate-limit settings (`RAGSCOPE_RATE_*`, `RAGSCOPE_TRUSTED_PROXIES`), parsed once.

use std::time::Duration;

use http::Uri;

use super::client_ip::ForwardedHeader;
use crate::config::{ConfigError, Reader, Source};

/// Rate limiting settings. `limit: None` means rate limiting is off (the default).
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitConfig {
    /// `RAGSCOPE_RATE_LIMIT`: requests per key per period.
    pub limit: Option<Rate>,
    /// `RAGSCOPE_RATE_BURST`: bucket size; defaults to the per-second rate rounded up, at least 1.
    pub burst: u32,
    /// `RAGSCOPE_RATE_KEY`: what a budget belongs to.
    pub key: RateKeyKind,
    /// `RAGSCOPE_TRUSTED_PROXIES`: peers whose forwarding header is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// `RAGSCOPE_FORWARDED_HEADER`: the header those proxies write the chain in.
    pub forwarded_header: ForwardedHeader,
    /// `RAGSCOPE_RATE_MAX_KEYS`: most keys tracked in memory at once.
    pub max_keys: usize,
    /// `RAGSCOPE_RATE_MODE`: refuse, or only record.
    pub mode: RateMode,
    /// `RAGSCOPE_RATE_LIMIT_REDIS`: a `redis://host:port/db` URL for a fleet-wide budget.
    pub redis: Option<String>,
    /// `RAGSCOPE_RATE_LIMIT_REDIS_TIMEOUT`: longest wait for Redis before the local limiter
    /// decides.
    pub redis_timeout: Duration,
    /// Token budgets (`RAGSCOPE_TOKEN_*`), keyed, capped and shared on Redis like requests.
    pub tokens: super::tokens::TokenLimitConfig,
}

/// `N/s`, `N/m` or `N/h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests allowed per `period`.
    pub count: u32,
    /// The period.
    pub period: Duration,
}

impl Rate {
    /// The time one request's worth of budget takes to come back.
    pub fn interval(&self) -> Duration {
        self.period / self.count
    }

    /// The default burst: the per-second rate rounded up, at least 1.
    pub fn default_burst(&self) -> u32 {
        let per_second = f64::from(self.count) / self.period.as_secs_f64();
        (per_second.ceil() as u32).max(1)
    }
}

/// What a rate-limit budget belongs to (`RAGSCOPE_RATE_KEY`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateKeyKind {
    /// The client address (IPv6 grouped by /64).
    Ip,
    /// The value of a request header; the client address when it is missing.
    Header(http::HeaderName),
    /// The API key name access control admitted the request with; the client address without.
    ApiKey,
}

/// `RAGSCOPE_RATE_MODE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateMode {
    /// Over the limit gets 429 (the default).
    Enforce,
    /// Decide and record, but forward everything.
    Shadow,
}

impl RateLimitConfig {
    /// Reads the rate-limit settings; rate limiting is off unless `RAGSCOPE_RATE_LIMIT` is set.
    pub fn from_reader<S: Source + ?Sized>(
        r: &Reader<'_, S>,
    ) -> Result<RateLimitConfig, ConfigError> {
        let limit = r.optional(
            "RAGSCOPE_RATE_LIMIT",
            "off",
            "requests per period like 50/s, 600/m or 10000/h (or off)",
            parse_rate,
        )?;
        let default_burst = limit.map(|l| l.default_burst()).unwrap_or(1);
        let key = r.parse(
            "RAGSCOPE_RATE_KEY",
            "ip",
            "ip, api-key or header:NAME (like header:x-api-key)",
            parse_rate_key,
        )?;
        Ok(RateLimitConfig {
            tokens: super::tokens::TokenLimitConfig::from_reader(r, &key)?,
            key,
            limit,
            burst: r.count_in("RAGSCOPE_RATE_BURST", default_burst, "requests", 1..)?,
            trusted_proxies: r.parse(
                "RAGSCOPE_TRUSTED_PROXIES",
                "",
                "a comma-separated list of CIDRs or addresses, like 10.0.0.0/8,fd00::/8,192.0.2.7",
                parse_cidrs,
            )?,
            forwarded_header: r.one_of(
                "RAGSCOPE_FORWARDED_HEADER",
                "x-forwarded-for",
                &[
                    ("x-forwarded-for", ForwardedHeader::XForwardedFor),
                    ("forwarded", ForwardedHeader::Forwarded),
                ],
            )?,
            max_keys: r.count_in("RAGSCOPE_RATE_MAX_KEYS", 100_000, "keys", 1..)?,
            mode: r.one_of(
                "RAGSCOPE_RATE_MODE",
                "enforce",
                &[("enforce", RateMode::Enforce), ("shadow", RateMode::Shadow)],
            )?,
            redis: r.optional(
                "RAGSCOPE_RATE_LIMIT_REDIS",
                "off",
                "a Redis URL like redis://127.0.0.1:6379/0 (or off)",
                |v| {
                    let uri: Uri = v.parse().ok()?;
                    // The client library's own parser catches the rest (database number...).
                    (uri.scheme_str() == Some("redis")
                        && uri.host().is_some_and(|h| !h.is_empty())
                        && redis::Client::open(v).is_ok())
                    .then(|| v.to_owned())
                },
            )?,
            redis_timeout: r.duration_in(
                "RAGSCOPE_RATE_LIMIT_REDIS_TIMEOUT",
                Duration::from_millis(50),
                Duration::from_millis(1)..=Duration::from_secs(10),
            )?,
        })
    }
}

/// `50/s`, `600/m`, `10000/h` (also `/sec`, `/min`, `/hour`).
fn parse_rate(v: &str) -> Option<Rate> {
    let (count, unit) = v.split_once('/')?;
    let count: u32 = count.trim().parse().ok().filter(|n| *n >= 1)?;
    let period = match unit.trim() {
        "s" | "sec" | "second" => Duration::from_secs(1),
        "m" | "min" | "minute" => Duration::from_secs(60),
        "h" | "hour" => Duration::from_secs(3600),
        _ => return None,
    };
    Some(Rate { count, period })
}

pub(super) fn parse_rate_key(v: &str) -> Option<RateKeyKind> {
    match v.to_ascii_lowercase().as_str() {
        "ip" => Some(RateKeyKind::Ip),
        "api-key" => Some(RateKeyKind::ApiKey),
        other => {
            let name = other.strip_prefix("header:")?.trim();
            http::HeaderName::from_bytes(name.as_bytes())
                .ok()
                .map(RateKeyKind::Header)
        }
    }
}

/// `10.0.0.0/8, fd00::/8, 192.0.2.7`: a bare address is a single host.
fn parse_cidrs(v: &str) -> Option<Vec<ipnet::IpNet>> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<ipnet::IpNet>()
                .ok()
                .or_else(|| s.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
                .map(|n| n.trunc())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(vars: &[(&str, &str)]) -> Result<RateLimitConfig, ConfigError> {
        RateLimitConfig::from_reader(&Reader::new(vars))
    }

    #[test]
    fn off_by_default() {
        let c = parse(&[]).expect("parse");
        assert_eq!(c.limit, None);
        assert_eq!(c.key, RateKeyKind::Ip);
        assert_eq!(c.mode, RateMode::Enforce);
        assert_eq!(c.max_keys, 100_000);
        assert_eq!(c.redis, None);
        assert_eq!(c.redis_timeout, Duration::from_millis(50));
        assert!(c.trusted_proxies.is_empty());
        assert_eq!(c.forwarded_header, ForwardedHeader::XForwardedFor);
        let c = parse(&[("RAGSCOPE_FORWARDED_HEADER", "Forwarded")]).expect("parse");
        assert_eq!(c.forwarded_header, ForwardedHeader::Forwarded);
        assert!(parse(&[("RAGSCOPE_FORWARDED_HEADER", "x-real-ip")]).is_err());
    }

    #[test]
    fn rates_and_default_bursts() {
        let c = parse(&[("RAGSCOPE_RATE_LIMIT", "50/s")]).expect("parse");
        assert_eq!(
            c.limit,
            Some(Rate {
                count: 50,
                period: Duration::from_secs(1)
            })
        );
        assert_eq!(c.burst, 50);
        assert_eq!(
            c.limit.map(|l| l.interval()),
            Some(Duration::from_millis(20))
        );
        let c = parse(&[("RAGSCOPE_RATE_LIMIT", "600/m")]).expect("parse");
        assert_eq!(c.burst, 10);
        let c = parse(&[("RAGSCOPE_RATE_LIMIT", "10000/h")]).expect("parse");
        assert_eq!(c.burst, 3, "2.78/s rounds up");
        let c = parse(&[("RAGSCOPE_RATE_LIMIT", "5/h")]).expect("parse");
        assert_eq!(c.burst, 1, "at least 1");
        let c = parse(&[
            ("RAGSCOPE_RATE_LIMIT", "5/h"),
            ("RAGSCOPE_RATE_BURST", "20"),
        ])
        .expect("parse");
        assert_eq!(c.burst, 20);
    }

    #[test]
    fn keys_proxies_mode_and_redis() {
        let c = parse(&[
            ("RAGSCOPE_RATE_KEY", "header:X-API-Key"),
            (
                "RAGSCOPE_TRUSTED_PROXIES",
                "10.0.0.0/8, 192.0.2.7 ,fd00::1/8",
            ),
            ("RAGSCOPE_RATE_MODE", "shadow"),
            ("RAGSCOPE_RATE_LIMIT_REDIS", "redis://127.0.0.1:6379/2"),
            ("RAGSCOPE_RATE_LIMIT_REDIS_TIMEOUT", "20ms"),
        ])
        .expect("parse");
        assert_eq!(
            c.key,
            RateKeyKind::Header(http::HeaderName::from_static("x-api-key"))
        );
        let nets: Vec<String> = c.trusted_proxies.iter().map(|n| n.to_string()).collect();
        assert_eq!(nets, ["10.0.0.0/8", "192.0.2.7/32", "fd00::/8"]);
        assert_eq!(c.mode, RateMode::Shadow);
        assert_eq!(c.redis.as_deref(), Some("redis://127.0.0.1:6379/2"));
        assert_eq!(c.redis_timeout, Duration::from_millis(20));
        assert_eq!(
            parse(&[("RAGSCOPE_RATE_KEY", "api-key")])
                .expect("parse")
                .key,
            RateKeyKind::ApiKey
        );
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (var, bad) in [
            ("RAGSCOPE_RATE_LIMIT", "50"),
            ("RAGSCOPE_RATE_LIMIT", "0/s"),
            ("RAGSCOPE_RATE_LIMIT", "50/d"),
            ("RAGSCOPE_RATE_LIMIT", "-5/s"),
            ("RAGSCOPE_RATE_BURST", "0"),
            ("RAGSCOPE_RATE_KEY", "cookie"),
            ("RAGSCOPE_RATE_KEY", "header:"),
            ("RAGSCOPE_RATE_KEY", "header:bad header"),
            ("RAGSCOPE_TRUSTED_PROXIES", "10.0.0.0/33"),
            ("RAGSCOPE_TRUSTED_PROXIES", "proxy.internal"),
            ("RAGSCOPE_RATE_MAX_KEYS", "0"),
            ("RAGSCOPE_RATE_MODE", "dry-run"),
            ("RAGSCOPE_RATE_LIMIT_REDIS", "http://127.0.0.1:6379"),
            ("RAGSCOPE_RATE_LIMIT_REDIS", "127.0.0.1:6379"),
            ("RAGSCOPE_RATE_LIMIT_REDIS_TIMEOUT", "0ms"),
            ("RAGSCOPE_RATE_LIMIT_REDIS_TIMEOUT", "1m"),
        ] {
            let err = parse(&[(var, bad)]).expect_err(var);
            assert_eq!(err.var, var);
            assert_eq!(err.value, bad);
        }
    }
}
