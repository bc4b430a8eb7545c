//! gRPC clients of the gateway over mutual TLS (tonic), for the gRPC and watch tests.

use std::sync::Arc;

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};
use twinreg::api::grpc::pb::registry_client::RegistryClient;
use twinreg::certs::ClientNames;

use super::client::tls_config;
use super::gateway::Gateway;

/// A gRPC channel to the gateway's public listener over mutual TLS, as the service `cn`.
pub async fn channel(gw: &Gateway, cn: &str) -> Channel {
    let id = gw.issue(&ClientNames::cn(cn));
    let mut tls = tls_config(&gw.ca.cert_pem, Some(&id));
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let connector = TlsConnector::from(Arc::new(tls));
    let addr = gw.addr;
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
