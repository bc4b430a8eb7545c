//! The fleet: instances heartbeating through twinreg about once a second while faults come and
//! go, each answer judged against what the current phase of the fault allows (200, degraded, 503
//! with Retry-After, or anything during a transition), every answer within a bound.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::client::{Resp, TestClient};
use crate::eventually;
use crate::truth::Expected;

/// The shape of a fleet: its service, its instances' TTLs, and the bounds its answers are held to.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub service: &'static str,
    /// TTL of the instances that keep heartbeating.
    pub ttl: u32,
    /// Instances numbered from here on are the ones a test deregisters. They get `victim_ttl`
    /// (long), so that only the deregistration itself (never a lapsed lease or TTL check) can make
    /// them go away, and anything that brings one back stays visible.
    pub victim_from: u32,
    pub victim_ttl: u32,
    /// Longest any answer may take while a registry is faulty.
    pub bound: Duration,
    pub heartbeat_every: Duration,
}

impl Plan {
    pub fn body(&self, n: u32) -> Value {
        json!({
            "address": Self::address(n),
            "port": 8000 + n,
            "tags": ["resilience"],
            "meta": {"n": n.to_string()},
            "ttl_seconds": if n >= self.victim_from { self.victim_ttl } else { self.ttl },
        })
    }

    pub fn address(n: u32) -> String {
        format!("10.9.{}.{}", n / 200, n % 200 + 1)
    }

    pub fn id(n: u32) -> String {
        format!("i-{n}")
    }

    pub fn path(&self, id: &str) -> String {
        format!("/v1/services/{}/instances/{id}", self.service)
    }

    fn heartbeat_path(&self, id: &str) -> String {
        format!("{}/heartbeat", self.path(id))
    }
}

/// What the current phase allows a heartbeat to answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Expect {
    /// 200 `ok`, within the plan's bound.
    Ok,
    /// 200 `ok` with `degraded: true`, within the plan's bound.
    Degraded,
    /// 503 `unavailable` with Retry-After, within the plan's bound.
    Unavailable,
    /// A transition (a fault being applied or lifted): anything; a 404 is answered by registering
    /// again, as docs/api.md tells clients to.
    #[default]
    Any,
}

#[derive(Debug, Default)]
pub struct PhaseLog {
    pub heartbeats: u32,
    pub ok: u32,
    pub degraded: u32,
    pub unavailable: u32,
    pub unknown: u32,
    pub errors: u32,
    pub restored_etcd: u32,
    pub restored_consul: u32,
}

/// How long after a phase change a heartbeat answer may still reflect the phase before: the
/// probe interval (2 s), a probe's deadline and some margin.
pub const DETECTION: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Shared {
    /// id → register body of every instance that is registered and heartbeating.
    live: BTreeMap<String, Value>,
    /// Heartbeats (and re-registers) in flight, so a deregister can wait them out.
    in_flight: BTreeSet<String>,
    phase: (String, Expect),
    /// When the phase began (`None` before the first), and what the phase before it expected.
    phase_began: Option<tokio::time::Instant>,
    previous: Expect,
    phases: Vec<(String, Expect, PhaseLog)>,
    violations: Vec<String>,
}

impl Shared {
    pub fn log(&mut self, phase: &str) -> &mut PhaseLog {
        let i = self
            .phases
            .iter()
            .position(|(n, _, _)| n == phase)
            .expect("phase registered");
        &mut self.phases[i].2
    }
}

