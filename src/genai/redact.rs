//! Redaction of captured content: what a user typed or a model answered may hold e-mail
//! addresses, payment cards, bearer tokens or API keys, and none of them may reach a trace
//! backend. Each match becomes `[REDACTED:<kind>]`; the caller counts the matches.

use std::borrow::Cow;

use regex::Regex;

/// The built-in patterns, by kind.
const DEFAULTS: &[(&str, &str)] = &[
    ("bearer", r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{8,}"),
    (
        "api_key",
        r#"(?i)\b(?:api[_-]?key|secret|token|password|passwd)\s*[:=]\s*["']?[^\s"',;]{6,}"#,
    ),
    (
        "api_key",
        r"\b(?:sk|pk|rk)-[A-Za-z0-9_-]{16,}|\bAKIA[0-9A-Z]{16}\b|\bgh[pousr]_[A-Za-z0-9]{30,}|\bxox[abprs]-[A-Za-z0-9-]{10,}|\bAIza[0-9A-Za-z_-]{35}",
    ),
    (
        "email",
        r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
    ),
    // Checked with Luhn before it is replaced, so order numbers and timestamps survive.
    ("card", r"\b(?:\d[ -]?){12,18}\d\b"),
];

/// The compiled patterns.
#[derive(Debug, Clone)]
pub struct Redactor {
    patterns: Vec<(&'static str, Regex)>,
}

impl Redactor {
    /// The built-in patterns plus `extra` ones (kind `custom`). An invalid extra pattern is
    /// the error, as text for the configuration message.
    pub fn new(extra: &[String]) -> Result<Redactor, String> {
        let mut patterns = Vec::with_capacity(DEFAULTS.len() + extra.len());
        for (kind, p) in DEFAULTS {
            // The built-in patterns are constants covered by the tests below.
            patterns.push((*kind, Regex::new(p).map_err(|e| e.to_string())?));
        }
        for p in extra {
            patterns.push(("custom", Regex::new(p).map_err(|e| format!("{p:?}: {e}"))?));
        }
        Ok(Redactor { patterns })
    }

    /// `text` with every match replaced, and how many replacements of each kind were made.
    pub fn redact<'a>(&self, text: &'a str, counts: &mut Vec<(&'static str, u64)>) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        for (kind, re) in &self.patterns {
            let mut n = 0;
            let replaced = re.replace_all(&out, |c: &regex::Captures<'_>| {
                let m = &c[0];
                if *kind == "card" && !luhn(m) {
                    return m.to_owned();
                }
                n += 1;
                format!("[REDACTED:{kind}]")
            });
            if n > 0 {
                let owned = replaced.into_owned();
                out = Cow::Owned(owned);
                match counts.iter_mut().find(|(k, _)| k == kind) {
                    Some((_, c)) => *c += n,
                    None => counts.push((kind, n)),
                }
            }
        }
        out
    }
}

/// The Luhn checksum payment card numbers carry.
fn luhn(s: &str) -> bool {
    let digits: Vec<u32> = s.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let d = d * 2;
                if d > 9 { d - 9 } else { d }
            } else {
                d
            }
        })
        .sum();
    sum % 10 == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redact(r: &Redactor, s: &str) -> (String, Vec<(&'static str, u64)>) {
        let mut counts = Vec::new();
        let out = r.redact(s, &mut counts).into_owned();
        (out, counts)
    }

    #[test]
    fn defaults_cover_the_usual_secrets() {
        let r = Redactor::new(&[]).expect("defaults compile");
        let (out, counts) = redact(
            &r,
            "mail ann.lee+x@example.co.uk, card 4111 1111 1111 1111, \
             Authorization: Bearer eyJhbGciOi.xyz, key sk-abcdefghijklmnop1234, api_key=hunter2xyz",
        );
        assert_eq!(
            out,
            "mail [REDACTED:email], card [REDACTED:card], Authorization: [REDACTED:bearer], \
             key [REDACTED:api_key], [REDACTED:api_key]"
        );
        let total: u64 = counts.iter().map(|(_, n)| n).sum();
        assert_eq!(total, 5);
    }

    #[test]
    fn numbers_that_are_not_cards_survive() {
        let r = Redactor::new(&[]).expect("defaults compile");
        let (out, counts) = redact(&r, "order 1234567890123 at 2024-01-01, plain text é");
        assert_eq!(out, "order 1234567890123 at 2024-01-01, plain text é");
        assert!(counts.is_empty());
    }

    #[test]
    fn extra_patterns_apply_and_bad_ones_are_rejected() {
        let r = Redactor::new(&[r"EMP-\d{4}".to_owned()]).expect("compiles");
        let (out, counts) = redact(&r, "employee EMP-1234");
        assert_eq!(out, "employee [REDACTED:custom]");
        assert_eq!(counts, vec![("custom", 1)]);
        assert!(Redactor::new(&["(".to_owned()]).is_err());
    }
}
