//! One process of a [`PersistentWorker`](super::PersistentWorker): starting it, a
//! request and its response under a deadline and the cancel flag, reading its stdout
//! lines (bounded) and draining its stderr, and killing its group when it is dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use pypelinin_common::Data;
use serde_json::Value;

use super::{PersistentError, EXIT_GRACE, MAX_RESPONSE_LINE_BYTES, POLL};
use crate::cancel::CancelFlag;
use crate::command::{describe, leader_exited};
use crate::joblog::{JobLog, LineSplitter, LogTarget};
use crate::pipes::{drain_gated, pipe_empty, Tail};

/// Longest a served job waits for its process's stderr to be read (it normally is
/// already: see `Process::settle_stderr`).
const STDERR_SETTLE: Duration = Duration::from_millis(50);

/// What a reader thread saw on a process's stdout.
pub(super) enum Line {
    /// One line, without its newline.
    Text(Vec<u8>),
    /// A line longer than [`MAX_RESPONSE_LINE_BYTES`]; the thread stopped reading.
    TooLong,
    /// End of stdout (or a read error).
    Closed,
}

/// How a request went.
pub(super) enum Served {
    /// `{"id": N, "output": {...}}`.
    Output(Data),
    /// `{"id": N, "error": "..."}`.
    Error(String),
    /// The process cannot be trusted with another job.
    Failed(Failure),
}

/// Why a process is discarded.
pub(super) enum Failure {
    Closed,
    Protocol(String),
    TimedOut(u64),
    Cancelled,
    Io(std::io::Error),
}

/// One long-lived process: its group, its stdin, a thread reading its stdout lines
/// into a channel (so that waiting for a response can keep a deadline), and a thread
/// draining its stderr into a bounded tail.
pub(super) struct Process {
    pub(super) child: Child,
    program: String,
    pgid: libc::pid_t,
    stdin: Option<ChildStdin>,
    lines: Receiver<Line>,
    tail: Arc<Mutex<Tail>>,
    /// The log of the job it serves (or served last): where its stderr lines go. Left
    /// set after a job, so that lines read just after its response still count.
    serving: Arc<Mutex<Option<JobLog>>>,
    /// The stderr pipe's descriptor (read by its thread), to see whether bytes wait.
    stderr_fd: Option<std::os::fd::RawFd>,
    /// Held by the stderr thread while it reads and logs bytes (`drain_gated`).
    stderr_gate: Arc<Mutex<()>>,
    /// Disconnected once stderr is drained to its end.
    stderr_done: Receiver<()>,
    reaped: bool,
}

impl std::fmt::Debug for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process").field("pid", &self.pgid).finish()
    }
}

impl Process {
    pub(super) fn new(mut child: Child, program: String) -> std::io::Result<Process> {
        let pgid = libc::pid_t::try_from(child.id()).unwrap_or(0);
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let stderr_fd = stderr.as_ref().map(std::os::fd::AsRawFd::as_raw_fd);
        let (tx, lines) = crossbeam_channel::unbounded();
        let tail = Arc::new(Mutex::new(Tail::default()));
        let serving = Arc::new(Mutex::new(None));
        let mut log_lines = LineSplitter::new(
            pypelinin_common::protocol::LogStream::Stderr,
            LogTarget::Serving(serving.clone()),
        );
        let (done_tx, stderr_done) = crossbeam_channel::bounded::<()>(0);
        let stderr_gate = Arc::new(Mutex::new(()));
        let gate = stderr_gate.clone();
        // Built before the threads so that an error starting them kills the process.
        let mut process = Process {
            child,
            program,
            pgid,
            stdin,
            lines,
            tail: tail.clone(),
            serving,
            stderr_fd,
            stderr_gate,
            stderr_done,
            reaped: false,
        };
        if let Some(r) = stdout {
            std::thread::Builder::new()
                .name("persistent-stdout".into())
                .spawn(move || read_lines(r, &tx))?;
        }
        if let Some(r) = stderr {
            std::thread::Builder::new()
                .name("persistent-stderr".into())
                .spawn(move || {
                    drain_gated(r, &gate, Some(&tail), Some(&mut log_lines));
                    drop(done_tx);
                })?;
        }
        if process.stdin.is_none() {
            process.kill_and_reap();
            return Err(std::io::Error::other("no stdin pipe"));
        }
        Ok(process)
    }

