//! One pooled etcd connection: an HTTP/2 channel to one member (members dealt out round-robin),
//! dialed by [`crate::registry::transport`] so TLS handshakes are counted, DNS is resolved at every
//! reconnect and reconnects resume the TLS session, and proved with a round trip before use.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use etcd_client::{Client, ConnectOptions, GetOptions};

use super::KIND;
use super::errors::to_err;
use super::keepalive::KeepAliveMux;
use super::{CONNECT_TIMEOUT, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT};
use crate::pool::Connect;
use crate::registry::RegistryError;
use crate::registry::transport::Dialer;

/// One pooled connection: an HTTP/2 channel to one member, and its keepalive stream.
#[derive(Clone)]
pub struct EtcdConn {
    pub(super) client: Client,
    pub(super) keepalive: Arc<KeepAliveMux>,
    /// Index of the member in `etcd.endpoints`.
    pub(super) member: usize,
}

/// Connects one pooled object to the next member in turn, and proves it with a round trip (so
/// the TLS handshake is done before the first request).
pub struct EtcdConnect {
    pub(super) members: Vec<Dialer>,
    pub(super) next: AtomicUsize,
    pub(super) options: ConnectOptions,
    pub(super) probe_key: String,
}

impl Connect for EtcdConnect {
    type Client = EtcdConn;

    async fn connect(&self) -> Result<EtcdConn, RegistryError> {
        let member = self.next.fetch_add(1, Ordering::Relaxed) % self.members.len();
        let dialer = self.members[member].clone();
        let authority = dialer.authority();
        // The dialer does TLS itself (to count handshakes), so tonic sees a plain http:// URI.
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{authority}"))
            .map_err(|e| RegistryError::rejected(KIND, format!("etcd endpoint {authority}: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .tcp_nodelay(true)
            .connect_with_connector_lazy(dialer.connector());
        let mut client = Client::from_channel(
            etcd_client::Channel::Tonic(channel),
            Some(self.options.clone()),
        )
        .await
        .map_err(|e| in_context(&authority, e))?;
        probe(&mut client, &self.probe_key)
            .await
            .map_err(|e| in_context(&authority, e))?;
        Ok(EtcdConn {
            client,
            keepalive: Arc::default(),
            member,
        })
    }
}

pub(super) async fn probe(client: &mut Client, probe_key: &str) -> Result<(), etcd_client::Error> {
    client
        .get(
            probe_key,
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_keys_only()
                    .with_limit(1),
            ),
        )
        .await
        .map(drop)
}

/// An etcd error of connecting to `authority`, naming it.
fn in_context(authority: &str, e: etcd_client::Error) -> RegistryError {
    let mut err = to_err(e);
    err.message = format!("{authority}: {}", err.message);
    err
}
