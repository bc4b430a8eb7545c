//! `twinreg-bench baseline`: what a service does without twinreg, straight to etcd with
//! etcd-client, so twinreg's cost can be read against the registry's own.
//!
//! A register is a lease grant and a put of the record on that lease, as etcd's own service
//! discovery clients do. A heartbeat renews the instance's lease on the keep-alive stream the
//! instance holds open (one per instance, opened before the measurement): one request and its
//! answer on an existing gRPC stream, the cheapest renewal etcd offers.

use std::sync::Arc;

use etcd_client::{Client, LeaseKeepAliveStream, LeaseKeeper, PutOptions};
use tokio::sync::Mutex;

use crate::driver::Worker;
use crate::workload::{Address, InstanceId, Request};

/// An instance's open keep-alive stream.
struct Lease {
    keeper: LeaseKeeper,
    stream: LeaseKeepAliveStream,
}

/// What the workers share.
pub struct Shared {
    service: String,
    ttl: i64,
    /// Whether registering also opens the keep-alive stream heartbeats will use.
    hold_leases: bool,
    /// One slot per instance. A worker holds the lock for one renewal; two workers meet on the
    /// same instance only when there are fewer instances than workers.
    leases: Vec<Mutex<Option<Lease>>>,
}

impl Shared {
    pub fn new(service: &str, instances: u64, ttl: u32, hold_leases: bool) -> Self {
        Self {
            service: service.to_owned(),
            ttl: i64::from(ttl),
            hold_leases,
            leases: (0..instances).map(|_| Mutex::new(None)).collect(),
        }
    }

    fn slot(&self, i: u64) -> Result<&Mutex<Option<Lease>>, String> {
        usize::try_from(i)
            .ok()
            .and_then(|i| self.leases.get(i))
            .ok_or_else(|| format!("instance {i} out of range"))
    }

    /// About the size and shape of the record twinreg writes to etcd (~200 bytes of JSON).
    fn record(&self, i: u64, lease: i64) -> String {
        let addr = Address(i);
        format!(
            r#"{{"service":"{svc}","id":"{id}","address":"{addr}","port":8080,"tags":["bench"],"meta":{{"run":"baseline"}},"ttl_seconds":{ttl},"generation":{lease},"Op":0,"Addr":"{addr}:8080","Metadata":{{"run":"baseline"}}}}"#,
            svc = self.service,
            id = InstanceId(i),
            ttl = self.ttl,
        )
    }
}

/// One request at a time over the shared etcd clients (each an HTTP/2 channel that multiplexes
/// every worker's requests). Instance `i` always goes through client `i % K`, so the instances,
/// and their keep-alive streams, are spread evenly over the connections.
pub struct EtcdWorker {
    /// This worker's handles on the K clients (a handle is needed per caller: calls take `&mut`).
    clients: Vec<Client>,
    shared: Arc<Shared>,
}

impl EtcdWorker {
    fn client(&mut self, i: u64) -> &mut Client {
        let k = self.clients.len() as u64;
        // The remainder is below the number of clients, so it fits in a usize.
        &mut self.clients[(i % k) as usize]
    }

    async fn register(&mut self, i: u64) -> Result<(), String> {
        let ttl = self.shared.ttl;
        let lease = self
            .client(i)
            .lease_grant(ttl, None)
            .await
            .map_err(|e| format!("lease grant: {e}"))?
            .id();
        let key = format!("/bench-baseline/{}/{}", self.shared.service, InstanceId(i));
        let record = self.shared.record(i, lease);
        self.client(i)
            .put(key, record, Some(PutOptions::new().with_lease(lease)))
            .await
            .map_err(|e| format!("put: {e}"))?;
        if self.shared.hold_leases {
            let (keeper, stream) = self
                .client(i)
                .lease_keep_alive(lease)
                .await
                .map_err(|e| format!("lease keep-alive stream: {e}"))?;
            *self.shared.slot(i)?.lock().await = Some(Lease { keeper, stream });
        }
        Ok(())
    }

    async fn heartbeat(&mut self, i: u64) -> Result<(), String> {
        let mut slot = self.shared.slot(i)?.lock().await;
        let lease = slot
            .as_mut()
            .ok_or_else(|| format!("{} holds no lease", InstanceId(i)))?;
        lease
            .keeper
            .keep_alive()
            .await
            .map_err(|e| format!("keep-alive: {e}"))?;
        match lease.stream.message().await {
            Ok(Some(answer)) if answer.ttl() > 0 => Ok(()),
            Ok(Some(_)) => Err(format!("lease of {} expired", InstanceId(i))),
            Ok(None) => Err("keep-alive stream closed".into()),
            Err(e) => Err(format!("keep-alive answer: {e}")),
        }
    }
}

impl Worker for EtcdWorker {
    async fn call(&mut self, request: Request) -> Result<(), String> {
        match request {
            Request::Register(i) => self.register(i).await,
            Request::Heartbeat(i) => self.heartbeat(i).await,
        }
    }
}

/// `concurrency` workers sharing `connections` etcd clients.
/// etcd-client options for an https:// etcd: its CA and our client certificate.
pub fn tls_options(
    ca: Option<&std::path::Path>,
    cert_key: Option<(&std::path::Path, &std::path::Path)>,
) -> Result<Option<etcd_client::ConnectOptions>, String> {
    let Some(ca) = ca else {
        return Ok(None);
    };
    let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let mut tls = etcd_client::TlsOptions::new()
        .ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
    if let Some((cert, key)) = cert_key {
        tls = tls.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(Some(etcd_client::ConnectOptions::new().with_tls(tls)))
}

pub async fn workers(
    endpoint: &str,
    options: Option<etcd_client::ConnectOptions>,
    connections: usize,
    concurrency: usize,
    shared: Shared,
) -> Result<Vec<EtcdWorker>, String> {
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections.max(1) {
        let mut client = Client::connect([endpoint], options.clone())
            .await
            .map_err(|e| format!("connecting to etcd at {endpoint}: {e}"))?;
        // etcd-client connects lazily; one call makes sure etcd is there before the run.
        client
            .status()
            .await
            .map_err(|e| format!("etcd at {endpoint}: {e}"))?;
        clients.push(client);
    }
    let shared = Arc::new(shared);
    Ok((0..concurrency)
        .map(|_| EtcdWorker {
            clients: clients.clone(),
            shared: shared.clone(),
        })
        .collect())
}
