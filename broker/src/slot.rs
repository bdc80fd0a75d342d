//! Crash isolation: each worker slot runs its jobs in a child process it supervises.
//!
//! The child is the broker's own binary, started again with the same arguments and
//! [`CHILD_ENV`] set; [`crate::Broker::run`] sees the variable and serves jobs over
//! stdin/stdout instead of joining the cluster. A worker that panics, aborts, segfaults,
//! exits, runs out of its memory limit or hangs past its timeout ends only its child:
//! the slot reports the attempt as failed with what happened and starts a new child.
//! This module is the broker's side of a slot process; the child serves
//! [`child_main`].
//!
//! The cost is a pipe hop each way per job and one process per slot. While every slot
//! is busy and the broker has jobs queued, a slot sends its child the next job before
//! the current one ends, so that the hops overlap with work instead of adding to it.
//! [`crate::Isolation::Thread`] runs workers in the broker's own threads instead,
//! which is faster but lets a crashing worker take the broker down and cannot stop a
//! hung one.

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use pypelinin_common::protocol::{ClusterConfig, JobInfo, JobRef, LogChunk};
use pypelinin_common::Data;

pub use crate::child::child_main;
use crate::child::{frame, read_frame, write_frame, FromSlot, ToSlotRef};

/// Set in a slot child's environment; its presence makes `Broker::run` serve one slot.
pub const CHILD_ENV: &str = "PYPELININ_BROKER_SLOT";

/// How long a new child may take to build its store and say it is ready.
const CHILD_START_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest job frame sent to a child while it runs another job: well under the 64 KiB
/// a Linux pipe holds, so that writing it never blocks.
const MAX_QUEUED_FRAME: usize = 16 << 10;

/// A slot's child process, from the broker's side. The slot's own thread reads the
/// child's answers, waiting on the pipe and on its [`CancelRx`] in one `poll`.
pub struct SlotProcess {
    child: Child,
    stdin: BufWriter<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

/// The broker's side of a slot's revokes: attempts to stop, and a wake-up for the
/// slot's `poll`.
pub struct CancelTx {
    tx: Sender<JobRef>,
    wake: UnixStream,
}

/// The slot's side of its revokes.
pub struct CancelRx {
    rx: Receiver<JobRef>,
    wake: UnixStream,
}

/// A revoke channel for one slot.
pub fn cancel_channel() -> io::Result<(CancelTx, CancelRx)> {
    let (a, b) = UnixStream::pair()?;
    a.set_nonblocking(true)?;
    b.set_nonblocking(true)?;
    let (tx, rx) = crossbeam_channel::unbounded();
    Ok((CancelTx { tx, wake: a }, CancelRx { rx, wake: b }))
}

impl CancelTx {
    /// Asks the slot to stop `job` if it runs it.
    pub fn send(&self, job: JobRef) {
        let _ = self.tx.send(job);
        // A full socket already holds a wake-up: nothing is lost when this one is not
        // written.
        let _ = (&self.wake).write(&[1]);
    }
}

impl CancelRx {
    /// Whether `job` was among the revokes received (the others are stale: dropped).
    fn revoked(&self, job: JobRef) -> bool {
        let mut buf = [0u8; 64];
        while matches!((&self.wake).read(&mut buf), Ok(n) if n > 0) {}
        self.rx.try_iter().any(|j| j == job)
    }
}

/// Waits until one of `fds` is readable (or hung up), or `timeout` passes; which.
fn poll_in(fds: &[RawFd], timeout: Option<Duration>) -> io::Result<Vec<bool>> {
    let mut items: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32 + 1);
    loop {
        // SAFETY: `items` is a valid array of pollfd for the duration of the call.
        let n = unsafe { libc::poll(items.as_mut_ptr(), items.len() as libc::nfds_t, ms) };
        if n >= 0 {
            return Ok(items.iter().map(|i| i.revents != 0).collect());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Why a slot process could not take or finish a job: the attempt fails with this, and
/// the slot starts a new process for the next one.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    /// The broker could not find its own executable to start again.
    #[error("own executable: {0}")]
    OwnExecutable(io::Error),
    /// The operating system refused the process.
    #[error("start slot process: {0}")]
    Spawn(io::Error),
    /// The child died before it read the cluster configuration.
    #[error("slot process did not take its config: {0}")]
    Config(io::Error),
    /// The child did not say it was ready in time, or said something else.
    #[error("slot process did not start")]
    NotStarted,
    /// The child could not build the store.
    #[error("store: {0}")]
    Store(String),
    /// The child answered what was not asked.
    #[error("slot process out of step")]
    OutOfStep,
    /// The job could not be encoded for the child.
    #[error("could not encode the job: {0}")]
    Encode(io::Error),
    /// The child's pipe was closed while the job was written.
    #[error("could not hand the job over: {0}")]
    HandOver(io::Error),
    /// Waiting on the child's pipe failed.
    #[error("poll: {0}")]
    Poll(io::Error),
    /// The attempt was revoked while it ran: its child was killed.
    #[error("cancelled")]
    Cancelled,
    /// The attempt ran past its timeout: its child was killed.
    #[error("timed out after {0} ms")]
    TimedOut(u128),
    /// The child ended without answering: the worker crashed, aborted, exited or ran
    /// out of memory. How it ended is known once the child is reaped.
    #[error("worker process died{0}")]
    Died(Death),
}

/// How a slot process that died ended, as its exit status tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Death {
    /// Not known (yet): the child is not reaped.
    Unknown,
    /// It exited with this code.
    Exited(i32),
    /// A signal killed it.
    Signal(i32),
}

impl Death {
    fn of(status: std::process::ExitStatus) -> Death {
        match (status.code(), status.signal()) {
            (Some(code), _) => Death::Exited(code),
            (_, Some(sig)) => Death::Signal(sig),
            _ => Death::Unknown,
        }
    }
}

impl std::fmt::Display for Death {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Death::Unknown => Ok(()),
            Death::Exited(code) => write!(f, ": exited with code {code}"),
            Death::Signal(sig) => write!(f, ": killed by signal {sig} ({})", signal_name(*sig)),
        }
    }
}

