//! Crash isolation: each worker slot runs its jobs in a child process it supervises.
//!
//! The child is the broker's own binary, started again with the same arguments and
//! [`CHILD_ENV`] set; [`crate::Broker::run`] sees the variable and serves jobs over
//! stdin/stdout instead of joining the cluster. A worker that panics, aborts, segfaults,
//! exits, runs out of its memory limit or hangs past its timeout ends only its child:
//! the slot reports the attempt as failed with what happened and starts a new child.
//!
//! The cost is a pipe hop each way per job and one process per slot. While every slot
//! is busy and the broker has jobs queued, a slot sends its child the next job before
//! the current one ends, so that the hops overlap with work instead of adding to it.
//! [`crate::Isolation::Thread`] runs workers in the broker's own threads instead,
//! which is faster but lets a crashing worker take the broker down and cannot stop a
//! hung one.

use std::collections::HashMap;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use pypelinin_common::protocol::{ClusterConfig, JobInfo, JobRef, MAX_FRAME_BYTES};
use pypelinin_common::Data;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::api::{StoreFactory, Worker};

/// Set in a slot child's environment; its presence makes `Broker::run` serve one slot.
pub const CHILD_ENV: &str = "PYPELININ_BROKER_SLOT";

/// How long a new child may take to build its store and say it is ready.
const CHILD_START_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Serialize, Deserialize)]
enum ToSlot {
    Config(ClusterConfig),
    Run(Box<JobInfo>),
}

#[derive(Serialize, Deserialize)]
enum FromSlot {
    Ready(Result<(), String>),
    Done(Result<Data, String>),
}

/// Largest job frame sent to a child while it runs another job: well under the 64 KiB
/// a Linux pipe holds, so that writing it never blocks.
const MAX_QUEUED_FRAME: usize = 16 << 10;

fn frame<T: Serialize>(v: &T) -> io::Result<Vec<u8>> {
    let body = rmp_serde::to_vec_named(v).map_err(io::Error::other)?;
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

fn write_frame<T: Serialize>(w: &mut impl Write, v: &T) -> io::Result<()> {
    w.write_all(&frame(v)?)?;
    w.flush()
}

fn read_frame<T: DeserializeOwned>(r: &mut impl Read) -> io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > 4 * MAX_FRAME_BYTES {
        return Err(io::Error::other(format!("slot frame of {len} bytes")));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf)?;
    rmp_serde::from_slice(&buf)
        .map(Some)
        .map_err(io::Error::other)
}

/// Serves one slot in a child process; never returns.
pub fn child_main(workers: &HashMap<String, Arc<dyn Worker>>, factory: &StoreFactory) -> ! {
    // Frames go to the original stdout; anything a worker prints goes to stderr.
    // SAFETY: plain descriptor calls on descriptors this process owns.
    let frames_fd = unsafe { libc::dup(1) };
    unsafe { libc::dup2(2, 1) };
    if frames_fd < 0 {
        std::process::exit(2);
    }
    // SAFETY: `frames_fd` was just returned by dup and is owned by nothing else.
    let file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(frames_fd) };
    let mut out = BufWriter::new(file);
    let mut input = BufReader::new(io::stdin().lock());
    let config = match read_frame::<ToSlot>(&mut input) {
        Ok(Some(ToSlot::Config(c))) => c,
        _ => std::process::exit(2),
    };
    let store = match factory(&config) {
        Ok(s) => s,
        Err(e) => {
            let _ = write_frame(&mut out, &FromSlot::Ready(Err(e.to_string())));
            std::process::exit(2);
        }
    };
    if write_frame(&mut out, &FromSlot::Ready(Ok(()))).is_err() {
        std::process::exit(2);
    }
    loop {
        match read_frame::<ToSlot>(&mut input) {
            Ok(Some(ToSlot::Run(info))) => {
                let result = crate::runtime::run_job(&*store, workers, &info);
                if write_frame(&mut out, &FromSlot::Done(result)).is_err() {
                    std::process::exit(2);
                }
            }
            // The broker closed our stdin (it stops, or it died): leave.
            Ok(None) => std::process::exit(0),
            _ => std::process::exit(2),
        }
    }
}

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

