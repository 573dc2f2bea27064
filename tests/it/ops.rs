//! The operator's side: the Grafana dashboard and the Prometheus alerts in
//! `deploy/` refer only to metrics a running payhook exports, every alert
//! has a severity, a summary and a runbook line naming a `payhook` command,
//! and the rules parse. (`scripts/check-ops` also runs `promtool check
//! rules` and the alert unit tests in `deploy/prometheus/alerts_test.yml`.)

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use serde::Deserialize;

use crate::helpers::{Env, at, payment};

const DASHBOARD: &str = include_str!("../../deploy/grafana/payhook.json");
const ALERTS: &str = include_str!("../../deploy/prometheus/alerts.yml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    groups: Vec<RuleGroup>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleGroup {
    name: String,
    rules: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    alert: String,
    expr: String,
    #[serde(rename = "for")]
    for_: Option<String>,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

fn rules() -> Vec<Rule> {
    let file: RuleFile = serde_norway::from_str(ALERTS).expect("alerts.yml is a rule file");
    file.groups
        .into_iter()
        .flat_map(|g| {
            assert!(!g.name.is_empty());
            g.rules
        })
        .collect()
}

/// Every PromQL expression of the dashboard (panels and variables).
fn dashboard_exprs() -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr" | "definition", serde_json::Value::String(s)) => {
                            out.push(s.clone())
                        }
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let v: serde_json::Value = serde_json::from_str(DASHBOARD).expect("the dashboard is JSON");
    let mut out = Vec::new();
    walk(&v, &mut out);
    out
}

/// The `payhook_*` metric names an expression refers to (outside quoted
/// label values).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let unquoted: String = expr.split('"').step_by(2).collect::<Vec<_>>().join(" ");
    let mut out = BTreeSet::new();
    let mut rest = unquoted.as_str();
    while let Some(i) = rest.find("payhook_") {
        // Only at the start of an identifier.
        let before = rest[..i].chars().last();
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            out.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    out
}

#[test]
fn every_alert_has_a_severity_a_summary_and_a_runbook() {
    let rules = rules();
    let names: BTreeSet<_> = rules.iter().map(|r| r.alert.as_str()).collect();
    assert_eq!(names.len(), rules.len(), "alert names must be unique");
    for want in [
        "PayhookPartitionStalled",
        "PayhookPartitionStopped",
        "PayhookDeadLetters",
        "PayhookConsumerLagHigh",
        "PayhookWebhooksUnavailable",
    ] {
        assert!(names.contains(want), "{want} missing from alerts.yml");
    }
    for r in &rules {
        assert!(!r.expr.trim().is_empty(), "{}", r.alert);
        if let Some(f) = &r.for_ {
            humantime::parse_duration(f).unwrap_or_else(|_| panic!("{}: for: {f}", r.alert));
        }
        let sev = r.labels.get("severity").map(String::as_str);
        assert!(
            matches!(sev, Some("warning" | "critical")),
            "{}: severity {sev:?}",
            r.alert
        );
        assert!(
            r.annotations.get("summary").is_some_and(|s| !s.is_empty()),
            "{}",
            r.alert
        );
        let runbook = r.annotations.get("runbook").map_or("", String::as_str);
        assert!(
            runbook.contains("`payhook "),
            "{}: the runbook names no payhook command: {runbook:?}",
            r.alert
        );
        assert!(!runbook.contains('\n'), "{}: one line", r.alert);
    }
}

#[test]
fn the_dashboard_covers_what_an_operator_looks_at_first() {
    let referenced: BTreeSet<String> = dashboard_exprs()
        .iter()
        .flat_map(|e| metric_names(e))
        .collect();
    for want in [
        "payhook_webhooks_total",
        "payhook_publish_seconds_bucket",
        "payhook_consumer_lag",
        "payhook_consumer_stalled",
        "payhook_consumer_stopped",
        "payhook_consumer_records_total",
        "payhook_consumer_retries_total",
    ] {
        assert!(
            referenced.contains(want),
            "the dashboard does not show {want}"
        );
    }
}

/// The metric names of a text exposition: each sample's name.
fn exported(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap_or("").to_owned())
        .collect()
}

#[tokio::test]
async fn dashboard_and_alerts_use_only_metrics_payhook_exports() {
    let env = Env::new().await;
    let app = env.start(&[]).await;
    // A little traffic: one accepted webhook, applied; the consumers have
    // started, so their series exist.
    app.payment(&payment("evt_ops_1", "ord_ops", "succeeded", &at(0)))
        .await;
    env.wait_caught_up().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let names = loop {
        let text = app.metrics().await;
        let names = exported(&text);
        if names.contains("payhook_consumer_stalled")
            && names.contains("payhook_consumer_records_total")
        {
            break names;
        }
        assert!(
            Instant::now() < deadline,
            "consumer series never appeared:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(names.contains("payhook_build_info"), "{names:?}");

    // The container health probe, against the running app.
    for path in ["/healthz", "/readyz"] {
        let url = app.url(path);
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_payhook"))
                .args(["healthcheck", "--url", &url])
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "{path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let mut missing = Vec::new();
    for (what, exprs) in [
        ("deploy/grafana/payhook.json", dashboard_exprs()),
        (
            "deploy/prometheus/alerts.yml",
            rules().into_iter().map(|r| r.expr).collect(),
        ),
    ] {
        for e in &exprs {
            for m in metric_names(e) {
                if !names.contains(&m) {
                    missing.push(format!("{what}: {m} (in `{}`)", e.trim()));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "metrics referenced but not exported by /metrics:\n  {}\nexported: {names:?}",
        missing.join("\n  ")
    );
    app.stop().await;
    env.cleanup().await;
}

#[test]
fn metric_names_are_found_in_promql() {
    let m = metric_names(
        r#"sum by (le) (rate(payhook_publish_seconds_bucket{x="payhook_no"}[5m])) / my_payhook_x"#,
    );
    assert_eq!(
        m.into_iter().collect::<Vec<_>>(),
        ["payhook_publish_seconds_bucket"]
    );
}
