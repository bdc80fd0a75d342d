//! The broker's slots: one thread each, taking jobs from the queue the event loop
//! fills, running them on the thread ([`Isolation::Thread`]) or in the slot's child
//! process ([`Isolation::Process`], driving a [`ChildQueue`]), and handing each report
//! back to the event loop over an inproc PUSH socket of its own. They start, with the
//! monitor thread, on the router's first welcome.

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use pypelinin_common::protocol::{Assignment, ClusterConfig, JobRef, JobReport};
use pypelinin_common::{moving_average, now_ms, Data, Shutdown};
use tracing::{error, info, warn};

use crate::api::{Store, Worker};
use crate::cancel::with_flag;
use crate::config::{BrokerError, Isolation};
use crate::job::{job_span, past_timeout, run_job, JobError};
use crate::joblog::{with_log, JobLog, LogSink};
use crate::monitor::HostMonitor;
use crate::queue::{ChildQueue, Take};
use crate::slot::{cancel_channel, CancelRx, CancelTx, Ended, SlotError, SlotProcess};
use crate::table::{Internal, SlotTable};

/// What the slots need to know to start.
pub(crate) struct SlotsSpec<'a> {
    pub ctx: &'a zmq::Context,
    /// Where the event loop pulls reports from.
    pub results: &'a str,
    pub cluster: &'a ClusterConfig,
    pub store: Arc<dyn Store>,
    pub workers: Arc<HashMap<String, Arc<dyn Worker>>>,
    pub isolation: Isolation,
    pub slot_memory_bytes: Option<u64>,
    pub prefetch: usize,
    /// The monitor thread's identity.
    pub name: &'a str,
    pub host: &'a str,
    /// Where jobs' log lines go.
    pub logs: Arc<LogSink>,
}

/// The slot threads and the monitor thread, from the event loop's side.
pub(crate) struct Slots {
    table: Arc<SlotTable>,
    /// `None` until started, and once stopping: then the slots run out of jobs.
    jobs: Option<Sender<Assignment>>,
    cancels: Vec<CancelTx>,
    threads: Vec<JoinHandle<()>>,
    stop_monitor: Shutdown,
    /// Whether jobs run on the slot threads (then a stop raises their cancel flags).
    thread_slots: bool,
}

/// How long a stopping broker waits for thread slots whose jobs it cancelled (command
/// workers kill their process groups within milliseconds).
const STOP_GRACE: Duration = Duration::from_secs(5);

impl Slots {
    /// `slots` slots, not started.
    pub(crate) fn new(slots: usize) -> Self {
        Slots {
            table: Arc::new(SlotTable::new(slots)),
            jobs: None,
            cancels: Vec::new(),
            threads: Vec::new(),
            stop_monitor: Shutdown::new(),
            thread_slots: false,
        }
    }

    /// Starts the slot threads and the monitor.
    pub(crate) fn start(&mut self, spec: SlotsSpec<'_>) -> Result<(), BrokerError> {
        let (tx, rx) = crossbeam_channel::unbounded::<Assignment>();
        self.jobs = Some(tx);
        self.thread_slots = spec.isolation == Isolation::Thread;
        let slots = self.table.len();
        for slot in 0..slots {
            let push = spec.ctx.socket(zmq::PUSH)?;
            push.connect(spec.results)?;
            let (cancel_tx, cancel_rx) = cancel_channel()?;
            self.cancels.push(cancel_tx);
            let mode = match spec.isolation {
                Isolation::Thread => Mode::Thread {
                    store: spec.store.clone(),
                    workers: spec.workers.clone(),
                },
                Isolation::Process => Mode::Process {
                    config: spec.cluster.clone(),
                    memory: spec.slot_memory_bytes,
                    prefetch: spec.prefetch,
                },
            };
            let ctx = SlotCtx {
                slot,
                push,
                table: self.table.clone(),
                cancel: cancel_rx,
                logs: spec.logs.clone(),
            };
            let rx = rx.clone();
            let h = std::thread::Builder::new()
                .name(format!("slot-{slot}"))
                .spawn(move || slot_loop(ctx, mode, rx))?;
            self.threads.push(h);
        }
        let push = spec.ctx.socket(zmq::PUSH)?;
        push.connect(spec.results)?;
        let monitor = HostMonitor::new(spec.name.to_string(), spec.host.to_string());
        let every = Duration::from_millis(spec.cluster.monitoring_interval_ms.max(100));
        let (table, stop, store) = (self.table.clone(), self.stop_monitor.clone(), spec.store);
        let h = std::thread::Builder::new()
            .name("monitor".into())
            .spawn(move || crate::monitor::run(monitor, every, &table, &*store, &push, &stop))?;
        self.threads.push(h);
        Ok(())
    }

