//! TTL checks: pass/warn/fail/update, output truncation, expiry to critical, and the
//! DeregisterCriticalServiceAfter reaper.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{Server, eventually};

fn status_output(c: &serde_json::Value) -> (String, String) {
    (
        c["Status"].as_str().unwrap().to_owned(),
        c["Output"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn pass_warn_fail_update() {
    let s = Server::start(&[]).await;
    s.register(json!({"Name": "web", "Check": {"TTL": "60s"}}))
        .await;
    let id = "service:web";
    let mut last_modify = 0;
    for (path, body, status, output) in [
        (
            "pass/service:web?note=all%20good",
            None,
            "passing",
            "all good",
        ),
        ("warn/service:web", None, "warning", ""),
        ("fail/service:web?note=down", None, "critical", "down"),
        (
            "update/service:web",
            Some(r#"{"Status":"passing","Output":"back"}"#),
            "passing",
            "back",
        ),
        (
            "update/service:web",
            Some(r#"{"status":"warning"}"#),
            "warning",
            "",
        ),
    ] {
        s.put(&format!("/v1/agent/check/{path}"), body)
            .await
            .assert_write_ok();
        assert_eq!(
            status_output(&s.check(id).await),
            (status.to_owned(), output.to_owned()),
            "{path}"
        );
        let health = s.get_json("/v1/health/service/web").await;
        let check = &health[0]["Checks"][1];
        assert_eq!(status_output(check), (status.to_owned(), output.to_owned()));
        let modify = check["ModifyIndex"].as_u64().unwrap();
        assert!(
            modify > last_modify,
            "each status change is a catalog change"
        );
        last_modify = modify;
    }

    // Output is cut at 4096 bytes, as Consul does.
    let long = "x".repeat(5000);
    let body = json!({"Status": "passing", "Output": long}).to_string();
    s.put("/v1/agent/check/update/service:web", Some(&body))
        .await
        .assert_write_ok();
    let (_, output) = status_output(&s.check(id).await);
    assert_eq!(
        output,
        format!("{} ... (captured 4096 of 5000 bytes)", "x".repeat(4096))
    );
}

#[tokio::test]
async fn ttl_expires_to_critical() {
    let s = Server::start(&[]).await;
    s.register(json!({"Name": "web", "Check": {"TTL": "1s", "Status": "passing"}}))
        .await;
    s.register(json!({"Name": "db", "Check": {"TTL": "1s"}}))
        .await;
    let t0 = Instant::now();
    s.put("/v1/agent/check/pass/service:web?note=alive", None)
        .await
        .assert_write_ok();
    assert_eq!(s.check("service:web").await["Status"], "passing");
    let (status, output) = eventually(Duration::from_secs(10), "the TTL to expire", || async {
        let c = s.check("service:web").await;
        (c["Status"] != "passing").then(|| status_output(&c))
    })
    .await;
    assert!(
        t0.elapsed() >= Duration::from_secs(1),
        "expired before its TTL: {:?}",
        t0.elapsed()
    );
    assert_eq!(status, "critical");
    assert_eq!(
        output,
        "TTL expired (last output before timeout follows): alive"
    );
    // Without an update there is no last output.
    let (status, output) = eventually(Duration::from_secs(10), "db's TTL to expire", || async {
        let c = s.check("service:db").await;
        (c["Output"] != "").then(|| status_output(&c))
    })
    .await;
    assert_eq!(
        (status.as_str(), output.as_str()),
        ("critical", "TTL expired")
    );
    // The instance is still registered, only critical.
    assert_eq!(
        s.get_json("/v1/health/service/web?passing").await,
        json!([])
    );
    assert_eq!(
        s.get_json("/v1/health/service/web")
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn updates_restart_the_ttl_clock() {
    let s = Server::start(&[]).await;
    s.register(json!({"Name": "web", "Check": {"TTL": "2s"}}))
        .await;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        s.put("/v1/agent/check/pass/service:web", None)
            .await
            .assert_write_ok();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            s.check("service:web").await["Status"],
            "passing",
            "expired although renewed"
        );
    }
    // Re-registering restarts the clock too, and keeps the status.
    s.register(json!({"Name": "web", "Check": {"TTL": "2s"}}))
        .await;
    assert_eq!(s.check("service:web").await["Status"], "passing");
    eventually(
        Duration::from_secs(10),
        "expiry once renewals stop",
        || async { (s.check("service:web").await["Status"] == "critical").then_some(()) },
    )
    .await;
}

/// DeregisterCriticalServiceAfter below the 1-minute minimum is raised to 1m, so the reaper
/// (here every second) removes the service between ~60 s and ~62 s after it turned critical, and
/// not before. This test takes a little over a minute by necessity.
#[tokio::test]
async fn deregister_critical_service_after_reaps() {
    let s = Server::start(&["--reap-interval", "1s"]).await;
    s.register(json!({"Name": "web", "ID": "doomed",
                      "Check": {"TTL": "1s", "Status": "passing", "DeregisterCriticalServiceAfter": "1s"}}))
        .await;
    s.register(json!({"Name": "web", "ID": "kept", "Check": {"TTL": "1s"}}))
        .await;
    s.register(json!({"Name": "web", "ID": "off", "Check": {"TTL": "1s", "DeregisterCriticalServiceAfter": "0s"}}))
        .await;
    let critical_at = eventually(Duration::from_secs(10), "the TTL to expire", || async {
        (s.check("service:doomed").await["Status"] == "critical").then(Instant::now)
    })
    .await;
    let before = s.get("/v1/health/service/web").await.index();

    // Well past the requested 1s but before the 1m minimum: still registered.
    tokio::time::sleep_until((critical_at + Duration::from_secs(50)).into()).await;
    assert!(
        s.get_json("/v1/agent/services")
            .await
            .get("doomed")
            .is_some(),
        "reaped before the 1m minimum"
    );

    let gone_at = eventually(
        Duration::from_secs(20),
        "the reaper to remove the service",
        || async {
            let services = s.get_json("/v1/agent/services").await;
            services.get("doomed").is_none().then(Instant::now)
        },
    )
    .await;
    let after = gone_at - critical_at;
    assert!(
        after >= Duration::from_secs(59),
        "reaped after only {after:?}"
    );
    assert!(
        after <= Duration::from_secs(64),
        "reaped only after {after:?}"
    );
    let checks = s.get_json("/v1/agent/checks").await;
    assert!(
        checks.get("service:doomed").is_none(),
        "its checks go too: {checks}"
    );
    assert!(checks.get("service:kept").is_some() && checks.get("service:off").is_some());
    let r = s.get("/v1/health/service/web").await;
    assert!(r.index() > before, "the deregistration is a catalog change");
    let mut ids: Vec<String> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Service"]["ID"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    assert_eq!(ids, ["kept", "off"]);
}
