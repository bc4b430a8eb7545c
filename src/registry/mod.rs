//! The registry trait and one adapter per registry. The coordinator speaks only this trait.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use async_trait::async_trait;
use serde::Serialize;

use crate::model::{Instance, InstanceId, InstanceKey, ServiceName};
pub use error::{RegistryError, RegistryErrorKind};

pub mod consul;
pub mod error;
pub mod etcd;
pub mod memory;
pub mod transport;

/// Each registry call's deadline when the configuration does not say (`timeout_ms`).
pub const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(1500);
/// Warm connections per registry when the configuration does not say (`pool_size`).
pub const DEFAULT_POOL_SIZE: usize = 2;

/// Why a registry adapter could not be built at start-up: its TLS files, or an endpoint it
/// cannot use.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("{0}")]
    Registry(#[from] RegistryError),
}

/// Which registry. The primary is etcd: its record wins where the two disagree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RegistryKind {
    Etcd,
    Consul,
}

impl RegistryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Etcd => "etcd",
            Self::Consul => "consul",
        }
    }
}

impl fmt::Display for RegistryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The revision a registry stored a copy at (etcd's `mod_revision`), which guards a later removal
/// or take-over of exactly that copy; 0 where the registry has no such guard (Consul).
pub type Revision = i64;

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The copy is stored, held by this replica, at this revision.
    At(Revision),
    /// A newer generation (a later write or deregistration) is there: nothing was written.
    Fenced,
}

/// Who keeps a copy alive in a registry: whose lease (etcd) or whose replica check (Consul) it
/// hangs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// This replica.
    Me,
    /// Another twinreg replica, by its id.
    Replica(String),
    /// Nothing twinreg knows: no lease, a lease no live replica announces, another tool's check.
    Other,
}

/// A copy as a registry holds it.
#[derive(Debug, Clone)]
pub struct Held {
    pub instance: Instance,
    pub revision: Revision,
    pub holder: Holder,
    /// Counts as live there (Consul keeps a copy whose check went critical until it reaps it).
    pub live: bool,
}

/// One copy, as the sweep compares copies: which instance, which generation, and whether it is
/// live there. (A service of 100,000 instances is read whole from both registries every sweep:
/// this is all that is kept of each copy.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub id: InstanceId,
    pub generation: u64,
    pub live: bool,
}

impl Listed {
    pub fn live(i: &Instance) -> Self {
        Self {
            id: i.key.id.clone(),
            generation: i.generation,
            live: true,
        }
    }
}

/// What a snapshot keeps of a copy: enough to compare it with what this replica owns (a
/// snapshot of a service of 100,000 instances holds no record).
#[derive(Debug, Clone)]
pub struct Brief {
    pub key: InstanceKey,
    pub generation: u64,
    pub revision: Revision,
    pub holder: Holder,
}

impl Held {
    pub fn brief(self) -> Brief {
        Brief {
            key: self.instance.key,
            generation: self.instance.generation,
            revision: self.revision,
            holder: self.holder,
        }
    }
}

/// What a registry reports while it follows the copies twinreg keeps in it
/// ([`Registry::start`]), so a replica notices at once a copy deleted or changed behind its back,
/// and an instance another replica took over.
#[derive(Debug, Clone)]
pub enum Observed {
    /// A copy appeared or changed.
    Put(Held),
    /// A copy went away; `deregistered` when a deregistration or an expiry removed it (its
    /// tombstone came with it), false when it vanished behind twinreg's back.
    Gone {
        key: InstanceKey,
        deregistered: bool,
    },
    /// Everything the registry holds of `service` (of every service when `None`), as a read
    /// sent at `read_at` found it: a copy recorded before then and not in it is gone (one
    /// recorded since may be missing only because the answer is older).
    Snapshot {
        service: Option<ServiceName>,
        held: Vec<Brief>,
        read_at: tokio::time::Instant,
    },
    /// The registry lost every copy this replica keeps there (a Consul agent restarted empty):
    /// all of them must be written again.
    LostAll,
    /// A replica went away: the copies it held, which live replicas take over.
    Orphans(Vec<Held>),
}

