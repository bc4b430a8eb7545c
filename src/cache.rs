//! This replica's memory of the records it wrote or heard a heartbeat for.
//!
//! Only a cache: correctness never depends on it (a heartbeat may land on another replica). It
//! lets a heartbeat restore a registry that lost an instance without a read, and tells the
//! repairer whether an instance is still alive (heartbeating within its TTL) and still at the
//! generation a repair was queued for.
//!
//! It also remembers when each registry's copy was last refreshed (written or renewed), so a
//! heartbeat arriving soon after can be answered without a registry round trip (coalescing).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::model::{Instance, InstanceKey};

/// Registries per instance: twinreg writes exactly two.
pub const MAX_REGISTRIES: usize = 2;

struct Entry {
    instance: Instance,
    last_seen: Instant,
    /// Per registry (coordinator member index): when a call that refreshed its copy started.
    refreshed: [Option<Instant>; MAX_REGISTRIES],
}

#[derive(Default)]
pub struct RecordCache {
    entries: Mutex<HashMap<InstanceKey, Entry>>,
}

impl RecordCache {
    /// Remembers a record just written, unless a newer generation is already known.
    pub fn put(&self, instance: &Instance) {
        let mut map = self.entries.lock().expect("not poisoned");
        match map.get_mut(&instance.key) {
            Some(e) if e.instance.generation > instance.generation => {}
            _ => {
                map.insert(
                    instance.key.clone(),
                    Entry {
                        instance: instance.clone(),
                        last_seen: Instant::now(),
                        refreshed: [None; MAX_REGISTRIES],
                    },
                );
            }
        }
    }

    /// Marks the instance as heard from now.
    pub fn touch(&self, key: &InstanceKey) {
        if let Some(e) = self.entries.lock().expect("not poisoned").get_mut(key) {
            e.last_seen = Instant::now();
        }
    }

    /// Records that registry `member`'s copy was refreshed by a call started at `at` (`None`:
    /// its state is unknown, e.g. the call failed or it had lost the instance).
    pub fn refreshed(&self, key: &InstanceKey, member: usize, at: Option<Instant>) {
        if let Some(e) = self.entries.lock().expect("not poisoned").get_mut(key) {
            e.refreshed[member] = at;
        }
    }

    /// Which registries' copies were refreshed less than `ttl × fraction` before `now` (their
    /// lease or TTL check has more than `1 - fraction` of its life left), for the first
    /// `members` registries. Marks the instance as heard from when every one is.
    pub fn fresh(
        &self,
        key: &InstanceKey,
        fraction: f64,
        now: Instant,
        members: usize,
    ) -> [bool; MAX_REGISTRIES] {
        let mut fresh = [false; MAX_REGISTRIES];
        let mut map = self.entries.lock().expect("not poisoned");
        let Some(e) = map.get_mut(key) else {
            return fresh;
        };
        let window = Duration::from_secs(e.instance.ttl_seconds.into()).mul_f64(fraction);
        for (f, at) in fresh.iter_mut().zip(&e.refreshed).take(members) {
            *f = at.is_some_and(|t| now.saturating_duration_since(t) < window);
        }
        if fresh[..members].iter().all(|f| *f) {
            e.last_seen = now;
        }
        fresh
    }

    pub fn get(&self, key: &InstanceKey) -> Option<Instance> {
        self.entries
            .lock()
            .expect("not poisoned")
            .get(key)
            .map(|e| e.instance.clone())
    }

    pub fn remove(&self, key: &InstanceKey) {
        self.entries.lock().expect("not poisoned").remove(key);
    }

    /// True while the instance at `generation` is the newest known and has been heard from
    /// within its TTL.
    pub fn is_alive(&self, key: &InstanceKey, generation: u64) -> bool {
        self.entries
            .lock()
            .expect("not poisoned")
            .get(key)
            .is_some_and(|e| {
                e.instance.generation == generation
                    && e.last_seen.elapsed() < Duration::from_secs(e.instance.ttl_seconds.into())
            })
    }

    /// Drops entries not heard from for twice their TTL, so the cache does not grow forever.
    pub fn evict_expired(&self) -> usize {
        let mut map = self.entries.lock().expect("not poisoned");
        let before = map.len();
        map.retain(|_, e| {
            e.last_seen.elapsed() < Duration::from_secs(2 * u64::from(e.instance.ttl_seconds))
        });
        before - map.len()
    }
}
