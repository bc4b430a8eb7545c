//! Liveness is twinreg's business: which instances this replica owns ([`owned`]), and the tasks
//! that keep them — the registries' own keepers and followers ([`crate::registry::Registry::start`]),
//! what they report acted on by the coordinator, and the expiry of instances whose heartbeats
//! stopped, checked every [`owned::BUCKET`].

pub mod owned;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::registry::ObservedSender;
use crate::replicate::Coordinator;

/// Reports a registry may queue before its follower waits for the coordinator.
const OBSERVED_QUEUE: usize = 1024;

/// Starts every registry's keeper and follower, the loop acting on what they report, and the
/// expiry loop, all until `stop`.
pub fn start(coordinator: &Arc<Coordinator>, tasks: &TaskTracker, stop: CancellationToken) {
    let (tx, mut rx) = tokio::sync::mpsc::channel(OBSERVED_QUEUE);
    for m in coordinator.members() {
        let out = ObservedSender {
            kind: m.registry.kind(),
            tx: tx.clone(),
        };
        m.registry
            .clone()
            .start(coordinator.owned().followed(), out, stop.clone());
    }
    drop(tx);
    let c = coordinator.clone();
    let s = stop.clone();
    tasks.spawn(async move {
        loop {
            let (kind, what) = tokio::select! {
                r = rx.recv() => match r {
                    Some(r) => r,
                    None => return,
                },
                _ = s.cancelled() => return,
            };
            c.observed(kind, what).await;
        }
    });
    let c = coordinator.clone();
    let expiries = tasks.clone();
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(owned::BUCKET);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            // What is due leaves the owned set here (the gauge below counts it gone); its
            // copies leave the registries in a task of its own, so the next tick does not wait
            // for the slower registry to finish this one (100,000 instances expiring at once:
            // etcd deletes thousands in one transaction, Consul's agent deregisters them one
            // call each). A registry works on one tick at a time ([`crate::replicate::Member`]);
            // a late heartbeat meanwhile takes its instance back, and a queued removal skips
            // what is owned again when its turn comes (Consul's guard could not tell: same
            // replica, same generation). A shutdown cancels what is not removed yet: those
            // copies are left as a replica that dies leaves them.
            let due = c.owned().due(tokio::time::Instant::now());
            if !due.is_empty() {
                let (expiring, stopping) = (c.clone(), stop.clone());
                expiries.spawn(async move {
                    tokio::select! {
                        _ = expiring.expire(due) => {}
                        _ = stopping.cancelled() => {}
                    }
                });
            }
            let metrics = c.metrics();
            metrics.set_owned(c.owned().len());
            for m in c.members() {
                metrics.set_leases(m.registry.kind(), m.registry.leases_held());
            }
        }
    });
}
