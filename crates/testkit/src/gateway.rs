//! twinreg itself, started in-process on port 0 with freshly generated certificates.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use twinreg::certs::{CertAuthority, ClientNames, Issued};
use twinreg::config::Config;

use crate::client::{TestClient, tls_config};
use crate::consul::Consul;
use crate::etcd::Etcd;
use crate::eventually;

pub struct Gateway {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub ca: CertAuthority,
    pub dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// Extra TOML appended to the generated configuration (e.g. an `[authz]` section).
#[derive(Default, Clone)]
pub struct Options {
    pub extra_toml: String,
    pub etcd_endpoints: Option<Vec<String>>,
    pub timeout_ms: Option<u64>,
    /// Lines added to the `[etcd]` section.
    pub etcd_extra: String,
    /// Lines added to the `[consul]` section.
    pub consul_extra: String,
    /// Heartbeat coalescing: off, as in twinreg by default, except in the tests of coalescing.
    pub coalesce: bool,
    /// Lines added to the `[tls]` section.
    pub tls_extra: String,
    /// What `tls.client_ca` holds instead of the gateway CA's certificate (tests with client
    /// CAs of their own; the server certificate still comes from the gateway CA).
    pub client_ca_pem: Option<String>,
}

impl Gateway {
    pub async fn start(etcd: &Etcd, consul: &Consul) -> Gateway {
        Self::start_with(etcd, consul, Options::default()).await
    }

    pub async fn start_with(etcd: &Etcd, consul: &Consul, opts: Options) -> Gateway {
        let endpoints = opts
            .etcd_endpoints
            .clone()
            .unwrap_or_else(|| vec![etcd.endpoint()]);
        let gw = Self::launch(endpoints, consul.address(), opts).await;
        gw.wait_both_up().await;
        gw
    }

    /// Starts without waiting for any registry (for start-up and outage tests).
    pub async fn launch(
        etcd_endpoints: Vec<String>,
        consul_address: String,
        opts: Options,
    ) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertAuthority::new("test CA").unwrap();
        let server = ca.server(&["localhost", "127.0.0.1"]).unwrap();
        let p = |name: &str| dir.path().join(name).display().to_string();
        std::fs::write(
            p("ca.pem"),
            opts.client_ca_pem.as_deref().unwrap_or(&ca.cert_pem),
        )
        .unwrap();
        std::fs::write(p("server.pem"), &server.cert_pem).unwrap();
        std::fs::write(p("server-key.pem"), &server.key_pem).unwrap();
        let timeout = opts.timeout_ms.unwrap_or(1500);
        let toml = format!(
            r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
shutdown_grace = "5s"
drain_delay = "300ms"

[tls]
cert = "{cert}"
key = "{key}"
client_ca = "{ca}"
{tls_extra}

[etcd]
endpoints = {etcd_endpoints:?}
timeout_ms = {timeout}
{etcd_extra}

[consul]
address = "{consul_address}"
timeout_ms = {timeout}
{consul_extra}

[heartbeat]
coalesce = {coalesce}

{extra}
"#,
            coalesce = opts.coalesce,
            cert = p("server.pem"),
            key = p("server-key.pem"),
            ca = p("ca.pem"),
            extra = opts.extra_toml,
            etcd_extra = opts.etcd_extra,
            consul_extra = opts.consul_extra,
            tls_extra = opts.tls_extra,
        );
        let settings = Config::from_toml(&toml)
            .unwrap_or_else(|e| panic!("test config invalid: {e}\n{toml}"))
            .validate()
            .unwrap_or_else(|e| panic!("test config invalid: {e}\n{toml}"));
        let listeners = twinreg::Listeners::bind(&settings).await.unwrap();
        let addr = listeners.public.local_addr().unwrap();
        let admin = listeners.admin.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            twinreg::run(settings, listeners, async move {
                let _ = rx.await;
            })
            .await
            .expect("twinreg run");
        });
        Gateway {
            addr,
            admin,
            ca,
            dir,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn issue(&self, names: &ClientNames) -> Issued {
        self.ca.client(names).unwrap()
    }

    pub fn client_with(&self, names: &ClientNames) -> TestClient {
        let id = self.issue(names);
        TestClient::new(
            format!("https://127.0.0.1:{}", self.addr.port()),
            tls_config(&self.ca.cert_pem, Some(&id)),
        )
    }

    /// A client whose certificate has CN = `cn`.
    pub fn client(&self, cn: &str) -> TestClient {
        self.client_with(&ClientNames::cn(cn))
    }

    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        let (status, _, body) = self.admin_get_full(path).await;
        (status, body)
    }

    /// An admin GET's status, headers and body.
    pub async fn admin_get_full(&self, path: &str) -> (u16, http::HeaderMap, String) {
        let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        let resp = client
            .get(format!("http://{}{path}", self.admin).parse().unwrap())
            .await
            .expect("admin answers");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        use http_body_util::BodyExt;
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }

    /// `twinreg_certificate_reloads_total{outcome}` now.
    pub async fn certificate_reloads(&self, outcome: &str) -> f64 {
        let (_, text) = self.admin_get("/metrics").await;
        crate::metric(
            &text,
            "twinreg_certificate_reloads_total",
            &[("outcome", outcome)],
        )
    }

    pub async fn readyz(&self) -> (u16, serde_json::Value) {
        let (s, b) = self.admin_get("/readyz").await;
        (s, serde_json::from_str(&b).unwrap_or_default())
    }

    pub async fn wait_both_up(&self) {
        eventually(
            Duration::from_secs(30),
            "both registries up in /readyz",
            || async {
                let (_, body) = self.readyz().await;
                (body["registries"]["etcd"]["state"] == "up"
                    && body["registries"]["consul"]["state"] == "up")
                    .then_some(())
            },
        )
        .await;
    }

    /// Sends the shutdown signal (like SIGTERM) without waiting for the drain.
    pub fn trigger_stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    /// Triggers shutdown and waits for `run` to return.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.expect("twinreg task");
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}
