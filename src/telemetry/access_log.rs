//! The access log: one line per request, JSON by default.
//!
//! The telemetry thread formats the lines of every drained batch of records by hand into one
//! buffer and hands it to the non-blocking log writer as one message: one wake-up of the writer
//! thread and one write(2) per batch, not per line (going through `tracing`'s generic JSON
//! formatter cost several times more per line). It still obeys `RAGSCOPE_LOG`: a filter that
//! turns off `ragscope::access` at INFO turns the access log off.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::SystemTime;

use tracing_appender::non_blocking::NonBlocking;

use super::LogFormat;

/// Where access-log lines go; set once by [`crate::telemetry::logging::init`].
static SINK: OnceLock<(NonBlocking, LogFormat)> = OnceLock::new();

pub(super) fn install(writer: NonBlocking, format: LogFormat) {
    let _ = SINK.set((writer, format));
}

/// One request's access-log record.
#[derive(Debug)]
pub struct AccessRecord<'a> {
    /// When the exchange ended (the line's `timestamp`).
    pub at: SystemTime,
    /// 32 hex digits, empty when traces are off.
    pub trace_id: &'a str,
    /// 16 hex digits, empty when traces are off.
    pub span_id: &'a str,
    /// Request method.
    pub method: &'a str,
    /// Path without the query (query values are never logged).
    pub path: &'a str,
    /// `1.1`, `2`...
    pub protocol: &'a str,
    /// Response status, when one was sent.
    pub status: Option<u16>,
    /// Until the last response byte.
    pub duration_ms: f64,
    /// Request body bytes read.
    pub request_bytes: u64,
    /// Response body bytes sent.
    pub response_bytes: u64,
    /// `error.type`, if any.
    pub error_type: Option<&'a str>,
    /// The client went away first.
    pub cancelled: bool,
    /// The client's address.
    pub client: IpAddr,
}

/// The lines of one drained batch, written as one message.
#[derive(Debug)]
pub struct Batch<'t> {
    /// `None` when logging is not set up or `ragscope::access` is filtered out.
    sink: Option<&'static (NonBlocking, LogFormat)>,
    lines: String,
    /// The logs signal (`OTEL_LOGS_EXPORTER`), when on: every record is exported there too,
    /// whatever `RAGSCOPE_LOG` does to the stdout line.
    logs: Option<&'t super::logs::Logs>,
}

impl<'t> Batch<'t> {
    /// An empty batch; the log filter is asked once per batch, not per line.
    pub(super) fn new(logs: Option<&'t super::logs::Logs>) -> Batch<'t> {
        let sink = SINK
            .get()
            .filter(|_| tracing::enabled!(target: "ragscope::access", tracing::Level::INFO));
        Batch {
            sink,
            lines: String::new(),
            logs,
        }
    }

    /// Adds the record's line, unless the access log is off, and exports it as a log record
    /// when the logs signal is on.
    pub fn push(&mut self, record: &AccessRecord<'_>) {
        if let Some(logs) = self.logs {
            logs.access(record);
        }
        match self.sink {
            Some((_, LogFormat::Json)) => format_json(&mut self.lines, record),
            Some((_, LogFormat::Text)) => format_text(&mut self.lines, record),
            None => {}
        }
    }

    /// An empty batch writing into `buffer` (cleared; its capacity is what is reused).
    pub(super) fn reusing(mut buffer: String, logs: Option<&'t super::logs::Logs>) -> Batch<'t> {
        buffer.clear();
        Batch {
            lines: buffer,
            ..Batch::new(logs)
        }
    }

    /// Hands the lines to the log writer and gives the buffer back for the next batch. The
    /// non-blocking writer never waits: a full queue drops the batch.
    pub fn write(self) -> String {
        if let Some((writer, _)) = self.sink
            && !self.lines.is_empty()
        {
            let _ = writer.clone().write_all(self.lines.as_bytes());
        }
        self.lines
    }
}

impl Default for Batch<'_> {
    fn default() -> Self {
        Batch::new(None)
    }
}

// The default (JSON) line is written field by field without `format!` machinery: integers,
// the timestamp and the client address are pushed digit by digit, as this runs once per
// request on the telemetry thread.
fn format_json(out: &mut String, r: &AccessRecord<'_>) {
    out.push_str("{\"timestamp\":\"");
    rfc3339(out, r.at);
    out.push_str("\",\"level\":\"INFO\",\"target\":\"ragscope::access\",\"trace_id\":\"");
    out.push_str(r.trace_id);
    out.push_str("\",\"span_id\":\"");
    out.push_str(r.span_id);
    out.push_str("\",\"method\":");
    json_str(out, r.method);
    out.push_str(",\"path\":");
    json_str(out, r.path);
    out.push_str(",\"protocol\":\"");
    out.push_str(r.protocol);
    out.push_str("\",\"status\":");
    match r.status {
        Some(s) => push_u64(out, u64::from(s)),
        None => out.push_str("null"),
    }
    out.push_str(",\"duration_ms\":");
    push_millis(out, r.duration_ms);
    out.push_str(",\"request_bytes\":");
    push_u64(out, r.request_bytes);
    out.push_str(",\"response_bytes\":");
    push_u64(out, r.response_bytes);
    if let Some(e) = r.error_type {
        out.push_str(",\"error_type\":");
        json_str(out, e);
    }
    out.push_str(",\"cancelled\":");
    out.push_str(if r.cancelled { "true" } else { "false" });
    out.push_str(",\"client\":\"");
    push_ip(out, r.client);
    out.push_str("\"}\n");
}

/// `n` in decimal.
fn push_u64(out: &mut String, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &b in &buf[i..] {
        out.push(char::from(b));
    }
}

/// `n` in decimal, zero-padded to `width` digits.
fn push_padded(out: &mut String, n: u64, width: usize) {
    let mut digits = 1;
    let mut rest = n / 10;
    while rest > 0 {
        digits += 1;
        rest /= 10;
    }
    for _ in digits..width {
        out.push('0');
    }
    push_u64(out, n);
}

/// Milliseconds with three decimals, as `{:.3}` writes them for the values a duration takes.
fn push_millis(out: &mut String, ms: f64) {
    // Beyond ~2^53 microseconds (or for a value no duration has) the integer path would lose
    // digits: leave those to the formatter.
    if !(0.0..9.0e12).contains(&ms) {
        let _ = write!(out, "{ms:.3}");
        return;
    }
    let micros = (ms * 1000.0).round() as u64;
    push_u64(out, micros / 1000);
    out.push('.');
    push_padded(out, micros % 1000, 3);
}

/// The client address as `Display` writes it (IPv4 by hand; IPv6 is rare behind a sidecar).
fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_u64(out, u64::from(octet));
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

fn format_text(out: &mut String, r: &AccessRecord<'_>) {
    rfc3339(out, r.at);
    let _ = write!(
        out,
        "  INFO ragscope::access: trace_id={} span_id={} method={} path={:?} protocol={} status=",
        r.trace_id, r.span_id, r.method, r.path, r.protocol
    );
    match r.status {
        Some(s) => {
            let _ = write!(out, "{s}");
        }
        None => out.push('-'),
    }
    let _ = write!(
        out,
        " duration_ms={:.3} request_bytes={} response_bytes={}",
        r.duration_ms, r.request_bytes, r.response_bytes
    );
    if let Some(e) = r.error_type {
        let _ = write!(out, " error_type={e}");
    }
    let _ = writeln!(out, " cancelled={} client={}", r.cancelled, r.client);
}

/// A JSON string literal, escaped per RFC 8259.
fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `2026-11-25T12:03:26.813311Z`.
fn rfc3339(out: &mut String, t: SystemTime) {
    let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    push_padded(out, y.max(0) as u64, 4);
    out.push('-');
    push_padded(out, u64::from(m), 2);
    out.push('-');
    push_padded(out, u64::from(d), 2);
    out.push('T');
    push_padded(out, rem / 3600, 2);
    out.push(':');
    push_padded(out, rem % 3600 / 60, 2);
    out.push(':');
    push_padded(out, rem % 60, 2);
    out.push('.');
    push_padded(out, u64::from(since.subsec_micros()), 6);
    out.push('Z');
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn record() -> AccessRecord<'static> {
        AccessRecord {
            at: SystemTime::UNIX_EPOCH,
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736",
            span_id: "00f067aa0ba902b7",
            method: "GET",
            path: "/v1/\"chat\"\n",
            protocol: "1.1",
            status: Some(200),
            duration_ms: 12.3456,
            request_bytes: 10,
            response_bytes: 20,
            error_type: None,
            cancelled: false,
            client: "192.0.2.1".parse().expect("ip"),
        }
    }

