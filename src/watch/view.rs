//! The merged view of one service as the hub keeps it: what each registry's feed last said, the
//! merged set published to watchers, the diff between two sets, and the recent sets by index.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::merge::{Sourced, merge, view_index};
use crate::model::{Instance, InstanceId};
use crate::registry::{Feed, RegistryKind};

/// A merged set: one entry per instance id, in id order.
pub type Set = BTreeMap<InstanceId, Sourced>;

/// A feed that broke keeps its last set in the view this long, so a blip that heals at once
/// does not flap every instance's `sources`; after it, the view is the other registry's alone.
pub const LOST_GRACE: Duration = Duration::from_secs(3);

/// What the watchers of one service see at one moment.
#[derive(Debug)]
pub struct View {
    pub index: u64,
    pub instances: Arc<Set>,
    /// Registries feeding the view now (primary first).
    pub registries: Vec<RegistryKind>,
    /// The last error of each registry not feeding it.
    pub errors: Vec<(RegistryKind, String)>,
    /// Since when no registry feeds it (the instances are the last known ones).
    pub stale_since: Option<Instant>,
}

/// What one registry's feed has said.
#[derive(Debug)]
pub struct FeedState {
    pub kind: RegistryKind,
    set: BTreeMap<InstanceId, Instance>,
    /// A snapshot arrived: `set` means something.
    synced: bool,
    /// Answering now.
    live: bool,
    lost_at: Option<Instant>,
    /// Reported anything at all (a snapshot or a failure) since the hub started.
    pub reported: bool,
    pub last_error: Option<String>,
}

impl FeedState {
    pub fn new(kind: RegistryKind) -> Self {
        Self {
            kind,
            set: BTreeMap::new(),
            synced: false,
            live: false,
            lost_at: None,
            reported: false,
            last_error: None,
        }
    }

    /// Applies one feed item; true when it may change the view.
    pub fn apply(&mut self, item: Feed, now: Instant) -> bool {
        self.reported = true;
        let was_included = self.included(now);
        match item {
            Feed::Snapshot(set) => {
                self.set = set.into_iter().map(|i| (i.key.id.clone(), i)).collect();
                self.synced = true;
            }
            Feed::Put(i) => {
                self.set.insert(i.key.id.clone(), i);
            }
            Feed::Delete(id) => {
                self.set.remove(&id);
            }
            Feed::Alive => {}
            Feed::Lost(e) => {
                self.last_error = Some(e.message);
                if self.live {
                    self.live = false;
                    self.lost_at = Some(now);
                }
                return was_included != self.included(now);
            }
        }
        self.live = true;
        self.lost_at = None;
        self.last_error = None;
        true
    }

    /// Whether its set takes part in the view: it answers, or broke less than [`LOST_GRACE`] ago.
    pub fn included(&self, now: Instant) -> bool {
        self.synced
            && (self.live
                || self
                    .lost_at
                    .is_some_and(|t| now.duration_since(t) < LOST_GRACE))
    }

    /// When its grace ends, if it is in one.
    pub fn grace_ends(&self) -> Option<Instant> {
        self.lost_at.filter(|_| !self.live).map(|t| t + LOST_GRACE)
    }
}

/// Whether the registries feeding the view hold the same records (sources aside).
pub fn agree(feeds: &[FeedState], now: Instant) -> bool {
    let mut live = feeds.iter().filter(|f| f.included(now));
    let Some(first) = live.next() else {
        return true;
    };
    live.all(|f| {
        f.set.len() == first.set.len()
            && f.set
                .iter()
                .zip(first.set.iter())
                .all(|((a, x), (b, y))| a == b && x.same_record(y))
    })
}

/// An instance the view reported gone while some registries could not speak: their copies of
/// that record (same generation or older) are stale, not new, when they come back.
#[derive(Debug)]
struct Tomb {
    generation: u64,
    absent: Vec<RegistryKind>,
}

/// The feeds of one hub and what it remembers across views.
#[derive(Debug)]
pub struct Merger {
    pub feeds: Vec<FeedState>,
    tombs: HashMap<InstanceId, Tomb>,
}

impl Merger {
    pub fn new(kinds: impl IntoIterator<Item = RegistryKind>) -> Self {
        Self {
            feeds: kinds.into_iter().map(FeedState::new).collect(),
            tombs: HashMap::new(),
        }
    }

