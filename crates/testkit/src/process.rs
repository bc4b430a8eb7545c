//! The one way the tests run a server process: etcd, Consul or mini-consul, and the twinreg
//! binary all go through [`Process`], which keeps the output, freezes and thaws, kills, and kills
//! again on drop (thawing first: a stopped process does not act on SIGKILL until continued on
//! every kernel, and a frozen test server must never outlive its test).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

use nix::sys::signal::Signal;

/// Where a process's stdout and stderr go.
pub enum Output {
    /// Both into this file (a server's log, read when it fails).
    File(PathBuf),
    /// Both collected line by line, readable with [`Process::lines`] while it runs.
    Lines,
    /// Nowhere.
    Null,
}

pub struct Process {
    name: String,
    child: Option<Child>,
    frozen: std::sync::atomic::AtomicBool,
    log: Option<PathBuf>,
    lines: Arc<Mutex<Vec<String>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

/// Sends a signal to a process.
pub fn signal(pid: u32, sig: Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig)
        .unwrap_or_else(|e| panic!("sending {sig} to {pid}: {e}"));
}

impl Process {
    /// Starts `cmd`; `name` says what it is in panics.
    pub fn spawn(name: &str, mut cmd: Command, output: Output) -> Process {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let mut log = None;
        match &output {
            Output::File(path) => {
                let f = std::fs::File::create(path)
                    .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
                cmd.stdout(f.try_clone().unwrap()).stderr(f);
                log = Some(path.clone());
            }
            Output::Lines => {
                cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            }
            Output::Null => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({:?}): {e}", cmd.get_program()));
        let mut readers = Vec::new();
        if let Output::Lines = output {
            let outs: [Box<dyn std::io::Read + Send>; 2] = [
                Box::new(child.stdout.take().expect("piped")),
                Box::new(child.stderr.take().expect("piped")),
            ];
            for out in outs {
                let lines = lines.clone();
                readers.push(std::thread::spawn(move || {
                    for line in BufReader::new(out).lines().map_while(Result::ok) {
                        lines.lock().expect("not poisoned").push(line);
                    }
                }));
            }
        }
        Process {
            name: name.to_owned(),
            child: Some(child),
            frozen: Default::default(),
            log,
            lines,
            readers,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .unwrap_or_else(|| panic!("{} is not running", self.name))
            .id()
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Its exit status, if it has exited (without waiting).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// SIGSTOP: it keeps its sockets but answers nothing.
    pub fn freeze(&self) {
        signal(self.pid(), Signal::SIGSTOP);
        self.frozen.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// SIGCONT after [`Process::freeze`].
    pub fn thaw(&self) {
        signal(self.pid(), Signal::SIGCONT);
        self.frozen
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// SIGKILL, and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            if self.frozen.swap(false, std::sync::atomic::Ordering::SeqCst) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(c.id() as i32),
                    Signal::SIGCONT,
                );
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        self.join_readers();
    }

    /// Sends `sig` (if any) and waits (blocking) until it exits, at most `limit`: its exit
    /// status, or `None` when it had to be killed.
    pub fn stop_within(
        &mut self,
        sig: Option<Signal>,
        limit: std::time::Duration,
    ) -> Option<ExitStatus> {
        let mut c = self
            .child
            .take()
            .unwrap_or_else(|| panic!("{} is not running", self.name));
        if let Some(sig) = sig {
            signal(c.id(), sig);
        }
        let deadline = std::time::Instant::now() + limit;
        let status = loop {
            if let Some(status) = c.try_wait().expect("waiting for the process") {
                break Some(status);
            }
            if std::time::Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                break None;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        self.join_readers();
        status
    }

    fn join_readers(&mut self) {
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }

    /// Every line of output so far ([`Output::Lines`]).
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("not poisoned").clone()
    }

    /// Waits (blocking, at most `limit`) for a line of output starting with `prefix`
    /// ([`Output::Lines`]), and returns the rest of it.
    pub fn wait_for_line(&self, prefix: &str, limit: std::time::Duration) -> String {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(rest) = self
                .lines()
                .iter()
                .find_map(|l| l.strip_prefix(prefix).map(str::to_owned))
            {
                return rest;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} printed no line starting {prefix:?} within {limit:?}; it printed: {:?}",
                self.name,
                self.lines()
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// The log file's contents so far ([`Output::File`]), for a failure message.
    pub fn log(&self) -> String {
        self.log
            .as_deref()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .unwrap_or_default()
    }

    pub fn log_path(&self) -> Option<&Path> {
        self.log.as_deref()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}
