//! The hub and its watchers over in-memory registries (their default, polling watch), in paused
//! time. The real upstream watches are tested against etcd and mini-consul in `tests/api/watch.rs`.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::*;
use crate::model::{Instance, InstanceKey, ServiceName};
use crate::registry::memory::{Memory, Mode};

const EVERY: Duration = Duration::from_secs(1);

struct Fixture {
    watches: Arc<Watches>,
    etcd: Arc<Memory>,
    consul: Arc<Memory>,
    metrics: Arc<Metrics>,
    service: ServiceName,
}

fn fixture() -> Fixture {
    let etcd = Arc::new(Memory::new(RegistryKind::Etcd));
    let consul = Arc::new(Memory::new(RegistryKind::Consul));
    let metrics = Metrics::new();
    let watches = Watches::new(
        vec![etcd.clone(), consul.clone()],
        WatchSettings {
            progress_interval: EVERY,
            linger: Duration::from_secs(5),
        },
        metrics.clone(),
        CancellationToken::new(),
    );
    Fixture {
        watches,
        etcd,
        consul,
        metrics,
        service: ServiceName::parse("payments").unwrap(),
    }
}

fn instance(id: &str, port: u16) -> Instance {
    Instance {
        port,
        ..Instance::for_test("payments", id)
    }
}

impl Fixture {
    async fn put(&self, i: &Instance) {
        self.etcd.register(i).await.unwrap();
        self.consul.register(i).await.unwrap();
    }

    async fn delete(&self, id: &str) {
        let key = InstanceKey::parse("payments", id).unwrap();
        self.etcd.remove_behind_the_back(&key);
        self.consul.remove_behind_the_back(&key);
    }
}

