//! TLS on the listener (rustls, ring): TLS 1.2 and 1.3 with AEAD, forward-secret suites only,
//! ALPN `h2`/`http/1.1`, a handshake timeout, certificates reloaded from disk without a
//! restart, and optional client certificates (mTLS).
//!
//! Reload: a [`ResolvesServerCert`] hands each new handshake the certificate currently in
//! service (an `Arc<CertifiedKey>` swapped atomically); live connections keep the one they
//! were established with. [`crate::reload`] polls the files and swaps only a pair that parses
//! and whose key matches the certificate, so a broken or half-written pair never goes live.

mod settings;

pub use settings::{Settings, TlsFiles};

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use opentelemetry::KeyValue;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ProtocolVersion, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// A TLS file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read.
    #[error("cannot read {var} file {path}: {source}")]
    Read {
        /// The variable that named the file.
        var: &'static str,
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file holds no usable PEM content of the expected kind.
    #[error("{var} file {path}: {detail}")]
    Content {
        /// The variable that named the file.
        var: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong, for a person.
        detail: String,
    },
    /// rustls refused the configuration.
    #[error("cannot configure TLS: {0}")]
    Rustls(String),
}

/// The one crypto provider ragscope uses (ring; never aws-lc-rs, see REFERENCE.md).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parses a certificate chain and private key (PKCS#8, SEC1 or PKCS#1/RSA, PEM) into a
/// certified key whose private key is checked to match the first certificate.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the certificate file is not valid PEM: {e}"))?;
    if chain.is_empty() {
        return Err("the certificate file holds no CERTIFICATE block".to_owned());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
        format!("the key file holds no usable private key (PKCS#8, SEC1 or RSA PEM): {e}")
    })?;
    CertifiedKey::from_der(chain, key, &provider())
        .map_err(|e| format!("the key does not fit the certificate: {e}"))
}

/// Reads a PEM bundle of CA certificates (`RAGSCOPE_TLS_CLIENT_CA`, `RAGSCOPE_UPSTREAM_CA`).
pub fn load_ca_bundle(var: &'static str, path: &Path) -> Result<RootCertStore, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Read {
        var,
        path: path.to_owned(),
        source,
    })?;
    let content = |detail: String| TlsError::Content {
        var,
        path: path.to_owned(),
        detail,
    };
    parse_ca_bundle(&pem).map_err(content)
}

/// The CA certificates of a PEM bundle; the error says what is wrong with its contents.
pub fn parse_ca_bundle(pem: &[u8]) -> Result<RootCertStore, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not valid PEM: {e}"))?;
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err("holds no usable CA certificate".to_owned());
    }
    Ok(roots)
}

/// The system's CA certificates, and why there are none when there are none.
pub fn system_roots() -> (RootCertStore, Option<String>) {
    let native = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(native.certs);
    let why = roots.is_empty().then(|| {
        native
            .errors
            .first()
            .map(|e| e.to_string())
            .unwrap_or_else(|| "none installed".to_owned())
    });
    (roots, why)
}

/// Hands every new handshake the certificate currently in service.
#[derive(Debug)]
struct ReloadingCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ReloadingCert {
    fn get(&self) -> Arc<CertifiedKey> {
        // A poisoned lock still holds a valid certificate: a panic elsewhere must not stop TLS.
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set(&self, key: CertifiedKey) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(key);
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

/// Why a TLS handshake failed, as `error.type` in `ragscope.connection.errors`.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The client did not finish the handshake in time (a stalled or half ClientHello).
    #[error("TLS handshake not completed within {0:?}")]
    Timeout(Duration),
    /// The client presented no certificate, or one the client CA does not vouch for.
    #[error("client certificate refused: {0}")]
    ClientCertificate(std::io::Error),
    /// Anything else: not TLS at all, an unsupported version or suite, a reset.
    #[error("TLS handshake failed: {0}")]
    Failed(std::io::Error),
}

impl HandshakeError {
    /// Low-cardinality `error.type`.
    pub fn error_type(&self) -> &'static str {
        match self {
            HandshakeError::Timeout(_) => "tls_handshake_timeout",
            HandshakeError::ClientCertificate(_) => "tls_client_certificate",
            HandshakeError::Failed(_) => "tls_handshake",
        }
    }

