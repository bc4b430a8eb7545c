//! The etcd side of a service watch: one etcd watch on the service's directory, resumed from the
//! last revision it delivered after any reconnect, proven alive by progress requests.
//!
//! - Start: a range read of the directory (a [`Feed::Snapshot`]) and its revision `R`; then a
//!   watch from `R + 1` with progress notifications on.
//! - Every `every`, a progress request: etcd answers with its current revision even when nothing
//!   changed, so a stream that stops answering (a frozen member, a cut link) is noticed within
//!   three intervals and replaced, instead of blocking forever.
//! - After a break: [`Feed::Lost`], backoff, and a new watch from the last delivered revision + 1
//!   on another member when there is one — no event is lost or repeated.
//! - When that revision has been compacted, or the cluster's revision went backwards (restored
//!   from a backup), a fresh snapshot instead.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{EventType, WatchOptions};
use tokio::time::Instant;

use super::{Etcd, KIND, KeyRead, decode_dir, decode_kv, to_err};
use crate::model::ServiceName;
use crate::registry::RegistryError;
use crate::registry::{Feed, FeedSender};

/// Progress requests that may go unanswered before the stream counts as dead.
const SILENT_ROUNDS: u32 = 3;

/// Why a watch attempt ended.
enum End {
    /// Nobody listens any more.
    Closed,
    /// The stream broke; resume from the last revision.
    Broken(RegistryError),
    /// The history to resume from is gone; start again from a snapshot.
    Resync(String),
}

impl Etcd {
    /// Runs the watch until `out` closes.
    pub(super) async fn watch_loop(
        self: Arc<Self>,
        service: ServiceName,
        every: Duration,
        out: FeedSender,
    ) {
        let dir = format!("{}/{}/", self.prefix, service);
        // The revision everything sent so far reflects; `None` until a snapshot was sent.
        let mut revision: Option<i64> = None;
        let mut attempt = 0u32;
        let mut avoid = None;
        loop {
            let end = self
                .watch_once(&dir, &service, every, &out, &mut revision, &mut avoid)
                .await;
            let lost = match end {
                End::Closed => return,
                End::Broken(e) => e,
                End::Resync(why) => {
                    tracing::info!(%service, why, "etcd watch: resyncing from a snapshot");
                    revision = None;
                    attempt = 0;
                    continue;
                }
            };
            tracing::debug!(%service, error = %lost, "etcd watch broke; reconnecting");
            attempt += 1;
            if !out.lost(lost, attempt).await {
                return;
            }
        }
    }

    async fn watch_once(
        &self,
        dir: &str,
        service: &ServiceName,
        every: Duration,
        out: &FeedSender,
        revision: &mut Option<i64>,
        avoid: &mut Option<usize>,
    ) -> End {
        let want = *avoid;
        let conn = match self
            .pool
            .client_where(|c: &super::EtcdConn| Some(c.member) != want)
            .await
        {
            Ok(c) => c,
            Err(e) => return End::Broken(e),
        };
        // Blame this member until a watch on it works.
        *avoid = Some(conn.member);
        let mut client = conn.client.clone();
        let start = match *revision {
            Some(rev) => rev + 1,
            None => {
                let mut set = Vec::new();
                let read = super::range::read_dir_pages(&mut client, dir, false, |page| {
                    set.extend(decode_dir(dir, service, &page))
                });
                let rev = match read.await {
                    Ok(r) => r,
                    Err(e) => return End::Broken(to_err(e)),
                };
                if !out.send(Feed::Snapshot(set)).await {
                    return End::Closed;
                }
                *revision = Some(rev);
                rev + 1
            }
        };
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(start)
            .with_progress_notify();
        let (mut requests, mut stream) = match client.watch(dir, Some(options)).await {
            Ok(w) => w.split(),
            Err(e) => return End::Broken(to_err(e)),
        };
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut last_heard = Instant::now();
        loop {
            let resp = tokio::select! {
                msg = stream.message() => match msg {
                    Ok(Some(r)) => r,
                    Ok(None) => {
                        return End::Broken(RegistryError::unreachable(KIND, "etcd: the watch stream was closed"));
                    }
                    Err(e) => return End::Broken(to_err(e)),
                },
                _ = tick.tick() => {
                    if last_heard.elapsed() > every * SILENT_ROUNDS {
                        return End::Broken(RegistryError::unreachable(
                            KIND,
                            format!("etcd: the watch stream did not answer for {} ms", last_heard.elapsed().as_millis()),
                        ));
                    }
                    if let Err(e) = requests.request_progress().await {
                        return End::Broken(to_err(e));
                    }
                    continue;
                }
                _ = out.closed() => return End::Closed,
            };
            last_heard = Instant::now();
            if resp.compact_revision() > 0 {
                return End::Resync(format!(
                    "revision {start} was compacted (compaction at {})",
                    resp.compact_revision()
                ));
            }
            if resp.canceled() {
                return End::Broken(RegistryError::unavailable(
                    KIND,
                    format!("etcd: the watch was cancelled: {}", resp.cancel_reason()),
                ));
            }
            let header_rev = resp.header().map_or(0, |h| h.revision());
            if resp.created() {
                if header_rev > 0 && header_rev < start - 1 {
                    return End::Resync(format!(
                        "the cluster is at revision {header_rev}, behind the {} this watch reached",
                        start - 1
                    ));
                }
                *avoid = None;
                if !out.send(Feed::Alive).await {
                    return End::Closed;
                }
                continue;
            }
            if resp.events().is_empty() {
                // A progress notification: every change up to `header_rev` has been delivered.
                if header_rev > 0 {
                    *revision = Some(revision.map_or(header_rev, |r| r.max(header_rev)));
                }
                if !out.send(Feed::Alive).await {
                    return End::Closed;
                }
                continue;
            }
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                let item = match (
                    event.event_type(),
                    decode_kv(dir, service, kv.key(), kv.value()),
                ) {
                    (_, None) => None,
                    (EventType::Delete, Some(KeyRead::Instance(i))) => Some(Feed::Delete(i.key.id)),
                    (EventType::Delete, Some(KeyRead::Garbage(id))) => Some(Feed::Delete(id)),
                    (EventType::Put, Some(KeyRead::Instance(i))) => Some(Feed::Put(i)),
                    (EventType::Put, Some(KeyRead::Garbage(id))) => {
                        tracing::warn!(key = %String::from_utf8_lossy(kv.key()), "etcd watch: a record twinreg cannot read; treating it as absent");
                        Some(Feed::Delete(id))
                    }
                };
                *revision = Some(revision.map_or(kv.mod_revision(), |r| r.max(kv.mod_revision())));
                if let Some(item) = item
                    && !out.send(item).await
                {
                    return End::Closed;
                }
            }
        }
    }
}