/// The next event that is not PROGRESS.
async fn change(sub: &mut Subscription) -> Event {
    let wait = async {
        loop {
            let e = sub.next().await.expect("the stream goes on");
            if e.kind != EventKind::Progress {
                return e;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .expect("a change within 60 s")
}

fn id(e: &Event) -> &str {
    e.instance
        .as_ref()
        .map_or("", |s| s.instance.key.id.as_str())
}

#[tokio::test(start_paused = true)]
async fn a_fresh_watch_gets_a_snapshot_then_per_instance_changes_and_empty() {
    let f = fixture();
    f.put(&instance("a", 80)).await;
    f.put(&instance("b", 80)).await;
    let mut sub = f.watches.subscribe(&f.service, 0).await.unwrap();

    let first = sub.next().await.unwrap();
    let second = sub.next().await.unwrap();
    let end = sub.next().await.unwrap();
    assert_eq!(
        (first.kind, id(&first), first.snapshot),
        (EventKind::Added, "a", true)
    );
    assert_eq!(
        (second.kind, id(&second), second.snapshot),
        (EventKind::Added, "b", true)
    );
    assert_eq!(
        first.index, 0,
        "a snapshot cut short is no point to resume from"
    );
    assert_ne!(second.index, 0);
    assert_eq!(
        (end.kind, end.snapshot, end.index),
        (EventKind::Progress, false, second.index)
    );
    assert_eq!(
        second.instance.as_ref().unwrap().sources,
        vec![RegistryKind::Etcd, RegistryKind::Consul]
    );

    f.put(&instance("a", 81)).await;
    let modified = change(&mut sub).await;
    assert_eq!((modified.kind, id(&modified)), (EventKind::Modified, "a"));
    assert_eq!(modified.instance.as_ref().unwrap().instance.port, 81);

    f.delete("b").await;
    let deleted = change(&mut sub).await;
    assert_eq!((deleted.kind, id(&deleted)), (EventKind::Deleted, "b"));
    f.delete("a").await;
    let deleted = change(&mut sub).await;
    assert_eq!((deleted.kind, id(&deleted)), (EventKind::Deleted, "a"));
    let empty = change(&mut sub).await;
    assert_eq!(empty.kind, EventKind::Empty);
    assert_eq!(empty.index, deleted.index);
}

#[tokio::test(start_paused = true)]
async fn an_empty_service_is_an_empty_snapshot() {
    let f = fixture();
    let mut sub = f.watches.subscribe(&f.service, 0).await.unwrap();
    let e = sub.next().await.unwrap();
    assert_eq!((e.kind, e.snapshot), (EventKind::Empty, true));
    assert_eq!(sub.next().await.unwrap().kind, EventKind::Progress);
}

#[tokio::test(start_paused = true)]
async fn progress_frames_come_on_the_interval_while_nothing_changes() {
    let f = fixture();
    f.put(&instance("a", 80)).await;
    let mut sub = f.watches.subscribe(&f.service, 0).await.unwrap();
    let _ = sub.next().await.unwrap(); // ADDED a
    let index = sub.next().await.unwrap().index; // PROGRESS
    let start = tokio::time::Instant::now();
    for n in 1..=5u32 {
        let e = sub.next().await.unwrap();
        assert_eq!((e.kind, e.index), (EventKind::Progress, index));
        assert_eq!(e.registries, vec![RegistryKind::Etcd, RegistryKind::Consul]);
        let at = start.elapsed();
        assert!(
            at >= EVERY * n - Duration::from_millis(1)
                && at <= EVERY * n + Duration::from_millis(300),
            "frame {n} at {at:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn resuming_from_a_known_index_sends_only_what_was_missed() {
    let f = fixture();
    f.put(&instance("a", 80)).await;
    f.put(&instance("b", 80)).await;
    let mut sub = f.watches.subscribe(&f.service, 0).await.unwrap();
    let _ = (sub.next().await, sub.next().await);
    let seen = sub.next().await.unwrap().index;
    drop(sub);

    f.put(&instance("c", 80)).await;
    f.delete("a").await;
    tokio::time::sleep(EVERY * 3).await;

    let mut sub = f.watches.subscribe(&f.service, seen).await.unwrap();
    let mut got = Vec::new();
    loop {
        let e = sub.next().await.unwrap();
        if e.kind == EventKind::Progress {
            break;
        }
        assert!(!e.snapshot);
        got.push((e.kind, id(&e).to_owned()));
    }
    assert_eq!(
        got,
        vec![
            (EventKind::Deleted, "a".into()),
            (EventKind::Added, "c".into())
        ]
    );

    // Up to date: nothing but PROGRESS.
    let now = f.watches.subscribe(&f.service, 0).await.unwrap();
    drop(now);
    let current = {
        let mut s = f.watches.subscribe(&f.service, seen).await.unwrap();
        loop {
            let e = s.next().await.unwrap();
            if e.kind == EventKind::Progress {
                break e.index;
            }
        }
    };
    let mut s = f.watches.subscribe(&f.service, current).await.unwrap();
    assert_eq!(s.next().await.unwrap().kind, EventKind::Progress);

    // Unknown here: a snapshot.
    let mut s = f.watches.subscribe(&f.service, 12345).await.unwrap();
    let e = s.next().await.unwrap();
    assert!(e.snapshot && e.kind == EventKind::Added);
}

#[tokio::test(start_paused = true)]
async fn a_watcher_cut_off_mid_change_resumes_from_the_event_it_last_saw() {
    let f = fixture();
    let mut sub = f.watches.subscribe(&f.service, 0).await.unwrap();
    let _ = (sub.next().await, sub.next().await);
    // Three instances in one view: three events, each with the index of the set after it.
    f.put(&instance("a", 80)).await;
    f.put(&instance("b", 80)).await;
    f.put(&instance("c", 80)).await;
    let a = change(&mut sub).await;
    assert_eq!(id(&a), "a");
    assert_ne!(a.index, 0);
    drop(sub);
    let mut sub = f.watches.subscribe(&f.service, a.index).await.unwrap();
    let b = sub.next().await.unwrap();
    let c = sub.next().await.unwrap();
    assert_eq!(
        [(b.kind, id(&b), b.snapshot), (c.kind, id(&c), c.snapshot)],
        [
            (EventKind::Added, "b", false),
            (EventKind::Added, "c", false)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn one_registry_down_the_view_goes_on_from_the_other() {
    let f = fixture();
    f.put(&instance("a", 80)).await;
    let mut sub = f.watches.subscribe(&f.service, 0).await.unwrap();
    let _ = (sub.next().await, sub.next().await);

    f.consul.set_mode(Mode::Down);
    // After the grace, the instance is held by etcd alone: MODIFIED, never DELETED.
    let e = change(&mut sub).await;
    assert_eq!((e.kind, id(&e)), (EventKind::Modified, "a"));
    assert_eq!(
        e.instance.as_ref().unwrap().sources,
        vec![RegistryKind::Etcd]
    );
    assert_eq!(e.registries, vec![RegistryKind::Etcd]);

    f.etcd.register(&instance("b", 80)).await.unwrap();
    let e = change(&mut sub).await;
    assert_eq!((e.kind, id(&e)), (EventKind::Added, "b"));

    f.consul.set_mode(Mode::Up);
    f.consul.register(&instance("b", 80)).await.unwrap();
    let mut back = Vec::new();
    while back.len() < 2 {
        let e = change(&mut sub).await;
        assert_eq!(e.kind, EventKind::Modified);
        back.push(id(&e).to_owned());
    }
    assert_eq!(back, ["a", "b"]);
}

#[tokio::test(start_paused = true)]
async fn both_registries_down_keep_the_view_then_end_the_stream() {
    let f = fixture();
    f.put(&instance("a", 80)).await;
    let mut sub = f.watches.subscribe(&f.service, 0).await.unwrap();
    let _ = (sub.next().await, sub.next().await);
    f.etcd.set_mode(Mode::Down);
    f.consul.set_mode(Mode::Down);
    let start = tokio::time::Instant::now();
    let err = loop {
        let e = sub.next().await;
        match e {
            // The registries fail at different moments: `sources` may shrink on the way, but
            // the instance is never reported gone.
            Ok(e) => assert!(
                matches!(e.kind, EventKind::Progress | EventKind::Modified),
                "no instance is dropped: {e:?}"
            ),
            Err(err) => break err,
        }
    };
    let WatchError::Unavailable(message) = err;
    assert!(message.contains("no registry has answered"), "{message}");
    assert!(start.elapsed() >= STALE_LIMIT);
    // A new watch is refused at once rather than served a stale view.
    let err = f
        .watches
        .subscribe(&ServiceName::parse("orders").unwrap(), 0)
        .await
        .err();
    assert!(err.is_some_and(|WatchError::Unavailable(m)| m.contains("no registry answered")));
}

#[tokio::test(start_paused = true)]
async fn watchers_of_one_service_share_one_upstream_watch_which_stops_after_the_linger() {
    let f = fixture();
    let subs: Vec<Subscription> =
        futures::future::join_all((0..5).map(|_| f.watches.subscribe(&f.service, 0)))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
    let upstreams = |k| f.metrics.watch_upstreams(k).get();
    assert_eq!(upstreams(RegistryKind::Etcd), 1);
    assert_eq!(upstreams(RegistryKind::Consul), 1);
    assert_eq!(f.metrics.watchers.get(), 5);
    assert_eq!(f.watches.hubs(), 1);
    drop(subs);
    assert_eq!(f.metrics.watchers.get(), 0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(f.watches.hubs(), 1, "lingers");
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(f.watches.hubs(), 0);
    assert_eq!(upstreams(RegistryKind::Etcd), 0);
}
