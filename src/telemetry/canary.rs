//! A finished record as the canary counts it: the routed exchange's outcome (5xx or upstream
//! failure, duration, time to first token) and feedback, fed from the telemetry thread so the
//! verdict's bookkeeping never runs on the I/O path.

use std::time::Duration;

use super::genai::time_to_first_token;
use crate::canary::{Canary, Outcome};
use crate::error::Origin;
use crate::observe::{Ending, Record};

/// Feeds the record's outcome (when it was routed) and its feedback (when it carries one).
pub(super) fn feed(canary: &Canary, record: &Record) {
    if let Some(fact) = &record.feedback {
        canary.feedback(fact.trace_id.to_bytes(), fact.score, record.times.start.1);
    }
    let Some(route) = &record.route else {
        return;
    };
    let times = &record.times;
    let error = record.status.is_some_and(|s| s.is_server_error())
        || record
            .error
            .as_ref()
            .is_some_and(|e| e.origin == Origin::Upstream);
    canary.observe(&Outcome {
        route: route.clone(),
        end: times.end.1,
        duration: times.end.0.duration_since(times.start.0),
        error,
        ttft: record
            .genai
            .as_ref()
            .and_then(|facts| time_to_first_token(facts, times))
            .and_then(|s| Duration::try_from_secs_f64(s).ok()),
        trace_id: record.ids.as_ref().map(|ids| ids.trace_id.to_bytes()),
        cancelled: record.ending == Ending::Cancelled,
    });
}
