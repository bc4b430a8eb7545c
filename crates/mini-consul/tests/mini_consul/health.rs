//! `/v1/health/service/:service` filtering (`?passing`, `?tag`, `?filter`, case-insensitive names)
//! and `/v1/catalog/services` tag unions.

use serde_json::{Value, json};

use crate::support::Server;

fn ids(v: &Value) -> Vec<String> {
    let mut ids: Vec<String> = v
        .as_array()
        .expect("a list")
        .iter()
        .map(|e| e["Service"]["ID"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

async fn three_instances() -> Server {
    let s = Server::start(&[]).await;
    for (id, tags, status) in [
        ("web-1", json!(["v1", "blue"]), "passing"),
        ("web-2", json!(["v1"]), "warning"),
        ("web-3", json!(["v2"]), "critical"),
    ] {
        s.register(json!({"Name": "web", "ID": id, "Tags": tags, "Port": 80,
                          "Check": {"TTL": "60s", "Status": status}}))
            .await;
    }
    s.register(json!({"Name": "db", "ID": "db-1", "Tags": ["v1", "primary"]}))
        .await;
    s
}

#[tokio::test]
async fn passing_filter() {
    let s = three_instances().await;
    assert_eq!(
        ids(&s.get_json("/v1/health/service/web").await),
        ["web-1", "web-2", "web-3"]
    );
    for q in [
        "passing",
        "passing=",
        "passing=true",
        "passing=1",
        "passing=T",
    ] {
        assert_eq!(
            ids(&s.get_json(&format!("/v1/health/service/web?{q}")).await),
            ["web-1"],
            "{q}"
        );
    }
    for q in ["passing=false", "passing=0", "passing=F"] {
        assert_eq!(
            ids(&s.get_json(&format!("/v1/health/service/web?{q}")).await).len(),
            3,
            "{q}"
        );
    }
    for q in ["passing=yes", "passing=nope-nope-nope"] {
        s.get(&format!("/v1/health/service/web?{q}"))
            .await
            .assert_error(400, "Invalid value for ?passing");
    }
    // Warning is not passing either; a pass makes web-2 count.
    s.put("/v1/agent/check/pass/service:web-2", None)
        .await
        .assert_write_ok();
    assert_eq!(
        ids(&s.get_json("/v1/health/service/web?passing").await),
        ["web-1", "web-2"]
    );
}

#[tokio::test]
async fn tags_names_and_unknown_services() {
    let s = three_instances().await;
    assert_eq!(
        ids(&s.get_json("/v1/health/service/web?tag=v1").await),
        ["web-1", "web-2"]
    );
    assert_eq!(
        ids(&s.get_json("/v1/health/service/web?tag=v1&tag=blue").await),
        ["web-1"]
    );
    assert_eq!(
        ids(&s.get_json("/v1/health/service/web?tag=V1&tag=BLUE").await),
        ["web-1"]
    );
    assert_eq!(
        ids(&s.get_json("/v1/health/service/web?tag=v1&tag=v2").await).len(),
        0
    );
    assert_eq!(
        ids(&s.get_json("/v1/health/service/WEB").await),
        ["web-1", "web-2", "web-3"]
    );
    let r = s.get("/v1/health/service/missing").await;
    assert_eq!((r.status, r.json()), (200, json!([])));
    r.index();

    assert_eq!(
        s.get_json("/v1/catalog/services").await,
        json!({"consul": [], "db": ["primary", "v1"], "web": ["blue", "v1", "v2"]})
    );
}

#[tokio::test]
async fn health_filter_expressions() {
    let s = three_instances().await;
    let q = |expr: &str| {
        format!(
            "/v1/health/service/web?filter={}",
            expr.replace(' ', "%20").replace('"', "%22")
        )
    };
    assert_eq!(
        ids(&s.get_json(&q(r#"Service.ID == "web-3""#)).await),
        ["web-3"]
    );
    assert_eq!(
        ids(&s.get_json(&q(r#""blue" in Service.Tags"#)).await),
        ["web-1"]
    );
    assert_eq!(
        ids(&s.get_json(&q(r#"Checks.Status == critical"#)).await),
        ["web-3"]
    );
    assert_eq!(
        ids(&s
            .get_json(&q(
                r#"Service.ID != "web-3" and not ("v1" in Service.Tags)"#
            ))
            .await)
        .len(),
        0
    );
    let cat = s
        .get_json("/v1/catalog/services?filter=ServiceName%20%3D%3D%20db")
        .await;
    assert_eq!(cat, json!({"db": ["primary", "v1"]}));
}

/// `/v1/agent/health/service/id/:id`: the service, its checks with their notes, and the worst
/// status as the status code; an unknown ID is a 404 with null service and checks.
#[tokio::test]
async fn one_services_health_by_id_with_status_as_code() {
    let s = Server::start(&[]).await;
    s.register(serde_json::json!({
        "ID": "web1", "Name": "web", "Port": 80,
        "Check": {"CheckID": "web1-ttl", "TTL": "30s", "Notes": "generation=3"}
    }))
    .await;

    // A TTL check starts critical.
    let r = s.get("/v1/agent/health/service/id/web1").await;
    assert_eq!(r.status, 503, "{}", r.body);
    let v = r.json();
    assert_eq!(v["AggregatedStatus"], "critical");
    assert_eq!(v["Service"]["ID"], "web1");
    assert_eq!(v["Service"]["Port"], 80);
    assert_eq!(v["Checks"][0]["CheckID"], "web1-ttl");
    assert_eq!(v["Checks"][0]["Notes"], "generation=3");

    s.put("/v1/agent/check/warn/web1-ttl", None)
        .await
        .assert_write_ok();
    let r = s.get("/v1/agent/health/service/id/web1").await;
    assert_eq!(
        (r.status, r.json()["AggregatedStatus"].clone()),
        (429, "warning".into())
    );

    s.put("/v1/agent/check/pass/web1-ttl", None)
        .await
        .assert_write_ok();
    let r = s.get("/v1/agent/health/service/id/web1?format=text").await;
    assert_eq!((r.status, r.body.as_str()), (200, "passing"));

    let r = s.get("/v1/agent/health/service/id/nope").await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.json(),
        serde_json::json!({"AggregatedStatus": "critical", "Service": null, "Checks": null})
    );
    let r = s.get("/v1/agent/health/service/id/nope?format=text").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (404, "ServiceId nope not found")
    );
}

#[tokio::test]
async fn a_services_checks_without_the_nodes() {
    let s = three_instances().await;
    s.register(json!({"Name": "web", "ID": "web-4", "Port": 80,
                      "Checks": [{"CheckID": "a", "TTL": "60s", "Notes": "first"},
                                 {"CheckID": "b", "TTL": "60s", "Status": "passing"}]}))
        .await;
    let r = s.get("/v1/health/checks/WEB").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.index() > 0, "X-Consul-Index on a health answer");
    let mut checks: Vec<(String, String, String, String)> = r
        .json()
        .as_array()
        .expect("a list")
        .iter()
        .map(|c| {
            let f = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
            (f("ServiceID"), f("CheckID"), f("Status"), f("Notes"))
        })
        .collect();
    checks.sort();
    let want = |sid: &str, cid: &str, status: &str, notes: &str| {
        (
            sid.to_owned(),
            cid.to_owned(),
            status.to_owned(),
            notes.to_owned(),
        )
    };
    assert_eq!(
        checks,
        [
            want("web-1", "service:web-1", "passing", ""),
            want("web-2", "service:web-2", "warning", ""),
            want("web-3", "service:web-3", "critical", ""),
            want("web-4", "a", "critical", "first"),
            want("web-4", "b", "passing", ""),
        ],
        "every instance check of web, no serfHealth, nothing of db"
    );
    let first = &r.json()[0];
    assert_eq!(first["ServiceName"], "web");
    assert_eq!(
        first["Node"],
        s.get_json("/v1/health/service/web").await[0]["Node"]["Node"]
    );
    assert_eq!(s.get_json("/v1/health/checks/nope").await, json!([]));
    assert_eq!(
        s.get_json("/v1/health/checks/web?filter=Status%20%3D%3D%20%22warning%22")
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    s.get("/v1/health/checks/")
        .await
        .assert_error(400, "Missing service name");
}
