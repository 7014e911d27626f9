//! The start-up error: one bad `RAGSCOPE_*` variable.

/// A `RAGSCOPE_*` variable that does not parse. Its message is the one line printed at start-up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {var}={value:?}: expected {expected}")]
pub struct ConfigError {
    /// The variable's name.
    pub var: &'static str,
    /// The value that was given.
    pub value: String,
    /// The accepted form, written for a person.
    pub expected: String,
}

impl ConfigError {
    /// The error for `var` holding `value`, which should have been `expected`.
    ///
    /// `expected` may quote another variable's value or a library's message (a regex error spans
    /// several lines), so it is made one line here, once for every caller: line breaks become
    /// spaces and other control characters are escaped. `value` is printed `{:?}`-quoted anyway.
    pub fn new(var: &'static str, value: impl Into<String>, expected: impl Into<String>) -> Self {
        ConfigError {
            var,
            value: value.into(),
            expected: one_line(&expected.into()),
        }
    }
}

/// `text` without line breaks (each run of them becomes one space) or raw control characters.
fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_break = false;
    for c in text.chars() {
        if c == '\n' || c == '\r' {
            if !in_break {
                out.push(' ');
            }
            in_break = true;
            continue;
        }
        in_break = false;
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_is_one_line_whatever_expected_quotes() {
        let e = ConfigError::new(
            "RAGSCOPE_X",
            "a\nb",
            "a path, because Y=\u{1c}0\n\r\n2s is set",
        );
        let line = e.to_string();
        assert!(!line.contains('\n') && !line.contains('\r'), "{line}");
        assert!(!line.contains('\u{1c}'), "{line}");
        assert_eq!(
            line,
            "invalid RAGSCOPE_X=\"a\\nb\": expected a path, because Y=\\u{1c}0 2s is set"
        );
    }
}
