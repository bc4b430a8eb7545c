//! Register, re-register, deregister and list, checked by reading etcd and Consul directly.

use serde_json::json;

use crate::{Env, body, path};

#[tokio::test]
async fn register_lands_in_both_registries() {
    let env = Env::start().await;
    let c = env.gw.client("payments");
    let r = c
        .put_json(&path("payments", "pay-1"), &body("10.0.0.5", 8080))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["registered"], true);
    assert_eq!(r.json["service"], "payments");
    assert_eq!(r.json["id"], "pay-1");
    assert_eq!(r.json["ttl_seconds"], 30);
    assert_eq!(r.json["degraded"], false);
    assert_eq!(r.json["registries"]["etcd"]["ok"], true);
    assert_eq!(r.json["registries"]["consul"]["ok"], true);
    assert!(r.json["registries"]["etcd"]["latency_ms"].is_u64());

    let (value, lease) = env
        .etcd_record("payments", "pay-1")
        .await
        .expect("etcd holds the key");
    assert_ne!(lease, 0, "the key is attached to a lease");
    assert_eq!(value["address"], "10.0.0.5");
    assert_eq!(value["port"], 8080);
    assert_eq!(value["tags"], json!(["v2"]));
    assert_eq!(value["meta"], json!({"zone": "eu-1a"}));
    assert_eq!(value["ttl_seconds"], 30);
    assert_eq!(value["Op"], 0);
    assert_eq!(value["Addr"], "10.0.0.5:8080");
    assert_eq!(value["Metadata"], json!({"zone": "eu-1a"}));
    let mut etcd = env.etcd.client().await;
    let ttl = etcd.lease_time_to_live(lease, None).await.unwrap();
    assert_eq!(
        ttl.granted_ttl(),
        i64::from(twinreg::registry::etcd::lease_ttl(30)),
        "the key rides on the shared lease of its TTL class"
    );

    let svc = env
        .consul_service("payments", "pay-1")
        .await
        .expect("consul holds the service");
    assert_eq!(svc["Service"], "payments");
    assert_eq!(svc["ID"], "payments.pay-1");
    assert_eq!(svc["Address"], "10.0.0.5");
    assert_eq!(svc["Port"], 8080);
    assert_eq!(svc["Tags"], json!(["v2"]));
    assert_eq!(svc["Meta"], json!({"zone": "eu-1a"}));
    let checks = env.consul.agent_checks().await;
    let check = &checks["service:payments.pay-1"];
    assert_eq!(check["Status"], "passing");
    assert_eq!(check["ServiceID"], "payments.pay-1");
    let health = env
        .consul
        .get_json("/v1/health/service/payments?passing")
        .await;
    assert_eq!(health.as_array().unwrap().len(), 1, "{health}");
}

