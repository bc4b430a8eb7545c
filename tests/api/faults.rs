//! A registry killed or both killed: the answers docs/api.md promises, within the deadline.

use std::time::{Duration, Instant};

use crate::{Env, body, path};
use testkit::gateway::Options;

const DEADLINE_MS: u64 = 1500;
/// Slack over the registry deadline for the rest of the request (TLS, JSON) on a busy machine.
const SLACK: Duration = Duration::from_millis(1500);

#[tokio::test]
async fn etcd_killed_still_registers_through_consul() {
    let mut env = Env::start_with(Options {
        timeout_ms: Some(DEADLINE_MS),
        ..Default::default()
    })
    .await;
    let c = env.gw.client("payments");
    env.etcd.kill();
    let start = Instant::now();
    let r = c
        .put_json(&path("payments", "pay-1"), &body("10.0.0.5", 8080))
        .await;
    let took = start.elapsed();
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["registered"], true);
    assert_eq!(r.json["degraded"], true);
    assert_eq!(r.json["registries"]["etcd"]["ok"], false);
    assert!(
        r.json["registries"]["etcd"]["error"]
            .as_str()
            .unwrap()
            .len()
            > 3
    );
    assert_eq!(r.json["registries"]["consul"]["ok"], true);
    assert!(
        took < Duration::from_millis(DEADLINE_MS) + SLACK,
        "answered after {took:?}"
    );
    assert!(env.consul_service("payments", "pay-1").await.is_some());

    let hb = c
        .put(&format!("{}/heartbeat", path("payments", "pay-1")))
        .await;
    assert_eq!(hb.status, 200, "{}", hb.text);
    assert_eq!(hb.json["degraded"], true);
    let list = c.get("/v1/services/payments/instances").await;
    assert_eq!(list.status, 200);
    assert_eq!(
        list.json["instances"][0]["sources"],
        serde_json::json!(["consul"])
    );
    assert_eq!(list.json["registries"]["etcd"]["ok"], false);

    // When etcd is back, the missed write is re-driven into it.
    env.etcd.restart().await;
    testkit::eventually(
        Duration::from_secs(60),
        "the repair to land in etcd",
        || async { env.etcd_record("payments", "pay-1").await.map(drop) },
    )
    .await;
}

#[tokio::test]
async fn consul_killed_still_registers_through_etcd() {
    let mut env = Env::start_with(Options {
        timeout_ms: Some(DEADLINE_MS),
        ..Default::default()
    })
    .await;
    let c = env.gw.client("payments");
    env.consul.kill();
    let start = Instant::now();
    let r = c
        .put_json(&path("payments", "pay-1"), &body("10.0.0.5", 8080))
        .await;
    let took = start.elapsed();
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["degraded"], true);
    assert_eq!(r.json["registries"]["etcd"]["ok"], true);
    assert_eq!(r.json["registries"]["consul"]["ok"], false);
    assert!(
        took < Duration::from_millis(DEADLINE_MS) + SLACK,
        "answered after {took:?}"
    );
    assert!(env.etcd_record("payments", "pay-1").await.is_some());

    let d = c.delete(&path("payments", "pay-1")).await;
    assert_eq!(d.status, 200, "{}", d.text);
    assert_eq!(d.json["existed"], true);
    assert!(env.etcd_record("payments", "pay-1").await.is_none());
}

#[tokio::test]
async fn frozen_etcd_never_holds_a_response_past_its_deadline() {
    let env = Env::start_with(Options {
        timeout_ms: Some(DEADLINE_MS),
        ..Default::default()
    })
    .await;
    let c = env.gw.client("payments");
    testkit::signal(env.etcd.pid(), nix::sys::signal::Signal::SIGSTOP);
    let start = Instant::now();
    let r = c
        .put_json(&path("payments", "pay-1"), &body("10.0.0.5", 8080))
        .await;
    let took = start.elapsed();
    testkit::signal(env.etcd.pid(), nix::sys::signal::Signal::SIGCONT);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.json["registries"]["etcd"]["error"],
        format!("timed out after {DEADLINE_MS} ms")
    );
    assert!(
        took < Duration::from_millis(DEADLINE_MS) + SLACK,
        "answered after {took:?}"
    );
}

