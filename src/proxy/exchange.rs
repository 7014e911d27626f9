//! The observers of one exchange, composed in one plain struct: the [`Record`] of HTTP facts
//! (byte counts, first byte, status, what admission learned) and the GenAI/RAG observation.
//! It travels with the request into the response body, whose end notes the record's end and
//! whose drop (after hyper has taken the last frame) hands the record to telemetry, where the
//! GenAI copies are parsed. Dropping an unfinished exchange counts as a
//! client cancel, so a request abandoned at any point is still recorded.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use http::{HeaderMap, HeaderValue, StatusCode, Uri};
use opentelemetry::Context;

use crate::error::Origin;
use crate::genai::Observation;
use crate::observe::{Ending, HttpFacts, Record, UpstreamAddress, UpstreamCall, redacted_url};
use crate::telemetry::Telemetry;

/// One exchange's observers.
#[derive(Debug)]
pub struct Exchange {
    telemetry: Arc<Telemetry>,
    /// `None` once handed to telemetry.
    /// Boxed: the record is over 2 KiB and the exchange moves with the request (into the
    /// response body, through the phases); a pointer moves instead.
    record: Option<Box<Record>>,
    /// The caller's context (baggage), until the upstream request's headers are written.
    parent: Context,
    /// Request body bytes, counted by the request body wrapper.
    request_bytes: Arc<AtomicU64>,
    genai: Option<Observation>,
    /// Whether the response's end has been noted ([`Exchange::end`]).
    ended: bool,
}

impl Exchange {
    /// A request arrived: its trace ids are chosen and it counts as active.
    pub fn begin(telemetry: Arc<Telemetry>, http: HttpFacts, headers: &HeaderMap) -> Exchange {
        let (ids, parent) = telemetry.begin(&http, headers);
        Exchange {
            telemetry,
            record: Some(Box::new(Record::new(ids, http))),
            parent,
            request_bytes: Arc::new(AtomicU64::new(0)),
            genai: None,
            ended: false,
        }
    }

    /// The record, to note facts on. Only `None` after [`Exchange::finish`].
    pub fn record(&mut self) -> Option<&mut Record> {
        self.record.as_deref_mut()
    }

    /// The shared counter the request body wrapper adds to.
    pub fn request_bytes(&self) -> Arc<AtomicU64> {
        self.request_bytes.clone()
    }

    /// The W3C `traceresponse` header value, when traces are on.
    pub fn traceresponse(&self) -> Option<HeaderValue> {
        Telemetry::traceresponse(self.record.as_ref()?.ids.as_ref()?)
    }

    /// The upstream call starts: notes it and writes our trace context into its headers.
    pub fn begin_upstream(
        &mut self,
        address: &UpstreamAddress,
        uri: &Uri,
        headers: &mut HeaderMap,
    ) {
        let Some(record) = &mut self.record else {
            return;
        };
        record.times.upstream_start = Some((Instant::now(), SystemTime::now()));
        record.upstream = Some(UpstreamCall {
            url: redacted_url(uri),
            status: None,
            version: None,
            address: address.clone(),
        });
        if let Some(ids) = &record.ids {
            self.telemetry.inject(&self.parent, ids, headers);
        }
        // The caller's context is not needed past this point.
        self.parent = Context::new();
    }

    /// Whether the request is a gRPC call.
    pub fn is_grpc(&self) -> bool {
        self.record.as_ref().is_some_and(|r| r.rpc.is_some())
    }

    /// The upstream's response head arrived: its HTTP version, and for a gRPC call the
    /// `grpc-status` of a trailers-only response.
    pub fn upstream_head(&mut self, version: http::Version, headers: &HeaderMap) {
        let Some(record) = &mut self.record else {
            return;
        };
        if let Some(call) = &mut record.upstream {
            call.version = Some(version);
        }
        self.observe_trailers(headers);
    }

    /// Trailers passed (or a head that may carry `grpc-status`): a gRPC call's outcome.
    pub fn observe_trailers(&mut self, trailers: &HeaderMap) {
        if let Some(record) = self.record.as_mut().filter(|r| r.rpc.is_some())
            && let Some(code) = crate::grpc::status(trailers)
        {
            record.rpc_status(code);
        }
    }

    /// Moves the record and observers into a new exchange (an upgraded session, which ends
    /// at its close), leaving this one with nothing to record.
    pub(super) fn detach(&mut self) -> Exchange {
        Exchange {
            telemetry: self.telemetry.clone(),
            record: self.record.take(),
            parent: Context::new(),
            request_bytes: self.request_bytes.clone(),
            genai: self.genai.take(),
            ended: self.ended,
        }
    }

    /// The response status is known (see [`Record::respond`]).
    pub fn respond(&mut self, status: StatusCode, error: Option<(&'static str, Origin)>) {
        if let Some(record) = &mut self.record {
            record.respond(status, error);
        }
    }

    /// Attaches the request's GenAI observation.
    pub fn set_genai(&mut self, observation: Observation) {
        self.genai = Some(observation);
    }

    /// The GenAI observation, if the request has one.
    pub fn genai_mut(&mut self) -> Option<&mut Observation> {
        self.genai.as_mut()
    }

    /// A response frame was handed to the client: count it, mark the first byte, and let the
    /// GenAI observation read its copy.
    pub fn observe_response_data(&mut self, data: &[u8]) {
        if let Some(record) = &mut self.record {
            record.response_bytes += data.len() as u64;
            if record.times.first_byte.is_none() && !data.is_empty() {
                record.times.first_byte = Some((Instant::now(), SystemTime::now()));
            }
        }
        if let Some(genai) = &mut self.genai {
            genai.response_data(data);
        }
    }

    /// The response ended (`ending`, at this moment): the record's end is noted, but it is
    /// kept until [`Exchange::finish`] hands it on, so the frame that ended the response
    /// reaches hyper first. The first ending wins; later ones do nothing.
    pub fn end(&mut self, ending: Ending) {
        if let Some(record) = &mut self.record
            && !self.ended
        {
            record.end(ending);
            self.ended = true;
        }
    }

    /// Ends the exchange (unless it already ended) and hands the record to telemetry with the
    /// GenAI observation's copies as they are: they are parsed on the telemetry thread
    /// ([`Record::conclude`]), never here on the I/O path. Runs once; later calls (and the
    /// drop) do nothing.
    pub fn finish(&mut self, ending: Ending) {
        if let Some(record) = self.take_record(ending) {
            self.telemetry.record(record);
        }
    }

    /// Ends the exchange (unless it already ended) and gives its record up for hand-off.
    pub(super) fn take_record(&mut self, ending: Ending) -> Option<Record> {
        self.end(ending);
        let mut record = *self.record.take()?;
        record.request_bytes = self.request_bytes.load(Ordering::Relaxed);
        record.observation = self.genai.take();
        if record.ending == Ending::Cancelled && crate::workers::closing() {
            // The drain timeout closed this exchange's connection (issue 11).
            record.cancelled_by = Some("shutdown");
            tracing::warn!(
                trace_id = record.ids.as_ref().map(|ids| ids.trace_id.to_string()),
                method = record.http.method.as_str(),
                path = record.http.path.as_str(),
                "request cancelled by shutdown: the drain timeout closed its connection"
            );
        }
        Some(record)
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.finish(Ending::Cancelled);
    }
}
