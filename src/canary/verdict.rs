//! The verdict: the canary's window figures against stable's, per the [`Rules`]. Pure
//! functions over the figures the evaluator gathered, so the rules are tested without traffic.
//!
//! A measure is judged only when both sides have enough samples in the window: requests for
//! the error rate and p95 latency, streamed answers for the p95 time to first token, feedback
//! for the mean score. Latencies compare as a ratio, with a slack under which a difference
//! never counts (a p95 of 2 ms against 1 ms is noise, not a regression).

use serde_json::{Value, json};

use super::settings::Rules;
use crate::overview::window::Stats;

/// One version's figures over the window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Figures {
    /// Requests that ended in the window.
    pub requests: u64,
    /// Of which failed: a 5xx, or an upstream error (refused, reset, timed out, broken stream).
    pub errors: u64,
    /// p95 request duration, seconds.
    pub p95_latency: Option<f64>,
    /// Streamed answers with a time to first token.
    pub ttft_samples: u64,
    /// p95 time to first token, seconds.
    pub p95_ttft: Option<f64>,
    /// Feedback received about this version's answers.
    pub feedback: u64,
    /// Mean feedback score.
    pub mean_score: Option<f64>,
}

impl Figures {
    /// The figures of a window's merged buckets.
    pub fn of(stats: &Stats) -> Figures {
        Figures {
            requests: stats.requests,
            errors: stats.errors,
            p95_latency: stats.latency.quantile(0.95),
            ttft_samples: u64::from(stats.ttft.count()),
            p95_ttft: stats.ttft.quantile(0.95),
            feedback: stats.feedback,
            mean_score: (stats.feedback > 0).then(|| stats.feedback_sum / stats.feedback as f64),
        }
    }

    /// Errors per request, 0 without requests.
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }

    /// For `/canary` and the rollback log.
    pub fn json(&self) -> Value {
        json!({
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": self.error_rate(),
            "p95_latency_seconds": self.p95_latency,
            "ttft_samples": self.ttft_samples,
            "p95_ttft_seconds": self.p95_ttft,
            "feedback": self.feedback,
            "mean_feedback_score": self.mean_score,
        })
    }
}

/// A measure on which the canary is worse than its threshold allows.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// `error_rate`, `p95_latency`, `p95_ttft` or `mean_feedback_score`.
    pub measure: &'static str,
    /// Stable's value.
    pub stable: f64,
    /// The canary's value.
    pub canary: f64,
    /// The worst the canary's value may be.
    pub limit: f64,
}

impl Finding {
    /// One line for logs: `p95_ttft canary 0.412 > limit 0.150 (stable 0.100)`.
    pub fn describe(&self) -> String {
        let cmp = if self.measure == "mean_feedback_score" {
            "<"
        } else {
            ">"
        };
        format!(
            "{} canary {:.4} {cmp} limit {:.4} (stable {:.4})",
            self.measure, self.canary, self.limit, self.stable
        )
    }

    /// For `/canary`.
    pub fn json(&self) -> Value {
        json!({"measure": self.measure, "stable": self.stable, "canary": self.canary, "limit": self.limit})
    }
}

/// What the rules say about the current figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Judgement {
    /// Both sides have at least the minimum requests in the window.
    pub enough_samples: bool,
    /// The measures on which the canary is worse (empty: not worse, or not enough samples).
    pub worse: Vec<Finding>,
}

/// Judges the canary against stable.
pub fn judge(rules: &Rules, stable: &Figures, canary: &Figures) -> Judgement {
    let enough = |a: u64, b: u64, min: u64| a >= min && b >= min;
    let enough_samples = enough(stable.requests, canary.requests, rules.min_samples);
    let mut worse = Vec::new();
    if enough_samples {
        let limit = stable.error_rate() + rules.error_rate_increase;
        if canary.error_rate() > limit {
            worse.push(Finding {
                measure: "error_rate",
                stable: stable.error_rate(),
                canary: canary.error_rate(),
                limit,
            });
        }
        worse.extend(slower(
            rules,
            "p95_latency",
            stable.p95_latency,
            canary.p95_latency,
        ));
    }
    if enough(stable.ttft_samples, canary.ttft_samples, rules.min_samples) {
        worse.extend(slower(rules, "p95_ttft", stable.p95_ttft, canary.p95_ttft));
    }
    if enough(stable.feedback, canary.feedback, rules.min_feedback)
        && let (Some(s), Some(c)) = (stable.mean_score, canary.mean_score)
        && c < s - rules.score_drop
    {
        worse.push(Finding {
            measure: "mean_feedback_score",
            stable: s,
            canary: c,
            limit: s - rules.score_drop,
        });
    }
    Judgement {
        enough_samples,
        worse,
    }
}