    /// Whether this is routine noise (a peer that connected and left, like a TCP probe).
    pub fn is_routine(&self) -> bool {
        matches!(self, HandshakeError::Failed(e) if e.kind() == std::io::ErrorKind::UnexpectedEof)
    }
}

/// What one TLS connection negotiated, as span attributes built once per connection and
/// added to each of its requests' spans.
#[derive(Debug, Clone)]
pub struct TlsInfo {
    attributes: Vec<KeyValue>,
    client_subject: Option<String>,
}

impl TlsInfo {
    /// The semantic-convention attributes: `tls.protocol.name`, `tls.protocol.version`,
    /// `tls.cipher`, `tls.next_protocol`, `tls.resumed`, `tls.established`, and with mTLS
    /// `tls.client.subject` and `tls.client.issuer` (never the certificate itself).
    pub fn attributes(&self) -> &[KeyValue] {
        &self.attributes
    }

    /// The client certificate's subject (mTLS), as an RFC 4514 string.
    pub fn client_subject(&self) -> Option<&str> {
        self.client_subject.as_deref()
    }

    fn from_connection(conn: &rustls::ServerConnection) -> TlsInfo {
        let mut attributes = vec![
            KeyValue::new("tls.protocol.name", "tls"),
            KeyValue::new("tls.established", true),
            KeyValue::new(
                "tls.resumed",
                !matches!(conn.handshake_kind(), Some(rustls::HandshakeKind::Full)),
            ),
        ];
        if let Some(v) = conn.protocol_version().and_then(protocol_version) {
            attributes.push(KeyValue::new("tls.protocol.version", v));
        }
        if let Some(name) = conn
            .negotiated_cipher_suite()
            .and_then(|s| s.suite().as_str())
        {
            attributes.push(KeyValue::new("tls.cipher", iana_cipher_name(name)));
        }
        if let Some(alpn) = conn.alpn_protocol() {
            attributes.push(KeyValue::new(
                "tls.next_protocol",
                String::from_utf8_lossy(alpn).into_owned(),
            ));
        }
        let mut client_subject = None;
        if let Some(cert) = conn.peer_certificates().and_then(|c| c.first())
            && let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref())
        {
            let subject = parsed.subject().to_string();
            attributes.push(KeyValue::new("tls.client.subject", subject.clone()));
            attributes.push(KeyValue::new(
                "tls.client.issuer",
                parsed.issuer().to_string(),
            ));
            client_subject = Some(subject);
        }
        TlsInfo {
            attributes,
            client_subject,
        }
    }
}

fn protocol_version(v: ProtocolVersion) -> Option<&'static str> {
    match v {
        ProtocolVersion::TLSv1_2 => Some("1.2"),
        ProtocolVersion::TLSv1_3 => Some("1.3"),
        _ => None,
    }
}

/// rustls names TLS 1.3 suites `TLS13_*`; the IANA registry (which `tls.cipher` uses) `TLS_*`.
fn iana_cipher_name(rustls_name: &str) -> String {
    match rustls_name.strip_prefix("TLS13_") {
        Some(rest) => format!("TLS_{rest}"),
        None => rustls_name.to_owned(),
    }
}

/// TLS for the proxy listener.
#[derive(Debug, Clone)]
pub struct ListenerTls {
    config: Arc<ServerConfig>,
    resolver: Arc<ReloadingCert>,
    files: TlsFiles,
    handshake_timeout: Duration,
    initial: [u8; 32],
}

