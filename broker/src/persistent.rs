//! Persistent command workers, in the style of Bazel's persistent workers: one
//! long-lived process per slot serves many jobs, so that a program with a costly
//! start (an interpreter, a model to load) pays it once instead of once per job.
//!
//! # The protocol
//!
//! This is the one place it is specified; the README refers here.
//!
//! The broker starts the program (argv, no shell) in a process group of its own, with
//! the worker's `env` and `cwd` and `PYPELININ_WORKER` set to the worker's name, and
//! talks to it in newline-delimited JSON, one job at a time per process:
//!
//! * request, one line on the program's stdin:
//!   `{"id": N, "job": {"pipeline": "...", "name": "...", "worker": "...", "attempt": N}, "input": {...}}`
//!   where `input` is exactly what a one-shot command gets on stdin (what the store
//!   retrieved, parents included);
//! * response, one line on its stdout, with the same `id`:
//!   `{"id": N, "output": {...}}` to succeed, or `{"id": N, "error": "message"}` to fail
//!   the job (the process is kept and serves the next job);
//! * stderr is the job's log: it is drained continuously and its last
//!   [`STDERR_TAIL_BYTES`](crate::STDERR_TAIL_BYTES) are quoted in errors.
//!
//! Anything else fails the job and discards the process (its group is killed; the next
//! job starts a fresh one): a process that exits (the error gives its status and
//! stderr tail), a line that is not JSON, has another `id`, or whose `output` is not an
//! object, a line longer than the largest output the router keeps (plus some slack), a
//! timeout ([`JobInfo::timeout_ms`]) and a revoke ([`cancel_flag`]). Outputs larger
//! than the router keeps fail the job too. When the worker is dropped (the broker
//! stops), every process it keeps is killed with its group.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use pypelinin_common::protocol::{check_output_size, JobInfo, OutputTooLarge, MAX_OUTPUT_BYTES};
use pypelinin_common::Data;
use serde_json::Value;

use crate::api::{BoxError, Worker};
use crate::cancel::{cancel_flag, CancelFlag};
use crate::command::{describe, drain, leader_exited, stderr_suffix, Tail};

/// The longest response line read: the largest output kept plus room for the
/// envelope. A process writing an endless line is stopped there, not read into memory.
pub const MAX_RESPONSE_LINE_BYTES: usize = MAX_OUTPUT_BYTES + 64 * 1024;

/// How long a process that closed its stdout gets to exit on its own, so that the
/// error gives its own exit status rather than our SIGKILL.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// How often a job waiting for its response checks its cancel flag and deadline.
const POLL: Duration = Duration::from_millis(10);

