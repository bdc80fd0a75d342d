//! Captured logs, the broker's side: every line an attempt prints (a command's stdout
//! and stderr, a persistent worker's stderr, a Rust worker's `tracing` events) goes,
//! with its time and stream, into the broker's [`LogSink`], which the event loop
//! empties into `Logs` requests to the router every
//! [`LOG_BATCH_INTERVAL`](pypelinin_common::protocol::LOG_BATCH_INTERVAL), and always
//! before it reports an attempt's end, so that a finished job's log is complete.
//!
//! A job reaches its log like it reaches its revoke flag: the slot thread makes the
//! attempt's [`JobLog`] the thread's current one while the worker runs ([`with_log`]);
//! command workers hand it to their pipe readers, and [`JobLogLayer`] (module
//! `joblog/layer.rs`), installed by [`crate::init_tracing`], sends the events of the
//! thread's job there.
//!
//! Bounded everywhere: a line is cut at
//! [`MAX_LOG_LINE_BYTES`](pypelinin_common::protocol::MAX_LOG_LINE_BYTES), an attempt
//! holds at most [`MAX_LOG_BYTES_PER_ATTEMPT`] waiting and the sink
//! [`LOG_BUFFER_BYTES`] in all; past that, the oldest lines are dropped and the next
//! line sent carries how many bytes were.

mod layer;

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use pypelinin_common::now_ms;
use pypelinin_common::protocol::{
    JobRef, LogChunk, LogLine, LogStream, LOG_BUFFER_BYTES, MAX_LOG_BYTES_PER_ATTEMPT,
    MAX_LOG_LINE_BYTES,
};

pub use layer::JobLogLayer;

/// Finished attempts whose line numbers are remembered (a persistent worker's stderr
/// can still bring a line of a job that just ended).
const REMEMBERED: usize = 1024;

/// The lines waiting to go to the router, all attempts together; shared by the slot
/// threads (and the threads they start), emptied by the event loop.
#[derive(Default)]
pub(crate) struct LogSink {
    inner: Mutex<Waiting>,
}

#[derive(Default)]
struct Waiting {
    jobs: HashMap<JobRef, Pending>,
    /// Sum of the waiting lines' costs.
    cost: usize,
    /// The last line number given, per attempt.
    seqs: HashMap<JobRef, u64>,
    /// Attempts that ended, oldest first, whose numbers are forgotten after a while.
    ended: VecDeque<JobRef>,
    /// Bytes dropped with an attempt's only waiting line, told by its next line.
    lost: HashMap<JobRef, u64>,
}

#[derive(Default)]
struct Pending {
    lines: VecDeque<LogLine>,
    cost: usize,
}

impl LogSink {
    fn lock(&self) -> MutexGuard<'_, Waiting> {
        // Every update is complete before the lock is released.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a line `job` printed, cut to [`MAX_LOG_LINE_BYTES`].
    pub(crate) fn push(&self, job: JobRef, stream: LogStream, bytes: &[u8]) {
        for piece in pieces(bytes) {
            self.push_one(job, stream, piece.to_vec());
        }
    }

    fn push_one(&self, job: JobRef, stream: LogStream, bytes: Vec<u8>) {
        let mut w = self.lock();
        let seq = w.seqs.get(&job).copied().unwrap_or(0) + 1;
        let line = LogLine {
            seq,
            at_ms: now_ms(),
            stream,
            bytes,
            dropped: 0,
        };
        w.add(job, line);
    }

    /// Adds a line numbered elsewhere (by a slot's child process), as `job`'s.
    pub(crate) fn push_line(&self, job: JobRef, mut line: LogLine) {
        line.bytes.truncate(MAX_LOG_LINE_BYTES);
        self.lock().add(job, line);
    }

    /// Up to `max_bytes` of waiting lines (at least one line if any waits).
    pub(crate) fn take(&self, max_bytes: usize) -> Vec<LogChunk> {
        let mut guard = self.lock();
        let w = &mut *guard;
        let mut out = Vec::new();
        let mut size = 0;
        let jobs: Vec<JobRef> = w.jobs.keys().copied().collect();
        for job in jobs {
            let Some(p) = w.jobs.get_mut(&job) else {
                continue;
            };
            let mut full = false;
            while let Some(cost) = p.lines.front().map(LogLine::cost) {
                if size > 0 && size + cost > max_bytes {
                    full = true;
                    break;
                }
                let Some(line) = p.lines.pop_front() else {
                    break;
                };
                size += cost;
                p.cost -= cost;
                w.cost -= cost;
                out.push(LogChunk { job, line });
            }
            if p.lines.is_empty() {
                w.jobs.remove(&job);
            }
            if full {
                break;
            }
        }
        out
    }

    /// Whether lines wait, and their cost.
    pub(crate) fn waiting(&self) -> usize {
        self.lock().cost
    }

    /// `job` ended and its lines were taken: its numbering is forgotten later.
    pub(crate) fn ended(&self, job: JobRef) {
        let mut w = self.lock();
        w.ended.push_back(job);
        while w.ended.len() > REMEMBERED {
            if let Some(old) = w.ended.pop_front() {
                w.seqs.remove(&old);
                w.lost.remove(&old);
            }
        }
    }
}

