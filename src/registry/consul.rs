//! The Consul adapter (backup registry).
//!
//! An instance is an agent service `ID = "{service}.{id}"`, `Name = service`, with one check
//! `service:{ID}` that aliases this replica's own service (`twinreg-replica-{replica}`, whose TTL
//! check the replica passes every few seconds; see [`liveness`]) and carries
//! `DeregisterCriticalServiceAfter` from config. So Consul holds one timer per replica, not one per
//! instance: a heartbeat costs Consul nothing, twinreg deregisters an instance whose heartbeats
//! stopped, and when a replica dies every instance it held turns critical with its check and is
//! reaped. The check's `Notes` carry what Consul has no field for (`ttl_seconds`, `generation`,
//! the holding `replica`), so the record can be restored from Consul alone while `Meta` stays
//! exactly what the client sent. rs-consul serves the calls it covers (the catalog); the agent
//! endpoints it lacks go over the same HTTPS client.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Buf, Bytes};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::Deserialize;
use serde_json::json;

use crate::metrics::Handshakes;
use crate::model::{
    DEFAULT_TTL_SECONDS, Instance, InstanceId, InstanceKey, MAX_TTL_SECONDS, MIN_TTL_SECONDS,
    ServiceName,
};
use crate::pool::{Connect, WarmPool};
use crate::registry::RegistryError;
use crate::registry::{
    FeedSender, Followed, Held, Listed, ObservedSender, Registry, RegistryKind, Revision,
    SetupError, Written, transport,
};
use crate::secret::Secret;
use crate::tls::{Certs, registry_client_config};

mod entries;
mod liveness;
mod watch;

use entries::{CheckReader, Element, HealthCopy, HealthReader, Reader};

const KIND: RegistryKind = RegistryKind::Consul;
/// HTTP/2 PING interval and timeout (when Consul speaks HTTP/2 over TLS): a dead agent is noticed
/// in seconds and an idle connection stays open.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const TOKEN_HEADER: &str = "X-Consul-Token";
/// `DeregisterCriticalServiceAfter` when the configuration does not say; Consul's own minimum.
pub const DEFAULT_DEREGISTER_CRITICAL_AFTER: Duration = Duration::from_secs(60);
/// Consul raises anything smaller to this; twinreg refuses it instead of surprising anyone.
pub const MIN_DEREGISTER_CRITICAL_AFTER: Duration = Duration::from_secs(60);

/// `[consul]`, validated.
#[derive(Debug, Clone)]
pub struct ConsulSettings {
    /// `http://` or `https://` agent address, no trailing `/`.
    pub address: String,
    /// The ACL token (from `consul.token` or the file `consul.token_file`).
    pub token: Option<Secret>,
    /// Deadline of each Consul call.
    pub timeout: Duration,
    /// Warm HTTPS clients.
    pub pool_size: usize,
    pub deregister_critical_after: Duration,
    pub ca: Option<std::path::PathBuf>,
    pub cert: Option<std::path::PathBuf>,
    pub key: Option<std::path::PathBuf>,
}

/// Creates one HTTPS client (its own connection pool) and proves it with a round trip.
pub struct ConsulConnect {
    address: String,
    token: Option<String>,
    tls: rustls::ClientConfig,
    max_idle: usize,
}

impl Connect for ConsulConnect {
    type Client = rs_consul::HttpsClient;

    async fn connect(&self) -> Result<rs_consul::HttpsClient, RegistryError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_keepalive(Some(transport::TCP_KEEPALIVE));
        http.set_keepalive_interval(Some(transport::TCP_KEEPALIVE_INTERVAL));
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(self.tls.clone())
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            // Idle connections are kept, not closed after a quiet spell: the first call after a
            // quiet night must not pay a handshake. Keepalives hold them open through NATs.
            .pool_idle_timeout(None)
            .pool_max_idle_per_host(self.max_idle)
            .http2_keep_alive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .http2_keep_alive_while_idle(true)
            .build(https);
        let (status, body) = send(
            &client,
            &self.address,
            self.token.as_deref(),
            Method::GET,
            "/v1/status/leader",
            None,
        )
        .await?;
        expect_ok(status, &body, "status/leader")?;
        Ok(client)
    }
}

