//! Service maintenance mode (`PUT /v1/agent/service/maintenance/:service_id`), Consul's drain: a
//! critical `_service_maintenance:<id>` check that takes the instance out of `?passing` answers
//! while it lasts, with Consul's texts, its `enable` parsing, its ACL, and what re-registration,
//! `?replace-existing-checks` and deregistration do to it.

use serde_json::{Value, json};

use crate::support::Server;

const MAINT: &str = "_service_maintenance:web-1";
const DEFAULT_REASON: &str = "Maintenance mode is enabled for this service, but no reason was provided. This is a default message.";

/// Two instances of `web`, each with a passing TTL check.
async fn two_instances(s: &Server) {
    for id in ["web-1", "web-2"] {
        s.register(json!({"Name": "web", "ID": id, "Tags": ["v1"], "Port": 80,
                          "Check": {"TTL": "60s", "Status": "passing"}}))
            .await;
    }
}

/// The service IDs of a health answer, sorted.
fn ids(v: &Value) -> Vec<String> {
    let mut ids: Vec<String> = v
        .as_array()
        .expect("a list")
        .iter()
        .map(|e| e["Service"]["ID"].as_str().expect("Service.ID").to_owned())
        .collect();
    ids.sort();
    ids
}

async fn passing(s: &Server) -> Vec<String> {
    ids(&s.get_json("/v1/health/service/web?passing").await)
}

/// `X-Consul-Index` of `web`'s health.
async fn health_index(s: &Server) -> u64 {
    s.get("/v1/health/service/web").await.index()
}

async fn maintenance(s: &Server, query: &str) -> crate::support::Resp {
    s.put(
        &format!("/v1/agent/service/maintenance/web-1?{query}"),
        None,
    )
    .await
}

async fn has_maint_check(s: &Server) -> bool {
    s.get_json("/v1/agent/checks").await.get(MAINT).is_some()
}

