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
    pub fn new(var: &'static str, value: impl Into<String>, expected: impl Into<String>) -> Self {
        ConfigError {
            var,
            value: value.into(),
            expected: expected.into(),
        }
    }
}
