//! Child processes that keep their log and never outlive their handle.

use std::{
    collections::VecDeque,
    io::{BufRead, BufReader, Read, Write},
    os::unix::process::CommandExt,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use crate::Error;

/// Lines kept per process; enough for a failing test's diagnosis, bounded for long runs.
const LOG_LINES_KEPT: usize = 5_000;

/// Where a process's output goes besides its in-memory log.
#[derive(Debug, Clone)]
pub enum LogSink {
    /// Kept in memory only (printed when a test fails).
    Capture,
    /// Also echoed to stdout, each line prefixed with `[name]`.
    Echo,
}

type Log = Arc<Mutex<VecDeque<String>>>;

/// A started child process.
///
/// Children run in their own process group, so a Ctrl-C in the terminal reaches only the
/// launcher, which then stops them in order; and they receive SIGTERM if the launching thread
/// dies without stopping them (Linux parent-death signal), so none is left behind.
pub struct ManagedProcess {
    name: String,
    child: Child,
    log: Log,
    /// Bytes of output so far (the log keeps only the last lines).
    written: Arc<AtomicU64>,
    exited: Option<ExitStatus>,
}

impl ManagedProcess {
    /// Starts `command` with piped output.
    pub fn spawn(name: &str, mut command: Command, sink: LogSink) -> Result<Self, Error> {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            command.pre_exec(|| {
                libc::setpgid(0, 0);
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let mut child = command.spawn().map_err(|source| Error::Spawn {
            name: name.to_string(),
            program: command.get_program().into(),
            source,
        })?;
        let log: Log = Arc::default();
        let written = Arc::new(AtomicU64::new(0));
        if let Some(stdout) = child.stdout.take() {
            pump(name, stdout, (log.clone(), written.clone()), sink.clone());
        }
        if let Some(stderr) = child.stderr.take() {
            pump(name, stderr, (log.clone(), written.clone()), sink);
        }
        Ok(Self {
            name: name.to_string(),
            child,
            log,
            written,
            exited: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Bytes the process has written to stdout and stderr so far.
    pub fn output_bytes(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// The exit status once the process has ended.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// The last `lines` lines of output.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let skip = log.len().saturating_sub(lines);
        log.iter()
            .skip(skip)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Whether any output line so far contains `needle`.
    pub fn log_contains(&self, needle: &str) -> bool {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.iter().any(|line| line.contains(needle))
    }

    /// Output lines that contain `needle`.
    pub fn log_lines_with(&self, needle: &str) -> Vec<String> {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.iter().filter(|l| l.contains(needle)).cloned().collect()
    }

    /// Fails with the log tail if the process has already exited.
    pub fn check_running(&mut self) -> Result<(), Error> {
        match self.exit_status() {
            None => Ok(()),
            Some(status) => Err(Error::DiedDuringStartup {
                name: self.name.clone(),
                status: status.to_string(),
                log: self.log_tail(40),
            }),
        }
    }

    /// Waits until an output line contains `needle`.
    pub async fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> Result<(), Error> {
        let started = Instant::now();
        loop {
            if self.log_contains(needle) {
                return Ok(());
            }
            self.check_running()?;
            if started.elapsed() > timeout {
                return Err(self.not_ready(timeout, format!("no log line with {needle:?}")));
            }
            // Poll interval; `timeout` bounds the wait.
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Polls `probe` until it yields a value; fails if the process exits first or `timeout`
    /// passes (`what` says what was awaited).
    pub async fn wait_until<T, F, Fut>(
        &mut self,
        timeout: Duration,
        what: &str,
        mut probe: F,
    ) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let started = Instant::now();
        loop {
            if let Some(value) = probe().await {
                return Ok(value);
            }
            self.check_running()?;
            if started.elapsed() > timeout {
                return Err(self.not_ready(timeout, what.to_string()));
            }
            // Poll interval; `timeout` bounds the wait.
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub(crate) fn not_ready(&self, waited: Duration, detail: String) -> Error {
        Error::NotReady {
            name: self.name.clone(),
            waited,
            detail,
            log: self.log_tail(40),
        }
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) with a pid we own; a stale pid fails harmlessly with ESRCH.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }

    /// SIGTERM, then SIGKILL once `grace` has passed. Returns the exit status.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.exit_status() {
            return Some(status);
        }
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.exit_status() {
                return Some(status);
            }
            // Poll interval of the wait for the exit, bounded by `grace`.
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        self.exited = self.child.wait().ok();
        self.exited
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        if thread::panicking() {
            // DEVSTACK_LOG_TAIL: how many lines to print (more to diagnose a failure).
            let lines = std::env::var("DEVSTACK_LOG_TAIL")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(200);
            eprintln!(
                "----- log of {} (last {lines} lines) -----\n{}\n----- end of {} -----",
                self.name,
                self.log_tail(lines),
                self.name
            );
        }
        self.stop(Duration::from_secs(5));
    }
}

fn pump(
    name: &str,
    stream: impl Read + Send + 'static,
    (log, written): (Log, Arc<AtomicU64>),
    sink: LogSink,
) {
    let prefix = format!("[{name}] ");
    thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    written.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
            let line = String::from_utf8_lossy(&buf).trim_end().to_string();
            if matches!(sink, LogSink::Echo) {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{prefix}{line}");
            }
            let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
            if log.len() == LOG_LINES_KEPT {
                log.pop_front();
            }
            log.push_back(line);
        }
    });
}
