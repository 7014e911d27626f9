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
use stage::Stage;

mod stage;
#[cfg(test)]
mod tests;

/// Most codings undone on one body; more is not something a real server sends.
pub const MAX_STACKED: usize = 3;

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
        Ok(Decoder {
            stage: Stage::chain(codings, out)?,
        })
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