/// How a job run in a child ended, besides its own result.
pub enum Ended {
    /// The worker returned (success or error).
    Returned(Result<Data, String>),
    /// The child had to be killed or died; the slot needs a new one.
    Lost(SlotError),
}

impl SlotProcess {
    /// Starts a child and waits for it to build its store.
    pub fn spawn(config: &ClusterConfig, memory_limit: Option<u64>) -> Result<Self, SlotError> {
        let exe = std::env::current_exe().map_err(SlotError::OwnExecutable)?;
        let mut cmd = Command::new(exe);
        cmd.args(std::env::args_os().skip(1))
            .env(CHILD_ENV, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // SAFETY: only async-signal-safe calls (prctl, setrlimit) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // Die with the broker, even if a worker hangs.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if let Some(bytes) = memory_limit {
                    let lim = libc::rlimit {
                        rlim_cur: bytes,
                        rlim_max: bytes,
                    };
                    libc::setrlimit(libc::RLIMIT_AS, &lim);
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(SlotError::Spawn)?;
        // Both were asked for as pipes just above, so a spawned child has them.
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(SlotError::NotStarted);
        };
        let mut slot = SlotProcess {
            child,
            stdin: BufWriter::new(stdin),
            stdout: BufReader::new(stdout),
        };
        if let Err(e) = write_frame(&mut slot.stdin, &ToSlotRef::Config(config)) {
            return Err(slot.lost(SlotError::Config(e)));
        }
        let fd = slot.stdout.get_ref().as_raw_fd();
        match poll_in(&[fd], Some(CHILD_START_TIMEOUT)) {
            Ok(r) if r[0] => {}
            _ => return Err(slot.lost(SlotError::NotStarted)),
        }
        match read_frame::<FromSlot>(&mut slot.stdout) {
            Ok(Some(FromSlot::Ready(Ok(())))) => Ok(slot),
            Ok(Some(FromSlot::Ready(Err(e)))) => Err(slot.lost(SlotError::Store(e))),
            Ok(Some(FromSlot::Done(_))) => Err(slot.lost(SlotError::OutOfStep)),
            _ => Err(slot.lost(SlotError::NotStarted)),
        }
    }

    /// Hands a job to the child. The child runs the jobs it is given one after the
    /// other, so the next one can wait in its pipe while the current one runs: with
    /// `behind` (a job runs now), only a frame small enough not to fill the pipe is
    /// sent, as a write that blocked would keep the slot from enforcing the running
    /// job's timeout; `Ok(false)` means not sent. An error means the child is gone:
    /// [`SlotProcess::wait`] says how.
    pub fn send(&mut self, info: &JobInfo, behind: bool) -> Result<bool, SlotError> {
        let frame = frame(&ToSlotRef::Run(info)).map_err(SlotError::Encode)?;
        if behind && frame.len() > MAX_QUEUED_FRAME {
            return Ok(false);
        }
        self.stdin
            .write_all(&frame)
            .and_then(|()| self.stdin.flush())
            .map_err(SlotError::HandOver)?;
        Ok(true)
    }

    /// Waits for the result of the job the child runs now (`job`, sent first of those
    /// not yet answered), until its `deadline`; `cancel` delivers attempts to stop.
    /// Anything but [`Ended::Returned`] kills the child, and the jobs queued behind
    /// `job` with it.
    pub fn wait(
        &mut self,
        job: JobRef,
        deadline: Option<(Instant, Duration)>,
        cancel: &CancelRx,
    ) -> Ended {
        self.wait_logging(job, deadline, cancel, &mut |_| {})
    }

