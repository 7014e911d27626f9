//! An incremental Server-Sent Events parser: bytes go in as they arrive (split anywhere, even
//! inside a CRLF or a multi-byte character), complete events come out.
//!
//! It follows the WHATWG event-stream rules that matter for observation: lines end with CRLF, LF
//! or CR; a leading BOM is skipped; `data:` lines are joined with `\n`; a blank line dispatches;
//! comment lines (`:`) and other fields are ignored. Memory is bounded: an event whose data grows
//! past the limit is dropped whole and reported as truncated, never buffered without end.

/// One dispatched event: its `data` lines joined by `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The data, as bytes (usually UTF-8 JSON, but nothing is assumed here).
    pub data: Vec<u8>,
}

/// What a call to [`SseParser::feed`] found besides events.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FeedReport {
    /// An event went past the size limit and was dropped.
    pub truncated: bool,
}

/// The parser's state between chunks.
#[derive(Debug)]
pub struct SseParser {
    /// The current, not yet terminated line.
    line: Vec<u8>,
    /// The data of the event being assembled.
    data: Vec<u8>,
    /// Whether the event being assembled has any `data` field.
    has_data: bool,
    /// The previous chunk ended in CR: a LF at the start of the next one belongs to it.
    after_cr: bool,
    /// Still at the very start of the stream (a BOM may follow).
    at_start: bool,
    /// The current event went past the limit: ignore its lines until the blank line.
    overflowed: bool,
    /// Most bytes one event (line plus data) may hold.
    limit: usize,
}

impl SseParser {
    /// A parser that holds at most `limit` bytes for one event.
    pub fn new(limit: usize) -> Self {
        SseParser {
            line: Vec::new(),
            data: Vec::new(),
            has_data: false,
            after_cr: false,
            at_start: true,
            overflowed: false,
            limit,
        }
    }

    /// Feeds the next chunk of the stream, calling `on_event` for each event it completes.
    pub fn feed(&mut self, mut chunk: &[u8], mut on_event: impl FnMut(Event)) -> FeedReport {
        let mut report = FeedReport::default();
        if self.at_start && !chunk.is_empty() {
            // The BOM may itself arrive split; keep the bytes until we can tell.
            const BOM: &[u8] = b"\xEF\xBB\xBF";
            let have = self.line.len();
            let need = BOM.len() - have;
            let take = need.min(chunk.len());
            if BOM[have..have + take] == chunk[..take] {
                if have + take == BOM.len() {
                    self.line.clear();
                    self.at_start = false;
                    chunk = &chunk[take..];
                } else {
                    self.line.extend_from_slice(&chunk[..take]);
                    return report;
                }
            } else {
                self.at_start = false;
            }
        }
        while !chunk.is_empty() {
            if self.after_cr {
                self.after_cr = false;
                if chunk[0] == b'\n' {
                    chunk = &chunk[1..];
                    continue;
                }
            }
            match chunk.iter().position(|&b| b == b'\n' || b == b'\r') {
                Some(i) => {
                    self.push_line_bytes(&chunk[..i], &mut report);
                    self.after_cr = chunk[i] == b'\r';
                    chunk = &chunk[i + 1..];
                    self.end_line(&mut on_event);
                }
                None => {
                    self.push_line_bytes(chunk, &mut report);
                    chunk = &[];
                }
            }
        }
        report
    }

    /// The stream ended. Per the spec an unterminated last event is discarded; nothing to do
    /// but release memory.
    pub fn finish(&mut self) {
        self.line = Vec::new();
        self.data = Vec::new();
    }

    fn push_line_bytes(&mut self, bytes: &[u8], report: &mut FeedReport) {
        if self.overflowed {
            return;
        }
        if self.line.len() + self.data.len() + bytes.len() > self.limit {
            self.overflowed = true;
            self.line = Vec::new();
            self.data = Vec::new();
            self.has_data = false;
            report.truncated = true;
            return;
        }
        self.line.extend_from_slice(bytes);
    }