pub struct Consul {
    address: String,
    token: Option<String>,
    deregister_after: Duration,
    pool: Arc<WarmPool<ConsulConnect>>,
    /// This replica's id, and whether its own service (which instance checks alias) is known to
    /// be registered on the agent.
    replica: String,
    replica_registered: std::sync::atomic::AtomicBool,
}

impl Consul {
    pub fn new(
        cfg: &ConsulSettings,
        handshakes: Handshakes,
        certs: &Certs,
        replica: &str,
    ) -> Result<(Self, Arc<WarmPool<ConsulConnect>>), SetupError> {
        let cert_key = cfg.cert.as_deref().zip(cfg.key.as_deref());
        let counted = (handshakes, KIND);
        let tls = registry_client_config("consul", cfg.ca.as_deref(), cert_key, counted, certs)?;
        let token = cfg.token.as_ref().map(|t| t.expose().to_owned());
        let connect = ConsulConnect {
            address: cfg.address.clone(),
            token: token.clone(),
            tls,
            max_idle: 64,
        };
        let pool = WarmPool::new(KIND, connect, cfg.pool_size);
        Ok((
            Self {
                address: cfg.address.clone(),
                token,
                deregister_after: cfg.deregister_critical_after,
                pool: pool.clone(),
                replica: replica.to_owned(),
                replica_registered: std::sync::atomic::AtomicBool::new(false),
            },
            pool,
        ))
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), RegistryError> {
        let client = self.pool.client().await?;
        send(
            &client,
            &self.address,
            self.token.as_deref(),
            method,
            path,
            body,
        )
        .await
    }

    /// The generation recorded in the instance's TTL check, `None` when the agent has no such
    /// check. Read before every write: Consul has no compare-and-set for agent services, so the
    /// fence is compare-then-write.
    async fn stored_generation(&self, key: &InstanceKey) -> Result<Option<u64>, RegistryError> {
        Ok(self.stored_notes(key).await?.map(|n| parse_notes(&n).1))
    }

    /// The notes of the instance's check; `None` when the agent has no such check.
    async fn stored_notes(&self, key: &InstanceKey) -> Result<Option<String>, RegistryError> {
        let check = check_id(key);
        Ok(self.agent_health(key).await?.and_then(|e| {
            e.checks
                .into_iter()
                .find(|c| c.check_id == check)
                .map(|c| c.notes)
        }))
    }

    /// The instance's service and checks as the agent holds them
    /// (`/v1/agent/health/service/id/:id`: one service's worth of work for the agent, however
    /// many it holds, where a filtered `agent/checks` or `health/service` read scans them all);
    /// `None` when the agent has no such service.
    async fn agent_health(&self, key: &InstanceKey) -> Result<Option<HealthEntry>, RegistryError> {
        let path = format!("/v1/agent/health/service/id/{}", service_id(key));
        let (status, body) = self.call(Method::GET, &path, None).await?;
        match status {
            StatusCode::NOT_FOUND => return Ok(None),
            // The aggregate status is the status code: passing, warning, critical.
            StatusCode::OK | StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {}
            _ => {
                expect_ok(status, &body, "agent/health/service/id")?;
            }
        }
        serde_json::from_slice(&body).map(Some).map_err(|e| {
            RegistryError::unavailable(
                KIND,
                format!("consul: unreadable agent/health/service/id answer: {e}"),
            )
        })
    }

