//! `/overview` and `/feedback` as self-contained HTML: inline CSS and SVG, no script, no font,
//! nothing fetched, so the pages work on an air-gapped host and read fine without JavaScript.
//! Both are drawn from their JSON twin's value; every text from a client is escaped.

use std::fmt::Write as _;

use serde_json::Value;

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}\
header{background:#1d2330;color:#fff;padding:10px 16px;display:flex;gap:16px;align-items:center}\
header a{color:#9cc3ff}main{padding:12px 16px}\
table{border-collapse:collapse;background:#fff;margin:8px 0}\
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #e3e6eb;vertical-align:top}\
td.num,th.num{text-align:right}.mono{font-family:ui-monospace,monospace;font-size:12px}\
.cards{display:flex;flex-wrap:wrap;gap:8px}.card{background:#fff;border:1px solid #e3e6eb;padding:6px 10px}\
.card b{display:block;font-size:18px}.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(330px,1fr));gap:10px}\
figure{margin:0;background:#fff;border:1px solid #e3e6eb;padding:6px}figcaption{font-weight:600}\
svg{width:100%;height:auto}.s0{stroke:#3d7bd9;fill:#3d7bd9}.s1{stroke:#d64545;fill:#d64545}\
polyline{fill:none;stroke-width:1.5}.axis{stroke:#c9ced6}.legend{font-size:12px;color:#556}\
.low td{background:#fff1f0}.text{max-width:32em;white-space:pre-wrap}.empty{color:#667}";

/// HTML-escapes `s` (text and attribute values).
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn shell(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>ragscope · {title}</title><style>{STYLE}</style></head><body>\
<header><strong>ragscope</strong><a href=\"/overview\">overview</a><a href=\"/traces\">recent requests</a>\
<a href=\"/feedback\">feedback</a><a href=\"/metrics\">/metrics</a></header><main>{body}</main></body></html>"
    )
}

/// A number for people: `—` for null, integers as they are, others with `digits` decimals.
fn num(v: &Value, digits: usize) -> String {
    match v {
        Value::Number(n) if n.is_u64() || n.is_i64() => n.to_string(),
        Value::Number(n) => format!("{:.*}", digits, n.as_f64().unwrap_or_default()),
        Value::String(s) => escape(s),
        _ => "\u{2014}".to_owned(),
    }
}

fn percent(v: &Value) -> String {
    v.as_f64()
        .map_or("\u{2014}".to_owned(), |r| format!("{:.1} %", r * 100.0))
}

/// One chart: a polyline and a circle per bucket with data, per series.
fn chart(id: &str, title: &str, unit: &str, series: &Value, keys: &[(&str, &str)]) -> String {
    const W: f64 = 320.0;
    const H: f64 = 110.0;
    const PAD: f64 = 4.0;
    let points = series.as_array().map(Vec::as_slice).unwrap_or_default();
    let n = points.len().max(2) as f64;
    let max = keys
        .iter()
        .flat_map(|(k, _)| points.iter().filter_map(move |p| p[*k].as_f64()))
        .fold(0.0_f64, f64::max);
    let top = if max > 0.0 { max } else { 1.0 };
    let mut svg = format!(
        "<figure id=\"{id}\"><figcaption>{title}</figcaption>\
<svg viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{title}\">\
<line class=\"axis\" x1=\"0\" y1=\"{y}\" x2=\"{W}\" y2=\"{y}\"/>",
        y = H - PAD
    );
    for (i, (key, label)) in keys.iter().enumerate() {
        let mut line = String::new();
        let mut dots = String::new();
        for (j, p) in points.iter().enumerate() {
            let Some(v) = p[*key].as_f64() else { continue };
            let x = j as f64 * W / (n - 1.0);
            let y = H - PAD - v / top * (H - 2.0 * PAD);
            let _ = write!(line, "{x:.1},{y:.1} ");
            let _ = write!(
                dots,
                "<circle class=\"point s{i}\" data-series=\"{key}\" cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"2\"><title>{label}: {v:.3}{unit}</title></circle>"
            );
        }
        let _ = write!(
            svg,
            "<polyline class=\"s{i}\" points=\"{}\"/>{dots}",
            line.trim_end()
        );
    }
    svg.push_str("</svg><div class=\"legend\">");
    for (i, (_, label)) in keys.iter().enumerate() {
        let _ = write!(
            svg,
            "<span class=\"s{i}\" style=\"fill:none\">\u{25cf}</span> {label} "
        );
    }
    let _ = write!(
        svg,
        "\u{b7} max {}{unit}</div></figure>",
        num(&serde_json::json!(max), 2)
    );
    svg
}

/// `/overview`, from the value of `/overview.json`.
pub fn overview(data: &Value) -> String {
    let t = &data["totals"];
    let mut body = format!(
        "<h2>Last {} minutes</h2><div class=\"cards\" id=\"totals\">",
        data["window_seconds"].as_u64().unwrap_or(0) / 60
    );
    for (id, label, value) in [
        ("requests", "requests", num(&t["requests"], 0)),
        ("error-rate", "error rate", percent(&t["error_rate"])),
        ("p95", "p95 latency", format!("{} ms", num(&t["p95_ms"], 1))),
        (
            "ttft-p95",
            "p95 TTFT",
            format!("{} ms", num(&t["ttft_p95_ms"], 1)),
        ),
        (
            "tokens",
            "tokens in / out",
            format!(
                "{} / {}",
                num(&t["input_tokens"], 0),
                num(&t["output_tokens"], 0)
            ),
        ),
        ("rate-limited", "rate limited", num(&t["rate_limited"], 0)),
        (
            "empty-rate",
            "empty retrievals",
            percent(&t["empty_retrieval_rate"]),
        ),
        (
            "feedback-mean",
            "mean feedback",
            num(&t["feedback_mean"], 2),
        ),
        ("cost", "cost (USD)", num(&data["cost_usd"], 4)),
    ] {
        let _ = write!(
            body,
            "<div class=\"card\" id=\"card-{id}\"><b>{value}</b>{label}</div>"
        );
    }
    body.push_str("</div>");
    let bucket = data["bucket_seconds"].as_u64().unwrap_or(0);
    let _ = write!(
        body,
        "<p class=\"legend\">One point per {bucket} s; newest on the right.</p><div class=\"charts\">"
    );
    // (id, title, unit, [(series field, legend)]), in the order they are shown.
    type Chart = (
        &'static str,
        &'static str,
        &'static str,
        &'static [(&'static str, &'static str)],
    );
    const CHARTS: &[Chart] = &[
        (
            "chart-rate",
            "Requests per second",
            " /s",
            &[("request_rate", "requests/s")],
        ),
        (
            "chart-errors",
            "Error rate",
            "",
            &[("error_rate", "errors/requests")],
        ),
        (
            "chart-latency",
            "Latency",
            " ms",
            &[("p50_ms", "p50"), ("p95_ms", "p95")],
        ),
        (
            "chart-ttft",
            "Time to first token, p95",
            " ms",
            &[("ttft_p95_ms", "p95 TTFT")],
        ),
        (
            "chart-tokens",
            "Tokens per minute",
            "",
            &[
                ("input_tokens_per_minute", "input"),
                ("output_tokens_per_minute", "output"),
            ],
        ),
        (
            "chart-rate-limited",
            "Rate-limited requests",
            "",
            &[("rate_limited", "429")],
        ),
        (
            "chart-empty",
            "Empty-retrieval rate",
            "",
            &[("empty_retrieval_rate", "empty/retrievals")],
        ),
        (
            "chart-feedback",
            "Mean feedback score",
            "",
            &[("feedback_mean", "mean score")],
        ),
    ];
    for (id, title, unit, keys) in CHARTS {
        body.push_str(&chart(id, title, unit, &data["series"], keys));
    }
    body.push_str("</div><h2>Per model</h2>");
    let models = data["models"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if models.is_empty() {
        body.push_str("<p class=\"empty\">No GenAI traffic in the window yet.</p>");
    }
    body.push_str(
        "<table id=\"models\"><thead><tr><th>model</th><th class=\"num\">requests</th><th class=\"num\">errors</th>\
<th class=\"num\">p95 latency (ms)</th><th class=\"num\">p95 TTFT (ms)</th><th class=\"num\">tokens in</th>\
<th class=\"num\">tokens out</th><th class=\"num\">cost (USD)</th></tr></thead><tbody>",
    );
    for m in models {
        let _ = write!(
            body,
            "<tr class=\"model\"><td class=\"mono\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
<td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            num(&m["model"], 0),
            num(&m["requests"], 0),
            num(&m["errors"], 0),
            num(&m["p95_ms"], 1),
            num(&m["ttft_p95_ms"], 1),
            num(&m["input_tokens"], 0),
            num(&m["output_tokens"], 0),
            num(&m["cost_usd"], 4),
        );
    }
    let _ = write!(
        body,
        "</tbody></table><p class=\"legend\">At most {} models by name, later ones as <code>other</code>. \
Machine-readable: <a href=\"/overview.json\">/overview.json</a>.</p>",
        data["max_models"]
    );
    shell("overview", &body)
}

/// `/feedback`, from the value of `/feedback.json`.
pub fn feedback(data: &Value) -> String {
    let by_score = data["sort"] == "score";
    let entries = data["feedback"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut body = format!(
        "<h2>Feedback</h2><p>{} kept (the newest {}). Order: {}.</p>",
        entries.len(),
        data["capacity"],
        if by_score {
            "<strong>lowest score first</strong> \u{b7} <a href=\"/feedback\">newest first</a>"
        } else {
            "<strong>newest first</strong> \u{b7} <a id=\"sort-score\" href=\"/feedback?sort=score\">lowest score first</a>"
        }
    );
    if entries.is_empty() {
        body.push_str(
            "<p class=\"empty\">No feedback yet: POST {\"trace_id\", \"score\"} to the feedback path.</p>",
        );
    }
    body.push_str(
        "<table id=\"feedback\"><thead><tr><th>time</th><th class=\"num\">score</th><th>label</th>\
<th>model</th><th class=\"num\">docs</th><th>comment</th><th>question</th><th>answer</th><th>trace</th></tr></thead><tbody>",
    );
    for e in entries {
        let low = e["score"].as_f64().is_some_and(|s| s <= 0.0);
        let trace = e["trace_id"].as_str().unwrap_or_default();
        let _ = write!(
            body,
            "<tr class=\"entry{}\"><td class=\"mono\">{}</td><td class=\"num score\">{}</td><td>{}</td><td class=\"mono\">{}</td>\
<td class=\"num\">{}</td><td class=\"text\">{}</td><td class=\"text\">{}</td><td class=\"text\">{}</td>\
<td class=\"mono\"><a href=\"/traces/{t}\">{t}</a></td></tr>",
            if low { " low" } else { "" },
            time(&e["time"]),
            num(&e["score"], 2),
            num(&e["label"], 0),
            num(&e["model"], 0),
            num(&e["documents"], 0),
            num(&e["comment"], 0),
            num(&e["question"], 0),
            num(&e["answer"], 0),
            t = escape(trace),
        );
    }
    body.push_str(
        "</tbody></table><p class=\"legend\">Comment, question and answer appear only with content capture on \
(OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT), redacted. Machine-readable: \
<a href=\"/feedback.json\">/feedback.json</a>.</p>",
    );
    shell("feedback", &body)
}

/// Unix milliseconds as an HTTP date (`Tue, 01 Dec 2026 22:10:00 GMT`).
fn time(v: &Value) -> String {
    match v.as_u64() {
        Some(ms) => {
            httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        }
        None => "\u{2014}".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn client_text_is_escaped() {
        assert_eq!(
            escape("<a href='x'>&\""),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;"
        );
        let html = feedback(&json!({"sort": "time", "capacity": 5, "feedback": [
            {"trace_id": "ab", "time": 0, "score": -1, "label": "<script>x</script>", "comment": null}
        ]}));
        assert!(!html.contains("<script>x"), "{html}");
        assert!(html.contains("&lt;script&gt;x"), "{html}");
        assert!(html.contains("class=\"entry low\""), "{html}");
    }

    #[test]
    fn dates_are_utc() {
        assert_eq!(time(&json!(0)), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(time(&json!(null)), "\u{2014}");
    }

    #[test]
    fn charts_draw_a_point_per_bucket_with_data() {
        let series = json!([{"v": 1.0}, {"v": null}, {"v": 3.0}]);
        let svg = chart("c", "t", "", &series, &[("v", "v")]);
        assert_eq!(svg.matches("<circle class=\"point").count(), 2, "{svg}");
        assert!(
            svg.contains("<polyline class=\"s0\" points=\"0.0,"),
            "{svg}"
        );
    }
}
