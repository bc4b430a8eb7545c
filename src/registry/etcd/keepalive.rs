//! Lease keepalives multiplexed over one long-lived `LeaseKeepAlive` stream per connection.
//!
//! A heartbeat must not open a gRPC stream of its own: that is a stream set-up (HEADERS frames,
//! a server goroutine) per call. Each pooled etcd connection holds one bidirectional stream; every
//! keepalive for any lease is a message on it. etcd answers a stream's requests one at a time,
//! in order, so answers are matched to waiters first-in first-out (and checked by lease ID).
//!
//! The stream is opened lazily and re-opened after it breaks; waiters of a broken stream get an
//! error at once rather than waiting for their deadline.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use etcd_client::Client;
use etcd_client::proto::PbLeaseKeepAliveRequest;
use tokio::sync::{mpsc, oneshot};

use crate::registry::RegistryError;
use crate::registry::RegistryKind;

const KIND: RegistryKind = RegistryKind::Etcd;
/// The TTL of the lease that opens a stream (etcd-client needs a live lease to open one). Short:
/// it is revoked at once and would expire soon in any case.
const OPENER_TTL: i64 = 10;

type Waiter = (i64, oneshot::Sender<i64>);

/// Waiters in the order their requests were sent; `None` once the stream broke.
type Pending = Arc<Mutex<Option<VecDeque<Waiter>>>>;

struct Open {
    sender: mpsc::Sender<PbLeaseKeepAliveRequest>,
    pending: Pending,
}

/// The keepalive stream of one etcd connection.
#[derive(Default)]
pub struct KeepAliveMux {
    stream: tokio::sync::Mutex<Option<Arc<Open>>>,
}

impl KeepAliveMux {
    /// Renews `lease` and returns its new TTL in seconds; 0 when etcd does not know the lease
    /// (expired or revoked).
    pub async fn keep_alive(&self, client: &Client, lease: i64) -> Result<i64, RegistryError> {
        let open = self.open(client).await?;
        let permit = open.sender.reserve().await.map_err(|_| broken())?;
        let (tx, rx) = oneshot::channel();
        let queued = {
            // Queue the waiter and send under one lock: the queue order is the send order.
            let mut pending = open.pending.lock().expect("not poisoned");
            match pending.as_mut() {
                Some(queue) => {
                    queue.push_back((lease, tx));
                    permit.send(PbLeaseKeepAliveRequest { id: lease });
                    true
                }
                None => false,
            }
        };
        if !queued {
            self.forget(&open).await;
            return Err(broken());
        }
        rx.await.map_err(|_| broken())
    }

    /// The open stream, opening one when there is none or the last one broke.
    async fn open(&self, client: &Client) -> Result<Arc<Open>, RegistryError> {
        let mut slot = self.stream.lock().await;
        if let Some(open) = slot.as_ref()
            && open.pending.lock().expect("not poisoned").is_some()
        {
            return Ok(open.clone());
        }
        let mut client = client.clone();
        let opener = client
            .lease_grant(OPENER_TTL, None)
            .await
            .map_err(super::to_err)?
            .id();
        let (keeper, stream) = client
            .lease_keep_alive(opener)
            .await
            .map_err(super::to_err)?;
        // The opener has done its job and holds no key. Revoked before the stream is used, so no
        // stray lease is left visible (if this fails, it expires on its own).
        let _ = client.lease_revoke(opener).await;
        let pending: Pending = Arc::new(Mutex::new(Some(VecDeque::new())));
        tokio::spawn(read_answers(stream, pending.clone()));
        let open = Arc::new(Open {
            sender: keeper.sender,
            pending,
        });
        *slot = Some(open.clone());
        Ok(open)
    }

    async fn forget(&self, broken: &Arc<Open>) {
        let mut slot = self.stream.lock().await;
        if slot.as_ref().is_some_and(|o| Arc::ptr_eq(o, broken)) {
            *slot = None;
        }
    }
}

fn broken() -> RegistryError {
    RegistryError::unavailable(KIND, "etcd lease keepalive stream broke; retry")
}

/// Hands each answer to the oldest waiter. Ends when the stream does, failing every waiter left.
async fn read_answers(mut stream: etcd_client::LeaseKeepAliveStream, pending: Pending) {
    let why = loop {
        match stream.message().await {
            Ok(Some(answer)) => {
                let waiter = pending
                    .lock()
                    .expect("not poisoned")
                    .as_mut()
                    .and_then(VecDeque::pop_front);
                match waiter {
                    Some((lease, tx)) if lease == answer.id() => {
                        // The waiter may have given up (deadline); the lease was renewed anyway.
                        let _ = tx.send(answer.ttl());
                    }
                    Some((lease, _)) => {
                        break format!(
                            "answer for lease {:x} where {lease:x} was expected",
                            answer.id()
                        );
                    }
                    None => break format!("unexpected answer for lease {:x}", answer.id()),
                }
            }
            Ok(None) => break "closed by etcd".to_owned(),
            Err(e) => break super::errors::describe(&e),
        }
    };
    tracing::debug!(reason = %why, "etcd lease keepalive stream ended; the next heartbeat reopens it");
    // Dropping the waiters' senders wakes each with an error.
    pending.lock().expect("not poisoned").take();
}
