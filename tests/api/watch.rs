//! `Watch` (gRPC) against real etcd and mini-consul: changes through twinreg and behind its back,
//! registry outages, PROGRESS frames, resuming on another replica, one shared upstream watch.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use tonic::Code;
use tonic::transport::Channel;
use twinreg::api::grpc::pb;
use twinreg::api::grpc::pb::registry_client::RegistryClient;
use twinreg::api::grpc::pb::watch_event::Type;

use crate::{Env, body, path};
use testkit::gateway::{Gateway, Options};
use testkit::grpc::registry;
use testkit::{eventually, find_binary, metric};

/// Watch settings for the tests: frequent PROGRESS frames.
fn options() -> Options {
    Options {
        extra_toml: "[watch]\nprogress_interval = \"1s\"\nlinger = \"30s\"\n".into(),
        ..Options::default()
    }
}

/// One watch stream and the instance set its events describe.
struct Watcher {
    _client: RegistryClient<Channel>,
    stream: tonic::Streaming<pb::WatchEvent>,
    /// id → (port, sources)
    state: BTreeMap<String, (u32, Vec<String>)>,
    in_snapshot: bool,
    /// Index of the last event that carried one.
    index: u64,
    /// Every event but PROGRESS, as (type, id).
    log: Vec<(Type, String)>,
}

impl Watcher {
    async fn open(gw: &Gateway, service: &str, resume: u64) -> Watcher {
        let mut client = registry(gw, "watcher").await;
        let stream = client
            .watch(pb::WatchRequest {
                service: service.into(),
                resume_index: resume,
            })
            .await
            .expect("watch starts")
            .into_inner();
        Watcher {
            _client: client,
            stream,
            state: BTreeMap::new(),
            in_snapshot: false,
            index: 0,
            log: Vec::new(),
        }
    }

    /// The next event, applied to `state`.
    async fn next(&mut self) -> pb::WatchEvent {
        let e = tokio::time::timeout(Duration::from_secs(20), self.stream.message())
            .await
            .expect("an event (at least a PROGRESS frame) within 20 s")
            .expect("the stream goes on")
            .expect("the stream is not closed");
        let t = e.r#type();
        if e.snapshot && !self.in_snapshot {
            self.state.clear();
        }
        self.in_snapshot = e.snapshot;
        if e.index != 0 {
            self.index = e.index;
        }
        let id = e.instance.as_ref().map_or(String::new(), |i| i.id.clone());
        match t {
            Type::Added | Type::Modified => {
                let i = e
                    .instance
                    .as_ref()
                    .expect("ADDED/MODIFIED name an instance");
                self.state.insert(id.clone(), (i.port, i.sources.clone()));
            }
            Type::Deleted => {
                assert!(self.state.remove(&id).is_some(), "DELETED {id} never added");
            }
            Type::Empty => assert!(self.state.is_empty(), "EMPTY with {:?}", self.state),
            _ => {}
        }
        if t != Type::Progress {
            self.log.push((t, id));
        }
        e
    }

    /// Reads events until `done(state)` holds; panics after `limit`.
    async fn until(
        &mut self,
        limit: Duration,
        what: &str,
        done: impl Fn(&BTreeMap<String, (u32, Vec<String>)>) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + limit;
        while !done(&self.state) || self.in_snapshot {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not seen within {limit:?}; state {:?}, events {:?}",
                self.state,
                self.log
            );
            self.next().await;
        }
    }

    /// Reads the opening snapshot (or resumed events), up to the PROGRESS frame that ends it.
    async fn synced(&mut self) {
        while self.next().await.r#type() != Type::Progress {}
    }

    /// The next event that is not PROGRESS must be `t`.
    async fn expect(&mut self, t: Type) -> pb::WatchEvent {
        loop {
            let e = self.next().await;
            if e.r#type() != Type::Progress {
                assert_eq!(e.r#type(), t, "{e:?}; events {:?}", self.log);
                return e;
            }
        }
    }

    fn count(&self, t: Type, id: &str) -> usize {
        self.log.iter().filter(|(x, i)| *x == t && i == id).count()
    }
}

