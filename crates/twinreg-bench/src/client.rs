//! The load generator's HTTPS client: hyper's HTTP/1.1 connection API over a tokio-rustls
//! stream, one keep-alive connection per worker, like wrk.
//!
//! hyper's pooled client (or reqwest on top of it) would add a pool lookup, a connector service
//! and per-request allocations the measurement does not need; with one connection per worker the
//! client's cost per request is a header write and a body read, so it stays small next to the
//! servers it shares the machine with.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use twinreg::tls;

/// After a failed connect, a worker waits this long before its next try, so a dead target is
/// counted as errors at a modest rate instead of a busy loop that starves the other workers.
const RECONNECT_PAUSE: Duration = Duration::from_millis(50);

/// Where the requests go and how to reach it: resolved and loaded once, shared by the workers.
pub struct Target {
    connector: TlsConnector,
    addr: SocketAddr,
    server_name: ServerName<'static>,
    authority: HeaderValue,
}

impl Target {
    /// `url` is `https://host:port`; `ca` verifies the server, `cert`/`key` is the client
    /// certificate that mutual TLS asks for.
    pub fn new(url: &str, ca: &Path, cert: &Path, key: &Path) -> Result<Self, String> {
        let uri: Uri = url.parse().map_err(|e| format!("--url {url}: {e}"))?;
        if uri.scheme_str() != Some("https") {
            return Err(format!("--url {url}: only https:// is supported"));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("--url {url}: no host"))?;
        let host = authority.host();
        let port = authority.port_u16().unwrap_or(443);
        // An IPv6 literal comes bracketed in a URL, but not in a server name.
        let bare_host = host.trim_start_matches('[').trim_end_matches(']');
        let addr = (bare_host, port)
            .to_socket_addrs()
            .map_err(|e| format!("resolving {host}: {e}"))?
            .next()
            .ok_or_else(|| format!("resolving {host}: no address"))?;
        let server_name =
            ServerName::try_from(bare_host.to_owned()).map_err(|e| format!("--url {url}: {e}"))?;
        Ok(Self {
            connector: TlsConnector::from(Arc::new(client_config(ca, cert, key)?)),
            addr,
            server_name,
            authority: HeaderValue::from_str(authority.as_str())
                .map_err(|e| format!("--url {url}: {e}"))?,
        })
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .map_err(|e| format!("connect {}: {e}", self.addr))?;
        // Requests are small and latency is what is measured: never wait for Nagle.
        tcp.set_nodelay(true)
            .map_err(|e| format!("connect {}: {e}", self.addr))?;
        let tls = self
            .connector
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| format!("TLS handshake with {}: {e}", self.addr))?;
        let (sender, conn) = http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP/1.1 handshake with {}: {e}", self.addr))?;
        // The connection task ends when the server closes or the sender is dropped; its error,
        // if any, surfaces on the next request through the sender.
        tokio::spawn(conn);
        Ok(sender)
    }
}

fn client_config(ca: &Path, cert: &Path, key: &Path) -> Result<ClientConfig, String> {
    let text = |e: tls::TlsError| e.to_string();
    let roots = tls::load_roots("--ca", ca).map_err(text)?;
    let chain = tls::load_certs("--cert", cert).map_err(text)?;
    let key_der = tls::load_key("--key", key).map_err(text)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key_der)
        .map_err(|e| format!("--key {}: does not match --cert: {e}", key.display()))?;
    // This client speaks HTTP/1.1 only; say so, so an ALPN-aware server does not pick h2.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Why a request failed.
#[derive(Debug)]
pub enum Failure {
    /// The server answered with a non-2xx status and this body.
    Status(StatusCode, Bytes),
    /// No answer: connecting failed or the connection broke.
    Transport(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Status(status, body) => write!(f, "{status} {}", String::from_utf8_lossy(body)),
            Self::Transport(e) => f.write_str(e),
        }
    }
}

/// One worker's connection, opened on first use and reopened after the server closes it.
pub struct Client {
    target: Arc<Target>,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Client {
    pub fn new(target: Arc<Target>) -> Self {
        Self {
            target,
            sender: None,
        }
    }

    /// Opens the connection now, so the TLS handshake is not part of the first measurement.
    pub async fn open(&mut self) -> Result<(), String> {
        self.sender = Some(self.target.connect().await?);
        Ok(())
    }

    /// Sends one request and reads the whole answer; a non-2xx answer is a failure.
    pub async fn send(&mut self, method: Method, path: &str, body: Bytes) -> Result<(), Failure> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.target.authority.clone());
        if !body.is_empty() {
            req = req.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| Failure::Transport(format!("building the request: {e}")))?;
        let sender = self.ready().await.map_err(Failure::Transport)?;
        let answer = async {
            let resp = sender.send_request(req).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, body))
        }
        .await;
        match answer {
            Ok((status, _)) if status.is_success() => Ok(()),
            Ok((status, body)) => Err(Failure::Status(status, body)),
            Err(e) => {
                self.sender = None;
                Err(Failure::Transport(format!("transport: {e}")))
            }
        }
    }

    /// The connection, ready for a request: a keep-alive connection the server has closed since
    /// the last request is replaced without counting an error, since no request was lost.
    async fn ready(&mut self) -> Result<&mut SendRequest<Full<Bytes>>, String> {
        let usable = match self.sender.as_mut() {
            Some(sender) => sender.ready().await.is_ok(),
            None => false,
        };
        if !usable {
            self.sender = None;
            let mut sender = match self.target.connect().await {
                Ok(s) => s,
                Err(e) => {
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                    return Err(e);
                }
            };
            sender
                .ready()
                .await
                .map_err(|e| format!("transport: {e}"))?;
            self.sender = Some(sender);
        }
        Ok(self.sender.as_mut().expect("set above when it was missing"))
    }
}