pub struct Fleet {
    plan: Plan,
    pub client: Arc<TestClient>,
    shared: Arc<Mutex<Shared>>,
    gone: BTreeSet<String>,
    started: Instant,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Fleet {
    pub fn new(client: TestClient, plan: Plan) -> Fleet {
        let fleet = Fleet {
            plan,
            client: Arc::new(client),
            shared: Arc::default(),
            gone: BTreeSet::new(),
            started: Instant::now(),
            stop: CancellationToken::new(),
            task: None,
        };
        fleet.phase("setup", Expect::Ok);
        fleet
    }

    /// Registers instance `n`; on 200 it joins the heartbeating fleet.
    pub async fn register(&self, n: u32) -> (Resp, Duration) {
        let body = self.plan.body(n);
        let start = Instant::now();
        let r = self
            .client
            .put_json(&self.plan.path(&Plan::id(n)), &body)
            .await;
        let took = start.elapsed();
        if r.status == 200 {
            self.shared.lock().unwrap().live.insert(Plan::id(n), body);
        }
        (r, took)
    }

    /// Registers instance `n` while both registries are up: 200, not degraded.
    pub async fn register_ok(&self, n: u32) {
        let (r, _) = self.register(n).await;
        assert_eq!(r.status, 200, "registering {}: {}", Plan::id(n), r.text);
        assert_eq!(
            r.json["degraded"],
            false,
            "registering {}: {}",
            Plan::id(n),
            r.text
        );
    }

    /// Stops heartbeating the instance (waiting out a heartbeat in flight, so it cannot race the
    /// delete), then deregisters it; on 200 it must stay gone from both registries.
    pub async fn deregister(&mut self, id: &str) -> (Resp, Duration) {
        let body = self.shared.lock().unwrap().live.remove(id);
        assert!(body.is_some(), "{id} is not a live instance");
        eventually(
            Duration::from_secs(20),
            "the heartbeat in flight to end",
            || async { (!self.shared.lock().unwrap().in_flight.contains(id)).then_some(()) },
        )
        .await;
        let start = Instant::now();
        let r = self.client.delete(&self.plan.path(id)).await;
        let took = start.elapsed();
        if r.status == 200 {
            self.gone.insert(id.to_owned());
        }
        (r, took)
    }

    pub async fn deregister_ok(&mut self, id: &str) {
        let (r, took) = self.deregister(id).await;
        assert_eq!(r.status, 200, "deregistering {id}: {}", r.text);
        assert!(
            took <= self.plan.bound,
            "deregistering {id}: answered after {took:?}"
        );
    }

    /// Heartbeats an instance registered by other means from now on.
    pub fn adopt(&self, id: &str, body: Value) {
        self.shared.lock().unwrap().live.insert(id.to_owned(), body);
    }

    pub fn live_ids(&self) -> Vec<String> {
        self.shared.lock().unwrap().live.keys().cloned().collect()
    }

    pub fn expected(&self) -> Expected {
        Expected {
            live: self
                .shared
                .lock()
                .unwrap()
                .live
                .iter()
                .map(|(id, b)| (id.clone(), b["address"].as_str().unwrap().to_owned()))
                .collect(),
            gone: self.gone.clone(),
        }
    }

    /// Starts a new phase: heartbeats from now on are judged by `expect`.
    pub fn phase(&self, name: &str, expect: Expect) {
        let mut sh = self.shared.lock().unwrap();
        if !sh.phases.iter().any(|(n, _, _)| n == name) {
            sh.phases
                .push((name.to_owned(), expect, PhaseLog::default()));
        }
        sh.previous = sh.phase.1;
        sh.phase = (name.to_owned(), expect);
        sh.phase_began = Some(tokio::time::Instant::now());
    }

    /// Starts heartbeating every live instance every `plan.heartbeat_every`, in phase `name`.
    pub fn start(&mut self, name: &str, expect: Expect) {
        self.phase(name, expect);
        let client = self.client.clone();
        let shared = self.shared.clone();
        let stop = self.stop.clone();
        let started = self.started;
        let plan = self.plan;
        self.task = Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(plan.heartbeat_every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let round: Vec<(String, Value)> = {
                    let mut sh = shared.lock().unwrap();
                    let round: Vec<_> = sh.live.clone().into_iter().collect();
                    for (id, _) in &round {
                        sh.in_flight.insert(id.clone());
                    }
                    round
                };
                join_all(
                    round
                        .into_iter()
                        .map(|(id, body)| beat(&plan, &client, &shared, started, id, body)),
                )
                .await;
            }
        }));
    }

    /// Every heartbeat answer of `phase` so far.
    pub fn log<R>(&self, phase: &str, f: impl FnOnce(&PhaseLog) -> R) -> R {
        let mut sh = self.shared.lock().unwrap();
        f(sh.log(phase))
    }

    /// Waits until `rounds` more heartbeats were answered in the current phase.
    pub async fn wait_heartbeats(&self, rounds: u32) {
        let phase = self.shared.lock().unwrap().phase.0.clone();
        let before = self.log(&phase, |l| l.heartbeats);
        eventually(
            Duration::from_secs(30),
            &format!("{rounds} heartbeats in phase '{phase}'"),
            || async { (self.log(&phase, |l| l.heartbeats) >= before + rounds).then_some(()) },
        )
        .await;
    }

    /// Stops heartbeating and fails the test with every heartbeat that broke its phase's rule,
    /// or with a phase in which no heartbeat was answered (the fleet was not really running).
    pub async fn finish(mut self) -> Vec<(String, Expect, PhaseLog)> {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            t.await.expect("heartbeat task");
        }
        let mut sh = self.shared.lock().unwrap();
        let mut problems = sh.violations.clone();
        for (name, expect, log) in &sh.phases {
            if *expect != Expect::Any && name != "setup" && log.heartbeats == 0 {
                problems.push(format!("phase '{name}': no heartbeat was answered"));
            }
        }
        let phases = std::mem::take(&mut sh.phases);
        assert!(
            problems.is_empty(),
            "{} heartbeat problem(s):\n  {}\nper phase: {phases:#?}",
            problems.len(),
            problems
                .iter()
                .take(30)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n  "),
        );
        phases
    }
}

