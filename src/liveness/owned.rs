//! The instances this replica owns: their records, when each must hear from its client again,
//! and where each registry's copy stands. A heartbeat to the owner is a lookup and one store of a
//! deadline here, nothing else.
//!
//! Deadlines sit in a timing wheel of [`BUCKET`]-wide buckets. A heartbeat moves only the
//! entry's deadline, never the wheel: when a bucket comes due, an entry whose deadline moved on
//! goes to its new bucket (about once per TTL), and one whose deadline passed has expired. So
//! heartbeats cost O(1), expiry is found without scanning, and an instance expires within
//! [`BUCKET`] plus the expiry loop's tick of its deadline.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::model::{Instance, InstanceKey, KeyParts, ServiceName};
use crate::registry::{Followed, Revision, Written};

/// Width of a wheel bucket.
pub const BUCKET: Duration = Duration::from_millis(250);

/// Heartbeats per TTL an instance is allowed before its identity's requests count as a flood
/// (clients beat every ttl/3; ten per TTL leaves room for retries and bouncing).
pub const HEARTBEATS_PER_TTL: f64 = 10.0;

/// Registries per instance: twinreg writes exactly two.
pub const REGISTRIES: usize = 2;

/// Where one registry's copy of an owned instance stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Copy {
    /// Held by this replica, written at this revision.
    Held(Revision),
    /// Not there (a write failed or the registry lost it): being restored.
    Missing,
    /// Held by a replica that went away, and being written under this one (adoption): there,
    /// and not to be restored meanwhile.
    Adopting,
}

impl From<Written> for Copy {
    /// Where a write leaves the copy: held at its revision, or (fenced: a newer generation is
    /// there) not this replica's to hold.
    fn from(w: Written) -> Copy {
        match w {
            Written::At(rev) => Copy::Held(rev),
            Written::Fenced => Copy::Missing,
        }
    }
}

/// An owned instance's generation and copies (see [`Owned::standing`]).
#[derive(Debug, Clone, Copy)]
pub struct Standing {
    pub generation: u64,
    pub copies: [Copy; REGISTRIES],
    /// Per registry, when its copy's state was last recorded (milliseconds after the table's
    /// epoch).
    recorded: [u64; REGISTRIES],
}

/// What this replica knows of one owned instance. In declaration order (`repr(C)`): what a
/// heartbeat reads comes first, so that with [`Entry`]'s own fields it fits one cache line.
#[derive(Debug, Clone)]
#[repr(C)]
pub struct State {
    /// The client identity that registered or last heartbeated it (for its request budget).
    pub identity: Arc<str>,
    /// Per registry, in the coordinator's member order.
    pub copies: [Copy; REGISTRIES],
    pub instance: Instance,
    /// Per registry, when its copy's state was last recorded (milliseconds after the table's
    /// epoch): a registry's answer read before then may predate the copy.
    recorded: [u64; REGISTRIES],
}

/// One owned instance. A heartbeat writes the deadline and takes the lock, and the two cores
/// take turns at it: everything a heartbeat touches sits in the entry's first cache line (its
/// fields in declaration order, `repr(C)`), so each turn moves one line between the cores, not
/// the several a record spans.
#[repr(C)]
struct Entry {
    /// Milliseconds after the table's epoch by which the client must be heard from again.
    deadline: AtomicU64,
    /// The instance's TTL in milliseconds (a re-registration makes a new entry).
    ttl_ms: u64,
    state: Mutex<State>,
}

pub struct Owned {
    epoch: Instant,
    /// Hashed with foldhash, not std's SipHash: the owner's heartbeat looks its key up here, and
    /// SipHash was half of the lookup's instructions (341 of 645 a heartbeat, callgrind). Seeded
    /// at random per process, so a client cannot choose colliding names in advance.
    map: RwLock<HashMap<InstanceKey, Arc<Entry>, foldhash::fast::RandomState>>,
    /// The entries themselves, not their keys (no second copy of every key): an entry that was
    /// replaced in the map (a re-registration, a take-over) is dropped when its bucket comes due.
    wheel: Mutex<BTreeMap<u64, Vec<Arc<Entry>>>>,
    services: Mutex<BTreeMap<ServiceName, usize>>,
    followed: watch::Sender<BTreeSet<ServiceName>>,
    /// Per identity: heartbeats per second its owned instances may send.
    budgets: Mutex<HashMap<Arc<str>, f64>>,
}

impl Default for Owned {
    fn default() -> Self {
        Self::new()
    }
}

