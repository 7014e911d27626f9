//! Tail sampling (`RAGSCOPE_TAIL_SAMPLING`): which finished exchanges are exported. The rules
//! are parsed once; the verdict is taken from the exchange's [`Record`] when it ends, written
//! onto its spans as `ragscope.sampling.reason`, and acted on in one place, the [`TailGate`]
//! in front of the export span processor. Everything before the gate (metrics, access log, the
//! `/traces` ring) sees every request. Dropped traces wait in [`Held`] for late evidence (low
//! feedback) until they are evicted.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::metrics::{Counter, Meter};
use opentelemetry::trace::{SpanKind, TraceId};
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    Sampler, SamplingDecision, ShouldSample, Span, SpanData, SpanProcessor,
};

use super::held::Held;
use crate::config::{
    ConfigError, Reader, Source, parse_duration, parse_size, show_duration, show_size,
};
use crate::error::Origin;
use crate::observe::{Ending, Record};

/// The attribute every span of a tail-sampled trace carries: why it was kept.
pub(super) const REASON: &str = "ragscope.sampling.reason";
/// The ratio a `rest`-kept trace was sampled at, so backends can re-weight counts.
pub(super) const RATIO: &str = "ragscope.sampling.ratio";
/// The reason value of a trace that was not kept (seen only in `/traces`, never exported).
const DROPPED: &str = "dropped";

/// The accepted form of `RAGSCOPE_TAIL_SAMPLING`, for the start-up error.
pub const TAIL_SAMPLING_FORM: &str = "off, or comma-separated rules from errors, refused, \
    cancelled, slow=<duration>, ttft=<duration>, rest=<ratio 0..1>, low_feedback=<score>, \
    hold=<traces>, hold_bytes=<size>, e.g. errors,refused,cancelled,slow=2s,ttft=1s,rest=0.05";

/// Held dropped traces, by default (`hold=`).
pub const DEFAULT_HOLD_TRACES: usize = 10_000;
/// Bytes of held dropped traces, by default (`hold_bytes=`).
pub const DEFAULT_HOLD_BYTES: u64 = 32 << 20;

/// The parsed rules. A trace is kept when any rule matches, checked in the order of the fields.
#[derive(Debug, Clone, PartialEq)]
pub struct TailRules {
    /// `errors`: a 5xx response, or the proxy's own error (no response, broken stream).
    pub errors: bool,
    /// `refused`: 401, 403 or 429.
    pub refused: bool,
    /// `cancelled`: the client went away.
    pub cancelled: bool,
    /// `slow=`: the exchange took longer than this.
    pub slow: Option<Duration>,
    /// `ttft=`: the first token (or, without GenAI facts, the first body byte) came later.
    pub ttft: Option<Duration>,
    /// `rest=`: the fraction of the remaining traces kept, by trace id (0 when absent).
    pub rest: f64,
    /// `low_feedback=`: a dropped trace that gets a feedback score below this is exported.
    pub low_feedback: Option<f64>,
    /// `hold=`: at most this many dropped traces wait for feedback.
    pub hold_traces: usize,
    /// `hold_bytes=`: and at most this many bytes of them.
    pub hold_bytes: u64,
}

impl TailRules {
    /// Parses the rule list; `None` for anything outside [`TAIL_SAMPLING_FORM`].
    pub fn parse(v: &str) -> Option<TailRules> {
        let mut rules = TailRules {
            errors: false,
            refused: false,
            cancelled: false,
            slow: None,
            ttft: None,
            rest: 0.0,
            low_feedback: None,
            hold_traces: DEFAULT_HOLD_TRACES,
            hold_bytes: DEFAULT_HOLD_BYTES,
        };
        let mut seen: Vec<&str> = Vec::new();
        for item in v.split(',') {
            let item = item.trim();
            let (name, arg) = match item.split_once('=') {
                Some((n, a)) => (n.trim(), Some(a.trim())),
                None => (item, None),
            };
            // A rule given twice is a typo whose intent cannot be known.
            if seen.contains(&name) {
                return None;
            }
            seen.push(name);
            match (name, arg) {
                ("errors", None) => rules.errors = true,
                ("refused", None) => rules.refused = true,
                ("cancelled", None) => rules.cancelled = true,
                ("slow", Some(a)) => rules.slow = Some(parse_duration(a)?),
                ("ttft", Some(a)) => rules.ttft = Some(parse_duration(a)?),
                ("rest", Some(a)) => rules.rest = unit_interval(a)?,
                ("low_feedback", Some(a)) => rules.low_feedback = Some(a.parse().ok()?),
                ("hold", Some(a)) => rules.hold_traces = a.parse().ok().filter(|n| *n > 0)?,
                ("hold_bytes", Some(a)) => rules.hold_bytes = parse_size(a).filter(|n| *n > 0)?,
                _ => return None,
            }
        }
        rules
            .low_feedback
            .is_none_or(f64::is_finite)
            .then_some(rules)
    }

