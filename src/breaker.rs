//! A circuit breaker per registry.
//!
//! Closed: calls go through. After `consecutive_failures` failures in a row it opens: calls fail
//! at once (so a dead registry adds no latency) and their writes go to the repairer. After
//! `open_for` one trial call is let through (half-open): success closes the breaker, failure
//! opens it again for twice as long, up to [`MAX_OPEN`]. Only failures a retry could fix count
//! (timeouts, unreachable); a registry that answers with a refusal is up.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

pub const DEFAULT_CONSECUTIVE_FAILURES: u32 = 3;
pub const DEFAULT_OPEN_FOR: Duration = Duration::from_secs(2);
pub const MAX_OPEN: Duration = Duration::from_secs(10);

/// `[breaker]`, validated.
#[derive(Debug, Clone, Copy)]
pub struct BreakerSettings {
    /// Consecutive failed calls (timeouts, unreachable) that open the breaker.
    pub consecutive_failures: u32,
    /// How long it stays open before a probe tries again (doubling, up to [`MAX_OPEN`]).
    pub open_for: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    /// The value exported as `twinreg_breaker_state`.
    pub fn metric(self) -> i64 {
        match self {
            Self::Closed => 0,
            Self::HalfOpen => 1,
            Self::Open => 2,
        }
    }
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    failures: u32,
    open_for: Duration,
    reopen_at: Instant,
    trial_in_flight: bool,
}

#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    base_open_for: Duration,
    inner: Mutex<Inner>,
    /// Whether `inner.state` is `Closed`, readable without the lock: every heartbeat answered
    /// from memory asks, from every core.
    closed: AtomicBool,
    /// Why the last failed call failed, so a refusal while open can say why it opened (a wrong
    /// password keeps a registry's pool from connecting: "check etcd.password" beats "circuit
    /// open").
    last_failure: Mutex<String>,
}

/// Who is asking to make a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// A client request.
    Request,
    /// The background probe: may be the half-open trial.
    Probe,
    /// A client request when every other registry is out as well.
    LastResort,
}

/// What the breaker says about a call about to be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Go ahead.
    Yes,
    /// Go ahead: this is the half-open trial.
    Trial,
    /// Fail at once; the breaker may let a trial through in this long.
    No(Duration),
}