#[tokio::test]
async fn identical_reregister_leaves_one_record_and_changes_replace() {
    let env = Env::start().await;
    let c = env.gw.client("payments");
    for _ in 0..3 {
        let r = c
            .put_json(&path("payments", "pay-1"), &body("10.0.0.5", 8080))
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    assert_eq!(env.etcd.instances().await.len(), 1);
    assert_eq!(env.consul.instances().await.len(), 1);
    let (_, lease) = env.etcd_record("payments", "pay-1").await.unwrap();
    // No lease per write: the record stays on its class's shared lease, and the leases in etcd
    // are that one and the replica's announcement's, however often it is written.
    let live = env.etcd.lease_ids().await;
    assert!(live.contains(&lease), "{live:?}");
    assert!(live.len() <= 2, "leases: {live:?}");

    let r = c
        .put_json(
            &path("payments", "pay-1"),
            &json!({"address": "10.0.0.9", "port": 9090, "tags": ["v3"], "meta": {}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let (value, _) = env.etcd_record("payments", "pay-1").await.unwrap();
    assert_eq!(value["address"], "10.0.0.9");
    assert_eq!(value["port"], 9090);
    assert_eq!(value["tags"], json!(["v3"]));
    let svc = env.consul_service("payments", "pay-1").await.unwrap();
    assert_eq!(svc["Address"], "10.0.0.9");
    assert_eq!(svc["Port"], 9090);
    assert_eq!(svc["Tags"], json!(["v3"]));
    assert_eq!(env.etcd.instances().await.len(), 1);
    assert_eq!(env.consul.instances().await.len(), 1);
}

#[tokio::test]
async fn a_new_ttl_moves_the_record_to_the_lease_of_its_class_and_leases_do_not_grow() {
    let env = Env::start().await;
    let c = env.gw.client("payments");
    let with =
        |port: u16, ttl: u32| json!({"address": "10.0.0.5", "port": port, "ttl_seconds": ttl});
    let p = path("payments", "pay-1");
    assert_eq!(c.put_json(&p, &with(8080, 10)).await.status, 200);
    let (_, first) = env.etcd_record("payments", "pay-1").await.unwrap();

    // A changed record with the same TTL: the same shared lease.
    let r = c.put_json(&p, &with(9090, 10)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let (value, lease) = env.etcd_record("payments", "pay-1").await.unwrap();
    assert_eq!(value["port"], 9090);
    assert_eq!(lease, first, "the class lease is kept");

    // A TTL of another class: that class's lease, which is the replica's and stays alive.
    let r = c.put_json(&p, &with(9090, 120)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let (_, second) = env.etcd_record("payments", "pay-1").await.unwrap();
    assert_ne!(second, first);
    let mut etcd = env.etcd.client().await;
    let granted = etcd
        .lease_time_to_live(second, None)
        .await
        .unwrap()
        .granted_ttl();
    assert_eq!(granted, i64::from(twinreg::registry::etcd::lease_ttl(120)));
    // Fifty more instances of the two classes: still one lease per class, plus the announcement.
    for k in 0..50 {
        let ttl = if k % 2 == 0 { 10 } else { 120 };
        let r = c
            .put_json(&path("payments", &format!("p{k}")), &with(80, ttl))
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let leases = etcd.leases().await.unwrap().leases().len();
    assert_eq!(leases, 3, "two class leases and the announcement's");
}

#[tokio::test]
async fn deregister_removes_from_both_and_is_idempotent() {
    let env = Env::start().await;
    let c = env.gw.client("payments");
    assert_eq!(
        c.put_json(&path("payments", "pay-1"), &body("10.0.0.5", 8080))
            .await
            .status,
        200
    );
    let r = c.delete(&path("payments", "pay-1")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["deregistered"], true);
    assert_eq!(r.json["existed"], true);
    assert!(env.etcd_record("payments", "pay-1").await.is_none());
    assert!(env.consul_service("payments", "pay-1").await.is_none());
    assert!(
        !env.consul
            .agent_checks()
            .await
            .contains_key("service:payments.pay-1")
    );

    let r = c.delete(&path("payments", "pay-1")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["existed"], false);
    assert_eq!(r.json["registries"]["etcd"]["ok"], true);
    assert_eq!(r.json["registries"]["consul"]["ok"], true);
}

#[tokio::test]
async fn list_merges_both_registries_and_marks_sources() {
    let env = Env::start().await;
    let c = env.gw.client("payments");
    assert_eq!(
        c.put_json(&path("payments", "both"), &body("10.0.0.1", 80))
            .await
            .status,
        200
    );
    // Written behind twinreg's back: one instance only in etcd, one only in Consul.
    let mut etcd = env.etcd.client().await;
    let lease = etcd.lease_grant(60, None).await.unwrap().id();
    let v = json!({"service":"payments","id":"etcd-only","address":"10.0.0.2","port":81,"tags":[],"meta":{},"ttl_seconds":60,"Op":0,"Addr":"10.0.0.2:81"});
    etcd.put(
        "/services/payments/etcd-only",
        v.to_string(),
        Some(etcd_client::PutOptions::new().with_lease(lease)),
    )
    .await
    .unwrap();
    env.consul
        .register_direct("payments", "consul-only", "10.0.0.3", 82, "60s")
        .await;
    // Garbage another tool wrote under the prefix is skipped, not fatal.
    etcd.put("/services/payments/garbage", "not json", None)
        .await
        .unwrap();

    let r = c.get("/v1/services/payments/instances").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["service"], "payments");
    assert!(r.json["index"].as_u64().unwrap() > 0);
    let inst = r.json["instances"].as_array().unwrap();
    let by_id = |id: &str| {
        inst.iter()
            .find(|i| i["id"] == id)
            .unwrap_or_else(|| panic!("{id} missing: {}", r.text))
    };
    assert_eq!(inst.len(), 3, "{}", r.text);
    assert_eq!(by_id("both")["sources"], json!(["etcd", "consul"]));
    assert_eq!(by_id("both")["meta"], json!({"zone": "eu-1a"}));
    assert_eq!(by_id("etcd-only")["sources"], json!(["etcd"]));
    assert_eq!(by_id("etcd-only")["port"], 81);
    assert_eq!(by_id("consul-only")["sources"], json!(["consul"]));
    assert_eq!(by_id("consul-only")["address"], "10.0.0.3");
    assert_eq!(r.json["registries"]["etcd"]["ok"], true);

    let s = c.get("/v1/services").await;
    assert_eq!(s.status, 200, "{}", s.text);
    assert_eq!(
        s.json["services"],
        json!([{"name": "payments", "instances": 3}])
    );

    // The primary's record wins where they differ.
    let v = json!({"service":"payments","id":"both","address":"10.9.9.9","port":80,"ttl_seconds":30,"Op":0,"Addr":"10.9.9.9:80"});
    etcd.put(
        "/services/payments/both",
        v.to_string(),
        Some(etcd_client::PutOptions::new().with_lease(lease)),
    )
    .await
    .unwrap();
    let r2 = c.get("/v1/services/payments/instances").await;
    let both = r2.json["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == "both")
        .unwrap()
        .clone();
    assert_eq!(both["address"], "10.9.9.9");
    assert_ne!(
        r2.json["index"], r.json["index"],
        "a changed set has a new index"
    );
}

#[tokio::test]
async fn long_poll_returns_on_change_and_after_wait_without_one() {
    let env = Env::start().await;
    let c = env.gw.client("payments");
    assert_eq!(
        c.put_json(&path("payments", "a"), &body("10.0.0.1", 80))
            .await
            .status,
        200
    );
    let first = c.get("/v1/services/payments/instances").await;
    let index = first.json["index"].as_u64().unwrap();

    let asked = std::time::Instant::now();
    let unchanged = c
        .get(&format!(
            "/v1/services/payments/instances?index={index}&wait=1s"
        ))
        .await;
    assert_eq!(unchanged.status, 200);
    assert_eq!(unchanged.json["index"].as_u64(), Some(index));
    assert!(
        asked.elapsed() >= std::time::Duration::from_secs(1),
        "nothing changed: the answer waits for `wait` ({:?})",
        asked.elapsed()
    );

    let poll = {
        let c = env.gw.client("payments");
        tokio::spawn(async move {
            c.get(&format!(
                "/v1/services/payments/instances?index={index}&wait=30s"
            ))
            .await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(c.delete(&path("payments", "a")).await.status, 200);
    let changed = poll.await.unwrap();
    assert_eq!(changed.status, 200);
    assert_ne!(changed.json["index"].as_u64(), Some(index));
    assert_eq!(
        changed.json["instances"],
        json!([]),
        "the last instance going away is reported"
    );
}
