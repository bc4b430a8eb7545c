//! Alias checks: an `AliasService` check takes the aggregate status of the aliased service's
//! checks at once (no polling), is critical while that service is not registered, may not carry
//! a TTL, and is reaped by `DeregisterCriticalServiceAfter` like any other check.

use std::time::Duration;

use serde_json::json;

use crate::support::{Server, eventually};

async fn status(s: &Server, id: &str) -> (String, String) {
    let c = s.check(id).await;
    (
        c["Status"].as_str().unwrap().to_owned(),
        c["Output"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn an_alias_follows_the_aliased_service_without_polling() {
    let s = Server::start(&[]).await;
    // The alias before its target exists: critical, naming the missing service.
    s.register(json!({"Name": "web", "ID": "web-1",
                      "Check": {"CheckID": "service:web-1", "AliasService": "keeper"}}))
        .await;
    let (st, out) = status(&s, "service:web-1").await;
    assert_eq!(st, "critical");
    assert!(
        out.starts_with("Service keeper could not be found on node "),
        "{out}"
    );
    let passing = s.get_json("/v1/health/service/web?passing").await;
    assert_eq!(passing.as_array().unwrap().len(), 0);

    s.register(json!({"Name": "keeper", "ID": "keeper",
                      "Check": {"CheckID": "keeper-ttl", "Name": "keeper ttl", "TTL": "60s", "Status": "passing"}}))
        .await;
    assert_eq!(
        status(&s, "service:web-1").await,
        ("passing".to_owned(), "All checks passing.".to_owned())
    );
    let before = s.get("/v1/health/service/web").await.index();

    // A failing target fails the alias, and the alias's service sees a new index.
    s.put("/v1/agent/check/fail/keeper-ttl?note=gone", None)
        .await
        .assert_write_ok();
    assert_eq!(
        status(&s, "service:web-1").await,
        (
            "critical".to_owned(),
            "Aliased check \"keeper ttl\" failing: gone".to_owned()
        )
    );
    let after = s.get("/v1/health/service/web").await.index();
    assert!(after > before, "the alias's change is a change of web");
    s.put("/v1/agent/check/warn/keeper-ttl", None)
        .await
        .assert_write_ok();
    assert_eq!(status(&s, "service:web-1").await.0, "warning");
    s.put("/v1/agent/check/pass/keeper-ttl", None)
        .await
        .assert_write_ok();
    assert_eq!(status(&s, "service:web-1").await.0, "passing");

    // A status given for an alias is ignored, and the alias cannot be updated like a TTL check.
    s.register(json!({"Name": "web", "ID": "web-2",
                      "Check": {"AliasService": "keeper", "Status": "critical"}}))
        .await;
    assert_eq!(status(&s, "service:web-2").await.0, "passing");
    let r = s.put("/v1/agent/check/pass/service:web-2", None).await;
    assert!(r.status != 200, "an alias check is no TTL check");

    // The target deregistered: critical at once.
    s.put("/v1/agent/service/deregister/keeper", None)
        .await
        .assert_write_ok();
    assert_eq!(status(&s, "service:web-1").await.0, "critical");
}

#[tokio::test]
async fn an_alias_with_a_ttl_is_refused() {
    let s = Server::start(&[]).await;
    let body =
        json!({"Name": "web", "Check": {"AliasService": "keeper", "TTL": "10s"}}).to_string();
    s.put("/v1/agent/service/register", Some(&body))
        .await
        .assert_error(
            400,
            "Invalid check: TTL must be not be set for Alias checks",
        );
}

/// The target's TTL lapses: the alias turns critical with it, and the reaper removes the alias's
/// service after DeregisterCriticalServiceAfter (1 minute at least), the target's own service
/// too. This test takes a little over a minute by necessity.
#[tokio::test]
async fn when_the_target_lapses_the_aliasing_services_are_reaped() {
    let s = Server::start(&["--reap-interval", "1s"]).await;
    s.register(json!({"Name": "keeper", "ID": "keeper",
                      "Check": {"TTL": "1s", "Status": "passing", "DeregisterCriticalServiceAfter": "1m"}}))
        .await;
    for i in 0..3 {
        s.register(json!({"Name": "web", "ID": format!("web-{i}"),
                          "Check": {"AliasService": "keeper", "DeregisterCriticalServiceAfter": "1m"}}))
            .await;
    }
    eventually(
        Duration::from_secs(10),
        "the aliases to go critical",
        || async { (status(&s, "service:web-0").await.0 == "critical").then_some(()) },
    )
    .await;
    eventually(
        Duration::from_secs(80),
        "the reaper to remove every alias",
        || async {
            let services = s.get_json("/v1/agent/services").await;
            let left = services.as_object().unwrap().len();
            (left == 0).then_some(())
        },
    )
    .await;
}