    /// The verdict on a finished exchange.
    pub fn decide(&self, r: &Record) -> Verdict {
        // A client's own fault (a 413, a refused key, a bad body) is not an error here; the
        // upstream's or the proxy's is, including a stream that broke off.
        let server_error = r.status.is_none_or(|s| s.is_server_error())
            || r.error
                .as_ref()
                .is_some_and(|e| e.origin != Origin::Downstream);
        let cancelled = r.ending == Ending::Cancelled;
        if self.errors && server_error && !cancelled {
            return Verdict::Keep("error");
        }
        if self.refused
            && r.status
                .is_some_and(|s| matches!(s.as_u16(), 401 | 403 | 429))
        {
            return Verdict::Keep("refused");
        }
        if self.cancelled && cancelled {
            return Verdict::Keep("cancelled");
        }
        let duration = r.times.end.0.duration_since(r.times.start.0);
        if self.slow.is_some_and(|slow| duration > slow) {
            return Verdict::Keep("slow");
        }
        if let Some(limit) = self.ttft {
            let first = r
                .genai
                .as_ref()
                .and_then(|g| g.first_token.filter(|_| g.streamed))
                .or(r.times.first_byte)
                .map(|(at, _)| at.duration_since(r.times.start.0));
            if first.is_some_and(|t| t > limit) {
                return Verdict::Keep("ttft");
            }
        }
        if let Some(ids) = &r.ids
            && self.rest > 0.0
            && by_ratio(ids.trace_id, self.rest)
        {
            return Verdict::Ratio(self.rest);
        }
        Verdict::Drop
    }
}

/// The rules in the form [`TailRules::parse`] reads, every default spelled out (for
/// `/debug/config`).
impl std::fmt::Display for TailRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut items: Vec<String> = [
            (self.errors, "errors"),
            (self.refused, "refused"),
            (self.cancelled, "cancelled"),
        ]
        .into_iter()
        .filter(|(on, _)| *on)
        .map(|(_, name)| name.to_owned())
        .collect();
        items.extend(self.slow.map(|d| format!("slow={}", show_duration(d))));
        items.extend(self.ttft.map(|d| format!("ttft={}", show_duration(d))));
        items.push(format!("rest={}", self.rest));
        items.extend(self.low_feedback.map(|s| format!("low_feedback={s}")));
        items.push(format!("hold={}", self.hold_traces));
        let bytes = show_size(self.hold_bytes);
        let bytes = if bytes.ends_with("bytes") {
            self.hold_bytes.to_string()
        } else {
            bytes
        };
        items.push(format!("hold_bytes={bytes}"));
        f.write_str(&items.join(","))
    }
}

fn unit_interval(v: &str) -> Option<f64> {
    v.parse::<f64>().ok().filter(|r| (0.0..=1.0).contains(r))
}

/// The SDK's `TraceIdRatioBased` rule (the OpenTelemetry specification's), so every replica,
/// and any SDK sampling at the same ratio, agrees on the same trace.
fn by_ratio(trace_id: TraceId, ratio: f64) -> bool {
    Sampler::TraceIdRatioBased(ratio)
        .should_sample(None, trace_id, "", &SpanKind::Server, &[], &[])
        .decision
        == SamplingDecision::RecordAndSample
}

/// What happens to one trace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// Exported; the rule that matched.
    Keep(&'static str),
    /// Exported as one of the `rest`, sampled at this ratio.
    Ratio(f64),
    /// Not exported (held for late evidence when `low_feedback` is set).
    Drop,
}

