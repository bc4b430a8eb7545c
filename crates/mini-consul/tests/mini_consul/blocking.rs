//! Blocking queries: `?index=&wait=`, `X-Consul-Index`, what wakes a watcher and what does not.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::task::JoinHandle;

use crate::support::{Resp, Server};

/// Starts a GET in the background and checks that it is still waiting a moment later.
async fn start_blocking(s: &Arc<Server>, path: String) -> JoinHandle<(Resp, Duration)> {
    let server = s.clone();
    let handle = tokio::spawn(async move {
        let t0 = Instant::now();
        let r = server.get(&path).await;
        (r, t0.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !handle.is_finished(),
        "the blocking query answered without a change"
    );
    handle
}

async fn finish(handle: JoinHandle<(Resp, Duration)>) -> Resp {
    tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .expect("the blocking query returned after the change")
        .expect("query task")
        .0
}

#[tokio::test]
async fn returns_when_the_service_changes() {
    let s = Arc::new(Server::start(&[]).await);
    s.register(json!({"Name": "web", "ID": "web-1", "Check": {"TTL": "60s"}}))
        .await;
    let idx = s.get("/v1/health/service/web").await.index();

    // A new instance.
    let h = start_blocking(&s, format!("/v1/health/service/web?index={idx}&wait=30s")).await;
    s.register(json!({"Name": "web", "ID": "web-2"})).await;
    let r = finish(h).await;
    let idx2 = r.index();
    assert!(idx2 > idx);
    assert_eq!(r.json().as_array().unwrap().len(), 2);

    // A TTL status change (bumps the index and wakes health watchers of that service).
    let h = start_blocking(&s, format!("/v1/health/service/web?index={idx2}&wait=30s")).await;
    s.put("/v1/agent/check/pass/service:web-1", None)
        .await
        .assert_write_ok();
    let r = finish(h).await;
    let idx3 = r.index();
    assert!(idx3 > idx2);
    assert_eq!(r.json()[0]["Checks"][1]["Status"], "passing");

    // The last instances going away.
    s.put("/v1/agent/service/deregister/web-2", None)
        .await
        .assert_write_ok();
    let idx4 = s.get("/v1/health/service/web").await.index();
    let h = start_blocking(&s, format!("/v1/health/service/web?index={idx4}&wait=30s")).await;
    s.put("/v1/agent/service/deregister/web-1", None)
        .await
        .assert_write_ok();
    let r = finish(h).await;
    assert!(
        r.index() > idx4,
        "a watcher learns that the last instance went away"
    );
    assert_eq!(r.json(), json!([]));
}

#[tokio::test]
async fn ttl_expiry_wakes_watchers() {
    let s = Arc::new(Server::start(&[]).await);
    s.register(json!({"Name": "web", "Check": {"TTL": "2s", "Status": "passing"}}))
        .await;
    let idx = s.get("/v1/health/service/web?passing").await.index();
    let h = start_blocking(
        &s,
        format!("/v1/health/service/web?passing&index={idx}&wait=30s"),
    )
    .await;
    let r = finish(h).await;
    assert!(r.index() > idx);
    assert_eq!(r.json(), json!([]), "the expired instance no longer passes");
}

#[tokio::test]
async fn times_out_with_the_same_index_when_nothing_changes() {
    let s = Server::start(&[]).await;
    s.register(json!({"Name": "web"})).await;
    s.register(json!({"Name": "db", "Check": {"TTL": "60s"}}))
        .await;
    let idx = s.get("/v1/health/service/web").await.index();
    let path = format!("/v1/health/service/web?index={idx}&wait=1s");
    let t0 = Instant::now();
    let blocked = tokio::spawn({
        let client = s.http.clone();
        let url = format!("{}{path}", s.base);
        async move {
            let req = http::Request::get(url).body(Default::default()).unwrap();
            crate::support::send(&client, req).await.unwrap()
        }
    });
    // Changes to another service do not wake this watcher.
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.register(json!({"Name": "db", "Port": 5432, "Check": {"TTL": "60s"}}))
        .await;
    s.put("/v1/agent/check/pass/service:db", None)
        .await
        .assert_write_ok();
    let r = blocked.await.unwrap();
    let elapsed = t0.elapsed();
    assert!(
        elapsed >= Duration::from_secs(1),
        "returned early: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_millis(1800),
        "wait plus at most wait/16, got {elapsed:?}"
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.index(), idx, "nothing changed, so the same index");
    assert_eq!(r.json().as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn catalog_services_blocking() {
    let s = Arc::new(Server::start(&[]).await);
    s.register(json!({"Name": "web", "Check": {"TTL": "60s"}}))
        .await;
    let idx = s.get("/v1/catalog/services").await.index();
    // A check status change is no change to the services list.
    s.put("/v1/agent/check/pass/service:web", None)
        .await
        .assert_write_ok();
    let r = s
        .get(&format!("/v1/catalog/services?index={idx}&wait=1s"))
        .await;
    assert_eq!(r.index(), idx);

    let h = start_blocking(&s, format!("/v1/catalog/services?index={idx}&wait=30s")).await;
    s.register(json!({"Name": "db", "Tags": ["primary"]})).await;
    let r = finish(h).await;
    assert!(r.index() > idx);
    assert_eq!(
        r.json(),
        json!({"consul": [], "db": ["primary"], "web": []})
    );
}

#[tokio::test]
async fn index_rules_and_headers() {
    let s = Server::start(&[]).await;
    // A fresh server: still never 0, also for services that do not exist.
    for path in [
        "/v1/catalog/services",
        "/v1/health/service/nothing",
        "/v1/health/service/consul",
    ] {
        let r = s.get(path).await;
        assert_eq!(r.status, 200);
        r.index();
        assert_eq!(r.header("x-consul-knownleader"), Some("true"));
        assert_eq!(r.header("x-consul-effective-consistency"), Some("leader"));
    }
    let r = s.get("/v1/catalog/services?stale").await;
    assert_eq!(r.header("x-consul-effective-consistency"), Some("stale"));
    // index=0 or missing does not block, even with a wait.
    let t0 = Instant::now();
    s.get("/v1/health/service/nothing?index=0&wait=5s")
        .await
        .index();
    s.get("/v1/catalog/services?wait=5s").await.index();
    assert!(t0.elapsed() < Duration::from_secs(2));

    s.get("/v1/health/service/web?index=1&wait=30")
        .await
        .assert_error(400, "Invalid wait time");
    s.get("/v1/catalog/services?wait=abc")
        .await
        .assert_error(400, "Invalid wait time");
    s.get("/v1/health/service/web?index=abc")
        .await
        .assert_error(400, "Invalid index");
    s.get("/v1/catalog/services?index=-1")
        .await
        .assert_error(400, "Invalid index");
    s.get("/v1/catalog/services?stale&consistent")
        .await
        .assert_error(
            400,
            "Cannot specify ?stale with ?consistent, conflicting semantics.",
        );

    // Agent-local endpoints send no index.
    s.register(json!({"Name": "web"})).await;
    for path in [
        "/v1/agent/services",
        "/v1/agent/checks",
        "/v1/agent/service/web",
    ] {
        assert_eq!(s.get(path).await.header("x-consul-index"), None, "{path}");
    }
    // An index ahead of the server's (e.g. after a restart) blocks until the wait ends.
    let t0 = Instant::now();
    let r = s
        .get("/v1/health/service/web?index=999999&wait=500ms")
        .await;
    assert!(t0.elapsed() >= Duration::from_millis(500));
    assert!(
        r.index() < 999_999,
        "the index may come back lower than requested"
    );
}

#[tokio::test]
async fn agent_service_hash_blocking() {
    let s = Arc::new(Server::start(&[]).await);
    s.register(json!({"Name": "web", "Port": 80})).await;
    let hash = s.get_json("/v1/agent/service/web").await["ContentHash"]
        .as_str()
        .unwrap()
        .to_owned();
    let h = start_blocking(&s, format!("/v1/agent/service/web?hash={hash}&wait=30s")).await;
    s.register(json!({"Name": "web", "Port": 81})).await;
    let r = finish(h).await;
    let v = r.json();
    assert_eq!(v["Port"], 81);
    assert_ne!(v["ContentHash"].as_str().unwrap(), hash);
}

#[tokio::test]
async fn a_services_checks_block_until_the_service_changes() {
    let s = Arc::new(Server::start(&[]).await);
    s.register(json!({"Name": "web", "ID": "web-1", "Check": {"TTL": "60s"}}))
        .await;
    s.register(json!({"Name": "db", "ID": "db-1"})).await;
    let idx = s.get("/v1/health/checks/web").await.index();
    assert_eq!(idx, s.get("/v1/health/service/web").await.index());

    // Another service changing does not wake it; a check of this one does.
    let h = start_blocking(&s, format!("/v1/health/checks/web?index={idx}&wait=30s")).await;
    s.register(json!({"Name": "db", "ID": "db-2"})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!h.is_finished(), "woken by another service");
    s.put("/v1/agent/check/pass/service:web-1", None)
        .await
        .assert_write_ok();
    let r = finish(h).await;
    assert!(r.index() > idx);
    assert_eq!(r.json()[0]["Status"], "passing");

    // The instance going away: its check goes with it.
    let idx = r.index();
    let h = start_blocking(&s, format!("/v1/health/checks/web?index={idx}&wait=30s")).await;
    s.put("/v1/agent/service/deregister/web-1", None)
        .await
        .assert_write_ok();
    let r = finish(h).await;
    assert!(r.index() > idx);
    assert_eq!(r.json(), json!([]));
}
