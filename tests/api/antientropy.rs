//! The anti-entropy sweep: restores what one registry lost without waiting for a heartbeat,
//! removes what a registry missed a delete of, and runs on one replica at a time.

use std::time::Duration;

use crate::{Env, body, path};
use testkit::eventually;
use testkit::gateway::{Gateway, Options};

fn sweeping() -> Options {
    Options {
        extra_toml: "[anti_entropy]\ninterval = \"500ms\"\n".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn the_sweep_restores_records_a_registry_lost_without_a_heartbeat() {
    let env = Env::start_with(sweeping()).await;
    let c = env.gw.client("payments");
    for id in ["a", "b"] {
        assert_eq!(
            c.put_json(&path("payments", id), &body("10.0.0.5", 80))
                .await
                .status,
            200
        );
    }
    // etcd loses one, Consul the other, behind twinreg's back; no heartbeat is sent.
    env.etcd
        .client()
        .await
        .delete("/services/payments/a", None)
        .await
        .unwrap();
    env.consul
        .request("PUT", "/v1/agent/service/deregister/payments.b", None)
        .await
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "the sweep to restore both",
        || async {
            let a = env.etcd_record("payments", "a").await;
            let b = env.consul_service("payments", "b").await;
            (a.is_some() && b.is_some()).then_some(())
        },
    )
    .await;
    let (a, lease) = env.etcd_record("payments", "a").await.unwrap();
    assert_ne!(lease, 0, "restored with a lease");
    assert_eq!(a["address"], "10.0.0.5");
}

#[tokio::test]
async fn a_delete_consul_missed_is_removed_by_the_sweep_not_copied_back() {
    let etcd = testkit::etcd::Etcd::start().await;
    let consul = testkit::consul::Consul::start().await;
    let no_sweep = Options {
        extra_toml: "[anti_entropy]\nenabled = false\n".into(),
        ..Default::default()
    };
    let a = Gateway::start_with(&etcd, &consul, no_sweep).await;
    let c = a.client("payments");
    assert_eq!(
        c.put_json(&path("payments", "z"), &body("10.0.0.5", 80))
            .await
            .status,
        200
    );
    a.stop().await;
    // The state a deregister leaves when Consul missed it and the replica that owed the repair
    // died: etcd deleted the record and kept a tombstone; Consul still holds the instance.
    let key = "/services/payments/z";
    let (_, record, _) = etcd.dump(key).await.into_iter().next().unwrap();
    let generation = record["generation"].as_u64().unwrap();
    let mut client = etcd.client().await;
    client.delete(key, None).await.unwrap();
    client
        .put(
            "/services/.tombstones/payments/z",
            (generation + 1).to_string(),
            None,
        )
        .await
        .unwrap();
    assert!(consul.agent_services().await.contains_key("payments.z"));

    let _b = Gateway::start_with(&etcd, &consul, sweeping()).await;
    eventually(
        Duration::from_secs(30),
        "the sweep to remove the leftover",
        || async { (!consul.agent_services().await.contains_key("payments.z")).then_some(()) },
    )
    .await;
    assert!(
        !etcd.dump(key).await.iter().any(|(k, _, _)| k == key),
        "a deregistered instance came back in etcd"
    );
}

#[tokio::test]
async fn one_replica_sweeps_at_a_time() {
    let env = Env::start_with(sweeping()).await;
    let other = Gateway::start_with(&env.etcd, &env.consul, sweeping()).await;
    let leader = |m: &str| m.lines().any(|l| l == "twinreg_sweeper_leader 1");
    eventually(
        Duration::from_secs(30),
        "a leader to be elected",
        || async {
            let (_, m1) = env.gw.admin_get("/metrics").await;
            let (_, m2) = other.admin_get("/metrics").await;
            (leader(&m1) || leader(&m2)).then_some(())
        },
    )
    .await;
    for _ in 0..5 {
        let (_, m1) = env.gw.admin_get("/metrics").await;
        let (_, m2) = other.admin_get("/metrics").await;
        assert!(!(leader(&m1) && leader(&m2)), "two replicas sweep at once");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The leader goes away: the other takes over once its lease lapses.
    let (_, m1) = env.gw.admin_get("/metrics").await;
    let (gone, stays) = if leader(&m1) {
        (env.gw, other)
    } else {
        (other, env.gw)
    };
    gone.stop().await;
    eventually(
        Duration::from_secs(30),
        "the other replica to take over",
        || async { leader(&stays.admin_get("/metrics").await.1).then_some(()) },
    )
    .await;
}