    /// [`SlotProcess::wait`], handing `log` the lines the job logs meanwhile (as the
    /// child numbered them; their `job` is the child's guess, not the index).
    pub fn wait_logging(
        &mut self,
        job: JobRef,
        deadline: Option<(Instant, Duration)>,
        cancel: &CancelRx,
        log: &mut dyn FnMut(Vec<LogChunk>),
    ) -> Ended {
        let fds = [self.stdout.get_ref().as_raw_fd(), cancel.wake.as_raw_fd()];
        loop {
            // An answer may already sit in the reader's buffer, where `poll` cannot see it.
            while self.stdout.buffer().is_empty() {
                let left = deadline.map(|(d, _)| d.saturating_duration_since(Instant::now()));
                let ready = match poll_in(&fds, left) {
                    Ok(r) => r,
                    Err(e) => return Ended::Lost(self.lost(SlotError::Poll(e))),
                };
                if ready[1] && cancel.revoked(job) {
                    return Ended::Lost(self.lost(SlotError::Cancelled));
                }
                if ready[0] {
                    break;
                }
                if let Some((_, t)) = deadline.filter(|(d, _)| Instant::now() >= *d) {
                    return Ended::Lost(self.lost(SlotError::TimedOut(t.as_millis())));
                }
            }
            match read_frame::<FromSlot>(&mut self.stdout) {
                Ok(Some(FromSlot::Log(chunks))) => log(chunks),
                Ok(Some(FromSlot::Done(r))) => return Ended::Returned(r),
                Ok(Some(FromSlot::Ready(_))) => {
                    return Ended::Lost(self.lost(SlotError::OutOfStep))
                }
                Ok(None) | Err(_) => {
                    return Ended::Lost(self.lost(SlotError::Died(Death::Unknown)))
                }
            }
        }
    }

    /// Kills the child and returns `why`; a death is completed with how the child
    /// ended.
    pub fn lost(&mut self, why: SlotError) -> SlotError {
        let _ = self.child.kill();
        let status = self.child.wait();
        match (why, status) {
            (SlotError::Died(Death::Unknown), Ok(st)) => SlotError::Died(Death::of(st)),
            (why, _) => why,
        }
    }
}

impl Drop for SlotProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGABRT => "SIGABRT: aborted, or out of memory",
        libc::SIGSEGV => "SIGSEGV: invalid memory access",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL: killed, perhaps by the kernel's OOM killer",
        libc::SIGTERM => "SIGTERM",
        _ => "signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    #[test]
    fn a_dead_worker_process_is_reported_with_how_it_ended() {
        // Wait statuses as the kernel encodes them: exit code in the second byte,
        // killing signal in the low bits.
        let exited = SlotError::Died(Death::of(ExitStatus::from_raw(3 << 8)));
        assert_eq!(
            exited.to_string(),
            "worker process died: exited with code 3"
        );
        let killed = SlotError::Died(Death::of(ExitStatus::from_raw(libc::SIGSEGV)));
        assert!(
            killed
                .to_string()
                .starts_with("worker process died: killed by signal 11 (SIGSEGV"),
            "{killed}"
        );
        assert_eq!(
            SlotError::Died(Death::Unknown).to_string(),
            "worker process died"
        );
    }

    /// A slot process around `script` (run by `sh`) in place of the broker's child.
    fn fake_child(script: &str) -> SlotProcess {
        let mut child = Command::new("sh")
            .args(["-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        SlotProcess {
            stdin: BufWriter::new(child.stdin.take().unwrap()),
            stdout: BufReader::new(child.stdout.take().unwrap()),
            child,
        }
    }

    fn job() -> JobRef {
        JobRef {
            pipeline: pypelinin_common::protocol::PipelineId(uuid::Uuid::nil()),
            job: 0,
            attempt: 1,
        }
    }

    #[test]
    fn a_worker_process_that_dies_mid_job_loses_the_attempt_with_its_exit() {
        let mut p = fake_child("exit 3");
        let (_tx, rx) = cancel_channel().unwrap();
        match p.wait(job(), None, &rx) {
            Ended::Lost(e) => assert_eq!(e.to_string(), "worker process died: exited with code 3"),
            Ended::Returned(_) => panic!("a dead child returned"),
        }
    }

    #[test]
    fn a_revoked_job_kills_its_worker_process() {
        let mut p = fake_child("exec cat");
        let (tx, rx) = cancel_channel().unwrap();
        tx.send(job());
        match p.wait(job(), None, &rx) {
            Ended::Lost(e) => assert!(matches!(e, SlotError::Cancelled), "{e}"),
            Ended::Returned(_) => panic!("returned"),
        }
        assert!(p.child.try_wait().unwrap().is_some(), "the child is gone");
    }

    #[test]
    fn a_job_past_its_deadline_kills_its_worker_process() {
        let mut p = fake_child("exec cat");
        let (_tx, rx) = cancel_channel().unwrap();
        let deadline = Some((Instant::now(), Duration::from_millis(400)));
        match p.wait(job(), deadline, &rx) {
            Ended::Lost(e) => assert_eq!(e.to_string(), "timed out after 400 ms"),
            Ended::Returned(_) => panic!("returned"),
        }
    }

    #[test]
    fn only_a_death_is_completed_with_how_the_process_ended() {
        let mut p = fake_child("exit 3");
        // Its stdout closes when it exits: from then on its status is known.
        let mut rest = Vec::new();
        p.stdout.read_to_end(&mut rest).unwrap();
        let why = p.lost(SlotError::OutOfStep);
        assert!(matches!(why, SlotError::OutOfStep), "{why}");
    }
}
