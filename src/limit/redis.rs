//! Fleet-wide budgets on Redis: one atomic GCRA step per decision in a server-side Lua script
//! (EVALSHA, falling back to loading the script when Redis does not know it), one round trip,
//! and a key expiry so Redis holds only keys whose bucket is not yet full again.
//!
//! Redis never holds a request up: each call is bounded by `RAGSCOPE_RATE_LIMIT_REDIS_TIMEOUT`,
//! and after a failure Redis is skipped for [`RETRY_AFTER`] while one request at a time probes
//! it; the caller decides locally meanwhile. Keys are SHA-256 digests, so neither client
//! addresses nor API key material is stored in Redis.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::Verdict;

/// The prefix of request-limit keys.
pub const RATE_PREFIX: &str = "ragscope:rl:";

/// How long Redis is left alone after a failure before it is probed again.
pub const RETRY_AFTER: Duration = Duration::from_millis(500);

/// At most one fallback warning per this interval; the others are counted into the next one.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// GCRA on the Redis clock (`TIME`), so replicas' clocks do not matter. Times in microseconds.
/// KEYS[1]: the key. ARGV[1]: emission interval, ARGV[2]: burst.
/// Returns {allowed, remaining, reset, retry_after}.
const GCRA: &str = r"
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - interval * burst
if now < allow_at then
  return {0, 0, tat - now, allow_at - now}
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1000)
return {1, math.floor((now - allow_at) / interval), new_tat - now, 0}
";

/// Why a decision did not come from Redis (the `reason` of the fallback counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// Redis did not answer within the timeout.
    Timeout,
    /// Redis answered with an error, or the connection failed.
    Error,
    /// A recent failure: Redis is being left alone for a moment.
    Unavailable,
}

impl Fallback {
    /// Low-cardinality name.
    pub fn as_str(self) -> &'static str {
        match self {
            Fallback::Timeout => "timeout",
            Fallback::Error => "error",
            Fallback::Unavailable => "unavailable",
        }
    }
}

/// A Redis URL that the client library refused.
#[derive(Debug, thiserror::Error)]
#[error("RAGSCOPE_RATE_LIMIT_REDIS is not a usable Redis URL: {0}")]
pub struct RedisUrlError(#[from] redis::RedisError);

/// A connection to Redis shared by the limiters that keep budgets there, and its health:
/// every call is bounded by the timeout, and after a failure Redis is skipped for
/// [`RETRY_AFTER`] while one call at a time probes it.
pub struct RedisConn {
    conn: ConnectionManager,
    timeout: Duration,
    start: Instant,
    healthy: AtomicBool,
    /// Milliseconds since `start` before which Redis is not tried (unless healthy).
    retry_at_ms: AtomicU64,
    last_log_ms: AtomicU64,
    unlogged: AtomicU64,
}

impl std::fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConn")
            .field("timeout", &self.timeout)
            .field("healthy", &self.healthy)
            .finish_non_exhaustive()
    }
}

