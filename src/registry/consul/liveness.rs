//! What keeps this replica's Consul copies alive and followed.
//!
//! The replica registers a service of its own, `twinreg-replica-{replica}` (`Name =
//! twinreg-replica`, registered with the first instance it writes), with a TTL check of
//! [`REPLICA_TTL`] that it passes every [`PASS_EVERY`]; each instance's check aliases it. One timer in Consul per replica, whatever the number of
//! instances. When the replica dies, its check lapses, every instance it held turns critical
//! and, after `DeregisterCriticalServiceAfter`, is reaped: no zombies outlive twinreg. A pass
//! answered 404 means the agent lost the replica's service (restarted empty, or reaped it after
//! a long partition): it is registered again and every copy reported lost, to be written again.
//!
//! Following: one blocking query on `/v1/health/checks/{service}` per service this replica
//! holds instances of; every answer that changed is reported as a snapshot of that service, so
//! a copy deleted or changed behind twinreg's back is noticed within the query's round trip.
//! The checks alone say what the follow needs (the instance, from the check's service ID; its
//! holder and generation, from the notes): 51 MB for 100,000 instances from mini-consul, where
//! `/v1/health/service`, which repeats the node, its `serfHealth` check and the whole service
//! record in every entry, is 274 MB, read again after every change while a mass expiry or a
//! take-over changes the service thousands of times.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{
    Answer, CheckReader, Consul, expect_ok, go_duration, is_unknown, notes_replica, parse_notes,
    service_id,
};
use crate::model::{Instance, InstanceKey, ServiceName};
use crate::registry::{Brief, Followed, Held, Holder, Observed, ObservedSender, RegistryError};

/// The TTL of a replica's own check: how long after a replica died its instances turn critical.
pub const REPLICA_TTL: Duration = Duration::from_secs(15);
/// How often a replica passes its check (five passes per TTL: a few lost ones do no harm).
pub const PASS_EVERY: Duration = Duration::from_secs(3);
/// `Name` of every replica's own service.
pub const REPLICA_SERVICE: &str = "twinreg-replica";
/// Calls one batch (take-over, expiry) runs at once.
pub const CONCURRENCY: usize = 16;
/// How long a follow's blocking query waits.
const FOLLOW_WAIT: Duration = Duration::from_secs(60);
/// Least time between a follow's answer and its next query: changes meanwhile come together in
/// the next answer. Every change to a service makes Consul send the whole service, so while it
/// churns (a fleet registering) each replica reads it at most twice a second ...
const FOLLOW_MIN_GAP: Duration = Duration::from_millis(500);
/// ... and a large service less often still: this much more per instance in the last answer
/// (2.5 s at 100,000 instances), so following costs Consul a bounded share of its time.
const FOLLOW_GAP_PER_INSTANCE: Duration = Duration::from_micros(20);

/// ... and at least this many times what reading the last answer took here (a loaded machine or
/// a slow build reads a large service's answer slower, and its agent serializes it slower too):
/// following costs this replica at most a fifth of a core.
const FOLLOW_GAP_PER_READ: u32 = 4;

/// How long a follow waits after an answer of `instances` entries, which took `read` to read and
/// decode, before asking again.
fn follow_gap(instances: usize, read: Duration) -> Duration {
    FOLLOW_MIN_GAP
        + (FOLLOW_GAP_PER_INSTANCE * u32::try_from(instances).unwrap_or(u32::MAX))
            .max(read * FOLLOW_GAP_PER_READ)
}

/// Holder of a copy from its check's notes, as seen by `me`.
pub(super) fn holder(notes: &str, me: &str) -> Holder {
    match notes_replica(notes) {
        Some(r) if r == me => Holder::Me,
        Some(r) => Holder::Replica(r.to_owned()),
        None => Holder::Other,
    }
}

impl Consul {
    pub(super) fn replica_service_id(&self) -> String {
        format!("{REPLICA_SERVICE}-{}", self.replica)
    }

    /// Registers this replica's service and passes its check, once (again after the agent lost it).
    pub(super) async fn ensure_replica(&self) -> Result<(), RegistryError> {
        if self.replica_registered.load(Ordering::Acquire) {
            return Ok(());
        }
        self.register_replica().await
    }