/// One member of a registry's cluster (etcd), as the status page shows it: what the member list
/// says of it, and what its own status says when it could be read. No credential is in it (URLs
/// are shown without user info).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterMember {
    /// Its `--name` (empty for a member added but not started yet).
    pub name: String,
    /// Its member ID in hex, as `etcdctl member list` prints it.
    pub id: String,
    /// The URLs it serves clients on.
    pub client_urls: Vec<String>,
    /// The URLs it talks to the other members on.
    pub peer_urls: Vec<String>,
    /// It is the raft leader, as the members that answered report it (those of the newest term).
    pub leader: bool,
    /// A learner: a non-voting member catching up with the log.
    pub learner: bool,
    /// Whether its own status was read: `false` when that failed (`error` says why), `null`
    /// when twinreg has no connection to it to ask (none of `etcd.endpoints` reaches it).
    pub reachable: Option<bool>,
    /// The etcd version it runs (from its status).
    pub version: Option<String>,
    /// The size of its database file, in bytes (from its status).
    pub db_size_bytes: Option<i64>,
    /// The raft term it is in (from its status).
    pub raft_term: Option<u64>,
    /// Errors it reports about itself (alarms such as `NOSPACE`), from its status.
    pub reported_errors: Vec<String>,
    /// Why its status was not read.
    pub error: Option<String>,
}

/// Where a registry's follow sends what it observes.
#[derive(Clone)]
pub struct ObservedSender {
    pub kind: RegistryKind,
    pub tx: tokio::sync::mpsc::Sender<(RegistryKind, Observed)>,
}

impl ObservedSender {
    /// False once nobody listens any more.
    pub async fn send(&self, o: Observed) -> bool {
        self.tx.send((self.kind, o)).await.is_ok()
    }
}

/// The services this replica holds instances of, kept current: what a registry that follows per
/// service (Consul) must cover.
pub type Followed = tokio::sync::watch::Receiver<BTreeSet<ServiceName>>;

/// One item of a registry's watch of a service (see [`Registry::watch`]).
#[derive(Debug, Clone)]
pub enum Feed {
    /// The complete set of live instances, replacing everything sent before: the first answer,
    /// and a resync when the registry cannot say what changed (etcd compacted the history,
    /// every Consul blocking query).
    Snapshot(Vec<Instance>),
    /// An instance appeared or its record changed.
    Put(Instance),
    /// An instance went away (or its record can no longer be read as an instance).
    Delete(InstanceId),
    /// The registry answered and reported no change: the watch is alive.
    Alive,
    /// The upstream watch broke. The feed keeps reconnecting; what follows continues from where
    /// it left off (etcd resumes from its last revision) or is a fresh snapshot.
    Lost(RegistryError),
}

/// Where a registry's watch sends its [`Feed`]; the watch ends when the receiver is dropped.
#[derive(Clone)]
pub struct FeedSender {
    pub kind: RegistryKind,
    pub tx: tokio::sync::mpsc::Sender<(RegistryKind, Feed)>,
}

impl FeedSender {
    /// False once nobody listens any more: the watch should stop.
    pub async fn send(&self, item: Feed) -> bool {
        self.tx.send((self.kind, item)).await.is_ok()
    }

    /// Resolves when nobody listens any more.
    pub async fn closed(&self) {
        self.tx.closed().await
    }

    /// Reports a broken watch, then waits out the backoff of its `attempt`-th reconnect; false
    /// when nobody listens any more (the watch should stop).
    pub async fn lost(&self, error: RegistryError, attempt: u32) -> bool {
        if !self.send(Feed::Lost(error)).await {
            return false;
        }
        tokio::select! {
            _ = tokio::time::sleep(watch_backoff(attempt)) => true,
            _ = self.closed() => false,
        }
    }
}