/// Why a persistent worker's job failed. The text becomes the job's error.
#[derive(Debug, thiserror::Error)]
pub enum PersistentError {
    /// The program does not exist (or is not on `PATH`).
    #[error("command not found: {0}")]
    NotFound(String),
    /// The configured working directory does not exist.
    #[error("working directory not found: {0}")]
    NoCwd(PathBuf),
    /// The worker was built with an empty command.
    #[error("empty command")]
    Empty,
    /// The program could not be started, or its pipes or threads could not be made.
    #[error("could not run {program}: {source}")]
    Io {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// The request could not be encoded as JSON.
    #[error("could not encode the request: {0}")]
    Input(#[from] serde_json::Error),
    /// The process ended (or closed its stdout) before answering.
    #[error("{program} {status} before answering job {id}{}", stderr_suffix(.stderr))]
    Died {
        /// The program.
        program: String,
        /// The request id.
        id: u64,
        /// How it ended, e.g. "exited with status 3".
        status: String,
        /// The last lines of its stderr.
        stderr: String,
    },
    /// The process answered something that is not a response to this request.
    #[error("{program} broke the protocol on job {id}: {reason}; the process was killed{}", stderr_suffix(.stderr))]
    Protocol {
        /// The program.
        program: String,
        /// The request id.
        id: u64,
        /// What was wrong with the line.
        reason: String,
        /// The last lines of its stderr.
        stderr: String,
    },
    /// The process answered `{"id": N, "error": "..."}`.
    #[error("{0}")]
    Job(String),
    /// The job ran past its timeout: the process group was killed.
    #[error("timed out after {limit_ms} ms: {program} and its process group were killed{}", stderr_suffix(.stderr))]
    TimedOut {
        /// The program.
        program: String,
        /// The job's timeout.
        limit_ms: u64,
        /// The last lines of its stderr.
        stderr: String,
    },
    /// The router revoked the job: the process group was killed.
    #[error("cancelled: {program} and its process group were killed")]
    Cancelled {
        /// The program.
        program: String,
    },
    /// The output is larger than the router keeps.
    #[error(transparent)]
    OutputTooLarge(#[from] OutputTooLarge),
}

/// A worker whose jobs are served by long-lived processes (see the module
/// documentation for the protocol). Idle processes wait in a pool; a job takes one or
/// starts one, so there are at most as many as jobs run at once (the broker's slots).
#[derive(Debug)]
pub struct PersistentWorker {
    argv: Vec<String>,
    env: BTreeMap<String, String>,
    cwd: Option<PathBuf>,
    idle: Mutex<Vec<Process>>,
    next_id: AtomicU64,
}

impl PersistentWorker {
    /// Serves jobs with `argv` (program then arguments, no shell).
    pub fn new(argv: Vec<String>) -> Self {
        PersistentWorker {
            argv,
            env: BTreeMap::new(),
            cwd: None,
            idle: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
        }
    }

    /// Adds `key=value` to the program's environment.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.insert(key.to_string(), value.to_string());
        self
    }

    /// Runs the program in `dir`.
    pub fn cwd(mut self, dir: &Path) -> Self {
        self.cwd = Some(dir.to_path_buf());
        self
    }

    /// How many started processes wait for a job (for tests and monitoring).
    pub fn idle_processes(&self) -> usize {
        self.pool().len()
    }

    /// The process ids of the idle processes (each one its group's id).
    pub fn idle_pids(&self) -> Vec<u32> {
        self.pool().iter().map(|p| p.child.id()).collect()
    }

    fn pool(&self) -> std::sync::MutexGuard<'_, Vec<Process>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `job` with `input` on an idle process or a new one, stopping it when
    /// `cancel` is raised or `job.timeout_ms` passes. [`Worker::process`] calls this
    /// with the flag of the job running on the thread.
    pub fn run(
        &self,
        job: &JobInfo,
        input: &Data,
        cancel: &CancelFlag,
    ) -> Result<Data, PersistentError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let request = serde_json::json!({
            "id": id,
            "job": {
                "pipeline": job.pipeline.to_string(),
                "name": job.name,
                "worker": job.worker,
                "attempt": job.attempt,
            },
            "input": input,
        });
        let mut line = serde_json::to_vec(&request)?;
        line.push(b'\n');
        let taken = self.pool().pop();
        let mut process = match taken {
            Some(p) => p,
            None => self.start(&job.worker)?,
        };
        let deadline = job
            .timeout_ms
            .map(|ms| (Instant::now() + Duration::from_millis(ms), ms));
        match process.serve(id, &line, cancel, deadline) {
            Served::Output(output) => {
                // The process answered cleanly: it serves the next job either way.
                self.pool().push(process);
                check_output_size(&output)?;
                Ok(output)
            }
            Served::Error(message) => {
                self.pool().push(process);
                Err(PersistentError::Job(message))
            }
            // The process is dropped here: its group is killed and it is reaped.
            Served::Failed(why) => Err(process.fail(why, id)),
        }
    }

    /// Starts a process, with its pipe threads.
    fn start(&self, worker: &str) -> Result<Process, PersistentError> {
        let (program, args) = self.argv.split_first().ok_or(PersistentError::Empty)?;
        if let Some(dir) = self.cwd.as_ref().filter(|d| !d.is_dir()) {
            return Err(PersistentError::NoCwd(dir.clone()));
        }
        let io = |source| PersistentError::Io {
            program: program.clone(),
            source,
        };
        let mut cmd = Command::new(program);
        cmd.args(args)
            .envs(&self.env)
            .env("PYPELININ_WORKER", worker)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        if let Some(d) = &self.cwd {
            cmd.current_dir(d);
        }
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(PersistentError::NotFound(program.clone()))
            }
            Err(e) => return Err(io(e)),
        };
        Process::new(child, program.clone()).map_err(io)
    }
}

