//! The canary's state (weight, rollback) and what changes it: the once-a-second evaluator,
//! whose verdict can roll the canary back, and the operator's actions.
//!
//! A state has an epoch: an operator action starts a new one (and forgets the window figures,
//! so the figures behind a rollback cannot trigger another); a rollback happens within an epoch.
//! Between two states the newer is the one with the higher epoch, then the rolled-back one: that
//! order is how replicas agree through Redis ([`super::shared`]).

use std::sync::Weak;
use std::time::SystemTime;

use serde_json::{Value, json};

use super::verdict::{Figures, Judgement, judge};
use super::{Arm, Canary, EVALUATE_EVERY, lock, settings::show_weight};

/// The state every replica of a fleet should hold.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Control {
    /// Bumped by every operator action.
    pub(super) epoch: u64,
    /// The weight set (config or operator), hundredths of a percent.
    pub(super) weight: u32,
    /// Set while rolled back: when, by whom, why, with the figures.
    pub(super) rollback: Option<Value>,
}

impl Control {
    pub(super) fn initial(weight: u32) -> Control {
        Control {
            epoch: 0,
            weight,
            rollback: None,
        }
    }

    /// What requests see: 0 while rolled back.
    fn effective_weight(&self) -> u32 {
        if self.rollback.is_some() {
            0
        } else {
            self.weight
        }
    }

    /// `self` supersedes `other`: a later epoch, or the same epoch rolled back.
    pub(super) fn newer_than(&self, other: &Control) -> bool {
        (self.epoch, self.rollback.is_some()) > (other.epoch, other.rollback.is_some())
    }

    pub(super) fn json(&self) -> Value {
        json!({
            "epoch": self.epoch,
            "weight_set": show_weight(self.weight),
            "rolled_back": self.rollback.is_some(),
            "last_rollback": self.rollback,
        })
    }
}

/// What an operator asks for (`POST /canary`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Set the weight (hundredths of a percent) and clear a rollback.
    SetWeight(u32),
    /// Send every client to the canary (weight 100) and clear a rollback.
    Promote,
    /// Roll back now (weight 0 until the next action).
    Rollback,
}

/// A `POST /canary` body that is not an action.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "expected one of {{\"weight\": 0-100}}, {{\"action\": \"promote\"}} or {{\"action\": \"rollback\"}}: {0}"
)]
pub struct ActionError(pub String);