#[tokio::test]
async fn both_killed_gives_503_with_retry_after() {
    let mut env = Env::start().await;
    let c = env.gw.client("payments");
    env.etcd.kill();
    env.consul.kill();
    let r = c
        .put_json(&path("payments", "pay-1"), &body("10.0.0.5", 8080))
        .await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(r.json["error"], "unavailable");
    assert_eq!(r.json["registries"]["etcd"]["ok"], false);
    assert_eq!(r.json["registries"]["consul"]["ok"], false);
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry));
    for (method, p) in [
        ("PUT", format!("{}/heartbeat", path("payments", "pay-1"))),
        ("DELETE", path("payments", "pay-1")),
        ("GET", "/v1/services/payments/instances".to_string()),
    ] {
        let r = c.request(method, &p, None).await;
        assert_eq!(r.status, 503, "{method} {p}: {}", r.text);
        assert!(r.headers.contains_key("retry-after"));
    }
    testkit::eventually(
        Duration::from_secs(10),
        "/readyz to report not ready",
        || async { (env.gw.readyz().await.0 == 503).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn starts_without_registries_and_joins_them_later() {
    let etcd_port = testkit::free_port();
    let consul_port = testkit::free_port();
    let gw = testkit::gateway::Gateway::launch(
        vec![format!("http://127.0.0.1:{etcd_port}")],
        format!("http://127.0.0.1:{consul_port}"),
        Options::default(),
    )
    .await;
    let (s, _) = gw.admin_get("/healthz").await;
    assert_eq!(s, 200, "the listener serves at once");
    let (s, body) = gw.readyz().await;
    assert_eq!(s, 503, "{body}");
    assert_eq!(body["ready"], false);
    let r = gw
        .client("payments")
        .put_json(&path("payments", "p"), &crate::body("10.0.0.1", 80))
        .await;
    assert_eq!(r.status, 503, "{}", r.text);

    let etcd = testkit::etcd::Etcd::start_on(etcd_port).await;
    testkit::eventually(
        Duration::from_secs(30),
        "readyz 200 with etcd up",
        || async { (gw.readyz().await.0 == 200).then_some(()) },
    )
    .await;
    let r = gw
        .client("payments")
        .put_json(&path("payments", "p"), &crate::body("10.0.0.1", 80))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    drop(etcd);
}

#[tokio::test]
async fn after_the_breaker_opens_a_frozen_registry_is_skipped_at_once() {
    let env = Env::start_with(Options {
        timeout_ms: Some(DEADLINE_MS),
        ..Default::default()
    })
    .await;
    let c = env.gw.client("payments");
    testkit::signal(env.etcd.pid(), nix::sys::signal::Signal::SIGSTOP);
    // Three timeouts in a row open etcd's breaker (breaker.consecutive_failures = 3).
    for i in 0..3 {
        let r = c
            .put_json(&path("payments", &format!("p{i}")), &body("10.0.0.5", 8080))
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let r = c
        .put_json(&path("payments", "after"), &body("10.0.0.5", 8080))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let err = r.json["registries"]["etcd"]["error"].as_str().unwrap();
    assert!(
        err.starts_with("circuit open"),
        "etcd is skipped, not waited on: {err}"
    );
    let (_, ready) = env.gw.readyz().await;
    assert_eq!(ready["registries"]["etcd"]["breaker"], "open", "{ready}");
    let (_, metrics) = env.gw.admin_get("/metrics").await;
    assert!(
        metrics.contains(r#"twinreg_breaker_state{registry="etcd"} 2"#),
        "{metrics}"
    );

    // Thawed: a probe closes the breaker and the missed writes land.
    testkit::signal(env.etcd.pid(), nix::sys::signal::Signal::SIGCONT);
    testkit::eventually(Duration::from_secs(30), "the breaker to close", || async {
        (env.gw.readyz().await.1["registries"]["etcd"]["breaker"] == "closed").then_some(())
    })
    .await;
    for id in ["p0", "p1", "p2", "after"] {
        testkit::eventually(
            Duration::from_secs(60),
            "the repair to land in etcd",
            || async { env.etcd_record("payments", id).await.map(drop) },
        )
        .await;
    }
}