    #[test]
    fn hand_written_numbers_match_the_formatter() {
        for n in [0u64, 7, 10, 99, 1000, 123_456_789, u64::MAX] {
            let mut s = String::new();
            push_u64(&mut s, n);
            assert_eq!(s, n.to_string());
            let mut s = String::new();
            push_padded(&mut s, n % 1000, 3);
            assert_eq!(s, format!("{:03}", n % 1000));
        }
        for ms in [
            0.0,
            0.0004,
            0.0005,
            0.001,
            0.999_6,
            1.5,
            12.345_6,
            1_234.000_4,
            86_400_000.0,
        ] {
            let mut s = String::new();
            push_millis(&mut s, ms);
            assert_eq!(s, format!("{ms:.3}"), "{ms}");
        }
        for ip in [
            "0.0.0.0",
            "192.0.2.1",
            "255.255.255.255",
            "::1",
            "2001:db8::7",
        ] {
            let ip: IpAddr = ip.parse().expect("ip");
            let mut s = String::new();
            push_ip(&mut s, ip);
            assert_eq!(s, ip.to_string());
        }
        let mut s = String::new();
        rfc3339(&mut s, SystemTime::UNIX_EPOCH);
        assert_eq!(s, "1970-01-01T00:00:00.000000Z");
    }

    #[test]
    fn json_line_parses_and_escapes() {
        let mut s = String::new();
        let mut r = record();
        r.at = SystemTime::UNIX_EPOCH + Duration::from_micros(1_764_072_206_813_311);
        format_json(&mut s, &r);
        assert!(s.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&s).expect("valid JSON");
        assert_eq!(v["timestamp"], "2025-11-25T12:03:26.813311Z");
        assert_eq!(v["path"], "/v1/\"chat\"\n");
        assert_eq!(v["status"], 200);
        assert_eq!(v["duration_ms"], 12.346);
        assert_eq!(v["target"], "ragscope::access");
        assert!(v.get("error_type").is_none());
    }

    #[test]
    fn control_characters_are_escaped() {
        let mut s = String::new();
        json_str(&mut s, "a\u{1}b\u{7f}");
        assert_eq!(s, "\"a\\u0001b\u{7f}\"");
    }

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(20_515), (2026, 3, 3));
    }

    #[test]
    fn text_line() {
        let mut s = String::new();
        let mut r = record();
        r.status = None;
        r.error_type = Some("upstream_timeout");
        format_text(&mut s, &r);
        assert!(
            s.starts_with("1970-01-01T00:00:00.000000Z  INFO ragscope::access: "),
            "{s}"
        );
        assert!(s.contains(" status=- "), "{s}");
        assert!(s.contains(" error_type=upstream_timeout "), "{s}");
    }
}
