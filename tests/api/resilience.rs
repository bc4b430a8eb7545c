//! Resilience against real faults (docs/resilience.md, "What users rely on", items 1–5): processes
//! killed, wiped, frozen; links delayed, cut and blackholed through a loopback proxy; an etcd
//! cluster losing its leader and its quorum; both registries down; two replicas racing; shutdown
//! under load.
//!
//! Every scenario runs a [`Fleet`]: instances heartbeating through twinreg about once a second in
//! the background, each answer judged against what the current phase of the fault allows. After
//! the fault every instance still heartbeating must be in BOTH registries and every deregistered
//! one in neither, read directly from etcd and Consul ([`Truth`]), within a bounded time.

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{Env, path};
use testkit::client::{Resp, TestClient};
use testkit::cluster::Cluster;
use testkit::consul::Consul;
use testkit::etcd::Etcd;
use testkit::eventually;
use testkit::fleet::{Expect, Fleet, Plan};
use testkit::gateway::{Gateway, Options};
use testkit::proxy::{Mode, Proxy};
use testkit::truth::{CONVERGE, Expected, Truth};

/// Each registry's deadline in twinreg (`timeout_ms`).
const DEADLINE_MS: u64 = 1500;
/// Longest any answer may take while a registry is faulty: the deadline plus slack for the rest
/// of the request (TLS, JSON, a busy 2-core machine).
const BOUND: Duration = Duration::from_millis(DEADLINE_MS + 1500);
/// Short TTLs, so that anything relying on a lease or a TTL check shows up within the test.
const TTL: u32 = 12;
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// How long each fault is held while the fleet heartbeats through it.
const FAULT_FOR: Duration = Duration::from_secs(3);
const SERVICE: &str = "payments";

