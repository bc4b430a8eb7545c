//! An in-memory registry that can be told to fail or hang: for unit tests of the coordinator and
//! the repairer. Never used by the server.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use async_trait::async_trait;

use crate::model::{Instance, InstanceKey, ServiceName};
use crate::registry::RegistryError;
use crate::registry::{Liveness, Registry, RegistryKind};

/// How the registry behaves on the next calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Up,
    /// Every call fails at once as unreachable.
    Down,
    /// Every call waits forever (a frozen registry).
    Hang,
}

pub struct Memory {
    kind: RegistryKind,
    mode: AtomicU8,
    records: Mutex<BTreeMap<InstanceKey, Instance>>,
    /// Calls that reached the registry (not refused by `Down`/`Hang`).
    pub writes: AtomicUsize,
    /// Heartbeats that reached the registry, and when (renewals: registrations count too).
    pub heartbeats: AtomicUsize,
    renew_times: Mutex<Vec<tokio::time::Instant>>,
    write_times: Mutex<Vec<tokio::time::Instant>>,
}

impl Memory {
    pub fn new(kind: RegistryKind) -> Self {
        Self {
            kind,
            mode: AtomicU8::new(0),
            records: Mutex::default(),
            writes: AtomicUsize::new(0),
            heartbeats: AtomicUsize::new(0),
            renew_times: Mutex::default(),
            write_times: Mutex::default(),
        }
    }

    pub fn set_mode(&self, mode: Mode) {
        let v = match mode {
            Mode::Up => 0,
            Mode::Down => 1,
            Mode::Hang => 2,
        };
        self.mode.store(v, Ordering::SeqCst);
    }

    async fn gate(&self) -> Result<(), RegistryError> {
        match self.mode.load(Ordering::SeqCst) {
            0 => Ok(()),
            1 => Err(RegistryError::unavailable(
                self.kind,
                "memory registry is down",
            )),
            _ => std::future::pending().await,
        }
    }

    fn wrote(&self) {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.write_times
            .lock()
            .expect("not poisoned")
            .push(tokio::time::Instant::now());
    }

    fn renewed(&self) {
        self.renew_times
            .lock()
            .expect("not poisoned")
            .push(tokio::time::Instant::now());
    }

    /// When each heartbeat or registration reached the registry (a TTL renewed or set).
    pub fn renew_times(&self) -> Vec<tokio::time::Instant> {
        self.renew_times.lock().expect("not poisoned").clone()
    }

    /// When each accepted write happened.
    pub fn write_times(&self) -> Vec<tokio::time::Instant> {
        self.write_times.lock().expect("not poisoned").clone()
    }

    pub fn holds(&self, key: &InstanceKey) -> Option<Instance> {
        self.records.lock().expect("not poisoned").get(key).cloned()
    }

    pub fn remove_behind_the_back(&self, key: &InstanceKey) {
        self.records.lock().expect("not poisoned").remove(key);
    }
}

#[async_trait]
impl Registry for Memory {
    fn kind(&self) -> RegistryKind {
        self.kind
    }

    async fn register(&self, instance: &Instance) -> Result<(), RegistryError> {
        self.gate().await?;
        self.wrote();
        self.renewed();
        let mut r = self.records.lock().expect("not poisoned");
        if r.get(&instance.key)
            .is_none_or(|old| old.generation <= instance.generation)
        {
            r.insert(instance.key.clone(), instance.clone());
        }
        Ok(())
    }

    async fn heartbeat(&self, key: &InstanceKey) -> Result<Liveness, RegistryError> {
        self.gate().await?;
        self.heartbeats.fetch_add(1, Ordering::SeqCst);
        self.renewed();
        Ok(if self.holds(key).is_some() {
            Liveness::Renewed
        } else {
            Liveness::Unknown
        })
    }

    async fn deregister(&self, key: &InstanceKey, generation: u64) -> Result<bool, RegistryError> {
        self.gate().await?;
        self.wrote();
        let mut r = self.records.lock().expect("not poisoned");
        match r.get(key) {
            Some(old) if old.generation <= generation => Ok(r.remove(key).is_some()),
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
            .filter(|i| i.key.service == *service)
            .cloned()
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
}
