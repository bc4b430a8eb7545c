//! A loopback TCP proxy that can delay, cut and blackhole the link to a registry.
//!
//! It listens on `127.0.0.1:0` and forwards every connection to one loopback target. Its
//! [`Mode`] can be changed at any time and applies to connections already open:
//!
//! - [`Mode::Pass`]: bytes go through as they come.
//! - [`Mode::Delay`]: every chunk read from one side is written to the other that much later
//!   (a link with added latency in both directions: a round trip costs twice the delay).
//! - [`Mode::Cut`]: every open connection is reset (RST on both sides) and new ones are reset as
//!   soon as they are accepted, like a peer that went away.
//! - [`Mode::Blackhole`]: connections are accepted and kept, but nothing is forwarded in either
//!   direction, like a dropped network: callers hang until their own timeouts. Data already read
//!   is held, and flows again (as TCP retransmission would deliver it) once the mode changes back.
//!
//! Bounded: at most [`MAX_CONNECTIONS`] open connections (more are reset) and at most
//! [`QUEUE_CHUNKS`] chunks of [`CHUNK_BYTES`] queued per direction. [`Proxy::stop`] (or dropping
//! the proxy) closes the listener and every connection.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub const MAX_CONNECTIONS: usize = 128;
pub const CHUNK_BYTES: usize = 16 * 1024;
pub const QUEUE_CHUNKS: usize = 16;
/// How long the proxy tries to open the upstream connection before resetting the client's.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Delay(Duration),
    Cut,
    Blackhole,
}

pub struct Proxy {
    addr: SocketAddr,
    target: SocketAddr,
    mode: watch::Sender<Mode>,
    /// Cancelled (and replaced) by [`Proxy::cut`]: resets every connection opened before.
    cut: Arc<Mutex<CancellationToken>>,
    stop: CancellationToken,
    tracker: TaskTracker,
    active: Arc<AtomicUsize>,
    forwarded: Arc<AtomicU64>,
    accepted: Arc<AtomicU64>,
}

impl Proxy {
    /// Starts forwarding `127.0.0.1:<free port>` to `target`, in [`Mode::Pass`].
    pub async fn start(target: SocketAddr) -> Proxy {
        assert!(
            target.ip().is_loopback(),
            "the test proxy only forwards to loopback, not {target}"
        );
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the proxy listener");
        let addr = listener.local_addr().unwrap();
        let proxy = Proxy {
            addr,
            target,
            mode: watch::channel(Mode::Pass).0,
            cut: Arc::new(Mutex::new(CancellationToken::new())),
            stop: CancellationToken::new(),
            tracker: TaskTracker::new(),
            active: Arc::new(AtomicUsize::new(0)),
            forwarded: Arc::new(AtomicU64::new(0)),
            accepted: Arc::new(AtomicU64::new(0)),
        };
        let accept = Acceptor {
            listener,
            target,
            mode: proxy.mode.subscribe(),
            cut: proxy.cut.clone(),
            stop: proxy.stop.clone(),
            tracker: proxy.tracker.clone(),
            active: proxy.active.clone(),
            forwarded: proxy.forwarded.clone(),
            accepted: proxy.accepted.clone(),
        };
        proxy.tracker.spawn(accept.run());
        proxy
    }

    /// Starts a proxy in front of `http://127.0.0.1:port`-style `url` (scheme and path ignored).
    pub async fn in_front_of(url: &str) -> Proxy {
        let hostport = url
            .split("://")
            .nth(1)
            .unwrap_or(url)
            .split('/')
            .next()
            .unwrap();
        Self::start(hostport.parse().expect("a loopback ip:port URL")).await
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// `http://127.0.0.1:<proxy port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn mode(&self) -> Mode {
        *self.mode.borrow()
    }

    /// Any mode; [`Mode::Cut`] also resets the connections open now.
    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
        if mode == Mode::Cut {
            let mut cut = self.cut.lock().unwrap();
            cut.cancel();
            *cut = CancellationToken::new();
        }
    }

    /// Back to forwarding as is (held data flows again).
    pub fn pass(&self) {
        self.set(Mode::Pass);
    }

    pub fn delay(&self, d: Duration) {
        self.set(Mode::Delay(d));
    }

    /// Resets every open connection and every new one until the mode changes.
    pub fn cut(&self) {
        self.set(Mode::Cut);
    }

    pub fn blackhole(&self) {
        self.set(Mode::Blackhole);
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Connections accepted so far (including reset ones).
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Bytes forwarded so far, both directions.
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::Relaxed)
    }

    /// Closes the listener, resets every connection and waits for all proxy tasks to end.
    pub async fn stop(self) {
        self.stop.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.tracker.close();
    }
}

