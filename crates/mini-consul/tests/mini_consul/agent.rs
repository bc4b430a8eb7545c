//! Agent endpoints: register (the API docs' example), read back, defaults, check IDs,
//! re-registration, deregistration.

use serde_json::json;

use crate::support::Server;

/// The register example from Consul's agent/service API docs, with a TTL check.
fn redis_example() -> serde_json::Value {
    json!({
        "ID": "redis1",
        "Name": "redis",
        "Tags": ["primary", "v1"],
        "Address": "127.0.0.1",
        "Port": 8000,
        "Meta": {"redis_version": "4.0"},
        "EnableTagOverride": false,
        "Check": {"DeregisterCriticalServiceAfter": "90m", "TTL": "15s", "Notes": "redis liveness"},
        "Weights": {"Passing": 10, "Warning": 1}
    })
}

#[tokio::test]
async fn register_docs_example_and_read_it_back() {
    let s = Server::start(&[]).await;
    s.register(redis_example()).await;

    let expected_service = json!({
        "ID": "redis1",
        "Service": "redis",
        "Tags": ["primary", "v1"],
        "Meta": {"redis_version": "4.0"},
        "Port": 8000,
        "Address": "127.0.0.1",
        "TaggedAddresses": {
            "lan_ipv4": {"Address": "127.0.0.1", "Port": 8000},
            "wan_ipv4": {"Address": "127.0.0.1", "Port": 8000}
        },
        "Weights": {"Passing": 10, "Warning": 1},
        "EnableTagOverride": false,
        "Datacenter": "dc1"
    });
    let r = s.get("/v1/agent/services").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.header("x-consul-index"),
        None,
        "agent endpoints send no X-Consul-Index"
    );
    assert_eq!(r.json(), json!({"redis1": expected_service}));

    let r = s.get("/v1/agent/service/redis1").await;
    assert_eq!(r.status, 200);
    let mut one = r.json();
    let hash = one["ContentHash"].as_str().expect("ContentHash").to_owned();
    assert!(
        !hash.is_empty() && hash.chars().all(|c| c.is_ascii_hexdigit()),
        "{hash}"
    );
    assert_eq!(r.header("x-consul-contenthash"), Some(hash.as_str()));
    one.as_object_mut().unwrap().remove("ContentHash");
    assert_eq!(one, expected_service);

    let checks = s.get_json("/v1/agent/checks").await;
    assert_eq!(
        checks,
        json!({"service:redis1": {
            "Node": "mini-consul",
            "CheckID": "service:redis1",
            "Name": "Service 'redis' check",
            "Status": "critical",
            "Notes": "redis liveness",
            "Output": "",
            "ServiceID": "redis1",
            "ServiceName": "redis",
            "ServiceTags": ["primary", "v1"],
            "Type": "ttl",
            "Interval": "",
            "Timeout": "",
            "ExposedPort": 0,
            "Definition": {},
            "CreateIndex": 0,
            "ModifyIndex": 0
        }})
    );

    let r = s.get("/v1/health/service/redis").await;
    let idx = r.index();
    let entries = r.json();
    let entry = &entries.as_array().expect("a list")[0];
    assert_eq!(entries.as_array().unwrap().len(), 1);
    let node = &entry["Node"];
    assert_eq!(node["Node"], "mini-consul");
    assert_eq!(node["Address"], "127.0.0.1");
    assert_eq!(node["Datacenter"], "dc1");
    assert_eq!(node["ID"].as_str().unwrap().len(), 36, "a UUID node ID");
    let svc = &entry["Service"];
    for (k, v) in [
        ("ID", json!("redis1")),
        ("Service", json!("redis")),
        ("Tags", json!(["primary", "v1"])),
        ("Address", json!("127.0.0.1")),
        ("Port", json!(8000)),
        ("Meta", json!({"redis_version": "4.0"})),
        ("Weights", json!({"Passing": 10, "Warning": 1})),
        ("EnableTagOverride", json!(false)),
    ] {
        assert_eq!(svc[k], v, "Service.{k}");
    }
    let created = svc["CreateIndex"].as_u64().unwrap();
    assert!(created > 0 && created <= idx && svc["ModifyIndex"].as_u64().unwrap() <= idx);
    let checks = entry["Checks"].as_array().unwrap();
    let ids: Vec<&str> = checks
        .iter()
        .map(|c| c["CheckID"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["serfHealth", "service:redis1"], "node checks first");
    assert_eq!(checks[0]["Status"], "passing");
    assert_eq!(checks[0]["Name"], "Serf Health Status");
    assert_eq!(
        checks[1]["Status"], "critical",
        "a TTL check starts critical"
    );
    assert_eq!(checks[1]["Notes"], "redis liveness");
    assert_eq!(checks[1]["ServiceName"], "redis");

    let r = s.get("/v1/catalog/services").await;
    r.index();
    assert_eq!(r.json(), json!({"consul": [], "redis": ["primary", "v1"]}));
}

