//! `RAGSCOPE_EXTRACT` parsing and rule application on arbitrary input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ragscope::genai::extract;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (spec, body) = text.split_once('\n').unwrap_or((text, "{}"));
    let Ok(rules) = extract::parse_rules(spec) else {
        return;
    };
    let Ok(body) = serde_json::from_str::<serde_json::Value>(body) else {
        return;
    };
    for rule in rules {
        match rule.target {
            extract::Target::Attribute(_, kind) => {
                let _ = extract::extract(kind, &body, &rule.pointer);
            }
            extract::Target::Documents { id, score } => {
                let _ = extract::documents(&body, &rule.pointer, &id, &score);
            }
        }
    }
});
