//! TLS to the OTLP collector, for `https://` endpoints over gRPC and HTTP/protobuf: the trust
//! roots (`OTEL_EXPORTER_OTLP_CERTIFICATE`, else the system's) and the client certificate for
//! mTLS (`..._CLIENT_CERTIFICATE` + `..._CLIENT_KEY`), per signal like every `OTEL_*` setting.
//!
//! Failures fail closed and never stop start-up (`OTEL_*` problems are warnings, as the
//! specification asks): a CA file that cannot be read trusts nothing rather than falling back
//! to the system roots, so every export fails, is counted as `export_failed` and logged, and
//! traffic goes on. A client certificate that cannot be used is left out (a collector that
//! requires one then refuses us, the same closed outcome).

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::settings::{OtlpSignal, OtlpTls};

/// What the TLS variables of one signal resolve to, read and checked once.
struct Trust {
    /// The CA bundle's PEM when `..._CERTIFICATE` is set and usable.
    ca_pem: Option<Vec<u8>>,
    /// The roots a handshake checks against: the bundle's, the system's, or none (closed).
    roots: RootCertStore,
    /// Client certificate chain and key (PEM), already checked to fit together.
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// Warns once, at start-up, about a TLS file that cannot be used.
fn warn(signal: &'static str, var: &str, path: &std::path::Path, problem: &str, effect: &str) {
    tracing::warn!(
        signal,
        variable = var,
        path = %path.display(),
        problem,
        "OTLP TLS setting not used: {effect}"
    );
}

fn load(signal: &'static str, tls: &OtlpTls) -> Trust {
    let (ca_pem, roots) = match &tls.certificate {
        Some((var, path)) => {
            let parsed = std::fs::read(path)
                .map_err(|e| format!("cannot be read: {e}"))
                .and_then(|pem| crate::tls::parse_ca_bundle(&pem).map(|roots| (pem, roots)));
            match parsed {
                Ok((pem, roots)) => (Some(pem), roots),
                Err(problem) => {
                    warn(
                        signal,
                        var,
                        path,
                        &problem,
                        "the collector is trusted by no CA, so every export fails until the file is fixed",
                    );
                    (None, RootCertStore::empty())
                }
            }
        }
        None => {
            let (roots, why) = crate::tls::system_roots();
            if let Some(why) = why {
                tracing::warn!(signal, problem = %why, "no system CA certificates: exports to an https collector will fail (set OTEL_EXPORTER_OTLP_CERTIFICATE)");
            }
            (None, roots)
        }
    };
    let identity = match (&tls.client_certificate, &tls.client_key) {
        (None, None) => None,
        (Some((var, path)), None) | (None, Some((var, path))) => {
            warn(
                signal,
                var,
                path,
                "the client certificate and key must both be set",
                "no client certificate is presented",
            );
            None
        }
        (Some((cert_var, cert_path)), Some((_, key_path))) => {
            let read = std::fs::read(cert_path)
                .and_then(|cert| Ok((cert, std::fs::read(key_path)?)))
                .map_err(|e| format!("cannot be read: {e}"));
            match read
                .and_then(|(cert, key)| crate::tls::certified_key(&cert, &key).map(|_| (cert, key)))
            {
                Ok(pair) => Some(pair),
                Err(problem) => {
                    warn(
                        signal,
                        cert_var,
                        cert_path,
                        &problem,
                        "no client certificate is presented",
                    );
                    None
                }
            }
        }
    };
    Trust {
        ca_pem,
        roots,
        identity,
    }
}

/// The tonic TLS configuration for a gRPC signal. A CA bundle replaces the system roots, as
/// for `RAGSCOPE_UPSTREAM_CA`: a collector with an internal certificate should not also be
/// trusted on a public CA's word.
pub(super) fn tonic_config(
    signal: &'static str,
    otlp: &OtlpSignal,
) -> opentelemetry_otlp::tonic_types::transport::ClientTlsConfig {
    use opentelemetry_otlp::tonic_types::transport::{Certificate, ClientTlsConfig, Identity};
    let trust = load(signal, &otlp.tls);
    let mut config = ClientTlsConfig::new();
    config = match &trust.ca_pem {
        Some(pem) => config.ca_certificate(Certificate::from_pem(pem)),
        // Closed (a bad CA file) leaves the roots empty: tonic then trusts nothing.
        None if trust.roots.is_empty() => config,
        None => config.with_native_roots(),
    };
    if let Some((cert, key)) = &trust.identity {
        config = config.identity(Identity::from_pem(cert, key));
    }
    config
}

/// The blocking HTTP client for an HTTP/protobuf signal, on ring like the rest of ragscope.
/// Built on a thread of its own: reqwest's blocking client runs its own runtime and must not
/// be created inside one (start-up may be running in tokio).
pub(super) fn http_client(
    signal: &'static str,
    otlp: &OtlpSignal,
) -> Result<reqwest::blocking::Client, String> {
    // A plain http:// endpoint never handshakes: no files or system roots to read, and no
    // warning about them.
    let trust = if otlp.endpoint.starts_with("https://") {
        load(signal, &otlp.tls)
    } else {
        Trust {
            ca_pem: None,
            roots: RootCertStore::empty(),
            identity: None,
        }
    };
    let builder = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(trust.roots);
    let mut tls = match &trust.identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| e.to_string())?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| e.to_string())?
        }
    };
    // The exporter speaks HTTP/1.1; say so, so a collector offering h2 does not pick it.
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let timeout = otlp.timeout;
    std::thread::Builder::new()
        .name("ragscope-otlp-client".to_owned())
        .spawn(move || {
            reqwest::blocking::Client::builder()
                .timeout(timeout)
                .tls_backend_preconfigured(tls)
                .build()
        })
        .map_err(|e| e.to_string())?
        .join()
        .map_err(|_| "building the HTTP client panicked".to_owned())?
        .map_err(|e| e.to_string())
}
