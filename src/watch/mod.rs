//! Watches: one merged, resumable view per watched service, shared by all its watchers.
//!
//! The first watcher of a service (a gRPC `Watch`, or a REST long poll) starts a *hub*: one
//! upstream watch per registry ([`Registry::watch`]: an etcd watch, a Consul blocking-query loop)
//! feeding one merged view (the union; etcd's record wins), published to every watcher of the
//! service. Many watchers share one upstream watch per registry. A hub outlives its last watcher
//! by `watch.linger`, so a watcher that reconnects resumes.
//!
//! Each watcher turns the views it sees into events: `ADDED`, `MODIFIED`, `DELETED` per instance,
//! `EMPTY` when the last one goes, and a `PROGRESS` frame every `watch.progress_interval`. Views
//! are content-indexed ([`crate::merge::view_index`], the REST `index`), and the hub keeps
//! recent ones ([`view::History`]), so a watcher that gives the index it last saw gets only what
//! changed since — or a snapshot when that set is unknown here.
//!
//! What a watcher is never left with: a view emptied because a registry went quiet (a feed that
//! breaks keeps its last set for a few seconds, and when none answers the last view stays, marked
//! stale, and the stream ends with UNAVAILABLE after [`STALE_LIMIT`]); a silent stream (PROGRESS
//! frames); a blocking-query return mistaken for a change (changes are computed from sets).

#[cfg(test)]
mod tests;
pub mod view;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::merge::{Sourced, view_index};
use crate::metrics::Metrics;
use crate::model::ServiceName;
use crate::registry::{FeedSender, Registry, RegistryKind};
use view::{Change, History, Merger, Set, View, diff};

pub const DEFAULT_PROGRESS_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_LINGER: Duration = Duration::from_secs(60);
/// A watch whose view no registry has fed for this long ends with UNAVAILABLE, so its client
/// reconnects (perhaps to a replica that reaches a registry) instead of trusting a stale view.
pub const STALE_LIMIT: Duration = Duration::from_secs(30);
/// Changes arriving within this window are published as one view.
const DEBOUNCE: Duration = Duration::from_millis(30);
/// A write through twinreg reaches etcd and Consul moments apart. While the registries feeding
/// the view disagree, publishing waits up to this long for them to agree, so watchers see one
/// ADDED naming both registries rather than ADDED then MODIFIED (and a long poll returns the
/// settled set). A disagreement that lasts (a change behind twinreg's back in one registry) is
/// published when it ends.
const SETTLE: Duration = Duration::from_millis(500);
/// How long a new hub waits for every registry's first answer before publishing without it.
const FIRST_SYNC: Duration = Duration::from_secs(3);
/// Diffs longer than this give intermediate events index 0 (computing each intermediate set's
/// index costs a pass over the set); resuming from 0 gives a snapshot.
const INDEXED_DIFF: usize = 32;

/// `[watch]` settings.
#[derive(Debug, Clone)]
pub struct WatchSettings {
    pub progress_interval: Duration,
    pub linger: Duration,
}

impl Default for WatchSettings {
    fn default() -> Self {
        Self {
            progress_interval: DEFAULT_PROGRESS_INTERVAL,
            linger: DEFAULT_LINGER,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Added,
    Modified,
    Deleted,
    Empty,
    Progress,
}

/// One event of a watch stream.
#[derive(Debug, Clone)]
pub struct Event {
    pub kind: EventKind,
    /// The instance (ADDED, MODIFIED: new record; DELETED: last record) and its registries.
    pub instance: Option<Sourced>,
    /// Index of the set after this event; 0 when that set is not a point to resume from.
    pub index: u64,
    /// Part of a snapshot (the complete set replacing what the client holds).
    pub snapshot: bool,
    /// Registries feeding the view now.
    pub registries: Vec<RegistryKind>,
}

/// The hubs of one replica.
pub struct Watches {
    registries: Vec<Arc<dyn Registry>>,
    settings: WatchSettings,
    hubs: Mutex<HashMap<ServiceName, Arc<Hub>>>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
}

struct Hub {
    view: watch::Sender<Option<Arc<View>>>,
    history: Mutex<History>,
    /// Watchers holding the hub; changed only under the `hubs` lock.
    users: AtomicUsize,
    idle_since: Mutex<Option<Instant>>,
    /// Cancelled when the hub stops (shutdown): its watchers end.
    closed: CancellationToken,
}

/// A watcher's hold on a hub; dropping it lets the hub linger and stop.
struct HubRef {
    watches: Arc<Watches>,
    hub: Arc<Hub>,
}

impl Drop for HubRef {
    fn drop(&mut self) {
        let _hubs = self.watches.hubs.lock().expect("not poisoned");
        if self.hub.users.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self.hub.idle_since.lock().expect("not poisoned") = Some(Instant::now());
        }
        self.watches.metrics.watchers.dec();
    }
}

/// Why a watch or long poll cannot be served.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WatchError {
    /// No registry feeds the view (or it went stale): the caller should retry later.
    #[error("{0}")]
    Unavailable(String),
}

