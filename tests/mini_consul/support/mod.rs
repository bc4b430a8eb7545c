//! Running the real mini-consul binary and talking to it over real HTTP(S).

mod pki;

pub use pki::{Pki, https_client, path_str};

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;
pub type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A mini-consul process, killed on drop.
pub struct Server {
    child: Option<Child>,
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
/// waits for its `mini-consul listening on ADDR` line.
pub fn spawn(args: &[&str]) -> (Child, SocketAddr) {
    let mut cmd = Command::new(binary());
    if !args.contains(&"--listen") {
        cmd.args(["--listen", "127.0.0.1:0"]);
    }
    cmd.args(args)
        .env_remove("MINI_CONSUL_ACL_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    if std::env::var_os("MINI_CONSUL_TEST_LOG").is_some() {
        cmd.env("RUST_LOG", "debug").stderr(Stdio::inherit());
    } else {
        cmd.stderr(Stdio::null());
    }
    let mut child = cmd.spawn().expect("starting mini-consul");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let _ = tx.send(lines.next());
        for _ in lines {}
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("mini-consul printed its listening line in time")
        .expect("mini-consul printed a line")
        .expect("readable stdout");
    let addr = line
        .strip_prefix("mini-consul listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .expect("a socket address");
    (child, addr)
}

pub fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

impl Server {
    pub async fn start(args: &[&str]) -> Server {
        let (child, addr) = spawn(args);
        Server {
            child: Some(child),
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
        self.child.as_ref().expect("running").id()
    }

    /// Waits (up to `limit`) for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("running");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().expect("waiting") {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "mini-consul did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
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

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
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

/// Polls `f` until it yields `Some`, for at most `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