#[tokio::test]
async fn defaults_of_a_minimal_registration() {
    let s = Server::start(&["--node-name", "node-a"]).await;
    s.register(json!({"Name": "web", "Check": null, "Checks": null}))
        .await;
    assert_eq!(
        s.get_json("/v1/agent/services").await,
        json!({"web": {
            "ID": "web", "Service": "web", "Tags": [], "Meta": {}, "Port": 0, "Address": "",
            "Weights": {"Passing": 1, "Warning": 1}, "EnableTagOverride": false, "Datacenter": "dc1"
        }})
    );
    assert_eq!(s.get_json("/v1/agent/checks").await, json!({}));
    let health = s.get_json("/v1/health/service/web").await;
    let svc = &health[0]["Service"];
    assert_eq!(svc["Tags"], json!([]), "lists are [] never null");
    assert_eq!(
        svc["Meta"],
        json!(null),
        "no Meta given: the catalog answers null"
    );
    assert_eq!(health[0]["Node"]["Node"], "node-a");
    assert_eq!(
        health[0]["Checks"].as_array().unwrap().len(),
        1,
        "only serfHealth"
    );
    let passing = s.get_json("/v1/health/service/web?passing").await;
    assert_eq!(
        passing.as_array().unwrap().len(),
        1,
        "serfHealth passes, so the instance does"
    );
    // The consul service is in the catalog, not among the agent's services.
    assert_eq!(
        s.get_json("/v1/catalog/services").await,
        json!({"consul": [], "web": []})
    );
    let consul = s.get_json("/v1/health/service/consul").await;
    assert_eq!(consul[0]["Service"]["Service"], "consul");
}

#[tokio::test]
async fn check_ids_names_and_initial_status() {
    let s = Server::start(&[]).await;
    s.register(json!({
        "Name": "api", "ID": "api-1",
        "Checks": [
            {"TTL": "30s"},
            {"TTL": "30s", "Name": "second", "Status": "passing"},
            {"TTL": "30s", "CheckID": "custom", "Status": "warning", "Notes": "n"}
        ]
    }))
    .await;
    let checks = s.get_json("/v1/agent/checks").await;
    let mut ids: Vec<&String> = checks.as_object().unwrap().keys().collect();
    ids.sort();
    assert_eq!(ids, ["custom", "service:api-1:1", "service:api-1:2"]);
    assert_eq!(checks["service:api-1:1"]["Name"], "Service 'api' check");
    assert_eq!(checks["service:api-1:1"]["Status"], "critical");
    assert_eq!(checks["service:api-1:2"]["Name"], "second");
    assert_eq!(checks["service:api-1:2"]["Status"], "passing");
    assert_eq!(checks["custom"]["Status"], "warning");
    assert_eq!(checks["custom"]["Notes"], "n");

    // One check alone gets `service:<ID>`; an empty Check object is no check at all.
    s.register(json!({"Name": "db", "Check": {"TTL": "30s"}}))
        .await;
    s.register(json!({"Name": "cache", "Check": {}})).await;
    let checks = s.get_json("/v1/agent/checks").await;
    assert!(checks.get("service:db").is_some(), "{checks}");
    assert!(
        !checks
            .as_object()
            .unwrap()
            .values()
            .any(|c| c["ServiceID"] == "cache")
    );
}

#[tokio::test]
async fn reregistering_keeps_check_status_and_output() {
    let s = Server::start(&[]).await;
    let reg = |tags: serde_json::Value, status: &str| {
        json!({"Name": "web", "ID": "web-1", "Tags": tags, "Port": 80,
               "Checks": [{"CheckID": "alive", "TTL": "30s", "Status": status},
                          {"CheckID": "extra", "TTL": "30s"}]})
    };
    s.register(reg(json!(["a"]), "passing")).await;
    s.put("/v1/agent/check/warn/alive?note=slow", None)
        .await
        .assert_write_ok();
    let before = s.check("alive").await;
    assert_eq!(
        (before["Status"].as_str(), before["Output"].as_str()),
        (Some("warning"), Some("slow"))
    );

    // The payload's Status is overridden by the existing status; tags change.
    s.register(reg(json!(["b"]), "critical")).await;
    let after = s.check("alive").await;
    assert_eq!(
        (after["Status"].as_str(), after["Output"].as_str()),
        (Some("warning"), Some("slow"))
    );
    assert_eq!(after["ServiceTags"], json!(["b"]));
    assert_eq!(
        s.get_json("/v1/agent/services").await["web-1"]["Tags"],
        json!(["b"])
    );

    // Checks missing from the payload are kept...
    let one = json!({"Name": "web", "ID": "web-1", "Check": {"CheckID": "alive", "TTL": "30s"}});
    s.register(one.clone()).await;
    assert!(s.get_json("/v1/agent/checks").await.get("extra").is_some());
    s.put(
        "/v1/agent/service/register?replace-existing-checks=false",
        Some(&one.to_string()),
    )
    .await
    .assert_write_ok();
    assert!(s.get_json("/v1/agent/checks").await.get("extra").is_some());
    // ...unless replace-existing-checks is given.
    s.put(
        "/v1/agent/service/register?replace-existing-checks",
        Some(&one.to_string()),
    )
    .await
    .assert_write_ok();
    let checks = s.get_json("/v1/agent/checks").await;
    assert!(checks.get("extra").is_none(), "{checks}");
    assert_eq!(checks["alive"]["Status"], "warning");
}

