//! Check execution: the TTL clock, the DeregisterCriticalServiceAfter reaper, and HTTP/TCP probes.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::Rng;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::duration::to_std;
use crate::model::{CRITICAL, Check, CheckSpec, PASSING, Probe, WARNING};
use crate::state::State;

/// Expires TTL checks as their deadlines pass (a TTL check not updated in time becomes critical).
pub async fn ttl_loop(state: Arc<State>) {
    loop {
        let next = state.expire_ttls(Instant::now());
        // A deadline that changes after this point wakes us through the Notify's stored permit.
        let wake = state.ttl_wakeup().notified();
        match next {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = wake => {}
                }
            }
            None => wake.await,
        }
    }
}

/// Consul's `reapServices`: every `period` (30 s on a real agent), removes services whose check
/// has been critical for longer than its DeregisterCriticalServiceAfter.
pub async fn reap_loop(state: Arc<State>, period: Duration) {
    let period = period.max(Duration::from_millis(10));
    loop {
        tokio::time::sleep(period).await;
        state.reap(Instant::now());
    }
}

/// Starts the probe loop of an HTTP or TCP check: first run after a random stagger within one
/// interval, then every interval, as Consul does.
pub fn spawn_probe(state: Arc<State>, check: &Check) -> AbortHandle {
    let spec = check.spec.clone();
    let generation = check.generation;
    tokio::spawn(async move {
        let interval = to_std(spec.interval).max(Duration::from_secs(1));
        let stagger = rand::rng().random_range(0..interval.as_millis().max(1) as u64);
        tokio::time::sleep(Duration::from_millis(stagger)).await;
        loop {
            let (status, output) = run_probe(&spec).await;
            state.probe_result(&spec.id, generation, status, output);
            tokio::time::sleep(interval).await;
        }
    })
    .abort_handle()
}

async fn run_probe(spec: &CheckSpec) -> (&'static str, String) {
    let timeout = if spec.timeout > 0 {
        to_std(spec.timeout)
    } else {
        Duration::from_secs(10)
    };
    match &spec.probe {
        // Not probed: spawn_probe is only called for HTTP and TCP checks.
        Probe::Ttl | Probe::Alias { .. } | Probe::Maintenance => (PASSING, String::new()),
        Probe::Tcp { address } => {
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address)).await {
                Ok(Ok(_)) => (PASSING, format!("TCP connect {address}: Success")),
                Ok(Err(e)) => (CRITICAL, format!("dial tcp {address}: {}", go_io_error(&e))),
                Err(_) => (CRITICAL, format!("dial tcp {address}: i/o timeout")),
            }
        }
        Probe::Http {
            url,
            method,
            header,
            body,
        } => http_probe(url, method, header, body, timeout, spec.output_max_size).await,
    }
}

async fn http_probe(
    url: &str,
    method: &str,
    header: &std::collections::BTreeMap<String, Vec<String>>,
    body: &str,
    timeout: Duration,
    max_output: usize,
) -> (&'static str, String) {
    let method = if method.is_empty() { "GET" } else { method };
    if url.starts_with("https://") {
        return (
            CRITICAL,
            "mini-consul: HTTPS health checks are not supported".into(),
        );
    }
    let mut req = http::Request::builder().method(method).uri(url);
    for (k, values) in header {
        for v in values {
            req = req.header(k.as_str(), v.as_str());
        }
    }
    let has = |name: &str| header.keys().any(|k| k.eq_ignore_ascii_case(name));
    if !has("user-agent") {
        req = req.header("User-Agent", "Consul Health Check");
    }
    if !has("accept") {
        req = req.header("Accept", "text/plain, text/*, */*");
    }
    let req = match req.body(Full::new(Bytes::from(body.to_owned()))) {
        Ok(r) => r,
        Err(e) => return (CRITICAL, e.to_string()),
    };
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let outcome = tokio::time::timeout(timeout, async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| format!("{method} {url}: {e}"))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Ok::<_, String>((status, bytes))
    })
    .await;
    match outcome {
        Err(_) => (
            CRITICAL,
            format!(
                "{method} {url}: context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
            ),
        ),
        Ok(Err(e)) => (CRITICAL, e),
        Ok(Ok((status, bytes))) => {
            // Consul keeps the tail of the body in a circular buffer of OutputMaxSize bytes.
            let tail = &bytes[bytes.len().saturating_sub(max_output)..];
            let text = format!(
                "HTTP {method} {url}: {} {} Output: {}",
                status.as_u16(),
                status.canonical_reason().unwrap_or_default(),
                String::from_utf8_lossy(tail)
            );
            let verdict = match status.as_u16() {
                200..=299 => PASSING,
                429 => WARNING,
                _ => CRITICAL,
            };
            (verdict, text)
        }
    }
}

/// Go-like text for a dial error.
fn go_io_error(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connect: connection refused".into(),
        std::io::ErrorKind::TimedOut => "i/o timeout".into(),
        _ => e.to_string(),
    }
}