impl ListenerTls {
    /// Loads the certificate and key (and the client CA for mTLS) and builds the server config.
    pub fn new(
        files: &TlsFiles,
        client_ca: Option<&Path>,
        handshake_timeout: Duration,
    ) -> Result<ListenerTls, TlsError> {
        let paths = [files.cert.clone(), files.key.clone()];
        let contents = crate::reload::read_all(&paths).map_err(|source| {
            // Say which of the two could not be read.
            let (var, path) = if std::fs::metadata(&files.cert).is_err() {
                ("RAGSCOPE_TLS_CERT", files.cert.clone())
            } else {
                ("RAGSCOPE_TLS_KEY", files.key.clone())
            };
            TlsError::Read { var, path, source }
        })?;
        let key =
            certified_key(&contents[0], &contents[1]).map_err(|detail| TlsError::Content {
                var: "RAGSCOPE_TLS_CERT",
                path: files.cert.clone(),
                detail,
            })?;
        let resolver = Arc::new(ReloadingCert {
            current: RwLock::new(Arc::new(key)),
        });

        let provider = provider();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            // TLS 1.0 and 1.1 are not offered; ring's suites are all AEAD with ECDHE key
            // exchange (forward secrecy). rustls never renegotiates and has 0-RTT off.
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let roots = load_ca_bundle("RAGSCOPE_TLS_CLIENT_CA", path)?;
                // `build()` without `allow_unauthenticated`: a valid client certificate is
                // required.
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| TlsError::Content {
                            var: "RAGSCOPE_TLS_CLIENT_CA",
                            path: path.to_owned(),
                            detail: e.to_string(),
                        })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        // Our suite order (strongest first) rather than the client's: scanners flag a server
        // that lets the client pick.
        config.ignore_client_order = true;
        Ok(ListenerTls {
            config: Arc::new(config),
            resolver,
            files: files.clone(),
            handshake_timeout,
            initial: crate::reload::fingerprint(&contents),
        })
    }

    /// Starts polling the certificate and key files; a valid new pair goes into service for
    /// new handshakes. Runs until the handle is aborted.
    pub fn watch(&self, interval: Duration) -> JoinHandle<()> {
        let resolver = self.resolver.clone();
        crate::reload::spawn_watch(
            "TLS certificate and key",
            vec![self.files.cert.clone(), self.files.key.clone()],
            interval,
            self.initial,
            move |contents| {
                let key = certified_key(&contents[0], &contents[1])?;
                resolver.set(key);
                Ok(())
            },
        )
    }

    /// Runs the server side of the handshake, bounded by the handshake timeout.
    pub async fn accept(
        &self,
        stream: TcpStream,
    ) -> Result<(TlsStream<TcpStream>, TlsInfo), HandshakeError> {
        let stream = tokio::time::timeout(
            self.handshake_timeout,
            TlsAcceptor::from(self.config.clone()).accept(stream),
        )
        .await
        .map_err(|_| HandshakeError::Timeout(self.handshake_timeout))?
        .map_err(|e| {
            let client_cert = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .is_some_and(|r| {
                    matches!(
                        r,
                        rustls::Error::NoCertificatesPresented
                            | rustls::Error::InvalidCertificate(_)
                    )
                });
            if client_cert {
                HandshakeError::ClientCertificate(e)
            } else {
                HandshakeError::Failed(e)
            }
        })?;
        let info = TlsInfo::from_connection(stream.get_ref().1);
        Ok((stream, info))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cipher_names_follow_iana() {
        assert_eq!(
            iana_cipher_name("TLS13_AES_128_GCM_SHA256"),
            "TLS_AES_128_GCM_SHA256"
        );
        assert_eq!(
            iana_cipher_name("TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"),
            "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"
        );
    }

    #[test]
    fn every_offered_suite_is_aead_and_forward_secret() {
        for suite in provider().cipher_suites.iter() {
            let name = suite.suite().as_str().unwrap_or_default();
            assert!(
                name.starts_with("TLS13_") || name.starts_with("TLS_ECDHE_"),
                "{name} is not forward secret"
            );
            assert!(
                name.contains("GCM") || name.contains("CHACHA20_POLY1305"),
                "{name} is not AEAD"
            );
        }
    }

    #[test]
    fn garbage_pem_is_refused_with_a_reason() {
        let e = certified_key(b"not pem", b"not pem").expect_err("garbage");
        assert!(e.contains("CERTIFICATE"), "{e}");
        let e = certified_key(
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            b"",
        )
        .expect_err("no key");
        assert!(e.contains("private key"), "{e}");
    }
}