fn both() -> Vec<String> {
    vec!["etcd".into(), "consul".into()]
}

fn etcdctl(env: &Env, args: &[&str]) {
    let bin = find_binary("ETCDCTL_BIN", "etcdctl")
        .expect("etcdctl not found on PATH or at ETCDCTL_BIN; run scripts/setup.sh (Debian package etcd-client)");
    let out = std::process::Command::new(bin)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", env.etcd.endpoint()))
        .args(args)
        .output()
        .expect("running etcdctl");
    assert!(
        out.status.success(),
        "etcdctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_sees_changes_through_twinreg_and_behind_its_back() {
    let env = Env::start_with(options()).await;
    let c = env.gw.client("payments");
    let mut w = Watcher::open(&env.gw, "payments", 0).await;
    let first = w.next().await;
    assert_eq!(
        (first.r#type(), first.snapshot),
        (Type::Empty, true),
        "{first:?}"
    );
    assert_eq!(w.next().await.r#type(), Type::Progress);

    // Through twinreg: one ADDED naming both registries, then MODIFIED on a changed record.
    assert_eq!(
        c.put_json(&path("payments", "a"), &body("10.0.0.1", 80))
            .await
            .status,
        200
    );
    w.until(Duration::from_secs(10), "a added", |s| {
        s.get("a") == Some(&(80, both()))
    })
    .await;
    assert_eq!(
        w.log,
        [(Type::Empty, String::new()), (Type::Added, "a".into())]
    );
    assert_eq!(
        c.put_json(&path("payments", "a"), &body("10.0.0.1", 81))
            .await
            .status,
        200
    );
    w.until(Duration::from_secs(10), "a modified", |s| s["a"].0 == 81)
        .await;
    assert_eq!(w.log.last(), Some(&(Type::Modified, "a".into())));

    // Behind its back: the key deleted with etcdctl is written again at once by the replica
    // that owns it; the copy in Consul never left, so no watcher sees `a` go away.
    etcdctl(&env, &["del", "/services/payments/a"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    w.until(Duration::from_secs(10), "a restored in etcd", |s| {
        s.get("a") == Some(&(81, both()))
    })
    .await;
    // The Consul copy deregistered directly: written again too.
    let (s, b) = env
        .consul
        .request("PUT", "/v1/agent/service/deregister/payments.a", None)
        .await
        .unwrap();
    assert_eq!(s, 200, "{b}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    w.until(Duration::from_secs(10), "a restored in consul", |s| {
        s.get("a") == Some(&(81, both()))
    })
    .await;
    assert_eq!(w.count(Type::Deleted, "a"), 0, "{:?}", w.log);
    // A record another tool put in etcd (no replica owns it): seen, and gone when deleted.
    let other =
        r#"{"service":"payments","id":"x","address":"10.0.0.7","port":70,"ttl_seconds":30}"#;
    etcdctl(&env, &["put", "/services/payments/x", other]);
    w.until(Duration::from_secs(10), "x only in etcd", |s| {
        s.get("x") == Some(&(70, vec!["etcd".into()]))
    })
    .await;
    etcdctl(&env, &["del", "/services/payments/x"]);
    w.until(Duration::from_secs(10), "x deleted", |s| {
        !s.contains_key("x")
    })
    .await;
    assert_eq!(w.log.last(), Some(&(Type::Deleted, "x".into())));
    assert_eq!(c.delete(&path("payments", "a")).await.status, 200);
    w.until(Duration::from_secs(10), "a deleted", |s| s.is_empty())
        .await;
    w.expect(Type::Empty).await;

    // Through twinreg again: register and deregister.
    assert_eq!(
        c.put_json(&path("payments", "b"), &body("10.0.0.2", 80))
            .await
            .status,
        200
    );
    w.until(Duration::from_secs(10), "b added", |s| s.contains_key("b"))
        .await;
    assert_eq!(c.delete(&path("payments", "b")).await.status, 200);
    w.until(Duration::from_secs(10), "b deleted", |s| s.is_empty())
        .await;
    w.expect(Type::Empty).await;
    assert_eq!(w.count(Type::Added, "b"), 1);
    assert_eq!(w.count(Type::Deleted, "b"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_sees_a_lease_expire_and_a_consul_check_go_critical() {
    let env = Env::start_with(options()).await;
    let c = env.gw.client("payments");
    let mut w = Watcher::open(&env.gw, "payments", 0).await;
    w.synced().await;

    // No heartbeat: etcd's lease expires and Consul's TTL check turns critical.
    let mut short = body("10.0.0.1", 80);
    short["ttl_seconds"] = json!(5);
    assert_eq!(
        c.put_json(&path("payments", "lapsing"), &short)
            .await
            .status,
        200
    );
    w.until(Duration::from_secs(10), "added", |s| {
        s.contains_key("lapsing")
    })
    .await;
    w.until(Duration::from_secs(20), "expired", |s| s.is_empty())
        .await;
    w.expect(Type::Empty).await;
    assert_eq!(w.count(Type::Deleted, "lapsing"), 1);
    let mut etcd = env.etcd.client().await;
    let left = etcd.get("/services/payments/lapsing", None).await.unwrap();
    assert!(left.kvs().is_empty(), "the lease expired in etcd");

    // Registered directly in Consul (another tool) with a TTL check nobody passes: seen, then
    // gone when the check goes critical.
    let reg = json!({"ID":"payments.direct","Name":"payments","Address":"10.0.0.9","Port":90,
        "Check":{"CheckID":"service:payments.direct","TTL":"5s","Status":"passing",
                 "DeregisterCriticalServiceAfter":"1m"}});
    let (s, b) = env
        .consul
        .request("PUT", "/v1/agent/service/register", Some(&reg.to_string()))
        .await
        .unwrap();
    assert_eq!(s, 200, "{b}");
    w.until(Duration::from_secs(10), "direct added", |s| {
        s.get("direct") == Some(&(90, vec!["consul".into()]))
    })
    .await;
    w.until(Duration::from_secs(20), "direct critical", |s| s.is_empty())
        .await;
    w.expect(Type::Empty).await;
    let checks = env.consul.agent_checks().await;
    assert_eq!(checks["service:payments.direct"]["Status"], "critical");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_keeps_going_through_an_etcd_restart_without_losing_or_repeating_events() {
    let mut env = Env::start_with(options()).await;
    let c = env.gw.client("payments");
    for id in ["a", "b"] {
        assert_eq!(
            c.put_json(&path("payments", id), &body("10.0.0.1", 80))
                .await
                .status,
            200
        );
    }
    let mut w = Watcher::open(&env.gw, "payments", 0).await;
    w.until(Duration::from_secs(10), "snapshot", |s| s.len() == 2)
        .await;

    env.etcd.kill();
    // Changes while etcd is down reach watchers from Consul.
    assert_eq!(
        c.put_json(&path("payments", "c"), &body("10.0.0.3", 80))
            .await
            .status,
        200
    );
    assert_eq!(c.delete(&path("payments", "a")).await.status, 200);
    w.until(Duration::from_secs(15), "c added, a deleted", |s| {
        s.contains_key("c") && !s.contains_key("a")
    })
    .await;
    env.etcd.restart().await;
    // Changes after the restart come through the resumed etcd watch.
    assert_eq!(
        c.put_json(&path("payments", "d"), &body("10.0.0.4", 80))
            .await
            .status,
        200
    );
    w.until(Duration::from_secs(30), "all copies back in both", |s| {
        s.len() == 3 && s.values().all(|(_, src)| *src == both())
    })
    .await;
    for id in ["b", "c", "d"] {
        assert!(w.state.contains_key(id), "{id} present: {:?}", w.state);
        assert_eq!(
            w.count(Type::Added, id),
            1,
            "one ADDED for {id}: {:?}",
            w.log
        );
    }
    assert_eq!(w.count(Type::Deleted, "a"), 1, "{:?}", w.log);
    // The watcher's state is what the registries hold once the repairer has deleted etcd's
    // stale copy of `a` (a fresh list shows that copy until then; the watch never did).
    let listed = eventually(
        Duration::from_secs(30),
        "a's stale copy repaired",
        || async {
            let listed = c.get("/v1/services/payments/instances").await;
            let ids: Vec<String> = listed.json["instances"]
                .as_array()?
                .iter()
                .filter_map(|i| i["id"].as_str().map(str::to_owned))
                .collect();
            (ids == ["b", "c", "d"]).then_some(listed)
        },
    )
    .await;
    // Then the two agree on the index too (sources included) once the last copies settle.
    let mut listed = listed;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        while w.next().await.r#type() != Type::Progress {}
        if listed.json["index"].as_u64() == Some(w.index) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "watch index {} never matched the list's {}: {:?} vs {}",
            w.index,
            listed.json["index"],
            w.state,
            listed.text
        );
        listed = c.get("/v1/services/payments/instances").await;
    }
    assert_eq!(w.count(Type::Added, "a"), 1, "no resurrection: {:?}", w.log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_is_fed_by_etcd_alone_while_consul_is_down() {
    let mut env = Env::start_with(options()).await;
    let c = env.gw.client("payments");
    let mut w = Watcher::open(&env.gw, "payments", 0).await;
    w.synced().await;
    env.consul.kill();
    assert_eq!(
        c.put_json(&path("payments", "e"), &body("10.0.0.5", 80))
            .await
            .status,
        200
    );
    w.until(Duration::from_secs(15), "e from etcd", |s| {
        s.get("e") == Some(&(80, vec!["etcd".into()]))
    })
    .await;
    // PROGRESS frames say which registries feed the view: etcd alone, once Consul's grace
    // (a few seconds) is over.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let e = w.next().await;
        if e.r#type() == Type::Progress && e.registries == ["etcd"] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still fed by {:?}",
            e.registries
        );
    }
    assert_eq!(c.delete(&path("payments", "e")).await.status, 200);
    w.until(Duration::from_secs(10), "e deleted", |s| s.is_empty())
        .await;
    w.expect(Type::Empty).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_frames_keep_coming_while_nothing_changes() {
    let env = Env::start_with(options()).await;
    let mut w = Watcher::open(&env.gw, "quiet", 0).await;
    let first = w.next().await;
    assert_eq!(first.r#type(), Type::Empty);
    let mut frames = 0;
    let start = tokio::time::Instant::now();
    while start.elapsed() < Duration::from_millis(4500) {
        let e = w.next().await;
        assert_eq!(e.r#type(), Type::Progress, "nothing changed: {e:?}");
        assert_eq!(e.index, first.index);
        assert_eq!(e.registries, ["etcd", "consul"]);
        frames += 1;
    }
    // One right after the snapshot, then one a second.
    assert!((4..=7).contains(&frames), "{frames} frames in 4.5 s at 1 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_resumes_from_its_index_on_a_second_replica() {
    let env = Env::start_with(options()).await;
    let second = Gateway::start_with(&env.etcd, &env.consul, options()).await;
    let cold = Gateway::start_with(&env.etcd, &env.consul, options()).await;
    let c = env.gw.client("payments");
    // The second replica already serves a watcher of the service (as in a fleet).
    let mut other = Watcher::open(&second, "payments", 0).await;
    other.synced().await;

    let mut w = Watcher::open(&env.gw, "payments", 0).await;
    w.synced().await;
    assert_eq!(
        c.put_json(&path("payments", "a"), &body("10.0.0.1", 80))
            .await
            .status,
        200
    );
    w.until(Duration::from_secs(10), "a", |s| {
        s.get("a") == Some(&(80, both()))
    })
    .await;
    let seen = w.index;
    let held = w.state.clone();
    drop(w);

    // Missed while disconnected.
    assert_eq!(
        c.put_json(&path("payments", "b"), &body("10.0.0.2", 80))
            .await
            .status,
        200
    );
    assert_eq!(c.delete(&path("payments", "a")).await.status, 200);
    other
        .until(Duration::from_secs(10), "second replica caught up", |s| {
            s.len() == 1 && s.get("b") == Some(&(80, both()))
        })
        .await;

    let mut w = Watcher::open(&second, "payments", seen).await;
    w.state = held.clone();
    w.until(Duration::from_secs(10), "resumed", |s| {
        s.len() == 1 && s.get("b") == Some(&(80, both()))
    })
    .await;
    assert_eq!(
        w.log,
        [(Type::Deleted, "a".into()), (Type::Added, "b".into())],
        "only what was missed, no snapshot"
    );

    // A replica that never saw that index answers with a snapshot the client can tell apart.
    let mut w = Watcher::open(&cold, "payments", seen).await;
    let e = w.next().await;
    assert!(e.snapshot, "{e:?}");
    assert_eq!(
        (e.r#type(), e.instance.map(|i| i.id)),
        (Type::Added, Some("b".into()))
    );
    assert_eq!(w.next().await.r#type(), Type::Progress);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_of_one_service_share_one_upstream_watch_per_registry() {
    let env = Env::start_with(options()).await;
    let etcd_watchers = || async {
        let text = reqwest_metrics(&env.etcd.endpoint()).await;
        metric(&text, "etcd_debugging_mvcc_watcher_total", &[])
    };
    // The replica follows the whole prefix with a watch of its own, from start-up.
    let before = eventually(
        Duration::from_secs(10),
        "the replica's own follow watch",
        || async {
            let n = etcd_watchers().await;
            (n >= 1.0).then_some(n)
        },
    )
    .await;
    let mut ws = Vec::new();
    for _ in 0..5 {
        let mut w = Watcher::open(&env.gw, "payments", 0).await;
        w.synced().await;
        ws.push(w);
    }
    // A long poll of the same service joins the same view.
    let c = env.gw.client("payments");
    let index = ws[0].index;
    let poll = tokio::spawn(async move {
        c.get(&format!(
            "/v1/services/payments/instances?index={index}&wait=20s"
        ))
        .await
    });
    eventually(Duration::from_secs(5), "6 watchers", || async {
        let (_, text) = env.gw.admin_get("/metrics").await;
        (metric(&text, "twinreg_watchers", &[]) == 6.0).then_some(())
    })
    .await;
    let (_, text) = env.gw.admin_get("/metrics").await;
    for r in ["etcd", "consul"] {
        assert_eq!(
            metric(&text, "twinreg_watch_upstreams", &[("registry", r)]),
            1.0,
            "{r}"
        );
    }
    assert_eq!(
        etcd_watchers().await - before,
        1.0,
        "etcd itself holds one more watcher (beside the replica's own follow of the prefix)"
    );

    let c = env.gw.client("payments");
    assert_eq!(
        c.put_json(&path("payments", "a"), &body("10.0.0.1", 80))
            .await
            .status,
        200
    );
    for w in &mut ws {
        w.until(Duration::from_secs(10), "a", |s| s.contains_key("a"))
            .await;
    }
    let polled = poll.await.unwrap();
    assert_eq!(polled.status, 200);
    assert_eq!(polled.json["instances"][0]["id"], "a");
}

/// etcd's own Prometheus metrics (plain HTTP on its client URL).
async fn reqwest_metrics(endpoint: &str) -> String {
    use http_body_util::BodyExt;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let resp = client
        .get(format!("{endpoint}/metrics").parse().unwrap())
        .await
        .expect("etcd /metrics");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_refuses_bad_names_and_unreadable_services() {
    let env = Env::start_with(Options {
        extra_toml: "[authz]\nreads = \"owner\"\n".into(),
        ..Options::default()
    })
    .await;
    let mut client = registry(&env.gw, "billing").await;
    let watch = |service: &str| pb::WatchRequest {
        service: service.into(),
        resume_index: 0,
    };
    let err = client.watch(watch("Pay_ments")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("service"), "{}", err.message());
    let err = client.watch(watch("payments")).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let ok = client.watch(watch("billing")).await;
    assert!(ok.is_ok(), "its own service: {:?}", ok.err());
}