    /// Registers the instance with its check aliasing this replica's service: one PUT (the alias
    /// takes its status from the replica's check at once, there is no TTL to pass). A drained
    /// instance is registered in Consul's maintenance mode in the same PUT (the check Consul's
    /// maintenance endpoint adds, `_service_maintenance:{id}`, critical), so no re-write of it
    /// (a take-over, a repair) shows it passing for a moment; every write replaces the service's
    /// checks, so a live one's write ends a maintenance.
    async fn write(&self, i: &Instance) -> Result<Written, RegistryError> {
        self.ensure_replica().await?;
        let sid = service_id(&i.key);
        let liveness = json!({
            "CheckID": check_id(&i.key),
            "Name": "twinreg liveness",
            "AliasService": self.replica_service_id(),
            "Notes": notes(i, &self.replica),
            "DeregisterCriticalServiceAfter": go_duration(self.deregister_after),
        });
        let mut payload = json!({
            "ID": sid,
            "Name": i.key.service,
            "Address": i.address,
            "Port": i.port,
            "Tags": i.tags,
            "Meta": i.meta,
        });
        if i.drained {
            payload["Checks"] = json!([liveness, {
                "CheckID": maintenance_check_id(&i.key),
                "Name": "Service Maintenance Mode",
                "Notes": DRAINED_NOTES,
                "Status": "critical",
                // Never passed: critical for as long as it lasts (a TTL check must have a TTL).
                "TTL": "24h",
            }]);
        } else {
            payload["Check"] = liveness;
        }
        self.put_service(&payload, "agent/service/register").await?;
        Ok(Written::At(0))
    }

    /// `PUT /v1/agent/service/register` of `payload`, replacing the service's checks.
    async fn put_service(
        &self,
        payload: &serde_json::Value,
        what: &str,
    ) -> Result<(), RegistryError> {
        let body = serde_json::to_vec(payload).expect("a json! value serializes");
        let (status, resp) = self
            .call(
                Method::PUT,
                "/v1/agent/service/register?replace-existing-checks=true",
                Some(body),
            )
            .await?;
        expect_ok(status, &resp, what)
    }

    /// `keep` of each twinreg instance of `service` (`/v1/health/service/{service}`).
    async fn health_entries<T>(
        &self,
        service: &ServiceName,
        keep: impl FnMut(HealthCopy) -> Option<T>,
    ) -> Result<Vec<T>, RegistryError> {
        match self
            .health(&format!("/v1/health/service/{service}"), service, 0, keep)
            .await?
        {
            Answer::Changed { entries, .. } => Ok(entries),
            Answer::Same { .. } => unreachable!("a read without a known index has entries"),
        }
    }

    /// A health query (`/v1/health/service/...`, blocking when `path` says so), its answer
    /// decoded as it arrives ([`entries`]), keeping `keep` of each twinreg instance. An answer
    /// whose `X-Consul-Index` is `known` (not 0) changed nothing: its body is not read.
    pub(super) async fn health<T>(
        &self,
        path: &str,
        service: &ServiceName,
        known: u64,
        keep: impl FnMut(HealthCopy) -> Option<T>,
    ) -> Result<Answer<T>, RegistryError> {
        let reader = HealthReader::new(service, keep);
        self.query(path, known, reader).await
    }

    /// A health or checks query (blocking when `path` says so), its answer decoded by `reader`
    /// as it arrives. An answer whose `X-Consul-Index` is `known` (not 0) changed nothing: its
    /// body is not read.
    pub(super) async fn query<E: Element, T>(
        &self,
        path: &str,
        known: u64,
        mut reader: Reader<'_, E, T, impl FnMut(E::Seen) -> Option<T>>,
    ) -> Result<Answer<T>, RegistryError> {
        let client = self.pool.client().await?;
        let resp = request(
            &client,
            &self.address,
            self.token.as_deref(),
            Method::GET,
            path,
            None,
        )
        .await?;
        let status = resp.status();
        let index = resp
            .headers()
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = resp.into_body();
        if status != StatusCode::OK {
            let body = collect(body).await?;
            expect_ok(status, &body, E::ANSWER)?;
            return Err(RegistryError::unavailable(
                KIND,
                "consul: unexpected answer",
            ));
        }
        if known != 0 && index == known {
            return Ok(Answer::Same { index });
        }
        let reading = tokio::time::Instant::now();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.map_err(reading_failed)?.into_data() {
                reader.feed(&data)?;
            }
        }
        Ok(Answer::Changed {
            index,
            entries: reader.finish()?,
            read: reading.elapsed(),
        })
    }
}

