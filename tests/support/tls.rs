//! TLS for the tests: a private CA made with rcgen, certificate files on disk, TLS clients
//! (hyper over rustls, with or without a client certificate, with a chosen ALPN), and an
//! https upstream.
//!
//! ```ignore
//! let ca = Ca::new("test CA");
//! let files = CertFiles::new(&ca.server_cert(&["localhost"]));
//! let proxy = Proxy::builder().upstream(&up).tls(&files).run().await;
//! let res = TlsClient::new(&ca).get(proxy.https_url("/json")).await;
//! ```

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::Reply;

/// The one crypto provider (ring), as in ragscope.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A private certificate authority.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM.
    pub pem: String,
    /// The CA certificate, DER.
    pub der: CertificateDer<'static>,
}

/// A leaf certificate and its key.
#[derive(Clone)]
pub struct Leaf {
    /// Certificate, PEM.
    pub cert_pem: String,
    /// Private key, PKCS#8 PEM.
    pub key_pem: String,
    /// Certificate, DER (to compare with what a server presented).
    pub der: CertificateDer<'static>,
}

impl Ca {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("CA certificate");
        Ca {
            pem: cert.pem(),
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn server_cert(&self, names: &[&str]) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
                .expect("params");
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("server"),
        );
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A client certificate with subject `CN=<cn>, O=<org>`.
    pub fn client_cert(&self, cn: &str, org: &str) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params
            .distinguished_name
            .push(DnType::OrganizationName, org);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("signed");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// A root store trusting this CA.
    pub fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.der.clone())
            .expect("CA certificate is usable");
        roots
    }
}

/// Certificate, key and CA files in a temporary directory.
pub struct CertFiles {
    dir: tempfile::TempDir,
}

impl CertFiles {
    /// Writes `leaf` as `tls.crt`/`tls.key` in a new directory.
    pub fn new(leaf: &Leaf) -> CertFiles {
        let files = CertFiles {
            dir: tempfile::tempdir().expect("temp dir"),
        };
        files.replace(leaf);
        files
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `tls.crt`.
    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("tls.crt")
    }

    /// `tls.key`.
    pub fn key(&self) -> PathBuf {
        self.dir.path().join("tls.key")
    }

    /// Writes a file in the directory and returns its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).expect("write file");
        path
    }

    /// Replaces the pair the way cert-manager does: write beside, rename over (atomic).
    pub fn replace(&self, leaf: &Leaf) {
        self.replace_raw(&leaf.cert_pem, &leaf.key_pem);
    }

    /// Replaces the pair with arbitrary contents (atomically, each file).
    pub fn replace_raw(&self, cert: &str, key: &str) {
        for (name, contents) in [("tls.crt", cert), ("tls.key", key)] {
            let tmp = self.dir.path().join(format!(".{name}.tmp"));
            std::fs::write(&tmp, contents).expect("write temp");
            std::fs::rename(&tmp, self.dir.path().join(name)).expect("rename");
        }
    }
}

/// A rustls client configuration trusting `ca`, offering `alpn`, with an optional client
/// certificate.
pub fn client_config(ca: &Ca, alpn: &[&[u8]], client: Option<&Leaf>) -> rustls::ClientConfig {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(ca.roots());
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some(leaf) => builder
            .with_client_auth_cert(
                vec![leaf.der.clone()],
                PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("client key"),
            )
            .expect("client auth"),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

use rustls::pki_types::pem::PemObject as _;

/// Opens a TLS connection to `addr` as `localhost`.
pub async fn tls_connect(
    addr: SocketAddr,
    config: rustls::ClientConfig,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
}

/// Opens a TLS connection and returns the certificate the server presented.
pub async fn presented_cert(addr: SocketAddr, ca: &Ca) -> CertificateDer<'static> {
    let tls = tls_connect(addr, client_config(ca, &[b"http/1.1"], None))
        .await
        .expect("TLS handshake");
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("server certificate")
        .clone()
        .into_owned()
}

