//! Consul for the tests: the real `consul agent -dev` when one is on PATH or at `CONSUL_BIN`,
//! otherwise mini-consul (this repository's Consul-API-compatible test server).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use twinreg::certs::{CertAuthority, ClientNames};

use crate::client::tls_config;
use crate::process::{Output, Process};
use crate::{find_binary, free_port};

/// TLS with verified client certificates, and an ACL token, for the tests of those paths.
pub struct Secure {
    pub dir: tempfile::TempDir,
    pub token: String,
}

impl Secure {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

pub struct Consul {
    real: Option<PathBuf>,
    pub port: u16,
    process: Option<Process>,
    /// Answered once: later starts are restarts and keep the port.
    started: bool,
    pub secure: Option<Secure>,
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Consul {
    pub async fn start() -> Consul {
        let tls = tls_config(&CertAuthority::new("unused").unwrap().cert_pem, None);
        Self::start_inner(None, tls).await
    }

    /// HTTPS only, client certificates from `ca` required, ACLs on with `token` as the management
    /// token. The directory holds `ca.pem`, `server.pem`, `server-key.pem` and a client pair
    /// `client.pem`/`client-key.pem` for twinreg.
    pub async fn start_secure(ca: &CertAuthority, token: &str) -> Consul {
        let dir = tempfile::tempdir().unwrap();
        let server = ca.server(&["localhost", "127.0.0.1"]).unwrap();
        let client = ca.client(&ClientNames::cn("twinreg")).unwrap();
        for (name, content) in [
            ("ca.pem", &ca.cert_pem),
            ("server.pem", &server.cert_pem),
            ("server-key.pem", &server.key_pem),
            ("client.pem", &client.cert_pem),
            ("client-key.pem", &client.key_pem),
        ] {
            std::fs::write(dir.path().join(name), content).unwrap();
        }
        let tls = tls_config(&ca.cert_pem, Some(&client));
        let secure = Secure {
            dir,
            token: token.into(),
        };
        Self::start_inner(Some(secure), tls).await
    }

    async fn start_inner(secure: Option<Secure>, tls: rustls::ClientConfig) -> Consul {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        let mut c = Consul {
            real: find_binary("CONSUL_BIN", "consul"),
            port: free_port(),
            process: None,
            started: false,
            secure,
            http: Client::builder(TokioExecutor::new()).build(https),
        };
        c.spawn().await;
        c
    }

    pub fn is_real(&self) -> bool {
        self.real.is_some()
    }

    pub fn address(&self) -> String {
        let scheme = if self.secure.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    fn real_command(&self, bin: &PathBuf) -> Command {
        let mut cmd = Command::new(bin);
        cmd.args([
            "agent",
            "-dev",
            "-bind=127.0.0.1",
            "-client=127.0.0.1",
            "-log-level=error",
        ])
        .arg("-dns-port=-1")
        .arg("-grpc-port=-1")
        .arg(format!("-serf-lan-port={}", free_port()))
        .arg(format!("-serf-wan-port={}", free_port()))
        .arg(format!("-server-port={}", free_port()));
        match &self.secure {
            None => {
                cmd.arg(format!("-http-port={}", self.port));
            }
            Some(s) => {
                let hcl = format!(
                    r#"ports {{
  http = -1
  https = {port}
}}
tls {{
  defaults {{
    ca_file = "{ca}"
    cert_file = "{cert}"
    key_file = "{key}"
    verify_incoming = true
  }}
}}
acl {{
  enabled = true
  default_policy = "deny"
  tokens {{
    initial_management = "{token}"
  }}
}}
"#,
                    port = self.port,
                    ca = s.path("ca.pem").display(),
                    cert = s.path("server.pem").display(),
                    key = s.path("server-key.pem").display(),
                    token = s.token,
                );
                std::fs::write(s.path("consul.hcl"), hcl).unwrap();
                cmd.arg(format!("-config-file={}", s.path("consul.hcl").display()));
            }
        }
        cmd
    }

