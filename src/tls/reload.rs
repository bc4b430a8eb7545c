//! Certificate rotation without a restart: on SIGHUP, and when a certificate or key file changes
//! on disk, every TLS user re-reads its files.
//!
//! Each user (the public listener; the etcd and Consul clients) registers its files and a reload
//! function that reads and checks everything first and swaps only when all of it is good. A bad
//! new file — unreadable, a key that does not match its certificate, an expired certificate — is
//! rejected with a log line naming the file, and the certificates in use stay. Connections
//! already established keep their session; new handshakes use the new material.
//!
//! `twinreg_certificate_expiry_seconds{cert}` is the `notAfter` (Unix seconds) of the earliest
//! certificate in each file in use.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::TlsError;
use crate::metrics::Metrics;

/// Reads and checks the files, swaps them in, and returns the expiry of each certificate label.
pub type Reload = Box<dyn Fn() -> Result<Vec<(&'static str, i64)>, TlsError> + Send + Sync>;

struct Entry {
    /// The config section, for logs (`server`, `etcd`, `consul`).
    name: &'static str,
    paths: Vec<PathBuf>,
    /// What the files held when last loaded.
    fingerprint: u64,
    reload: Reload,
    expiries: Vec<(&'static str, i64)>,
}

/// The TLS material of one process and how to reload it.
pub struct Certs {
    entries: Mutex<Vec<Entry>>,
    metrics: Arc<Metrics>,
}

/// The contents of the files, hashed (a missing file hashes as such): a change of any byte,
/// whatever the file's timestamps say (a Kubernetes secret swaps a symlink; a copy keeps the
/// mtime), is a change.
fn fingerprint(paths: &[PathBuf]) -> u64 {
    let mut h = DefaultHasher::new();
    for p in paths {
        std::fs::read(p).ok().hash(&mut h);
    }
    h.finish()
}

impl Certs {
    pub fn new(metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            entries: Mutex::new(Vec::new()),
            metrics,
        })
    }

    /// Registers files already loaded by their user; runs `reload` once to learn the expiries
    /// (the start-up load already proved the files good).
    pub fn add(
        &self,
        name: &'static str,
        paths: Vec<PathBuf>,
        reload: Reload,
    ) -> Result<(), TlsError> {
        let fingerprint = fingerprint(&paths);
        let expiries = reload()?;
        for (label, at) in &expiries {
            self.metrics.set_certificate_expiry(label, *at);
        }
        self.entries.lock().expect("not poisoned").push(Entry {
            name,
            paths,
            fingerprint,
            reload,
            expiries,
        });
        Ok(())
    }

    /// Reloads the entries whose files changed (all of them when `force`, as for SIGHUP).
    /// Returns how many were reloaded and how many rejected.
    pub fn reload(&self, force: bool) -> (usize, usize) {
        let mut entries = self.entries.lock().expect("not poisoned");
        let (mut done, mut rejected) = (0, 0);
        for e in entries.iter_mut() {
            let now = fingerprint(&e.paths);
            if !force && now == e.fingerprint {
                continue;
            }
            // Remember what was seen even when rejected: a bad file is reported once, not at
            // every check, and the next change is tried again.
            e.fingerprint = now;
            match (e.reload)() {
                Ok(expiries) => {
                    for (label, at) in &expiries {
                        self.metrics.set_certificate_expiry(label, *at);
                    }
                    tracing::info!(
                        certs = e.name,
                        expiries = ?expiries,
                        "certificates reloaded; new handshakes use them"
                    );
                    e.expiries = expiries;
                    self.metrics.certificate_reload("ok");
                    done += 1;
                }
                Err(err) => {
                    tracing::error!(
                        certs = e.name,
                        error = %err,
                        "certificate reload rejected; the certificates in use stay in use"
                    );
                    self.metrics.certificate_reload("rejected");
                    rejected += 1;
                }
            }
        }
        (done, rejected)
    }

    /// The expiry (Unix seconds) of each certificate in use, by label.
    pub fn expiries(&self) -> Vec<(&'static str, i64)> {
        self.entries
            .lock()
            .expect("not poisoned")
            .iter()
            .flat_map(|e| e.expiries.iter().copied())
            .collect()
    }

    /// Reloads on SIGHUP (everything) and when a file changes (checked every `every`; zero turns
    /// the file check off), until `stop`.
    pub async fn watch(self: Arc<Self>, every: Duration, stop: CancellationToken) {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; certificates reload on file changes only");
                None
            }
        };
        let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let force = tokio::select! {
                _ = async { hup.as_mut().expect("checked").recv().await }, if hup.is_some() => true,
                _ = tick.tick(), if !every.is_zero() => false,
                _ = stop.cancelled() => return,
            };
            if force {
                tracing::info!("SIGHUP: reloading certificates");
            }
            let certs = self.clone();
            // File reads and parsing are blocking work.
            let _ = tokio::task::spawn_blocking(move || certs.reload(force)).await;
        }
    }
}