/// A hyper client over TLS.
#[derive(Clone)]
pub struct TlsClient {
    inner: HyperClient<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl TlsClient {
    /// HTTP/1.1 and HTTP/2 offered by ALPN (the server picks), no client certificate.
    pub fn new(ca: &Ca) -> TlsClient {
        TlsClient::with(client_config(ca, &[], None), true, true)
    }

    /// HTTP/1.1 only.
    pub fn http1(ca: &Ca) -> TlsClient {
        TlsClient::with(client_config(ca, &[], None), true, false)
    }

    /// HTTP/2 only.
    pub fn http2(ca: &Ca) -> TlsClient {
        TlsClient::with(client_config(ca, &[], None), false, true)
    }

    /// With a client certificate (mTLS).
    pub fn with_client_cert(ca: &Ca, leaf: &Leaf) -> TlsClient {
        TlsClient::with(client_config(ca, &[], Some(leaf)), true, true)
    }

    /// From a configuration; ALPN is set from the two switches.
    pub fn with(config: rustls::ClientConfig, http1: bool, http2: bool) -> TlsClient {
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_only();
        let connector = match (http1, http2) {
            (true, true) => builder.enable_http1().enable_http2().build(),
            (false, true) => builder.enable_http2().build(),
            _ => builder.enable_http1().build(),
        };
        let mut client = HyperClient::builder(TokioExecutor::new());
        if http2 && !http1 {
            client.http2_only(true);
        }
        TlsClient {
            inner: client.build(connector),
        }
    }

    /// Sends `req`; errors (refused handshakes) are returned, not panicked on.
    pub async fn try_request(
        &self,
        req: Request<Full<Bytes>>,
    ) -> Result<(Version, Reply), hyper_util::client::legacy::Error> {
        let res = self.inner.request(req).await?;
        let version = res.version();
        let (parts, body) = res.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Ok((
            version,
            Reply {
                status: parts.status,
                headers: parts.headers,
                body,
            },
        ))
    }

    /// GET `url`, returning the HTTP version spoken and the reply.
    pub async fn get(&self, url: impl AsRef<str>) -> (Version, Reply) {
        self.try_get(url).await.expect("request over TLS")
    }

    /// GET `url`, returning errors.
    pub async fn try_get(
        &self,
        url: impl AsRef<str>,
    ) -> Result<(Version, Reply), hyper_util::client::legacy::Error> {
        self.try_request(
            Request::get(url.as_ref())
                .body(Full::default())
                .expect("request"),
        )
        .await
    }
}

/// An https upstream on `127.0.0.1`: answers every request with
/// `{"path":..,"tls":true}`, counting requests.
pub struct TlsUpstream {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl TlsUpstream {
    /// Serves with `leaf` as its certificate.
    pub async fn start(leaf: &Leaf) -> TlsUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der.clone()],
                PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("key"),
            )
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let body =
                            serde_json::json!({"path": req.uri().path(), "tls": true}).to_string();
                        async move {
                            Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                                Bytes::from(body),
                            )))
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        TlsUpstream {
            addr,
            requests,
            task,
        }
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Requests answered so far.
    pub fn request_count(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl super::ProxyBuilder {
    /// TLS on the listener with these files.
    pub fn tls(self, files: &CertFiles) -> Self {
        self.env("RAGSCOPE_TLS_CERT", files.cert().display().to_string())
            .env("RAGSCOPE_TLS_KEY", files.key().display().to_string())
    }
}

impl super::Proxy {
    /// An https URL on the proxy, addressed as `localhost` (the name the test certificates
    /// carry).
    pub fn https_url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr().port())
    }
}

/// A TLS endpoint in front of a plaintext one (as a load balancer or ingress puts in front of
/// a collector): it terminates TLS with `server` (requiring a client certificate signed by
/// `client_ca` when given), offers ALPN h2 and http/1.1, and relays the bytes to `target`.
pub struct TlsFront {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Handshakes that completed.
    pub handshakes: Arc<AtomicUsize>,
    /// Handshakes that failed (an untrusted server for the client, a missing client cert...).
    pub failed: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl TlsFront {
    /// Starts the front on a loopback port.
    pub async fn start(target: SocketAddr, server: &Leaf, client_ca: Option<&Ca>) -> TlsFront {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions");
        let builder = match client_ca {
            Some(ca) => builder.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(ca.roots()),
                    provider(),
                )
                .build()
                .expect("client verifier"),
            ),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(
                vec![server.der.clone()],
                PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes()).expect("server key"),
            )
            .expect("server certificate");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let handshakes = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let (ok, bad) = (handshakes.clone(), failed.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, ok, bad) = (acceptor.clone(), ok.clone(), bad.clone());
                tokio::spawn(async move {
                    let mut tls = match acceptor.accept(tcp).await {
                        Ok(tls) => tls,
                        Err(_) => {
                            bad.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    };
                    ok.fetch_add(1, Ordering::SeqCst);
                    if let Ok(mut plain) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                    }
                });
            }
        });
        TlsFront {
            addr,
            handshakes,
            failed,
            task,
        }
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}
