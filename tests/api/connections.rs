//! Registry connections: warmed before readiness, kept open through idle spells, no new TLS
//! handshake in steady state; heartbeat coalescing that never lets a registry's copy lapse.

use std::time::Duration;

use futures::future::join_all;

use crate::tls::secure_env_with;
use crate::{Env, body, path};
use testkit::client::TestClient;
use testkit::gateway::Options;
use testkit::metric;

const TOKEN: &str = "3f6a1c2e-7d40-4b8e-9a11-5c0ffee0cafe";

fn handshakes(metrics: &str, registry: &str) -> f64 {
    metric(
        metrics,
        "twinreg_registry_tls_handshakes_total",
        &[("registry", registry)],
    )
}

#[tokio::test]
async fn pools_are_warm_at_readiness_and_no_handshake_follows_an_idle_spell_or_a_burst() {
    let env = secure_env_with(TOKEN, Options::default()).await;
    env.gw.wait_both_up().await;
    let (_, m) = env.gw.admin_get("/metrics").await;
    let (etcd0, consul0) = (handshakes(&m, "etcd"), handshakes(&m, "consul"));
    // Readiness came after the pools' TLS handshakes.
    assert!(etcd0 >= 1.0, "etcd handshakes at readiness: {etcd0}\n{m}");
    assert!(
        consul0 >= 1.0,
        "consul handshakes at readiness: {consul0}\n{m}"
    );

    // Idle past an HTTP/2 keepalive round (10 s), then a burst of 64 concurrent clients.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let c = env.gw.client("payments");
    let statuses = join_all((0..64).map(|k| {
        let c = &c;
        async move {
            let id = format!("burst-{k}");
            let r = c
                .put_json(&path("payments", &id), &body("10.0.0.9", 8000 + k))
                .await;
            assert_eq!(r.json["degraded"], false, "{}", r.text);
            let h = c.put(&format!("{}/heartbeat", path("payments", &id))).await;
            (r.status, h.status)
        }
    }))
    .await;
    assert!(statuses.iter().all(|s| *s == (200, 200)), "{statuses:?}");

    let (_, m) = env.gw.admin_get("/metrics").await;
    assert_eq!(
        (handshakes(&m, "etcd"), handshakes(&m, "consul")),
        (etcd0, consul0),
        "a registry TLS handshake happened after start-up"
    );
}

/// A gateway with heartbeat coalescing on, and `payments/pay-1` registered with `ttl_seconds`.
async fn coalescing_env_with_instance(ttl_seconds: u32) -> (Env, TestClient) {
    let env = Env::start_with(Options {
        coalesce: true,
        ..Default::default()
    })
    .await;
    let c = env.gw.client("payments");
    let r = c
        .put_json(
            &path("payments", "pay-1"),
            &serde_json::json!({"address": "10.0.0.5", "port": 8080, "ttl_seconds": ttl_seconds}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    (env, c)
}

#[tokio::test]
async fn coalesced_heartbeats_never_let_a_registry_copy_lapse() {
    // ttl 5 s: a copy refreshed less than 5/3 s ago is not refreshed again.
    let (env, c) = coalescing_env_with_instance(5).await;
    let hb = format!("{}/heartbeat", path("payments", "pay-1"));
    let (mut sent, mut coalesced) = (0, 0);
    // Three TTLs of heartbeats at intervals around the window; the copies must never lapse.
    for every_ms in [600u64, 1200, 1700, 400, 2500, 900].iter().cycle().take(12) {
        tokio::time::sleep(Duration::from_millis(*every_ms)).await;
        let r = c.put(&hb).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.json["degraded"], false, "{}", r.text);
        sent += 1;
        if r.json["registries"]["etcd"]["coalesced"] == true {
            coalesced += 1;
        }
        assert!(
            env.etcd_record("payments", "pay-1").await.is_some(),
            "the etcd key lapsed after heartbeat {sent}"
        );
        let checks = env.consul.agent_checks().await;
        let status = &checks["service:payments.pay-1"]["Status"];
        assert_eq!(status, "passing", "consul check after heartbeat {sent}");
    }
    assert!(coalesced > 0, "no heartbeat was coalesced");
    let (_, m) = env.gw.admin_get("/metrics").await;
    let reached = metric(
        &m,
        "twinreg_registry_operations_total",
        &[("registry", "etcd"), ("op", "heartbeat")],
    );
    let skipped = metric(
        &m,
        "twinreg_heartbeats_coalesced_total",
        &[("registry", "etcd")],
    );
    assert_eq!(reached + skipped, f64::from(sent), "{m}");
    assert!(reached < f64::from(sent));
}

/// `heartbeat.coalesce` is accepted from old configurations and changes nothing: heartbeats are
/// answered from memory whatever it says, and a copy lost behind twinreg's back is written
/// again at once, not at some heartbeat after a window.
#[tokio::test]
async fn with_the_old_coalescing_switch_a_lost_copy_is_still_restored_at_once() {
    let (env, c) = coalescing_env_with_instance(6).await;
    let mut etcd = env.etcd.client().await;
    etcd.delete("/services/payments/pay-1", None).await.unwrap();
    let deleted = std::time::Instant::now();
    testkit::eventually(Duration::from_secs(5), "etcd's copy restored", || async {
        env.etcd_record("payments", "pay-1").await
    })
    .await;
    assert!(
        deleted.elapsed() < Duration::from_millis(1500),
        "{:?}",
        deleted.elapsed()
    );
    let hb = format!("{}/heartbeat", path("payments", "pay-1"));
    let r = c.put(&hb).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.json["registries"]["etcd"]["coalesced"], true,
        "{}",
        r.text
    );
    assert_eq!(r.json["degraded"], false, "{}", r.text);
}