/// The index to ask with after an answer at `answered` to a query at `asked` (Consul's rules,
/// `docs/consul.md`): one that went backwards starts over with a full, non-blocking read (0); a
/// missing one (0) is never sent back, which would turn the next query into a busy loop.
pub(super) fn next_index(asked: u64, answered: u64) -> u64 {
    match answered {
        n if n < asked => 0,
        0 => 1,
        n => n,
    }
}

/// A health query's answer.
pub(super) enum Answer<T> {
    /// The index moved (or none was known): what was kept of every entry, and how long reading
    /// and decoding the body took.
    Changed {
        index: u64,
        entries: Vec<T>,
        read: Duration,
    },
    /// The index did not move: nothing changed.
    Same { index: u64 },
}

/// A `/v1/health/service/{service}` answer: twinreg's instances of `service`, each with whether
/// it is live (no critical check). Services that are not twinreg's shape are left out.
pub(crate) fn parse_health(
    service: &ServiceName,
    body: &[u8],
) -> Result<Vec<(Instance, bool)>, RegistryError> {
    let mut reader = HealthReader::new(service, |(i, alive, _)| Some((i, alive)));
    reader.feed(body)?;
    reader.finish()
}

impl HealthEntry {
    /// The twinreg instance of this entry, whether it is alive (no critical check), and its
    /// check's notes; `None` for a service that is not twinreg's.
    /// A drained instance (in maintenance) is alive while its own check passes: maintenance
    /// hides it from discovery, not from twinreg.
    fn into_copy(self, service: &ServiceName) -> Option<HealthCopy> {
        let own = format!("service:{}", self.service.id);
        let maintenance = format!("{MAINTENANCE_PREFIX}{}", self.service.id);
        let drained = self.checks.iter().any(|c| c.check_id == maintenance);
        let alive = !self
            .checks
            .iter()
            .any(|c| c.status == "critical" && c.check_id != maintenance);
        let notes = self
            .checks
            .iter()
            .find(|c| c.check_id == own)
            .or_else(|| self.checks.iter().find(|c| c.service_id == self.service.id))
            .map(|c| c.notes.clone())
            .unwrap_or_default();
        self.service
            .into_instance(service, &notes, drained)
            .map(|i| (i, alive, notes))
    }
}

fn service_id(key: &InstanceKey) -> String {
    format!("{}.{}", key.service, key.id)
}

fn check_id(key: &InstanceKey) -> String {
    format!("service:{}", service_id(key))
}

/// Consul's maintenance check of a service is `_service_maintenance:{service id}`.
const MAINTENANCE_PREFIX: &str = "_service_maintenance:";

/// The notes of a drained instance's maintenance check (Consul shows them as the reason).
const DRAINED_NOTES: &str =
    "drained through twinreg; undrain with DELETE /v1/services/{service}/instances/{id}/drain";

fn maintenance_check_id(key: &InstanceKey) -> String {
    format!("{MAINTENANCE_PREFIX}{}", service_id(key))
}

pub(crate) fn notes(i: &Instance, replica: &str) -> String {
    format!(
        "twinreg ttl_seconds={} generation={} replica={replica}",
        i.ttl_seconds, i.generation
    )
}

/// The replica named in a check's notes, if any.
pub(crate) fn notes_replica(notes: &str) -> Option<&str> {
    notes
        .split_whitespace()
        .find_map(|t| t.strip_prefix("replica="))
}

pub(crate) fn parse_notes(notes: &str) -> (u32, u64) {
    let mut ttl = DEFAULT_TTL_SECONDS;
    let mut generation = 0;
    for token in notes.split_whitespace() {
        if let Some(v) = token.strip_prefix("ttl_seconds=") {
            ttl = v
                .parse()
                .ok()
                .filter(|t| (MIN_TTL_SECONDS..=MAX_TTL_SECONDS).contains(t))
                .unwrap_or(DEFAULT_TTL_SECONDS);
        } else if let Some(v) = token.strip_prefix("generation=") {
            generation = v.parse().unwrap_or(0);
        }
    }
    (ttl, generation)
}