impl Owned {
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
            map: RwLock::default(),
            wheel: Mutex::default(),
            services: Mutex::default(),
            followed: watch::channel(BTreeSet::new()).0,
            budgets: Mutex::default(),
        }
    }

    fn ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_millis() as u64
    }

    fn bucket(ms: u64) -> u64 {
        ms / BUCKET.as_millis() as u64
    }

    fn deadline_after_ttl(&self, ttl_seconds: u32) -> u64 {
        self.ms(Instant::now()) + u64::from(ttl_seconds) * 1000
    }

    /// Owns `instance` from now on (replacing what was known of it), due to hear from its client
    /// within its TTL.
    pub fn insert(&self, instance: Instance, identity: &str, copies: [Copy; REGISTRIES]) {
        let deadline = self.deadline_after_ttl(instance.ttl_seconds);
        let key = instance.key.clone();
        let service = key.service.clone();
        let ttl = instance.ttl_seconds;
        let identity = self.shared_identity(identity);
        let entry = Arc::new(Entry {
            deadline: AtomicU64::new(deadline),
            ttl_ms: u64::from(ttl) * 1000,
            state: Mutex::new(State {
                identity: identity.clone(),
                copies,
                instance,
                recorded: [self.ms(Instant::now()); REGISTRIES],
            }),
        });
        let old = self
            .map
            .write()
            .expect("not poisoned")
            .insert(key, entry.clone());
        self.wheel
            .lock()
            .expect("not poisoned")
            .entry(Self::bucket(deadline))
            .or_default()
            .push(entry);
        match old {
            Some(old) => {
                let old = old.state.lock().expect("not poisoned").clone();
                self.budget_add(&old.identity, -rate(old.instance.ttl_seconds));
            }
            None => self.service_add(&service, 1),
        }
        self.budget_add(&identity, rate(ttl));
    }

    /// A heartbeat from `identity`: the instance is heard from now. Its copies, or `None` when
    /// not owned here. (An instance taken over from a replica that went away learns its
    /// identity, for the request budget, from its first heartbeat here.)
    pub fn touch(&self, key: &dyn KeyParts, identity: &str) -> Option<[Copy; REGISTRIES]> {
        self.touch_at(key, identity, Instant::now())
    }

    /// [`Self::touch`] heard at `now` (a clock the caller read already).
    pub fn touch_at(
        &self,
        key: &dyn KeyParts,
        identity: &str,
        now: Instant,
    ) -> Option<[Copy; REGISTRIES]> {
        let map = self.map.read().expect("not poisoned");
        let entry = map.get(key)?;
        entry
            .deadline
            .store(self.ms(now) + entry.ttl_ms, Ordering::Relaxed);
        let mut state = entry.state.lock().expect("not poisoned");
        if *state.identity != *identity {
            let r = rate(state.instance.ttl_seconds);
            self.budget_add(&state.identity, -r);
            state.identity = self.shared_identity(identity);
            self.budget_add(&state.identity, r);
        }
        Some(state.copies)
    }

    pub fn get(&self, key: &InstanceKey) -> Option<State> {
        let map = self.map.read().expect("not poisoned");
        let entry = map.get(key)?;
        let state = entry.state.lock().expect("not poisoned").clone();
        Some(state)
    }

    /// The owned generation and the copies, without a copy of the record.
    pub fn standing(&self, key: &InstanceKey) -> Option<Standing> {
        let map = self.map.read().expect("not poisoned");
        let state = map.get(key)?.state.lock().expect("not poisoned");
        Some(Standing {
            generation: state.instance.generation,
            copies: state.copies,
            recorded: state.recorded,
        })
    }

    /// The owned instances of `service` (every service when `None`) that registry `member`
    /// should hold, as this replica wrote them, but that are not among `present`, an answer
    /// read at `read_at`. A copy recorded since is left out: the answer may predate it (the
    /// registry's next answer tells).
    pub fn held_but_absent(
        &self,
        service: Option<&ServiceName>,
        member: usize,
        present: &std::collections::HashSet<&InstanceKey>,
        read_at: Instant,
    ) -> Vec<Instance> {
        let map = self.map.read().expect("not poisoned");
        map.iter()
            .filter(|(k, _)| service.is_none_or(|s| k.service == *s) && !present.contains(k))
            .filter_map(|(_, e)| {
                let state = e.state.lock().expect("not poisoned");
                (matches!(state.copies[member], Copy::Held(_))
                    && self.recorded_before(state.recorded[member], read_at))
                .then(|| state.instance.clone())
            })
            .collect()
    }

    /// True when what was `recorded` (see [`Standing::recorded`]) was before `at`: an answer
    /// read at `at` can be trusted about it.
    fn recorded_before(&self, recorded: u64, at: Instant) -> bool {
        recorded < self.ms(at)
    }

    /// True when an answer of registry `member` read at `read_at` (`None`: an event in the
    /// registry's own order) is news about the copy `s` describes, not an older state of it.
    pub fn answer_is_current(&self, s: &Standing, member: usize, read_at: Option<Instant>) -> bool {
        read_at.is_none_or(|at| self.recorded_before(s.recorded[member], at))
    }

    /// How long ago the client of an owned instance was last heard from (its register or
    /// latest heartbeat); `None` when not owned here.
    pub fn heard(&self, key: &InstanceKey) -> Option<Duration> {
        let map = self.map.read().expect("not poisoned");
        let entry = map.get(key)?;
        let heard = entry
            .deadline
            .load(Ordering::Relaxed)
            .saturating_sub(entry.ttl_ms);
        Some(Duration::from_millis(
            self.ms(Instant::now()).saturating_sub(heard),
        ))
    }

    pub fn contains(&self, key: &InstanceKey) -> bool {
        self.map.read().expect("not poisoned").contains_key(key)
    }

    /// Records where registry `member`'s copy stands, if the instance is still owned at
    /// `generation` (a newer registration made meanwhile keeps its own state).
    pub fn set_copy(&self, key: &InstanceKey, generation: u64, member: usize, copy: Copy) {
        let map = self.map.read().expect("not poisoned");
        if let Some(e) = map.get(key) {
            let mut s = e.state.lock().expect("not poisoned");
            if s.instance.generation == generation {
                s.copies[member] = copy;
                s.recorded[member] = self.ms(Instant::now());
            }
        }
    }

    /// Stops owning the instance; what was known of it.
    pub fn remove(&self, key: &InstanceKey) -> Option<State> {
        let entry = self.map.write().expect("not poisoned").remove(key)?;
        let state = entry.state.lock().expect("not poisoned").clone();
        self.forget(&state);
        Some(state)
    }

    fn forget(&self, state: &State) {
        self.service_add(&state.instance.key.service, -1);
        self.budget_add(&state.identity, -rate(state.instance.ttl_seconds));
    }

    /// Removes and returns the instances whose deadline passed by `now`: they expired. (Their
    /// wheel entries are dropped; entries whose deadline moved on go to their new bucket.)
    pub fn due(&self, now: Instant) -> Vec<State> {
        let now_ms = self.ms(now);
        let due: Vec<Arc<Entry>> = {
            let mut wheel = self.wheel.lock().expect("not poisoned");
            let later = wheel.split_off(&(Self::bucket(now_ms) + 1));
            let due = std::mem::replace(&mut *wheel, later);
            due.into_values().flatten().collect()
        };
        if due.is_empty() {
            return Vec::new();
        }
        let mut expired = Vec::new();
        let mut again: Vec<(u64, Arc<Entry>)> = Vec::new();
        {
            let mut map = self.map.write().expect("not poisoned");
            for entry in due {
                let deadline = entry.deadline.load(Ordering::Relaxed);
                let state = entry.state.lock().expect("not poisoned");
                let key = &state.instance.key;
                // Removed or replaced since: not this entry's bucket any more.
                if !map.get(key).is_some_and(|e| Arc::ptr_eq(e, &entry)) {
                    continue;
                }
                if deadline <= now_ms {
                    map.remove(key);
                    expired.push(state.clone());
                } else {
                    // Heard from since: to its deadline's bucket, the next one at the earliest
                    // (a deadline later within this very bucket is looked at next tick).
                    let b = Self::bucket(deadline).max(Self::bucket(now_ms) + 1);
                    drop(state);
                    again.push((b, entry));
                }
            }
        }
        {
            let mut wheel = self.wheel.lock().expect("not poisoned");
            for (b, entry) in again {
                wheel.entry(b).or_default().push(entry);
            }
        }
        for s in &expired {
            self.forget(s);
        }
        expired
    }

    /// True while the instance is owned at `generation` and heard from within its TTL.
    pub fn is_alive(&self, key: &InstanceKey, generation: u64) -> bool {
        self.alive(key, generation, |_| ()).is_some()
    }

    /// The record of the instance while it is owned at `generation` and heard from within its
    /// TTL.
    pub fn alive_record(&self, key: &InstanceKey, generation: u64) -> Option<Instance> {
        self.alive(key, generation, |s| s.instance.clone())
    }

    /// `f` of the instance's state while it is owned at `generation` and heard from within its
    /// TTL.
    fn alive<R>(
        &self,
        key: &InstanceKey,
        generation: u64,
        f: impl FnOnce(&State) -> R,
    ) -> Option<R> {
        let now = self.ms(Instant::now());
        let map = self.map.read().expect("not poisoned");
        let e = map.get(key)?;
        if e.deadline.load(Ordering::Relaxed) <= now {
            return None;
        }
        let state = e.state.lock().expect("not poisoned");
        (state.instance.generation == generation).then(|| f(&state))
    }

    /// Every owned instance (for a registry that lost all of them).
    pub fn all(&self) -> Vec<State> {
        let map = self.map.read().expect("not poisoned");
        map.values()
            .map(|e| e.state.lock().expect("not poisoned").clone())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.map.read().expect("not poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The services owned instances belong to, kept current.
    pub fn followed(&self) -> Followed {
        self.followed.subscribe()
    }

    /// Heartbeats per second `identity`'s owned instances may send.
    pub fn budget(&self, identity: &str) -> f64 {
        self.budgets
            .lock()
            .expect("not poisoned")
            .get(identity)
            .copied()
            .unwrap_or(0.0)
    }

    /// The identity, as one allocation shared by all the instances it owns (a fleet shares one
    /// identity: 100,000 copies of its name would be megabytes).
    fn shared_identity(&self, identity: &str) -> Arc<str> {
        let b = self.budgets.lock().expect("not poisoned");
        match b.get_key_value(identity) {
            Some((shared, _)) => shared.clone(),
            None => Arc::from(identity),
        }
    }

    fn budget_add(&self, identity: &Arc<str>, delta: f64) {
        let mut b = self.budgets.lock().expect("not poisoned");
        let v = b.entry(identity.clone()).or_insert(0.0);
        *v += delta;
        if *v < 1e-9 {
            b.remove(identity);
        }
    }

    fn service_add(&self, service: &ServiceName, delta: isize) {
        let mut s = self.services.lock().expect("not poisoned");
        let n = s.entry(service.clone()).or_insert(0);
        *n = n.saturating_add_signed(delta);
        let changed = if *n == 0 {
            s.remove(service);
            true
        } else {
            delta > 0 && *n == 1
        };
        if changed {
            let set: BTreeSet<ServiceName> = s.keys().cloned().collect();
            self.followed.send_replace(set);
        }
    }
}

fn rate(ttl_seconds: u32) -> f64 {
    HEARTBEATS_PER_TTL / f64::from(ttl_seconds.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(id: &str, ttl: u32) -> Instance {
        Instance {
            ttl_seconds: ttl,
            ..Instance::for_test("payments", id)
        }
    }

    const HELD: [Copy; REGISTRIES] = [Copy::Held(1), Copy::Held(1)];

    #[tokio::test(start_paused = true)]
    async fn an_instance_expires_within_a_bucket_of_its_ttl_unless_heard_from() {
        let o = Owned::new();
        o.insert(instance("quiet", 10), "payments", HELD);
        o.insert(instance("beating", 10), "payments", HELD);
        let beating = instance("beating", 10).key;
        let start = Instant::now();
        let mut expired_at = None;
        while start.elapsed() < Duration::from_secs(40) {
            tokio::time::sleep(BUCKET).await;
            if start.elapsed().as_millis() % 3000 < BUCKET.as_millis() {
                assert!(o.touch(&beating, "payments").is_some());
            }
            for s in o.due(Instant::now()) {
                assert_eq!(
                    s.instance.key.id.as_str(),
                    "quiet",
                    "a heartbeating instance expired"
                );
                expired_at = Some(start.elapsed());
            }
        }
        let at = expired_at.expect("the quiet instance expired");
        assert!(
            at >= Duration::from_secs(10) && at <= Duration::from_secs(10) + 2 * BUCKET,
            "expired after {at:?}"
        );
        assert!(o.contains(&beating));
        assert_eq!(o.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn budgets_and_followed_services_follow_what_is_owned() {
        let o = Owned::new();
        let followed = o.followed();
        o.insert(instance("a", 30), "payments", HELD);
        o.insert(instance("b", 10), "payments", HELD);
        assert!((o.budget("payments") - (10.0 / 30.0 + 1.0)).abs() < 1e-9);
        assert_eq!(followed.borrow().len(), 1);
        // A re-registration replaces, it does not add.
        o.insert(instance("b", 10), "payments", HELD);
        assert!((o.budget("payments") - (10.0 / 30.0 + 1.0)).abs() < 1e-9);
        o.remove(&instance("a", 30).key);
        o.remove(&instance("b", 10).key);
        assert_eq!(o.budget("payments"), 0.0);
        assert!(followed.borrow().is_empty());
        assert!(o.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_copy_update_for_an_older_generation_is_ignored() {
        let o = Owned::new();
        let first = instance("a", 30);
        o.insert(first.clone(), "payments", [Copy::Missing, Copy::Missing]);
        let newer = instance("a", 30);
        o.insert(newer.clone(), "payments", [Copy::Missing, Copy::Missing]);
        o.set_copy(&first.key, first.generation, 0, Copy::Held(5));
        assert_eq!(o.get(&first.key).unwrap().copies[0], Copy::Missing);
        o.set_copy(&first.key, newer.generation, 0, Copy::Held(6));
        assert_eq!(o.get(&first.key).unwrap().copies[0], Copy::Held(6));
        assert!(o.is_alive(&first.key, newer.generation));
        assert!(!o.is_alive(&first.key, first.generation));
    }
}