fn unavailable(message: impl Into<String>) -> WatchError {
    WatchError::Unavailable(message.into())
}

impl Watches {
    /// `registries` in merge order: the primary first.
    pub fn new(
        registries: Vec<Arc<dyn Registry>>,
        settings: WatchSettings,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            registries,
            settings,
            hubs: Mutex::new(HashMap::new()),
            metrics,
            stop,
        })
    }

    pub fn settings(&self) -> &WatchSettings {
        &self.settings
    }

    /// The hub of `service`, started if there is none.
    fn hub(self: &Arc<Self>, service: &ServiceName) -> HubRef {
        let mut hubs = self.hubs.lock().expect("not poisoned");
        let hub = hubs
            .entry(service.clone())
            .or_insert_with(|| {
                let (tx, _) = watch::channel(None);
                let hub = Arc::new(Hub {
                    view: tx,
                    history: Mutex::new(History::default()),
                    users: AtomicUsize::new(0),
                    idle_since: Mutex::new(None),
                    closed: CancellationToken::new(),
                });
                tokio::spawn(run_hub(self.clone(), service.clone(), hub.clone()));
                hub
            })
            .clone();
        hub.users.fetch_add(1, Ordering::AcqRel);
        self.metrics.watchers.inc();
        HubRef {
            watches: self.clone(),
            hub,
        }
    }

    /// The hub's first view, once it has one; UNAVAILABLE when no registry answered.
    async fn first_view(
        hub: &Hub,
    ) -> Result<(watch::Receiver<Option<Arc<View>>>, Arc<View>), WatchError> {
        let mut rx = hub.view.subscribe();
        let first = tokio::select! {
            first = tokio::time::timeout(FIRST_SYNC * 2, rx.wait_for(|v| v.is_some())) => first
                .map_err(|_| unavailable("the registries did not answer the watch in time; retry"))?
                .map_err(|_| unavailable("this replica is shutting down; reconnect"))?
                .clone()
                .expect("waited for Some"),
            _ = hub.closed.cancelled() => {
                return Err(unavailable("this replica is shutting down; reconnect"));
            }
        };
        if first.registries.is_empty() {
            return Err(unavailable(format!(
                "no registry answered the watch ({}); retry after the Retry-After delay",
                describe_errors(&first.errors)
            )));
        }
        Ok((rx, first))
    }

    /// Starts a watch of `service`, resuming after the set with index `resume` (0: from a
    /// snapshot).
    pub async fn subscribe(
        self: &Arc<Self>,
        service: &ServiceName,
        resume: u64,
    ) -> Result<Subscription, WatchError> {
        let hub = self.hub(service);
        let (rx, view) = Self::first_view(&hub.hub).await?;
        let mut pending = VecDeque::new();
        let known = (resume != 0)
            .then(|| hub.hub.history.lock().expect("not poisoned").get(resume))
            .flatten();
        let sent = match known {
            Some(old) => {
                transition(&old, &view, &hub.hub, &mut pending);
                view.instances.clone()
            }
            None if resume != 0 && resume == view.index => view.instances.clone(),
            None => {
                snapshot(&view, &mut pending);
                view.instances.clone()
            }
        };
        pending.push_back(progress(&view));
        let mut tick = tokio::time::interval(self.settings.progress_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.reset();
        Ok(Subscription {
            hub,
            rx,
            sent,
            pending,
            tick,
        })
    }

    /// REST long poll: the view once its index differs from `index`, or at `deadline` the
    /// current one.
    pub async fn wait_change(
        self: &Arc<Self>,
        service: &ServiceName,
        index: u64,
        deadline: Instant,
        shutdown: &CancellationToken,
    ) -> Result<Arc<View>, WatchError> {
        let hub = self.hub(service);
        let (mut rx, mut view) = Self::first_view(&hub.hub).await?;
        while view.index == index {
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    if let Some(v) = rx.borrow_and_update().clone() {
                        view = v;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => break,
                _ = shutdown.cancelled() => break,
                _ = hub.hub.closed.cancelled() => break,
            }
        }
        Ok(view)
    }

    /// Services with a running hub (for tests and the status of a replica).
    pub fn hubs(&self) -> usize {
        self.hubs.lock().expect("not poisoned").len()
    }
}

