//! One canary state and one set of figures for a fleet, on Redis.
//!
//! Every [`super::EVALUATE_EVERY`], each replica (one round trip, pipelined) offers its state
//! with the `PUT_NEWER` script, which keeps whichever of the stored and the offered state is
//! newer ([`Control::newer_than`]) and returns it; writes its own window totals under its
//! replica id with a short expiry; and lists the replicas. A second round trip reads their
//! totals, and the ones of the current epoch are merged: every replica then judges the same
//! pooled figures, and the first rollback written is the fleet's verdict (a replica whose own
//! rollback loses adopts the winner's). An operator's action bumps the epoch atomically
//! (`BUMP`), so two operators on two replicas cannot both be at epoch 1.
//!
//! Keys live under `ragscope:canary:<digest of the two version names>:`, so a new rollout
//! starts from its configuration and not from the last rollout's state. Every call is bounded
//! by [`TIMEOUT`]; when Redis is away the last state holds and the replica judges its own
//! figures until it is back (logged once per outage).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde_json::{Value, json};

use super::control::Control;
use crate::overview::window::{LogHistogram, Stats};

/// Longest wait for one Redis round trip.
pub const TIMEOUT: Duration = Duration::from_millis(500);
/// A replica's figures expire this long after its last write (it stopped, or lost Redis).
const FIGURES_TTL_MS: u64 = 5_000;
/// Replicas not heard of for this long leave the list.
const FORGET_AFTER_MS: u64 = 60_000;

/// Keeps the newer of the stored and the offered state; returns the one kept.
const PUT_NEWER: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur then
  local c = cjson.decode(cur)
  local n = cjson.decode(ARGV[1])
  local c_rb = c.rollback ~= ''
  local n_rb = n.rollback ~= ''
  if c.epoch > n.epoch or (c.epoch == n.epoch and (c_rb or not n_rb)) then
    return cur
  end
end
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[1]
";

/// Stores the offered state at the stored epoch + 1; returns it.
const BUMP: &str = r"
local epoch = 0
local cur = redis.call('GET', KEYS[1])
if cur then epoch = cjson.decode(cur).epoch end
local n = cjson.decode(ARGV[1])
local s = cjson.encode({epoch = epoch + 1, weight = n.weight, rollback = n.rollback})
redis.call('SET', KEYS[1], s)
return s
";

/// The fleet's shared canary state and figures.
pub(super) struct Shared {
    conn: ConnectionManager,
    prefix: String,
    replica: String,
    put_newer: redis::Script,
    bump: redis::Script,
    healthy: AtomicBool,
    /// Set once an outage is logged, cleared when Redis answers again.
    warned: AtomicBool,
}

impl Shared {
    /// Prepares the connection without connecting (Redis may be down at start-up).
    pub(super) fn new(url: &str, versions: &[Arc<str>; 2]) -> Result<Shared, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(None)
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        let digest = ring::digest::digest(
            &ring::digest::SHA256,
            format!("{}\0{}", versions[0], versions[1]).as_bytes(),
        );
        let mut prefix = String::from("ragscope:canary:");
        for b in &digest.as_ref()[..8] {
            prefix.push_str(&format!("{b:02x}"));
        }
        let mut id = [0u8; 8];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id);
        Ok(Shared {
            conn,
            prefix,
            replica: id.iter().map(|b| format!("{b:02x}")).collect(),
            put_newer: redis::Script::new(PUT_NEWER),
            bump: redis::Script::new(BUMP),
            healthy: AtomicBool::new(true),
            warned: AtomicBool::new(false),
        })
    }

    /// This replica's id in the shared store (random per process).
    pub(super) fn replica(&self) -> &str {
        &self.replica
    }

    /// Whether the last call reached Redis.
    pub(super) fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Offers our state and figures; returns the pooled figures of the fleet (for the epoch of
    /// the state kept) and that state. `None` when Redis could not be reached.
    pub(super) async fn exchange(
        &self,
        local: &[Stats; 2],
        control: &Control,
    ) -> Option<([Stats; 2], Control)> {
        let state = self.put_newer(control).await?;
        let now = now_ms();
        let members = format!("{}replicas", self.prefix);
        let mine = format!("{}figures:{}", self.prefix, self.replica);
        let figures =
            json!({"epoch": control.epoch, "arms": [stats_json(&local[0]), stats_json(&local[1])]});
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(&mine)
            .arg(figures.to_string())
            .arg("PX")
            .arg(FIGURES_TTL_MS)
            .ignore()
            .cmd("ZADD")
            .arg(&members)
            .arg(now)
            .arg(&self.replica)
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(&members)
            .arg("-inf")
            .arg(now.saturating_sub(FORGET_AFTER_MS))
            .ignore()
            .cmd("ZRANGE")
            .arg(&members)
            .arg(0)
            .arg(-1);
        let (replicas,): (Vec<String>,) =
            self.call(pipe.query_async(&mut self.conn.clone())).await?;
        let keys: Vec<String> = replicas
            .iter()
            .map(|r| format!("{}figures:{r}", self.prefix))
            .collect();
        let mut get = redis::cmd("MGET");
        get.arg(&keys);
        let texts: Vec<Option<String>> = self.call(get.query_async(&mut self.conn.clone())).await?;
        let mut pooled = [Stats::default(), Stats::default()];
        for text in texts.iter().flatten() {
            let Ok(v) = serde_json::from_str::<Value>(text) else {
                continue;
            };
            if v["epoch"].as_u64() != Some(state.epoch) {
                continue;
            }
            for (i, arm) in v["arms"]
                .as_array()
                .into_iter()
                .flatten()
                .take(2)
                .enumerate()
            {
                pooled[i].merge(&stats_from(arm));
            }
        }
        Some((pooled, state))
    }

    /// Offers `control`; returns the state kept (ours, or a newer one already stored).
    pub(super) async fn put_newer(&self, control: &Control) -> Option<Control> {
        self.state_script(&self.put_newer, control).await
    }

    /// Stores `control` at the next epoch; returns it as stored.
    pub(super) async fn bump(&self, control: &Control) -> Option<Control> {
        self.state_script(&self.bump, control).await
    }

    /// Runs one of the state scripts with `control`; the state it returns.
    async fn state_script(&self, script: &redis::Script, control: &Control) -> Option<Control> {
        let mut invocation = script.key(format!("{}state", self.prefix));
        invocation.arg(wire(control));
        let text: String = self
            .call(invocation.invoke_async(&mut self.conn.clone()))
            .await?;
        from_wire(&text)
    }

    /// One bounded call; a failure is logged once per outage, the return once.
    async fn call<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Option<T> {
        let error = match tokio::time::timeout(TIMEOUT, call).await {
            Ok(Ok(v)) => {
                if !self.healthy.swap(true, Ordering::Relaxed) {
                    self.warned.store(false, Ordering::Relaxed);
                    tracing::info!(
                        target: "ragscope::canary",
                        "Redis answers again: canary figures and state are shared again"
                    );
                }
                return Some(v);
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {TIMEOUT:?}"),
        };
        self.healthy.store(false, Ordering::Relaxed);
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                target: "ragscope::canary",
                %error,
                "Redis is unavailable: the last canary state holds and this replica judges its own figures"
            );
        }
        None
    }
}

