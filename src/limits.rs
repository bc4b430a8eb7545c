//! What one client may take from the public listener: connections (in all and per IP address)
//! and requests per second per identity. Timeouts for slow clients are set on the connection
//! itself (`server.rs`) and on body reads (`api::http`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::metrics::Metrics;

/// `[limits]`, validated: what a hostile or broken client may take.
#[derive(Debug, Clone)]
pub struct Limits {
    /// An HTTP/1 client must send its request headers within this (slowloris).
    pub header_read_timeout: Duration,
    /// A keep-alive HTTP/1 connection with no request for this long is closed.
    pub idle_timeout: Duration,
    /// A request body must arrive within this once the headers did (a slow body gets 408).
    pub body_read_timeout: Duration,
    /// A request (other than a long poll or a watch stream) is answered within this, else 503.
    pub request_timeout: Duration,
    /// Connections open at once on the public listener, and from one IP address.
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// Concurrent streams (requests) per HTTP/2 connection.
    pub max_concurrent_streams: u32,
    /// Requests per second one identity may make, sustained (0: no limit), and above that at once.
    pub requests_per_second: u32,
    pub burst: u32,
}

pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Longer than a load balancer's usual idle timeout (60 s): the balancer closes first.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 1_000;
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 256;
/// Instances of one service usually share one identity: 10,000 of them heartbeating every 10 s
/// are 1,000 requests per second.
pub const DEFAULT_REQUESTS_PER_SECOND: u32 = 2_000;
pub const DEFAULT_BURST: u32 = 4_000;

/// Why a connection was closed before its TLS handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `limits.max_connections` are open.
    Total,
    /// `limits.max_connections_per_ip` are open from this address.
    PerIp,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Total => "max_connections",
            Self::PerIp => "max_connections_per_ip",
        }
    }
}

#[derive(Default)]
struct Open {
    total: usize,
    by_ip: HashMap<IpAddr, usize>,
}

/// Counts open connections, in all and per IP address.
pub struct Connections {
    open: Mutex<Open>,
    max: usize,
    max_per_ip: usize,
    metrics: Arc<Metrics>,
}

/// One admitted connection; its slot is freed when dropped.
pub struct Admitted {
    owner: Arc<Connections>,
    ip: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.owner.open.lock().expect("not poisoned");
        open.total -= 1;
        if let Some(n) = open.by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.by_ip.remove(&self.ip);
            }
        }
        self.owner.metrics.connections_open.set(open.total as i64);
    }
}

impl Connections {
    pub fn new(limits: &Limits, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            open: Mutex::default(),
            max: limits.max_connections,
            max_per_ip: limits.max_connections_per_ip,
            metrics,
        })
    }

    /// A slot for a new connection from `ip`, or why there is none.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admitted, Refusal> {
        let mut open = self.open.lock().expect("not poisoned");
        let refusal = if open.total >= self.max {
            Some(Refusal::Total)
        } else if open.by_ip.get(&ip).copied().unwrap_or(0) >= self.max_per_ip {
            Some(Refusal::PerIp)
        } else {
            None
        };
        if let Some(r) = refusal {
            self.metrics.connection_refused(r.as_str());
            return Err(r);
        }
        open.total += 1;
        *open.by_ip.entry(ip).or_default() += 1;
        self.metrics.connections_open.set(open.total as i64);
        Ok(Admitted {
            owner: self.clone(),
            ip,
        })
    }
}

/// Requests per second per identity (the client certificate's), with a burst, plus what the
/// identity's fleet needs: every instance it registered (and this replica owns) adds
/// [`crate::liveness::owned::HEARTBEATS_PER_TTL`] heartbeats per TTL to the rate and to the
/// burst. So 20,000 instances at a 15 s TTL beating at ttl/3 (1,333/s) stay far below their
/// limit (2,000 + 13,333/s by default), while a client beating faster than ttl/10, or
/// registering without end, is refused with 429 as before. A token bucket per identity, written
/// here because the rate of each key changes with its fleet (governor's keyed limiter has one
/// quota for all keys); 16 shards keep the lock short.
pub struct Requests {
    /// Sustained requests per second and burst before the fleet's share; `None`: no limit.
    base: Option<(f64, f64)>,
    shards: Vec<Mutex<HashMap<String, Bucket>>>,
    metrics: Arc<Metrics>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: tokio::time::Instant,
    /// The rate and capacity it was last refilled with (for `shrink`).
    rate: f64,
    cap: f64,
}

const SHARDS: usize = 16;

impl Requests {
    pub fn new(limits: &Limits, metrics: Arc<Metrics>) -> Arc<Self> {
        let base = NonZeroU32::new(limits.requests_per_second).map(|rate| {
            let burst = NonZeroU32::new(limits.burst).unwrap_or(rate);
            (f64::from(rate.get()), f64::from(burst.get()))
        });
        Arc::new(Self {
            base,
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            metrics,
        })
    }

    fn shard(&self, identity: &str) -> &Mutex<HashMap<String, Bucket>> {
        use std::hash::{Hash, Hasher};
        // A fixed hasher: the same identity always lands in the same shard.
        let mut fixed = std::hash::DefaultHasher::new();
        identity.hash(&mut fixed);
        &self.shards[(fixed.finish() as usize) % SHARDS]
    }

    /// Whether requests are limited at all (`limits.requests_per_second` is not 0).
    pub fn enabled(&self) -> bool {
        self.base.is_some()
    }

    /// `Err(retry_after)` when `identity` is over its rate; `fleet` is the requests per second
    /// its registered instances are entitled to beyond the base rate.
    pub fn check(&self, identity: &str, fleet: f64) -> Result<(), Duration> {
        let Some((base_rate, base_burst)) = self.base else {
            return Ok(());
        };
        let rate = base_rate + fleet.max(0.0);
        let cap = base_burst + fleet.max(0.0);
        let now = tokio::time::Instant::now();
        let mut shard = self.shard(identity).lock().expect("not poisoned");
        let b = match shard.get_mut(identity) {
            Some(b) => b,
            None => shard.entry(identity.to_owned()).or_insert(Bucket {
                tokens: cap,
                at: now,
                rate,
                cap,
            }),
        };
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(cap);
        b.at = now;
        b.rate = rate;
        b.cap = cap;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Ok(());
        }
        let wait = (1.0 - b.tokens) / rate;
        drop(shard);
        self.metrics.rate_limited.inc();
        Err(Duration::from_secs_f64(wait))
    }

    /// Forgets identities that have been quiet long enough to be back at a full burst.
    pub fn shrink(&self) {
        let now = tokio::time::Instant::now();
        for shard in &self.shards {
            shard.lock().expect("not poisoned").retain(|_, b| {
                let full_after = (b.cap - b.tokens).max(0.0) / b.rate;
                now.saturating_duration_since(b.at).as_secs_f64() < full_after
            });
        }
    }
}

/// Whole seconds to put in `Retry-After` for a wait (at least 1).
pub fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs_f64().ceil() as u64).max(1)
}
