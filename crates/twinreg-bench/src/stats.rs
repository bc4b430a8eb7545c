//! What a run measured, and the one JSON line it prints.
//!
//! Each worker owns a [`Recorder`] so that recording a request touches no shared state; the
//! recorders are merged once the workers are done.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Non-2xx bodies (or transport errors) kept as a sample: enough to see what went wrong without
/// flooding the output when every request fails the same way.
const ERROR_SAMPLE: usize = 3;
/// A sampled error body is cut to this many characters.
const ERROR_CHARS: usize = 300;
/// The histogram's range: 1 µs to 10 minutes, 3 significant digits (0.1 % resolution).
const MAX_MICROS: u64 = 600_000_000;

/// Latencies (in microseconds) of the successful requests, and the failures.
pub struct Recorder {
    latencies: Histogram<u64>,
    errors: u64,
    sample: Vec<String>,
    /// Paced runs: the largest delay between a request's due time and its start.
    max_lag: Duration,
}

impl Recorder {
    pub fn new() -> Self {
        Self {
            latencies: Histogram::new_with_bounds(1, MAX_MICROS, 3)
                .expect("static histogram bounds are valid"),
            errors: 0,
            sample: Vec::new(),
            max_lag: Duration::ZERO,
        }
    }

    pub fn ok(&mut self, took: Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.latencies.saturating_record(micros.max(1));
    }

    /// A failed request; `describe` runs only while the sample still has room, so the common
    /// case of many identical failures costs no formatting.
    pub fn error(&mut self, describe: impl FnOnce() -> String) {
        self.errors += 1;
        if self.sample.len() < ERROR_SAMPLE {
            let mut text = describe();
            if let Some((cut, _)) = text.char_indices().nth(ERROR_CHARS) {
                text.truncate(cut);
            }
            self.sample.push(text);
        }
    }

    /// A few of the failures, as described.
    pub fn sample(&self) -> &[String] {
        &self.sample
    }

    pub fn lag(&mut self, lag: Duration) {
        self.max_lag = self.max_lag.max(lag);
    }

    pub fn ops(&self) -> u64 {
        self.latencies.len()
    }

    pub fn errors(&self) -> u64 {
        self.errors
    }

    pub fn merge(&mut self, other: Recorder) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.latencies.add(&other.latencies);
        self.errors += other.errors;
        for s in other.sample {
            if self.sample.len() < ERROR_SAMPLE {
                self.sample.push(s);
            }
        }
        self.max_lag = self.max_lag.max(other.max_lag);
    }
}

/// How the requests were scheduled, for the report.
pub enum Mode {
    /// Each instance once, as fast as the workers go (the registration before a heartbeat run).
    Once,
    Closed,
    Paced {
        interval: Duration,
        instances: u64,
    },
}

/// The JSON line on stdout. `ops` counts 2xx answers only, and the percentiles are theirs: a
/// fast 503 must not make a target look quicker.
#[derive(Serialize)]
pub struct Report {
    pub target: String,
    pub op: String,
    pub concurrency: usize,
    pub instances: u64,
    pub seconds: f64,
    pub ops: u64,
    pub ops_per_sec: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub errors: u64,
    pub error_sample: Vec<String>,
    pub mode: &'static str,
    /// Paced runs: the schedule's rate, to compare with `ops_per_sec`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduled_per_sec: Option<f64>,
    /// Paced runs: how far behind its schedule the client fell at worst.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_lag_ms: Option<u64>,
}

/// What identifies a run in its report.
pub struct Labels<'a> {
    pub target: &'a str,
    pub op: &'a str,
    pub concurrency: usize,
    pub instances: u64,
}

impl Report {
    pub fn new(labels: Labels<'_>, mode: &Mode, rec: Recorder, elapsed: Duration) -> Self {
        let seconds = elapsed.as_secs_f64();
        let ops = rec.ops();
        let q = |quantile| {
            if ops == 0 {
                0
            } else {
                rec.latencies.value_at_quantile(quantile)
            }
        };
        let (mode, scheduled_per_sec, max_lag_ms) = match mode {
            Mode::Once => ("once", None, None),
            Mode::Closed => ("closed", None, None),
            Mode::Paced {
                interval,
                instances,
            } => (
                "paced",
                Some(round(*instances as f64 / interval.as_secs_f64(), 1)),
                Some(u64::try_from(rec.max_lag.as_millis()).unwrap_or(u64::MAX)),
            ),
        };
        Self {
            target: labels.target.to_owned(),
            op: labels.op.to_owned(),
            concurrency: labels.concurrency,
            instances: labels.instances,
            seconds: round(seconds, 3),
            ops,
            ops_per_sec: if seconds > 0.0 {
                round(ops as f64 / seconds, 1)
            } else {
                0.0
            },
            p50_us: q(0.5),
            p99_us: q(0.99),
            p999_us: q(0.999),
            errors: rec.errors,
            error_sample: rec.sample,
            mode,
            scheduled_per_sec,
            max_lag_ms,
        }
    }

    /// Prints the report as the single line on stdout.
    pub fn print(&self) {
        println!(
            "{}",
            serde_json::to_string(self).expect("a report always serializes")
        );
    }
}

fn round(x: f64, decimals: i32) -> f64 {
    let f = 10f64.powi(decimals);
    (x * f).round() / f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_cover_successes_only_and_the_sample_is_capped() {
        let mut a = Recorder::new();
        for ms in 1..=100 {
            a.ok(Duration::from_millis(ms));
        }
        let mut b = Recorder::new();
        for i in 0..5 {
            b.error(|| format!("503 {i}"));
        }
        a.merge(b);
        let labels = Labels {
            target: "t",
            op: "register",
            concurrency: 1,
            instances: 1,
        };
        let r = Report::new(labels, &Mode::Closed, a, Duration::from_secs(2));
        assert_eq!(r.ops, 100);
        assert_eq!(r.errors, 5);
        assert_eq!(r.error_sample, ["503 0", "503 1", "503 2"]);
        assert_eq!(r.ops_per_sec, 50.0);
        assert!((49_000..=51_000).contains(&r.p50_us), "{}", r.p50_us);
        assert!((98_000..=100_100).contains(&r.p99_us), "{}", r.p99_us);
    }
}