fn opts() -> Options {
    Options {
        timeout_ms: Some(DEADLINE_MS),
        ..Default::default()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Etcd,
    Consul,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Etcd => "etcd",
            Side::Consul => "consul",
        }
    }

    fn other(self) -> Side {
        match self {
            Side::Etcd => Side::Consul,
            Side::Consul => Side::Etcd,
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Instances numbered from here on are the ones a test deregisters (long TTL: see [`Plan`]).
const VICTIM: u32 = 100;
const VICTIM_TTL: u32 = 600;

/// The fleet of every scenario here.
const PLAN: Plan = Plan {
    service: SERVICE,
    ttl: TTL,
    victim_from: VICTIM,
    victim_ttl: VICTIM_TTL,
    bound: BOUND,
    heartbeat_every: HEARTBEAT_EVERY,
};

fn id(n: u32) -> String {
    Plan::id(n)
}

fn hb_path(id: &str) -> String {
    format!("{}/heartbeat", path(SERVICE, id))
}

fn new_fleet(client: TestClient) -> Fleet {
    Fleet::new(client, PLAN)
}

/// What one scenario's registries hold of the service.
fn truth(env: &Env) -> Truth<'_> {
    Truth::new(&env.etcd, &env.consul, SERVICE)
}

/// A register or deregister answered 200 within the bound, with `down` failing and the other
/// registry taking it.
fn assert_degraded(r: &Resp, took: Duration, down: Side, what: &str) {
    assert_eq!(r.status, 200, "{what}: {}", r.text);
    assert!(took <= BOUND, "{what}: answered after {took:?}: {}", r.text);
    assert_eq!(r.json["degraded"], true, "{what}: {}", r.text);
    assert_eq!(
        r.json["registries"][down.name()]["ok"],
        false,
        "{what}: {down} is down: {}",
        r.text
    );
    assert_eq!(
        r.json["registries"][down.other().name()]["ok"],
        true,
        "{what}: {} is up and must take it: {}",
        down.other(),
        r.text
    );
}

/// A 503 `unavailable` with a usable Retry-After, within the bound.
fn assert_unavailable(r: &Resp, took: Duration, what: &str) {
    assert_eq!(r.status, 503, "{what}: {}", r.text);
    assert_eq!(r.json["error"], "unavailable", "{what}: {}", r.text);
    assert!(took <= BOUND, "{what}: answered after {took:?}");
    let retry: u64 = r
        .headers
        .get("retry-after")
        .unwrap_or_else(|| panic!("{what}: 503 without Retry-After: {:?}", r.headers))
        .to_str()
        .unwrap()
        .parse()
        .unwrap_or_else(|e| panic!("{what}: Retry-After is not a number of seconds: {e}"));
    assert!((1..=120).contains(&retry), "{what}: Retry-After {retry}");
    for side in [Side::Etcd, Side::Consul] {
        assert_eq!(
            r.json["registries"][side.name()]["ok"],
            false,
            "{what}: {}",
            r.text
        );
    }
}

/// Waits until `/readyz` shows the registry up with its breaker closed.
async fn wait_registry_up(gw: &Gateway, side: Side) {
    eventually(
        CONVERGE,
        &format!("{side} up with its breaker closed in /readyz"),
        || async {
            let (_, body) = gw.readyz().await;
            let r = &body["registries"][side.name()];
            (r["state"] == "up" && r["breaker"] == "closed").then_some(())
        },
    )
    .await;
}

// ------------------------------------------------------------------------------------------------
// The proxy itself, on a loopback echo server: each mode does what the scenarios rely on.

async fn echo_server() -> (SocketAddr, JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (addr, task)
}

async fn ping(s: &mut TcpStream, within: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    s.write_all(b"ping").await.map_err(|e| e.to_string())?;
    let mut buf = [0u8; 4];
    match tokio::time::timeout(within, s.read_exact(&mut buf)).await {
        Err(_) => Err("no answer".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(_)) if &buf == b"ping" => Ok(start.elapsed()),
        Ok(Ok(_)) => Err(format!("garbled: {buf:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fault_proxy_delays_cuts_and_blackholes_a_link() {
    let (target, echo) = echo_server().await;
    let proxy = Proxy::start(target).await;
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    let t = ping(&mut s, Duration::from_secs(2)).await.expect("pass");
    assert!(t < Duration::from_millis(500), "pass-through took {t:?}");

    proxy.delay(Duration::from_millis(300));
    let t = ping(&mut s, Duration::from_secs(3)).await.expect("delay");
    assert!(
        t >= Duration::from_millis(600),
        "a round trip pays the delay both ways, took {t:?}"
    );
    proxy.pass();

    proxy.blackhole();
    assert_eq!(
        ping(&mut s, Duration::from_millis(700)).await,
        Err("no answer".to_string()),
        "a blackholed link forwards nothing"
    );
    let mut fresh = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(
        ping(&mut fresh, Duration::from_millis(500)).await,
        Err("no answer".to_string()),
        "new connections hang too"
    );
    proxy.pass();
    let mut buf = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut buf))
        .await
        .expect("held data flows once healed")
        .unwrap();
    assert_eq!(&buf, b"ping");
    ping(&mut fresh, Duration::from_secs(2))
        .await
        .expect("a connection made while blackholed works once healed");
    ping(&mut s, Duration::from_secs(2)).await.expect("healed");

    proxy.cut();
    assert!(
        ping(&mut s, Duration::from_secs(2)).await.is_err(),
        "a cut closes open connections"
    );
    // A new connection is reset at once (the reset may even beat connect() returning).
    let err = match TcpStream::connect(proxy.addr()).await {
        Ok(mut during) => ping(&mut during, Duration::from_secs(2)).await.unwrap_err(),
        Err(e) => e.to_string(),
    };
    assert_ne!(
        err, "no answer",
        "new connections are reset, not left hanging"
    );
    proxy.pass();
    let mut after = TcpStream::connect(proxy.addr()).await.unwrap();
    ping(&mut after, Duration::from_secs(2))
        .await
        .expect("new connections work after a cut is lifted");
    assert!(proxy.forwarded() >= 5 * 8);

    let addr = proxy.addr();
    proxy.stop().await;
    let after_stop = TcpStream::connect(addr).await;
    assert!(after_stop.is_err(), "a stopped proxy no longer listens");
    echo.abort();
}

// ------------------------------------------------------------------------------------------------
// 1. etcd SIGKILLed, then restarted with its data.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_killed_then_restarted_with_its_data_loses_nothing() {
    let mut env = Env::start_with(opts()).await;
    let mut fleet = new_fleet(env.gw.client(SERVICE));
    for n in 0..4 {
        fleet.register_ok(n).await;
    }
    fleet.register_ok(VICTIM).await;
    fleet.register_ok(VICTIM + 90).await;
    fleet.deregister_ok(&id(VICTIM + 90)).await;
    fleet.start("steady", Expect::Ok);
    fleet.wait_heartbeats(4).await;

    fleet.phase("etcd killed", Expect::Degraded);
    env.etcd.kill();
    for n in 10..12 {
        let (r, took) = fleet.register(n).await;
        assert_degraded(&r, took, Side::Etcd, "register while etcd is dead");
    }
    let (r, took) = fleet.deregister(&id(VICTIM)).await;
    assert_degraded(&r, took, Side::Etcd, "deregister while etcd is dead");
    tokio::time::sleep(FAULT_FOR).await;

    fleet.phase("etcd restarted", Expect::Ok);
    env.etcd.restart().await;
    truth(&env)
        .converge("after etcd came back with its data", &fleet.expected())
        .await;
    fleet.finish().await;
}

// 2. etcd restarted with its data directory wiped: the heartbeats put every instance back.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_wiped_heartbeats_restore_every_instance() {
    let mut env = Env::start_with(opts()).await;
    let mut fleet = new_fleet(env.gw.client(SERVICE));
    for n in 0..5 {
        fleet.register_ok(n).await;
    }
    fleet.register_ok(VICTIM + 90).await;
    fleet.deregister_ok(&id(VICTIM + 90)).await;
    let before = truth(&env).read().await.unwrap();
    fleet.start("steady", Expect::Ok);
    fleet.wait_heartbeats(5).await;

    fleet.phase("etcd wiped", Expect::Ok);
    env.etcd.restart_wiped().await;
    let after = truth(&env)
        .converge("after etcd lost every key", &fleet.expected())
        .await;
    // Every record sits on a new lease: restored into the new etcd, not left over.
    for id in fleet.live_ids() {
        assert_ne!(
            before.etcd[&id].1, after.etcd[&id].1,
            "{id}: same lease as before the wipe"
        );
    }
    fleet.finish().await;
    // The owner wrote each of them again itself, not on some client's heartbeat.
    let restored = repairs_completed(&env, "etcd").await;
    assert!(
        restored >= 5.0,
        "the replica restored each instance into etcd, saw {restored} repairs"
    );
}