    /// Queues `a` for the next free slot; false before the slots started.
    pub(crate) fn assign(&self, a: Assignment) -> bool {
        match &self.jobs {
            // The slots hold the receiver until the broker stops.
            Some(tx) => tx.send(a).is_ok(),
            None => false,
        }
    }

    /// Stops `job`: the slot running it kills it; one queued is cancelled when taken.
    pub(crate) fn revoke(&self, job: JobRef) {
        if let Some(k) = self.table.revoke(job) {
            if let Some(c) = self.cancels.get(k) {
                c.send(job);
            }
        }
    }

    /// Stops taking jobs and the monitor; joins the threads unless a job still runs.
    pub(crate) fn stop(&mut self) {
        self.stop_monitor.trigger();
        self.jobs = None;
        if self.thread_slots && self.table.busy() > 0 {
            // The router has these jobs back: workers that can stop (command workers,
            // whose processes would outlive the broker) are told to, and given a moment.
            self.table.cancel_all();
            let until = Instant::now() + STOP_GRACE;
            while !self.threads.iter().all(JoinHandle::is_finished) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        // Slot threads still inside a job are not joined: the process exit ends them,
        // and the router already has their jobs back.
        if self.table.busy() == 0 {
            for h in self.threads.drain(..) {
                let _ = h.join();
            }
        }
    }
}

enum Mode {
    Thread {
        store: Arc<dyn Store>,
        workers: Arc<HashMap<String, Arc<dyn Worker>>>,
    },
    Process {
        config: ClusterConfig,
        memory: Option<u64>,
        prefetch: usize,
    },
}

/// What one slot thread holds.
struct SlotCtx {
    slot: usize,
    push: zmq::Socket,
    table: Arc<SlotTable>,
    cancel: CancelRx,
    logs: Arc<LogSink>,
}

impl SlotCtx {
    /// Where `a`'s log lines go.
    fn log(&self, a: &Assignment) -> JobLog {
        JobLog {
            job: a.job,
            sink: self.logs.clone(),
        }
    }

    /// Shows `a` as this slot's job from now on; its start time.
    fn start(&self, a: &Assignment) -> u64 {
        let started_ms = now_ms();
        self.table.start(self.slot, a, started_ms);
        started_ms
    }