    /// Sends the request `line` (id `id`) and waits for its response.
    pub(super) fn serve(
        &mut self,
        id: u64,
        line: &[u8],
        cancel: &CancelFlag,
        deadline: Option<(Instant, u64)>,
    ) -> Served {
        // The log of this job only: the tail restarts with each request, and stderr
        // lines go to the log of the job running on this thread.
        *self.tail.lock().unwrap_or_else(PoisonError::into_inner) = Tail::default();
        *self.serving.lock().unwrap_or_else(PoisonError::into_inner) = crate::joblog::current();
        // A line longer than the pipe buffer blocks until the process reads it; a
        // process that does not read is stopped by the timeout or a revoke killing
        // its group, which fails the write.
        if let Err(e) = self.write(line, cancel, deadline) {
            return Served::Failed(e);
        }
        loop {
            if cancel.is_cancelled() {
                return Served::Failed(Failure::Cancelled);
            }
            let wait = match deadline {
                Some((d, ms)) => match d.checked_duration_since(Instant::now()) {
                    Some(left) => left.min(POLL),
                    None => return Served::Failed(Failure::TimedOut(ms)),
                },
                None => POLL,
            };
            match self.lines.recv_timeout(wait) {
                Ok(Line::Text(text)) => {
                    self.settle_stderr();
                    return parse_response(id, &text);
                }
                Ok(Line::TooLong) => {
                    return Served::Failed(Failure::Protocol(format!(
                        "a response line longer than {MAX_RESPONSE_LINE_BYTES} bytes"
                    )))
                }
                Ok(Line::Closed) | Err(RecvTimeoutError::Disconnected) => {
                    return Served::Failed(Failure::Closed)
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }

    /// The process answered: what it wrote on stderr before is in the pipe by now.
    /// Waits (briefly) until the stderr thread has read and logged it, so that those
    /// lines count in this job's log rather than the next one's. A line the process
    /// had not ended with a newline can still land in the next job's log.
    fn settle_stderr(&self) {
        let Some(fd) = self.stderr_fd else {
            return;
        };
        let until = Instant::now() + STDERR_SETTLE;
        loop {
            {
                let _held = self
                    .stderr_gate
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if pipe_empty(fd) {
                    return;
                }
            }
            if Instant::now() >= until {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Writes the request; a write blocked by a process that does not read is ended
    /// by a watcher thread killing the group on timeout or revoke.
    pub(super) fn write(
        &mut self,
        line: &[u8],
        cancel: &CancelFlag,
        deadline: Option<(Instant, u64)>,
    ) -> Result<(), Failure> {
        let Some(stdin) = self.stdin.as_mut() else {
            return Err(Failure::Closed);
        };
        // Small requests fit the pipe buffer and never block: no watcher needed.
        if line.len() <= 4096 {
            return match stdin.write_all(line).and_then(|()| stdin.flush()) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(Failure::Closed),
                Err(e) => Err(Failure::Io(e)),
            };
        }
        let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(1);
        let pgid = self.pgid;
        let flag = cancel.clone();
        let watcher = std::thread::Builder::new()
            .name("persistent-write".into())
            .spawn(move || loop {
                let late = deadline.is_some_and(|(d, _)| Instant::now() >= d);
                if flag.is_cancelled() || late {
                    // The leader is not reaped while we write, so the id is ours.
                    kill_group(pgid);
                    return;
                }
                match done_rx.recv_timeout(POLL) {
                    Err(RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
            })
            .map_err(Failure::Io)?;
        let written = stdin.write_all(line).and_then(|()| stdin.flush());
        let _ = done_tx.send(());
        let _ = watcher.join();
        if cancel.is_cancelled() {
            return Err(Failure::Cancelled);
        }
        if let Some((_, ms)) = deadline.filter(|(d, _)| Instant::now() >= *d) {
            return Err(Failure::TimedOut(ms));
        }
        match written {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(Failure::Closed),
            Err(e) => Err(Failure::Io(e)),
        }
    }

    /// The error for a discarded process; kills its group and reaps it.
    pub(super) fn fail(mut self, why: Failure, id: u64) -> PersistentError {
        let program = self.program.clone();
        match why {
            Failure::Closed => {
                // Give it a moment to exit by itself, so its own status is reported.
                let until = Instant::now() + EXIT_GRACE;
                while !leader_exited(self.pgid).unwrap_or(true) && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(1));
                }
                let status = self.kill_and_reap();
                PersistentError::Died {
                    program,
                    id,
                    status,
                    stderr: self.stderr_tail(),
                }
            }
            Failure::Protocol(reason) => {
                self.kill_and_reap();
                PersistentError::Protocol {
                    program,
                    id,
                    reason,
                    stderr: self.stderr_tail(),
                }
            }
            Failure::TimedOut(limit_ms) => {
                self.kill_and_reap();
                PersistentError::TimedOut {
                    program,
                    limit_ms,
                    stderr: self.stderr_tail(),
                }
            }
            Failure::Cancelled => {
                self.kill_and_reap();
                PersistentError::Cancelled { program }
            }
            Failure::Io(source) => {
                self.kill_and_reap();
                PersistentError::Io { program, source }
            }
        }
    }

    /// The stderr tail, once the group is dead: when stderr closed, or after a grace
    /// period if a process that left the group still holds it.
    pub(super) fn stderr_tail(&self) -> String {
        let _ = self.stderr_done.recv_deadline(Instant::now() + EXIT_GRACE);
        self.tail
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .text()
    }

    /// Kills the group (while the leader is unreaped, so the id is still ours), reaps
    /// the leader, and says how it ended.
    pub(super) fn kill_and_reap(&mut self) -> String {
        if self.reaped {
            return "ended".into();
        }
        kill_group(self.pgid);
        self.stdin = None;
        self.reaped = true;
        match self.child.wait() {
            Ok(st) => describe(st),
            Err(e) => format!("ended (wait failed: {e})"),
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}

/// SIGKILL to every process of group `pgid`.
pub(super) fn kill_group(pgid: libc::pid_t) {
    if pgid > 0 {
        // SAFETY: kill(2) with a negative pid signals a process group; no memory is
        // involved. ESRCH (nobody left) is fine.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}

/// Reads `r` line by line into `tx`, each line bounded by
/// [`MAX_RESPONSE_LINE_BYTES`]; ends with [`Line::Closed`] or [`Line::TooLong`].
pub(super) fn read_lines(r: impl Read, tx: &crossbeam_channel::Sender<Line>) {
    let mut r = BufReader::new(r);
    let mut line = Vec::new();
    loop {
        let limit = (MAX_RESPONSE_LINE_BYTES + 1 - line.len()) as u64;
        match (&mut r).take(limit).read_until(b'\n', &mut line) {
            Ok(0) => {
                let _ = tx.send(Line::Closed);
                return;
            }
            Ok(_) if line.last() == Some(&b'\n') => {
                line.pop();
                if tx.send(Line::Text(std::mem::take(&mut line))).is_err() {
                    return;
                }
            }
            Ok(_) if line.len() > MAX_RESPONSE_LINE_BYTES => {
                let _ = tx.send(Line::TooLong);
                return;
            }
            // A partial line: read on.
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => {
                let _ = tx.send(Line::Closed);
                return;
            }
        }
    }
}

/// What a response line says about request `id`.
pub(super) fn parse_response(id: u64, text: &[u8]) -> Served {
    let bad = |reason: String| Served::Failed(Failure::Protocol(reason));
    let value: Value = match serde_json::from_slice(text) {
        Ok(v) => v,
        Err(e) => {
            return bad(format!(
                "stdout line is not JSON ({e}): {:?}",
                preview(text)
            ))
        }
    };
    let Value::Object(mut obj) = value else {
        return bad(format!(
            "stdout line is not a JSON object: {:?}",
            preview(text)
        ));
    };
    match obj.get("id").and_then(Value::as_u64) {
        Some(got) if got == id => {}
        Some(got) => return bad(format!("response for id {got}, expected {id}")),
        None => {
            return bad(format!(
                "response without a numeric \"id\": {:?}",
                preview(text)
            ))
        }
    }
    match (obj.remove("output"), obj.remove("error")) {
        (Some(Value::Object(output)), None) => Served::Output(output),
        (Some(_), None) => bad("\"output\" is not a JSON object".into()),
        (None, Some(Value::String(message))) => Served::Error(message),
        (None, Some(other)) => Served::Error(other.to_string()),
        _ => bad("a response has exactly one of \"output\" and \"error\"".into()),
    }
}

/// The start of a bad line, for the error.
pub(super) fn preview(text: &[u8]) -> String {
    let s = String::from_utf8_lossy(&text[..text.len().min(200)]).into_owned();
    if text.len() > 200 {
        format!("{s}…")
    } else {
        s
    }
}
