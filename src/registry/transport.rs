//! How twinreg reaches a registry member: TCP (no Nagle, keepalive probes below common NAT and
//! load-balancer idle timeouts), the host name resolved again at every (re)connect so a moved
//! member is found at its new address, and TLS from one shared client config, so a reconnect
//! resumes the previous session instead of doing a full handshake. TLS handshakes are counted
//! (`twinreg_registry_tls_handshakes_total`): in steady state the counter stays flat.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::either::Either;

use crate::metrics::Handshakes;
use crate::registry::RegistryError;
use crate::registry::RegistryKind;

/// TCP keepalive on registry connections: first probe after this much idle time. Well below the
/// common 350 s (AWS NAT gateway) and 4-minute (Azure load balancer) idle timeouts.
pub const TCP_KEEPALIVE: Duration = Duration::from_secs(30);
/// Interval between TCP keepalive probes once they start.
pub const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// One connected member: plain TCP or TLS over it.
pub type Stream = Either<TcpStream, TlsStream<TcpStream>>;

/// Dials one member endpoint (`http://host:port` or `https://host:port`).
#[derive(Clone)]
pub struct Dialer {
    registry: RegistryKind,
    host: String,
    port: u16,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    connect_timeout: Duration,
    handshakes: Handshakes,
}

impl Dialer {
    /// `tls` is used when the endpoint is `https://`; it must then be given.
    pub fn new(
        registry: RegistryKind,
        endpoint: &str,
        tls: Option<Arc<ClientConfig>>,
        connect_timeout: Duration,
        handshakes: Handshakes,
    ) -> Result<Self, RegistryError> {
        let bad = |why: String| RegistryError::rejected(registry, why);
        let uri: Uri = endpoint
            .parse()
            .map_err(|e| bad(format!("{registry} endpoint '{endpoint}': {e}")))?;
        let secure = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(bad(format!(
                    "{registry} endpoint '{endpoint}' must start with http:// or https://"
                )));
            }
        };
        let host = uri
            .host()
            .ok_or_else(|| bad(format!("{registry} endpoint '{endpoint}' has no host")))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        let tls = match (secure, tls) {
            (false, _) => None,
            (true, None) => {
                return Err(bad(format!(
                    "{registry} endpoint '{endpoint}' is https:// but no TLS client config was built"
                )));
            }
            (true, Some(cfg)) => {
                let name = ServerName::try_from(host.clone()).map_err(|e| {
                    bad(format!("{registry} endpoint '{endpoint}': host name: {e}"))
                })?;
                Some((TlsConnector::from(cfg), name))
            }
        };
        Ok(Self {
            registry,
            host,
            port,
            tls,
            connect_timeout,
            handshakes,
        })
    }

    /// The endpoint as `host:port`, for messages.
    pub fn authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Resolves the host now (no cached address), connects to the first address that answers,
    /// and does the TLS handshake when the endpoint is `https://`.
    pub async fn dial(&self) -> io::Result<Stream> {
        let connect = async {
            let mut last = None;
            for addr in tokio::net::lookup_host((self.host.as_str(), self.port)).await? {
                match TcpStream::connect(addr).await {
                    Ok(s) => return Ok(s),
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, "the host resolved to no address")
            }))
        };
        let tcp = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connecting timed out after {:?}", self.connect_timeout),
                )
            })??;
        tcp.set_nodelay(true)?;
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(TCP_KEEPALIVE)
            .with_interval(TCP_KEEPALIVE_INTERVAL);
        socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive)?;
        let Some((connector, name)) = &self.tls else {
            return Ok(Either::Left(tcp));
        };
        let tls = tokio::time::timeout(self.connect_timeout, connector.connect(name.clone(), tcp))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        // Full handshakes are counted where the server certificate is verified
        // (`tls::registry_client_config`); resumed ones only show here.
        if tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
            self.handshakes
                .record(self.registry, Some(rustls::HandshakeKind::Resumed));
        }
        Ok(Either::Right(tls))
    }

    /// A tower connector for tonic: ignores the URI it is given and dials this endpoint.
    pub fn connector(
        self,
    ) -> impl tower::Service<
        Uri,
        Response = TokioIo<Stream>,
        Error = io::Error,
        Future = impl Future<Output = io::Result<TokioIo<Stream>>> + Send,
    > + Clone
    + Send
    + 'static {
        let dialer = Arc::new(self);
        tower::service_fn(move |_: Uri| {
            let dialer = dialer.clone();
            async move { dialer.dial().await.map(TokioIo::new) }
        })
    }
}
