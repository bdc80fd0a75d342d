//! One-shot command workers: a job run by any program, one process per attempt, so
//! that workers can be written in any language.
//!
//! The contract with the program: the job's input (what the store retrieved, parents
//! included) as one JSON object on stdin; `PYPELININ_PIPELINE_ID`, `PYPELININ_JOB`,
//! `PYPELININ_ATTEMPT` and `PYPELININ_OUTPUT` in its environment; exit 0 to succeed,
//! after writing the output object to the file `PYPELININ_OUTPUT` names (no file: `{}`).
//!
//! The program runs in a process group of its own, so that everything it started can be
//! killed at once: on a timeout, on a revoke, and after it exits (a background child it
//! left must not outlive its job). Its stdout and stderr are drained continuously, line
//! by line, into the job's captured log (module `joblog`; bounded, timed, any bytes),
//! and a bounded tail of stderr is kept for the error message.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use pypelinin_common::protocol::{check_output_size, JobInfo, OutputTooLarge, MAX_OUTPUT_BYTES};
use pypelinin_common::Data;

use pypelinin_common::protocol::LogStream;

use crate::api::{BoxError, Worker};
use crate::cancel::{cancel_flag, CancelFlag};
use crate::joblog::{LineSplitter, LogTarget};
use crate::pipes::{drain, Tail};

/// How much of the end of stderr is kept for the error message.
pub const STDERR_TAIL_BYTES: usize = 4096;

/// How long to wait, once the process group is dead, for its stdout and stderr to
/// close; only a process that left the group can hold them open longer.
const PIPE_GRACE: Duration = Duration::from_secs(2);

/// Why a command worker's attempt failed. The text becomes the job's error.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The program does not exist (or is not on `PATH`).
    #[error("command not found: {0}")]
    NotFound(String),
    /// The configured working directory does not exist.
    #[error("working directory not found: {0}")]
    NoCwd(PathBuf),
    /// The worker was built with an empty command.
    #[error("empty command")]
    Empty,
    /// The program could not be started, or its pipes, threads or output directory
    /// could not be made.
    #[error("could not run {program}: {source}")]
    Io {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// The input could not be encoded as JSON.
    #[error("could not encode the input: {0}")]
    Input(#[from] serde_json::Error),
    /// The program exited non-zero or was killed by a signal.
    #[error("{program} {status}{}", stderr_suffix(.stderr))]
    Failed {
        /// The program.
        program: String,
        /// How it ended, e.g. "exited with status 3" or "was killed by signal 9 (SIGKILL)".
        status: String,
        /// The last lines of its stderr.
        stderr: String,
    },
    /// The attempt ran past its timeout: its process group was killed.
    #[error("timed out after {limit_ms} ms: {program} and its process group were killed{}", stderr_suffix(.stderr))]
    TimedOut {
        /// The program.
        program: String,
        /// The job's timeout.
        limit_ms: u64,
        /// The last lines of its stderr.
        stderr: String,
    },
    /// The router revoked the job: its process group was killed.
    #[error("cancelled: {program} and its process group were killed")]
    Cancelled {
        /// The program.
        program: String,
    },
    /// The output file is not a JSON object.
    #[error("output file ($PYPELININ_OUTPUT) is not a JSON object: {0}")]
    BadOutput(String),
    /// The output is larger than the router keeps.
    #[error(transparent)]
    OutputTooLarge(#[from] OutputTooLarge),
}

pub(crate) fn stderr_suffix(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!("; stderr:\n{stderr}")
    }
}

/// A worker that runs a program per attempt (see the module documentation for the
/// contract). Usable from Rust brokers like any [`Worker`]; `pypelinin-broker` builds
/// them from its workers file.
#[derive(Clone, Debug)]
pub struct CommandWorker {
    argv: Vec<String>,
    env: BTreeMap<String, String>,
    cwd: Option<PathBuf>,
}

impl CommandWorker {
    /// Runs `argv` (program then arguments, no shell).
    pub fn new(argv: Vec<String>) -> Self {
        CommandWorker {
            argv,
            env: BTreeMap::new(),
            cwd: None,
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

    fn program(&self) -> String {
        self.argv.first().cloned().unwrap_or_default()
    }

    fn io(&self, source: std::io::Error) -> CommandError {
        CommandError::Io {
            program: self.program(),
            source,
        }
    }

    /// Runs one attempt of `job` with `input`, stopping it when `cancel` is raised or
    /// `job.timeout_ms` passes. [`Worker::process`] calls this with the flag of the job
    /// running on the thread; tests and other callers give their own.
    pub fn run(
        &self,
        job: &JobInfo,
        input: &Data,
        cancel: &CancelFlag,
    ) -> Result<Data, CommandError> {
        let (program, args) = self.argv.split_first().ok_or(CommandError::Empty)?;
        if let Some(dir) = self.cwd.as_ref().filter(|d| !d.is_dir()) {
            return Err(CommandError::NoCwd(dir.clone()));
        }
        let stdin_bytes = serde_json::to_vec(input)?;
        let dir = tempfile::Builder::new()
            .prefix("pypelinin-job-")
            .tempdir()
            .map_err(|e| self.io(e))?;
        let output_path = dir.path().join("output.json");
        let mut cmd = Command::new(program);
        cmd.args(args)
            .envs(&self.env)
            .env("PYPELININ_PIPELINE_ID", job.pipeline.to_string())
            .env("PYPELININ_JOB", &job.name)
            .env("PYPELININ_ATTEMPT", job.attempt.to_string())
            .env("PYPELININ_OUTPUT", &output_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        if let Some(d) = &self.cwd {
            cmd.current_dir(d);
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CommandError::NotFound(program.clone()))
            }
            Err(e) => return Err(self.io(e)),
        };
        let mut group = Group::new(&mut child);
        // The log of the job running on this thread (none when called outside a slot).
        let log = crate::joblog::current().map(LogTarget::Job);
        let pipes = group
            .start_pipes(stdin_bytes, log)
            .map_err(|e| self.io(e))?;
        let deadline = job
            .timeout_ms
            .map(|ms| (Instant::now() + Duration::from_millis(ms), ms));
        let ended = group.wait(cancel, deadline).map_err(|e| self.io(e))?;
        // The group is dead now: the pipes close, unless a process left the group.
        let stderr = pipes.stderr_tail(Instant::now() + PIPE_GRACE);
        let status = match ended {
            Ended::Exited(st) => st,
            Ended::Cancelled => {
                return Err(CommandError::Cancelled {
                    program: program.clone(),
                })
            }
            Ended::TimedOut(limit_ms) => {
                return Err(CommandError::TimedOut {
                    program: program.clone(),
                    limit_ms,
                    stderr,
                })
            }
        };
        if !status.success() {
            return Err(CommandError::Failed {
                program: program.clone(),
                status: describe(status),
                stderr,
            });
        }
        let output = read_output(&output_path)?;
        check_output_size(&output)?;
        Ok(output)
    }
}

impl Worker for CommandWorker {
    fn process(&self, job: &JobInfo, input: Data) -> Result<Data, BoxError> {
        Ok(self.run(job, &input, &cancel_flag())?)
    }
}

/// How an exit status reads in an error.
pub(crate) fn describe(st: ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig}{}", signal_name(sig)),
        _ => format!("ended: {st}"),
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => " (SIGKILL)",
        libc::SIGTERM => " (SIGTERM)",
        libc::SIGSEGV => " (SIGSEGV)",
        libc::SIGABRT => " (SIGABRT)",
        libc::SIGINT => " (SIGINT)",
        libc::SIGPIPE => " (SIGPIPE)",
        libc::SIGBUS => " (SIGBUS)",
        _ => "",
    }
}