#[tokio::test]
async fn enable_adds_the_critical_check_and_leaves_passing_answers() {
    let s = Server::start(&[]).await;
    two_instances(&s).await;
    assert_eq!(passing(&s).await, ["web-1", "web-2"]);
    let before = health_index(&s).await;

    maintenance(&s, "enable=true&reason=draining+for+deploy")
        .await
        .assert_write_ok();

    assert_eq!(
        s.check(MAINT).await,
        json!({
            "Node": "mini-consul",
            "CheckID": MAINT,
            "Name": "Service Maintenance Mode",
            "Status": "critical",
            "Notes": "draining for deploy",
            "Output": "",
            "ServiceID": "web-1",
            "ServiceName": "web",
            "ServiceTags": ["v1"],
            "Type": "maintenance",
            "Interval": "",
            "Timeout": "",
            "ExposedPort": 0,
            "Definition": {},
            "CreateIndex": 0,
            "ModifyIndex": 0
        })
    );
    assert!(
        health_index(&s).await > before,
        "the service's health index moves when the check is added"
    );
    assert_eq!(passing(&s).await, ["web-2"], "out of ?passing");
    let all = s.get_json("/v1/health/service/web").await;
    assert_eq!(
        ids(&all),
        ["web-1", "web-2"],
        "still registered, still listed"
    );
    let web1 = all
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["Service"]["ID"] == "web-1")
        .expect("web-1");
    let checks: Vec<(&str, &str)> = web1["Checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["CheckID"].as_str().unwrap(),
                c["Status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        checks,
        [
            ("serfHealth", "passing"),
            (MAINT, "critical"),
            ("service:web-1", "passing")
        ]
    );
    let maint = web1["Checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["CheckID"] == MAINT)
        .unwrap();
    assert_eq!(maint["Type"], "maintenance");
    assert_eq!(maint["Notes"], "draining for deploy");
    assert!(maint["CreateIndex"].as_u64().unwrap() > before);

    // Its own checks keep running; the maintenance check is not a TTL check.
    s.put("/v1/agent/check/warn/service:web-1?note=slow", None)
        .await
        .assert_write_ok();
    assert_eq!(s.check("service:web-1").await["Status"], "warning");
    assert_eq!(s.check(MAINT).await["Status"], "critical");
    s.put(&format!("/v1/agent/check/pass/{MAINT}"), None)
        .await
        .assert_error(
            500,
            &format!("CheckID {MAINT:?} does not have associated TTL"),
        );
    assert_eq!(s.check(MAINT).await["Status"], "critical");
}

#[tokio::test]
async fn the_default_reason_and_enabling_twice() {
    let s = Server::start(&[]).await;
    two_instances(&s).await;
    maintenance(&s, "enable=true").await.assert_write_ok();
    assert_eq!(s.check(MAINT).await["Notes"], DEFAULT_REASON);
    maintenance(&s, "enable=false").await.assert_write_ok();
    maintenance(&s, "enable=true&reason=")
        .await
        .assert_write_ok();
    assert_eq!(
        s.check(MAINT).await["Notes"],
        DEFAULT_REASON,
        "an empty reason"
    );

    // Already in maintenance: Consul returns early, nothing changes (not even the reason).
    let idx = health_index(&s).await;
    maintenance(&s, "enable=true&reason=another")
        .await
        .assert_write_ok();
    assert_eq!(s.check(MAINT).await["Notes"], DEFAULT_REASON);
    assert_eq!(health_index(&s).await, idx, "a no-op moves no index");
    assert_eq!(passing(&s).await, ["web-2"]);
}

#[tokio::test]
async fn disable_puts_the_instance_back() {
    let s = Server::start(&[]).await;
    two_instances(&s).await;
    maintenance(&s, "enable=true&reason=x")
        .await
        .assert_write_ok();
    assert_eq!(passing(&s).await, ["web-2"]);
    let idx = health_index(&s).await;

    maintenance(&s, "enable=false").await.assert_write_ok();
    assert!(!has_maint_check(&s).await, "the check is gone");
    assert_eq!(passing(&s).await, ["web-1", "web-2"], "back in ?passing");
    let after = health_index(&s).await;
    assert!(after > idx, "the health index moves when the check goes");

    // Not in maintenance: disabling is no error and changes nothing.
    maintenance(&s, "enable=false").await.assert_write_ok();
    assert_eq!(health_index(&s).await, after);
    assert_eq!(passing(&s).await, ["web-1", "web-2"]);
}

#[tokio::test]
async fn enable_must_be_a_go_bool() {
    let s = Server::start(&[]).await;
    two_instances(&s).await;
    for query in ["", "reason=x", "Enable=true"] {
        maintenance(&s, query)
            .await
            .assert_error(400, "Missing value for enable");
    }
    for (query, raw) in [
        ("enable=maybe", "maybe"),
        ("enable=yes", "yes"),
        ("enable=", ""),
        ("enable", ""),
        ("enable=tRuE", "tRuE"),
        ("enable=%22true%22", "\"true\""),
    ] {
        maintenance(&s, query)
            .await
            .assert_error(400, &format!("Invalid value for enable: {raw:?}"));
    }
    assert!(!has_maint_check(&s).await, "no refused request enabled it");

    // Every spelling strconv.ParseBool takes.
    for (on, off) in [
        ("1", "0"),
        ("t", "f"),
        ("T", "F"),
        ("TRUE", "FALSE"),
        ("True", "False"),
    ] {
        maintenance(&s, &format!("enable={on}"))
            .await
            .assert_write_ok();
        assert!(has_maint_check(&s).await, "enable={on}");
        assert_eq!(passing(&s).await, ["web-2"], "enable={on}");
        maintenance(&s, &format!("enable={off}"))
            .await
            .assert_write_ok();
        assert!(!has_maint_check(&s).await, "enable={off}");
    }
    // The first value counts, as Go's Query().Get.
    maintenance(&s, "enable=true&enable=nope")
        .await
        .assert_write_ok();
    assert!(has_maint_check(&s).await);
}

#[tokio::test]
async fn unknown_and_missing_service_ids() {
    let s = Server::start(&[]).await;
    two_instances(&s).await;
    let unknown = |id: &str| {
        format!(
            "Unknown service ID {id:?}. Ensure that the service ID is passed, not the service name."
        )
    };
    for query in ["enable=true", "enable=false"] {
        s.put(&format!("/v1/agent/service/maintenance/nope?{query}"), None)
            .await
            .assert_error(404, &unknown("nope"));
        // IDs are case-sensitive, and a name is not an ID.
        s.put(
            &format!("/v1/agent/service/maintenance/WEB-1?{query}"),
            None,
        )
        .await
        .assert_error(404, &unknown("WEB-1"));
        s.put(&format!("/v1/agent/service/maintenance/web?{query}"), None)
            .await
            .assert_error(404, &unknown("web"));
    }
    // The enable check comes first.
    s.put("/v1/agent/service/maintenance/nope?enable=maybe", None)
        .await
        .assert_error(400, "Invalid value for enable: \"maybe\"");
    s.put("/v1/agent/service/maintenance/?enable=true", None)
        .await
        .assert_error(400, "Missing service ID");
    assert_eq!(
        s.get_json("/v1/agent/checks")
            .await
            .as_object()
            .unwrap()
            .len(),
        2,
        "nothing added"
    );

    // An ID holding `/`, percent-encoded.
    s.register(json!({"Name": "db", "ID": "db/1"})).await;
    s.put("/v1/agent/service/maintenance/db%2F1?enable=true", None)
        .await
        .assert_write_ok();
    assert_eq!(
        s.check("_service_maintenance:db/1").await["ServiceID"],
        "db/1"
    );
}

#[tokio::test]
async fn route_method_redirect_and_request_count() {
    let s = Server::start(&[]).await;
    two_instances(&s).await;
    let r = s
        .get("/v1/agent/service/maintenance/web-1?enable=true")
        .await;
    r.assert_error(405, "method GET not allowed");
    assert_eq!(r.header("allow"), Some("OPTIONS,PUT"));
    // Not taken for `GET /v1/agent/service/:id` either.
    assert!(!has_maint_check(&s).await);

    // Go's ServeMux: the subtree's root without its slash is redirected to it, query kept.
    let r = s
        .put("/v1/agent/service/maintenance?enable=true", None)
        .await;
    assert_eq!(r.status, 301, "{r:?}");
    assert_eq!(
        r.header("location"),
        Some("/v1/agent/service/maintenance/?enable=true")
    );

    // The same for the deregister subtree, which `GET /v1/agent/service/:id` must not take.
    let r = s.put("/v1/agent/service/deregister", None).await;
    assert_eq!(r.status, 301, "{r:?}");
    assert_eq!(r.header("location"), Some("/v1/agent/service/deregister/"));

    maintenance(&s, "enable=true").await.assert_write_ok();
    maintenance(&s, "enable=false").await.assert_write_ok();
    let text = s.get("/v1/agent/metrics?format=prometheus").await.body;
    assert!(
        text.contains(
            "consul_api_http_count{method=\"PUT\",path=\"v1_agent_service_maintenance_\"} 2\n"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn a_plain_re_registration_keeps_it() {
    let s = Server::start(&[]).await;
    two_instances(&s).await;
    maintenance(&s, "enable=true&reason=kept")
        .await
        .assert_write_ok();
    // Same ID, a changed definition, no replace-existing-checks (or it false).
    for path in [
        "/v1/agent/service/register",
        "/v1/agent/service/register?replace-existing-checks=false",
    ] {
        s.put(
            path,
            Some(
                &json!({"Name": "web", "ID": "web-1", "Tags": ["v2"], "Port": 81,
                        "Check": {"TTL": "60s", "Status": "passing"}})
                .to_string(),
            ),
        )
        .await
        .assert_write_ok();
        let m = s.check(MAINT).await;
        assert_eq!(
            (&m["Status"], &m["Notes"], &m["ServiceID"]),
            (&json!("critical"), &json!("kept"), &json!("web-1")),
            "{path}: {m}"
        );
        assert_eq!(passing(&s).await, ["web-2"], "{path}");
    }
}

#[tokio::test]
async fn replace_existing_checks_removes_it() {
    for query in ["replace-existing-checks=true", "replace-existing-checks"] {
        let s = Server::start(&[]).await;
        two_instances(&s).await;
        maintenance(&s, "enable=true").await.assert_write_ok();
        let idx = health_index(&s).await;
        s.put(
            &format!("/v1/agent/service/register?{query}"),
            Some(
                &json!({"Name": "web", "ID": "web-1", "Tags": ["v1"], "Port": 80,
                        "Check": {"TTL": "60s", "Status": "passing"}})
                .to_string(),
            ),
        )
        .await
        .assert_write_ok();
        assert!(!has_maint_check(&s).await, "{query}");
        assert_eq!(passing(&s).await, ["web-1", "web-2"], "{query}");
        assert!(health_index(&s).await > idx, "{query}");
    }
}

#[tokio::test]
async fn registered_in_maintenance_in_one_put() {
    let s = Server::start(&[]).await;
    two_instances(&s).await;
    let in_maintenance = json!({"Name": "web", "ID": "web-1", "Tags": ["v1"], "Port": 80,
        "Checks": [{"CheckID": "service:web-1", "TTL": "60s", "Status": "passing"},
                   {"CheckID": MAINT, "Name": "Service Maintenance Mode", "Notes": "drained",
                    "TTL": "24h", "Status": "critical"}]});
    s.put(
        "/v1/agent/service/register?replace-existing-checks=true",
        Some(&in_maintenance.to_string()),
    )
    .await
    .assert_write_ok();
    let m = s.check(MAINT).await;
    assert_eq!(
        (&m["Status"], &m["Type"], &m["Notes"]),
        (&json!("critical"), &json!("ttl"), &json!("drained")),
        "{m}"
    );
    assert_eq!(passing(&s).await, ["web-2"]);

    // The endpoint sees it as maintenance: enabling is a no-op...
    maintenance(&s, "enable=true&reason=other")
        .await
        .assert_write_ok();
    assert_eq!(s.check(MAINT).await["Type"], "ttl");
    assert_eq!(s.check(MAINT).await["Notes"], "drained");
    // ...disabling removes it.
    maintenance(&s, "enable=false").await.assert_write_ok();
    assert!(!has_maint_check(&s).await);
    assert_eq!(passing(&s).await, ["web-1", "web-2"]);

    // And a registration that leaves it out, with replace-existing-checks, ends it.
    s.put(
        "/v1/agent/service/register?replace-existing-checks=true",
        Some(&in_maintenance.to_string()),
    )
    .await
    .assert_write_ok();
    assert_eq!(passing(&s).await, ["web-2"]);
    s.put(
        "/v1/agent/service/register?replace-existing-checks=true",
        Some(
            &json!({"Name": "web", "ID": "web-1", "Tags": ["v1"], "Port": 80,
                    "Check": {"CheckID": "service:web-1", "TTL": "60s", "Status": "passing"}})
            .to_string(),
        ),
    )
    .await
    .assert_write_ok();
    assert!(!has_maint_check(&s).await);
    assert_eq!(passing(&s).await, ["web-1", "web-2"]);
}

#[tokio::test]
async fn deregister_removes_it() {
    let s = Server::start(&[]).await;
    two_instances(&s).await;
    maintenance(&s, "enable=true").await.assert_write_ok();
    s.put("/v1/agent/service/deregister/web-1", None)
        .await
        .assert_write_ok();
    assert!(!has_maint_check(&s).await);
    assert_eq!(ids(&s.get_json("/v1/health/service/web").await), ["web-2"]);

    // A new registration with the same ID starts out of maintenance.
    s.register(json!({"Name": "web", "ID": "web-1", "Check": {"TTL": "60s", "Status": "passing"}}))
        .await;
    assert!(!has_maint_check(&s).await);
    assert_eq!(passing(&s).await, ["web-1", "web-2"]);
}

#[tokio::test]
async fn aliases_of_the_service_follow_it() {
    let s = Server::start(&[]).await;
    two_instances(&s).await;
    s.register(json!({"Name": "edge", "ID": "edge-1",
                      "Check": {"CheckID": "edge-alias", "AliasService": "web-1"}}))
        .await;
    assert_eq!(s.check("edge-alias").await["Status"], "passing");
    maintenance(&s, "enable=true&reason=r")
        .await
        .assert_write_ok();
    let a = s.check("edge-alias").await;
    assert_eq!(
        (&a["Status"], &a["Output"]),
        (
            &json!("critical"),
            &json!("Aliased check \"Service Maintenance Mode\" failing: ")
        ),
        "{a}"
    );
    maintenance(&s, "enable=false").await.assert_write_ok();
    assert_eq!(s.check("edge-alias").await["Status"], "passing");
}

#[tokio::test]
async fn needs_service_write_on_the_service() {
    const TOKEN: &str = "m41nt-t0ken";
    let s = Server::with_acl(TOKEN).await;
    two_instances(&s).await;
    let path = "/v1/agent/service/maintenance/web-1?enable=true";
    s.raw("PUT", path, None, &[]).await.assert_error(
        403,
        "Permission denied: token with AccessorID '00000000-0000-0000-0000-000000000002' lacks \
         permission 'service:write' on \"web\"",
    );
    s.raw("PUT", path, None, &[("X-Consul-Token", "wrong")])
        .await
        .assert_error(403, "ACL not found");
    // An unknown ID is a 404 before any permission check; a bad enable a 400 before either.
    s.raw(
        "PUT",
        "/v1/agent/service/maintenance/nope?enable=true",
        None,
        &[],
    )
    .await
    .assert_error(
        404,
        "Unknown service ID \"nope\". Ensure that the service ID is passed, not the service name.",
    );
    s.raw(
        "PUT",
        "/v1/agent/service/maintenance/web-1?enable=x",
        None,
        &[],
    )
    .await
    .assert_error(400, "Invalid value for enable: \"x\"");
    assert!(!has_maint_check(&s).await, "nothing was written");

    s.put(path, None).await.assert_write_ok();
    assert!(has_maint_check(&s).await);
    s.raw(
        "PUT",
        &format!("/v1/agent/service/maintenance/web-1?enable=false&token={TOKEN}"),
        None,
        &[],
    )
    .await
    .assert_write_ok();
    assert!(!has_maint_check(&s).await);
}
