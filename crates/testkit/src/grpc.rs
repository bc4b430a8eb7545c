//! gRPC clients of the gateway over mutual TLS (tonic), for the gRPC and watch tests.

use std::net::SocketAddr;
use std::sync::Arc;

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};
use twinreg::api::grpc::pb::registry_client::RegistryClient;
use twinreg::certs::{ClientNames, Issued};

use crate::client::tls_config;
use crate::gateway::Gateway;

/// A gRPC channel to the gateway's public listener over mutual TLS, as the service `cn`.
pub async fn channel(gw: &Gateway, cn: &str) -> Channel {
    channel_to(gw.addr, &gw.ca.cert_pem, &gw.issue(&ClientNames::cn(cn))).await
}

/// A gRPC channel over mutual TLS to the twinreg listening on `addr` (in-process or a `twinreg
/// serve` subprocess), trusting `ca_pem` and presenting `id`.
pub async fn channel_to(addr: SocketAddr, ca_pem: &str, id: &Issued) -> Channel {
    let mut tls = tls_config(ca_pem, Some(id));
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let connector = TlsConnector::from(Arc::new(tls));
    // The connector does TLS itself; tonic sees a plain `http` endpoint.
    Endpoint::from_shared(format!("http://127.0.0.1:{}", addr.port()))
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let connector = connector.clone();
            async move {
                let tcp = TcpStream::connect(addr).await?;
                let tls = connector
                    .connect(ServerName::try_from("localhost").unwrap(), tcp)
                    .await?;
                if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
                    return Err(std::io::Error::other("the server did not choose h2"));
                }
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
        .await
        .expect("gRPC channel over mutual TLS")
}

pub async fn registry(gw: &Gateway, cn: &str) -> RegistryClient<Channel> {
    RegistryClient::new(channel(gw, cn).await)
}
