//! The chain of streaming decoders behind a [`Decoder`](super::Decoder): one stage a coding,
//! each writing what it decodes into the next, the innermost the bounded tee. Every stage
//! refuses to take nothing from a non-empty buffer, so a finished inner stream cannot make an
//! outer one spin.

use std::io::{self, Write};

use super::{Coding, DecodeError, Tee};

/// The largest zstd window accepted (RFC 9659: 8 MiB), as a power of two.
const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// One decoding step, writing what it decodes into the next (the innermost is the tee).
pub(super) enum Stage {
    Sink(Tee),
    Gzip(Box<flate2::write::MultiGzDecoder<Stage>>),
    Deflate(Box<Deflate>),
    Brotli(Box<brotli_decompressor::DecompressorWriter<Stage>>),
    Zstd(Box<zstd::stream::write::Decoder<'static, Stage>>),
}

/// `deflate` is zlib-wrapped per RFC 9110, but some servers send raw deflate; the first two
/// bytes tell which (a zlib header is method 8 with a check of 31).
pub(super) enum Deflate {
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
    /// The chain that undoes `codings` (in the order they were applied) into `out`.
    pub(super) fn chain(codings: &[Coding], out: Tee) -> Result<Stage, DecodeError> {
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
        Ok(stage)
    }

    pub(super) fn sink(&mut self) -> &mut Tee {
        match self {
            Stage::Sink(tee) => tee,
            Stage::Gzip(d) => d.get_mut().sink(),
            Stage::Deflate(d) => d.next().sink(),
            Stage::Brotli(d) => d.get_mut().sink(),
            Stage::Zstd(d) => d.get_mut().sink(),
        }
    }

    pub(super) fn into_sink(mut self) -> Tee {
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