    /// Reports how `a` ended; false if the broker is gone. A failure is logged here,
    /// where the attempt ends.
    fn finish(&self, a: &Assignment, started_ms: u64, result: Result<Data, String>) -> bool {
        if let Err(e) = &result {
            job_span(a).in_scope(|| warn!(error = %e, worker = %a.info.worker, "job failed"));
        }
        self.table.finish(self.slot);
        let report = JobReport {
            job: a.job,
            started_ms,
            finished_ms: now_ms(),
            result,
        };
        let bytes = match rmp_serde::to_vec_named(&Internal::Done(report)) {
            Ok(b) => b,
            Err(e) => {
                // An output that cannot be encoded fails its attempt instead.
                let e = format!("could not encode the output: {e}");
                job_span(a).in_scope(|| error!(error = %e, "job failed"));
                let report = JobReport {
                    job: a.job,
                    started_ms,
                    finished_ms: now_ms(),
                    result: Err(e),
                };
                match rmp_serde::to_vec_named(&Internal::Done(report)) {
                    Ok(b) => b,
                    Err(_) => return true,
                }
            }
        };
        self.push.send(bytes, 0).is_ok()
    }
}

fn slot_loop(ctx: SlotCtx, mode: Mode, jobs: Receiver<Assignment>) {
    match mode {
        Mode::Thread { store, workers } => thread_slot(&ctx, &*store, &workers, &jobs),
        Mode::Process {
            config,
            memory,
            prefetch,
        } => process_slot(&ctx, &config, memory, prefetch, &jobs),
    }
}

fn thread_slot(
    ctx: &SlotCtx,
    store: &dyn Store,
    workers: &HashMap<String, Arc<dyn Worker>>,
    jobs: &Receiver<Assignment>,
) {
    for a in jobs.iter() {
        let started_ms = ctx.start(&a);
        let result = if ctx.table.take_revoked(&a) {
            Err(JobError::Cancelled)
        } else {
            let t0 = Instant::now();
            let flag = ctx.table.cancel_flag(ctx.slot);
            let log = Some(ctx.log(&a));
            let r = job_span(&a).in_scope(|| {
                with_log(log, || with_flag(flag, || run_job(store, workers, &a.info)))
            });
            past_timeout(
                r,
                a.info.timeout_ms.map(Duration::from_millis),
                t0.elapsed(),
            )
        };
        if !ctx.finish(&a, started_ms, result.map_err(|e| e.to_string())) {
            return;
        }
    }
}

/// Longest a running job may have run, and may usually run (its worker's average at this
/// slot), for a job to be queued behind it in the slot's child. Of the order of the
/// router's prefetch horizon: the pipe hop saved is worth a wait this short, not more.
pub(crate) const QUEUE_BEHIND_MS: u64 = 20;
/// Weight of the latest job in a worker's moving average of lengths at one slot.
const LENGTH_WEIGHT: f64 = 0.2;

/// How long each worker's jobs have taken at one slot (a moving average, in ms).
#[derive(Default)]
pub(crate) struct JobLengths(HashMap<String, f64>);

impl JobLengths {
    /// Records a job of `worker` that took `ms`.
    pub(crate) fn observe(&mut self, worker: &str, ms: u64) {
        let ms = ms as f64;
        match self.0.get_mut(worker) {
            Some(avg) => *avg = moving_average(Some(*avg), ms, LENGTH_WEIGHT),
            None => {
                self.0.insert(worker.to_string(), ms);
            }
        }
    }