struct Acceptor {
    listener: TcpListener,
    target: SocketAddr,
    mode: watch::Receiver<Mode>,
    cut: Arc<Mutex<CancellationToken>>,
    stop: CancellationToken,
    tracker: TaskTracker,
    active: Arc<AtomicUsize>,
    forwarded: Arc<AtomicU64>,
    accepted: Arc<AtomicU64>,
}

/// Closes with RST instead of FIN: the peer sees "connection reset".
fn reset(s: TcpStream) {
    let _ = s.set_zero_linger();
    drop(s);
}

/// Decrements the open-connection count when a connection task ends, however it ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Acceptor {
    async fn run(self) {
        loop {
            let accepted = tokio::select! {
                _ = self.stop.cancelled() => return,
                a = self.listener.accept() => a,
            };
            let client = match accepted {
                Ok((s, _)) => s,
                Err(_) => {
                    // Out of descriptors or similar: back off a little, never spin.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            self.accepted.fetch_add(1, Ordering::Relaxed);
            if *self.mode.borrow() == Mode::Cut
                || self.active.load(Ordering::Relaxed) >= MAX_CONNECTIONS
            {
                reset(client);
                continue;
            }
            self.active.fetch_add(1, Ordering::Relaxed);
            let conn = Conn {
                target: self.target,
                mode: self.mode.clone(),
                cut: self.cut.lock().unwrap().clone(),
                stop: self.stop.clone(),
                forwarded: self.forwarded.clone(),
                _slot: Slot(self.active.clone()),
            };
            self.tracker.spawn(conn.serve(client));
        }
    }
}

struct Conn {
    target: SocketAddr,
    mode: watch::Receiver<Mode>,
    cut: CancellationToken,
    stop: CancellationToken,
    forwarded: Arc<AtomicU64>,
    _slot: Slot,
}

/// Waits while the link is blackholed; false when the proxy is going away.
async fn open_link(mode: &mut watch::Receiver<Mode>) -> bool {
    mode.wait_for(|m| *m != Mode::Blackhole).await.is_ok()
}

impl Conn {
    async fn serve(mut self, mut client: TcpStream) {
        let _ = client.set_nodelay(true);
        let ended = self.cut.clone();
        let stop = self.stop.clone();
        // A blackholed link does not even reach the target until it is healed.
        let upstream = tokio::select! {
            _ = ended.cancelled() => None,
            _ = stop.cancelled() => None,
            u = async {
                if !open_link(&mut self.mode).await || *self.mode.borrow() == Mode::Cut {
                    return None;
                }
                tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(self.target))
                    .await
                    .ok()?
                    .ok()
            } => u,
        };
        let Some(mut upstream) = upstream else {
            reset(client);
            return;
        };
        let _ = upstream.set_nodelay(true);
        let clean = {
            let (cr, cw) = client.split();
            let (ur, uw) = upstream.split();
            let up = pump(cr, uw, self.mode.clone(), self.forwarded.clone());
            let down = pump(ur, cw, self.mode.clone(), self.forwarded.clone());
            tokio::select! {
                r = async { tokio::try_join!(up, down) } => r.is_ok(),
                _ = ended.cancelled() => false,
                _ = stop.cancelled() => false,
            }
        };
        if !clean {
            reset(client);
            reset(upstream);
        }
    }
}

/// Copies one direction: a reader queues each chunk with the time it may be written (now, or now
/// plus the delay), a writer writes it then. Both hold still while the link is blackholed.
async fn pump(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    mode: watch::Receiver<Mode>,
    forwarded: Arc<AtomicU64>,
) -> io::Result<()> {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(QUEUE_CHUNKS);
    let mut read_mode = mode.clone();
    let reader = async move {
        let mut buf = vec![0u8; CHUNK_BYTES];
        loop {
            if !open_link(&mut read_mode).await {
                return Err(io::Error::other("proxy stopped"));
            }
            let n = from.read(&mut buf).await?;
            if n == 0 {
                // EOF: dropping the sender lets the writer flush what is queued, then half-close.
                return Ok(());
            }
            let delay = match *read_mode.borrow() {
                Mode::Delay(d) => d,
                _ => Duration::ZERO,
            };
            if tx
                .send((Instant::now() + delay, buf[..n].to_vec()))
                .await
                .is_err()
            {
                return Err(io::Error::other("writer gone"));
            }
        }
    };
    let mut write_mode = mode;
    let writer = async move {
        while let Some((at, chunk)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if !open_link(&mut write_mode).await {
                return Err(io::Error::other("proxy stopped"));
            }
            to.write_all(&chunk).await?;
            forwarded.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        to.shutdown().await
    };
    tokio::try_join!(reader, writer).map(drop)
}
