//! `Content-Encoding` undone on the observation copy (issue 12): gzip, deflate, br and zstd,
//! stacked in any order, decoded as the copy is fed, never on the bytes that go to the client
//! or the upstream (those pass as they came).
//!
//! Decompression bombs are the reason this is bounded: the decoded bytes go into a [`Tee`], so
//! they count against `RAGSCOPE_PARSE_MAX_BYTES` (per body, or per fed chunk of a stream) and
//! are reserved from `RAGSCOPE_PARSE_BUDGET`; the moment more would come out, decoding stops
//! with [`DecodeError::TooLarge`], having produced at most the bound (decoders write their output
//! in pieces of their internal buffer, so a gigabyte of zeros is never inflated past it). The
//! zstd window is capped at 8 MiB, as RFC 9659 asks of HTTP decoders, and at most
//! [`MAX_STACKED`] codings are undone.

use std::io::{self, Write};

use http::{HeaderMap, header};

use super::Tee;

/// Most codings undone on one body; more is not something a real server sends.
pub const MAX_STACKED: usize = 3;
/// The largest zstd window accepted (RFC 9659: 8 MiB), as a power of two.
const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// One content coding ragscope can undo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    /// `gzip` (and `x-gzip`), members concatenated allowed.
    Gzip,
    /// `deflate`: zlib as RFC 9110 says, or the raw deflate some servers send.
    Deflate,
    /// `br`.
    Brotli,
    /// `zstd`.
    Zstd,
}

/// What a head's `Content-Encoding` says about its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Encoding {
    /// No coding (or only `identity`): the bytes are the body.
    Identity,
    /// These codings, in the order they were applied.
    Coded(Vec<Coding>),
    /// A coding ragscope does not undo (or too many stacked): the body is not read.
    Unknown,
}

impl Encoding {
    /// Reads `Content-Encoding` from `headers`.
    pub fn of(headers: &HeaderMap) -> Encoding {
        let mut codings = Vec::new();
        for value in headers.get_all(header::CONTENT_ENCODING) {
            let Ok(value) = value.to_str() else {
                return Encoding::Unknown;
            };
            for token in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                let coding = match token.to_ascii_lowercase().as_str() {
                    "identity" => continue,
                    "gzip" | "x-gzip" => Coding::Gzip,
                    "deflate" => Coding::Deflate,
                    "br" => Coding::Brotli,
                    "zstd" => Coding::Zstd,
                    _ => return Encoding::Unknown,
                };
                codings.push(coding);
            }
        }
        match codings.len() {
            0 => Encoding::Identity,
            n if n > MAX_STACKED => Encoding::Unknown,
            _ => Encoding::Coded(codings),
        }
    }
}

/// Why decoding stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// More would come out than the bound allows (or the parse budget has room for).
    #[error("the decoded body is larger than RAGSCOPE_PARSE_MAX_BYTES")]
    TooLarge,
    /// The parse budget had no room for the decoded bytes.
    #[error("RAGSCOPE_PARSE_BUDGET has no room for the decoded body")]
    NoBudget,
    /// The bytes are not what the coding says.
    #[error("the body does not decode as its Content-Encoding says")]
    Corrupt,
}

/// A decoder for one body: compressed bytes in, decoded bytes into its [`Tee`].
pub struct Decoder {
    stage: Stage,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder").finish_non_exhaustive()
    }
}

impl Decoder {
    /// Undoes `codings` (in the order they were applied), writing into `out`.
    pub fn new(codings: &[Coding], out: Tee) -> Result<Decoder, DecodeError> {
        let mut stage = Stage::Sink(out);
        // The last coding applied is the first undone: it wraps the others.
        for coding in codings {
            stage = match coding {
                Coding::Gzip => Stage::Gzip(Box::new(flate2::write::MultiGzDecoder::new(stage))),
                Coding::Deflate => Stage::Deflate(Box::new(Deflate::Undecided(Vec::new(), stage))),
                Coding::Brotli => Stage::Brotli(Box::new(
                    brotli_decompressor::DecompressorWriter::new(stage, 4096),
                )),
                Coding::Zstd => {
                    let mut raw =
                        zstd::stream::raw::Decoder::new().map_err(|_| DecodeError::Corrupt)?;
                    raw.set_parameter(zstd::stream::raw::DParameter::WindowLogMax(
                        ZSTD_WINDOW_LOG_MAX,
                    ))
                    .map_err(|_| DecodeError::Corrupt)?;
                    Stage::Zstd(Box::new(zstd::stream::write::Decoder::with_decoder(
                        stage, raw,
                    )))
                }
            };
        }
        Ok(Decoder { stage })
    }