    /// The view the feeds give now (see [`compose`]), without the stale copies of a registry
    /// that was away when an instance went: etcd back after an outage still holds the key of an
    /// instance deregistered meanwhile (until the repairer deletes it), and that copy must not
    /// bring the instance back to watchers.
    pub fn compose(&mut self, previous: Option<&View>, now: Instant) -> View {
        let mut view = compose(&self.feeds, previous, now);
        if view.registries.is_empty() {
            return view;
        }
        let tombs = &mut self.tombs;
        // A tomb ends once no absent registry holds that record any more.
        tombs.retain(|id, t| {
            self.feeds.iter().any(|f| {
                t.absent.contains(&f.kind)
                    && f.set.get(id).is_some_and(|i| i.generation <= t.generation)
            })
        });
        if !tombs.is_empty() {
            let mut set = Set::clone(&view.instances);
            set.retain(
                |id,
                 Sourced {
                     instance: i,
                     sources,
                 }| {
                    !tombs.get(id).is_some_and(|t| {
                        i.generation <= t.generation && sources.iter().all(|s| t.absent.contains(s))
                    })
                },
            );
            if set.len() != view.instances.len() {
                view.index = view_index(set.values());
                view.instances = Arc::new(set);
            }
        }
        if let Some(prev) = previous {
            let absent: Vec<RegistryKind> = self
                .feeds
                .iter()
                .filter(|f| !f.included(now))
                .map(|f| f.kind)
                .collect();
            if !absent.is_empty() {
                for (id, Sourced { instance: i, .. }) in prev.instances.iter() {
                    if !view.instances.contains_key(id) {
                        tombs.insert(
                            id.clone(),
                            Tomb {
                                generation: i.generation,
                                absent: absent.clone(),
                            },
                        );
                    }
                }
            }
        }
        view
    }

    pub fn agree(&self, now: Instant) -> bool {
        agree(&self.feeds, now)
    }
}

/// The merged view of the included feeds; `previous` supplies the instances when no feed is included (a
/// view is never emptied because the registries went quiet).
pub fn compose(feeds: &[FeedState], previous: Option<&View>, now: Instant) -> View {
    let included: Vec<&FeedState> = feeds.iter().filter(|f| f.included(now)).collect();
    let errors = feeds
        .iter()
        .filter(|f| !f.included(now))
        .map(|f| {
            let e = f
                .last_error
                .clone()
                .unwrap_or_else(|| "not answering this watch yet".into());
            (f.kind, e)
        })
        .collect();
    if included.is_empty() {
        let instances = previous.map_or_else(Default::default, |p| p.instances.clone());
        return View {
            index: view_index(instances.values()),
            instances,
            registries: Vec::new(),
            errors,
            stale_since: Some(previous.and_then(|p| p.stale_since).unwrap_or(now)),
        };
    }
    let set = merge(
        included
            .iter()
            .map(|f| (f.kind, f.set.values().cloned().collect::<Vec<_>>())),
    );
    View {
        index: view_index(set.values()),
        instances: Arc::new(set),
        registries: included.iter().map(|f| f.kind).collect(),
        errors,
        stale_since: None,
    }
}

/// How an instance changed between two sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Added,
    Modified,
    Deleted,
}

fn same(a: &Sourced, b: &Sourced) -> bool {
    a.instance.same_record(&b.instance) && a.sources == b.sources
}

/// The per-instance changes that turn `old` into `new`, in id order. Each names the instance's
/// new entry (its last one for a deletion).
pub fn diff(old: &Set, new: &Set) -> Vec<(Change, Sourced)> {
    let mut out = Vec::new();
    for (id, entry) in new {
        match old.get(id) {
            None => out.push((Change::Added, entry.clone())),
            Some(prev) if !same(prev, entry) => out.push((Change::Modified, entry.clone())),
            Some(_) => {}
        }
    }
    for (id, entry) in old {
        if !new.contains_key(id) {
            out.push((Change::Deleted, entry.clone()));
        }
    }
    out.sort_by(|a, b| a.1.instance.key.id.cmp(&b.1.instance.key.id));
    out
}

/// Recent sets by index, so a watcher resuming from an index gets only what changed since. Sets
/// are content-addressed (the index is a hash of the content), so any set with that index is the
/// right one, whichever replica or moment produced it.
#[derive(Debug, Default)]
pub struct History {
    sets: HashMap<u64, Arc<Set>>,
    order: VecDeque<u64>,
    entries: usize,
}

/// Bounds on what [`History`] keeps: sets, and instance entries over all sets.
pub const HISTORY_SETS: usize = 1024;
pub const HISTORY_ENTRIES: usize = 100_000;

impl History {
    pub fn remember(&mut self, index: u64, set: Arc<Set>) {
        if self.sets.contains_key(&index) {
            return;
        }
        self.entries += set.len();
        self.sets.insert(index, set);
        self.order.push_back(index);
        while self.order.len() > 1
            && (self.order.len() > HISTORY_SETS || self.entries > HISTORY_ENTRIES)
        {
            if let Some(old) = self.order.pop_front()
                && let Some(s) = self.sets.remove(&old)
            {
                self.entries -= s.len();
            }
        }
    }

    pub fn get(&self, index: u64) -> Option<Arc<Set>> {
        self.sets.get(&index).cloned()
    }
}
