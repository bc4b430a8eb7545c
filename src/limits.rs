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

use crate::config::Limits;
use crate::metrics::Metrics;

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