/// How a job run in a child ended, besides its own result.
pub enum Ended {
    /// The worker returned (success or error).
    Returned(Result<Data, String>),
    /// The child had to be killed or died; the slot needs a new one.
    Lost(String),
}

impl SlotProcess {
    /// Starts a child and waits for it to build its store.
    pub fn spawn(config: &ClusterConfig, memory_limit: Option<u64>) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
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
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("start slot process: {e}"))?;
        let stdin = BufWriter::new(child.stdin.take().expect("piped stdin"));
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut slot = SlotProcess {
            child,
            stdin,
            stdout,
        };
        if let Err(e) = write_frame(&mut slot.stdin, &ToSlot::Config(config.clone())) {
            return Err(slot.lost(&format!("slot process did not take its config: {e}")));
        }
        let fd = slot.stdout.get_ref().as_raw_fd();
        match poll_in(&[fd], Some(CHILD_START_TIMEOUT)) {
            Ok(r) if r[0] => {}
            _ => return Err(slot.lost("slot process did not start")),
        }
        match read_frame::<FromSlot>(&mut slot.stdout) {
            Ok(Some(FromSlot::Ready(Ok(())))) => Ok(slot),
            Ok(Some(FromSlot::Ready(Err(e)))) => Err(slot.lost(&format!("store: {e}"))),
            Ok(Some(FromSlot::Done(_))) => Err(slot.lost("slot process out of step")),
            _ => Err(slot.lost("slot process did not start")),
        }
    }

    /// Hands a job to the child. The child runs the jobs it is given one after the
    /// other, so the next one can wait in its pipe while the current one runs: with
    /// `behind` (a job runs now), only a frame small enough not to fill the pipe is
    /// sent, as a write that blocked would keep the slot from enforcing the running
    /// job's timeout; `Ok(false)` means not sent. An error means the child is gone:
    /// [`SlotProcess::wait`] says how.
    pub fn send(&mut self, info: &JobInfo, behind: bool) -> Result<bool, String> {
        let frame = frame(&ToSlot::Run(Box::new(info.clone())))
            .map_err(|e| format!("could not encode the job: {e}"))?;
        if behind && frame.len() > MAX_QUEUED_FRAME {
            return Ok(false);
        }
        self.stdin
            .write_all(&frame)
            .and_then(|()| self.stdin.flush())
            .map_err(|e| format!("could not hand the job over: {e}"))?;
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
        let fds = [self.stdout.get_ref().as_raw_fd(), cancel.wake.as_raw_fd()];
        // An answer may already sit in the reader's buffer, where `poll` cannot see it.
        while self.stdout.buffer().is_empty() {
            let left = deadline.map(|(d, _)| d.saturating_duration_since(Instant::now()));
            let ready = match poll_in(&fds, left) {
                Ok(r) => r,
                Err(e) => return Ended::Lost(self.lost(&format!("poll: {e}"))),
            };
            if ready[1] && cancel.revoked(job) {
                return Ended::Lost(self.lost("cancelled"));
            }
            if ready[0] {
                break;
            }
            if let Some((_, t)) = deadline.filter(|(d, _)| Instant::now() >= *d) {
                let ms = t.as_millis();
                return Ended::Lost(self.lost(&format!("timed out after {ms} ms")));
            }
        }
        match read_frame::<FromSlot>(&mut self.stdout) {
            Ok(Some(FromSlot::Done(r))) => Ended::Returned(r),
            Ok(Some(FromSlot::Ready(_))) => Ended::Lost(self.lost("slot process out of step")),
            Ok(None) | Err(_) => Ended::Lost(self.lost("worker process died")),
        }
    }

    /// Kills the child and says how it ended, after `what`.
    pub fn lost(&mut self, what: &str) -> String {
        let _ = self.child.kill();
        match self.child.wait() {
            Ok(st) if what == "worker process died" => match (st.code(), st.signal()) {
                (Some(code), _) => format!("{what}: exited with code {code}"),
                (_, Some(sig)) => format!("{what}: killed by signal {sig} ({})", signal_name(sig)),
                _ => what.to_string(),
            },
            _ => what.to_string(),
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
