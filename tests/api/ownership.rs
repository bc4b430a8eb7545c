//! Ownership that moves: a replica killed under load (its instances taken over before its leases
//! lapse, no watcher seeing a DELETED), and a client bouncing between replicas.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{EventType, WatchOptions};
use serde_json::json;

use crate::path;
use testkit::consul::Consul;
use testkit::etcd::Etcd;
use testkit::gateway::Gateway;

const N: usize = 20;

fn short(address: &str) -> serde_json::Value {
    json!({"address": address, "port": 80, "ttl_seconds": 10})
}

/// Every instance key deleted under `/services/payments/` from now on.
async fn deletes_of(etcd: &Etcd) -> Arc<Mutex<BTreeSet<String>>> {
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let mut client = etcd.client().await;
    let (_w, mut stream) = client
        .watch(
            "/services/payments/",
            Some(WatchOptions::new().with_prefix()),
        )
        .await
        .unwrap()
        .split();
    let out = seen.clone();
    tokio::spawn(async move {
        let _keep = _w;
        while let Ok(Some(resp)) = stream.message().await {
            for e in resp.events() {
                if e.event_type() == EventType::Delete
                    && let Some(kv) = e.kv()
                {
                    out.lock()
                        .unwrap()
                        .insert(kv.key_str().unwrap_or("").to_owned());
                }
            }
        }
    });
    seen
}

