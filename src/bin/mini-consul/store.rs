//! The catalog's contents and indexes, guarded by the state lock.
//!
//! One global raft-like index increases on every change. Services and checks carry the create and
//! modify index of their catalog entry; a per-service-name index (and a "last extinction" index
//! for names with no instance left) gives `/v1/health/service` the index Consul's state store
//! would (`maxIndexForService`), so a blocking watcher also wakes when the last instance goes
//! away; the services-table index is what `/v1/catalog/services` reports.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use tokio::time::Instant;

use crate::model::{Check, Service};

/// Everything guarded by the state lock.
#[derive(Debug)]
pub struct Inner {
    pub services: BTreeMap<String, Service>,
    pub checks: BTreeMap<String, Check>,
    /// The raft-like index of the last change.
    pub index: u64,
    /// The index at which the node, its `serfHealth` check and the `consul` service were written.
    pub node_index: u64,
    /// The services table index (service writes and deletions, not check updates).
    pub services_index: u64,
    name_index: HashMap<String, u64>,
    extinction_index: Option<u64>,
    next_generation: u64,
    /// TTL deadlines in time order, so expiry touches only what is due rather than scanning every
    /// check on every heartbeat (Consul keeps one timer per check). May hold entries of removed
    /// checks; the expiry loop skips them.
    pub ttl_queue: BTreeSet<(Instant, String)>,
}

impl Inner {
    pub fn new() -> Inner {
        // Index 1 is the raft configuration; the leader then registers itself at index 2.
        let mut name_index = HashMap::new();
        name_index.insert("consul".to_owned(), 2);
        Inner {
            services: BTreeMap::new(),
            checks: BTreeMap::new(),
            index: 2,
            node_index: 2,
            services_index: 2,
            name_index,
            extinction_index: None,
            next_generation: 1,
            ttl_queue: BTreeSet::new(),
        }
    }

    /// Moves check `id`'s TTL deadline from `old` to `new` in the queue; true when `new` is now
    /// the earliest deadline (the expiry loop must wake up for it).
    pub fn schedule_ttl(&mut self, id: &str, old: Option<Instant>, new: Option<Instant>) -> bool {
        if let Some(old) = old {
            self.ttl_queue.remove(&(old, id.to_owned()));
        }
        let Some(new) = new else {
            return false;
        };
        self.ttl_queue.insert((new, id.to_owned()));
        self.ttl_queue
            .first()
            .is_some_and(|(first, _)| *first == new)
    }

    /// A fresh check incarnation number.
    pub fn next_generation(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }

    pub fn bump(&mut self) -> u64 {
        self.index += 1;
        self.index
    }

    fn name_exists(&self, lower: &str) -> bool {
        lower == "consul"
            || self
                .services
                .values()
                .any(|s| s.name.to_lowercase() == lower)
    }

    pub fn touch_name(&mut self, name: &str, idx: u64) {
        self.name_index.insert(name.to_lowercase(), idx);
    }

    /// After an instance of `name` went away at `idx`.
    pub fn after_removal(&mut self, name: &str, idx: u64) {
        let lower = name.to_lowercase();
        if self.name_exists(&lower) {
            self.name_index.insert(lower, idx);
        } else {
            self.name_index.remove(&lower);
            self.extinction_index = Some(idx);
        }
    }

    /// The index `/v1/health/service/<name>` reports (as Consul's `maxIndexForService`).
    pub fn health_index(&self, name: &str) -> u64 {
        let lower = name.to_lowercase();
        if self.name_exists(&lower) {
            if let Some(i) = self.name_index.get(&lower) {
                return *i;
            }
            return self.index;
        }
        self.extinction_index.unwrap_or(self.index)
    }

    pub fn remove_service(&mut self, id: &str, idx: u64) -> bool {
        let Some(svc) = self.services.remove(id) else {
            return false;
        };
        let gone: Vec<String> = self
            .checks
            .iter()
            .filter(|(_, c)| c.service_id == id)
            .map(|(k, _)| k.clone())
            .collect();
        for k in gone {
            if let Some(c) = self.checks.remove(&k)
                && let Some(r) = c.runner
            {
                r.abort();
            }
        }
        self.services_index = idx;
        self.after_removal(&svc.name, idx);
        true
    }
}
