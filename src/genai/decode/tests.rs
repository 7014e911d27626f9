//! Decoding on the observation copy: `Content-Encoding` read in order, every coding and stacks
//! of them however the input is split, both deflate framings, bombs stopped at the bound,
//! garbage and trailing bytes reported as corrupt.

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
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
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