    /// Decodes the next compressed bytes; what they decode to is appended to the tee. Every
    /// decoded byte is handed on before this returns (nothing is held in a decoder's buffer).
    pub fn feed(&mut self, input: &[u8]) -> Result<(), DecodeError> {
        let written = self
            .stage
            .write_all(input)
            .and_then(|()| self.stage.flush());
        written.map_err(|e| self.why(&e))
    }

    /// The decoded bytes so far, to read or take.
    pub fn out(&mut self) -> &mut Tee {
        self.stage.sink()
    }

    /// The tee, once the body has been fed whole.
    pub fn into_out(self) -> Tee {
        self.stage.into_sink()
    }

    fn why(&mut self, _error: &io::Error) -> DecodeError {
        let tee = self.stage.sink();
        if tee.skipped {
            DecodeError::NoBudget
        } else if tee.truncated {
            DecodeError::TooLarge
        } else {
            DecodeError::Corrupt
        }
    }
}

/// What a copy holds to parse: its own bytes, or what they decode to.
pub(super) enum Body<'a> {
    /// Not compressed: the copy is the body.
    Plain(&'a Tee),
    /// Its codings undone, into a tee of its own (the same bound and budget).
    Decoded(Tee),
}

impl Body<'_> {
    /// The bytes to parse.
    pub(super) fn bytes(&self) -> &[u8] {
        match self {
            Body::Plain(tee) => tee.bytes(),
            Body::Decoded(tee) => tee.bytes(),
        }
    }
}

/// Where a copy that could not be parsed says why: (truncated, budget skipped, parse error).
pub(super) type Notes<'a> = (&'a mut bool, &'a mut bool, &'a mut Option<&'static str>);

/// The body `copy` holds with `encoding` undone, or `None` when there is nothing to parse: an
/// empty copy, one past the bound (or decoding to more), no room in the budget, or bytes that
/// are not what the coding says (`malformed`); each noted in `notes`.
pub(super) fn body<'a>(
    encoding: &Encoding,
    copy: &'a Tee,
    malformed: &'static str,
    notes: Notes<'_>,
) -> Option<Body<'a>> {
    if copy.truncated {
        *notes.0 = true;
        return None;
    }
    if copy.buf.is_empty() {
        return None;
    }
    let Encoding::Coded(codings) = encoding else {
        return Some(Body::Plain(copy));
    };
    let decoded = Decoder::new(codings, Tee::new(copy.limit, copy.budget.clone()))
        .and_then(|mut d| d.feed(&copy.buf).map(|()| d.into_out()));
    match decoded {
        Ok(tee) => Some(Body::Decoded(tee)),
        Err(e) => {
            e.note(notes, malformed);
            None
        }
    }
}

impl DecodeError {
    /// Notes this error where a copy says why it was not parsed (`malformed`: the parse error
    /// of a body that does not decode).
    pub(super) fn note(
        self,
        (truncated, budget_skipped, parse_error): Notes<'_>,
        malformed: &'static str,
    ) {
        match self {
            DecodeError::TooLarge => *truncated = true,
            DecodeError::NoBudget => *budget_skipped = true,
            DecodeError::Corrupt => *parse_error = Some(malformed),
        }
    }
}

/// One decoding step, writing what it decodes into the next (the innermost is the tee).
enum Stage {
    Sink(Tee),
    Gzip(Box<flate2::write::MultiGzDecoder<Stage>>),
    Deflate(Box<Deflate>),
    Brotli(Box<brotli_decompressor::DecompressorWriter<Stage>>),
    Zstd(Box<zstd::stream::write::Decoder<'static, Stage>>),
}

/// `deflate` is zlib-wrapped per RFC 9110, but some servers send raw deflate; the first two
/// bytes tell which (a zlib header is method 8 with a check of 31).
enum Deflate {
    Undecided(Vec<u8>, Stage),
    Zlib(flate2::write::ZlibDecoder<Stage>),
    Raw(flate2::write::DeflateDecoder<Stage>),
}

impl Deflate {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Deflate::Undecided(head, _) = self {
            head.extend_from_slice(buf);
            if head.len() < 2 {
                return Ok(buf.len());
            }
            let zlib = head[0] & 0x0f == 8 && u16::from_be_bytes([head[0], head[1]]) % 31 == 0;
            let head = std::mem::take(head);
            let placeholder = Deflate::Undecided(Vec::new(), Stage::Sink(Tee::empty()));
            let Deflate::Undecided(_, next) = std::mem::replace(self, placeholder) else {
                unreachable!("checked above");
            };
            *self = if zlib {
                Deflate::Zlib(flate2::write::ZlibDecoder::new(next))
            } else {
                Deflate::Raw(flate2::write::DeflateDecoder::new(next))
            };
            self.write_all(&head)?;
            return Ok(buf.len());
        }
        match self {
            Deflate::Zlib(d) => d.write(buf),
            Deflate::Raw(d) => d.write(buf),
            Deflate::Undecided(..) => Ok(buf.len()),
        }
    }