/// Missed or lost copies the replica wrote again into `registry`, from its metrics.
async fn repairs_completed(env: &Env, registry: &str) -> f64 {
    let (_, text) = env.gw.admin_get("/metrics").await;
    testkit::metric(
        &text,
        "twinreg_repairs_completed_total",
        &[("registry", registry)],
    )
}

// 3 and 4. A proxy in front of one registry delays, cuts, blackholes the link, then heals.

async fn link_faults(side: Side) {
    let (etcd, consul) = tokio::join!(Etcd::start(), Consul::start());
    let proxy = match side {
        Side::Etcd => Proxy::in_front_of(&etcd.endpoint()).await,
        Side::Consul => Proxy::in_front_of(&consul.address()).await,
    };
    let (etcd_endpoints, consul_address) = match side {
        Side::Etcd => (vec![proxy.url()], consul.address()),
        Side::Consul => (vec![etcd.endpoint()], proxy.url()),
    };
    let gw = Gateway::launch(etcd_endpoints, consul_address, opts()).await;
    gw.wait_both_up().await;
    let env = Env { etcd, consul, gw };

    let mut fleet = new_fleet(env.gw.client(SERVICE));
    for n in (0..4).chain(VICTIM..VICTIM + 3) {
        fleet.register_ok(n).await;
    }
    assert!(
        proxy.forwarded() > 0,
        "twinreg must reach {side} through the proxy"
    );
    fleet.start("steady", Expect::Ok);
    fleet.wait_heartbeats(4).await;

    let mut next = 10;
    for (k, (name, mode)) in [
        ("delayed 2s", Mode::Delay(Duration::from_millis(2000))),
        ("cut", Mode::Cut),
        ("blackholed", Mode::Blackhole),
    ]
    .into_iter()
    .enumerate()
    {
        fleet.phase(&format!("{side} {name}"), Expect::Ok);
        proxy.set(mode);
        for _ in 0..2 {
            let (r, took) = fleet.register(next).await;
            assert_degraded(&r, took, side, &format!("register with {side} {name}"));
            next += 1;
        }
        let (r, took) = fleet.deregister(&id(VICTIM + k as u32)).await;
        assert_degraded(&r, took, side, &format!("deregister with {side} {name}"));
        tokio::time::sleep(FAULT_FOR).await;
        assert!(
            fleet.log(&format!("{side} {name}"), |l| l.heartbeats) > 0,
            "the fleet heartbeated through the fault"
        );

        fleet.phase(&format!("{side} healed after {name}"), Expect::Ok);
        proxy.pass();
        truth(&env)
            .converge(
                &format!("after the {side} link was {name} and healed"),
                &fleet.expected(),
            )
            .await;
    }
    fleet.finish().await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_link_delayed_cut_blackholed_then_healed() {
    link_faults(Side::Etcd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_link_delayed_cut_blackholed_then_healed() {
    link_faults(Side::Consul).await;
}

// 5. A 3-member etcd cluster loses its leader, then its quorum.

/// Within this long after losing its leader, the cluster carries twinreg's writes again.
const LEADER_LOSS_TOLERATED: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_cluster_losing_its_leader_then_its_quorum() {
    let (mut cluster, consul) = tokio::join!(Cluster::start(), Consul::start());
    let gw = Gateway::launch(cluster.endpoints(), consul.address(), opts()).await;
    gw.wait_both_up().await;
    let mut fleet = new_fleet(gw.client(SERVICE));
    for n in 0..4 {
        fleet.register_ok(n).await;
    }
    fleet.register_ok(VICTIM).await;
    fleet.start("steady", Expect::Ok);
    fleet.wait_heartbeats(4).await;

    // The leader dies: writes keep being answered, and go through etcd again soon.
    let leader = cluster.leader().await.expect("the cluster has a leader");
    fleet.phase("leader killed", Expect::Ok);
    cluster.kill(leader);
    let killed = Instant::now();
    let mut n = 20;
    let mut streak = 0;
    let mut last = String::new();
    while streak < 5 {
        assert!(
            killed.elapsed() < LEADER_LOSS_TOLERATED,
            "{:?} after the etcd leader was killed, registrations still do not reach etcd \
             (two of three members are up); last answer: {last}",
            killed.elapsed()
        );
        let (r, took) = fleet.register(n).await;
        n += 1;
        assert_eq!(r.status, 200, "register without the leader: {}", r.text);
        assert!(took <= BOUND, "register answered after {took:?}");
        if r.json["registries"]["etcd"]["ok"] == true {
            streak += 1;
        } else {
            streak = 0;
        }
        last = r.text;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Heartbeats go through etcd again too: one full round renewed in etcd.
    loop {
        let mut all = true;
        for id in fleet.live_ids() {
            let r = fleet.client.put(&hb_path(&id)).await;
            assert_eq!(r.status, 200, "heartbeat without the leader: {}", r.text);
            if r.json["registries"]["etcd"]["ok"] != true {
                all = false;
                last = r.text;
            }
        }
        if all {
            break;
        }
        assert!(
            killed.elapsed() < LEADER_LOSS_TOLERATED,
            "{:?} after the etcd leader was killed, heartbeats still do not reach etcd; last: {last}",
            killed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    cluster.restart(leader).await;
    cluster.wait_healthy().await;
    fleet.phase("three members again", Expect::Ok);
    Truth::cluster(&cluster, &consul, SERVICE)
        .converge("after the old leader rejoined", &fleet.expected())
        .await;

    // Two members die: no quorum, etcd refuses writes, Consul carries on.
    let leader = cluster.leader().await.expect("the cluster has a leader");
    let other = (leader + 1) % 3;
    fleet.phase("quorum lost", Expect::Ok);
    cluster.kill(leader);
    cluster.kill(other);
    for _ in 0..2 {
        let (r, took) = fleet.register(n).await;
        n += 1;
        assert_degraded(&r, took, Side::Etcd, "register without an etcd quorum");
    }
    let (r, took) = fleet.deregister(&id(VICTIM)).await;
    assert_degraded(&r, took, Side::Etcd, "deregister without an etcd quorum");
    tokio::time::sleep(FAULT_FOR).await;

    fleet.phase("quorum back", Expect::Ok);
    cluster.restart(leader).await;
    cluster.restart(other).await;
    cluster.wait_healthy().await;
    Truth::cluster(&cluster, &consul, SERVICE)
        .converge("after the etcd quorum came back", &fleet.expected())
        .await;
    fleet.finish().await;
}

// 6. Consul killed and restarted empty; Consul frozen and thawed.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_killed_and_restarted_empty_heartbeats_restore_every_instance() {
    let mut env = Env::start_with(opts()).await;
    let mut fleet = new_fleet(env.gw.client(SERVICE));
    for n in 0..4 {
        fleet.register_ok(n).await;
    }
    fleet.register_ok(VICTIM).await;
    fleet.register_ok(VICTIM + 90).await;
    fleet.deregister_ok(&id(VICTIM + 90)).await;
    fleet.start("steady", Expect::Ok);
    fleet.wait_heartbeats(4).await;

    fleet.phase("consul killed", Expect::Degraded);
    env.consul.kill();
    for n in 10..12 {
        let (r, took) = fleet.register(n).await;
        assert_degraded(&r, took, Side::Consul, "register while consul is dead");
    }
    let (r, took) = fleet.deregister(&id(VICTIM)).await;
    assert_degraded(&r, took, Side::Consul, "deregister while consul is dead");
    tokio::time::sleep(FAULT_FOR).await;

    fleet.phase("consul restarted empty", Expect::Ok);
    env.consul.restart().await;
    truth(&env)
        .converge("after consul came back empty", &fleet.expected())
        .await;
    fleet.finish().await;
    let restored = repairs_completed(&env, "consul").await;
    assert!(
        restored >= 3.0,
        "the replica restored the instances Consul lost, saw {restored} repairs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_frozen_then_thawed_loses_nothing() {
    let env = Env::start_with(opts()).await;
    let mut fleet = new_fleet(env.gw.client(SERVICE));
    for n in 0..4 {
        fleet.register_ok(n).await;
    }
    fleet.register_ok(VICTIM).await;
    fleet.start("steady", Expect::Ok);
    fleet.wait_heartbeats(4).await;

    fleet.phase("consul frozen", Expect::Degraded);
    env.consul.freeze();
    for n in 10..12 {
        let (r, took) = fleet.register(n).await;
        assert_degraded(&r, took, Side::Consul, "register while consul is frozen");
    }
    let (r, took) = fleet.deregister(&id(VICTIM)).await;
    assert_degraded(&r, took, Side::Consul, "deregister while consul is frozen");
    tokio::time::sleep(FAULT_FOR).await;

    fleet.phase("consul thawed", Expect::Ok);
    env.consul.thaw();
    truth(&env)
        .converge("after consul was thawed", &fleet.expected())
        .await;
    fleet.finish().await;
}

// 7. Both registries down together, then back one after the other, without restarting twinreg.

async fn both_down_then_back(first: Side) {
    let mut env = Env::start_with(opts()).await;
    let mut fleet = new_fleet(env.gw.client(SERVICE));
    for n in 0..4 {
        fleet.register_ok(n).await;
    }
    fleet.register_ok(VICTIM + 90).await;
    fleet.deregister_ok(&id(VICTIM + 90)).await;
    fleet.start("steady", Expect::Ok);
    fleet.wait_heartbeats(5).await;

    fleet.phase("both going down", Expect::Any);
    env.etcd.kill();
    env.consul.kill();
    fleet.phase("both down", Expect::Unavailable);
    let (r, took) = fleet.register(50).await;
    assert_unavailable(&r, took, "register with both registries down");
    let r = fleet
        .client
        .get(&format!("/v1/services/{SERVICE}/instances"))
        .await;
    assert_eq!(r.status, 503, "list with both registries down: {}", r.text);
    assert!(r.headers.contains_key("retry-after"), "{:?}", r.headers);
    eventually(
        Duration::from_secs(10),
        "/readyz 503 with both registries down",
        || async { (env.gw.readyz().await.0 == 503).then_some(()) },
    )
    .await;
    tokio::time::sleep(FAULT_FOR).await;

    let second = first.other();
    fleet.phase(&format!("{first} coming back"), Expect::Any);
    match first {
        Side::Etcd => env.etcd.restart().await,
        Side::Consul => env.consul.restart().await,
    }
    wait_registry_up(&env.gw, first).await;
    fleet.phase(&format!("only {first} up"), Expect::Degraded);
    for n in 60..62 {
        let (r, took) = fleet.register(n).await;
        assert_degraded(&r, took, second, &format!("register with only {first} up"));
    }
    fleet.wait_heartbeats(5).await;

    fleet.phase(&format!("{second} coming back"), Expect::Ok);
    match second {
        Side::Etcd => env.etcd.restart().await,
        Side::Consul => env.consul.restart().await,
    }
    wait_registry_up(&env.gw, second).await;
    fleet.phase("both back", Expect::Ok);
    truth(&env)
        .converge(
            &format!("after both were down and {first} came back first"),
            &fleet.expected(),
        )
        .await;
    let phases = fleet.finish().await;
    let unknown: u32 = phases.iter().map(|(_, _, l)| l.unknown).sum();
    assert_eq!(
        unknown, 0,
        "no heartbeat of a registered instance may be told 404 (the instance was never lost): {phases:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_down_then_etcd_back_first() {
    both_down_then_back(Side::Etcd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_down_then_consul_back_first() {
    both_down_then_back(Side::Consul).await;
}

// 8. A deregister racing a re-register through two replicas: the newest operation wins in both
//    registries. Replica A reaches Consul over a slow link, so its Consul write lands after
//    replica B's newer operation did — the race a slow network produces. etcd fences it at once
//    (compare-and-swap on the generation, tombstones); Consul has no compare-and-set for agent
//    services, so there the anti-entropy sweep (every second here) puts the newest state back.

struct Replicas {
    etcd: Etcd,
    consul: Consul,
    proxy: Proxy,
    /// Reaches Consul through `proxy`.
    slow: Gateway,
    fast: Gateway,
}

/// The Consul link of replica A: each of its Consul calls (2–3 round trips) stays well within
/// the deadline, but lands a few hundred milliseconds late.
const SLOW_LINK: Duration = Duration::from_millis(120);

async fn replicas() -> Replicas {
    let (etcd, consul) = tokio::join!(Etcd::start(), Consul::start());
    let proxy = Proxy::in_front_of(&consul.address()).await;
    // Only the fast replica sweeps (every second): with both in the election, the slow one
    // could hold it and sweep at the default 30 s.
    let not_sweeping = Options {
        extra_toml: "[anti_entropy]\nenabled = false\n".into(),
        ..opts()
    };
    let slow = Gateway::launch(vec![etcd.endpoint()], proxy.url(), not_sweeping).await;
    let sweeping = Options {
        extra_toml: "[anti_entropy]\ninterval = \"1s\"\n".into(),
        ..opts()
    };
    let fast = Gateway::start_with(&etcd, &consul, sweeping).await;
    slow.wait_both_up().await;
    Replicas {
        etcd,
        consul,
        proxy,
        slow,
        fast,
    }
}

/// A long TTL: only the operations under test (never a lapsed lease) decide what stays.
fn race_body(addr: &str) -> Value {
    json!({"address": addr, "port": 7000, "ttl_seconds": VICTIM_TTL})
}

async fn etcd_address(etcd: &Etcd, id: &str) -> Option<String> {
    let key = format!("/services/{SERVICE}/{id}");
    etcd.dump(&key)
        .await
        .into_iter()
        .find(|(k, _, _)| *k == key)
        .map(|(_, v, _)| v["address"].as_str().unwrap_or("").to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_deregister_never_undoes_a_newer_reregister() {
    let r = replicas().await;
    let a = Arc::new(r.slow.client(SERVICE));
    let b = r.fast.client(SERVICE);
    let list = format!("/v1/services/{SERVICE}/instances");
    assert_eq!(a.get(&list).await.status, 200);
    assert_eq!(b.get(&list).await.status, 200);
    let x = "racer";
    let first = b.put_json(&path(SERVICE, x), &race_body("10.7.0.1")).await;
    assert_eq!(first.status, 200, "{}", first.text);
    let truth = Truth::new(&r.etcd, &r.consul, SERVICE);
    let mut expected = Expected::default();
    expected.live.insert(x.into(), "10.7.0.1".into());
    truth
        .settle("initial registration", &expected, Duration::from_secs(10))
        .await;

    r.proxy.delay(SLOW_LINK);
    let del = tokio::spawn({
        let a = a.clone();
        async move { a.delete(&path(SERVICE, x)).await }
    });
    // A's delete reached etcd: its generation is taken. B re-registers after it: B's is newer.
    eventually(
        Duration::from_secs(5),
        "A's delete to reach etcd",
        || async { etcd_address(&r.etcd, x).await.is_none().then_some(()) },
    )
    .await;
    let re = b.put_json(&path(SERVICE, x), &race_body("10.7.0.2")).await;
    assert_eq!(re.status, 200, "{}", re.text);
    assert_eq!(re.json["degraded"], false, "{}", re.text);
    let del = del.await.unwrap();
    assert_eq!(del.status, 200, "{}", del.text);
    r.proxy.pass();

    // The re-register is the newest operation: it must stand in both registries, on its own
    // (before any heartbeat could paper over a lost write): the sweep restores it in Consul.
    expected.live.insert(x.into(), "10.7.0.2".into());
    let strict = truth
        .try_settle(&expected, Duration::from_secs(15))
        .await
        .err();

    // And with the instance heartbeating, as a live one does.
    let mut fleet = new_fleet(r.fast.client(SERVICE));
    fleet.adopt(x, race_body("10.7.0.2"));
    fleet.start("after the race", Expect::Ok);
    let healed = truth
        .try_settle(&expected, Duration::from_secs(20))
        .await
        .err();
    let hb = fleet.finish().await;
    assert!(
        strict.is_none() && healed.is_none(),
        "replica A's delete (older) raced replica B's re-register (newer):\n\
         right after both were answered: {strict:?}\n\
         after heartbeating for a while: {healed:?}\nheartbeats: {hb:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_reregister_never_undoes_a_newer_deregister() {
    let r = replicas().await;
    let a = Arc::new(r.slow.client(SERVICE));
    let b = r.fast.client(SERVICE);
    let list = format!("/v1/services/{SERVICE}/instances");
    assert_eq!(a.get(&list).await.status, 200);
    assert_eq!(b.get(&list).await.status, 200);
    let x = "racer";
    let first = b.put_json(&path(SERVICE, x), &race_body("10.7.0.1")).await;
    assert_eq!(first.status, 200, "{}", first.text);
    let truth = Truth::new(&r.etcd, &r.consul, SERVICE);
    let mut expected = Expected::default();
    expected.live.insert(x.into(), "10.7.0.1".into());
    truth
        .settle("initial registration", &expected, Duration::from_secs(10))
        .await;

    r.proxy.delay(SLOW_LINK);
    let reg = tokio::spawn({
        let a = a.clone();
        async move { a.put_json(&path(SERVICE, x), &race_body("10.7.0.2")).await }
    });
    // A's re-register reached etcd: its generation is taken. B deregisters after it: newer.
    eventually(
        Duration::from_secs(5),
        "A's re-register to reach etcd",
        || async { (etcd_address(&r.etcd, x).await.as_deref() == Some("10.7.0.2")).then_some(()) },
    )
    .await;
    let del = b.delete(&path(SERVICE, x)).await;
    assert_eq!(del.status, 200, "{}", del.text);
    assert_eq!(del.json["existed"], true, "{}", del.text);
    let reg = reg.await.unwrap();
    assert_eq!(reg.status, 200, "{}", reg.text);
    r.proxy.pass();

    // The deregister is the newest operation: the instance is gone from both, and stays gone.
    let expected = Expected {
        gone: [x.to_string()].into(),
        ..Default::default()
    };
    truth
        .settle(
            "replica A's re-register (older) raced replica B's deregister (newer)",
            &expected,
            Duration::from_secs(15),
        )
        .await;
}

// 9. Shutdown under load: every acknowledged registration is kept, and /readyz says 503 while the
//    replica drains.

/// One `/readyz` poll: (status, body), or why it got no answer.
type ReadyzAnswer = Result<(u16, Value), String>;

async fn readyz_once(admin: SocketAddr) -> ReadyzAnswer {
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let req = client.get(format!("http://{admin}/readyz").parse().unwrap());
    let resp = tokio::time::timeout(Duration::from_secs(2), req)
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    use http_body_util::BodyExt;
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, serde_json::from_slice(&body).unwrap_or_default()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_during_load_keeps_every_acknowledged_registration() {
    let Env { etcd, consul, gw } = Env::start_with(opts()).await;
    let admin = gw.admin;
    let done = CancellationToken::new();
    // (when the request was sent, id) of every registration answered 200.
    let acked: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
    let refused: Arc<Mutex<Vec<String>>> = Arc::default();

    let mut load = Vec::new();
    for c in 0..4 {
        let client = gw.client(SERVICE);
        let (done, acked, refused) = (done.clone(), acked.clone(), refused.clone());
        load.push(tokio::spawn(async move {
            let mut n = 0u32;
            while !done.is_cancelled() {
                let id = format!("load-{c}-{n}");
                n += 1;
                let body = json!({"address": "10.8.0.1", "port": 9000 + c, "ttl_seconds": 60});
                let sent = Instant::now();
                match client
                    .try_request(
                        "PUT",
                        &path(SERVICE, &id),
                        Some(serde_json::to_vec(&body).unwrap()),
                    )
                    .await
                {
                    Ok(r) if r.status == 200 => acked.lock().unwrap().push((sent, id)),
                    Ok(r) => refused
                        .lock()
                        .unwrap()
                        .push(format!("{id}: {} {}", r.status, r.text)),
                    Err(e) => {
                        refused.lock().unwrap().push(format!("{id}: {e}"));
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }));
    }
    let polls: Arc<Mutex<Vec<(Instant, ReadyzAnswer)>>> = Arc::default();
    let poller = tokio::spawn({
        let (done, polls) = (done.clone(), polls.clone());
        async move {
            while !done.is_cancelled() {
                let at = Instant::now();
                let r = readyz_once(admin).await;
                polls.lock().unwrap().push((at, r));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });

    eventually(Duration::from_secs(20), "the load to get going", || async {
        (acked.lock().unwrap().len() >= 20).then_some(())
    })
    .await;
    let began = Instant::now();
    gw.stop().await;
    let stopped = began.elapsed();
    tokio::time::sleep(Duration::from_millis(200)).await;
    done.cancel();
    for t in load {
        t.await.unwrap();
    }
    poller.await.unwrap();

    // Every registration that was answered 200 is in both registries.
    let acked_at = acked.lock().unwrap().clone();
    let acked: Vec<String> = acked_at.iter().map(|(_, id)| id.clone()).collect();
    let in_etcd: BTreeSet<String> = etcd
        .dump(&format!("/services/{SERVICE}/"))
        .await
        .into_iter()
        .filter_map(|(k, _, _)| Some(k.rsplit_once('/')?.1.to_owned()))
        .collect();
    let in_consul: BTreeSet<String> = consul
        .agent_services()
        .await
        .keys()
        .filter_map(|k| Some(k.strip_prefix(&format!("{SERVICE}."))?.to_owned()))
        .collect();
    let lost_etcd: Vec<_> = acked.iter().filter(|i| !in_etcd.contains(*i)).collect();
    let lost_consul: Vec<_> = acked.iter().filter(|i| !in_consul.contains(*i)).collect();
    assert!(
        lost_etcd.is_empty() && lost_consul.is_empty(),
        "{} registrations were answered 200; missing from etcd: {lost_etcd:?}; missing from consul: {lost_consul:?}",
        acked.len()
    );

    // /readyz answered 503 (draining) after the shutdown began, while the replica still served.
    let polls = polls.lock().unwrap();
    assert!(
        polls
            .iter()
            .any(|(at, r)| *at < began && matches!(r, Ok((200, _)))),
        "/readyz was 200 before the shutdown"
    );
    let after: Vec<String> = polls
        .iter()
        .filter(|(at, _)| *at >= began)
        .map(|(at, r)| {
            let t = at.duration_since(began);
            match r {
                Ok((s, b)) => format!("+{t:.0?}: {s} draining={}", b["draining"]),
                Err(e) => format!("+{t:.0?}: {e}"),
            }
        })
        .collect();
    let first_503 = polls
        .iter()
        .find(|(at, r)| *at >= began && matches!(r, Ok((503, b)) if b["draining"] == true))
        .map(|(at, _)| *at);
    let served_after =
        first_503.map_or(0, |t| acked_at.iter().filter(|(sent, _)| *sent > t).count());
    assert!(
        first_503.is_some() && served_after > 0,
        "after the shutdown began (run returned {stopped:?} later), /readyz never answered 503 \
         while the replica was still serving, so a load balancer cannot drain it first \
         (first 503 at {:?} after, then {served_after} registrations still served); \
         {} registrations acked, {} refused; polls after the shutdown began: {:?}",
        first_503.map(|t| t.duration_since(began)),
        acked.len(),
        refused.lock().unwrap().len(),
        after.iter().take(20).collect::<Vec<_>>()
    );
}
