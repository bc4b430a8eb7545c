//! The catalog's contents and indexes, guarded by the state lock.
//!
//! One global raft-like index increases on every change. Services and checks carry the create and
//! modify index of their catalog entry; a per-service-name index (and a "last extinction" index
//! for names with no instance left) gives `/v1/health/service` the index Consul's state store
//! would (`maxIndexForService`), so a blocking watcher also wakes when the last instance goes
//! away; the services-table index is what `/v1/catalog/services` reports.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use tokio::time::Instant;

use crate::model::{Check, Probe, Service};

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
    /// Services per lower-cased name, so "does the name still exist" costs no scan.
    names: HashMap<String, usize>,
    extinction_index: Option<u64>,
    next_generation: u64,
    /// TTL deadlines in time order, so expiry touches only what is due rather than scanning every
    /// check on every heartbeat (Consul keeps one timer per check). May hold entries of removed
    /// checks; the expiry loop skips them.
    pub ttl_queue: BTreeSet<(Instant, String)>,
    /// Check IDs by the service they belong to, so registering or removing a service touches its
    /// own checks rather than scanning every check. Kept by `insert_check`/`remove_check`.
    checks_of: HashMap<String, BTreeSet<String>>,
    /// The alias checks of this node by the local service ID they alias. Kept by
    /// `insert_check`/`remove_check`; `State::refresh_aliases` sets their status.
    pub aliases: HashMap<String, BTreeSet<String>>,
    /// This agent's node name (an alias check's `AliasNode` names it or is empty to be local).
    pub node_name: String,
}

impl Inner {
    pub fn new(node_name: &str) -> Inner {
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
            checks_of: HashMap::new(),
            names: HashMap::new(),
            aliases: HashMap::new(),
            node_name: node_name.to_owned(),
        }
    }

    /// The local service an alias check follows: `None` for a check that is no alias, or aliases
    /// no service (`AliasNode` alone), or a service of another node.
    pub fn local_alias_target<'a>(&self, check: &'a Check) -> Option<&'a str> {
        match &check.spec.probe {
            Probe::Alias { service, node }
                if !service.is_empty() && (node.is_empty() || *node == self.node_name) =>
            {
                Some(service)
            }
            _ => None,
        }
    }

    /// Adds or replaces a check (the only way checks are added).
    pub fn insert_check(&mut self, check: Check) {
        let id = check.spec.id.clone();
        if let Some(old) = self.remove_check(&id)
            && let Some(r) = old.runner
        {
            r.abort();
        }
        // Node checks (no service) are indexed under "": alias checks count them as related.
        self.checks_of
            .entry(check.service_id.clone())
            .or_default()
            .insert(id.clone());
        if let Some(target) = self.local_alias_target(&check) {
            self.aliases
                .entry(target.to_owned())
                .or_default()
                .insert(id.clone());
        }
        self.checks.insert(id, check);
    }

    /// Removes a check (the only way checks are removed).
    pub fn remove_check(&mut self, id: &str) -> Option<Check> {
        let check = self.checks.remove(id)?;
        if let Some(ids) = self.checks_of.get_mut(&check.service_id) {
            ids.remove(id);
            if ids.is_empty() {
                self.checks_of.remove(&check.service_id);
            }
        }
        if let Some(target) = self.local_alias_target(&check)
            && let Some(w) = self.aliases.get_mut(target)
        {
            w.remove(id);
            if w.is_empty() {
                self.aliases.remove(target);
            }
        }
        Some(check)
    }

    /// The checks of service `id` (of the node itself for ""), in check-ID order, from the
    /// index: a health answer of 100,000 instances must not scan every check per instance.
    pub fn checks_of(&self, id: &str) -> impl Iterator<Item = &Check> {
        self.checks_of
            .get(id)
            .into_iter()
            .flatten()
            .filter_map(|c| self.checks.get(c))
    }

    /// The IDs of the checks of service `id` (of the node itself for "").
    pub fn check_ids_of(&self, id: &str) -> Vec<String> {
        self.checks_of
            .get(id)
            .map(|ids| ids.iter().cloned().collect())
            .unwrap_or_default()
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
        lower == "consul" || self.names.contains_key(lower)
    }

    /// Adds or replaces a service (the only way services are added).
    pub fn insert_service(&mut self, svc: Service) {
        let lower = svc.name.to_lowercase();
        if let Some(old) = self.services.insert(svc.id.clone(), svc) {
            self.forget_name(&old.name.to_lowercase());
        }
        *self.names.entry(lower).or_default() += 1;
    }

    fn forget_name(&mut self, lower: &str) {
        if let Some(n) = self.names.get_mut(lower) {
            *n -= 1;
            if *n == 0 {
                self.names.remove(lower);
            }
        }
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
        self.forget_name(&svc.name.to_lowercase());
        for k in self.check_ids_of(id) {
            if let Some(c) = self.remove_check(&k)
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