    fn mini_command(&self) -> Command {
        let mut cmd = Command::new(crate::binaries::mini_consul());
        cmd.arg("--listen").arg(format!("127.0.0.1:{}", self.port));
        if let Some(s) = &self.secure {
            cmd.arg("--tls-cert")
                .arg(s.path("server.pem"))
                .arg("--tls-key")
                .arg(s.path("server-key.pem"))
                .arg("--tls-client-ca")
                .arg(s.path("ca.pem"))
                .arg("--acl-token")
                .arg(&s.token);
        }
        cmd
    }

    /// Starts the process and waits until it answers. On the first start a port lost to another
    /// test between `free_port` and the bind (the process exits at once) means new ports, up to
    /// three times; a restart keeps its port.
    async fn spawn(&mut self) {
        let first = self.process.is_none() && !self.started;
        for attempt in 1..=3 {
            let cmd = match &self.real {
                Some(bin) => self.real_command(bin),
                None => self.mini_command(),
            };
            self.process = Some(Process::spawn("consul", cmd, Output::Null));
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            let answered = loop {
                if self.process.as_mut().expect("spawned").exited().is_some() {
                    break false;
                }
                if let Ok((200, body)) = self.request("GET", "/v1/status/leader", None).await
                    && body.len() > 2
                {
                    break true;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "consul did not answer on port {} within 30 s",
                    self.port
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            if answered {
                self.started = true;
                return;
            }
            assert!(
                first && attempt < 3,
                "consul on port {} exited at start",
                self.port
            );
            eprintln!(
                "consul exited at start (port {} taken?); starting again on a new port",
                self.port
            );
            self.port = free_port();
        }
    }

    pub fn pid(&self) -> u32 {
        self.process.as_ref().expect("consul running").pid()
    }

    pub fn kill(&mut self) {
        self.process = None;
    }

    /// SIGSTOP: Consul keeps its sockets but answers nothing.
    pub fn freeze(&self) {
        self.process.as_ref().expect("consul running").freeze();
    }

    /// SIGCONT after [`Consul::freeze`].
    pub fn thaw(&self) {
        self.process.as_ref().expect("consul running").thaw();
    }

    /// Starts again on the same port; a dev agent (and mini-consul) starts empty.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, String), String> {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.address()));
        if let Some(s) = &self.secure {
            req = req.header("X-Consul-Token", &s.token);
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default().to_owned())))
            .unwrap();
        let resp = self.http.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// Registers instance `id` of `service` in Consul directly, behind twinreg's back, the way
    /// twinreg names it (`{service}.{id}`), with a passing TTL check of `ttl` (e.g. `"60s"`).
    pub async fn register_direct(
        &self,
        service: &str,
        id: &str,
        address: &str,
        port: u16,
        ttl: &str,
    ) {
        let reg = serde_json::json!({"ID": format!("{service}.{id}"), "Name": service,
            "Address": address, "Port": port,
            "Check": {"CheckID": format!("service:{service}.{id}"), "TTL": ttl, "Status": "passing"}});
        let (status, body) = self
            .request("PUT", "/v1/agent/service/register", Some(&reg.to_string()))
            .await
            .expect("consul answers");
        assert_eq!(status, 200, "registering {service}.{id} in consul: {body}");
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let (status, body) = self
            .request("GET", path, None)
            .await
            .expect("consul answers");
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).expect("consul JSON")
    }

    /// `/v1/agent/services`, keyed by service ID.
    pub async fn agent_services(&self) -> serde_json::Map<String, Value> {
        match self.get_json("/v1/agent/services").await {
            Value::Object(m) => m,
            other => panic!("agent/services is not an object: {other}"),
        }
    }

    /// [`Self::agent_services`] without the twinreg replicas' own services (which the
    /// instances' checks alias).
    pub async fn instances(&self) -> serde_json::Map<String, Value> {
        let mut m = self.agent_services().await;
        m.retain(|_, s| s["Service"] != "twinreg-replica");
        m
    }

    /// `/v1/agent/checks`, keyed by check ID.
    pub async fn agent_checks(&self) -> serde_json::Map<String, Value> {
        match self.get_json("/v1/agent/checks").await {
            Value::Object(m) => m,
            other => panic!("agent/checks is not an object: {other}"),
        }
    }
}