/// The output file: `{}` if there is none, an error if it is not a JSON object or too
/// large to keep (checked before reading it).
fn read_output(path: &Path) -> Result<Data, CommandError> {
    let size = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Data::new()),
        Err(e) => return Err(CommandError::BadOutput(e.to_string())),
    };
    if size > MAX_OUTPUT_BYTES as u64 {
        return Err(OutputTooLarge {
            size: usize::try_from(size).unwrap_or(usize::MAX),
        }
        .into());
    }
    let bytes = std::fs::read(path).map_err(|e| CommandError::BadOutput(e.to_string()))?;
    match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(serde_json::Value::Object(o)) => Ok(o),
        Ok(other) => Err(CommandError::BadOutput(format!(
            "found {}",
            match other {
                serde_json::Value::Null => "null",
                serde_json::Value::Bool(_) => "a boolean",
                serde_json::Value::Number(_) => "a number",
                serde_json::Value::String(_) => "a string",
                serde_json::Value::Array(_) => "an array",
                serde_json::Value::Object(_) => "an object",
            }
        ))),
        Err(e) => Err(CommandError::BadOutput(e.to_string())),
    }
}

/// Whether the process `pid` (a child of ours) has exited, without reaping it, so
/// that its pid, the group id, stays reserved.
pub(crate) fn leader_exited(pid: libc::pid_t) -> std::io::Result<bool> {
    // SAFETY: a zeroed siginfo_t is a valid out-parameter for waitid(2), which
    // only writes to it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let id = libc::id_t::try_from(pid).unwrap_or(0);
    // SAFETY: `info` is a valid, writable siginfo_t for the call's duration.
    let r = unsafe {
        libc::waitid(
            libc::P_PID,
            id,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: waitid succeeded, so `info` is initialised; si_pid is 0 while the
    // child runs (WNOHANG).
    Ok(unsafe { info.si_pid() } != 0)
}

/// How the leader of the group ended.
enum Ended {
    Exited(ExitStatus),
    Cancelled,
    TimedOut(u64),
}

/// A started command and its process group (whose id is the leader's pid). Every way
/// out kills the group, and only while the leader is not reaped, so that the group id
/// cannot have been reused by then.
struct Group<'a> {
    child: &'a mut Child,
    pgid: libc::pid_t,
    reaped: bool,
}

impl<'a> Group<'a> {
    fn new(child: &'a mut Child) -> Self {
        let pgid = libc::pid_t::try_from(child.id()).unwrap_or(0);
        Group {
            child,
            pgid,
            reaped: false,
        }
    }

    /// SIGKILL to every process of the group.
    fn kill_group(&self) {
        if self.pgid > 0 {
            // SAFETY: kill(2) with a negative pid signals a process group; no memory
            // is involved. ESRCH (nobody left) is fine.
            unsafe {
                libc::kill(-self.pgid, libc::SIGKILL);
            }
        }
    }

    /// Whether the leader has exited, without reaping it (so its pid, the group id,
    /// stays reserved).
    fn leader_exited(&self) -> std::io::Result<bool> {
        leader_exited(self.pgid)
    }

    /// Threads writing stdin and draining stdout and stderr (into `log`, if given).
    fn start_pipes(
        &mut self,
        stdin_bytes: Vec<u8>,
        log: Option<LogTarget>,
    ) -> std::io::Result<Pipes> {
        let stdin = self.child.stdin.take();
        let stdout = self.child.stdout.take();
        let stderr = self.child.stderr.take();
        if let Some(mut w) = stdin {
            // A program that never reads stdin, or exits first, must not block us:
            // the write fails (EPIPE) once the group is dead, and is ignored.
            std::thread::Builder::new()
                .name("cmd-stdin".into())
                .spawn(move || {
                    let _ = w.write_all(&stdin_bytes);
                })?;
        }
        let splitter = |stream| log.clone().map(|target| LineSplitter::new(stream, target));
        let (done_tx, done_rx) = crossbeam_channel::bounded(2);
        let mut pipes = 0;
        if let Some(r) = stdout {
            let (mut lines, done) = (splitter(LogStream::Stdout), done_tx.clone());
            std::thread::Builder::new()
                .name("cmd-stdout".into())
                .spawn(move || {
                    drain(r, None, lines.as_mut());
                    let _ = done.send(());
                })?;
            pipes += 1;
        }
        let tail = Arc::new(Mutex::new(Tail::default()));
        if let Some(r) = stderr {
            let (t, mut lines) = (tail.clone(), splitter(LogStream::Stderr));
            std::thread::Builder::new()
                .name("cmd-stderr".into())
                .spawn(move || {
                    drain(r, Some(&t), lines.as_mut());
                    let _ = done_tx.send(());
                })?;
            pipes += 1;
        }
        Ok(Pipes {
            tail,
            done: done_rx,
            pipes,
        })
    }

    /// Waits for the leader to exit, the flag to be raised or the deadline to pass;
    /// then kills the group and reaps the leader.
    fn wait(
        &mut self,
        cancel: &CancelFlag,
        deadline: Option<(Instant, u64)>,
    ) -> std::io::Result<Ended> {
        // Short commands are noticed at once; long ones are polled every 10 ms.
        let mut pause = Duration::from_micros(500);
        let ended = loop {
            if self.leader_exited()? {
                break None;
            }
            if cancel.is_cancelled() {
                break Some(Ended::Cancelled);
            }
            if let Some((_, ms)) = deadline.filter(|(d, _)| Instant::now() >= *d) {
                break Some(Ended::TimedOut(ms));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(10));
        };
        self.kill_group();
        let status = self.child.wait()?;
        self.reaped = true;
        Ok(ended.unwrap_or(Ended::Exited(status)))
    }
}

impl Drop for Group<'_> {
    /// On an early return (an error starting the pipes or waiting), nothing is left.
    fn drop(&mut self) {
        if !self.reaped {
            self.kill_group();
            let _ = self.child.wait();
        }
    }
}

/// The drained pipes: the stderr tail, and word when each pipe closed.
struct Pipes {
    tail: Arc<Mutex<Tail>>,
    done: crossbeam_channel::Receiver<()>,
    /// Pipes being drained.
    pipes: usize,
}

impl Pipes {
    /// The last lines of stderr, once both pipes closed (so that the job's log is
    /// complete) or at `until`.
    fn stderr_tail(&self, until: Instant) -> String {
        for _ in 0..self.pipes {
            if self.done.recv_deadline(until).is_err() {
                break;
            }
        }
        self.tail
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .text()
    }
}

#[cfg(test)]
#[path = "command_tests.rs"]
mod tests;