impl Verdict {
    /// The attributes written first on each of the trace's spans.
    pub(super) fn attributes(self) -> Vec<KeyValue> {
        match self {
            Verdict::Keep(reason) => vec![KeyValue::new(REASON, reason)],
            Verdict::Ratio(r) => vec![KeyValue::new(REASON, "ratio"), KeyValue::new(RATIO, r)],
            Verdict::Drop => vec![KeyValue::new(REASON, DROPPED)],
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Verdict::Keep(reason) => reason,
            Verdict::Ratio(_) => "ratio",
            Verdict::Drop => "none",
        }
    }
}

/// `RAGSCOPE_TAIL_SAMPLING`; `None` (the default, `off`) exports every recorded trace.
pub fn read_tail_sampling<S: Source + ?Sized>(
    r: &Reader<'_, S>,
) -> Result<Option<TailRules>, ConfigError> {
    r.optional(
        "RAGSCOPE_TAIL_SAMPLING",
        "off",
        TAIL_SAMPLING_FORM,
        TailRules::parse,
    )
}

/// The running tail sampler: the rules, the decision counter and the held traces.
#[derive(Debug)]
pub(super) struct Tail {
    rules: TailRules,
    traces: Counter<u64>,
    held: Option<Arc<Held>>,
}

impl Tail {
    /// Instruments on `meter`; dropped traces are held only when low feedback can release them.
    pub(super) fn new(rules: TailRules, meter: &Meter) -> Tail {
        let held = rules
            .low_feedback
            .map(|_| Held::new(rules.hold_traces, rules.hold_bytes, meter));
        Tail {
            traces: meter
                .u64_counter("ragscope.tail_sampling.traces")
                .with_unit("{trace}")
                .with_description("Sampled traces by tail-sampling decision and reason")
                .build(),
            rules,
            held,
        }
    }

    /// Decides on a finished exchange and counts the decision.
    pub(super) fn decide(&self, r: &Record) -> Verdict {
        let verdict = self.rules.decide(r);
        let decision = if verdict == Verdict::Drop {
            "dropped"
        } else {
            "kept"
        };
        self.count(decision, verdict.reason());
        verdict
    }

    /// Whether dropped traces are held for late feedback (so their spans are still built).
    pub(super) fn holds(&self) -> bool {
        self.held.is_some()
    }

    /// Feedback arrived for `trace_id`: a score below `low_feedback` exports the trace if it is
    /// still held.
    pub(super) fn feedback(&self, trace_id: TraceId, score: f64) {
        let (Some(held), Some(threshold)) = (&self.held, self.rules.low_feedback) else {
            return;
        };
        if score < threshold && held.release(trace_id) {
            self.count("released", "low_feedback");
        }
    }

    fn count(&self, decision: &'static str, reason: &'static str) {
        self.traces.add(
            1,
            &[
                KeyValue::new("ragscope.sampling.decision", decision),
                KeyValue::new(REASON, reason),
            ],
        );
    }

    /// The gate in front of the export processor `inner`.
    pub(super) fn gate(&self, inner: Box<dyn SpanProcessor>) -> TailGate {
        let inner: Arc<dyn SpanProcessor> = Arc::from(inner);
        TailGate {
            inner,
            held: self.held.clone(),
        }
    }
}

/// Passes kept spans (and spans outside any exchange) to the export processor; holds or
/// discards the spans of dropped traces.
#[derive(Debug)]
pub(super) struct TailGate {
    inner: Arc<dyn SpanProcessor>,
    held: Option<Arc<Held>>,
}