/// One heartbeat of one instance, judged against the phase it started and ended in.
async fn beat(
    plan: &Plan,
    client: &TestClient,
    shared: &Mutex<Shared>,
    started: Instant,
    id: String,
    body: Value,
) {
    let (phase, expect) = shared.lock().unwrap().phase.clone();
    let start = Instant::now();
    let r = client
        .try_request("PUT", &plan.heartbeat_path(&id), None)
        .await;
    let took = start.elapsed();
    let reregister = {
        let mut sh = shared.lock().unwrap();
        if !sh.live.contains_key(&id) {
            // Deregistered meanwhile: its answer does not matter.
            sh.in_flight.remove(&id);
            return;
        }
        // A phase change while in flight: the answer may belong to either phase.
        let expect = if sh.phase.0 == phase {
            expect
        } else {
            Expect::Any
        };
        let log = sh.log(&phase);
        log.heartbeats += 1;
        match &r {
            Ok(resp) => {
                match resp.status {
                    200 => log.ok += 1,
                    503 => log.unavailable += 1,
                    404 => log.unknown += 1,
                    _ => log.errors += 1,
                }
                if resp.json["degraded"] == true {
                    log.degraded += 1;
                }
                if resp.json["registries"]["etcd"]["restored"] == true {
                    log.restored_etcd += 1;
                }
                if resp.json["registries"]["consul"]["restored"] == true {
                    log.restored_consul += 1;
                }
            }
            Err(_) => log.errors += 1,
        }
        // An owner's heartbeat calls no registry: it reports each registry's health as the last
        // probe (every 2 s) or call saw it. For DETECTION after a fault or a recovery, an answer
        // that is right for the phase before is right too.
        let late = sh.phase_began.is_some_and(|b| {
            tokio::time::Instant::from_std(start).saturating_duration_since(b) < DETECTION
        }) && judge(sh.previous, &r, took, plan.bound).is_none();
        if let Some(why) = judge(expect, &r, took, plan.bound).filter(|_| !late) {
            let at = start.duration_since(started);
            sh.violations
                .push(format!("[{phase}] heartbeat {id} at {at:.1?}: {why}"));
        }
        matches!(&r, Ok(resp) if resp.status == 404)
    };
    if reregister {
        // docs/api.md: 404 means no registry knows it; the client registers again.
        let _ = client
            .try_request(
                "PUT",
                &plan.path(&id),
                Some(serde_json::to_vec(&body).unwrap()),
            )
            .await;
    }
    shared.lock().unwrap().in_flight.remove(&id);
}

fn judge(
    expect: Expect,
    r: &Result<Resp, String>,
    took: Duration,
    bound: Duration,
) -> Option<String> {
    if expect == Expect::Any {
        return None;
    }
    let resp = match r {
        Err(e) => return Some(format!("no answer: {e}")),
        Ok(resp) => resp,
    };
    if took > bound {
        return Some(format!(
            "answered {} after {took:?} (bound {bound:?}): {}",
            resp.status, resp.text
        ));
    }
    match expect {
        Expect::Ok | Expect::Degraded => {
            if resp.status != 200 || resp.json["ok"] != true {
                return Some(format!(
                    "expected 200 ok, got {}: {}",
                    resp.status, resp.text
                ));
            }
            if expect == Expect::Degraded && resp.json["degraded"] != true {
                return Some(format!("expected degraded: {}", resp.text));
            }
        }
        Expect::Unavailable => {
            if resp.status != 503 || resp.json["error"] != "unavailable" {
                return Some(format!(
                    "expected 503 unavailable, got {}: {}",
                    resp.status, resp.text
                ));
            }
            let retry = resp
                .headers
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if retry.is_none_or(|s| s < 1) {
                return Some(format!(
                    "503 without a usable Retry-After: {:?}",
                    resp.headers
                ));
            }
        }
        Expect::Any => {}
    }
    None
}
