//! Running the real mini-consul binary and talking to it over real HTTP(S).

mod pki;

pub use pki::{Pki, https_client, path_str};

use std::net::SocketAddr;
use std::process::{Command, ExitStatus};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use testkit::process::{Output, Process};

pub use testkit::eventually;

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;
pub type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A mini-consul process, killed on drop.
pub struct Server {
    process: Process,
    pub addr: SocketAddr,
    pub base: String,
    pub http: HttpClient,
    pub token: Option<String>,
}

/// An answer, read in full.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
    pub version: http::Version,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ASCII header"))
    }
    /// `X-Consul-Index`, which must be present and positive.
    pub fn index(&self) -> u64 {
        let idx: u64 = self
            .header("x-consul-index")
            .unwrap_or_else(|| panic!("no X-Consul-Index on {self:?}"))
            .parse()
            .expect("numeric X-Consul-Index");
        assert!(idx > 0, "X-Consul-Index must never be 0");
        idx
    }
    /// Asserts a Consul plain-text error.
    pub fn assert_error(&self, status: u16, body: &str) {
        assert_eq!(
            (self.status, self.body.as_str()),
            (status, body),
            "{self:?}"
        );
        assert_eq!(
            self.header("content-type"),
            Some("text/plain; charset=utf-8")
        );
    }
    /// Asserts a Consul write success: 200, empty body, no Content-Type.
    pub fn assert_write_ok(&self) {
        assert_eq!((self.status, self.body.as_str()), (200, ""), "{self:?}");
        assert_eq!(self.header("content-type"), None);
    }
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_mini-consul")
}

/// Spawns mini-consul with `args` (plus `--listen 127.0.0.1:0` unless `--listen` is given) and
/// waits for its `mini-consul listening on ADDR` line. `MINI_CONSUL_TEST_LOG=1` makes it log at
/// debug level (the lines end up in the panic message of a failing wait).
pub fn spawn(args: &[&str]) -> (Process, SocketAddr) {
    let mut cmd = Command::new(binary());
    if !args.contains(&"--listen") {
        cmd.args(["--listen", "127.0.0.1:0"]);
    }
    cmd.args(args).env_remove("MINI_CONSUL_ACL_TOKEN");
    if std::env::var_os("MINI_CONSUL_TEST_LOG").is_some() {
        cmd.env("RUST_LOG", "debug");
    }
    let process = Process::spawn("mini-consul", cmd, Output::Lines);
    let addr = process
        .wait_for_line("mini-consul listening on ", Duration::from_secs(20))
        .parse()
        .expect("a socket address");
    (process, addr)
}

pub fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

impl Server {
    pub async fn start(args: &[&str]) -> Server {
        let (process, addr) = spawn(args);
        Server {
            process,
            addr,
            base: format!("http://{addr}"),
            http: http_client(),
            token: None,
        }
    }

    /// A server with ACLs on, whose requests carry the management token by default.
    pub async fn with_acl(token: &str) -> Server {
        let mut s = Server::start(&["--acl-token", token]).await;
        s.token = Some(token.to_owned());
        s
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Waits (up to `limit`) for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        self.process
            .stop_within(None, limit)
            .unwrap_or_else(|| panic!("mini-consul did not exit within {limit:?}"))
    }

    /// A request with explicit headers (the default token is not added).
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Resp {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default().to_owned())))
            .unwrap();
        send(&self.http, req).await.expect("mini-consul answers")
    }

    /// A request carrying the server's default token (if any).
    pub async fn req(&self, method: &str, path: &str, body: Option<&str>) -> Resp {
        match &self.token {
            Some(t) => self.raw(method, path, body, &[("X-Consul-Token", t)]).await,
            None => self.raw(method, path, body, &[]).await,
        }
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.req("GET", path, None).await
    }

    pub async fn put(&self, path: &str, body: Option<&str>) -> Resp {
        self.req("PUT", path, body).await
    }

    /// GET expecting 200 JSON.
    pub async fn get_json(&self, path: &str) -> Value {
        let r = self.get(path).await;
        assert_eq!(r.status, 200, "GET {path}: {r:?}");
        assert_eq!(
            r.header("content-type"),
            Some("application/json"),
            "GET {path}"
        );
        r.json()
    }

    /// Registers a service, expecting success.
    pub async fn register(&self, body: Value) {
        self.put("/v1/agent/service/register", Some(&body.to_string()))
            .await
            .assert_write_ok();
    }

    /// A check from `/v1/agent/checks`.
    pub async fn check(&self, id: &str) -> Value {
        self.get_json("/v1/agent/checks").await[id].clone()
    }
}

pub async fn send<C>(
    client: &Client<C, Full<Bytes>>,
    req: http::Request<Full<Bytes>>,
) -> Result<Resp, String>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
    let status = resp.status().as_u16();
    let version = resp.version();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Resp {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        version,
    })
}