impl Worker for PersistentWorker {
    fn process(&self, job: &JobInfo, input: Data) -> Result<Data, BoxError> {
        Ok(self.run(job, &input, &cancel_flag())?)
    }
}

impl Drop for PersistentWorker {
    /// The broker stops: no process is left behind (each one's drop kills its group).
    fn drop(&mut self) {
        self.pool().clear();
    }
}

/// What a reader thread saw on a process's stdout.
enum Line {
    /// One line, without its newline.
    Text(Vec<u8>),
    /// A line longer than [`MAX_RESPONSE_LINE_BYTES`]; the thread stopped reading.
    TooLong,
    /// End of stdout (or a read error).
    Closed,
}

/// How a request went.
enum Served {
    /// `{"id": N, "output": {...}}`.
    Output(Data),
    /// `{"id": N, "error": "..."}`.
    Error(String),
    /// The process cannot be trusted with another job.
    Failed(Failure),
}

/// Why a process is discarded.
enum Failure {
    Closed,
    Protocol(String),
    TimedOut(u64),
    Cancelled,
    Io(std::io::Error),
}

/// One long-lived process: its group, its stdin, a thread reading its stdout lines
/// into a channel (so that waiting for a response can keep a deadline), and a thread
/// draining its stderr into a bounded tail.
struct Process {
    child: Child,
    program: String,
    pgid: libc::pid_t,
    stdin: Option<ChildStdin>,
    lines: Receiver<Line>,
    tail: Arc<Mutex<Tail>>,
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
    fn new(mut child: Child, program: String) -> std::io::Result<Process> {
        let pgid = libc::pid_t::try_from(child.id()).unwrap_or(0);
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let (tx, lines) = crossbeam_channel::unbounded();
        let tail = Arc::new(Mutex::new(Tail::default()));
        let (done_tx, stderr_done) = crossbeam_channel::bounded::<()>(0);
        // Built before the threads so that an error starting them kills the process.
        let mut process = Process {
            child,
            program,
            pgid,
            stdin,
            lines,
            tail: tail.clone(),
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
                    drain(r, Some(&tail));
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
    fn serve(
        &mut self,
        id: u64,
        line: &[u8],
        cancel: &CancelFlag,
        deadline: Option<(Instant, u64)>,
    ) -> Served {
        // The log of this job only: the tail restarts with each request.
        *self.tail.lock().unwrap_or_else(PoisonError::into_inner) = Tail::default();
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
                Ok(Line::Text(text)) => return parse_response(id, &text),
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

    /// Writes the request; a write blocked by a process that does not read is ended
    /// by a watcher thread killing the group on timeout or revoke.
    fn write(
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
    fn fail(mut self, why: Failure, id: u64) -> PersistentError {
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
    fn stderr_tail(&self) -> String {
        let _ = self.stderr_done.recv_deadline(Instant::now() + EXIT_GRACE);
        self.tail
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .text()
    }

    /// Kills the group (while the leader is unreaped, so the id is still ours), reaps
    /// the leader, and says how it ended.
    fn kill_and_reap(&mut self) -> String {
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
fn kill_group(pgid: libc::pid_t) {
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
fn read_lines(r: impl Read, tx: &crossbeam_channel::Sender<Line>) {
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
fn parse_response(id: u64, text: &[u8]) -> Served {
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
fn preview(text: &[u8]) -> String {
    let s = String::from_utf8_lossy(&text[..text.len().min(200)]).into_owned();
    if text.len() > 200 {
        format!("{s}…")
    } else {
        s
    }
}

#[cfg(test)]
#[path = "persistent_tests.rs"]
mod tests;
