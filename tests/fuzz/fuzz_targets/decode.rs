//! The Content-Encoding decoder of the observation copy on arbitrary bytes: one or two stacked
//! codings (chosen by the first byte), fed whole or in pieces. It never panics, never holds
//! more decoded bytes than its bound, gives every byte of the parse budget back, and decodes
//! the same bytes however the input is split.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use ragscope::genai::decode::{Coding, DecodeError, Decoder};
use ragscope::genai::{ParseBudget, Tee};

const BOUND: usize = 64 << 10;

fn coding(bits: u8) -> Coding {
    match bits & 3 {
        0 => Coding::Gzip,
        1 => Coding::Deflate,
        2 => Coding::Brotli,
        _ => Coding::Zstd,
    }
}

/// Decodes `data` fed in pieces of `split` bytes: what came out, or why it stopped.
fn run(codings: &[Coding], data: &[u8], split: usize) -> Result<Vec<u8>, DecodeError> {
    let budget = Arc::new(ParseBudget::new(1 << 20));
    let result = (|| {
        let mut decoder = Decoder::new(codings, Tee::new(BOUND, budget.clone()))?;
        for piece in data.chunks(split) {
            decoder.feed(piece)?;
            assert!(decoder.out().bytes().len() <= BOUND);
        }
        Ok(decoder.into_out().bytes().to_vec())
    })();
    assert_eq!(budget.in_use(), 0, "the budget is given back");
    result
}

fuzz_target!(|input: &[u8]| {
    let Some((&selector, data)) = input.split_first() else {
        return;
    };
    let codings: Vec<Coding> = if selector & 0x80 != 0 {
        vec![coding(selector >> 2), coding(selector)]
    } else {
        vec![coding(selector)]
    };
    let split = usize::from((selector >> 4) & 7) * 7 + 1;
    let whole = run(&codings, data, data.len().max(1));
    let pieces = run(&codings, data, split);
    if let Ok(whole) = whole {
        assert_eq!(pieces, Ok(whole), "the same bytes however the input is split");
    }
});
