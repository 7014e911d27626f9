//! TLS termination: ALPN h2/http1.1, only TLS 1.2/1.3, handshake failures that cost only their
//! connection, certificate reload (rename and Kubernetes symlink swap) with live connections
//! kept, broken new files, mutual TLS, and an https upstream behind a private CA.

mod support;

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use http::{StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use support::*;

const WAIT: Duration = Duration::from_secs(15);

/// A proxy with TLS, its CA and its certificate files.
async fn tls_proxy(
    up: &Upstream,
    otlp: Option<&OtlpReceiver>,
    extra: &[(&str, &str)],
) -> (Proxy, Ca, CertFiles) {
    let ca = Ca::new("ragscope test CA");
    let files = CertFiles::new(&ca.server_cert(&["localhost", "127.0.0.1"]));
    let mut builder = Proxy::builder().upstream(up).tls(&files);
    if let Some(otlp) = otlp {
        builder = builder.otlp(otlp);
    }
    for (k, v) in extra {
        builder = builder.env(k, *v);
    }
    (builder.run().await, ca, files)
}

#[tokio::test(flavor = "multi_thread")]
async fn alpn_serves_http2_and_http11_over_tls_and_the_span_says_so() {
    let up = Upstream::start().await;
    let otlp = OtlpReceiver::start().await;
    let (proxy, ca, _files) = tls_proxy(&up, Some(&otlp), &[]).await;

    // A client offering both gets HTTP/2 (the server prefers h2).
    let (version, reply) = TlsClient::new(&ca).get(proxy.https_url("/json")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(version, Version::HTTP_2);
    // A client offering only http/1.1 gets HTTP/1.1.
    let (version, reply) = TlsClient::http1(&ca).get(proxy.https_url("/echo")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(version, Version::HTTP_11);
    // The upstream learns the client came over https.
    assert_eq!(up.last_request().header("x-forwarded-proto"), Some("https"));

    let spans = otlp
        .wait_for_spans(|s| s.kind == SpanKind::Server, 2, WAIT)
        .await;
    let h2 = spans
        .iter()
        .find(|s| s.str_attr("url.path") == Some("/json"))
        .expect("h2 span");
    assert_eq!(h2.str_attr("network.protocol.version"), Some("2"));
    assert_eq!(h2.str_attr("url.scheme"), Some("https"));
    assert_eq!(h2.str_attr("tls.protocol.name"), Some("tls"));
    assert_eq!(h2.str_attr("tls.protocol.version"), Some("1.3"));
    assert_eq!(h2.str_attr("tls.next_protocol"), Some("h2"));
    assert_eq!(h2.bool_attr("tls.established"), Some(true));
    let cipher = h2.str_attr("tls.cipher").expect("tls.cipher");
    assert!(
        cipher.starts_with("TLS_") && !cipher.starts_with("TLS13_"),
        "IANA name: {cipher}"
    );
    assert!(!h2.has_attr("tls.client.subject"), "no client certificate");
    let h1 = spans
        .iter()
        .find(|s| s.str_attr("url.path") == Some("/echo"))
        .expect("h1 span");
    assert_eq!(h1.str_attr("network.protocol.version"), Some("1.1"));
    // hyper-rustls offers no ALPN when it speaks HTTP/1.1 only; nothing was negotiated.
    assert_eq!(h1.str_attr("tls.next_protocol"), None);

    // What the server picks, seen from a raw TLS client.
    for (offered, picked) in [
        (vec![&b"h2"[..], &b"http/1.1"[..]], Some(&b"h2"[..])),
        (vec![&b"http/1.1"[..], &b"h2"[..]], Some(&b"h2"[..])),
        (vec![&b"http/1.1"[..]], Some(&b"http/1.1"[..])),
        (vec![], None),
    ] {
        let tls = tls_connect(proxy.addr(), client_config(&ca, &offered, None))
            .await
            .expect("handshake");
        assert_eq!(tls.get_ref().1.alpn_protocol(), picked, "{offered:?}");
    }
    // A client that offers only protocols we do not speak is refused (RFC 7301).
    assert!(
        tls_connect(proxy.addr(), client_config(&ca, &[b"spdy/3"], None))
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tls12_client_is_served_and_old_versions_are_refused() {
    let up = Upstream::start().await;
    let (proxy, ca, _files) = tls_proxy(&up, None, &[]).await;

    // rustls restricted to TLS 1.2 still gets through, with an AEAD suite.
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .expect("tls12")
        .with_root_certificates(ca.roots())
        .with_no_client_auth();
    let tls = tls_connect(proxy.addr(), config)
        .await
        .expect("TLS 1.2 handshake");
    let conn = tls.get_ref().1;
    assert_eq!(
        conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let suite = format!(
        "{:?}",
        conn.negotiated_cipher_suite().expect("suite").suite()
    );
    assert!(
        suite.starts_with("TLS_ECDHE_") && (suite.contains("GCM") || suite.contains("CHACHA20")),
        "{suite}"
    );

    // openssl, allowed to speak TLS 1.1 and 1.0 (security level 0), is refused by the server
    // with a protocol_version alert; TLS 1.2 with the same tool works (so the tool is fine).
    let connect = proxy.addr().to_string();
    // openssl blocks: keep it off the runtime's workers, which serve the proxy.
    let s_client = |args: &[&str]| {
        let out = tokio::task::block_in_place(|| {
            Command::new("openssl")
                .args(["s_client", "-connect", &connect, "-servername", "localhost"])
                .args(args)
                .stdin(std::process::Stdio::null())
                .output()
        })
        .expect("openssl runs (install the Debian openssl package)");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    for version in ["-tls1_1", "-tls1"] {
        let (ok, out) = s_client(&[version, "-cipher", "DEFAULT:@SECLEVEL=0"]);
        assert!(!ok, "{version} must be refused: {out}");
        // The client did send its ClientHello (security level 0 lets it), and the server
        // answered with an alert: no cipher was ever agreed.
        assert!(
            out.contains("alert"),
            "{version}: refused by the server: {out}"
        );
        assert!(out.contains("Cipher is (NONE)"), "{version}: {out}");
    }
    let (ok, out) = s_client(&["-tls1_2"]);
    assert!(ok, "TLS 1.2 with openssl: {out}");
    assert!(out.contains("TLSv1.2"), "{out}");
    assert!(
        out.contains("Secure Renegotiation IS NOT supported")
            || out.contains("Secure Renegotiation IS supported"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_and_stalled_handshakes_cost_only_their_connection() {
    let up = Upstream::start().await;
    let otlp = OtlpReceiver::start().await;
    let (proxy, ca, _files) = tls_proxy(
        &up,
        Some(&otlp),
        &[("RAGSCOPE_TLS_HANDSHAKE_TIMEOUT", "1s")],
    )
    .await;

    // Plaintext HTTP on the TLS port: no HTTP answer, the connection is closed.
    let plain = raw_exchange(
        proxy.addr(),
        b"GET /json HTTP/1.1\r\nHost: a\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(!plain.contains("HTTP/1.1 200"), "{plain:?}");
    // Random bytes.
    let noise: Vec<u8> = (0..512u32).map(|i| (i * 7919 % 251) as u8).collect();
    let _ = raw_exchange(proxy.addr(), &noise, Duration::from_secs(5)).await;
    // Half a ClientHello (a handshake record header promising more than is sent): the
    // handshake timeout closes it.
    let started = std::time::Instant::now();
    let half = raw_exchange(
        proxy.addr(),
        &[
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
        ],
        Duration::from_secs(10),
    )
    .await;
    let held = started.elapsed();
    assert!(half.is_empty(), "{half:?}");
    assert!(
        held >= Duration::from_millis(900) && held < Duration::from_secs(8),
        "closed by the 1s handshake timeout, after {held:?}"
    );

    // Meanwhile, and after, a proper client is served.
    let (_, reply) = TlsClient::new(&ca).get(proxy.https_url("/json")).await;
    assert_eq!(reply.status, StatusCode::OK);

    for kind in ["tls_handshake", "tls_handshake_timeout"] {
        otlp.wait_for_metric_where(
            "ragscope.connection.errors",
            |m| {
                m.point_with(&[("error.type", Value::from(kind))])
                    .is_some_and(|p| p.as_f64() >= 1.0)
            },
            WAIT,
        )
        .await;
    }
    assert_eq!(
        up.request_count(),
        1,
        "only the proper request reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_renamed_certificate_is_served_to_new_connections_and_live_ones_carry_on() {
    let up = Upstream::start().await;
    let (proxy, ca, files) = tls_proxy(&up, None, &[]).await;
    let first = presented_cert(proxy.addr(), &ca).await;

    // A live HTTP/1.1 connection, made before the rotation.
    let tls = tls_connect(proxy.addr(), client_config(&ca, &[b"http/1.1"], None))
        .await
        .expect("handshake");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("http1 handshake");
    tokio::spawn(conn);
    let get = |path: &str| {
        http::Request::get(path)
            .header("host", "localhost")
            .body(Full::<Bytes>::default())
            .expect("request")
    };
    let res = send
        .send_request(get("/json"))
        .await
        .expect("first request");
    assert_eq!(res.status(), StatusCode::OK);
    res.into_body().collect().await.expect("body");

    let second = ca.server_cert(&["localhost", "127.0.0.1"]);
    files.replace(&second);
    assert!(
        wait_until_async(WAIT, || async {
            presented_cert(proxy.addr(), &ca).await == second.der
        })
        .await,
        "new handshakes get the new certificate within a few seconds"
    );
    assert_ne!(first, second.der);

    // The connection made before the rotation is still open and served.
    let res = send
        .send_request(get("/json"))
        .await
        .expect("the live connection survived the reload");
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kubernetes_secret_symlink_swap_is_picked_up() {
    // The layout kubelet gives a mounted secret: tls.crt -> ..data/tls.crt, and ..data a
    // symlink to a timestamped directory that is swapped atomically on update.
    let ca = Ca::new("ragscope test CA");
    let dir = tempfile::tempdir().expect("dir");
    let root = dir.path();
    let write_version = |name: &str, leaf: &Leaf| {
        let v = root.join(name);
        std::fs::create_dir(&v).expect("version dir");
        std::fs::write(v.join("tls.crt"), &leaf.cert_pem).expect("crt");
        std::fs::write(v.join("tls.key"), &leaf.key_pem).expect("key");
    };
    let swap_data = |target: &str| {
        let tmp = root.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(target, &tmp).expect("symlink");
        std::fs::rename(&tmp, root.join("..data")).expect("atomic swap");
    };
    let first = ca.server_cert(&["localhost"]);
    write_version("..2025_01_01_00_00_00.1", &first);
    swap_data("..2025_01_01_00_00_00.1");
    for f in ["tls.crt", "tls.key"] {
        std::os::unix::fs::symlink(format!("..data/{f}"), root.join(f)).expect("link");
    }

    let up = Upstream::start().await;
    let proxy = Proxy::builder()
        .upstream(&up)
        .env(
            "RAGSCOPE_TLS_CERT",
            root.join("tls.crt").display().to_string(),
        )
        .env(
            "RAGSCOPE_TLS_KEY",
            root.join("tls.key").display().to_string(),
        )
        .run()
        .await;
    assert_eq!(presented_cert(proxy.addr(), &ca).await, first.der);

    let second = ca.server_cert(&["localhost"]);
    write_version("..2025_02_01_00_00_00.2", &second);
    swap_data("..2025_02_01_00_00_00.2");
    std::fs::remove_dir_all(root.join("..2025_01_01_00_00_00.1")).expect("old version gone");
    assert!(
        wait_until_async(WAIT, || async {
            presented_cert(proxy.addr(), &ca).await == second.der
        })
        .await,
        "the swapped secret is served"
    );
    let (_, reply) = TlsClient::new(&ca).get(proxy.https_url("/json")).await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_new_files_keep_the_old_certificate_and_are_logged() {
    let ca = Ca::new("ragscope test CA");
    let first = ca.server_cert(&["localhost"]);
    let files = CertFiles::new(&first);
    let up = Upstream::start().await;
    let ragscope = Proxy::builder().upstream(&up).tls(&files).spawn();
    let (addr, _) = ragscope.wait_serving().await;
    assert_eq!(presented_cert(addr, &ca).await, first.der);

    let reload_errors = || {
        ragscope
            .lines()
            .into_iter()
            .filter(|l| l.contains("stays in service"))
            .count()
    };
    // Half-written certificate.
    let second = ca.server_cert(&["localhost"]);
    let half = &second.cert_pem[..second.cert_pem.len() / 2];
    files.replace_raw(half, &second.key_pem);
    assert!(
        wait_until(WAIT, || reload_errors() >= 1).await,
        "the broken file is logged: {:#?}",
        ragscope.lines()
    );
    assert_eq!(presented_cert(addr, &ca).await, first.der);

    // A certificate with somebody else's key.
    let third = ca.server_cert(&["localhost"]);
    files.replace_raw(&third.cert_pem, &second.key_pem);
    assert!(
        wait_until(WAIT, || reload_errors() >= 2).await,
        "the mismatched pair is logged: {:#?}",
        ragscope.lines()
    );
    assert_eq!(presented_cert(addr, &ca).await, first.der);
    let line = ragscope
        .lines()
        .into_iter()
        .rfind(|l| l.contains("stays in service"))
        .expect("line");
    assert!(line.contains("\"level\":\"ERROR\""), "{line}");
    assert!(
        !line.contains("PRIVATE KEY"),
        "no key material in logs: {line}"
    );

    // A good pair after the broken ones goes live.
    files.replace(&third);
    assert!(
        wait_until_async(WAIT, || async {
            presented_cert(addr, &ca).await == third.der
        })
        .await,
        "the fixed pair is served"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn mutual_tls_requires_a_client_certificate_from_the_ca_and_records_its_subject() {
    let up = Upstream::start().await;
    let otlp = OtlpReceiver::start().await;
    let ca = Ca::new("ragscope test CA");
    let client_ca = Ca::new("client CA");
    let files = CertFiles::new(&ca.server_cert(&["localhost"]));
    let client_ca_file = files.write("client-ca.crt", &client_ca.pem);
    let proxy = Proxy::builder()
        .upstream(&up)
        .otlp(&otlp)
        .tls(&files)
        .env(
            "RAGSCOPE_TLS_CLIENT_CA",
            client_ca_file.display().to_string(),
        )
        .run()
        .await;

    let good = client_ca.client_cert("retriever-7", "RAG team");
    let (_, reply) = TlsClient::with_client_cert(&ca, &good)
        .get(proxy.https_url("/json"))
        .await;
    assert_eq!(reply.status, StatusCode::OK);

    // No certificate, and a certificate from another CA: refused, upstream not called.
    assert!(
        TlsClient::new(&ca)
            .try_get(proxy.https_url("/json"))
            .await
            .is_err()
    );
    let stranger = Ca::new("other CA").client_cert("intruder", "elsewhere");
    assert!(
        TlsClient::with_client_cert(&ca, &stranger)
            .try_get(proxy.https_url("/json"))
            .await
            .is_err()
    );
    assert_eq!(up.request_count(), 1);

    let span = otlp
        .wait_for_spans(|s| s.kind == SpanKind::Server, 1, WAIT)
        .await
        .remove(0);
    let subject = span
        .str_attr("tls.client.subject")
        .expect("subject recorded");
    assert!(subject.contains("CN=retriever-7"), "{subject}");
    assert!(subject.contains("O=RAG team"), "{subject}");
    assert!(
        span.str_attr("tls.client.issuer")
            .is_some_and(|i| i.contains("CN=client CA")),
        "{:?}",
        span.str_attr("tls.client.issuer")
    );
    assert!(
        !span
            .attributes
            .iter()
            .any(|(_, v)| v.as_str().is_some_and(|s| s.contains("BEGIN CERTIFICATE"))),
        "never the certificate itself"
    );
    otlp.wait_for_metric_where(
        "ragscope.connection.errors",
        |m| {
            m.point_with(&[("error.type", Value::from("tls_client_certificate"))])
                .is_some_and(|p| p.as_f64() >= 2.0)
        },
        WAIT,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_https_upstream_is_verified_against_the_private_ca_and_its_name() {
    let ca = Ca::new("upstream CA");
    let ca_files = CertFiles::new(&ca.server_cert(&["unused"]));
    let ca_file = ca_files.write("ca.crt", &ca.pem);

    // Right CA, right name: forwarded.
    let good = TlsUpstream::start(&ca.server_cert(&["localhost"])).await;
    let proxy = Proxy::builder()
        .env(
            "RAGSCOPE_UPSTREAM",
            format!("https://localhost:{}", good.port()),
        )
        .env("RAGSCOPE_UPSTREAM_CA", ca_file.display().to_string())
        .run()
        .await;
    let reply = Client::http1().get(proxy.url("/v1/chat")).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.json()["tls"], true);
    assert_eq!(reply.json()["path"], "/v1/chat");

    // Same upstream, system roots only: the private CA is not trusted.
    let untrusting = Proxy::builder()
        .env(
            "RAGSCOPE_UPSTREAM",
            format!("https://localhost:{}", good.port()),
        )
        .run()
        .await;
    let reply = Client::http1().get(untrusting.url("/v1/chat")).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(good.request_count(), 1);

    // Trusted CA, wrong name on the certificate: refused.
    let misnamed = TlsUpstream::start(&ca.server_cert(&["other.example"])).await;
    let proxy = Proxy::builder()
        .env(
            "RAGSCOPE_UPSTREAM",
            format!("https://localhost:{}", misnamed.port()),
        )
        .env("RAGSCOPE_UPSTREAM_CA", ca_file.display().to_string())
        .run()
        .await;
    let reply = Client::http1().get(proxy.url("/v1/chat")).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(misnamed.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_configuration_mistakes_stop_start_up_with_one_line() {
    let ca = Ca::new("ragscope test CA");
    let files = CertFiles::new(&ca.server_cert(&["localhost"]));

    // Only one of the pair: a configuration error, exit 2.
    let mut only_cert = Proxy::builder()
        .env("RAGSCOPE_TLS_CERT", files.cert().display().to_string())
        .spawn();
    let status = only_cert.wait_exit(WAIT).await.expect("exits");
    assert_eq!(status.code(), Some(2));
    // The exit can be seen before the reader has taken the last line (a loaded machine).
    only_cert.wait_output_closed(WAIT).await;
    let stderr = only_cert.stderr_lines().join("\n");
    assert!(
        stderr.contains("RAGSCOPE_TLS_KEY") && stderr.contains("RAGSCOPE_TLS_CERT"),
        "{stderr}"
    );

    // A key file that is not a key: start-up fails naming the variable and the file.
    let garbage = files.write("garbage.key", "not a key\n");
    let mut bad_key = Proxy::builder()
        .env("RAGSCOPE_TLS_CERT", files.cert().display().to_string())
        .env("RAGSCOPE_TLS_KEY", garbage.display().to_string())
        .spawn();
    let status = bad_key.wait_exit(WAIT).await.expect("exits");
    assert!(!status.success());
    let stderr = bad_key.stderr_lines().join("\n");
    assert!(stderr.contains("RAGSCOPE_TLS_CERT"), "{stderr}");
    assert!(stderr.contains("private key"), "{stderr}");
}
