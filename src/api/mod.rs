//! The front: REST and gRPC handlers on the public listener, and the admin endpoints (with the
//! status page).

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::authz::Authorizer;
use crate::limits::Limits;
use crate::limits::Requests;
use crate::metrics::Metrics;
use crate::replicate::Coordinator;
use crate::tls::Certs;
use crate::watch::Watches;

pub mod admin;
pub mod error;
pub mod front;
pub mod grpc;
pub mod http;
pub mod layers;
pub mod openapi;
pub mod status;

/// What every handler needs, behind one reference count: axum clones the state for every
/// extractor of every request, and one increment is cheaper than one per field.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The parts of [`AppState`].
pub struct Shared {
    pub coordinator: Arc<Coordinator>,
    pub authz: Arc<Authorizer>,
    pub metrics: Arc<Metrics>,
    /// Cancelled when shutdown starts: `/readyz` turns 503 and long polls return.
    pub shutdown: CancellationToken,
    /// The merged, shared views behind watches and long polls.
    pub watches: Arc<Watches>,
    /// The TLS material in use (expiries for the status page).
    pub certs: Arc<Certs>,
    /// Timeouts and caps for hostile or broken clients.
    pub limits: Arc<Limits>,
    /// Requests per second per identity.
    pub requests: Arc<Requests>,
    /// The body of a heartbeat the owner answered from memory with every copy in place, which is
    /// the same for every such heartbeat: serialized once, on the first, and kept for the
    /// process's life (a static body is handed out without touching a shared reference count,
    /// which both cores would otherwise bounce on every heartbeat).
    pub heartbeat_answer: std::sync::OnceLock<&'static [u8]>,
    /// Whether this replica takes part in the anti-entropy sweep (`anti_entropy.enabled`), for
    /// the status page.
    pub sweep_enabled: bool,
}