    fn write_all(&mut self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            match self.write(buf)? {
                0 => return Err(io::ErrorKind::WriteZero.into()),
                n => buf = &buf[n..],
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Deflate::Zlib(d) => d.flush(),
            Deflate::Raw(d) => d.flush(),
            Deflate::Undecided(_, next) => next.flush(),
        }
    }

    fn next(&mut self) -> &mut Stage {
        match self {
            Deflate::Zlib(d) => d.get_mut(),
            Deflate::Raw(d) => d.get_mut(),
            Deflate::Undecided(_, next) => next,
        }
    }
}

impl Stage {
    fn sink(&mut self) -> &mut Tee {
        match self {
            Stage::Sink(tee) => tee,
            Stage::Gzip(d) => d.get_mut().sink(),
            Stage::Deflate(d) => d.next().sink(),
            Stage::Brotli(d) => d.get_mut().sink(),
            Stage::Zstd(d) => d.get_mut().sink(),
        }
    }

    fn into_sink(mut self) -> Tee {
        std::mem::replace(self.sink(), Tee::empty())
    }
}

impl Write for Stage {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let taken = match self {
            Stage::Sink(tee) => {
                tee.push(buf);
                if tee.truncated || tee.skipped {
                    return Err(io::Error::other("decoded past the bound"));
                }
                return Ok(buf.len());
            }
            Stage::Gzip(d) => d.write(buf),
            Stage::Deflate(d) => d.write(buf),
            Stage::Brotli(d) => d.write(buf),
            Stage::Zstd(d) => d.write(buf),
        }?;
        // A decoder whose stream has ended (or failed once) takes nothing more and says so
        // with `Ok(0)`. brotli-decompressor's writer hands its output on with a `write_all`
        // of its own that retries `Ok(0)` for ever, so a br stage decoding into a stage that
        // has finished (bytes after the end of an inner stream) would spin without bound:
        // taking nothing from a non-empty buffer is an error here, for every stage.
        if taken == 0 && !buf.is_empty() {
            return Err(io::ErrorKind::WriteZero.into());
        }
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stage::Sink(_) => Ok(()),
            Stage::Gzip(d) => d.flush(),
            Stage::Deflate(d) => d.flush(),
            Stage::Brotli(d) => d.flush(),
            Stage::Zstd(d) => d.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::genai::ParseBudget;

