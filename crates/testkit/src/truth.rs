//! What etcd and Consul really hold of a service, read directly (never through twinreg), and
//! what must hold after a fault: every live instance in both registries, every deregistered one
//! in neither, within a bound.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cluster::Cluster;
use crate::consul::Consul;
use crate::etcd::Etcd;

/// Bound for both registries to hold every live instance again after a fault.
pub const CONVERGE: Duration = Duration::from_secs(60);
/// Once converged, the state must still be right this much later (nothing comes back).
pub const HOLD: Duration = Duration::from_secs(2);

/// One registry's view of the service: id → (the record's address, lease or check status).
#[derive(Debug, Default)]
pub struct Snapshot {
    /// id → (value, lease)
    pub etcd: BTreeMap<String, (Value, i64)>,
    /// id → (Address, status of the instance's TTL check, "" when it has none)
    pub consul: BTreeMap<String, (String, String)>,
}

/// What must hold after a fault: every live instance in both registries (at its address, with a
/// lease / a passing check), every deregistered one in neither.
#[derive(Debug, Default, Clone)]
pub struct Expected {
    pub live: BTreeMap<String, String>,
    pub gone: BTreeSet<String>,
}

impl Snapshot {
    pub fn problems(&self, e: &Expected) -> Vec<String> {
        let mut p = Vec::new();
        for (id, addr) in &e.live {
            match self.etcd.get(id) {
                None => p.push(format!("{id}: missing in etcd")),
                Some((v, lease)) => {
                    if v["address"] != addr.as_str() {
                        p.push(format!(
                            "{id}: etcd holds address {}, not {addr}",
                            v["address"]
                        ));
                    }
                    if *lease == 0 {
                        p.push(format!("{id}: etcd key has no lease"));
                    }
                }
            }
            match self.consul.get(id) {
                None => p.push(format!("{id}: missing in consul")),
                Some((a, status)) => {
                    if a != addr {
                        p.push(format!("{id}: consul holds address {a}, not {addr}"));
                    }
                    if status != "passing" {
                        p.push(format!("{id}: consul check is '{status}', not passing"));
                    }
                }
            }
        }
        for id in &e.gone {
            if let Some((v, _)) = self.etcd.get(id) {
                p.push(format!("{id}: deregistered, but etcd holds it: {v}"));
            }
            if let Some((a, status)) = self.consul.get(id) {
                p.push(format!(
                    "{id}: deregistered, but consul holds it (address {a}, check '{status}')"
                ));
            }
        }
        p
    }
}

enum EtcdSource<'a> {
    One(&'a Etcd),
    Cluster(&'a Cluster),
}

/// Reads etcd and Consul directly (never through twinreg): what they hold of one service.
pub struct Truth<'a> {
    etcd: EtcdSource<'a>,
    consul: &'a Consul,
    service: String,
}

const READ_TIMEOUT: Duration = Duration::from_secs(3);

impl<'a> Truth<'a> {
    pub fn new(etcd: &'a Etcd, consul: &'a Consul, service: &str) -> Self {
        Truth {
            etcd: EtcdSource::One(etcd),
            consul,
            service: service.to_owned(),
        }
    }

    pub fn cluster(cluster: &'a Cluster, consul: &'a Consul, service: &str) -> Self {
        Truth {
            etcd: EtcdSource::Cluster(cluster),
            consul,
            service: service.to_owned(),
        }
    }

    async fn read_etcd(&self) -> Result<BTreeMap<String, (Value, i64)>, String> {
        let dir = format!("/services/{}/", self.service);
        let kvs = match self.etcd {
            EtcdSource::One(e) => {
                let ep = e.endpoint();
                tokio::time::timeout(READ_TIMEOUT, async {
                    let mut c = etcd_client::Client::connect([ep], None)
                        .await
                        .map_err(|e| format!("etcd connect: {e}"))?;
                    let resp = c
                        .get(
                            dir.as_str(),
                            Some(etcd_client::GetOptions::new().with_prefix()),
                        )
                        .await
                        .map_err(|e| format!("etcd get: {e}"))?;
                    Ok::<_, String>(
                        resp.kvs()
                            .iter()
                            .map(|kv| {
                                (
                                    kv.key_str().unwrap_or_default().to_owned(),
                                    serde_json::from_slice(kv.value()).unwrap_or(Value::Null),
                                    kv.lease(),
                                )
                            })
                            .collect::<Vec<_>>(),
                    )
                })
                .await
                .map_err(|_| "etcd read timed out".to_string())??
            }
            EtcdSource::Cluster(c) => c
                .dump(&dir)
                .await
                .ok_or("the etcd cluster could not be read")?,
        };
        Ok(kvs
            .into_iter()
            .filter_map(|(k, v, lease)| Some((k.strip_prefix(&dir)?.to_owned(), (v, lease))))
            .collect())
    }

    async fn read_consul(&self) -> Result<BTreeMap<String, (String, String)>, String> {
        let get = |p: &'static str| async move {
            let (status, body) =
                tokio::time::timeout(READ_TIMEOUT, self.consul.request("GET", p, None))
                    .await
                    .map_err(|_| format!("consul {p} timed out"))??;
            if status != 200 {
                return Err(format!("consul {p}: {status} {body}"));
            }
            match serde_json::from_str(&body) {
                Ok(Value::Object(m)) => Ok(m),
                _ => Err(format!("consul {p}: not an object: {body}")),
            }
        };
        let services = get("/v1/agent/services").await?;
        let checks = get("/v1/agent/checks").await?;
        let prefix = format!("{}.", self.service);
        Ok(services
            .into_iter()
            .filter_map(|(sid, svc)| {
                let id = sid.strip_prefix(&prefix)?.to_owned();
                let status = checks
                    .get(&format!("service:{sid}"))
                    .and_then(|c| c["Status"].as_str())
                    .unwrap_or("")
                    .to_owned();
                let addr = svc["Address"].as_str().unwrap_or("").to_owned();
                Some((id, (addr, status)))
            })
            .collect())
    }

    pub async fn read(&self) -> Result<Snapshot, String> {
        Ok(Snapshot {
            etcd: self.read_etcd().await?,
            consul: self.read_consul().await?,
        })
    }

    /// Waits (at most [`CONVERGE`]) until both registries hold exactly what `expected` says, and
    /// still do [`HOLD`] later; panics with what is still wrong otherwise.
    pub async fn converge(&self, what: &str, expected: &Expected) -> Snapshot {
        self.settle(what, expected, CONVERGE).await
    }

    pub async fn settle(&self, what: &str, expected: &Expected, limit: Duration) -> Snapshot {
        match self.try_settle(expected, limit).await {
            Ok(s) => s,
            Err(last) => panic!(
                "{what}: the registries did not converge within {limit:?}:\n  {}",
                last.join("\n  ")
            ),
        }
    }

    pub async fn try_settle(
        &self,
        expected: &Expected,
        limit: Duration,
    ) -> Result<Snapshot, Vec<String>> {
        let start = Instant::now();
        let mut last = vec!["never read".to_string()];
        while start.elapsed() < limit {
            match self.read().await {
                Ok(s) => {
                    let p = s.problems(expected);
                    if p.is_empty() {
                        tokio::time::sleep(HOLD).await;
                        match self.read().await {
                            Ok(again) => {
                                let p = again.problems(expected);
                                if p.is_empty() {
                                    return Ok(again);
                                }
                                last = p.into_iter().map(|p| format!("{p} (came back)")).collect();
                            }
                            Err(e) => last = vec![e],
                        }
                    } else {
                        last = p;
                    }
                }
                Err(e) => last = vec![e],
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Err(last)
    }
}
