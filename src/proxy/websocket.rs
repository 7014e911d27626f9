//! Reading WebSocket frame headers as an upgraded session's bytes pass (RFC 6455 5.2), only to
//! learn which side started the closing handshake: at the TCP level the server closes first
//! whoever asked (RFC 6455 7.1.1), so the first Close frame is what says who ended the
//! session. Payloads are skipped over, never looked into; nothing is buffered past the 14
//! bytes of one frame header, and the bytes themselves pass untouched.

/// The frames of one direction of a WebSocket session, read as they pass.
#[derive(Debug, Default)]
pub(super) struct FrameScanner {
    /// The header being read (at most 14 bytes: 2, 8 of extended length, 4 of mask key).
    header: [u8; 14],
    have: usize,
    /// Payload bytes still to skip before the next header.
    skip: u64,
    /// A Close frame went this way.
    closed: bool,
}

/// Close (RFC 6455 5.5.1).
const OPCODE_CLOSE: u8 = 0x8;

impl FrameScanner {
    /// Whether a Close frame has gone by in this direction.
    pub(super) fn saw_close(&self) -> bool {
        self.closed
    }

    /// Reads the next bytes of this direction.
    pub(super) fn scan(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && !self.closed {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len() as u64);
                self.skip -= n;
                bytes = &bytes[n as usize..];
                continue;
            }
            let need = self.header_len();
            let take = (need - self.have).min(bytes.len());
            self.header[self.have..self.have + take].copy_from_slice(&bytes[..take]);
            self.have += take;
            bytes = &bytes[take..];
            // The length of the header is known only once its first two bytes are in.
            if self.have == need && need == self.header_len() {
                self.frame_header_done();
            }
        }
    }

    /// How long the header being read is, as far as is known yet.
    fn header_len(&self) -> usize {
        if self.have < 2 {
            return 2;
        }
        let extended = match self.header[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
        2 + extended + mask
    }

    fn frame_header_done(&mut self) {
        let h = &self.header;
        if h[0] & 0x0f == OPCODE_CLOSE {
            self.closed = true;
        }
        self.skip = match h[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
            127 => u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
            n => u64::from(n),
        };
        self.have = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame as a client (masked) or a server (unmasked) writes it.
    fn frame(opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
        let mut out = vec![0x80 | opcode];
        let mask_bit = if masked { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => out.push(mask_bit | n as u8),
            n if n <= 0xffff => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if masked {
            out.extend_from_slice(&[1, 2, 3, 4]);
        }
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn finds_the_close_frame_after_frames_of_every_length_split_anywhere() {
        let mut stream = Vec::new();
        // Payloads that hold a byte looking like a Close header must be skipped over.
        stream.extend(frame(0x1, &[0x88; 5], true));
        stream.extend(frame(0x2, &[0x88; 300], true));
        stream.extend(frame(0x2, &vec![0x88; 70_000], true));
        // The Close frame's header (2 bytes, then the 4-byte mask key) ends here.
        let header_end = stream.len() + 6;
        stream.extend(frame(OPCODE_CLOSE, &[0x03, 0xe8], true));
        for split in [1, 2, 3, 7, 13, 4096] {
            let mut scanner = FrameScanner::default();
            for (i, chunk) in stream.chunks(split).enumerate() {
                scanner.scan(chunk);
                let seen = ((i + 1) * split).min(stream.len());
                assert_eq!(
                    scanner.saw_close(),
                    seen >= header_end,
                    "split {split} at {seen}"
                );
            }
            assert!(scanner.saw_close());
        }
    }

    #[test]
    fn data_frames_are_not_a_close() {
        let mut scanner = FrameScanner::default();
        scanner.scan(&frame(0x1, b"hello", false));
        scanner.scan(&frame(0x9, b"", false));
        assert!(!scanner.saw_close());
        scanner.scan(&frame(OPCODE_CLOSE, b"", false));
        assert!(scanner.saw_close());
    }
}