impl Action {
    /// Parses a `POST /canary` body.
    pub fn parse(body: &[u8]) -> Result<Action, ActionError> {
        let v: Value =
            serde_json::from_slice(body).map_err(|e| ActionError(format!("not JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| ActionError("not an object".into()))?;
        match (obj.get("weight"), obj.get("action").and_then(Value::as_str)) {
            (Some(w), None) => {
                let w = w
                    .as_f64()
                    .filter(|w| (0.0..=100.0).contains(w))
                    .ok_or_else(|| ActionError(format!("weight {w} is not 0-100")))?;
                Ok(Action::SetWeight((w * 100.0).round() as u32))
            }
            (None, Some("promote")) => Ok(Action::Promote),
            (None, Some("rollback")) => Ok(Action::Rollback),
            _ => Err(ActionError("no single known action".into())),
        }
    }
}

/// Evaluates every [`EVALUATE_EVERY`] until the canary is dropped.
pub(super) async fn evaluator(canary: Weak<Canary>) {
    let mut ticks = tokio::time::interval(EVALUATE_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(canary) = canary.upgrade() else {
            return;
        };
        canary.evaluate().await;
    }
}

impl Canary {
    /// Whether the canary is rolled back now.
    pub fn rolled_back(&self) -> bool {
        lock(&self.control).rollback.is_some()
    }

    pub(super) fn control(&self) -> Control {
        lock(&self.control).clone()
    }

    /// Takes `next` as the state; a new epoch forgets the window figures.
    fn apply(&self, next: Control) {
        let mut control = lock(&self.control);
        if next.epoch != control.epoch {
            self.reset_windows();
        }
        self.weight.store(
            next.effective_weight(),
            std::sync::atomic::Ordering::Relaxed,
        );
        *control = next;
    }

    /// A state read from the shared store: taken when it is newer than ours.
    pub(super) fn adopt(&self, theirs: Control) {
        let ours = self.control();
        if !theirs.newer_than(&ours) {
            return;
        }
        if theirs.rollback.is_some() && theirs.epoch == ours.epoch {
            tracing::warn!(
                target: "ragscope::canary",
                version = %self.version(Arm::Canary),
                rollback = %theirs.rollback.clone().unwrap_or_default(),
                "canary ROLLED BACK by the fleet's shared verdict: weight 0 until an operator acts"
            );
        } else {
            tracing::info!(
                target: "ragscope::canary",
                epoch = theirs.epoch,
                weight = show_weight(theirs.effective_weight()),
                "canary state taken from the shared store"
            );
        }
        self.apply(theirs);
    }

    /// One evaluation: gather (and with Redis, pool) the figures, judge, roll back if due.
    async fn evaluate(&self) {
        let local = self.local_totals();
        let control = self.control();
        let pooled = match &self.shared {
            None => local,
            Some(shared) => match shared.exchange(&local, &control).await {
                Some((pooled, theirs)) => {
                    let epoch = theirs.epoch;
                    self.adopt(theirs);
                    if epoch != control.epoch {
                        // Figures of another epoch: judge them next time.
                        return;
                    }
                    pooled
                }
                // Redis is away: this replica judges its own figures meanwhile.
                None => local,
            },
        };
        let figures = [Figures::of(&pooled[0]), Figures::of(&pooled[1])];
        let judgement = judge(&self.settings.rules, &figures[0], &figures[1]);
        *lock(&self.last) = (figures, judgement.clone());
        if self.settings.rules.auto_rollback && !judgement.worse.is_empty() && !self.rolled_back() {
            self.roll_back(control, figures, &judgement).await;
        }
    }

    /// The verdict says worse: weight 0 at once, shared with the fleet when there is Redis.
    async fn roll_back(&self, control: Control, figures: [Figures; 2], judgement: &Judgement) {
        let reason = judgement
            .worse
            .iter()
            .map(|f| f.describe())
            .collect::<Vec<_>>()
            .join("; ");
        let at = humantime_now();
        let replica = self.shared.as_ref().map_or("local", |s| s.replica());
        let details = json!({
            "at": at,
            "by": "automatic",
            "replica": replica,
            "reason": reason,
            "weight_before": show_weight(control.weight),
            "findings": judgement.worse.iter().map(|f| f.json()).collect::<Vec<_>>(),
            "figures": {
                self.version(Arm::Stable).as_ref(): figures[0].json(),
                self.version(Arm::Canary).as_ref(): figures[1].json(),
            },
        });
        let next = Control {
            rollback: Some(details),
            ..control
        };
        let shared = match &self.shared {
            None => false,
            // Which rollback won is told by the replica that wrote it (a float in the figures
            // need not survive the JSON round trip bit for bit).
            Some(s) => match s.put_newer(&next).await {
                Some(winner)
                    if winner.rollback.as_ref().map(|r| &r["replica"]) != Some(&json!(replica)) =>
                {
                    // Another replica decided first: its verdict is the fleet's.
                    self.adopt(winner);
                    return;
                }
                Some(_) => true,
                None => false,
            },
        };
        self.apply(next);
        self.rollbacks.add(
            1,
            &[opentelemetry::KeyValue::new(
                super::VERSION_ATTRIBUTE,
                self.version(Arm::Canary).to_string(),
            )],
        );
        let [s, c] = figures;
        tracing::warn!(
            target: "ragscope::canary",
            version = %self.version(Arm::Canary),
            reason = %reason,
            shared,
            weight_before = show_weight(control.weight),
            stable_requests = s.requests,
            canary_requests = c.requests,
            stable_error_rate = s.error_rate(),
            canary_error_rate = c.error_rate(),
            stable_p95_latency = s.p95_latency,
            canary_p95_latency = c.p95_latency,
            stable_p95_ttft = s.p95_ttft,
            canary_p95_ttft = c.p95_ttft,
            stable_mean_score = s.mean_score,
            canary_mean_score = c.mean_score,
            "canary ROLLED BACK: weight set to 0 until an operator acts (POST /canary)"
        );
    }

    /// Carries out an operator's action: a new epoch, shared with the fleet when there is Redis
    /// (kept locally, and pushed when Redis is back, when it is not).
    pub async fn act(&self, action: Action) {
        let current = self.control();
        let next = match action {
            Action::SetWeight(weight) => Control {
                epoch: current.epoch + 1,
                weight,
                rollback: None,
            },
            Action::Promote => Control {
                epoch: current.epoch + 1,
                weight: 10_000,
                rollback: None,
            },
            Action::Rollback => Control {
                epoch: current.epoch + 1,
                weight: current.weight,
                rollback: Some(json!({
                    "at": humantime_now(),
                    "by": "operator",
                    "reason": "POST /canary",
                    "weight_before": show_weight(current.weight),
                })),
            },
        };
        let next = match &self.shared {
            Some(s) => s.bump(&next).await.unwrap_or(next),
            None => next,
        };
        tracing::info!(
            target: "ragscope::canary",
            ?action,
            epoch = next.epoch,
            weight = show_weight(next.effective_weight()),
            "canary state set by an operator"
        );
        self.apply(next);
    }

    /// `GET /canary`.
    pub fn json(&self) -> Value {
        let (figures, judgement) = lock(&self.last).clone();
        let rules = &self.settings.rules;
        let mut out = self.control().json();
        out["weight"] = json!(show_weight(self.weight()));
        out["versions"] = json!({
            "stable": self.version(Arm::Stable).as_ref(),
            "canary": self.version(Arm::Canary).as_ref(),
        });
        out["canary_down"] = json!(self.canary_down.get().is_some_and(|down| down()));
        out["shared"] = json!(match &self.shared {
            Some(s) if s.healthy() => "redis",
            Some(_) => "redis_unavailable",
            None => "local",
        });
        out["window"] = json!({
            "seconds": rules.window.as_secs(),
            "stable": figures[0].json(),
            "canary": figures[1].json(),
        });
        out["verdict"] = json!({
            "enough_samples": judgement.enough_samples,
            "worse": judgement.worse.iter().map(|f| f.json()).collect::<Vec<_>>(),
        });
        out["rules"] = json!({
            "auto_rollback": rules.auto_rollback,
            "min_samples": rules.min_samples,
            "max_error_rate_increase": rules.error_rate_increase,
            "max_latency_ratio": rules.latency_ratio,
            "latency_slack_seconds": rules.latency_slack.as_secs_f64(),
            "min_feedback": rules.min_feedback,
            "max_score_drop": rules.score_drop,
        });
        out
    }
}

/// Now as seconds since the Unix epoch (fractional), for the rollback record.
fn humantime_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_parse() {
        assert_eq!(
            Action::parse(br#"{"weight": 12.5}"#),
            Ok(Action::SetWeight(1250))
        );
        assert_eq!(
            Action::parse(br#"{"action":"promote"}"#),
            Ok(Action::Promote)
        );
        assert_eq!(
            Action::parse(br#"{"action":"rollback"}"#),
            Ok(Action::Rollback)
        );
        assert!(Action::parse(br#"{"weight": 101}"#).is_err());
        assert!(Action::parse(br#"{"weight": 5, "action": "promote"}"#).is_err());
        assert!(Action::parse(b"nope").is_err());
    }

    #[test]
    fn newer_is_a_later_epoch_then_rolled_back() {
        let a = Control::initial(500);
        let rolled = Control {
            rollback: Some(json!({})),
            ..a.clone()
        };
        let next = Control {
            epoch: 1,
            ..a.clone()
        };
        assert!(rolled.newer_than(&a));
        assert!(!a.newer_than(&rolled));
        assert!(next.newer_than(&rolled));
        assert!(!a.newer_than(&a));
    }
}