impl SpanProcessor for TailGate {
    fn on_start(&self, span: &mut Span, cx: &opentelemetry::Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        let dropped = span
            .attributes
            .iter()
            .take(2)
            .any(|kv| kv.key.as_str() == REASON && kv.value == Value::from(DROPPED));
        match &self.held {
            Some(held) if dropped => {
                held.set_exporter(&self.inner);
                held.hold(span);
            }
            // A span outside any exchange (feedback) for a trace that is held waits with it,
            // so a dropped trace does not show up in the backend as a lone feedback span.
            Some(held) => {
                if let Some(span) = held.join(span) {
                    self.inner.on_end(span);
                }
            }
            None if dropped => {}
            None => self.inner.on_end(span),
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        // The gate is built around the export processor before `Spans` tells processors the
        // resource, and it is the only owner then.
        // The held traces get their exporter after this, on the first hold.
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grammar() {
        let r = TailRules::parse(
            "errors, refused,cancelled,slow=2s,ttft=1s,rest=0.05,low_feedback=0.3",
        )
        .expect("rules");
        assert!(r.errors && r.refused && r.cancelled);
        assert_eq!(r.slow, Some(Duration::from_secs(2)));
        assert_eq!(r.ttft, Some(Duration::from_secs(1)));
        assert_eq!(r.rest, 0.05);
        assert_eq!(r.low_feedback, Some(0.3));
        assert_eq!(r.hold_traces, DEFAULT_HOLD_TRACES);
        let r = TailRules::parse("errors,hold=10,hold_bytes=1MiB").expect("rules");
        assert_eq!((r.rest, r.hold_traces, r.hold_bytes), (0.0, 10, 1 << 20));
        for given in [
            "errors,slow=250ms,ttft=1500ms,rest=0.05,low_feedback=0.3",
            "refused,hold_bytes=1000",
        ] {
            let r = TailRules::parse(given).expect("rules");
            assert_eq!(TailRules::parse(&r.to_string()), Some(r), "{given}");
        }
        for bad in [
            "",
            "errors,,rest=0.1",
            "error",
            "errors=1",
            "slow",
            "slow=fast",
            "rest=1.5",
            "rest=-0.1",
            "rest=0.1,rest=0.2",
            "low_feedback=NaN",
            "hold=0",
            "hold_bytes=lots",
        ] {
            assert_eq!(TailRules::parse(bad), None, "{bad}");
        }
    }

    fn record(status: u16, error: Option<(&'static str, Origin)>, ending: Ending) -> Record {
        let mut r = Record::new(
            None,
            crate::observe::HttpFacts {
                method: http::Method::GET,
                path: "/".into(),
                redacted_query: None,
                scheme: "http",
                version: http::Version::HTTP_11,
                server_address: None,
                peer: ([127, 0, 0, 1], 1).into(),
                user_agent: None,
            },
        );
        r.respond(http::StatusCode::from_u16(status).expect("status"), error);
        r.end(ending);
        r
    }

    #[test]
    fn a_clients_own_fault_is_not_an_error_but_a_refusal_is_kept_as_one() {
        let rules = TailRules::parse("errors,refused,cancelled").expect("rules");
        let decide = |status, error, ending| rules.decide(&record(status, error, ending));
        let done = Ending::Complete;
        assert_eq!(decide(200, None, done), Verdict::Drop);
        assert_eq!(decide(502, None, done), Verdict::Keep("error"));
        let unreachable = Some(("upstream_unreachable", Origin::Upstream));
        assert_eq!(decide(502, unreachable, done), Verdict::Keep("error"));
        let limited = Some(("rate_limited", Origin::Downstream));
        assert_eq!(decide(429, limited, done), Verdict::Keep("refused"));
        let missing = Some(("missing_api_key", Origin::Downstream));
        assert_eq!(decide(401, missing, done), Verdict::Keep("refused"));
        let big = Some(("body_too_large", Origin::Downstream));
        assert_eq!(decide(413, big, done), Verdict::Drop);
        let broke = Ending::Failed("upstream_reset", Origin::Upstream);
        assert_eq!(decide(200, None, broke), Verdict::Keep("error"));
        assert_eq!(
            decide(200, None, Ending::Cancelled),
            Verdict::Keep("cancelled")
        );
        assert_eq!(
            decide(503, None, Ending::Cancelled),
            Verdict::Keep("cancelled")
        );
    }

    #[test]
    fn ratio_follows_the_trace_id_like_the_sdk() {
        let low = TraceId::from_hex("00000000000000000000000000000001").expect("id");
        let high = TraceId::from_hex("0000000000000000ffffffffffffffff").expect("id");
        assert!(by_ratio(low, 0.05));
        assert!(!by_ratio(high, 0.05));
        assert!(by_ratio(high, 1.0));
    }
}