    fn tee(limit: usize) -> Tee {
        Tee::new(limit, Arc::new(ParseBudget::new(64 << 20)))
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).expect("compresses");
        e.finish().expect("finishes")
    }

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_ENCODING, value.parse().expect("value"));
        h
    }

    #[test]
    fn content_encoding_is_read_in_order_and_unknown_codings_say_so() {
        use Coding::*;
        assert_eq!(Encoding::of(&HeaderMap::new()), Encoding::Identity);
        assert_eq!(Encoding::of(&headers("identity")), Encoding::Identity);
        assert_eq!(Encoding::of(&headers("GZIP")), Encoding::Coded(vec![Gzip]));
        assert_eq!(
            Encoding::of(&headers("deflate, br,zstd")),
            Encoding::Coded(vec![Deflate, Brotli, Zstd])
        );
        assert_eq!(Encoding::of(&headers("compress")), Encoding::Unknown);
        assert_eq!(
            Encoding::of(&headers("gzip, gzip, gzip, gzip")),
            Encoding::Unknown
        );
    }

    #[test]
    fn gzip_split_anywhere_decodes_whole() {
        let body = br#"{"usage":{"prompt_tokens":3}}"#.repeat(50);
        let packed = gzip(&body);
        for split in [1, 3, 64, packed.len()] {
            let mut d = Decoder::new(&[Coding::Gzip], tee(1 << 20)).expect("decoder");
            for chunk in packed.chunks(split) {
                d.feed(chunk).expect("decodes");
            }
            assert_eq!(d.into_out().buf, body, "split {split}");
        }
    }

    /// `data` compressed with `coding` by the encoders the tests use.
    fn pack(coding: Coding, data: &[u8]) -> Vec<u8> {
        match coding {
            Coding::Gzip => gzip(data),
            Coding::Deflate => {
                let mut e =
                    flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(data).expect("zlib");
                e.finish().expect("zlib")
            }
            Coding::Brotli => {
                let mut e = brotli::CompressorWriter::new(Vec::new(), 4096, 5, 22);
                e.write_all(data).expect("br");
                e.into_inner()
            }
            Coding::Zstd => zstd::encode_all(data, 3).expect("zstd"),
        }
    }

    #[test]
    fn every_coding_and_a_stack_decode_the_same_however_the_input_is_split() {
        use Coding::*;
        let body = br#"data: {"choices":[{"delta":{"content":"hi"}}]}"#.repeat(40);
        for codings in [
            vec![Gzip],
            vec![Deflate],
            vec![Brotli],
            vec![Zstd],
            vec![Brotli, Gzip],
            vec![Zstd, Deflate, Brotli],
        ] {
            let packed = codings.iter().fold(body.clone(), |data, c| pack(*c, &data));
            for split in [1, 5, 100, packed.len()] {
                let mut d = Decoder::new(&codings, tee(1 << 20)).expect("decoder");
                for chunk in packed.chunks(split) {
                    d.feed(chunk).expect("decodes");
                }
                assert_eq!(d.into_out().buf, body, "{codings:?} split {split}");
            }
        }
    }

    #[test]
    fn raw_and_zlib_deflate_both_decode() {
        let body = b"data: {\"x\":1}\n\n".repeat(20);
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(&body).expect("zlib");
        let mut r = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        r.write_all(&body).expect("raw");
        for packed in [z.finish().expect("zlib"), r.finish().expect("raw")] {
            let mut d = Decoder::new(&[Coding::Deflate], tee(1 << 20)).expect("decoder");
            for chunk in packed.chunks(1) {
                d.feed(chunk).expect("decodes");
            }
            assert_eq!(d.into_out().buf, body);
        }
    }

    #[test]
    fn a_bomb_stops_at_the_bound_having_decoded_no_more() {
        // 64 MiB of zeros in about 64 KiB.
        let packed = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            let zeros = vec![0u8; 1 << 20];
            for _ in 0..64 {
                e.write_all(&zeros).expect("compresses");
            }
            e.finish().expect("finishes")
        };
        assert!(packed.len() < 128 << 10, "{}", packed.len());
        let mut d = Decoder::new(&[Coding::Gzip], tee(1 << 20)).expect("decoder");
        let result = packed.chunks(16 << 10).try_for_each(|c| d.feed(c));
        assert_eq!(result, Err(DecodeError::TooLarge));
        assert!(d.out().buf.is_empty(), "a truncated copy holds nothing");
    }

    #[test]
    fn bytes_after_an_inner_stream_ends_are_corrupt_not_a_spin() {
        // Found by the `decode` fuzz target: br inside br, the inner stream complete before
        // the outer one ends. The outer decoder's writer used to retry the finished inner
        // decoder's `Ok(0)` for ever. It runs on a thread so a regression fails, not hangs.
        let mut inner = pack(Coding::Brotli, b"{}");
        inner.extend_from_slice(b"and then more bytes than the stream holds");
        let fuzzed = vec![
            5, 105, 245, 53, 53, 150, 255, 53, 250, 244, 202, 5, 202, 105,
        ];
        for (body, must_fail) in [(pack(Coding::Brotli, &inner), true), (fuzzed, false)] {
            let (done, result) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let mut d =
                    Decoder::new(&[Coding::Brotli, Coding::Brotli], tee(1 << 20)).expect("decoder");
                let _ = done.send(d.feed(&body));
            });
            let fed = result
                .recv_timeout(std::time::Duration::from_secs(30))
                .expect("decoding ends");
            assert!(fed.is_err() || !must_fail, "{fed:?}");
        }
    }

    #[test]
    fn garbage_is_corrupt_not_too_large() {
        for coding in [Coding::Gzip, Coding::Deflate, Coding::Brotli, Coding::Zstd] {
            let mut d = Decoder::new(&[coding], tee(1 << 20)).expect("decoder");
            let fed = d.feed(b"this is not compressed at all, not even a little");
            assert_eq!(fed, Err(DecodeError::Corrupt), "{coding:?}");
        }
    }
}
