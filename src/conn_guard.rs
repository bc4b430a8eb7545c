//! Deadlines for one client connection on the public listener, kept by one timer per
//! connection rather than one per request:
//!
//! - **headers** (`limits.header_read_timeout`, slowloris): an HTTP/1 client that has started a
//!   request's headers, or has sent nothing since it connected, must complete them within the
//!   limit, else the connection is dropped;
//! - **idle** (`limits.idle_timeout`): a keep-alive HTTP/1 connection with no request for that
//!   long is closed gracefully. Longer than a load balancer's usual 60 s, so that the balancer,
//!   which knows when it is about to send, is the side that closes an idle connection.
//!
//! hyper's own header timer arms a fresh timer for every request (an allocation and a timer
//! wheel insertion and removal per heartbeat, and one more read of the socket to start it); it
//! also runs while a keep-alive connection waits for its next request, so a client heartbeating
//! every 10 s or more lost its connection (and paid a TLS handshake) on every beat.
//!
//! The connection's own task counts what it read ([`Watched`], around the TLS stream), when a
//! request's head was complete ([`Progress::head`], from the service) and when an answer was
//! written; a tick every half `header_read_timeout` reads those counters. A request being served
//! (between its head and its answer) is judged by the request and body timeouts instead. HTTP/2
//! connections (ALPN `h2`, or the HTTP/2 preface) are not judged: they have PINGs, streams that
//! stay open by design (watches), and no per-request header phase to starve.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::server::graceful::GracefulConnection;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

/// The first bytes of an HTTP/2 connection (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What one connection has done, written and read by its own task only: relaxed loads and
/// stores, no read-modify-write.
#[derive(Debug, Default)]
pub struct Progress {
    /// Plaintext bytes read from the client.
    read: AtomicU64,
    /// `read` when the last answer started being written.
    read_at_answer: AtomicU64,
    /// Request heads completed.
    heads: AtomicU64,
    /// A request's head is complete and its answer not yet started.
    serving: AtomicBool,
    /// The connection speaks HTTP/2: not judged.
    h2: AtomicBool,
}

impl Progress {
    /// A request's head is complete (the service was called).
    pub fn head(&self) {
        self.heads.store(self.heads.load(Relaxed) + 1, Relaxed);
        self.serving.store(true, Relaxed);
    }

    /// The connection speaks HTTP/2.
    pub fn h2(&self) {
        self.h2.store(true, Relaxed);
    }

    fn read(&self, n: usize, first: &[u8]) {
        let before = self.read.load(Relaxed);
        if before == 0 && H2_PREFACE.starts_with(&first[..first.len().min(H2_PREFACE.len())]) {
            self.h2();
        }
        self.read.store(before + n as u64, Relaxed);
    }

    fn answering(&self) {
        if self.serving.load(Relaxed) {
            self.serving.store(false, Relaxed);
            self.read_at_answer.store(self.read.load(Relaxed), Relaxed);
        }
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            read: self.read.load(Relaxed),
            read_at_answer: self.read_at_answer.load(Relaxed),
            heads: self.heads.load(Relaxed),
            serving: self.serving.load(Relaxed),
            h2: self.h2.load(Relaxed),
        }
    }
}

/// The counters at one tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Snapshot {
    read: u64,
    read_at_answer: u64,
    heads: u64,
    serving: bool,
    h2: bool,
}

/// What a tick decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Fine,
    /// No request for `idle_timeout`: close gracefully.
    Idle,
    /// A request's headers (or the first request) not complete within `header_read_timeout`.
    SlowHeaders,
    /// HTTP/2: nothing more to judge.
    Unjudged,
}

/// What a connection that is not serving a request is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a head to complete (one started, or none yet on a new connection).
    Head,
    /// Waiting for the next request.
    Idle,
}

/// The judgement over successive ticks.
#[derive(Debug)]
struct Judge {
    deadlines: Deadlines,
    /// The phase the connection was last seen in, since when, and after how many heads.
    seen: Option<(Phase, Instant, u64)>,
}

impl Judge {
    fn new(deadlines: Deadlines, start: Instant) -> Self {
        Self {
            deadlines,
            // Until its first request, a connection is waiting for headers.
            seen: Some((Phase::Head, start, 0)),
        }
    }

    fn at(&mut self, now: Instant, s: Snapshot) -> Verdict {
        if s.h2 {
            return Verdict::Unjudged;
        }
        if s.serving {
            self.seen = None;
            return Verdict::Fine;
        }
        let phase = if s.heads == 0 || s.read > s.read_at_answer {
            Phase::Head
        } else {
            Phase::Idle
        };
        match self.seen {
            Some((p, since, heads)) if p == phase && heads == s.heads => {
                let (limit, verdict) = match phase {
                    Phase::Head => (self.deadlines.header_read_timeout, Verdict::SlowHeaders),
                    Phase::Idle => (self.deadlines.idle_timeout, Verdict::Idle),
                };
                if now.duration_since(since) >= limit {
                    return verdict;
                }
            }
            _ => self.seen = Some((phase, now, s.heads)),
        }
        Verdict::Fine
    }
}

/// The connection's deadlines.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
}