/// A replica killed with SIGKILL while its clients heartbeat: the survivor takes every instance
/// over (in etcd onto its own leases, in Consul under its own check) before the dead replica's
/// leases lapse; no key is ever deleted, and the clients, moved to the survivor by the load
/// balancer, keep getting 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replicas_instances_are_taken_over_before_its_leases_lapse() {
    let (etcd, consul) = tokio::join!(Etcd::start(), Consul::start());
    let survivor = Gateway::start(&etcd, &consul).await;
    survivor.wait_both_up().await;
    // The victim: the real binary, so that SIGKILL stops everything it runs.
    let victim = testkit::serve::DevServe::start(&etcd, &consul, "").await;
    let via_victim = &victim.client;
    for k in 0..N {
        let r = via_victim
            .put_json(&path("payments", &format!("p{k}")), &short("10.0.0.1"))
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let before: BTreeSet<i64> = etcd.instances().await.iter().map(|(_, _, l)| *l).collect();
    assert_eq!(
        before.len(),
        1,
        "one shared lease of the victim: {before:?}"
    );
    let deletes = deletes_of(&etcd).await;

    victim.serve.signal(nix::sys::signal::Signal::SIGKILL);
    let via_survivor = survivor.client("payments");
    // 20 s: well past the victim's 8 s lease and its Consul check's 15 s TTL.
    let start = tokio::time::Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        for k in 0..N {
            let r = via_survivor
                .put(&format!("{}/heartbeat", path("payments", &format!("p{k}"))))
                .await;
            assert_eq!(
                r.status,
                200,
                "p{k} after {:?}: {}",
                start.elapsed(),
                r.text
            );
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    assert!(
        deletes.lock().unwrap().is_empty(),
        "keys deleted while their instances heartbeated: {:?}",
        deletes.lock().unwrap()
    );
    let keys = etcd.instances().await;
    assert_eq!(keys.len(), N);
    assert!(
        keys.iter().all(|(_, _, l)| !before.contains(l)),
        "a key is still on the dead replica's lease"
    );
    let passing = consul.get_json("/v1/health/service/payments?passing").await;
    assert_eq!(passing.as_array().unwrap().len(), N, "{passing}");
    let (_, m) = survivor.admin_get("/metrics").await;
    assert_eq!(
        testkit::metric(&m, "twinreg_owned_instances", &[]),
        N as f64
    );
}

/// A client whose heartbeats alternate between two replicas: each move is a take-over, every
/// answer is 200, the copies never leave either registry, and once the client stops the instance
/// expires within its TTL plus a second, whichever replica held it last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_bouncing_between_replicas_stays_registered_then_expires() {
    let (etcd, consul) = tokio::join!(Etcd::start(), Consul::start());
    let (a, b) = two_replicas(&etcd, &consul).await;
    let clients = [a.client("payments"), b.client("payments")];
    let p = path("payments", "bouncer");
    let r = clients[0]
        .put_json(
            &p,
            &json!({"address": "10.0.0.1", "port": 80, "ttl_seconds": 6}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let deletes = deletes_of(&etcd).await;
    let mut last = tokio::time::Instant::now();
    for round in 0..12 {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let r = clients[round % 2].put(&format!("{p}/heartbeat")).await;
        last = tokio::time::Instant::now();
        assert_eq!(r.status, 200, "round {round}: {}", r.text);
        assert_eq!(r.json["degraded"], false, "round {round}: {}", r.text);
        assert!(etcd.instances().await.len() == 1, "round {round}");
        assert!(consul.instances().await.contains_key("payments.bouncer"));
    }
    assert!(
        deletes.lock().unwrap().is_empty(),
        "{:?}",
        deletes.lock().unwrap()
    );
    let (_, ma) = a.admin_get("/metrics").await;
    let (_, mb) = b.admin_get("/metrics").await;
    let moved = testkit::metric(&ma, "twinreg_instances_taken_over_total", &[])
        + testkit::metric(&mb, "twinreg_instances_taken_over_total", &[]);
    assert!(moved >= 10.0, "{moved} take-overs for 11 moves");
    // Silence: gone from both within ttl + 1 s of the last heartbeat, not before the TTL.
    let gone = testkit::eventually(
        Duration::from_secs(15),
        "the instance to expire",
        || async {
            let both_gone = etcd.instances().await.is_empty()
                && !consul.instances().await.contains_key("payments.bouncer");
            both_gone.then(tokio::time::Instant::now)
        },
    )
    .await;
    let after = gone - last;
    assert!(
        after >= Duration::from_secs(6) && after <= Duration::from_secs(7),
        "expired {after:?} after the last heartbeat (ttl 6 s)"
    );
    let r = clients[0].put(&format!("{p}/heartbeat")).await;
    assert_eq!(r.status, 404, "{}", r.text);
}

/// Ten thousand instances whose heartbeats stop at once: none goes before its TTL, every one is
/// gone from both registries within its TTL and a few seconds, and the owner removed them in
/// batches (its expiry counter says all of them), not by leaving leases to lapse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_instances_stopping_at_once_all_expire_on_time() {
    use futures::StreamExt;
    const MANY: usize = 10_000;
    // Long enough for a debug build to register them all well inside it.
    const TTL: u64 = 120;
    let (etcd, consul) = tokio::join!(Etcd::start(), Consul::start());
    let gw = Gateway::start(&etcd, &consul).await;
    gw.wait_both_up().await;
    let client = gw.client("payments");
    let started = tokio::time::Instant::now();
    let failed: Vec<String> = futures::stream::iter(0..MANY)
        .map(|i| {
            let client = &client;
            async move {
                let body = json!({"address": "10.0.0.1", "port": 80, "ttl_seconds": TTL});
                let r = client
                    .put_json(&path("payments", &format!("i{i}")), &body)
                    .await;
                // A Consul copy may be late (the debug-built test agent times out under this
                // load): the answer is still 200 and the repairer writes it.
                (r.status != 200).then(|| format!("i{i}: {} {}", r.status, r.text))
            }
        })
        .buffer_unordered(64)
        .filter_map(|f| async move { f })
        .collect()
        .await;
    let registered = started.elapsed();
    assert!(
        failed.is_empty(),
        "{} failed, e.g. {:?}",
        failed.len(),
        &failed[..1]
    );
    assert!(
        registered < Duration::from_secs(TTL - 10),
        "registering took {registered:?}: the test needs it well inside the TTL"
    );
    let deletes = deletes_of(&etcd).await;
    // Still all there once registered: nothing expires before its TTL.
    assert_eq!(etcd.instances().await.len(), MANY);
    assert!(!consul.instances().await.is_empty());
    assert!(deletes.lock().unwrap().is_empty());

    testkit::eventually(
        Duration::from_secs(TTL + 10),
        "every instance to expire from etcd",
        || async { etcd.instances().await.is_empty().then_some(()) },
    )
    .await;
    let gone = started.elapsed();
    // Consul takes two calls per instance (the fence read, the deregistration): the debug-built
    // test agent cannot keep up with 10,000 at once, what times out goes to the repairer, and it
    // drains later. (Release builds: within the TTL + 0.5 s, BENCHMARKS.md.)
    let left = testkit::eventually(Duration::from_secs(120), "Consul to be empty", || async {
        let n = consul.instances().await.len();
        (n == 0).then_some(n)
    })
    .await;
    assert_eq!(left, 0);
    assert!(
        gone <= Duration::from_secs(TTL + 4) + registered,
        "the last expiry came {gone:?} after the first register (ttl {TTL} s, registering took {registered:?})"
    );
    assert_eq!(
        deletes.lock().unwrap().len(),
        MANY,
        "one DELETE per instance"
    );
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert_eq!(
        testkit::metric(&metrics, "twinreg_instances_expired_total", &[]),
        MANY as f64
    );
    assert_eq!(
        testkit::metric(&metrics, "twinreg_owned_instances", &[]),
        0.0
    );
}

/// etcd wiped (every key and lease gone) while the client's heartbeats move between two
/// replicas: the heartbeats keep being answered, and every instance is back in etcd, on a live
/// lease of a replica, with its copy in Consul kept all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_wiped_while_ownership_moves_gets_every_instance_back() {
    let (mut etcd, consul) = tokio::join!(Etcd::start(), Consul::start());
    let (a, b) = two_replicas(&etcd, &consul).await;
    let clients = [a.client("payments"), b.client("payments")];
    for i in 0..N {
        let r = clients[i % 2]
            .put_json(&path("payments", &format!("m{i}")), &short("10.0.0.2"))
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let beat = |round: usize| {
        let clients = &clients;
        async move {
            let mut refused = Vec::new();
            for i in 0..N {
                // Each instance moves to the other replica every round.
                let r = clients[(i + round) % 2]
                    .put(&format!("{}/heartbeat", path("payments", &format!("m{i}"))))
                    .await;
                if r.status != 200 {
                    refused.push(format!("m{i}: {} {}", r.status, r.text));
                }
            }
            refused
        }
    };
    assert!(beat(1).await.is_empty());
    etcd.restart_wiped().await;
    for round in 2..10 {
        let refused = beat(round).await;
        // Consul holds every copy throughout: no heartbeat may go unanswered.
        assert!(refused.is_empty(), "round {round}: {refused:?}");
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let back = testkit::eventually(
        Duration::from_secs(15),
        "every instance back in etcd",
        || async {
            let now = etcd.instances().await;
            (now.len() == N).then_some(now)
        },
    )
    .await;
    // Each on a lease etcd knows (granted after the wipe), not a number left from before it.
    let live: BTreeSet<i64> = etcd.lease_ids().await.into_iter().collect();
    for (key, _, lease) in &back {
        assert!(
            live.contains(lease),
            "{key} rides lease {lease}, unknown to etcd"
        );
    }
    assert_eq!(consul.instances().await.len(), N);
    assert!(beat(10).await.is_empty());
}

/// Two replicas on the same registries, each with both registries up.
async fn two_replicas(etcd: &Etcd, consul: &Consul) -> (Gateway, Gateway) {
    let (a, b) = tokio::join!(Gateway::start(etcd, consul), Gateway::start(etcd, consul));
    a.wait_both_up().await;
    b.wait_both_up().await;
    (a, b)
}

/// A replica starting over a prefix that holds more instances than fit in one gRPC answer (etcd
/// clients refuse answers over 4 MiB by default; 25,000 records are about 6 MiB) on a lease no
/// replica announces: its reads page through the prefix, it keeps that lease alive while it takes
/// every instance over onto its own leases (none lapses, though the lease is 8 s and the take-over
/// longer), and listing the service through it returns all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_instances_than_one_etcd_answer_holds_are_all_taken_over_and_listed() {
    use etcd_client::{GetOptions, PutOptions, Txn, TxnOp};
    const MANY: usize = 25_000;
    let (etcd, consul) = tokio::join!(Etcd::start(), Consul::start());
    let mut c = etcd.client().await;
    // The shortest class: without its lease kept alive meanwhile, keys would lapse before
    // a debug build has taken 25,000 over.
    let orphan_lease = c.lease_grant(8, None).await.unwrap().id();
    // Kept alive by the test while the records are written (a slow machine takes longer than
    // 8 s), and left to twinreg from its start on.
    let (mut keeper, _answers) = c.lease_keep_alive(orphan_lease).await.unwrap();
    let writer_alive = tokio::spawn(async move {
        loop {
            let _ = keeper.keep_alive().await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    for chunk in (0..MANY).collect::<Vec<_>>().chunks(100) {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|i| {
                let value = json!({
                    "service": "payments", "id": format!("o{i}"), "address": "10.0.0.1",
                    "port": 80, "tags": ["a-tag-long-enough-to-make-the-record-realistic"],
                    "meta": {"version": "1.2.3", "zone": "eu-west-1a"}, "ttl_seconds": 30,
                    "generation": 1, "Op": 0, "Addr": "10.0.0.1:80",
                    "Metadata": {"version": "1.2.3", "zone": "eu-west-1a"},
                });
                TxnOp::put(
                    format!("/services/payments/o{i}"),
                    value.to_string(),
                    Some(PutOptions::new().with_lease(orphan_lease)),
                )
            })
            .collect();
        c.txn(Txn::new().and_then(ops)).await.unwrap();
    }
    let size: usize = {
        let r = c
            .get(
                "/services/payments/",
                Some(GetOptions::new().with_prefix().with_limit(1)),
            )
            .await
            .unwrap();
        r.kvs()[0].value().len() * MANY
    };
    assert!(
        size > 4 << 20,
        "the records take {size} bytes: not past one answer"
    );

    let deletes = deletes_of(&etcd).await;
    writer_alive.abort();
    let last_kept = tokio::time::Instant::now();
    // A list of 25,000 reads 25 etcd pages and a 70 MB Consul answer: about 100 ms each in a
    // release build, but close to the default 1.5 s deadline in a debug build, and past it under
    // the full suite's load (the list then came back with Consul's copies alone, every time).
    let gw = Gateway::start_with(
        &etcd,
        &consul,
        testkit::gateway::Options {
            timeout_ms: Some(5000),
            ..Default::default()
        },
    )
    .await;
    gw.wait_both_up().await;
    // Owned at once (their heartbeats are answered from memory), then moved onto this
    // replica's leases in the background.
    testkit::eventually(
        Duration::from_secs(90),
        "every orphan to be taken over",
        || async {
            let (_, m) = gw.admin_get("/metrics").await;
            if testkit::metric(&m, "twinreg_owned_instances", &[]) != MANY as f64 {
                return None;
            }
            let keys = c
                .clone()
                .get(
                    "/services/payments/",
                    Some(GetOptions::new().with_prefix().with_keys_only()),
                )
                .await
                .ok()?;
            let left = keys
                .kvs()
                .iter()
                .filter(|kv| kv.lease() == orphan_lease)
                .count();
            (keys.kvs().len() == MANY && left == 0).then_some(())
        },
    )
    .await;
    // The dead replica's lease is still kept alive by the survivor past its own 8 s TTL.
    tokio::time::sleep_until(last_kept + Duration::from_secs(12)).await;
    let ttl = c
        .lease_time_to_live(orphan_lease, None)
        .await
        .unwrap()
        .ttl();
    assert!(
        ttl > 0,
        "the orphaned lease lapsed (ttl {ttl}): nobody kept it alive"
    );
    let deleted = deletes.lock().unwrap().len();
    assert_eq!(
        deleted, 0,
        "{deleted} keys lapsed before they were taken over"
    );

    // A list is bounded by each registry's deadline: should etcd's 25 pages still miss it once,
    // the answer is Consul's copies alone (still being written), and the next one is whole.
    let client = gw.client("payments");
    let listed = testkit::eventually(Duration::from_secs(60), "all of them listed", || async {
        let r = client.get("/v1/services/payments/instances").await;
        let n = r.json["instances"].as_array().map_or(0, Vec::len);
        (r.status == 200 && n == MANY).then_some(n)
    })
    .await;
    assert_eq!(listed, MANY);
}