/// Go duration text for whole seconds, as Consul expects (`"30s"`).
fn go_duration(d: Duration) -> String {
    format!("{}s", d.as_secs())
}

/// Sends one request; the answer's status and whole body.
async fn send(
    client: &rs_consul::HttpsClient,
    address: &str,
    token: Option<&str>,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<(StatusCode, Bytes), RegistryError> {
    let resp = request(client, address, token, method, path, body).await?;
    let status = resp.status();
    Ok((status, collect(resp.into_body()).await?))
}

/// Sends one request; the answer, its body not read yet.
async fn request(
    client: &rs_consul::HttpsClient,
    address: &str,
    token: Option<&str>,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<http::Response<hyper::body::Incoming>, RegistryError> {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("{address}{path}"));
    if let Some(t) = token {
        req = req.header(TOKEN_HEADER, t);
    }
    let body = Full::new(Bytes::from(body.unwrap_or_default()));
    let req = req
        .body(http_body_util::combinators::BoxBody::new(body))
        .map_err(|e| RegistryError::rejected(KIND, format!("consul: bad request {path}: {e}")))?;
    client.request(req).await.map_err(|e| {
        let mut msg = format!("consul: {e}");
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg.push_str(&format!(": {s}"));
            src = s.source();
        }
        RegistryError::unavailable(KIND, msg)
    })
}

async fn collect(body: hyper::body::Incoming) -> Result<Bytes, RegistryError> {
    Ok(body.collect().await.map_err(reading_failed)?.to_bytes())
}

fn reading_failed(e: hyper::Error) -> RegistryError {
    RegistryError::unavailable(KIND, format!("consul: reading the answer: {e}"))
}

fn text(body: &Bytes) -> String {
    let s = String::from_utf8_lossy(body.chunk());
    s.trim().chars().take(300).collect()
}

/// Maps a non-200 answer to an error: 4xx are refusals (a retry will not help), the rest are
/// server trouble.
fn expect_ok(status: StatusCode, body: &Bytes, what: &str) -> Result<(), RegistryError> {
    if status == StatusCode::OK {
        return Ok(());
    }
    let msg = format!(
        "consul {what}: {status}: {}{}",
        text(body),
        token_hint(status)
    );
    if status.is_client_error() {
        Err(RegistryError::rejected(KIND, msg))
    } else {
        Err(RegistryError::unavailable(KIND, msg))
    }
}

/// What to check when Consul refused the token (403 "ACL not found", or one lacking a permission).
fn token_hint(status: StatusCode) -> &'static str {
    if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
        "; check consul.token, consul.token_file or TWINREG_CONSUL__TOKEN, and the token's ACL \
         policy (see docs/credentials.md)"
    } else {
        ""
    }
}

