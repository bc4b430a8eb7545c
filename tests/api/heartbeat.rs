//! Heartbeats renew, restore what a registry lost, and say when nothing knows the instance.

use std::time::Duration;

use serde_json::json;

use crate::{Env, body, path};

fn hb(service: &str, id: &str) -> String {
    format!("{}/heartbeat", path(service, id))
}

#[tokio::test]
async fn heartbeat_renews_the_etcd_lease() {
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
    let mut etcd = env.etcd.client().await;
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let before = etcd.lease_time_to_live(lease, None).await.unwrap().ttl();
    assert!(before <= 7, "lease should have counted down, ttl {before}");

    let r = c.put(&hb("payments", "pay-1")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["ok"], true);
    assert_eq!(r.json["degraded"], false);
    assert_eq!(r.json["registries"]["etcd"]["ok"], true);
    assert_eq!(r.json["registries"]["consul"]["ok"], true);
    let after = etcd.lease_time_to_live(lease, None).await.unwrap().ttl();
    assert!(
        after > before,
        "heartbeat must renew the lease: {before} -> {after}"
    );
    assert!(after >= 9, "renewed to the full ttl, got {after}");
}

#[tokio::test]
async fn heartbeat_restores_a_key_deleted_in_etcd() {
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
    assert!(env.etcd_record("payments", "pay-1").await.is_none());

    let r = c.put(&hb("payments", "pay-1")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["registries"]["etcd"]["restored"], true, "{}", r.text);
    let (value, lease) = env
        .etcd_record("payments", "pay-1")
        .await
        .expect("restored in etcd");
    assert_ne!(lease, 0);
    assert_eq!(value["address"], "10.0.0.5");
    assert_eq!(value["meta"], json!({"zone": "eu-1a"}));
    assert_eq!(value["ttl_seconds"], 30);
}

#[tokio::test]
async fn heartbeat_restores_a_service_deregistered_in_consul() {
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
    assert!(env.consul_service("payments", "pay-1").await.is_none());

    let r = c.put(&hb("payments", "pay-1")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.json["registries"]["consul"]["restored"], true,
        "{}",
        r.text
    );
    let svc = env
        .consul_service("payments", "pay-1")
        .await
        .expect("restored in consul");
    assert_eq!(svc["Address"], "10.0.0.5");
    assert_eq!(svc["Meta"], json!({"zone": "eu-1a"}));
    assert_eq!(
        env.consul.agent_checks().await["service:payments.pay-1"]["Status"],
        "passing"
    );
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

#[tokio::test]
async fn heartbeat_of_unknown_instance_is_404() {
    let env = Env::start().await;
    let c = env.gw.client("payments");
    let r = c.put(&hb("payments", "never-registered")).await;
    assert_eq!(r.status, 404, "{}", r.text);
    assert_eq!(r.json["error"], "unknown_instance");
    assert!(r.json["message"].as_str().unwrap().contains("register"));
    // Deleted in both registries behind the gateway's back: unknown too, not resurrected.
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
    let r = c.put(&hb("payments", "gone")).await;
    assert_eq!(r.status, 404, "{}", r.text);
    assert!(env.etcd_record("payments", "gone").await.is_none());
}
