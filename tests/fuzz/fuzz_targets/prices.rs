//! The `RAGSCOPE_PRICES` parser on arbitrary bytes: an error is fine, a panic is not; whatever
//! parses prices any usage at a finite, non-negative cost, and matching a model cannot hang.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ragscope::genai::prices::{Usage, glob, parse};

fuzz_target!(|data: &[u8]| {
    let Ok(table) = parse(data) else { return };
    let name = String::from_utf8_lossy(data);
    let name = name.lines().next().unwrap_or_default();
    if let Some(price) = table.find([name, "gpt-4o-mini"]) {
        assert!(glob(&price.pattern, name) || glob(&price.pattern, "gpt-4o-mini"));
        let cost = price.cost(Usage {
            input: 1_000_000,
            output: 500,
            cache_read: 2_000_000,
            cache_write: 7,
        });
        assert!(cost.amount.is_finite() && cost.amount >= 0.0, "{cost:?}");
    }
});
