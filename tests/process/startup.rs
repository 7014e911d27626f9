//! Start-up: a bad setting stops it with one line and exit code 2, an invalid OTEL setting
//! only warns, transparent huge pages stay off; then the admin probes tell liveness and
//! readiness.

use super::*;

// ---------------------------------------------------------------------------------------------
// Start-up
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_setting_stops_start_up_with_one_line_and_exit_code_2() {
    for (var, value, accepted_form) in [
        ("RAGSCOPE_CONNECT_TIMEOUT", "5x", "250ms"),
        ("RAGSCOPE_LISTEN", "nope", "0.0.0.0:8080"),
        ("RAGSCOPE_UPSTREAM", "ftp://x", "http://"),
        ("RAGSCOPE_MAX_REQUEST_BODY", "lots", "16MiB"),
        ("RAGSCOPE_LOG_FORMAT", "xml", "json or text"),
        ("RAGSCOPE_TAIL_SAMPLING", "slow=fast", "errors, refused"),
    ] {
        let mut ragscope = Proxy::builder().env(var, value).spawn();
        let started = Instant::now();
        let status = ragscope
            .wait_exit(Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("{var}={value}: ragscope kept running"));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{var}: took {:?} to give up",
            started.elapsed()
        );
        assert_eq!(status.code(), Some(2), "{var}={value}: {status}");

        ragscope.wait_output_closed(Duration::from_secs(5)).await;
        let stderr = ragscope.stderr_lines();
        assert_eq!(
            stderr.len(),
            1,
            "{var}: exactly one line on stderr: {stderr:#?}"
        );
        let line = &stderr[0];
        assert!(line.contains(var), "the line names the variable: {line}");
        assert!(
            line.contains(&format!("{value:?}")),
            "the line shows the bad value: {line}"
        );
        assert!(
            line.contains(accepted_form),
            "the line shows the accepted form: {line}"
        );
        assert!(
            ragscope.lines().is_empty(),
            "{var}: nothing else is printed: {:?}",
            ragscope.lines()
        );
    }
}

/// mimalloc madvises its arenas for transparent huge pages, which makes RSS move in 2 MiB steps;
/// the binary turns them off for its process unless the operator set mimalloc's own switch.
#[tokio::test(flavor = "multi_thread")]
async fn transparent_huge_pages_are_off_unless_the_operator_asks_for_them() {
    let thp_enabled = |pid: u32| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("THP_enabled:"))
            .map(|v| v.trim().to_string())
    };
    let up = Upstream::start().await;
    for (setting, expected) in [(None, "0"), (Some("1"), "1")] {
        let mut builder = Proxy::builder()
            .upstream(&up)
            .env("RAGSCOPE_LISTEN", "127.0.0.1:0");
        if let Some(v) = setting {
            builder = builder.env("MIMALLOC_ALLOW_THP", v);
        }
        let ragscope = builder.spawn();
        ragscope.wait_serving().await;
        match thp_enabled(ragscope.pid()) {
            // Kernels before 6.x do not report it: nothing to check there.
            None => return,
            Some(v) => assert_eq!(v, expected, "MIMALLOC_ALLOW_THP={setting:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_otel_setting_is_warned_about_and_start_up_goes_on() {
    let up = Upstream::start().await;
    let ragscope = Proxy::builder()
        .upstream(&up)
        .env("OTEL_TRACES_SAMPLER", "bogus")
        .spawn();
    let (proxy, _) = ragscope.wait_serving().await;

    let warning = ragscope
        .lines()
        .into_iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
        .find(|v| {
            v["level"] == "WARN"
                && v["message"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("OTEL_TRACES_SAMPLER")
        })
        .unwrap_or_else(|| {
            panic!(
                "a warning names OTEL_TRACES_SAMPLER: {:#?}",
                ragscope.lines()
            )
        });
    assert!(
        warning["message"]
            .as_str()
            .unwrap_or_default()
            .contains("bogus"),
        "{warning}"
    );

    let reply = Client::http1().get(format!("http://{proxy}/json")).await;
    assert_eq!(
        reply.status, 200,
        "the proxy serves with the default sampler"
    );
}

// ---------------------------------------------------------------------------------------------
// Admin
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn admin_probes_tell_liveness_readiness_and_nothing_else() {
    let up = Upstream::start().await;
    let ragscope = Proxy::builder().upstream(&up).spawn();
    let (_, admin) = ragscope.wait_serving().await;
    let admin = admin.expect("admin listener is on");
    let client = Client::http1();

    assert_eq!(
        client.get(format!("http://{admin}/healthz")).await.status,
        200
    );
    let ready = client.get(format!("http://{admin}/readyz")).await;
    assert_eq!(ready.status, 200, "the upstream is live: {:?}", ready.body);
    assert_eq!(client.get(format!("http://{admin}/nope")).await.status, 404);

    let dead = dead_addr();
    let orphan = Proxy::builder().upstream(&dead).spawn();
    let (_, admin) = orphan.wait_serving().await;
    let admin = admin.expect("admin listener is on");
    assert_eq!(
        client.get(format!("http://{admin}/healthz")).await.status,
        200,
        "alive all the same"
    );
    let ready = client.get(format!("http://{admin}/readyz")).await;
    assert_eq!(ready.status, 503, "the upstream refuses: {:?}", ready.body);
}
