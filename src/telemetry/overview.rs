//! A finished record as the operator's view counts it: [`crate::overview`] takes plain
//! samples, built here from the record, its GenAI facts and its feedback (the few strings it
//! keeps are copied: the record itself goes on to the `/traces` ring).

use std::time::Duration;

use super::genai::time_to_first_token;
use crate::genai::Facts;
use crate::genai::feedback::FeedbackFact;
use crate::observe::{Ending, Record, Times};
use crate::overview::{ExchangeSample, FeedbackSample, GenAiSample, Overview};

/// Counts the exchange, and keeps the feedback it carried for review.
pub(super) fn feed(overview: &Overview, record: &Record) {
    let times = record.times;
    if let Some(fact) = &record.feedback {
        overview.record_feedback(feedback(fact, &times));
    }
    overview.record(ExchangeSample {
        end: times.end.1,
        duration: times.end.0.duration_since(times.start.0),
        status: record.status.map(|s| s.as_u16()),
        error: record.error.is_some(),
        // Refused by the limit (shadow-limited requests are forwarded and not counted here).
        rate_limited: record.error.as_ref().is_some_and(|e| {
            matches!(
                e.kind.as_ref(),
                "rate_limited" | "token_limit_exceeded" | "cost_limit_exceeded"
            )
        }),
        cancelled: record.ending == Ending::Cancelled,
        trace_id: record.ids.as_ref().map(|ids| ids.trace_id.to_bytes()),
        genai: record.genai.as_ref().map(|facts| genai(facts, &times)),
    });
}

fn genai(facts: &Facts, times: &Times) -> GenAiSample {
    GenAiSample {
        ttft: time_to_first_token(facts, times).and_then(|s| Duration::try_from_secs_f64(s).ok()),
        top_score: facts.top_score(),
        documents: facts
            .documents
            .as_ref()
            .map(|d| u32::try_from(d.len()).unwrap_or(u32::MAX)),
        model: facts
            .response_model
            .clone()
            .or_else(|| facts.request_model.clone()),
        input_tokens: facts.input_tokens.and_then(|n| u64::try_from(n).ok()),
        output_tokens: facts.output_tokens.and_then(|n| u64::try_from(n).ok()),
        // The overview's column is in USD: prices in another currency are on spans and metrics.
        cost: facts
            .cost
            .as_ref()
            .filter(|c| c.currency == "USD")
            .map(|c| c.amount),
        version: facts.version.clone(),
        // Already redacted and bounded by the one capture; `None` unless capture is on.
        input_messages: facts.content.input_messages.clone(),
        output_messages: facts.content.output_messages.clone(),
    }
}

/// An accepted feedback, stamped with when it arrived.
fn feedback(fact: &FeedbackFact, times: &Times) -> FeedbackSample {
    FeedbackSample {
        trace_id: fact.trace_id.to_bytes(),
        time: times.start.1,
        score: fact.score,
        label: fact.label.clone(),
        // The comment: present only with capture on, redacted and bounded.
        comment: fact.explanation.clone(),
    }
}
