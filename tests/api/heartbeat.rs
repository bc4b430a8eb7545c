//! Heartbeats: answered from memory by the replica that owns the instance; lost copies are
//! restored without waiting for one; 404 when nothing knows the instance.

use std::time::Duration;

use serde_json::json;

use crate::{Env, body, path};

fn hb(service: &str, id: &str) -> String {
    format!("{}/heartbeat", path(service, id))
}

/// Registry operations this replica made, from its own metrics.
async fn registry_ops(env: &Env) -> f64 {
    let (_, text) = env.gw.admin_get("/metrics").await;
    text.lines()
        .filter(|l| l.starts_with("twinreg_registry_operations_total{"))
        .filter(|l| !l.contains("op=\"probe\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn heartbeats_to_the_owner_touch_no_registry_and_the_shared_lease_stays_alive() {
    let env = Env::start().await;
    let c = env.gw.client("payments");
    let r = c
        .put_json(
            &path("payments", "pay-1"),
            &json!({"address": "10.0.0.5", "port": 8080, "ttl_seconds": 10}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let (_, lease) = env.etcd_record("payments", "pay-1").await.unwrap();
    assert_ne!(lease, 0);
    let mut etcd = env.etcd.client().await;
    let granted = etcd
        .lease_time_to_live(lease, None)
        .await
        .unwrap()
        .granted_ttl();
    assert_eq!(
        granted,
        i64::from(twinreg::registry::etcd::lease_ttl(10)),
        "the key rides on its TTL class's shared lease"
    );
    // No heartbeat for 3 s: the replica keeps its lease alive by itself.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let left = etcd.lease_time_to_live(lease, None).await.unwrap().ttl();
    assert!(
        left >= granted - 2,
        "the shared lease counted down to {left}"
    );

    let before = registry_ops(&env).await;
    for _ in 0..50 {
        let r = c.put(&hb("payments", "pay-1")).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.json["ok"], true);
        assert_eq!(r.json["degraded"], false);
        assert_eq!(r.json["registries"]["etcd"]["ok"], true);
        assert_eq!(r.json["registries"]["consul"]["ok"], true);
    }
    assert_eq!(
        registry_ops(&env).await,
        before,
        "a heartbeat to the owning replica made registry calls"
    );
}

#[tokio::test]
async fn a_key_deleted_in_etcd_is_restored_within_a_second_without_a_heartbeat() {
    let env = Env::start().await;
    let c = env.gw.client("payments");
    assert_eq!(
        c.put_json(&path("payments", "pay-1"), &body("10.0.0.5", 8080))
            .await
            .status,
        200
    );
    let mut etcd = env.etcd.client().await;
    etcd.delete("/services/payments/pay-1", None).await.unwrap();
    let deleted = std::time::Instant::now();
    let (value, lease) =
        testkit::eventually(Duration::from_secs(5), "etcd's copy restored", || async {
            env.etcd_record("payments", "pay-1").await
        })
        .await;
    assert!(
        deleted.elapsed() < Duration::from_millis(1500),
        "restored after {:?}",
        deleted.elapsed()
    );
    assert_ne!(lease, 0);
    assert_eq!(value["address"], "10.0.0.5");
    assert_eq!(value["meta"], json!({"zone": "eu-1a"}));
    assert_eq!(value["ttl_seconds"], 30);
    let r = c.put(&hb("payments", "pay-1")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["degraded"], false, "{}", r.text);
}

#[tokio::test]
async fn a_service_deregistered_in_consul_is_restored_within_a_second_without_a_heartbeat() {
    let env = Env::start().await;
    let c = env.gw.client("payments");
    assert_eq!(
        c.put_json(&path("payments", "pay-1"), &body("10.0.0.5", 8080))
            .await
            .status,
        200
    );
    let (s, b) = env
        .consul
        .request("PUT", "/v1/agent/service/deregister/payments.pay-1", None)
        .await
        .unwrap();
    assert_eq!(s, 200, "{b}");
    let deleted = std::time::Instant::now();
    let svc = testkit::eventually(Duration::from_secs(5), "consul's copy restored", || async {
        env.consul_service("payments", "pay-1").await
    })
    .await;
    assert!(
        deleted.elapsed() < Duration::from_millis(1500),
        "restored after {:?}",
        deleted.elapsed()
    );
    assert_eq!(svc["Address"], "10.0.0.5");
    assert_eq!(svc["Meta"], json!({"zone": "eu-1a"}));
    let check = &env.consul.agent_checks().await["service:payments.pay-1"];
    assert_eq!(check["Status"], "passing");
    assert_eq!(check["Type"], "alias", "{check}");
}

#[tokio::test]
async fn heartbeat_restores_from_the_other_registry_on_a_fresh_replica() {
    // A heartbeat reaching a replica that never saw the register (empty cache) still restores.
    let env = Env::start().await;
    let c = env.gw.client("payments");
    assert_eq!(
        c.put_json(&path("payments", "pay-1"), &body("10.0.0.5", 8080))
            .await
            .status,
        200
    );
    let other = testkit::gateway::Gateway::start(&env.etcd, &env.consul).await;
    let mut etcd = env.etcd.client().await;
    etcd.delete("/services/payments/pay-1", None).await.unwrap();
    let r = other.client("payments").put(&hb("payments", "pay-1")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let (value, _) = env
        .etcd_record("payments", "pay-1")
        .await
        .expect("restored from consul");
    assert_eq!(value["address"], "10.0.0.5");
    assert_eq!(value["port"], 8080);
    assert_eq!(value["tags"], json!(["v2"]));
    assert_eq!(value["ttl_seconds"], 30);
}

/// The owner's heartbeat is answered before the router: the answer, its headers, its count and
/// every refusal are the same as through it.
#[tokio::test]
async fn the_owners_heartbeat_answer_is_the_whole_contract() {
    let env = Env::start().await;
    let c = env.gw.client("payments");
    let r = c
        .put_json(&path("payments", "pay-1"), &body("10.0.0.5", 8080))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let count = |text: &str| {
        testkit::metric(
            text,
            "twinreg_http_requests_total",
            &[("route", "heartbeat"), ("method", "PUT"), ("status", "200")],
        )
    };
    let before = count(&env.gw.admin_get("/metrics").await.1);
    for _ in 0..3 {
        let r = c
            .request_with(
                "PUT",
                &hb("payments", "pay-1"),
                None,
                &[("x-request-id", "hb-7")],
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.headers["content-type"], "application/json");
        assert_eq!(r.headers["x-request-id"], "hb-7");
        assert_eq!(
            r.json,
            json!({"ok": true, "degraded": false, "registries": {
                "etcd": {"ok": true, "latency_ms": 0, "coalesced": true},
                "consul": {"ok": true, "latency_ms": 0, "coalesced": true},
            }})
        );
    }
    assert!(!c.put(&hb("payments", "pay-1")).await.headers["x-request-id"].is_empty());
    assert_eq!(count(&env.gw.admin_get("/metrics").await.1), before + 4.0);
    // What is not exactly an allowed owner's heartbeat gets the router's answers.
    let r = c.request("POST", &hb("payments", "pay-1"), None).await;
    assert_eq!(r.status, 405, "{}", r.text);
    let r = c
        .put("/v1/services/pay%6Dents/instances/pay-1/heartbeat")
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    let r = c
        .put("/v1/services/payments/instances/pay-1/heartbeat/")
        .await;
    assert_eq!(r.status, 404, "{}", r.text);
    let r = env.gw.client("orders").put(&hb("payments", "pay-1")).await;
    assert_eq!(r.status, 403, "{}", r.text);
}

#[tokio::test]
async fn heartbeat_of_unknown_instance_is_404() {
    let env = Env::start().await;
    let c = env.gw.client("payments");
    let r = c.put(&hb("payments", "never-registered")).await;
    assert_eq!(r.status, 404, "{}", r.text);
    assert_eq!(r.json["error"], "unknown_instance");
    assert!(r.json["message"].as_str().unwrap().contains("register"));
    // Deleted in both registries behind the gateway's back while it still heartbeats: the
    // replica that owns it writes both copies again (it holds the record).
    assert_eq!(
        c.put_json(&path("payments", "gone"), &body("10.0.0.5", 8080))
            .await
            .status,
        200
    );
    env.etcd
        .client()
        .await
        .delete("/services/payments/gone", None)
        .await
        .unwrap();
    env.consul
        .request("PUT", "/v1/agent/service/deregister/payments.gone", None)
        .await
        .unwrap();
    testkit::eventually(Duration::from_secs(5), "both copies restored", || async {
        let both = env.etcd_record("payments", "gone").await.is_some()
            && env.consul_service("payments", "gone").await.is_some();
        both.then_some(())
    })
    .await;
    // Deregistered: unknown from then on, on this replica and on a fresh one.
    assert_eq!(c.delete(&path("payments", "gone")).await.status, 200);
    let r = c.put(&hb("payments", "gone")).await;
    assert_eq!(r.status, 404, "{}", r.text);
    let other = testkit::gateway::Gateway::start(&env.etcd, &env.consul).await;
    let r = other.client("payments").put(&hb("payments", "gone")).await;
    assert_eq!(r.status, 404, "{}", r.text);
    assert!(env.etcd_record("payments", "gone").await.is_none());
}
