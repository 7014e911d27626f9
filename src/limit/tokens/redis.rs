//! Token budgets on Redis: reserve and settle are one server-side script each (one round trip),
//! on the Redis clock. A key's state is its bucket's TAT in microseconds (see [`super::bucket`])
//! and a sorted set of the reservations not yet settled, scored by their expiry: a reservation
//! whose replica died mid-stream is never settled, so the next reservation on the key finds it
//! expired and returns its tokens. A settle that finds its reservation already expired charges
//! in full what was used. A settle retried after a failure (its reply may have been lost after
//! the script ran) that finds its reservation gone while it cannot have expired yet was already
//! applied, and does nothing. Both keys share a hash tag, so a Redis Cluster keeps them together.
//! The scripts count in whole units: tokens, or micro-units of currency.

use std::sync::Arc;
use std::time::Duration;

use super::super::redis::{Fallback, RedisConn, micros};
use super::bucket::{Bucket, Step};

/// KEYS[1]: the TAT, KEYS[2]: the reservations. ARGV[1]: µs per token, ARGV[2]: capacity,
/// ARGV[3]: tokens, ARGV[4]: reservation expiry in µs, ARGV[5]: the reservation's id.
/// Returns {allowed, remaining, reset_us, retry_us}.
const RESERVE: &str = r"
local per = tonumber(ARGV[1])
local cap = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
for _, m in ipairs(expired) do
  tat = tat - (tonumber(string.match(m, ':(%d+)$')) or 0) * per
end
if #expired > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now) end
local function store(v)
  if v > now then
    redis.call('SET', KEYS[1], string.format('%.0f', v), 'PX', math.ceil((v - now) / 1000) + 1000)
  else
    redis.call('DEL', KEYS[1])
  end
end
local base = math.max(tat, now)
local backlog = base - now
local room = (cap - want) * per
if backlog > room then
  if #expired > 0 then store(tat) end
  return {0, math.max(0, math.floor(cap - backlog / per)), math.floor(backlog), math.ceil(backlog - room)}
end
local next = base + want * per
store(next)
redis.call('ZADD', KEYS[2], now + ttl, ARGV[5] .. ':' .. ARGV[3])
redis.call('PEXPIRE', KEYS[2], math.ceil(math.max(ttl, next - now) / 1000) + 1000)
return {1, math.max(0, math.floor(cap - (next - now) / per)), math.floor(next - now), 0}
";

/// KEYS as above. ARGV[1]: µs per token, ARGV[2]: the reservation's id, ARGV[3]: tokens
/// reserved, ARGV[4]: tokens charged, ARGV[5]: `1` when a reservation no longer held may have
/// expired (it is then charged in full), `0` when it cannot have (a retry: it was settled).
/// Returns {held, moved}: whether the reservation was still held (else it expired and was
/// returned: the whole charge is new), and whether the TAT moved.
const SETTLE: &str = r"
local per = tonumber(ARGV[1])
local reserved = tonumber(ARGV[3])
local charged = tonumber(ARGV[4])
local held = redis.call('ZREM', KEYS[2], ARGV[2] .. ':' .. ARGV[3])
if held == 0 and ARGV[5] == '0' then return {0, 0} end
local delta = charged
if held == 1 then delta = charged - reserved end
if delta == 0 then return {held, 0} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
local next = math.max(tat, now) + delta * per
if next > now then
  local keep = math.ceil((next - now) / 1000) + 1000
  redis.call('SET', KEYS[1], string.format('%.0f', next), 'PX', keep)
  local left = redis.call('PTTL', KEYS[2])
  if left > 0 and left < keep then redis.call('PEXPIRE', KEYS[2], keep) end
else
  redis.call('DEL', KEYS[1])
end
return {held, 1}
";

/// Where a reservation lives on Redis.
#[derive(Debug, Clone)]
pub struct RedisSlot {
    tat: String,
    held: String,
    id: String,
}

impl RedisSlot {
    /// The keys for `digest_key` (a digest, from the key's kind and value) and a
    /// reservation id unique in the fleet.
    pub fn new(digest_key: &str, id: String) -> RedisSlot {
        // `{...}` is the hash tag: both keys in one Redis Cluster slot.
        let tagged = format!("{{{digest_key}}}");
        RedisSlot {
            held: format!("{tagged}:held"),
            tat: tagged,
            id,
        }
    }
}

/// The budget scripts on a Redis connection.
pub struct TokenRedis {
    conn: Arc<RedisConn>,
    reserve: redis::Script,
    settle: redis::Script,
    us_per_token: f64,
    capacity: u64,
    ttl_us: u64,
    /// How long a reservation is held: a settle retried within it knows it cannot have expired.
    pub ttl: Duration,
}

impl std::fmt::Debug for TokenRedis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenRedis")
            .field("conn", &self.conn)
            .finish_non_exhaustive()
    }
}

impl TokenRedis {
    /// The scripts for `bucket`, reservations held at most `ttl`.
    pub fn new(conn: Arc<RedisConn>, bucket: &Bucket, ttl: Duration) -> TokenRedis {
        TokenRedis {
            conn,
            reserve: redis::Script::new(RESERVE),
            settle: redis::Script::new(SETTLE),
            us_per_token: bucket.ns_per_token / 1000.0,
            capacity: bucket.capacity,
            ttl_us: u64::try_from(ttl.as_micros()).unwrap_or(u64::MAX),
            ttl,
        }
    }

    /// Reserves `tokens` (at most the capacity) in `slot`.
    pub async fn reserve(&self, slot: &RedisSlot, tokens: u64) -> Result<Step, Fallback> {
        let mut invocation = self.reserve.key(&slot.tat);
        invocation
            .key(&slot.held)
            .arg(self.us_per_token)
            .arg(self.capacity)
            .arg(tokens)
            .arg(self.ttl_us)
            .arg(&slot.id);
        let [allowed, remaining, reset_us, retry_us] = self.conn.run(&invocation, true).await?;
        Ok(Step {
            allowed: allowed == 1,
            remaining: u64::try_from(remaining).unwrap_or(0),
            reset: micros(reset_us),
            retry_after: micros(retry_us),
        })
    }

    /// Settles the reservation of `reserved` tokens in `slot` at `charged`; `may_have_expired`
    /// says whether a reservation no longer held is charged in full (else it was settled by an
    /// earlier try whose reply was lost). Returns whether the reservation was still held and
    /// whether the budget moved (neither: an earlier try had settled it).
    pub async fn settle(
        &self,
        slot: &RedisSlot,
        reserved: u64,
        charged: u64,
        may_have_expired: bool,
    ) -> Result<(bool, bool), Fallback> {
        let mut invocation = self.settle.key(&slot.tat);
        invocation
            .key(&slot.held)
            .arg(self.us_per_token)
            .arg(&slot.id)
            .arg(reserved)
            .arg(charged)
            .arg(if may_have_expired { "1" } else { "0" });
        let [held, moved] = self.conn.run(&invocation, false).await?;
        Ok((held == 1, moved == 1))
    }
}