fn slower(
    rules: &Rules,
    measure: &'static str,
    stable: Option<f64>,
    canary: Option<f64>,
) -> Option<Finding> {
    let (s, c) = (stable?, canary?);
    let limit = (s * rules.latency_ratio).max(s + rules.latency_slack.as_secs_f64());
    (c > limit).then_some(Finding {
        measure,
        stable: s,
        canary: c,
        limit,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn rules() -> Rules {
        Rules {
            auto_rollback: true,
            window: Duration::from_secs(60),
            min_samples: 100,
            error_rate_increase: 0.05,
            latency_ratio: 1.5,
            latency_slack: Duration::from_millis(50),
            min_feedback: 20,
            score_drop: 0.1,
        }
    }

    fn figures(requests: u64, errors: u64, p95: f64) -> Figures {
        Figures {
            requests,
            errors,
            p95_latency: Some(p95),
            ..Figures::default()
        }
    }

    #[test]
    fn errors_below_the_sample_minimum_do_not_count() {
        let j = judge(&rules(), &figures(500, 0, 0.1), &figures(99, 99, 0.1));
        assert!(!j.enough_samples);
        assert!(j.worse.is_empty());
    }

    #[test]
    fn an_error_rate_beyond_the_margin_is_worse() {
        let j = judge(&rules(), &figures(1000, 10, 0.1), &figures(100, 6, 0.1));
        assert!(j.enough_samples);
        assert!(j.worse.is_empty(), "6% against 1% + 5 points: {j:?}");
        let j = judge(&rules(), &figures(1000, 10, 0.1), &figures(100, 7, 0.1));
        assert_eq!(j.worse.len(), 1);
        assert_eq!(j.worse[0].measure, "error_rate");
        assert!(j.worse[0].describe().contains("error_rate canary 0.0700"));
    }

    #[test]
    fn latency_needs_the_ratio_and_the_slack() {
        // Three times slower, but 2 ms against 6 ms: under the 50 ms slack.
        let j = judge(&rules(), &figures(100, 0, 0.002), &figures(100, 0, 0.006));
        assert!(j.worse.is_empty());
        let j = judge(&rules(), &figures(100, 0, 0.2), &figures(100, 0, 0.29));
        assert!(j.worse.is_empty());
        let j = judge(&rules(), &figures(100, 0, 0.2), &figures(100, 0, 0.31));
        assert_eq!(j.worse[0].measure, "p95_latency");
    }

    #[test]
    fn ttft_and_feedback_have_their_own_minimums() {
        let mut s = figures(1000, 0, 0.1);
        let mut c = figures(1000, 0, 0.1);
        s.p95_ttft = Some(0.05);
        c.p95_ttft = Some(1.0);
        s.ttft_samples = 100;
        c.ttft_samples = 99;
        assert!(judge(&rules(), &s, &c).worse.is_empty());
        c.ttft_samples = 100;
        assert_eq!(judge(&rules(), &s, &c).worse[0].measure, "p95_ttft");
        c.p95_ttft = Some(0.05);
        (s.feedback, s.mean_score) = (20, Some(0.9));
        (c.feedback, c.mean_score) = (20, Some(0.7));
        let j = judge(&rules(), &s, &c);
        assert_eq!(j.worse[0].measure, "mean_feedback_score");
        c.feedback = 19;
        assert!(judge(&rules(), &s, &c).worse.is_empty());
    }
}
