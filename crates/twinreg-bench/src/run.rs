//! `twinreg-bench run`: twinreg's REST API (or the echo server, which answers the same paths)
//! driven over mutual TLS.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, StatusCode};

use crate::client::{Client, Failure, Target};
use crate::driver::Worker;
use crate::workload::{Address, InstanceId, Request, port};

/// What every worker shares: the paths and the records it sends.
pub struct Workload {
    service: String,
    ttl: u32,
    change: bool,
    /// Put in each record's meta, so that the first register of a run changes a record left by
    /// an earlier run even when `change` is off.
    run_id: String,
    /// How often each instance was registered by this run: the parity picks its port.
    generations: Vec<AtomicU32>,
    /// Answer a heartbeat's 404 by registering the instance again, as the API tells clients to.
    reregister: bool,
    /// Instances registered again after a 404.
    reregistered: AtomicU64,
}

impl Workload {
    pub fn new(service: &str, instances: u64, ttl: u32, change: bool, reregister: bool) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        Self {
            service: service.to_owned(),
            ttl,
            change,
            run_id: format!("{:x}-{:x}", std::process::id(), nanos),
            generations: (0..instances).map(|_| AtomicU32::new(0)).collect(),
            reregister,
            reregistered: AtomicU64::new(0),
        }
    }

    /// Instances registered again after a heartbeat's 404.
    pub fn reregistered(&self) -> u64 {
        self.reregistered.load(Ordering::Relaxed)
    }

    fn instance_path(&self, i: u64) -> String {
        format!("/v1/services/{}/instances/{}", self.service, InstanceId(i))
    }

    fn register_body(&self, i: u64) -> Bytes {
        let generation = usize::try_from(i)
            .ok()
            .and_then(|i| self.generations.get(i))
            .map_or(0, |g| g.fetch_add(1, Ordering::Relaxed));
        // Formatted by hand: every field is a number or text this program made, nothing needs
        // escaping, and it costs less client CPU than building a serde_json value per request.
        Bytes::from(format!(
            r#"{{"address":"{}","port":{},"tags":["bench"],"meta":{{"run":"{}"}},"ttl_seconds":{}}}"#,
            Address(i),
            port(generation, self.change),
            self.run_id,
            self.ttl
        ))
    }
}

/// One connection's worth of load.
pub struct HttpWorker {
    client: Client,
    work: Arc<Workload>,
}

impl HttpWorker {
    async fn register(&mut self, i: u64) -> Result<(), Failure> {
        let body = self.work.register_body(i);
        let path = self.work.instance_path(i);
        self.client.send(Method::PUT, &path, body).await
    }

    async fn heartbeat(&mut self, i: u64) -> Result<(), Failure> {
        let path = format!("{}/heartbeat", self.work.instance_path(i));
        let result = self.client.send(Method::PUT, &path, Bytes::new()).await;
        if self.work.reregister
            && matches!(&result, Err(Failure::Status(StatusCode::NOT_FOUND, _)))
            && self.register(i).await.is_ok()
        {
            self.work.reregistered.fetch_add(1, Ordering::Relaxed);
        }
        // The heartbeat failed all the same: the 404 stays counted as an error.
        result
    }
}

impl Worker for HttpWorker {
    async fn call(&mut self, request: Request) -> Result<(), String> {
        let result = match request {
            Request::Register(i) => self.register(i).await,
            Request::Heartbeat(i) => self.heartbeat(i).await,
        };
        result.map_err(|e| e.to_string())
    }
}

/// `concurrency` workers, each with its connection already open, so that no TLS handshake falls
/// into the measurement.
pub async fn workers(
    target: Target,
    work: Arc<Workload>,
    concurrency: usize,
) -> Result<Vec<HttpWorker>, String> {
    let target = Arc::new(target);
    let opened = futures::future::join_all((0..concurrency).map(|_| {
        let mut client = Client::new(target.clone());
        let work = work.clone();
        async move {
            client.open().await?;
            Ok::<_, String>(HttpWorker { client, work })
        }
    }))
    .await;
    opened.into_iter().collect()
}