#[tokio::test]
async fn identical_reregistration_is_no_catalog_change() {
    let s = Server::start(&[]).await;
    let body = json!({"Name": "web", "Check": {"TTL": "30s", "Status": "passing"}});
    s.register(body.clone()).await;
    let idx = s.get("/v1/health/service/web").await.index();
    s.register(body).await;
    assert_eq!(s.get("/v1/health/service/web").await.index(), idx);
    s.register(json!({"Name": "web", "Port": 81, "Check": {"TTL": "30s"}}))
        .await;
    assert!(s.get("/v1/health/service/web").await.index() > idx);
}

#[tokio::test]
async fn deregister_removes_service_and_checks() {
    let s = Server::start(&[]).await;
    s.register(json!({"Name": "web", "ID": "web/1", "Check": {"TTL": "30s"}}))
        .await;
    s.register(json!({"Name": "db", "Check": {"TTL": "30s"}}))
        .await;
    assert!(
        s.get_json("/v1/agent/services")
            .await
            .get("web/1")
            .is_some()
    );
    s.put("/v1/agent/service/deregister/web%2F1", None)
        .await
        .assert_write_ok();
    let services = s.get_json("/v1/agent/services").await;
    assert!(
        services.get("web/1").is_none() && services.get("db").is_some(),
        "{services}"
    );
    let checks = s.get_json("/v1/agent/checks").await;
    assert!(checks.get("service:web/1").is_none() && checks.get("service:db").is_some());
    assert_eq!(s.get_json("/v1/health/service/web").await, json!([]));
    assert_eq!(
        s.get_json("/v1/catalog/services").await,
        json!({"consul": [], "db": []})
    );

    s.put("/v1/agent/service/deregister/web%2F1", None)
        .await
        .assert_error(404, "Unknown service ID \"web/1\". Ensure that the service ID is passed, not the service name.");
    // IDs are case-sensitive; the name is not an ID.
    s.put("/v1/agent/service/deregister/DB", None).await.assert_error(
        404,
        "Unknown service ID \"DB\". Ensure that the service ID is passed, not the service name.",
    );
    s.put("/v1/agent/service/deregister/db", None)
        .await
        .assert_write_ok();
    assert_eq!(s.get_json("/v1/agent/services").await, json!({}));
    s.get("/v1/agent/service/db")
        .await
        .assert_error(404, "unknown service ID: db");
}

#[tokio::test]
async fn agent_filters() {
    let s = Server::start(&[]).await;
    s.register(json!({"Name": "web", "ID": "w1", "Tags": ["v1"], "Meta": {"env": "prod"}}))
        .await;
    s.register(json!({"Name": "web", "ID": "w2", "Check": {"TTL": "30s", "Status": "passing"}}))
        .await;
    s.register(json!({"Name": "db", "ID": "d1"})).await;
    let keys = |v: serde_json::Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(
        keys(
            s.get_json("/v1/agent/services?filter=Service%20%3D%3D%20%22web%22")
                .await
        ),
        ["w1", "w2"]
    );
    assert_eq!(
        keys(
            s.get_json("/v1/agent/services?filter=ID%20%3D%3D%20%22d1%22")
                .await
        ),
        ["d1"]
    );
    assert_eq!(
        keys(
            s.get_json("/v1/agent/services?filter=%22v1%22%20in%20Tags")
                .await
        ),
        ["w1"]
    );
    assert_eq!(
        keys(
            s.get_json("/v1/agent/services?filter=Meta.env%20%3D%3D%20prod")
                .await
        ),
        ["w1"]
    );
    assert_eq!(
        keys(
            s.get_json("/v1/agent/checks?filter=ServiceID%20%3D%3D%20w2")
                .await
        ),
        ["service:w2"]
    );
    let r = s.get("/v1/agent/services?filter=Service%20%3D%3D").await;
    assert_eq!(r.status, 500, "{r:?}");
    assert!(
        r.body
            .starts_with("Failed to create boolean expression evaluator"),
        "{}",
        r.body
    );
}
