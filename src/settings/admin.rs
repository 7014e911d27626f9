//! Admin listener access (`RAGSCOPE_ADMIN_TOKEN`): the bearer token the pages that show request
//! data require, enforced by [`crate::admin_auth`].

use crate::config::{ConfigError, Reader, Source};

/// The accepted form, also the error text (which never repeats the value).
const TOKEN_FORM: &str =
    "at least 16 visible ASCII characters without spaces (e.g. from `openssl rand -hex 32`)";

/// The admin token: a secret, so its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl AdminToken {
    /// The token's bytes, for the constant-time comparison.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(***)")
    }
}

/// Admin listener access settings.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AdminConfig {
    /// `RAGSCOPE_ADMIN_TOKEN`: bearer token for the admin pages that show request data.
    pub token: Option<AdminToken>,
}

impl AdminConfig {
    /// Reads `RAGSCOPE_ADMIN_TOKEN`; unset or empty = no token.
    pub fn from_reader<S: Source + ?Sized>(r: &Reader<'_, S>) -> Result<AdminConfig, ConfigError> {
        let token = r
            .parse("RAGSCOPE_ADMIN_TOKEN", "", TOKEN_FORM, |v| {
                if v.is_empty() {
                    return Some(None);
                }
                (v.len() >= 16 && v.bytes().all(|b| b.is_ascii_graphic()))
                    .then(|| Some(AdminToken(v.to_owned())))
            })
            // The value is a secret: the start-up line must not repeat it.
            .map_err(|e| ConfigError::new(e.var, "***", e.expected))?;
        Ok(AdminConfig { token })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(vars: &[(&str, &str)]) -> Result<AdminConfig, ConfigError> {
        AdminConfig::from_reader(&Reader::new(vars))
    }

    #[test]
    fn token_is_read_and_never_shown() {
        let c = read(&[("RAGSCOPE_ADMIN_TOKEN", "0123456789abcdef0123")]).expect("parse");
        assert_eq!(
            c.token.as_ref().map(AdminToken::as_bytes),
            Some(&b"0123456789abcdef0123"[..])
        );
        assert_eq!(format!("{:?}", c.token), "Some(AdminToken(***))");
        assert_eq!(read(&[]).expect("unset"), AdminConfig::default());
        assert_eq!(
            read(&[("RAGSCOPE_ADMIN_TOKEN", "")]).expect("empty"),
            AdminConfig::default()
        );
    }

    #[test]
    fn bad_tokens_stop_start_up_without_echoing_the_value() {
        for bad in ["short", "0123456789abcdef 0123", "0123456789abcdéf0123"] {
            let e = read(&[("RAGSCOPE_ADMIN_TOKEN", bad)]).expect_err(bad);
            assert_eq!(e.var, "RAGSCOPE_ADMIN_TOKEN");
            assert!(!e.to_string().contains(bad), "{e}");
        }
    }
}
