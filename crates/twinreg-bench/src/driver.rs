//! Runs a set of workers through a schedule and records what they did.
//!
//! Every schedule hands out numbered tickets from one shared counter: a worker takes the next
//! ticket, performs the request the ticket stands for, and comes back. The ticket decides which
//! operation and instance a request is for, so the instances are covered evenly whatever the workers' speeds, and the
//! number of workers bounds the requests in flight. A paced schedule gives ticket `k` a due time
//! instead of a fixed task per instance: 10,000 instances heartbeating every 2 s need no 10,000
//! timers, only as many sleeping workers as may be in flight.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::stats::Recorder;
use crate::workload::Request;

/// How often progress goes to stderr.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Something that performs requests one at a time: one connection (or one registry client).
pub trait Worker: Send + 'static {
    /// `Err` describes a failed request (a non-2xx answer, a transport error).
    fn call(&mut self, request: Request) -> impl Future<Output = Result<(), String>> + Send;
}

/// When requests are sent.
#[derive(Clone, Copy, Debug)]
pub enum Schedule {
    /// Tickets `0..count`, each once, as fast as the workers go: untimed set-up.
    Each { count: u64 },
    /// Closed loop: each worker sends its next request as soon as the previous one is answered.
    /// Requests started during `warmup` are not recorded.
    Closed {
        warmup: Duration,
        duration: Duration,
    },
    /// Each of `instances` is due once per `interval`, their due times spread evenly over it;
    /// a request that falls behind is sent late (as soon as a worker is free), never skipped,
    /// until `duration` is over.
    Paced {
        interval: Duration,
        instances: u64,
        duration: Duration,
    },
}

/// The schedule fixed in time once the run starts.
#[derive(Clone, Copy)]
enum Plan {
    Each {
        count: u64,
    },
    Closed {
        record_from: Instant,
        until: Instant,
    },
    Paced {
        start: Instant,
        until: Instant,
        interval_nanos: u128,
        instances: u64,
    },
}

impl Plan {
    fn new(schedule: Schedule, start: Instant) -> Self {
        match schedule {
            Schedule::Each { count } => Self::Each { count },
            Schedule::Closed { warmup, duration } => Self::Closed {
                record_from: start + warmup,
                until: start + warmup + duration,
            },
            Schedule::Paced {
                interval,
                instances,
                duration,
            } => Self::Paced {
                start,
                until: start + duration,
                interval_nanos: interval.as_nanos(),
                instances: instances.max(1),
            },
        }
    }

    /// When the measured part of the run starts.
    fn measured_from(&self, start: Instant) -> Instant {
        match *self {
            Self::Closed { record_from, .. } => record_from,
            _ => start,
        }
    }
}

/// What a run of the workers produced; the workers come back so the next phase reuses their
/// connections.
pub struct Outcome<W> {
    pub workers: Vec<W>,
    pub recorder: Recorder,
    /// From the start of the measured part until the last worker finished.
    pub elapsed: Duration,
}

/// Running totals for the progress line.
#[derive(Default)]
struct Progress {
    ok: AtomicU64,
    failed: AtomicU64,
}

/// Runs `workers` through `schedule`, sending `pick(ticket)` for each ticket; `phase` names the
/// run in the progress lines on stderr.
pub async fn drive<W, P>(workers: Vec<W>, schedule: Schedule, pick: P, phase: &str) -> Outcome<W>
where
    W: Worker,
    P: Fn(u64) -> Request + Copy + Send + 'static,
{
    let start = Instant::now();
    let plan = Plan::new(schedule, start);
    let tickets = Arc::new(AtomicU64::new(0));
    let progress = Arc::new(Progress::default());
    let reporter = tokio::spawn(report_progress(
        phase.to_owned(),
        progress.clone(),
        match schedule {
            Schedule::Each { count } => Some(count),
            _ => None,
        },
    ));
    let handles: Vec<_> = workers
        .into_iter()
        .map(|w| tokio::spawn(work(w, plan, pick, tickets.clone(), progress.clone())))
        .collect();
    let mut workers = Vec::with_capacity(handles.len());
    let mut recorder = Recorder::new();
    for h in handles {
        let (w, rec) = h.await.expect("a bench worker panicked");
        workers.push(w);
        recorder.merge(rec);
    }
    let finished = Instant::now();
    reporter.abort();
    let ok = progress.ok.load(Ordering::Relaxed);
    let failed = progress.failed.load(Ordering::Relaxed);
    eprintln!(
        "{phase}: done, {ok} ok, {failed} failed in {:.1}s",
        (finished - start).as_secs_f64()
    );
    Outcome {
        workers,
        recorder,
        elapsed: finished.saturating_duration_since(plan.measured_from(start)),
    }
}

async fn work<W: Worker>(
    mut worker: W,
    plan: Plan,
    pick: impl Fn(u64) -> Request,
    tickets: Arc<AtomicU64>,
    progress: Arc<Progress>,
) -> (W, Recorder) {
    let mut rec = Recorder::new();
    loop {
        let ticket = tickets.fetch_add(1, Ordering::Relaxed);
        let record = match plan {
            Plan::Each { count } => {
                if ticket >= count {
                    break;
                }
                true
            }
            Plan::Closed { record_from, until } => {
                let now = Instant::now();
                if now >= until {
                    break;
                }
                now >= record_from
            }
            Plan::Paced {
                start,
                until,
                interval_nanos,
                instances,
            } => {
                let offset = interval_nanos * u128::from(ticket) / u128::from(instances);
                let due = start + Duration::from_nanos(u64::try_from(offset).unwrap_or(u64::MAX));
                // A target that cannot keep up leaves a backlog: the run still ends on time, and
                // the report shows the rate achieved against the rate scheduled.
                if due >= until || Instant::now() >= until {
                    break;
                }
                tokio::time::sleep_until(due).await;
                rec.lag(Instant::now().saturating_duration_since(due));
                true
            }
        };
        let started = Instant::now();
        let result = worker.call(pick(ticket)).await;
        let counter = if result.is_ok() {
            &progress.ok
        } else {
            &progress.failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if record {
            match result {
                Ok(()) => rec.ok(started.elapsed()),
                Err(e) => rec.error(|| e),
            }
        }
    }
    (worker, rec)
}

/// Prints a progress line every second until aborted.
async fn report_progress(phase: String, progress: Arc<Progress>, total: Option<u64>) {
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    tick.tick().await;
    let started = Instant::now();
    loop {
        tick.tick().await;
        let ok = progress.ok.load(Ordering::Relaxed);
        let failed = progress.failed.load(Ordering::Relaxed);
        let of = total.map(|t| format!("/{t}")).unwrap_or_default();
        eprintln!(
            "{phase}: {:>4.0}s {}{of} ok, {failed} failed",
            started.elapsed().as_secs_f64(),
            ok
        );
    }
}
