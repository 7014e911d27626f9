//! The JSON twins, `/overview.json` and `/feedback.json`. The HTML pages are drawn from these
//! same values, so a script and a person always see the same figures.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::window::Stats;
use super::{FeedbackEntry, Overview, hex, unix_secs};

/// Milliseconds, three decimals.
fn ms(seconds: Option<f64>) -> Value {
    seconds
        .and_then(|s| serde_json::Number::from_f64((s * 1_000_000.0).round() / 1000.0))
        .map_or(Value::Null, Value::Number)
}

fn ratio(part: u64, whole: u64) -> Value {
    if whole == 0 {
        return Value::Null;
    }
    json!(part as f64 / whole as f64)
}

fn mean(sum: f64, n: u64) -> Value {
    if n == 0 {
        return Value::Null;
    }
    serde_json::Number::from_f64(sum / n as f64).map_or(Value::Null, Value::Number)
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The figures of one bucket (or the whole window), `width` seconds long.
fn figures(s: &Stats, width: u64) -> Value {
    let per_minute = 60.0 / width as f64;
    json!({
        "requests": s.requests,
        "request_rate": s.requests as f64 / width as f64,
        "errors": s.errors,
        "error_rate": ratio(s.errors, s.requests),
        "rate_limited": s.rate_limited,
        "cancelled": s.cancelled,
        "p50_ms": ms(s.latency.quantile(0.5)),
        "p95_ms": ms(s.latency.quantile(0.95)),
        "ttft_p95_ms": ms(s.ttft.quantile(0.95)),
        "input_tokens": s.input_tokens,
        "output_tokens": s.output_tokens,
        "input_tokens_per_minute": s.input_tokens as f64 * per_minute,
        "output_tokens_per_minute": s.output_tokens as f64 * per_minute,
        "retrievals": s.retrievals,
        "empty_retrievals": s.empty_retrievals,
        "empty_retrieval_rate": ratio(s.empty_retrievals, s.retrievals),
        "feedback": s.feedback,
        "feedback_mean": mean(s.feedback_sum, s.feedback),
    })
}

impl Overview {
    /// `/overview.json` at `now`: totals of the window, one point per bucket, the model table.
    pub fn json(&self, now: SystemTime) -> Value {
        let secs = unix_secs(now);
        let inner = self.lock();
        let width = inner.overall.width();
        let series: Vec<Value> = inner
            .overall
            .series(secs)
            .into_iter()
            .map(|(start, s)| {
                let mut v = figures(s.unwrap_or(&Stats::default()), width);
                v["start"] = json!(start * 1000);
                v
            })
            .collect();
        let total = inner.overall.total(secs);
        let window_seconds = width * inner.overall.buckets() as u64;
        let mut models: Vec<Value> = inner
            .models
            .iter()
            .map(|(name, w)| (name.as_str(), w))
            .chain(std::iter::once(("other", &inner.other)))
            .filter_map(|(name, w)| {
                let s = w.total(secs);
                (s.requests > 0).then(|| {
                    json!({
                        "model": name,
                        "requests": s.requests,
                        "errors": s.errors,
                        "error_rate": ratio(s.errors, s.requests),
                        "p95_ms": ms(s.latency.quantile(0.95)),
                        "ttft_p95_ms": ms(s.ttft.quantile(0.95)),
                        "input_tokens": s.input_tokens,
                        "output_tokens": s.output_tokens,
                        // Known only when a price was: no figure rather than a made-up zero.
                        "cost_usd": (s.costed > 0).then_some(s.cost),
                    })
                })
            })
            .collect();
        // Busiest first; `other` always last.
        models.sort_by_key(|m| {
            (
                m["model"] == "other",
                std::cmp::Reverse(m["requests"].as_u64()),
            )
        });
        json!({
            "now": unix_ms(now),
            "window_seconds": window_seconds,
            "bucket_seconds": width,
            "totals": figures(&total, window_seconds),
            "cost_usd": (total.costed > 0).then_some(total.cost),
            "series": series,
            "models": models,
            "max_models": super::MAX_MODELS,
        })
    }

    /// `/feedback.json`: the kept feedback, newest or lowest score first.
    pub fn feedback_json(&self, lowest_first: bool, limit: Option<usize>) -> Value {
        let entries: Vec<Value> = self
            .feedback(lowest_first, None)
            .iter()
            .take(limit.unwrap_or(usize::MAX))
            .map(entry_json)
            .collect();
        json!({
            "capacity": super::FEEDBACK_CAPACITY,
            "sort": if lowest_first { "score" } else { "time" },
            "feedback": entries,
        })
    }
}

/// One feedback entry, with the link to its trace view.
pub fn entry_json(e: &FeedbackEntry) -> Value {
    let trace_id = hex(&e.feedback.trace_id);
    json!({
        "trace_id": trace_id,
        "trace_url": format!("/traces/{trace_id}"),
        "time": unix_ms(e.feedback.time),
        "score": e.feedback.score,
        "label": e.feedback.label,
        "comment": e.feedback.comment,
        "model": e.model,
        "documents": e.documents,
        "question": e.question,
        "answer": e.answer,
    })
}
