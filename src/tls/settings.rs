//! Listener TLS settings (`RAGSCOPE_TLS_*`): certificate and key files, the client CA that turns
//! on mTLS, and the handshake deadline.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::{ConfigError, Reader, Source};

/// The listener's certificate chain and private key (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// `RAGSCOPE_TLS_CERT`: the certificate chain, leaf first.
    pub cert: PathBuf,
    /// `RAGSCOPE_TLS_KEY`: the private key (PKCS#8, SEC1 or RSA).
    pub key: PathBuf,
}

/// TLS on the listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `RAGSCOPE_TLS_CERT` and `RAGSCOPE_TLS_KEY`: TLS on the listener when both are set.
    pub files: Option<TlsFiles>,
    /// `RAGSCOPE_TLS_CLIENT_CA`: CA bundle; set = a valid client certificate is required.
    pub client_ca: Option<PathBuf>,
    /// `RAGSCOPE_TLS_HANDSHAKE_TIMEOUT`: a client must finish the TLS handshake within this.
    pub handshake_timeout: Duration,
}

impl Settings {
    /// Reads the TLS settings: certificate and key come as a pair, and a client CA needs both.
    pub fn from_reader<S: Source + ?Sized>(r: &Reader<'_, S>) -> Result<Settings, ConfigError> {
        let half = |missing: &'static str, given: &str, what: &str, path: &PathBuf| {
            ConfigError::new(
                missing,
                "",
                format!(
                    "{what}, because {given}={:?} is set (set both or neither)",
                    path.display().to_string()
                ),
            )
        };
        let files = match (r.path("RAGSCOPE_TLS_CERT"), r.path("RAGSCOPE_TLS_KEY")) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            (Some(cert), None) => {
                return Err(half(
                    "RAGSCOPE_TLS_KEY",
                    "RAGSCOPE_TLS_CERT",
                    "the private key file",
                    &cert,
                ));
            }
            (None, Some(key)) => {
                return Err(half(
                    "RAGSCOPE_TLS_CERT",
                    "RAGSCOPE_TLS_KEY",
                    "the certificate file",
                    &key,
                ));
            }
        };
        let client_ca = r.path("RAGSCOPE_TLS_CLIENT_CA");
        if let (Some(ca), None) = (&client_ca, &files) {
            return Err(ConfigError::new(
                "RAGSCOPE_TLS_CLIENT_CA",
                ca.display().to_string(),
                "to be set only together with RAGSCOPE_TLS_CERT and RAGSCOPE_TLS_KEY (client certificates need TLS)",
            ));
        }
        Ok(Settings {
            files,
            client_ca,
            handshake_timeout: r.duration_in(
                "RAGSCOPE_TLS_HANDSHAKE_TIMEOUT",
                Duration::from_secs(10),
                Duration::from_millis(1)..,
            )?,
        })
    }
}
