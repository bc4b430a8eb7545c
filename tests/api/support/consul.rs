//! Consul for the tests: the real `consul agent -dev` when one is on PATH or at `CONSUL_BIN`,
//! otherwise mini-consul (this repository's Consul-API-compatible test server).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use super::{eventually, find_binary, free_port};

pub struct Consul {
    real: Option<PathBuf>,
    pub port: u16,
    child: Option<Child>,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl Consul {
    pub async fn start() -> Consul {
        let mut c = Consul {
            real: find_binary("CONSUL_BIN", "consul"),
            port: free_port(),
            child: None,
            http: Client::builder(TokioExecutor::new()).build_http(),
        };
        c.spawn().await;
        c
    }

    pub fn is_real(&self) -> bool {
        self.real.is_some()
    }

    pub fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        let child = match &self.real {
            Some(bin) => Command::new(bin)
                .args([
                    "agent",
                    "-dev",
                    "-bind=127.0.0.1",
                    "-client=127.0.0.1",
                    "-log-level=error",
                ])
                .arg(format!("-http-port={}", self.port))
                .arg("-dns-port=-1")
                .arg("-grpc-port=-1")
                .arg(format!("-serf-lan-port={}", free_port()))
                .arg(format!("-serf-wan-port={}", free_port()))
                .arg(format!("-server-port={}", free_port()))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("starting consul"),
            None => Command::new(env!("CARGO_BIN_EXE_mini-consul"))
                .arg("--listen")
                .arg(format!("127.0.0.1:{}", self.port))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("starting mini-consul"),
        };
        self.child = Some(child);
        eventually(Duration::from_secs(30), "consul to answer", || async {
            let (status, body) = self.request("GET", "/v1/status/leader", None).await.ok()?;
            (status == 200 && body.len() > 2).then_some(())
        })
        .await;
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("consul running").id()
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
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
        let req = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.address()))
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

    /// `/v1/agent/checks`, keyed by check ID.
    pub async fn agent_checks(&self) -> serde_json::Map<String, Value> {
        match self.get_json("/v1/agent/checks").await {
            Value::Object(m) => m,
            other => panic!("agent/checks is not an object: {other}"),
        }
    }
}

impl Drop for Consul {
    fn drop(&mut self) {
        self.kill();
    }
}
