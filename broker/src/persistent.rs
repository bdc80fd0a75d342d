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
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use pypelinin_common::protocol::{check_output_size, JobInfo, OutputTooLarge, MAX_OUTPUT_BYTES};
use pypelinin_common::Data;

use crate::api::{BoxError, Worker};
use crate::cancel::{cancel_flag, CancelFlag};
use crate::command::stderr_suffix;

mod process;
use process::*;

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

#[cfg(test)]
#[path = "persistent_tests.rs"]
mod tests;
