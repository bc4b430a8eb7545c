//! `twinreg-bench echo`: the cheapest possible mTLS front on this machine.
//!
//! It terminates TLS with exactly twinreg's listener configuration (the same function builds it:
//! client certificates required and verified, ALPN h2 and http/1.1), serves HTTP with the same
//! hyper-util auto builder, reads each request's body, and answers at once with a body the size
//! of twinreg's heartbeat answer. Whatever twinreg costs beyond this ceiling is its own work.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// The answer to every request: twinreg's heartbeat answer when both registries are fine.
const ANSWER: &str = r#"{"ok":true,"degraded":false,"registries":{"etcd":{"ok":true,"latency_ms":0},"consul":{"ok":true,"latency_ms":0}}}"#;

/// After a failed accept (out of descriptors), the pause before the next.
const ACCEPT_PAUSE: Duration = Duration::from_millis(10);

/// Serves until the process is killed.
pub async fn serve(
    listen: SocketAddr,
    cert: &Path,
    key: &Path,
    client_ca: &Path,
) -> Result<(), String> {
    let tls = twinreg::tls::server_config(cert, key, client_ca).map_err(|e| e.to_string())?;
    let acceptor = TlsAcceptor::from(tls);
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("binding {listen}: {e}"))?;
    eprintln!("echo: serving on {listen}");
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors and the like: say so, let some connections close, and
                // keep serving the others.
                eprintln!("echo: accept: {e}");
                tokio::time::sleep(ACCEPT_PAUSE).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service_fn(answer))
                .await;
        });
    }
}

async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    // Read the body as a real server must; a broken one changes nothing about the answer.
    let _ = req.into_body().collect().await;
    let mut resp = Response::new(Full::new(Bytes::from_static(ANSWER.as_bytes())));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(resp)
}