impl Breaker {
    pub fn new(threshold: u32, open_for: Duration) -> Self {
        let open_for = open_for.min(MAX_OPEN);
        Self {
            threshold: threshold.max(1),
            base_open_for: open_for,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                failures: 0,
                open_for,
                reopen_at: Instant::now(),
                trial_in_flight: false,
            }),
            closed: AtomicBool::new(true),
            last_failure: Mutex::default(),
        }
    }

    /// Remembers why a call failed, for [`Self::last_failure`].
    pub fn note_failure(&self, why: &str) {
        let mut last = self.last_failure.lock().expect("not poisoned");
        if *last != why {
            why.clone_into(&mut last);
        }
    }

    /// Why the last failed call failed; empty before any failed.
    pub fn last_failure(&self) -> String {
        self.last_failure.lock().expect("not poisoned").clone()
    }

    pub fn state(&self) -> BreakerState {
        self.inner.lock().expect("not poisoned").state
    }

    /// Whether the breaker is closed (calls go through), without taking its lock.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Whether a call may go ahead. While the breaker is open, client requests are refused so
    /// none waits on a registry that may still be dead; a background probe is let through as the
    /// half-open trial once `open_for` has passed; a last-resort call (every other registry is
    /// out too) always goes ahead, since trying beats failing for sure.
    pub fn admit(&self, caller: Caller) -> Admit {
        let mut b = self.inner.lock().expect("not poisoned");
        if b.state == BreakerState::Closed || caller == Caller::LastResort {
            return Admit::Yes;
        }
        let now = Instant::now();
        if caller == Caller::Request || b.trial_in_flight || now < b.reopen_at {
            return Admit::No(b.reopen_at.saturating_duration_since(now));
        }
        // From open: `closed` is false already; `record` is where it changes.
        b.state = BreakerState::HalfOpen;
        b.trial_in_flight = true;
        Admit::Trial
    }

    /// Records a call's result; returns the new state when it changed.
    pub fn record(&self, admitted: Admit, healthy: bool) -> Option<BreakerState> {
        let mut b = self.inner.lock().expect("not poisoned");
        let before = b.state;
        if admitted == Admit::Trial {
            b.trial_in_flight = false;
        }
        if healthy {
            // Any success proves the registry answers again.
            b.failures = 0;
            b.state = BreakerState::Closed;
            b.open_for = self.base_open_for;
        } else {
            b.failures = b.failures.saturating_add(1);
            let trip = match b.state {
                BreakerState::Closed => b.failures >= self.threshold,
                BreakerState::HalfOpen => admitted == Admit::Trial,
                BreakerState::Open => false,
            };
            if trip {
                if before == BreakerState::HalfOpen {
                    b.open_for = (b.open_for * 2).min(MAX_OPEN);
                }
                b.state = BreakerState::Open;
                b.reopen_at = Instant::now() + b.open_for;
            }
        }
        self.closed
            .store(b.state == BreakerState::Closed, Ordering::Release);
        (b.state != before).then_some(b.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_and_recovers_through_a_trial() {
        let b = Breaker::new(3, Duration::from_secs(2));
        for _ in 0..2 {
            assert_eq!(b.admit(Caller::Probe), Admit::Yes);
            assert_eq!(b.record(Admit::Yes, false), None);
        }
        assert!(b.is_closed());
        assert_eq!(b.record(Admit::Yes, false), Some(BreakerState::Open));
        assert!(!b.is_closed());
        assert!(matches!(b.admit(Caller::Probe), Admit::No(_)));

        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(
            matches!(b.admit(Caller::Request), Admit::No(_)),
            "requests are no trials"
        );
        assert_eq!(b.admit(Caller::Probe), Admit::Trial);
        assert!(!b.is_closed(), "half-open is not closed");
        assert!(
            matches!(b.admit(Caller::Probe), Admit::No(_)),
            "one trial at a time"
        );
        assert_eq!(b.record(Admit::Trial, false), Some(BreakerState::Open));
        // Failed trial: open twice as long.
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(matches!(b.admit(Caller::Probe), Admit::No(_)));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(b.admit(Caller::Probe), Admit::Trial);
        assert_eq!(b.record(Admit::Trial, true), Some(BreakerState::Closed));
        assert!(b.is_closed());
        assert_eq!(b.admit(Caller::Probe), Admit::Yes);
    }

    #[tokio::test(start_paused = true)]
    async fn a_last_resort_call_goes_through_an_open_breaker_and_closes_it_on_success() {
        let b = Breaker::new(1, Duration::from_secs(8));
        b.record(Admit::Yes, false);
        assert!(matches!(b.admit(Caller::Request), Admit::No(_)));
        assert_eq!(b.admit(Caller::LastResort), Admit::Yes);
        assert_eq!(
            b.record(Admit::Yes, false),
            None,
            "still open after a failed last resort"
        );
        assert_eq!(b.admit(Caller::LastResort), Admit::Yes);
        assert_eq!(b.record(Admit::Yes, true), Some(BreakerState::Closed));
        assert_eq!(b.admit(Caller::Request), Admit::Yes);
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_failure_count() {
        let b = Breaker::new(3, Duration::from_secs(2));
        b.record(Admit::Yes, false);
        b.record(Admit::Yes, false);
        b.record(Admit::Yes, true);
        b.record(Admit::Yes, false);
        b.record(Admit::Yes, false);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn open_time_is_capped() {
        let b = Breaker::new(1, Duration::from_secs(20));
        b.record(Admit::Yes, false);
        for _ in 0..5 {
            tokio::time::advance(MAX_OPEN).await;
            assert_eq!(b.admit(Caller::Probe), Admit::Trial);
            b.record(Admit::Trial, false);
        }
        tokio::time::advance(MAX_OPEN).await;
        assert_eq!(b.admit(Caller::Probe), Admit::Trial);
    }
}
