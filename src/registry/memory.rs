//! An in-memory registry that can be told to fail or hang: for unit tests of the coordinator, the
//! liveness of instances and the repairer. Never used by the server. Every copy it holds is held
//! by "this replica"; it follows itself, so a copy removed behind the back is reported.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU8, AtomicUsize, Ordering};

use async_trait::async_trait;

use crate::model::{Instance, InstanceKey, ServiceName};
use crate::registry::RegistryError;
use crate::registry::{
    Followed, Held, Holder, Observed, ObservedSender, Registry, RegistryKind, Revision, Written,
};

/// How the registry behaves on the next calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Up,
    /// Every call fails at once as unreachable.
    Down,
    /// Every call waits forever (a frozen registry).
    Hang,
    /// Reads answer; every write waits forever.
    HangWrites,
}

pub struct Memory {
    kind: RegistryKind,
    mode: AtomicU8,
    records: Mutex<BTreeMap<InstanceKey, (Instance, Revision)>>,
    revision: AtomicI64,
    /// Calls that changed or removed a copy (not refused by `Down`/`Hang`).
    pub writes: AtomicUsize,
    /// Every call that reached the registry, reads included.
    pub calls: AtomicUsize,
    write_times: Mutex<Vec<tokio::time::Instant>>,
    follower: Mutex<Option<ObservedSender>>,
}

impl Memory {
    pub fn new(kind: RegistryKind) -> Self {
        Self {
            kind,
            mode: AtomicU8::new(0),
            records: Mutex::default(),
            revision: AtomicI64::new(0),
            writes: AtomicUsize::new(0),
            calls: AtomicUsize::new(0),
            write_times: Mutex::default(),
            follower: Mutex::default(),
        }
    }

    pub fn set_mode(&self, mode: Mode) {
        let v = match mode {
            Mode::Up => 0,
            Mode::Down => 1,
            Mode::Hang => 2,
            Mode::HangWrites => 3,
        };
        self.mode.store(v, Ordering::SeqCst);
    }