fn is_unknown(status: StatusCode, body: &Bytes) -> bool {
    status == StatusCode::NOT_FOUND
        // Before Consul 1.11 an unknown check was a 500 with this text.
        || (status == StatusCode::INTERNAL_SERVER_ERROR && text(body).starts_with("Unknown check ID"))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct HealthEntry {
    service: AgentService,
    #[serde(default)]
    checks: Vec<HealthCheck>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AgentService {
    #[serde(rename = "ID")]
    id: String,
    service: String,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    meta: Option<crate::model::Meta>,
    #[serde(default)]
    address: String,
    #[serde(default)]
    port: u16,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthCheck {
    #[serde(rename = "CheckID", default)]
    check_id: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    notes: String,
    #[serde(rename = "ServiceID", default)]
    service_id: String,
}

impl AgentService {
    /// A twinreg instance, when the ID has twinreg's `{service}.{id}` shape; `None` otherwise.
    fn into_instance(self, service: &ServiceName, notes: &str, drained: bool) -> Option<Instance> {
        let (svc, id) = self.id.split_once('.')?;
        if svc != service.as_str() || self.service != service.as_str() {
            return None;
        }
        if self.address.is_empty() || self.port == 0 {
            return None;
        }
        let (ttl_seconds, generation) = parse_notes(notes);
        Some(Instance {
            key: InstanceKey {
                service: service.clone(),
                id: InstanceId::parse(id).ok()?,
            },
            address: self.address,
            port: self.port,
            tags: self.tags.unwrap_or_default(),
            meta: self.meta.unwrap_or_default(),
            ttl_seconds,
            generation,
            drained,
        })
    }
}

#[async_trait]
impl Registry for Consul {
    fn kind(&self) -> RegistryKind {
        KIND
    }

    async fn register(&self, i: &Instance) -> Result<Written, RegistryError> {
        if self.stored_generation(&i.key).await? > Some(i.generation) {
            tracing::debug!(instance = %i.key, "consul holds a newer generation; write fenced");
            return Ok(Written::Fenced);
        }
        self.write(i).await
    }

    async fn register_new(&self, i: &Instance) -> Result<Written, RegistryError> {
        self.write(i).await
    }

    async fn held(&self, key: &InstanceKey) -> Result<Option<Held>, RegistryError> {
        self.held_copy(key).await
    }

    /// Consul has no compare-and-set for agent services: each copy is registered again under
    /// this replica's alias (the caller read it just now; a newer generation is fenced by the
    /// notes it carries).
    async fn take_over(&self, copies: &[Held]) -> Result<Vec<Option<Revision>>, RegistryError> {
        let mut results = Vec::with_capacity(copies.len());
        for chunk in copies.chunks(liveness::CONCURRENCY) {
            results.extend(
                futures::future::join_all(chunk.iter().map(|c| self.register(&c.instance))).await,
            );
        }
        results
            .into_iter()
            .map(|r| r.map(|w| matches!(w, Written::At(_)).then_some(0)))
            .collect()
    }

    /// Deregisters each copy this replica still holds at the instance's generation (a copy
    /// another replica took over, or a newer registration, is left alone).
    async fn expire(&self, copies: &[(Instance, Revision)]) -> Result<Vec<bool>, RegistryError> {
        let mut results = Vec::with_capacity(copies.len());
        for chunk in copies.chunks(liveness::CONCURRENCY) {
            results.extend(
                futures::future::join_all(chunk.iter().map(|(i, _)| self.expire_one(i))).await,
            );
        }
        results.into_iter().collect()
    }

    fn batch(&self) -> usize {
        // One round of the calls a batch runs at once (a read and a write each): a batch shares
        // one deadline, and an agent busy answering whole-service queries (a mass expiry
        // changes the service thousands of times) slows every round; four rounds in one
        // deadline timed out and opened the breaker.
        liveness::CONCURRENCY
    }

    fn start(
        self: Arc<Self>,
        followed: Followed,
        out: ObservedSender,
        stop: tokio_util::sync::CancellationToken,
    ) {
        tokio::spawn(self.clone().keep_replica_alive(out.clone(), stop.clone()));
        tokio::spawn(self.follow(followed, out, stop));
    }

    async fn deregister(&self, key: &InstanceKey, generation: u64) -> Result<bool, RegistryError> {
        if self.stored_generation(key).await? > Some(generation) {
            tracing::debug!(instance = %key, "consul holds a newer registration; deregister fenced");
            return Ok(false);
        }
        let (status, body) = self
            .call(
                Method::PUT,
                &format!("/v1/agent/service/deregister/{}", service_id(key)),
                None,
            )
            .await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(false);
        }
        expect_ok(status, &body, "agent/service/deregister")?;
        Ok(true)
    }

    async fn get(&self, key: &InstanceKey) -> Result<Option<Instance>, RegistryError> {
        let found = self
            .health_entries(&key.service, |(i, _, _)| (i.key == *key).then_some(i))
            .await?;
        Ok(found.into_iter().next())
    }

    async fn list(&self, service: &ServiceName) -> Result<Vec<Instance>, RegistryError> {
        self.health_entries(service, |(i, alive, _)| alive.then_some(i))
            .await
    }

    async fn inventory(&self, service: &ServiceName) -> Result<Vec<Listed>, RegistryError> {
        self.health_entries(service, |(i, live, _)| {
            Some(Listed {
                live,
                ..Listed::live(&i)
            })
        })
        .await
    }

    fn watch(self: Arc<Self>, service: ServiceName, every: Duration, out: FeedSender) {
        tokio::spawn(self.watch_loop(service, every, out));
    }

    async fn services(&self) -> Result<BTreeSet<ServiceName>, RegistryError> {
        let client = self.pool.client().await?;
        let consul = rs_consul::Consul::new_with_client(
            rs_consul::Config {
                address: self.address.clone(),
                token: self.token.clone(),
                ..Default::default()
            },
            client,
        );
        let names = consul
            .get_all_registered_service_names(None)
            .await
            .map_err(|e| match e {
                rs_consul::ConsulError::UnexpectedResponseCode(s, body) if s.is_client_error() => {
                    RegistryError::rejected(
                        KIND,
                        format!(
                            "consul catalog/services: {s}: {}{}",
                            body.unwrap_or_default(),
                            token_hint(s)
                        ),
                    )
                }
                other => {
                    RegistryError::unavailable(KIND, format!("consul catalog/services: {other}"))
                }
            })?;
        Ok(names
            .response
            .iter()
            .filter_map(|n| ServiceName::parse(n).ok())
            .collect())
    }

    async fn probe(&self) -> Result<(), RegistryError> {
        let (status, body) = self.call(Method::GET, "/v1/status/leader", None).await?;
        expect_ok(status, &body, "status/leader")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_token_says_what_to_check() {
        for status in [StatusCode::FORBIDDEN, StatusCode::UNAUTHORIZED] {
            let e = expect_ok(status, &Bytes::from("ACL not found"), "agent/checks").unwrap_err();
            assert!(!e.retryable());
            assert!(e.message.contains("check consul.token"), "{e}");
        }
        let e = expect_ok(StatusCode::BAD_REQUEST, &Bytes::from("bad"), "x").unwrap_err();
        assert!(!e.message.contains("consul.token"), "{e}");
    }

    #[test]
    fn the_next_index_follows_consuls_rules() {
        assert_eq!(next_index(0, 7), 7);
        assert_eq!(next_index(7, 9), 9);
        assert_eq!(next_index(9, 4), 0, "backwards: start over");
        assert_eq!(next_index(9, 0), 0, "below what was asked: start over");
        assert_eq!(next_index(0, 0), 1, "never ask with 0 once answered");
    }

    #[test]
    fn notes_round_trip() {
        assert_eq!(
            parse_notes("twinreg ttl_seconds=45 generation=99"),
            (45, 99)
        );
        assert_eq!(parse_notes("garbage"), (DEFAULT_TTL_SECONDS, 0));
        assert_eq!(parse_notes("ttl_seconds=1"), (DEFAULT_TTL_SECONDS, 0));
    }

    #[test]
    fn an_unreadable_entry_hides_no_other() {
        let svc = ServiceName::parse("payments").unwrap();
        let body = Bytes::from_static(
            br#"[{"Service":{"ID":"payments","Service":"payments","Address":"10.0.0.9","Port":70000}},
                 {"Service":{"ID":"payments.pay-1","Service":"payments","Address":"10.0.0.1","Port":80}},
                 {"Checks":[]}]"#,
        );
        let got = parse_health(&svc, &body).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0.key.id.as_str(), "pay-1");
        assert!(parse_health(&svc, &Bytes::from_static(b"{}")).is_err());
    }

    #[test]
    fn service_ids_split_back() {
        let svc = ServiceName::parse("payments").unwrap();
        let s = AgentService {
            id: "payments.pay.1".into(),
            service: "payments".into(),
            tags: None,
            meta: None,
            address: "10.0.0.1".into(),
            port: 80,
        };
        let i = s.into_instance(&svc, "", false).unwrap();
        assert_eq!(i.key.id.as_str(), "pay.1");
        assert!(i.tags.is_empty() && i.meta.is_empty());
        let other = AgentService {
            id: "web".into(),
            service: "payments".into(),
            tags: None,
            meta: None,
            address: "10.0.0.1".into(),
            port: 80,
        };
        assert!(other.into_instance(&svc, "", false).is_none());
    }
}
