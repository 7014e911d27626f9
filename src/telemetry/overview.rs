//! A finished record as the operator's view counts it: [`crate::overview`] takes plain
//! samples, built here from the record and its GenAI facts, beside the metrics.

use std::time::Duration;

use super::genai::time_to_first_token;
use crate::genai::Facts;
use crate::genai::feedback::FeedbackFact;
use crate::observe::{Ending, Record, Times};
use crate::overview::{ExchangeSample, FeedbackSample, GenAiSample};

/// The exchange, for the overview's buckets and the feedback join.
pub(super) fn exchange(record: &Record) -> ExchangeSample {
    let times = &record.times;
    ExchangeSample {
        end: times.end.1,
        duration: times.end.0.duration_since(times.start.0),
        status: record.status.map(|s| s.as_u16()),
        error: record.error.is_some(),
        rate_limited: record
            .error
            .as_ref()
            .is_some_and(|e| e.kind == "rate_limited"),
        cancelled: record.ending == Ending::Cancelled,
        trace_id: record.ids.as_ref().map(|ids| ids.trace_id.to_bytes()),
        genai: record.genai.as_ref().map(|facts| genai(facts, times)),
    }
}

fn genai(facts: &Facts, times: &Times) -> GenAiSample {
    GenAiSample {
        model: facts
            .response_model
            .clone()
            .or_else(|| facts.request_model.clone()),
        ttft: time_to_first_token(facts, times).and_then(|s| Duration::try_from_secs_f64(s).ok()),
        input_tokens: facts.input_tokens.and_then(|n| u64::try_from(n).ok()),
        output_tokens: facts.output_tokens.and_then(|n| u64::try_from(n).ok()),
        // The facts carry no price yet (RAGSCOPE_PRICES, issue 13, fills them): no cost shown.
        cost: None,
        documents: facts
            .documents
            .as_ref()
            .map(|d| u32::try_from(d.len()).unwrap_or(u32::MAX)),
        top_score: facts.top_score(),
        version: facts.version.clone(),
        // Already redacted and bounded by the one capture; `None` unless capture is on.
        input_messages: facts.content.input_messages.clone(),
        output_messages: facts.content.output_messages.clone(),
    }
}

/// An accepted feedback, for the review page. `time` is when the record was made.
pub(super) fn feedback(fact: &FeedbackFact, times: &Times) -> FeedbackSample {
    FeedbackSample {
        trace_id: fact.trace_id.to_bytes(),
        time: times.start.1,
        score: fact.score,
        label: fact.label.clone(),
        // `explanation` is the comment, present only with capture on, redacted and bounded.
        comment: fact.explanation.clone(),
    }
}