    async fn gate(&self) -> Result<(), RegistryError> {
        match self.mode.load(Ordering::SeqCst) {
            0 | 3 => {
                self.calls.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
            1 => Err(RegistryError::unreachable(
                self.kind,
                "memory registry is down",
            )),
            _ => std::future::pending().await,
        }
    }

    async fn gate_write(&self) -> Result<(), RegistryError> {
        if self.mode.load(Ordering::SeqCst) == 3 {
            std::future::pending::<()>().await;
        }
        self.gate().await
    }

    fn wrote(&self) -> Revision {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.write_times
            .lock()
            .expect("not poisoned")
            .push(tokio::time::Instant::now());
        self.revision.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// When each accepted write happened.
    pub fn write_times(&self) -> Vec<tokio::time::Instant> {
        self.write_times.lock().expect("not poisoned").clone()
    }

    pub fn holds(&self, key: &InstanceKey) -> Option<Instance> {
        self.records
            .lock()
            .expect("not poisoned")
            .get(key)
            .map(|(i, _)| i.clone())
    }

    /// The revision a copy was written at.
    pub fn revision_of(&self, key: &InstanceKey) -> Option<Revision> {
        self.records
            .lock()
            .expect("not poisoned")
            .get(key)
            .map(|(_, r)| *r)
    }

    /// Every copy held.
    pub fn len(&self) -> usize {
        self.records.lock().expect("not poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Deletes a copy as another tool would (and reports it, as a real registry's watch does).
    pub fn remove_behind_the_back(&self, key: &InstanceKey) {
        self.records.lock().expect("not poisoned").remove(key);
        self.report(Observed::Gone {
            key: key.clone(),
            deregistered: false,
        });
    }

    /// Stores a copy held by another replica, as if it took the instance over.
    pub fn taken_over_by(&self, instance: &Instance, replica: &str) {
        let rev = self.wrote();
        self.records
            .lock()
            .expect("not poisoned")
            .insert(instance.key.clone(), (instance.clone(), rev));
        self.report(Observed::Put(Held {
            instance: instance.clone(),
            revision: rev,
            holder: Holder::Replica(replica.into()),
            live: true,
        }));
    }

    fn report(&self, o: Observed) {
        if let Some(f) = self.follower.lock().expect("not poisoned").clone() {
            let _ = f.tx.try_send((f.kind, o));
        }
    }

    fn held_now(&self, key: &InstanceKey) -> Option<Held> {
        self.records
            .lock()
            .expect("not poisoned")
            .get(key)
            .map(|(i, rev)| Held {
                instance: i.clone(),
                revision: *rev,
                holder: Holder::Me,
                live: true,
            })
    }
}

#[async_trait]
impl Registry for Memory {
    fn kind(&self) -> RegistryKind {
        self.kind
    }

    async fn register(&self, instance: &Instance) -> Result<Written, RegistryError> {
        self.gate_write().await?;
        let mut r = self.records.lock().expect("not poisoned");
        if r.get(&instance.key)
            .is_some_and(|(old, _)| old.generation > instance.generation)
        {
            return Ok(Written::Fenced);
        }
        let rev = self.wrote();
        r.insert(instance.key.clone(), (instance.clone(), rev));
        Ok(Written::At(rev))
    }

    async fn held(&self, key: &InstanceKey) -> Result<Option<Held>, RegistryError> {
        self.gate().await?;
        Ok(self.held_now(key))
    }

    async fn take_over(&self, copies: &[Held]) -> Result<Vec<Option<Revision>>, RegistryError> {
        self.gate_write().await?;
        let mut out = Vec::with_capacity(copies.len());
        for c in copies {
            let mut r = self.records.lock().expect("not poisoned");
            match r.get(&c.instance.key) {
                Some((_, rev)) if *rev == c.revision => {
                    let rev = self.wrote();
                    r.insert(c.instance.key.clone(), (c.instance.clone(), rev));
                    out.push(Some(rev));
                }
                _ => out.push(None),
            }
        }
        Ok(out)
    }

    async fn expire(&self, copies: &[(Instance, Revision)]) -> Result<Vec<bool>, RegistryError> {
        self.gate_write().await?;
        let mut out = Vec::with_capacity(copies.len());
        for (i, expected) in copies {
            let mut r = self.records.lock().expect("not poisoned");
            let removed = match r.get(&i.key) {
                Some((_, rev)) if rev == expected => {
                    r.remove(&i.key);
                    self.wrote();
                    true
                }
                _ => false,
            };
            out.push(removed);
        }
        Ok(out)
    }

    async fn deregister(&self, key: &InstanceKey, generation: u64) -> Result<bool, RegistryError> {
        self.gate_write().await?;
        let mut r = self.records.lock().expect("not poisoned");
        match r.get(key) {
            Some((old, _)) if old.generation <= generation => {
                self.wrote();
                Ok(r.remove(key).is_some())
            }
            _ => Ok(false),
        }
    }

    async fn get(&self, key: &InstanceKey) -> Result<Option<Instance>, RegistryError> {
        self.gate().await?;
        Ok(self.holds(key))
    }

    async fn list(&self, service: &ServiceName) -> Result<Vec<Instance>, RegistryError> {
        self.gate().await?;
        Ok(self
            .records
            .lock()
            .expect("not poisoned")
            .values()
            .filter(|(i, _)| i.key.service == *service)
            .map(|(i, _)| i.clone())
            .collect())
    }

    async fn services(&self) -> Result<BTreeSet<ServiceName>, RegistryError> {
        self.gate().await?;
        Ok(self
            .records
            .lock()
            .expect("not poisoned")
            .keys()
            .map(|k| k.service.clone())
            .collect())
    }

    async fn probe(&self) -> Result<(), RegistryError> {
        self.gate().await
    }

    fn start(
        self: std::sync::Arc<Self>,
        _followed: Followed,
        out: ObservedSender,
        _stop: tokio_util::sync::CancellationToken,
    ) {
        *self.follower.lock().expect("not poisoned") = Some(out);
    }
}
