//! Blocking queries: `?index=` and `?wait=`, with Consul's rules.
//!
//! `index` missing or 0 answers at once. Otherwise the query waits until the result's index
//! exceeds `index`, or until `wait` (default 5m, at most 10m, plus a random extra of up to
//! wait/16) has passed, then answers with the current data and index. `wait` is a Go duration
//! and needs a unit (`400 Invalid wait time`); a bad `index` is `400 Invalid index`.

use std::time::Duration;

use http::{HeaderValue, StatusCode};
use rand::Rng;
use tokio::time::Instant;

use crate::http::{ApiError, Req, Resp};
use crate::state::State;
use crate::store::Inner;

const DEFAULT_WAIT: Duration = Duration::from_secs(300);
const MAX_WAIT: Duration = Duration::from_secs(600);

/// A parsed `?index=&wait=`.
#[derive(Debug, Clone, Copy)]
pub struct Blocking {
    pub min_index: u64,
    pub wait: Duration,
    /// `X-Consul-Effective-Consistency`: `leader` unless `?stale` or `?consistent`.
    pub consistency: &'static str,
}

/// Consul's `parseWait` (the wait is checked first), plus `parseConsistency`'s conflict check.
pub fn parse(req: &Req) -> Result<Blocking, ApiError> {
    let mut wait = Duration::ZERO;
    if let Some(w) = req.query("wait").filter(|w| !w.is_empty()) {
        let ns =
            crate::duration::parse(w).map_err(|_| ApiError::bad_request("Invalid wait time"))?;
        wait = crate::duration::to_std(ns);
    }
    let mut min_index = 0;
    if let Some(i) = req.query("index").filter(|i| !i.is_empty()) {
        min_index = i
            .parse()
            .map_err(|_| ApiError::bad_request("Invalid index"))?;
    }
    if req.has_query("stale") && req.has_query("consistent") {
        return Err(ApiError::bad_request(
            "Cannot specify ?stale with ?consistent, conflicting semantics.",
        ));
    }
    let consistency = if req.has_query("stale") {
        "stale"
    } else if req.has_query("consistent") {
        "consistent"
    } else {
        "leader"
    };
    Ok(Blocking {
        min_index,
        wait,
        consistency,
    })
}

impl Blocking {
    /// The effective timeout: default, cap, and jitter as Consul applies them.
    pub fn timeout(&self) -> Duration {
        let mut wait = self.wait;
        if wait.is_zero() {
            wait = DEFAULT_WAIT;
        }
        wait = wait.min(MAX_WAIT);
        let jitter_ms = (wait / 16).as_millis() as u64;
        if jitter_ms > 0 {
            wait += Duration::from_millis(rand::rng().random_range(0..jitter_ms));
        }
        wait
    }
}

/// Waits until the index (`index`, under the state lock) exceeds the requested one or the wait
/// ends, then returns `value` and the index read under the same lock (the index at least 1).
/// The value is built only then: a change elsewhere wakes the query for an index read, not for
/// a rebuild of its whole answer.
pub async fn run<T>(
    state: &State,
    b: Blocking,
    index: impl Fn(&Inner) -> u64,
    mut value: impl FnMut(&Inner) -> T,
) -> (T, u64) {
    let deadline = Instant::now() + b.timeout();
    let answer =
        |inner: &Inner, value: &mut dyn FnMut(&Inner) -> T| (value(inner), index(inner).max(1));
    loop {
        // Subscribe before reading, so a change between the read and the wait is not missed.
        let mut changes = state.subscribe();
        {
            let inner = state.lock();
            let now = index(&inner).max(1);
            if b.min_index == 0 || now > b.min_index || Instant::now() >= deadline {
                return answer(&inner, &mut value);
            }
        }
        tokio::select! {
            r = changes.changed() => {
                if r.is_err() {
                    return answer(&state.lock(), &mut value);
                }
            }
            _ = tokio::time::sleep_until(deadline) => return answer(&state.lock(), &mut value),
        }
    }
}

/// Waits, for `/v1/agent/service/:id?hash=`, until `hash_of` differs from `hash` or the wait ends.
pub async fn run_hash<T>(
    state: &State,
    hash: &str,
    wait: Duration,
    mut query: impl FnMut(&Inner) -> Result<(T, String), ApiError>,
) -> Result<(T, String), ApiError> {
    let b = Blocking {
        min_index: 0,
        wait,
        consistency: "leader",
    };
    let deadline = Instant::now() + b.timeout();
    loop {
        let mut changes = state.subscribe();
        let (value, current) = query(&state.lock())?;
        if hash.is_empty() || current != hash || Instant::now() >= deadline {
            return Ok((value, current));
        }
        tokio::select! {
            r = changes.changed() => {
                if r.is_err() {
                    return Ok((value, current));
                }
            }
            _ = tokio::time::sleep_until(deadline) => return query(&state.lock()),
        }
    }
}

/// The query-meta headers of catalog and health answers.
pub fn set_meta(resp: &mut Resp, index: u64, b: &Blocking) {
    let h = resp.headers_mut();
    h.insert(
        "X-Consul-Effective-Consistency",
        HeaderValue::from_static(b.consistency),
    );
    h.insert("X-Consul-Index", HeaderValue::from(index.max(1)));
    h.insert("X-Consul-KnownLeader", HeaderValue::from_static("true"));
    h.insert("X-Consul-LastContact", HeaderValue::from_static("0"));
    h.insert(
        "X-Consul-Query-Backend",
        HeaderValue::from_static("blocking-query"),
    );
    debug_assert_eq!(resp.status(), StatusCode::OK);
}