impl Waiting {
    fn add(&mut self, job: JobRef, mut line: LogLine) {
        line.dropped += self.lost.remove(&job).unwrap_or(0);
        let seq = self.seqs.entry(job).or_insert(0);
        *seq = (*seq).max(line.seq);
        let cost = line.cost();
        let p = self.jobs.entry(job).or_default();
        p.lines.push_back(line);
        p.cost += cost;
        self.cost += cost;
        self.bound(job);
    }

    /// Drops the oldest lines of `job` past its bound, then of the attempt holding the
    /// most past the sink's; the line after a dropped one says how much was lost.
    fn bound(&mut self, job: JobRef) {
        loop {
            let over_job = self
                .jobs
                .get(&job)
                .is_some_and(|p| p.cost > MAX_LOG_BYTES_PER_ATTEMPT);
            let victim = if over_job {
                job
            } else if self.cost > LOG_BUFFER_BYTES {
                match self.jobs.iter().max_by_key(|(_, p)| p.cost) {
                    Some((k, _)) => *k,
                    None => return,
                }
            } else {
                return;
            };
            let Some(p) = self.jobs.get_mut(&victim) else {
                return;
            };
            let Some(old) = p.lines.pop_front() else {
                return;
            };
            p.cost -= old.cost();
            self.cost -= old.cost();
            let lost = old.bytes.len() as u64 + old.dropped;
            match p.lines.front_mut() {
                Some(next) => next.dropped += lost,
                None => {
                    // Its only line (many attempts wait at once): its next line says.
                    self.jobs.remove(&victim);
                    *self.lost.entry(victim).or_default() += lost;
                }
            }
        }
    }
}

/// `bytes` in pieces of at most [`MAX_LOG_LINE_BYTES`] (one empty piece for an empty
/// line).
fn pieces(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let empty: &[u8] = &[];
    let first = bytes.is_empty().then_some(empty);
    first.into_iter().chain(bytes.chunks(MAX_LOG_LINE_BYTES))
}

/// Where one attempt's lines go: the attempt and the broker's sink. Cheap to clone,
/// to hand to threads reading a command's pipes.
#[derive(Clone)]
pub(crate) struct JobLog {
    pub(crate) job: JobRef,
    pub(crate) sink: Arc<LogSink>,
}

impl JobLog {
    /// Adds a line of this attempt.
    pub(crate) fn line(&self, stream: LogStream, bytes: &[u8]) {
        self.sink.push(self.job, stream, bytes);
    }
}

thread_local! {
    static CURRENT: RefCell<Option<JobLog>> = const { RefCell::new(None) };
}

/// The log of the attempt running on this thread, if any.
pub(crate) fn current() -> Option<JobLog> {
    CURRENT.with(|c| c.borrow().clone())
}

/// Runs `f` with `log` as this thread's current log, then restores the previous one
/// (even if `f` panics).
pub(crate) fn with_log<R>(log: Option<JobLog>, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<JobLog>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            CURRENT.with(|c| *c.borrow_mut() = previous);
        }
    }
    let _restore = Restore(CURRENT.with(|c| std::mem::replace(&mut *c.borrow_mut(), log)));
    f()
}

/// Where a pipe's lines go: one attempt's log (a command), or whichever job a
/// persistent process serves when the line ends (none between jobs: dropped).
#[derive(Clone)]
pub(crate) enum LogTarget {
    Job(JobLog),
    Serving(Arc<Mutex<Option<JobLog>>>),
}

impl LogTarget {
    fn log(&self) -> Option<JobLog> {
        match self {
            LogTarget::Job(l) => Some(l.clone()),
            LogTarget::Serving(s) => s.lock().unwrap_or_else(PoisonError::into_inner).clone(),
        }
    }
}

/// Cuts a pipe's bytes into lines (newline removed, a trailing `\r` kept as is) or
/// pieces of [`MAX_LOG_LINE_BYTES`], each timed when it is complete.
pub(crate) struct LineSplitter {
    stream: LogStream,
    target: LogTarget,
    buf: Vec<u8>,
}

impl LineSplitter {
    pub(crate) fn new(stream: LogStream, target: LogTarget) -> Self {
        LineSplitter {
            stream,
            target,
            buf: Vec::new(),
        }
    }

    /// Bytes read from the pipe.
    pub(crate) fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let room = MAX_LOG_LINE_BYTES - self.buf.len();
            match bytes[..bytes.len().min(room)]
                .iter()
                .position(|&b| b == b'\n')
            {
                Some(nl) => {
                    self.buf.extend_from_slice(&bytes[..nl]);
                    bytes = &bytes[nl + 1..];
                    self.emit();
                }
                None => {
                    let n = bytes.len().min(room);
                    self.buf.extend_from_slice(&bytes[..n]);
                    bytes = &bytes[n..];
                    if self.buf.len() >= MAX_LOG_LINE_BYTES {
                        self.emit();
                    }
                }
            }
        }
    }

    /// The pipe closed: a last line without a newline is sent too.
    pub(crate) fn finish(&mut self) {
        if !self.buf.is_empty() {
            self.emit();
        }
    }

    fn emit(&mut self) {
        if let Some(log) = self.target.log() {
            log.line(self.stream, &self.buf);
        }
        self.buf.clear();
    }
}

#[cfg(test)]
#[path = "joblog/tests.rs"]
mod tests;
