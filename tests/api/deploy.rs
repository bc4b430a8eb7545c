//! The monitoring shipped in `deploy/`: the Prometheus rules parse and pass their unit tests
//! (`promtool`), and every metric the rules and the Grafana dashboard use is one a live twinreg
//! exports — and documented in `docs/metrics.md`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use std::time::Duration;

use crate::{Env, body, path};
use testkit::gateway::Options;
use testkit::{eventually, find_binary};

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// `twinreg_*` names in a text, as written (with `_total`, `_bucket`... suffixes).
fn names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("twinreg_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

/// The metric family a sample name belongs to (`..._bucket` → the histogram, `..._total` → the
/// counter), as `# TYPE` lines name them.
fn family(name: &str) -> &str {
    for suffix in ["_bucket", "_sum", "_count", "_total"] {
        if let Some(base) = name.strip_suffix(suffix) {
            return base;
        }
    }
    name
}

fn promtool(args: &[&str]) {
    let bin = find_binary("PROMTOOL_BIN", "promtool").expect(
        "promtool not found on PATH or at PROMTOOL_BIN; run scripts/setup.sh (Debian package prometheus)",
    );
    let out = Command::new(bin)
        .current_dir(repo("deploy/prometheus"))
        .args(args)
        .output()
        .expect("running promtool");
    assert!(
        out.status.success(),
        "promtool {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_alert_rules_parse_and_pass_their_unit_tests() {
    promtool(&["check", "rules", "twinreg-rules.yml"]);
    promtool(&["test", "rules", "twinreg-rules.test.yml"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_rules_and_dashboard_use_is_exported_and_documented() {
    let rules = std::fs::read_to_string(repo("deploy/prometheus/twinreg-rules.yml")).unwrap();
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo("deploy/grafana/twinreg-dashboard.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let exprs: Vec<&str> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str())
        .collect();
    assert!(exprs.len() >= 10, "the dashboard has its panels");
    // The replica selector scopes every panel: each series selector names the variable.
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert!(variables.contains(&"replica"), "{variables:?}");
    for e in &exprs {
        let selectors = e.matches("twinreg_").count();
        assert_eq!(
            e.matches("{instance=~\"$replica\"").count(),
            selectors,
            "a panel ignores the replica selector: {e}"
        );
    }
    // Every alert links its runbook, a section of docs/metrics.md.
    let docs = std::fs::read_to_string(repo("docs/metrics.md")).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.contains(&"TwinregDown") && alerts.contains(&"TwinregSlowRequests"));
    for alert in &alerts {
        let url = format!("runbook_url: \"docs/metrics.md#{}\"", alert.to_lowercase());
        assert!(rules.contains(&url), "{alert} has no {url}");
        assert!(
            docs.contains(&format!("\n### {alert}\n")),
            "{alert} has no runbook section in docs/metrics.md"
        );
    }
    assert_eq!(rules.matches("runbook_url:").count(), alerts.len());
    let mut used = names(&rules);
    for e in &exprs {
        used.extend(names(e));
    }

    // A sweep every second, so the sweep's gauges are there too.
    let env = Env::start_with(Options {
        extra_toml: "[anti_entropy]\ninterval = \"1s\"\n".into(),
        ..Options::default()
    })
    .await;
    let c = env.gw.client("payments");
    let r = c
        .put_json(&path("payments", "a"), &body("10.0.0.1", 80))
        .await;
    assert_eq!(r.status, 200);
    let text = eventually(
        Duration::from_secs(20),
        "a sweep and a probe round",
        || async {
            let (_, text) = env.gw.admin_get("/metrics").await;
            (text.contains("# TYPE twinreg_instances ")
                && text.contains("# TYPE twinreg_pool_connections "))
            .then_some(text)
        },
    )
    .await;
    let exported: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for name in &used {
        assert!(
            exported.contains(family(name)),
            "{name} is used in deploy/ but twinreg does not export {}",
            family(name)
        );
    }
    let docs = std::fs::read_to_string(repo("docs/metrics.md")).unwrap();
    let documented = names(&docs);
    for family in &exported {
        assert!(
            documented
                .iter()
                .any(|d| d == family || d.starts_with(&format!("{family}_"))),
            "{family} is exported but not documented in docs/metrics.md"
        );
    }
}