    /// Whether a job of `worker` running for `ran_ms` so far is short enough to queue
    /// another behind: its worker is known to be quick here, and it has not run long.
    /// A worker never seen is not: its first job could be an hour long.
    pub(crate) fn is_short(&self, worker: &str, ran_ms: u64) -> bool {
        ran_ms < QUEUE_BEHIND_MS
            && self
                .0
                .get(worker)
                .is_some_and(|avg| *avg < QUEUE_BEHIND_MS as f64)
    }
}

/// A slot in process isolation: drives its [`ChildQueue`] with its child's I/O.
fn process_slot(
    ctx: &SlotCtx,
    config: &ClusterConfig,
    memory: Option<u64>,
    prefetch: usize,
    jobs: &Receiver<Assignment>,
) {
    let mut child: Option<SlotProcess> = None;
    let mut q = ChildQueue::new(prefetch);
    let mut started_ms = 0;
    let mut lengths = JobLengths::default();
    loop {
        while let Some(take) = q.take() {
            // A job is queued behind the running one only if that one is short: behind
            // a long one it would wait out the whole of it while another slot frees.
            let short = q.running().is_some_and(|r| {
                lengths.is_short(&r.info.worker, now_ms().saturating_sub(started_ms))
            });
            let next = match take {
                Take::Again(a) => *a,
                Take::Wait => match jobs.recv() {
                    Ok(a) => a,
                    Err(_) => return,
                },
                Take::IfAllBusy if short && ctx.table.all_busy() => match jobs.try_recv() {
                    Ok(a) => a,
                    Err(_) => break,
                },
                Take::IfAllBusy => break,
            };
            let behind = q.running().is_some();
            if !behind {
                started_ms = ctx.start(&next);
                if ctx.table.take_revoked(&next) {
                    if !ctx.finish(&next, started_ms, Err(JobError::Cancelled.to_string())) {
                        return;
                    }
                    continue;
                }
            }
            let c = match child.as_mut() {
                Some(c) => c,
                None => match SlotProcess::spawn(config, memory) {
                    Ok(c) => child.insert(c),
                    Err(why) => {
                        // Nothing runs (jobs are only queued behind one in a child):
                        // the job fails with why.
                        if !ctx.finish(&next, started_ms, Err(why.to_string())) {
                            return;
                        }
                        continue;
                    }
                },
            };
            match c.send(&next.info, behind) {
                Ok(true) => q.sent(next, Instant::now()),
                Ok(false) => {
                    q.hold(next);
                    break;
                }
                Err(why) if !behind => {
                    child = None;
                    if !ctx.finish(&next, started_ms, Err(why.to_string())) {
                        return;
                    }
                }
                // The child died under the running job: waiting for it tells how.
                Err(_) => {
                    q.hold(next);
                    break;
                }
            }
        }
        let Some(front) = q.running() else {
            continue;
        };
        let ended = match child.as_mut() {
            Some(c) => {
                let (job, sink) = (front.job, &ctx.logs);
                let mut log = |chunks: Vec<pypelinin_common::protocol::LogChunk>| {
                    for c in chunks {
                        sink.push_line(job, c.line);
                    }
                };
                job_span(front)
                    .in_scope(|| c.wait_logging(job, q.deadline(), &ctx.cancel, &mut log))
            }
            // Jobs are only ever sent to a child, so one holds them; were it gone, they
            // would be lost with it.
            None => Ended::Lost(SlotError::Died(crate::slot::Death::Unknown)),
        };
        let (a, result) = match ended {
            Ended::Returned(r) => (q.answered(), r),
            Ended::Lost(why) => {
                child = None;
                let (a, behind) = q.lost();
                if behind > 0 {
                    info!(
                        jobs = behind,
                        "jobs queued in a lost slot process go to the next one"
                    );
                }
                (a, Err(why.to_string()))
            }
        };
        if let Some(a) = a {
            lengths.observe(&a.info.worker, now_ms().saturating_sub(started_ms));
            if !ctx.finish(&a, started_ms, result) {
                return;
            }
        }
        // The next one sent has started in the child already.
        if let Some(next) = q.next_started(Instant::now()) {
            started_ms = ctx.start(next);
            if ctx.table.take_revoked(next) {
                let why = match child.as_mut() {
                    Some(c) => c.lost(SlotError::Cancelled),
                    None => SlotError::Cancelled,
                };
                child = None;
                if let (Some(a), _) = q.lost() {
                    if !ctx.finish(&a, started_ms, Err(why.to_string())) {
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod length_tests {
    use super::*;

    #[test]
    fn only_a_quick_worker_early_in_its_run_has_a_job_queued_behind_it() {
        let mut l = JobLengths::default();
        assert!(
            !l.is_short("Step", 0),
            "a worker never seen could run for hours"
        );
        l.observe("Step", 2);
        assert!(l.is_short("Step", 0));
        assert!(l.is_short("Step", QUEUE_BEHIND_MS - 1));
        assert!(
            !l.is_short("Step", QUEUE_BEHIND_MS),
            "it has run too long already"
        );
        l.observe("Sleep", 60_000);
        assert!(
            !l.is_short("Sleep", 0),
            "a long worker never has one behind it"
        );
        // The average moves: a worker that became slow stops taking jobs behind it.
        for _ in 0..20 {
            l.observe("Step", 500);
        }
        assert!(!l.is_short("Step", 0));
    }
}
