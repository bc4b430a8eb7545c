//! This replica's memory of the records it wrote or heard a heartbeat for.
//!
//! Only a cache: correctness never depends on it (a heartbeat may land on another replica). It
//! lets a heartbeat restore a registry that lost an instance without a read, and tells the
//! repairer whether an instance is still alive (heartbeating within its TTL) and still at the
//! generation a repair was queued for.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::model::{Instance, InstanceKey};

struct Entry {
    instance: Instance,
    last_seen: Instant,
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