impl RedisConn {
    /// Prepares the connection without connecting: ragscope starts (and limits locally) even
    /// when Redis is down. Must run inside the tokio runtime.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, RedisUrlError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            // Our own timeout bounds every call; the library's reconnect backoff stays short so
            // a returning Redis is found quickly.
            .set_response_timeout(None)
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(RedisConn {
            conn,
            timeout,
            start: Instant::now(),
            // Optimistic: the first request tries Redis.
            healthy: AtomicBool::new(true),
            retry_at_ms: AtomicU64::new(0),
            last_log_ms: AtomicU64::new(0),
            unlogged: AtomicU64::new(0),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether this request may talk to Redis: always while healthy; after a failure, one
    /// request per [`RETRY_AFTER`] probes.
    fn may_try(&self) -> bool {
        if self.healthy.load(Ordering::Relaxed) {
            return true;
        }
        let now = self.now_ms();
        let retry_at = self.retry_at_ms.load(Ordering::Relaxed);
        now >= retry_at
            && self
                .retry_at_ms
                .compare_exchange(
                    retry_at,
                    now + RETRY_AFTER.as_millis() as u64,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    /// Runs a script that answers with `N` integers, within the timeout; or why it could not.
    /// `admission` calls skip Redis for a moment after a failure (a request must not wait on
    /// a Redis that just failed); other calls (settling, off the request's path) always try.
    pub async fn run<const N: usize>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
        admission: bool,
    ) -> Result<[i64; N], Fallback> {
        if admission && !self.may_try() {
            return Err(self.fell_back(Fallback::Unavailable, None));
        }
        let mut conn = self.conn.clone();
        let call = invocation.invoke_async::<Vec<i64>>(&mut conn);
        let reply = match tokio::time::timeout(self.timeout, call).await {
            Err(_) => return Err(self.failed(Fallback::Timeout, None)),
            Ok(Err(e)) => return Err(self.failed(Fallback::Error, Some(&e))),
            Ok(Ok(reply)) => reply,
        };
        let Ok(reply) = <[i64; N]>::try_from(reply) else {
            return Err(self.failed(Fallback::Error, None));
        };
        if !self.healthy.swap(true, Ordering::Relaxed) {
            tracing::info!(
                target: "ragscope::rate_limit",
                "Redis answers again; limit decisions are shared across replicas again"
            );
        }
        Ok(reply)
    }

    fn failed(&self, reason: Fallback, error: Option<&redis::RedisError>) -> Fallback {
        self.healthy.store(false, Ordering::Relaxed);
        self.retry_at_ms.store(
            self.now_ms() + RETRY_AFTER.as_millis() as u64,
            Ordering::Relaxed,
        );
        self.fell_back(reason, error)
    }

    /// Logs a fallback, at most once per [`LOG_EVERY`], saying how many were not logged.
    fn fell_back(&self, reason: Fallback, error: Option<&redis::RedisError>) -> Fallback {
        let now = self.now_ms();
        let last = self.last_log_ms.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= LOG_EVERY.as_millis() as u64;
        if due
            && self
                .last_log_ms
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let unlogged = self.unlogged.swap(0, Ordering::Relaxed);
            tracing::warn!(
                target: "ragscope::rate_limit",
                reason = reason.as_str(),
                error = error.map(|e| e.to_string()),
                fallbacks_since_last_message = unlogged,
                "Redis rate limiting is unavailable; the local limiter decides"
            );
        } else {
            self.unlogged.fetch_add(1, Ordering::Relaxed);
        }
        reason
    }
}

/// The shared request limiter on Redis: one GCRA step per decision.
pub struct RedisLimiter {
    conn: Arc<RedisConn>,
    script: redis::Script,
    interval_us: u64,
    burst: u32,
}

impl std::fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("conn", &self.conn)
            .finish_non_exhaustive()
    }
}

impl RedisLimiter {
    /// The request limiter on `conn`.
    pub fn new(conn: Arc<RedisConn>, interval: Duration, burst: u32) -> Self {
        RedisLimiter {
            conn,
            script: redis::Script::new(GCRA),
            interval_us: u64::try_from(interval.as_micros())
                .unwrap_or(u64::MAX)
                .max(1),
            burst,
        }
    }

    /// One GCRA step for `key` (a digest) on Redis, or why it could not be taken.
    pub async fn check(&self, key: &str) -> Result<Verdict, Fallback> {
        let mut invocation = self.script.key(key);
        invocation.arg(self.interval_us).arg(self.burst);
        let [allowed, remaining, reset_us, retry_us] = self.conn.run(&invocation, true).await?;
        Ok(Verdict {
            allowed: allowed == 1,
            remaining: u32::try_from(remaining).unwrap_or(0),
            reset: micros(reset_us),
            retry_after: micros(retry_us),
        })
    }
}

/// A duration in microseconds from a script (negative: zero).
pub fn micros(us: i64) -> Duration {
    Duration::from_micros(u64::try_from(us).unwrap_or(0))
}

/// The Redis key for a stable key description (given in parts): `prefix` and a digest, never
/// the value.
pub fn redis_key(prefix: &str, parts: &[&[u8]]) -> String {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    for part in parts {
        context.update(part);
    }
    let digest = context.finish();
    let mut key = String::with_capacity(prefix.len() + 32);
    key.push_str(prefix);
    for b in &digest.as_ref()[..16] {
        key.push_str(&format!("{b:02x}"));
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_digests() {
        let k = redis_key(RATE_PREFIX, &[b"h|x-api-key|", b"sk-secret"]);
        assert!(k.starts_with("ragscope:rl:"));
        assert_eq!(k.len(), 12 + 32);
        assert!(!k.contains("secret"));
        assert_eq!(
            k,
            redis_key(RATE_PREFIX, &[b"h|x-api-key|sk-secret"]),
            "the parts are one message: stable across processes"
        );
        assert_ne!(k, redis_key(RATE_PREFIX, &[b"h|x-api-key|", b"sk-other"]));
    }
}
