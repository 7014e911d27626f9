//! What can be checked of deploy/ without Docker or Kubernetes: the alert rules load and pass
//! their promtool unit tests, every alert has a severity and a summary and is tested, the
//! Prometheus configuration is valid, every YAML and JSON file is well-formed, and the Grafana
//! dashboard has the canary's panels per version.
//! (`prometheus` scraping a running ragscope is in tests/operations.rs.)

use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn run(program: &str, args: &[&str], dir: &Path) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{program} runs (installed by .ci/run): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{program} {args:?} failed:\n{text}");
    text
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable deploy/") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files(&path, out);
        } else {
            out.push(path);
        }
    }
}

#[test]
fn alert_rules_pass_their_promtool_unit_tests() {
    let dir = deploy().join("prometheus");
    run("promtool", &["check", "rules", "alerts.yml"], &dir);
    let out = run("promtool", &["test", "rules", "alerts.test.yml"], &dir);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn every_alert_has_severity_summary_and_a_test() {
    let dir = deploy().join("prometheus");
    let check = r#"
import sys, yaml
rules = [r for g in yaml.safe_load(open("alerts.yml"))["groups"] for r in g["rules"]]
tested = {t["alertname"] for case in yaml.safe_load(open("alerts.test.yml"))["tests"]
          for t in case.get("alert_rule_test", []) if t.get("exp_alerts")}
names = [r["alert"] for r in rules]
for r in rules:
    assert r["labels"]["severity"] in ("warning", "critical"), r["alert"]
    assert len(r["annotations"]["summary"]) > 20, r["alert"]
    assert len(r["annotations"]["description"]) > 60, r["alert"]
    assert r["alert"] in tested, "no firing test for " + r["alert"]
print(" ".join(sorted(names)))
"#;
    let out = run("python3", &["-c", check], &dir);
    for alert in [
        "RagscopeHigh5xxRatio",
        "RagscopeHighLatencyP95",
        "RagscopeHighTimeToFirstTokenP95",
        "RagscopeUpstreamDown",
        "RagscopeRateLimitedSurge",
        "RagscopeFeedbackScoreFalling",
        "RagscopeTelemetryDropped",
        "RagscopeCanaryRolledBack",
        "RagscopeCanaryWorseThanStable",
    ] {
        assert!(out.contains(alert), "{alert} missing: {out}");
    }
}

#[test]
fn prometheus_configuration_is_valid() {
    run(
        "promtool",
        &["check", "config", "prometheus.yml"],
        &deploy().join("prometheus"),
    );
}

#[test]
fn yaml_and_json_files_are_well_formed() {
    let mut all = Vec::new();
    files(&deploy(), &mut all);
    let yaml: Vec<String> = all
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yml" || e == "yaml"))
        .map(|p| p.display().to_string())
        .collect();
    assert!(yaml.len() >= 10, "{yaml:?}");
    let check = "import sys, yaml\nfor f in sys.argv[1:]:\n    docs = [d for d in yaml.safe_load_all(open(f)) if d is not None]\n    assert docs, f + ' is empty'\n";
    let mut args = vec!["-c", check];
    args.extend(yaml.iter().map(String::as_str));
    run("python3", &args, &deploy());

    let json: Vec<&PathBuf> = all
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    assert!(!json.is_empty());
    for path in json {
        let text = std::fs::read_to_string(path).expect("readable");
        let v: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
        assert!(
            v["panels"].as_array().is_some_and(|p| p.len() >= 8),
            "{}",
            path.display()
        );
    }
}

#[test]
fn the_dashboard_shows_the_canary_per_version() {
    let path = deploy().join("grafana/dashboards/ragscope.json");
    let text = std::fs::read_to_string(&path).expect("dashboard");
    let v: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    let panels = v["panels"].as_array().expect("panels");
    let per_version = |metric: &str| {
        panels.iter().any(|p| {
            p["targets"].as_array().into_iter().flatten().any(|t| {
                let expr = t["expr"].as_str().unwrap_or_default();
                expr.contains(metric)
                    && expr.contains("by (ragscope_upstream_version")
                    && t["legendFormat"]
                        .as_str()
                        .is_some_and(|l| l.contains("{{ragscope_upstream_version}}"))
            })
        })
    };
    for metric in [
        "http_server_request_duration_seconds_count",
        "http_server_request_duration_seconds_bucket",
        "gen_ai_server_time_to_first_token_seconds_bucket",
        "ragscope_canary_weight",
        "ragscope_canary_rolled_back",
        "ragscope_canary_rollbacks_total",
    ] {
        assert!(per_version(metric), "no per-version panel of {metric}");
    }
    let mut ids: Vec<i64> = panels.iter().filter_map(|p| p["id"].as_i64()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), panels.len(), "panel ids are unique");
}

#[test]
fn kubernetes_sidecar_has_probes_config_secret_and_tls() {
    let k8s = deploy().join("k8s");
    let deployment = std::fs::read_to_string(k8s.join("deployment.yaml")).expect("deployment");
    for needle in [
        "path: /healthz",
        "path: /readyz",
        "configMapRef: {name: ragscope}",
        "secretRef: {name: ragscope-otlp}",
        "secretName: rag-tls",
        "runAsNonRoot: true",
    ] {
        assert!(deployment.contains(needle), "{needle} missing");
    }
    assert!(k8s.join("service.yaml").exists() && k8s.join("configmap.yaml").exists());
}
