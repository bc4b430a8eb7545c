//! The shared state: the catalog behind a lock, the operations that change it (with Consul's
//! agent semantics), and a `watch` channel on which every change is published for blocking
//! queries. All in memory: a restart starts empty, like a dev agent.

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::model::{
    CRITICAL, Check, CheckSpec, Config, DEFAULT_SERVICE_MAINT_REASON, PASSING, Probe,
    SERVICE_MAINT_PREFIX, Service, WARNING, truncate_output,
};
use crate::store::Inner;

/// The shared state plus its change notifications.
pub struct State {
    pub cfg: Config,
    inner: Mutex<Inner>,
    changes: watch::Sender<u64>,
    ttl_wake: Notify,
    /// Requests served, for `/v1/agent/metrics`.
    pub requests: crate::metrics::Requests,
}

/// Why a TTL update failed.
#[derive(Debug, PartialEq, Eq)]
pub enum UpdateError {
    UnknownCheck,
    NotTtl,
}

impl State {
    pub fn new(cfg: Config) -> Arc<State> {
        let inner = Inner::new(&cfg.node_name);
        let (changes, _) = watch::channel(inner.index);
        Arc::new(State {
            cfg,
            inner: Mutex::new(inner),
            changes,
            ttl_wake: Notify::new(),
            requests: Default::default(),
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A receiver that sees every change made after this call.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub fn ttl_wakeup(&self) -> &Notify {
        &self.ttl_wake
    }

    fn publish(&self, idx: u64) {
        self.changes.send_replace(idx);
    }

    /// Registers or replaces a service and its checks, with Consul's agent semantics: existing
    /// checks keep their status and output, TTL timers restart, checks left out of the payload
    /// stay unless `replace_checks`.
    pub fn register(
        self: &Arc<Self>,
        mut svc: Service,
        specs: Vec<CheckSpec>,
        replace_checks: bool,
    ) {
        let now = Instant::now();
        let mut g = self.lock();
        let inner = &mut *g;
        let existing = inner.services.get(&svc.id).cloned();
        let service_changed = existing.as_ref().is_none_or(|e| !e.same_definition(&svc));
        let mut new_checks = Vec::new();
        let mut wake = false;
        for spec in specs {
            let generation = inner.next_generation();
            let prev = inner.checks.get(&spec.id);
            let (status, output) = match prev {
                Some(p) => (p.status.clone(), p.output.clone()),
                None => (
                    spec.status.clone().unwrap_or_else(|| CRITICAL.to_owned()),
                    String::new(),
                ),
            };
            let check = Check {
                ttl_deadline: (spec.probe == Probe::Ttl)
                    .then(|| now + crate::duration::to_std(spec.ttl)),
                critical_since: (status == CRITICAL).then_some(now),
                create_index: prev.map_or(0, |p| p.create_index),
                modify_index: prev.map_or(0, |p| p.modify_index),
                spec,
                service_id: svc.id.clone(),
                status,
                output,
                last_output: String::new(),
                generation,
                runner: None,
            };
            let changed = prev.is_none_or(|p| !p.same_catalog_view(&check));
            let is_new = prev.is_none();
            let old_deadline = prev.and_then(|p| p.ttl_deadline);
            wake |= inner.schedule_ttl(&check.spec.id, old_deadline, check.ttl_deadline);
            new_checks.push((check, changed, is_new));
        }
        let removed: Vec<String> = if replace_checks {
            inner
                .check_ids_of(&svc.id)
                .into_iter()
                .filter(|id| !new_checks.iter().any(|(n, _, _)| n.spec.id == *id))
                .collect()
        } else {
            Vec::new()
        };
        let any_change = service_changed
            || !removed.is_empty()
            || new_checks.iter().any(|(_, changed, _)| *changed);
        let idx = if any_change {
            inner.bump()
        } else {
            inner.index
        };

        match &existing {
            Some(e) => {
                svc.create_index = e.create_index;
                svc.modify_index = if service_changed { idx } else { e.modify_index };
            }
            None => (svc.create_index, svc.modify_index) = (idx, idx),
        }
        if service_changed {
            inner.services_index = idx;
        }
        let name = svc.name.clone();
        let svc_id = svc.id.clone();
        inner.insert_service(svc);
        for (mut check, changed, is_new) in new_checks {
            if let Some(old) = inner.remove_check(&check.spec.id)
                && let Some(r) = old.runner
            {
                r.abort();
            }
            if is_new {
                check.create_index = idx;
            }
            if changed {
                check.modify_index = idx;
            }
            if check.spec.probe.is_probe() {
                check.runner = Some(crate::checks::spawn_probe(self.clone(), &check));
            }
            inner.insert_check(check);
        }
        for id in removed {
            if let Some(c) = inner.remove_check(&id)
                && let Some(r) = c.runner
            {
                r.abort();
            }
        }
        if any_change {
            inner.touch_name(&name, idx);
            if let Some(old) = existing.filter(|e| !e.name.eq_ignore_ascii_case(&name)) {
                inner.after_removal(&old.name, idx);
            }
        }
        // Its own alias checks take their first status, and aliases of it follow its checks.
        let own_aliases: Vec<String> = inner
            .check_ids_of(&svc_id)
            .into_iter()
            .filter(|id| {
                inner
                    .checks
                    .get(id)
                    .is_some_and(|c| matches!(c.spec.probe, Probe::Alias { .. }))
            })
            .collect();
        let mut last = any_change.then_some(idx);
        for id in own_aliases {
            last = refresh_alias(inner, &id, now).or(last);
        }
        last = refresh_aliases_of(inner, &svc_id, now).or(last);
        drop(g);
        if let Some(idx) = last {
            self.publish(idx);
        }
        if wake {
            self.ttl_wake.notify_one();
        }
    }

    /// Removes a service and its checks; false when there is no such service.
    pub fn deregister(&self, id: &str) -> bool {
        let mut g = self.lock();
        if !g.services.contains_key(id) {
            return false;
        }
        let idx = g.bump();
        g.remove_service(id, idx);
        let idx = refresh_aliases_of(&mut g, id, Instant::now()).unwrap_or(idx);
        drop(g);
        self.publish(idx);
        true
    }

    /// Consul's `EnableServiceMaintenance`: adds the critical check `_service_maintenance:<id>`
    /// to service `service_id`, with `reason` (or Consul's default text) as its notes. Nothing
    /// changes when a check of that ID exists already (Consul returns early), whatever added it.
    /// False when there is no such service.
    pub fn enable_maintenance(&self, service_id: &str, reason: &str) -> bool {
        let now = Instant::now();
        let mut g = self.lock();
        if !g.services.contains_key(service_id) {
            return false;
        }
        let id = format!("{SERVICE_MAINT_PREFIX}{service_id}");
        if g.checks.contains_key(&id) {
            return true;
        }
        let notes = if reason.is_empty() {
            DEFAULT_SERVICE_MAINT_REASON
        } else {
            reason
        };
        let generation = g.next_generation();
        let idx = g.bump();
        g.insert_check(Check {
            spec: CheckSpec {
                id,
                name: "Service Maintenance Mode".to_owned(),
                notes: notes.to_owned(),
                status: Some(CRITICAL.to_owned()),
                probe: Probe::Maintenance,
                ttl: 0,
                interval: 0,
                timeout: 0,
                deregister_after: None,
                output_max_size: 4096,
            },
            service_id: service_id.to_owned(),
            status: CRITICAL.to_owned(),
            output: String::new(),
            last_output: String::new(),
            ttl_deadline: None,
            critical_since: Some(now),
            create_index: idx,
            modify_index: idx,
            generation,
            runner: None,
        });
        tracing::info!(service = %service_id, "service entered maintenance mode");
        self.after_checks_of_changed(g, service_id, idx);
        true
    }

    /// Consul's `DisableServiceMaintenance`: removes check `_service_maintenance:<id>` if there is
    /// one (however it was added). False when there is no such service.
    pub fn disable_maintenance(&self, service_id: &str) -> bool {
        let mut g = self.lock();
        if !g.services.contains_key(service_id) {
            return false;
        }
        let Some(old) = g.remove_check(&format!("{SERVICE_MAINT_PREFIX}{service_id}")) else {
            return true;
        };
        if let Some(r) = old.runner {
            r.abort();
        }
        let idx = g.bump();
        tracing::info!(service = %service_id, "service left maintenance mode");
        self.after_checks_of_changed(g, &old.service_id, idx);
        true
    }

    /// A TTL check update (pass/warn/fail/update): restarts the TTL clock.
    pub fn update_ttl(
        &self,
        check_id: &str,
        status: &str,
        output: &str,
    ) -> Result<(), UpdateError> {
        let now = Instant::now();
        let mut g = self.lock();
        let check = g
            .checks
            .get_mut(check_id)
            .ok_or(UpdateError::UnknownCheck)?;
        if check.spec.probe != Probe::Ttl {
            return Err(UpdateError::NotTtl);
        }
        let output = truncate_output(output, check.spec.output_max_size);
        check.last_output = output.clone();
        let old = check.ttl_deadline;
        let new = Some(now + crate::duration::to_std(check.spec.ttl));
        check.ttl_deadline = new;
        let changed = check.set(status, output, now);
        let wake = g.schedule_ttl(check_id, old, new);
        self.after_check_update(g, check_id, changed);
        // A renewal moves a deadline later: the loop needs waking only for a new earliest one.
        if wake {
            self.ttl_wake.notify_one();
        }
        Ok(())
    }

    /// A probe's result for the check incarnation `generation`.
    pub fn probe_result(&self, check_id: &str, generation: u64, status: &str, output: String) {
        let mut g = self.lock();
        let Some(check) = g
            .checks
            .get_mut(check_id)
            .filter(|c| c.generation == generation)
        else {
            return;
        };
        let output = truncate_output(&output, check.spec.output_max_size);
        let changed = check.set(status, output, Instant::now());
        self.after_check_update(g, check_id, changed);
    }

    fn after_check_update(&self, mut g: MutexGuard<'_, Inner>, check_id: &str, changed: bool) {
        if !changed {
            return;
        }
        let idx = g.bump();
        let service_id = g.checks.get_mut(check_id).map(|c| {
            c.modify_index = idx;
            c.service_id.clone()
        });
        match service_id {
            Some(s) => self.after_checks_of_changed(g, &s, idx),
            None => {
                drop(g);
                self.publish(idx);
            }
        }
    }

    /// After a check of service `service_id` changed, came or went at `idx`: the health index of
    /// the service's name moves, the aliases of the service follow, and watchers wake.
    fn after_checks_of_changed(&self, mut g: MutexGuard<'_, Inner>, service_id: &str, idx: u64) {
        if let Some(name) = g.services.get(service_id).map(|s| s.name.clone()) {
            g.touch_name(&name, idx);
        }
        let idx = refresh_aliases_of(&mut g, service_id, Instant::now()).unwrap_or(idx);
        drop(g);
        self.publish(idx);
    }

    /// Turns every TTL check past its deadline critical; returns the next deadline.
    pub fn expire_ttls(&self, now: Instant) -> Option<Instant> {
        let mut g = self.lock();
        loop {
            let (at, id) = match g.ttl_queue.first() {
                None => return None,
                Some((at, _)) if *at > now => return Some(*at),
                Some(_) => g.ttl_queue.pop_first().expect("not empty"),
            };
            // Skip entries of removed checks and of deadlines moved since.
            let Some(c) = g.checks.get_mut(&id).filter(|c| c.ttl_deadline == Some(at)) else {
                continue;
            };
            c.ttl_deadline = None;
            let output = if c.last_output.is_empty() {
                "TTL expired".to_owned()
            } else {
                format!(
                    "TTL expired (last output before timeout follows): {}",
                    c.last_output
                )
            };
            tracing::warn!(check = %id, "check missed TTL, is now critical");
            let changed = c.set(CRITICAL, output, now);
            self.after_check_update(g, &id, changed);
            g = self.lock();
        }
    }

    /// Removes every service with a check critical for longer than its
    /// `DeregisterCriticalServiceAfter`.
    pub fn reap(&self, now: Instant) {
        let mut g = self.lock();
        let mut doomed: Vec<String> = g
            .checks
            .values()
            .filter(|c| !c.service_id.is_empty() && c.status == CRITICAL)
            .filter(|c| match (c.spec.deregister_after, c.critical_since) {
                (Some(after), Some(since)) => now.duration_since(since) > after,
                _ => false,
            })
            .map(|c| c.service_id.clone())
            .collect();
        doomed.sort();
        doomed.dedup();
        for id in doomed {
            if !g.services.contains_key(&id) {
                continue;
            }
            let idx = g.bump();
            if g.remove_service(&id, idx) {
                tracing::info!(service = %id, "check for service has been critical for too long; deregistered service");
                let idx = refresh_aliases_of(&mut g, &id, now).unwrap_or(idx);
                self.publish(idx);
            }
        }
    }
}

/// Gives every alias check of local service `target` the aggregate status of `target`'s checks;
/// the index of the last change, if any.
fn refresh_aliases_of(g: &mut Inner, target: &str, now: Instant) -> Option<u64> {
    let ids: Vec<String> = g
        .aliases
        .get(target)
        .map(|s| s.iter().cloned().collect())
        .unwrap_or_default();
    let mut last = None;
    for id in ids {
        last = refresh_alias(g, &id, now).or(last);
    }
    last
}

/// Sets alias check `id` to the aggregate of what it aliases, as Consul's alias check does:
/// critical if a related check is critical, else warning if one warns, else passing ("No checks
/// found." when there are none); critical when the aliased service is not registered. Checks
/// of the node (no service) count as related. The index of the change, if it changed.
fn refresh_alias(g: &mut Inner, id: &str, now: Instant) -> Option<u64> {
    let target = g
        .checks
        .get(id)
        .and_then(|c| g.local_alias_target(c))?
        .to_owned();
    let (mut status, mut output) = (PASSING, "No checks found.".to_owned());
    // The node's checks and the target's, from the index (no scan of every check).
    let mut related_ids = g.check_ids_of("");
    related_ids.extend(g.check_ids_of(&target));
    let related = related_ids
        .iter()
        .filter(|c| c.as_str() != id)
        .filter_map(|c| g.checks.get(c));
    let mut found = false;
    for c in related {
        found |= c.service_id == target;
        if c.status == CRITICAL || c.status == WARNING {
            if status != CRITICAL {
                status = if c.status == CRITICAL {
                    CRITICAL
                } else {
                    WARNING
                };
                output = format!("Aliased check {:?} failing: {}", c.spec.name, c.output);
            }
        } else if status == PASSING {
            output = "All checks passing.".to_owned();
        }
    }
    if !found && !g.services.contains_key(&target) {
        status = CRITICAL;
        output = format!(
            "Service {target} could not be found on node {}",
            g.node_name
        );
    }
    let check = g.checks.get_mut(id)?;
    if !check.set(status, output, now) {
        return None;
    }
    let idx = g.bump();
    let check = g.checks.get_mut(id)?;
    check.modify_index = idx;
    let owner = check.service_id.clone();
    if let Some(name) = g.services.get(&owner).map(|s| s.name.clone()) {
        g.touch_name(&name, idx);
    }
    Some(idx)
}
