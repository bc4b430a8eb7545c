//! What one client may take from the public listener: connections (in all and per IP address)
//! and requests per second per identity. Timeouts for slow clients are set on the connection
//! itself (`server.rs`) and on body reads (`api::http`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::metrics::Metrics;

/// `[limits]`, validated: what a hostile or broken client may take.
#[derive(Debug, Clone)]
pub struct Limits {
    /// An HTTP/1 client must send its request headers within this (slowloris).
    pub header_read_timeout: Duration,
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

/// Requests per second per identity (the client certificate's), with a burst.
pub struct Requests {
    limiter: Option<DefaultKeyedRateLimiter<String>>,
    metrics: Arc<Metrics>,
}

impl Requests {
    pub fn new(limits: &Limits, metrics: Arc<Metrics>) -> Arc<Self> {
        let limiter = NonZeroU32::new(limits.requests_per_second).map(|rate| {
            let burst = NonZeroU32::new(limits.burst).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        Arc::new(Self { limiter, metrics })
    }

    /// `Err(retry_after)` when `identity` is over its rate.
    pub fn check(&self, identity: &str) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        // The keyed store wants a `&String`: one small allocation per request.
        match limiter.check_key(&identity.to_owned()) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                self.metrics.rate_limited.inc();
                Err(not_until.wait_time_from(DefaultClock::default().now()))
            }
        }
    }

    /// Forgets identities that have been quiet long enough to be back at a full burst.
    pub fn shrink(&self) {
        if let Some(l) = &self.limiter {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

/// Whole seconds to put in `Retry-After` for a wait (at least 1).
pub fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs_f64().ceil() as u64).max(1)
}
