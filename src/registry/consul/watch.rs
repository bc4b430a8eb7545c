//! The Consul side of a service watch: a blocking-query loop on `/v1/health/service/{service}`,
//! following Consul's rules for `X-Consul-Index` (`docs/consul.md`, "Blocking queries"):
//!
//! - the first query (index 0) does not block and gives the starting set;
//! - a return whose index did not move is not a change: the body is not even read, only
//!   [`Feed::Alive`] is sent (blocking queries also return at their `wait` with no change);
//! - an index that went backwards (the agent restarted, a snapshot was restored) resets to 0, so
//!   the next query re-reads everything without blocking;
//! - the index is never sent as 0 once known (Consul never sends 0; a 0 would turn the query into
//!   a non-blocking busy loop).
//!
//! Every answer is a full set ([`Feed::Snapshot`]); the hub turns sets into per-instance events,
//! so a return that changed nothing twinreg cares about (another service's check, a heartbeat)
//! emits nothing.

use std::sync::Arc;
use std::time::Duration;

use super::{Answer, Consul, KIND};
use crate::model::ServiceName;
use crate::registry::RegistryError;
use crate::registry::{Feed, FeedSender};

/// Extra time granted beyond `wait`: Consul adds up to wait/16 of jitter, plus the round trip.
const GRACE: Duration = Duration::from_secs(5);

impl Consul {
    /// Runs the blocking-query loop until `out` closes. `every` is the query's `wait`, so an
    /// answer (changed or not) arrives at least that often while Consul is up.
    pub(super) async fn watch_loop(
        self: Arc<Self>,
        service: ServiceName,
        every: Duration,
        out: FeedSender,
    ) {
        let wait = every.max(Duration::from_secs(1));
        let bound = wait + wait / 16 + GRACE;
        let mut index: u64 = 0;
        let mut attempt = 0u32;
        loop {
            let path = if index == 0 {
                format!("/v1/health/service/{service}")
            } else {
                format!(
                    "/v1/health/service/{service}?index={index}&wait={}ms",
                    wait.as_millis()
                )
            };
            let known = index;
            let query = self.health(&path, &service, known, |(i, alive, _)| alive.then_some(i));
            let answer = tokio::select! {
                a = tokio::time::timeout(bound, query) => a,
                _ = out.closed() => return,
            };
            let failure = match answer {
                Ok(Ok(health)) => {
                    attempt = 0;
                    let (new_index, item) = match health {
                        Answer::Same { index } => (index, Feed::Alive),
                        Answer::Changed { index, entries, .. } => (index, Feed::Snapshot(entries)),
                    };
                    index = super::next_index(index, new_index);
                    if !out.send(item).await {
                        return;
                    }
                    continue;
                }
                Ok(Err(e)) => e,
                Err(_) => RegistryError::unreachable(
                    KIND,
                    format!(
                        "consul: a blocking query with wait {} ms got no answer within {} ms",
                        wait.as_millis(),
                        bound.as_millis()
                    ),
                ),
            };
            tracing::debug!(%service, error = %failure, "consul watch failed; retrying");
            attempt += 1;
            if !out.lost(failure, attempt).await {
                return;
            }
        }
    }
}