fn wire(c: &Control) -> String {
    json!({
        "epoch": c.epoch,
        "weight": c.weight,
        // A string, so the scripts' cjson round trip leaves it as it is.
        "rollback": c.rollback.as_ref().map(Value::to_string).unwrap_or_default(),
    })
    .to_string()
}

fn from_wire(text: &str) -> Option<Control> {
    let v: Value = serde_json::from_str(text).ok()?;
    let rollback = v["rollback"].as_str().unwrap_or_default();
    Some(Control {
        // cjson writes whole numbers as such, but be lenient with a float.
        epoch: v["epoch"].as_f64()? as u64,
        weight: (v["weight"].as_f64()? as u32).min(10_000),
        rollback: (!rollback.is_empty())
            .then(|| serde_json::from_str(rollback).ok())
            .flatten(),
    })
}

fn stats_json(s: &Stats) -> Value {
    json!({
        "requests": s.requests,
        "errors": s.errors,
        "feedback": s.feedback,
        "feedback_sum": s.feedback_sum,
        "latency": s.latency.nonzero(),
        "ttft": s.ttft.nonzero(),
    })
}

fn stats_from(v: &Value) -> Stats {
    let histogram = |v: &Value| {
        let mut h = LogHistogram::default();
        for pair in v.as_array().into_iter().flatten() {
            if let (Some(i), Some(n)) = (pair[0].as_u64(), pair[1].as_u64()) {
                h.add_bucket(
                    u16::try_from(i).unwrap_or(u16::MAX),
                    u32::try_from(n).unwrap_or(u32::MAX),
                );
            }
        }
        h
    };
    Stats {
        requests: v["requests"].as_u64().unwrap_or(0),
        errors: v["errors"].as_u64().unwrap_or(0),
        feedback: v["feedback"].as_u64().unwrap_or(0),
        feedback_sum: v["feedback_sum"].as_f64().unwrap_or(0.0),
        latency: histogram(&v["latency"]),
        ttft: histogram(&v["ttft"]),
        ..Stats::default()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_and_figures_round_trip() {
        let c = Control {
            epoch: 3,
            weight: 1250,
            rollback: Some(json!({"reason": "error_rate"})),
        };
        assert_eq!(from_wire(&wire(&c)), Some(c));
        let mut s = Stats {
            requests: 10,
            errors: 2,
            ..Stats::default()
        };
        s.latency.record(0.25);
        s.ttft.record(0.1);
        let back = stats_from(&stats_json(&s));
        assert_eq!((back.requests, back.errors), (10, 2));
        assert_eq!(back.latency.quantile(0.5), s.latency.quantile(0.5));
        assert_eq!(back.ttft.count(), 1);
    }
}
