//! Warm pools of registry clients (deadpool).
//!
//! Each pooled object is a client holding its own connection (an HTTP/2 channel to etcd, an HTTPS
//! connection pool to Consul) that multiplexes many requests, so a caller checks one out only long
//! enough to clone its handle; FIFO order spreads requests over all connections. The pool is filled
//! in the background at start-up — each object proves itself with a round trip, so the TLS
//! handshake is done before the first request — and until it is full, callers get an immediate
//! "not connected yet" error instead of waiting: start-up never blocks on a registry.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use deadpool::managed::{self, Manager, Pool, QueueMode, RecycleResult};
use tokio::sync::watch;

use crate::backoff::{Backoff, Jitter};
use crate::registry::RegistryError;
use crate::registry::RegistryKind;

/// Retries of a pool that cannot fill yet: 200 ms doubling to 5 s, half of it random, so the
/// replicas of a fleet do not all knock on a registry that is coming back at the same instant.
const WARM_RETRY: Backoff = Backoff::new(
    Duration::from_millis(200),
    Duration::from_secs(5),
    Jitter::Half,
);

/// Creates one registry client and proves it with a round trip.
pub trait Connect: Send + Sync + 'static {
    type Client: Clone + Send + Sync + 'static;
    fn connect(&self) -> impl Future<Output = Result<Self::Client, RegistryError>> + Send;
}

struct ConnectManager<C>(C);

impl<C: Connect> Manager for ConnectManager<C> {
    type Type = C::Client;
    type Error = RegistryError;

    async fn create(&self) -> Result<C::Client, RegistryError> {
        self.0.connect().await
    }

    async fn recycle(
        &self,
        _: &mut C::Client,
        _: &managed::Metrics,
    ) -> RecycleResult<RegistryError> {
        // The clients reconnect by themselves; a recycle round trip would tax every request.
        Ok(())
    }
}

/// A pool that fills itself in the background and hands out client handles.
pub struct WarmPool<C: Connect> {
    kind: RegistryKind,
    pool: Pool<ConnectManager<C>>,
    warm: AtomicBool,
    last_error: std::sync::Mutex<String>,
}

impl<C: Connect> WarmPool<C> {
    pub fn new(kind: RegistryKind, connect: C, size: usize) -> Arc<Self> {
        let pool = Pool::builder(ConnectManager(connect))
            .max_size(size)
            .queue_mode(QueueMode::Fifo)
            .build()
            .expect("no runtime-dependent timeouts are configured");
        Arc::new(Self {
            kind,
            pool,
            warm: AtomicBool::new(false),
            last_error: std::sync::Mutex::new("connecting".into()),
        })
    }

    /// Fills the pool, retrying with capped exponential backoff until every object is connected.
    /// Returns when the pool is warm or `shutdown` fires.
    pub async fn warm_up(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let size = self.pool.status().max_size;
        let mut failures = 0;
        loop {
            let filled = futures::future::try_join_all((0..size).map(|_| self.pool.get())).await;
            let delay = match filled {
                Ok(objects) => {
                    drop(objects);
                    self.warm.store(true, Ordering::Release);
                    tracing::info!(registry = %self.kind, connections = size, "registry pool warm");
                    return;
                }
                Err(e) => {
                    let msg = match e {
                        managed::PoolError::Backend(e) => e.message,
                        other => other.to_string(),
                    };
                    let delay = WARM_RETRY.delay(failures);
                    failures += 1;
                    tracing::warn!(registry = %self.kind, error = %msg, retry_in_ms = delay.as_millis() as u64, "registry not reachable yet");
                    *self.last_error.lock().expect("not poisoned") = msg;
                    delay
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Connections open, idle (not lent out), callers waiting, and the maximum.
    pub fn status(&self) -> deadpool::Status {
        self.pool.status()
    }

    pub fn is_warm(&self) -> bool {
        self.warm.load(Ordering::Acquire)
    }

    /// A client handle, or at once an error when the pool is not warm yet.
    pub async fn client(&self) -> Result<C::Client, RegistryError> {
        self.client_where(|_| true).await
    }

    /// A client handle for which `want` holds (e.g. "to another member than the one that just
    /// failed"), else any; at once an error when the pool is not warm yet.
    pub async fn client_where(
        &self,
        want: impl Fn(&C::Client) -> bool,
    ) -> Result<C::Client, RegistryError> {
        if !self.is_warm() {
            let last = self.last_error.lock().expect("not poisoned").clone();
            return Err(RegistryError::unavailable(
                self.kind,
                format!("not connected yet: {last}"),
            ));
        }
        // Objects are checked out only long enough to clone a handle, so holding a few while
        // looking for a match never waits long; at most `max_size` are taken.
        let mut passed = Vec::new();
        for _ in 0..self.pool.status().max_size {
            let obj = self.pool.get().await.map_err(|e| {
                RegistryError::unavailable(self.kind, format!("connection pool: {e}"))
            })?;
            if want(&obj) {
                return Ok(C::Client::clone(&obj));
            }
            passed.push(obj);
        }
        Ok(C::Client::clone(&passed[0]))
    }
}