    async fn register_replica(&self) -> Result<(), RegistryError> {
        let sid = self.replica_service_id();
        let payload = json!({
            "ID": sid,
            "Name": REPLICA_SERVICE,
            "Meta": {"replica": self.replica},
            "Check": {
                "CheckID": format!("service:{sid}"),
                "Name": "twinreg replica alive",
                "TTL": go_duration(REPLICA_TTL),
                "Status": "passing",
                "Notes": "passed by the twinreg replica; the checks of the instances it holds alias it",
                "DeregisterCriticalServiceAfter": go_duration(self.deregister_after),
            },
        });
        self.put_service(&payload, "agent/service/register (replica)")
            .await?;
        self.replica_registered.store(true, Ordering::Release);
        Ok(())
    }

    /// Passes the replica's check every [`PASS_EVERY`] until `stop`; when the agent no longer
    /// knows it, registers it again and reports every copy lost.
    pub(super) async fn keep_replica_alive(
        self: Arc<Self>,
        out: ObservedSender,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(PASS_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            // Registered with the first instance written: a replica that holds nothing leaves
            // nothing in Consul.
            if !self.replica_registered.load(Ordering::Acquire) {
                continue;
            }
            let path = format!("/v1/agent/check/pass/service:{}", self.replica_service_id());
            let answer =
                tokio::time::timeout(PASS_EVERY, self.call(Method::PUT, &path, None)).await;
            match answer {
                Ok(Ok((status, body))) if is_unknown(status, &body) => {
                    tracing::warn!(
                        "consul agent lost this replica's service; registering it and every instance again"
                    );
                    self.replica_registered.store(false, Ordering::Release);
                    if self.register_replica().await.is_ok() && !out.send(Observed::LostAll).await {
                        return;
                    }
                }
                Ok(Ok((status, body))) => {
                    if let Err(e) = expect_ok(status, &body, "agent/check/pass (replica)") {
                        tracing::debug!(error = %e, "consul: passing this replica's check failed");
                    }
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "consul: passing this replica's check failed")
                }
                Err(_) => tracing::debug!("consul: passing this replica's check timed out"),
            }
        }
    }

    /// The copy of one instance, with its holder, from the service's health entries.
    pub(super) async fn held_copy(&self, key: &InstanceKey) -> Result<Option<Held>, RegistryError> {
        Ok(self
            .agent_health(key)
            .await?
            .and_then(|e| e.into_copy(&key.service))
            .filter(|(i, _, _)| i.key == *key)
            .map(|(instance, live, notes)| Held {
                instance,
                revision: 0,
                holder: holder(&notes, &self.replica),
                live,
            }))
    }

    /// Deregisters the instance if its check still names this replica and its generation.
    pub(super) async fn expire_one(&self, i: &Instance) -> Result<bool, RegistryError> {
        let Some(notes) = self.stored_notes(&i.key).await? else {
            return Ok(false);
        };
        if notes_replica(&notes) != Some(self.replica.as_str())
            || parse_notes(&notes).1 != i.generation
        {
            tracing::debug!(instance = %i.key, "consul copy is no longer this replica's: not expired");
            return Ok(false);
        }
        let (status, body) = self
            .call(
                Method::PUT,
                &format!("/v1/agent/service/deregister/{}", service_id(&i.key)),
                None,
            )
            .await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(false);
        }
        expect_ok(status, &body, "agent/service/deregister")?;
        Ok(true)
    }

    /// Keeps one blocking query per followed service, started and stopped as `followed` changes.
    pub(super) async fn follow(
        self: Arc<Self>,
        mut followed: Followed,
        out: ObservedSender,
        stop: CancellationToken,
    ) {
        let mut running: HashMap<ServiceName, CancellationToken> = HashMap::new();
        loop {
            let wanted = followed.borrow_and_update().clone();
            running.retain(|s, t| {
                let keep = wanted.contains(s);
                if !keep {
                    t.cancel();
                }
                keep
            });
            for s in wanted {
                if let std::collections::hash_map::Entry::Vacant(slot) = running.entry(s) {
                    let token = stop.child_token();
                    tokio::spawn(self.clone().follow_service(
                        slot.key().clone(),
                        out.clone(),
                        token.clone(),
                    ));
                    slot.insert(token);
                }
            }
            tokio::select! {
                changed = followed.changed() => if changed.is_err() { return },
                _ = stop.cancelled() => return,
            }
        }
    }

    async fn follow_service(
        self: Arc<Self>,
        service: ServiceName,
        out: ObservedSender,
        stop: CancellationToken,
    ) {
        let mut index: u64 = 0;
        // After a blocking query's answer, and after the first read of a service (or the first
        // after a failure), one plain read: an answer counts as read when its query was sent,
        // so a copy recorded while it was on its way is judged only by a later answer. Without
        // it, a copy written and then lost before that answer would wait for the service's
        // next change: the first read of a service races with the very register that started
        // following it, and a deregistration right after that register changes nothing more.
        let mut confirm = false;
        let mut attempt = 0u32;
        let bound = FOLLOW_WAIT + FOLLOW_WAIT / 16 + Duration::from_secs(5);
        loop {
            let first = index == 0 && !confirm;
            let plain = index == 0 || confirm;
            let path = if plain {
                format!("/v1/health/checks/{service}")
            } else {
                format!(
                    "/v1/health/checks/{service}?index={index}&wait={}s",
                    FOLLOW_WAIT.as_secs()
                )
            };
            let me = &self.replica;
            let reader = CheckReader::new(&service, |(key, notes): (InstanceKey, String)| {
                Some(Brief {
                    holder: holder(&notes, me),
                    key,
                    generation: parse_notes(&notes).1,
                    revision: 0,
                })
            });
            let read_at = tokio::time::Instant::now();
            let query = self.query(&path, if plain { 0 } else { index }, reader);
            let answer = tokio::select! {
                a = tokio::time::timeout(bound, query) => a,
                _ = stop.cancelled() => return,
            };
            match answer {
                Ok(Ok(health)) => {
                    attempt = 0;
                    let (new_index, held) = match health {
                        Answer::Same { index } => (index, None),
                        Answer::Changed {
                            index,
                            entries,
                            read,
                        } => (index, Some((entries, read))),
                    };
                    index = super::next_index(index, new_index);
                    let Some((held, read)) = held else {
                        continue;
                    };
                    confirm = !plain || first;
                    let next = tokio::time::Instant::now() + follow_gap(held.len(), read);
                    let snapshot = Observed::Snapshot {
                        service: Some(service.clone()),
                        held,
                        read_at,
                    };
                    if !out.send(snapshot).await {
                        return;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep_until(next) => {}
                        _ = stop.cancelled() => return,
                    }
                }
                other => {
                    if let Ok(Err(e)) = other {
                        tracing::debug!(%service, error = %e, "consul follow failed; retrying");
                    }
                    attempt = attempt.saturating_add(1);
                    index = 0;
                    tokio::select! {
                        _ = tokio::time::sleep(crate::registry::watch_backoff(attempt)) => {}
                        _ = stop.cancelled() => return,
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_service_is_followed_less_often() {
        let fast = Duration::from_millis(1);
        assert_eq!(follow_gap(0, Duration::ZERO), FOLLOW_MIN_GAP);
        assert_eq!(follow_gap(100_000, fast), Duration::from_millis(2500));
        assert!(follow_gap(10, fast) < follow_gap(10_000, fast));
        // An answer that was slow to read here is read less often.
        assert_eq!(
            follow_gap(10_000, Duration::from_secs(1)),
            FOLLOW_MIN_GAP + Duration::from_secs(4)
        );
    }

    #[test]
    fn the_holder_comes_from_the_notes() {
        assert_eq!(
            holder("twinreg ttl_seconds=30 generation=2 replica=a", "a"),
            Holder::Me
        );
        assert_eq!(
            holder("twinreg ttl_seconds=30 generation=2 replica=b", "a"),
            Holder::Replica("b".into())
        );
        assert_eq!(
            holder("twinreg ttl_seconds=30 generation=2", "a"),
            Holder::Other
        );
    }
}