fn describe_errors(errors: &[(RegistryKind, String)]) -> String {
    errors
        .iter()
        .map(|(k, e)| format!("{k}: {e}"))
        .collect::<Vec<_>>()
        .join("; ")
}

fn progress(view: &View) -> Event {
    Event {
        kind: EventKind::Progress,
        instance: None,
        index: view.index,
        snapshot: false,
        registries: view.registries.clone(),
    }
}

/// The whole set, as a snapshot: ADDED per instance (EMPTY when none). Only the last event
/// carries the index: a snapshot cut short is not a point to resume from.
fn snapshot(view: &View, out: &mut VecDeque<Event>) {
    let n = view.instances.len();
    if n == 0 {
        out.push_back(Event {
            kind: EventKind::Empty,
            instance: None,
            index: view.index,
            snapshot: true,
            registries: view.registries.clone(),
        });
        return;
    }
    for (i, entry) in view.instances.values().enumerate() {
        out.push_back(Event {
            kind: EventKind::Added,
            instance: Some(entry.clone()),
            index: if i + 1 == n { view.index } else { 0 },
            snapshot: true,
            registries: view.registries.clone(),
        });
    }
}

/// The events from `old` to `view`: one per changed instance, then EMPTY when the last one went.
/// Each event's index is that of the set after it (remembered, so a watcher cut off mid-way
/// resumes from there), except in long diffs, where only the last one carries it.
fn transition(old: &Arc<Set>, view: &View, hub: &Hub, out: &mut VecDeque<Event>) {
    let changes = diff(old, &view.instances);
    let n = changes.len();
    let mut working = (n > 1 && n <= INDEXED_DIFF).then(|| Set::clone(old));
    for (i, (change, entry)) in changes.into_iter().enumerate() {
        let last = i + 1 == n;
        let index = match &mut working {
            _ if last => view.index,
            Some(set) => {
                match change {
                    Change::Deleted => set.remove(&entry.instance.key.id),
                    Change::Added | Change::Modified => {
                        set.insert(entry.instance.key.id.clone(), entry.clone())
                    }
                };
                let index = view_index(set.values());
                hub.history
                    .lock()
                    .expect("not poisoned")
                    .remember(index, Arc::new(set.clone()));
                index
            }
            None => 0,
        };
        out.push_back(Event {
            kind: match change {
                Change::Added => EventKind::Added,
                Change::Modified => EventKind::Modified,
                Change::Deleted => EventKind::Deleted,
            },
            instance: Some(entry),
            index,
            snapshot: false,
            registries: view.registries.clone(),
        });
    }
    if n > 0 && view.instances.is_empty() {
        out.push_back(Event {
            kind: EventKind::Empty,
            instance: None,
            index: view.index,
            snapshot: false,
            registries: view.registries.clone(),
        });
    }
}

/// One watcher's stream of events.
pub struct Subscription {
    hub: HubRef,
    rx: watch::Receiver<Option<Arc<View>>>,
    /// The set the events sent so far describe.
    sent: Arc<Set>,
    pending: VecDeque<Event>,
    tick: tokio::time::Interval,
}

impl Subscription {
    /// The next event; an error ends the stream (the replica is shutting down, or no registry
    /// has fed the view for [`STALE_LIMIT`]).
    pub async fn next(&mut self) -> Result<Event, WatchError> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Ok(e);
            }
            tokio::select! {
                _ = self.hub.hub.closed.cancelled() => {
                    return Err(unavailable("this replica is shutting down; reconnect to resume"));
                }
                changed = self.rx.changed() => {
                    if changed.is_err() {
                        return Err(unavailable("this replica is shutting down; reconnect to resume"));
                    }
                    let Some(view) = self.rx.borrow_and_update().clone() else { continue };
                    if view.instances.as_ref() != self.sent.as_ref() {
                        transition(&self.sent, &view, &self.hub.hub, &mut self.pending);
                        self.sent = view.instances.clone();
                    }
                }
                _ = self.tick.tick() => {
                    let Some(view) = self.rx.borrow().clone() else { continue };
                    if let Some(since) = view.stale_since
                        && since.elapsed() >= STALE_LIMIT
                    {
                        return Err(unavailable(format!(
                            "no registry has answered this watch for {} s ({}); reconnect to resume",
                            since.elapsed().as_secs(),
                            describe_errors(&view.errors)
                        )));
                    }
                    self.pending.push_back(progress(&view));
                }
            }
        }
    }
}