/// Serves `conn` to its end: closes it gracefully when `closing` is cancelled (the server's
/// drain) or when it has been idle for `idle_timeout`, and drops it when a request's headers
/// are not complete within `header_read_timeout`.
pub async fn serve<C, E>(
    conn: C,
    progress: Arc<Progress>,
    deadlines: Deadlines,
    closing: CancellationToken,
) -> Result<(), ConnError<E>>
where
    C: GracefulConnection<Error = E>,
{
    let start = Instant::now();
    let period = deadlines.header_read_timeout / 2;
    let mut judge = Judge::new(deadlines, start);
    let mut tick = tokio::time::interval_at(start + period, period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut judged = true;
    let mut shutting = false;
    tokio::pin!(conn);
    let closed = closing.cancelled();
    tokio::pin!(closed);
    loop {
        tokio::select! {
            biased;
            ended = conn.as_mut() => return ended.map_err(ConnError::Http),
            () = &mut closed, if !shutting => {
                shutting = true;
                conn.as_mut().graceful_shutdown();
            }
            now = tick.tick(), if judged => match judge.at(now, progress.snapshot()) {
                Verdict::Fine => {}
                Verdict::Unjudged => judged = false,
                Verdict::Idle => {
                    judged = false;
                    if !shutting {
                        shutting = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
                Verdict::SlowHeaders => return Err(ConnError::SlowHeaders),
            },
        }
    }
}

/// How a connection ended badly.
#[derive(Debug, thiserror::Error)]
pub enum ConnError<E> {
    #[error("request headers not complete within limits.header_read_timeout")]
    SlowHeaders,
    #[error("{0}")]
    Http(E),
}

/// A client's stream with its reads and writes counted in a [`Progress`].
pub struct Watched<S> {
    inner: S,
    progress: Arc<Progress>,
}

impl<S> Watched<S> {
    pub fn new(inner: S, progress: Arc<Progress>) -> Self {
        Self { inner, progress }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.progress.read(n, &buf.filled()[before..]);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.progress.answering();
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.progress.answering();
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: Duration = Duration::from_secs(10);
    const IDLE: Duration = Duration::from_secs(90);
    const DEADLINES: Deadlines = Deadlines {
        header_read_timeout: H,
        idle_timeout: IDLE,
    };

    fn snap(read: u64, read_at_answer: u64, heads: u64, serving: bool) -> Snapshot {
        Snapshot {
            read,
            read_at_answer,
            heads,
            serving,
            h2: false,
        }
    }

    #[test]
    fn a_connection_that_never_completes_its_first_request_is_dropped() {
        let t0 = Instant::now();
        let mut j = Judge::new(DEADLINES, t0);
        assert_eq!(j.at(t0 + H / 2, snap(0, 0, 0, false)), Verdict::Fine);
        assert_eq!(j.at(t0 + H, snap(30, 0, 0, false)), Verdict::SlowHeaders);
    }

    #[test]
    fn a_head_started_after_an_answer_must_complete_in_time() {
        let t0 = Instant::now();
        let mut j = Judge::new(DEADLINES, t0);
        // One request served and answered, then part of a second head.
        assert_eq!(j.at(t0 + H / 2, snap(100, 100, 1, false)), Verdict::Fine);
        assert_eq!(j.at(t0 + H, snap(120, 100, 1, false)), Verdict::Fine);
        assert_eq!(
            j.at(t0 + H * 3 / 2, snap(121, 100, 1, false)),
            Verdict::Fine
        );
        assert_eq!(
            j.at(t0 + H * 2, snap(122, 100, 1, false)),
            Verdict::SlowHeaders
        );
    }

    #[test]
    fn a_keep_alive_connection_idles_until_the_idle_timeout_not_the_header_one() {
        let t0 = Instant::now();
        let mut j = Judge::new(DEADLINES, t0);
        let mut now = t0;
        // The first tick starts the idle clock; 90 s later it is over.
        for _ in 0..(IDLE.as_secs() / 5) {
            now += H / 2;
            assert_eq!(j.at(now, snap(100, 100, 1, false)), Verdict::Fine);
        }
        now += H / 2;
        assert_eq!(j.at(now, snap(100, 100, 1, false)), Verdict::Idle);
    }

    #[test]
    fn requests_between_ticks_restart_both_clocks() {
        let t0 = Instant::now();
        let mut j = Judge::new(DEADLINES, t0);
        let mut now = t0;
        // A client heartbeating every 20 s: never idle for long, never slow.
        for beat in 1..40u64 {
            now += H / 2;
            let v = j.at(now, snap(100 * beat, 100 * beat, beat, false));
            assert_eq!(v, Verdict::Fine, "beat {beat}");
        }
        // Busy serving a long poll for minutes: judged by the request's own timeouts.
        for _ in 0..100 {
            now += H / 2;
            assert_eq!(j.at(now, snap(5000, 4000, 41, true)), Verdict::Fine);
        }
    }

    #[test]
    fn http2_is_not_judged() {
        let t0 = Instant::now();
        let mut j = Judge::new(DEADLINES, t0);
        let s = Snapshot {
            h2: true,
            ..snap(24, 0, 0, false)
        };
        assert_eq!(j.at(t0 + H * 10, s), Verdict::Unjudged);
    }

    #[test]
    fn the_http2_preface_is_recognised_even_split() {
        let p = Progress::default();
        p.read(4, b"PRI ");
        assert!(p.h2.load(Relaxed));
        let p = Progress::default();
        p.read(4, b"PUT ");
        p.read(19, b"PRI * HTTP/2.0\r\n\r\nSM");
        assert!(
            !p.h2.load(Relaxed),
            "only the connection's first bytes count"
        );
    }
}
