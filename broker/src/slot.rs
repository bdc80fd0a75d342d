//! Crash isolation: each worker slot runs its jobs in a child process it supervises.
//!
//! The child is the broker's own binary, started again with the same arguments and
//! [`CHILD_ENV`] set; [`crate::Broker::run`] sees the variable and serves jobs over
//! stdin/stdout instead of joining the cluster. A worker that panics, aborts, segfaults,
//! exits, runs out of its memory limit or hangs past its timeout ends only its child:
//! the slot reports the attempt as failed with what happened and starts a new child.
//!
//! The cost is a pipe hop each way per job and one process per slot. The slot keeps
//! the child's next job already in its pipe while the current one runs, so that the hops
//! overlap with work instead of adding to it; [`crate::Isolation::Thread`] runs workers in the broker's own threads instead,
//! which is faster but lets a crashing worker take the broker down and cannot stop a
//! hung one.

use std::collections::HashMap;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver};
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

/// A slot's child process, from the broker's side.
pub struct SlotProcess {
    child: Child,
    stdin: BufWriter<ChildStdin>,
    results: Receiver<FromSlot>,
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
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let (tx, rx) = crossbeam_channel::unbounded();
        std::thread::Builder::new()
            .name("slot-reader".into())
            .spawn(move || {
                while let Ok(Some(msg)) = read_frame::<FromSlot>(&mut stdout) {
                    if tx.send(msg).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| format!("start slot reader: {e}"))?;
        let mut slot = SlotProcess {
            child,
            stdin,
            results: rx,
        };
        if let Err(e) = write_frame(&mut slot.stdin, &ToSlot::Config(config.clone())) {
            return Err(slot.lost(&format!("slot process did not take its config: {e}")));
        }
        match slot.results.recv_timeout(CHILD_START_TIMEOUT) {
            Ok(FromSlot::Ready(Ok(()))) => Ok(slot),
            Ok(FromSlot::Ready(Err(e))) => Err(slot.lost(&format!("store: {e}"))),
            Ok(FromSlot::Done(_)) => Err(slot.lost("slot process out of step")),
            Err(_) => Err(slot.lost("slot process did not start")),
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
        cancel: &Receiver<JobRef>,
    ) -> Ended {
        loop {
            let left = deadline.map_or(Duration::from_secs(3600), |(d, _)| {
                d.saturating_duration_since(Instant::now())
            });
            select! {
                recv(self.results) -> msg => return match msg {
                    Ok(FromSlot::Done(r)) => Ended::Returned(r),
                    Ok(FromSlot::Ready(_)) => Ended::Lost(self.lost("slot process out of step")),
                    Err(_) => Ended::Lost(self.lost("worker process died")),
                },
                recv(cancel) -> c => if c.ok() == Some(job) {
                    return Ended::Lost(self.lost("cancelled"));
                },
                default(left) => if let Some((_, t)) = deadline.filter(|(d, _)| Instant::now() >= *d) {
                    let ms = t.as_millis();
                    return Ended::Lost(self.lost(&format!("timed out after {ms} ms")));
                },
            }
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