/// Runs one service's hub: starts the upstream watches, merges what they say, publishes views,
/// and stops once it has had no watcher for `linger` (or at shutdown).
async fn run_hub(watches: Arc<Watches>, service: ServiceName, hub: Arc<Hub>) {
    let every = watches.settings.progress_interval;
    let (tx, mut rx) = mpsc::channel(1024);
    let mut merger = Merger::new(watches.registries.iter().map(|r| r.kind()));
    for r in &watches.registries {
        let kind = r.kind();
        watches.metrics.watch_upstreams(kind).inc();
        r.clone().watch(
            service.clone(),
            every,
            FeedSender {
                kind,
                tx: tx.clone(),
            },
        );
    }
    drop(tx);
    let started = Instant::now();
    let mut published = false;
    let mut flush_at: Option<Instant> = None;
    let mut dirty_since: Option<Instant> = None;
    // When the view was last composed: a grace that ended since must be composed again.
    let mut composed_at = started;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        let now = Instant::now();
        let grace = merger
            .feeds
            .iter()
            .filter_map(view::FeedState::grace_ends)
            .filter(|g| *g > composed_at)
            .min();
        tokio::select! {
            item = rx.recv() => {
                let Some((kind, item)) = item else { break };
                if let Some(f) = merger.feeds.iter_mut().find(|f| f.kind == kind)
                    && f.apply(item, now)
                    && flush_at.is_none()
                {
                    flush_at = Some(now + DEBOUNCE);
                    dirty_since.get_or_insert(now);
                }
                continue;
            }
            _ = tokio::time::sleep_until(flush_at.unwrap_or(now)), if flush_at.is_some() => {
                flush_at = None;
                let since = dirty_since.unwrap_or(now);
                if published && now < since + SETTLE && !merger.agree(now) {
                    flush_at = Some((now + DEBOUNCE).min(since + SETTLE));
                    continue;
                }
                dirty_since = None;
            }
            _ = tokio::time::sleep_until(grace.unwrap_or(now)), if grace.is_some() => {}
            _ = tick.tick() => {
                if idle_for(&hub) >= Some(watches.settings.linger) && retire(&watches, &service, &hub) {
                    break;
                }
                if published {
                    continue;
                }
            }
            _ = watches.stop.cancelled() => break,
        }
        // The first view waits for every registry's first word, for at most FIRST_SYNC.
        if !published && !merger.feeds.iter().all(|f| f.reported) && started.elapsed() < FIRST_SYNC
        {
            continue;
        }
        published = true;
        composed_at = Instant::now();
        publish(&hub, &mut merger, composed_at);
    }
    for f in &merger.feeds {
        watches.metrics.watch_upstreams(f.kind).dec();
    }
    // Dropping the receiver ends the upstream watches; `closed` tells the watchers.
    drop(rx);
    hub.closed.cancel();
    let mut hubs = watches.hubs.lock().expect("not poisoned");
    if hubs.get(&service).is_some_and(|h| Arc::ptr_eq(h, &hub)) {
        hubs.remove(&service);
    }
}

/// Publishes the view the feeds give now, if it differs from the last one.
fn publish(hub: &Hub, merger: &mut Merger, now: Instant) {
    let previous = hub.view.borrow().clone();
    let view = merger.compose(previous.as_deref(), now);
    if let Some(p) = &previous
        && p.index == view.index
        && p.registries == view.registries
        && p.stale_since.is_some() == view.stale_since.is_some()
    {
        return;
    }
    hub.history
        .lock()
        .expect("not poisoned")
        .remember(view.index, view.instances.clone());
    hub.view.send_replace(Some(Arc::new(view)));
}

fn idle_for(hub: &Hub) -> Option<Duration> {
    if hub.users.load(Ordering::Acquire) > 0 {
        return None;
    }
    hub.idle_since
        .lock()
        .expect("not poisoned")
        .map(|t| t.elapsed())
}

/// Removes an idle hub from the map; false when a watcher arrived meanwhile.
fn retire(watches: &Watches, service: &ServiceName, hub: &Arc<Hub>) -> bool {
    let mut hubs = watches.hubs.lock().expect("not poisoned");
    if hub.users.load(Ordering::Acquire) > 0 {
        return false;
    }
    if hubs.get(service).is_some_and(|h| Arc::ptr_eq(h, hub)) {
        hubs.remove(service);
    }
    true
}