/// How long a polling watch waits between reads, and how long [`Registry::watch`] implementations
/// back off (at most) between reconnects.
pub const WATCH_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// The pause before a watch's next reconnect: 100 ms doubling to [`WATCH_RETRY_MAX`], half of it
/// random so many watches do not reconnect in step.
pub fn watch_backoff(attempt: u32) -> std::time::Duration {
    const BACKOFF: crate::backoff::Backoff = crate::backoff::Backoff::new(
        std::time::Duration::from_millis(100),
        WATCH_RETRY_MAX,
        crate::backoff::Jitter::Half,
    );
    BACKOFF.delay(attempt)
}

/// Everything twinreg needs from a registry.
#[async_trait]
pub trait Registry: Send + Sync + 'static {
    fn kind(&self) -> RegistryKind;

    /// Idempotent upsert: afterwards exactly one record for the key exists, equal to `instance`,
    /// held by this replica (on its lease, under its replica check) — unless the registry holds a
    /// record of a newer generation, which is left as it is (fencing: an old write never undoes a
    /// newer one). Both count as success.
    async fn register(&self, instance: &Instance) -> Result<Written, RegistryError>;

    /// [`Self::register`] for a client's registration, whose generation was taken just now and so
    /// is newer than anything stored (the fence exists for re-driven and restored writes, which
    /// carry older generations): one guarded write, no read first.
    async fn register_new(&self, instance: &Instance) -> Result<Written, RegistryError> {
        self.register(instance).await
    }

    /// The copy the registry holds for the key, with its revision and holder; `None` when absent.
    async fn held(&self, key: &InstanceKey) -> Result<Option<Held>, RegistryError>;

    /// Makes this replica the holder of each copy, in one guarded write each: only where the copy
    /// is still exactly as read (its revision), so a take-over never overwrites a newer write.
    /// Per copy: its new revision, or `None` when it changed since it was read.
    async fn take_over(&self, copies: &[Held]) -> Result<Vec<Option<Revision>>, RegistryError>;

    /// Removes the copies of instances whose heartbeats stopped, each only where this replica
    /// still holds it at the revision it wrote (a copy another replica took over, or a newer
    /// registration, is left alone), and remembers the removal as a deregistration of the
    /// instance's generation. Per copy: whether it was removed. Default: a deregistration each.
    async fn expire(&self, copies: &[(Instance, Revision)]) -> Result<Vec<bool>, RegistryError> {
        let mut out = Vec::with_capacity(copies.len());
        for (i, _) in copies {
            out.push(self.deregister(&i.key, i.generation).await?);
        }
        Ok(out)
    }

    /// Starts what keeps this replica's copies alive and followed (etcd: its shared leases, its
    /// announcement, a watch on the prefix; Consul: its replica check, blocking queries on the
    /// services in `followed`), reporting to `out` until `stop`. Default: nothing to start.
    fn start(
        self: Arc<Self>,
        _followed: Followed,
        _out: ObservedSender,
        _stop: tokio_util::sync::CancellationToken,
    ) {
    }

    /// Copies one [`Self::expire`] or [`Self::take_over`] call should carry, so that it fits in
    /// the registry's deadline: etcd writes a batch in a few transactions, Consul one call (two,
    /// for an expiry) per copy.
    fn batch(&self) -> usize {
        500
    }

    /// Leases this replica holds in the registry now (etcd), for metrics.
    fn leases_held(&self) -> usize {
        0
    }

    /// Removes the instance unless the registry holds a registration newer than `generation`;
    /// `Ok(true)` when a record was removed.
    async fn deregister(&self, key: &InstanceKey, generation: u64) -> Result<bool, RegistryError>;

    /// The record the registry holds for the key, alive or not.
    async fn get(&self, key: &InstanceKey) -> Result<Option<Instance>, RegistryError>;

    /// The live instances of one service.
    async fn list(&self, service: &ServiceName) -> Result<Vec<Instance>, RegistryError>;

    /// Every copy of `service`'s instances the registry holds, live or not, as the sweep compares
    /// them (Consul keeps an instance whose TTL check went critical until it reaps it; the sweep
    /// removes a deregistered instance's leftovers whether or not they are live). Default: the
    /// live ones.
    async fn inventory(&self, service: &ServiceName) -> Result<Vec<Listed>, RegistryError> {
        Ok(self.list(service).await?.iter().map(Listed::live).collect())
    }

    /// Watches one service's live instances until `out` is closed, in a task of its own.
    /// `every` is how often the watch proves the registry is still answering (an [`Feed::Alive`]
    /// at least that often while it is). A broken watch sends [`Feed::Lost`] and reconnects by
    /// itself, with backoff; it never ends on its own. Default: re-reads [`Self::list`] every
    /// `every` and sends a snapshot (for registries without a native watch).
    fn watch(self: Arc<Self>, service: ServiceName, every: std::time::Duration, out: FeedSender) {
        tokio::spawn(async move {
            loop {
                let bound = every.max(std::time::Duration::from_secs(1));
                let item = match tokio::time::timeout(bound, self.list(&service)).await {
                    Ok(Ok(set)) => Feed::Snapshot(set),
                    Ok(Err(e)) => Feed::Lost(e),
                    Err(_) => Feed::Lost(RegistryError::timeout(self.kind(), bound)),
                };
                if !out.send(item).await {
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(every.min(WATCH_RETRY_MAX)) => {}
                    _ = out.closed() => return,
                }
            }
        });
    }

    /// Names of services that may hold twinreg instances.
    async fn services(&self) -> Result<BTreeSet<ServiceName>, RegistryError>;

    /// A cheap round trip proving the registry answers.
    async fn probe(&self) -> Result<(), RegistryError>;

    /// Deregistrations this registry still remembers for `service` (id → generation), so the
    /// anti-entropy sweep can tell "deregistered" from "never arrived". Default: none.
    async fn tombstones(
        &self,
        _service: &ServiceName,
    ) -> Result<BTreeMap<InstanceId, u64>, RegistryError> {
        Ok(BTreeMap::new())
    }

    /// Takes or keeps the anti-entropy sweeper's leadership for `holder` (one replica sweeps at
    /// a time); `Ok(false)` when another replica holds it or the registry cannot elect.
    async fn lead(&self, _holder: &str, _ttl: std::time::Duration) -> Result<bool, RegistryError> {
        Ok(false)
    }

    /// Who holds the sweeper's leadership now (the `holder` of [`Self::lead`]), for the status
    /// page; `Ok(None)` when nobody does or the registry cannot elect.
    async fn leader(&self) -> Result<Option<String>, RegistryError> {
        Ok(None)
    }

    /// The members of the registry's cluster, each with what its own status says, for the status
    /// page. Every read gives up after `within`: a member that has not answered by then is listed
    /// as unreachable, not left out. Default: none (a registry without members to show).
    async fn cluster_members(
        &self,
        _within: std::time::Duration,
    ) -> Result<Vec<ClusterMember>, RegistryError> {
        Ok(Vec::new())
    }
}

/// A registry's state as `/readyz` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RegistryState {
    /// Never answered yet (start-up).
    Connecting,
    /// Answered its last call.
    Up,
    /// Its last call failed.
    Down,
}

/// The last known state of a registry, shared by the probe loop, the coordinator and `/readyz`.
#[derive(Debug, Default)]
pub struct Health(AtomicU8);

impl Health {
    pub fn get(&self) -> RegistryState {
        match self.0.load(Ordering::Relaxed) {
            0 => RegistryState::Connecting,
            1 => RegistryState::Up,
            _ => RegistryState::Down,
        }
    }

    pub fn set(&self, state: RegistryState) {
        let v = match state {
            RegistryState::Connecting => 0,
            RegistryState::Up => 1,
            RegistryState::Down => 2,
        };
        self.0.store(v, Ordering::Relaxed);
    }

    /// Records the outcome of a call: any answer proves the registry is up.
    pub fn observe<T>(&self, r: &Result<T, RegistryError>) {
        match r {
            Ok(_) => self.set(RegistryState::Up),
            Err(e) if e.retryable() => self.set(RegistryState::Down),
            Err(_) => self.set(RegistryState::Up),
        }
    }
}