    fn end_line(&mut self, on_event: &mut impl FnMut(Event)) {
        if self.line.is_empty() {
            // Blank line: dispatch.
            if self.overflowed {
                self.overflowed = false;
            } else if self.has_data {
                let data = std::mem::take(&mut self.data);
                on_event(Event { data });
            }
            self.data.clear();
            self.has_data = false;
            return;
        }
        if self.overflowed {
            self.line.clear();
            return;
        }
        let line = &self.line[..];
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(0) => {
                // A comment (keep-alives are often `: ping`).
                self.line.clear();
                return;
            }
            Some(i) => {
                let value = &line[i + 1..];
                (&line[..i], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        if field == b"data" {
            if self.has_data {
                self.data.push(b'\n');
            }
            self.data.extend_from_slice(value);
            self.has_data = true;
        }
        self.line.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_chunks(chunks: &[&[u8]], limit: usize) -> (Vec<String>, bool) {
        let mut p = SseParser::new(limit);
        let mut out = Vec::new();
        let mut truncated = false;
        for c in chunks {
            let r = p.feed(c, |e| {
                out.push(String::from_utf8_lossy(&e.data).into_owned())
            });
            truncated |= r.truncated;
        }
        (out, truncated)
    }

    const STREAM: &[u8] = "\u{FEFF}: keep-alive\r\ndata: {\"a\":1}\r\n\r\nevent: x\ndata: line1\ndata:line2\n\nid: 7\rdata: é€😀\r\rdata: [DONE]\n\n"
        .as_bytes();

    fn expected() -> Vec<String> {
        vec![
            "{\"a\":1}".to_owned(),
            "line1\nline2".to_owned(),
            "é€😀".to_owned(),
            "[DONE]".to_owned(),
        ]
    }

    #[test]
    fn whole_stream() {
        assert_eq!(parse_chunks(&[STREAM], 1 << 20), (expected(), false));
    }

    #[test]
    fn split_at_every_byte_boundary() {
        for i in 0..=STREAM.len() {
            let (a, b) = STREAM.split_at(i);
            assert_eq!(
                parse_chunks(&[a, b], 1 << 20),
                (expected(), false),
                "split at {i}"
            );
        }
    }

    #[test]
    fn split_at_every_pair_of_boundaries() {
        for i in 0..=STREAM.len() {
            for j in i..=STREAM.len() {
                let parts = [&STREAM[..i], &STREAM[i..j], &STREAM[j..]];
                assert_eq!(
                    parse_chunks(&parts, 1 << 20).0,
                    expected(),
                    "split at {i},{j}"
                );
            }
        }
    }

    #[test]
    fn one_byte_at_a_time() {
        let chunks: Vec<&[u8]> = STREAM.chunks(1).collect();
        assert_eq!(parse_chunks(&chunks, 1 << 20), (expected(), false));
    }

    #[test]
    fn truncated_stream_drops_the_unterminated_event() {
        let (events, _) = parse_chunks(&[b"data: 1\n\ndata: 2\n"], 1024);
        assert_eq!(events, vec!["1".to_owned()]);
    }

    #[test]
    fn an_oversized_event_is_dropped_and_reported_then_parsing_resumes() {
        let big = format!("data: {}\n\ndata: small\n\n", "x".repeat(100));
        let (events, truncated) = parse_chunks(&[big.as_bytes()], 50);
        assert_eq!(events, vec!["small".to_owned()]);
        assert!(truncated);
    }

    #[test]
    fn malformed_lines_are_ignored() {
        let (events, _) = parse_chunks(&[b"garbage\n\xff\xfe\nretry: x\n\ndata\n\n"], 1024);
        // A bare `data` field is an empty data line: an empty event.
        assert_eq!(events, vec![String::new()]);
    }

    #[test]
    fn not_a_bom_is_kept() {
        let (events, _) = parse_chunks(&[b"\xEF", b"data: x\n\n"], 1024);
        // 0xEF followed by `d` is not a BOM: it is part of a (bogus) field name.
        assert!(events.is_empty());
        let (events, _) = parse_chunks(&[b"\xEF\xBB", b"\xBFdata: x\n\n"], 1024);
        assert_eq!(events, vec!["x".to_owned()]);
    }
}
