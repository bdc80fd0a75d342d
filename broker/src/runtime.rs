//! The broker's event loop and worker threads.
//!
//! One I/O thread owns the DEALER socket to the router. Worker threads take jobs from a
//! channel, run `retrieve → process → save`, and hand their reports back over an inproc
//! PUSH socket each, which the I/O thread polls next to the router's socket: no socket
//! is ever shared between threads and nothing waits on a timer to notice a result.
//!
//! Reliability: a finished job's report is kept until the router acknowledges it (the
//! router acknowledges only once the result is durable). If the router falls silent, the
//! broker reconnects on a fresh socket, says hello again with the jobs it runs and the
//! reports it still holds, and resends them.

use std::collections::{HashMap, HashSet, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use pypelinin_common::protocol::{
    check_output_size, decode, encode, Assignment, BrokerHello, ClusterConfig, FromRouter, JobInfo,
    JobRef, JobReport, MonitoringReport, PipelineId, ProtocolError, Push, Reply, Request, SlotJob,
    HEARTBEAT_INTERVAL, PEER_LIVENESS, REQUEST_TIMEOUT,
};
use pypelinin_common::transport::dealer;
use pypelinin_common::{now_ms, Data, Shutdown};
use serde::{Deserialize, Serialize};
use tracing::{debug, error, info, info_span, warn};

use crate::api::{BoxError, Store, StoreFactory, Worker};
use crate::monitor::HostMonitor;
use crate::slot::{cancel_channel, CancelRx, CancelTx, Ended, SlotProcess};

/// How long a stopping broker waits for its running jobs before giving them back.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Where workers run: see [`crate::slot`] for the trade-off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Isolation {
    /// Each slot runs jobs in a child process: a crash, abort, segfault, memory
    /// exhaustion or hang ends only that attempt. The default.
    #[default]
    Process,
    /// Jobs run on the broker's threads: no pipe hop per job, but a worker that aborts
    /// or segfaults takes the broker down, and a hung worker holds its slot forever
    /// (its attempt is still reported as timed out when it returns).
    Thread,
}

/// Where a broker connects and how much it runs at once.
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    /// Router API address.
    pub api: String,
    /// Concurrent worker slots.
    pub slots: usize,
    /// On shutdown, how long to let running jobs finish before giving them back.
    pub drain_timeout: Duration,
    /// Where workers run.
    pub isolation: Isolation,
    /// Address-space limit of each slot process, in bytes (process isolation only);
    /// a worker that goes past it fails its attempt instead of starving the host.
    pub slot_memory_bytes: Option<u64>,
    /// Most jobs held queued beyond the slots (default [`PREFETCH_PER_SLOT`] per slot),
    /// so that a slot that frees starts its next job at once instead of after a round
    /// trip to the router. The router fills this queue only as far as the broker's
    /// recent jobs say it holds a few milliseconds of work: long jobs are never queued
    /// here behind one another. 0 turns queueing off.
    pub prefetch: Option<usize>,
}

/// Most jobs a broker holds queued per slot unless told otherwise.
pub const PREFETCH_PER_SLOT: usize = 32;

impl BrokerConfig {
    /// A config with one slot per CPU and the default drain timeout. A broker needs only
    /// the router's API address: its jobs come by direct push, never by broadcast.
    pub fn new(api: &str) -> Self {
        BrokerConfig {
            api: api.to_string(),
            slots: std::thread::available_parallelism().map_or(1, |n| n.get()),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            isolation: Isolation::Process,
            slot_memory_bytes: None,
            prefetch: None,
        }
    }
}

/// Why a broker stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// ZeroMQ failed.
    #[error("zeromq: {0}")]
    Zmq(#[from] zmq::Error),
    /// The store could not be built from the router's configuration.
    #[error("store from cluster configuration: {0}")]
    Store(String),
    /// The operating system refused a resource (a socket pair for a slot).
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The broker was given nothing to run.
    #[error("a broker needs at least one worker and one slot")]
    Empty,
}

/// A broker: workers by name and a way to build the store.
pub struct Broker {
    workers: HashMap<String, Arc<dyn Worker>>,
    store_factory: Box<StoreFactory>,
}

impl Default for Broker {
    fn default() -> Self {
        Self::new()
    }
}

/// Messages from worker and monitor threads to the I/O thread.
#[derive(Serialize, Deserialize)]
enum Internal {
    Done(JobReport),
    Monitor(MonitoringReport),
}

type Slots = Arc<Mutex<Vec<Option<SlotJob>>>>;

impl Broker {
    /// A broker with no workers and the [`crate::ClusterStore`].
    pub fn new() -> Self {
        Broker {
            workers: HashMap::new(),
            store_factory: Box::new(|_| Ok(Arc::new(crate::ClusterStore))),
        }
    }

    /// Offers `worker` under `name`.
    pub fn worker(mut self, name: &str, worker: impl Worker) -> Self {
        self.workers.insert(name.to_string(), Arc::new(worker));
        self
    }

    /// Builds the store from the cluster configuration the router hands out.
    pub fn store_factory<F>(mut self, f: F) -> Self
    where
        F: Fn(&ClusterConfig) -> Result<Arc<dyn Store>, BoxError> + Send + 'static,
    {
        self.store_factory = Box::new(f);
        self
    }

    /// Names of the workers offered, sorted.
    pub fn worker_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.workers.keys().cloned().collect();
        names.sort();
        names
    }

    /// Runs until `shutdown` triggers, then drains: no new jobs, running ones finish
    /// (up to `drain_timeout`) and are reported, the rest are given back.
    ///
    /// With [`Isolation::Process`], the broker starts its own executable again (same
    /// arguments, [`crate::slot::CHILD_ENV`] set) for each slot, and in that child this
    /// call serves jobs and never returns: call `run` early in `main`, before anything
    /// with side effects other than parsing arguments and starting logs.
    pub fn run(self, config: BrokerConfig, shutdown: Shutdown) -> Result<(), BrokerError> {
        if std::env::var_os(crate::slot::CHILD_ENV).is_some() {
            crate::slot::child_main(&self.workers, &*self.store_factory);
        }
        if self.workers.is_empty() || config.slots == 0 {
            return Err(BrokerError::Empty);
        }
        let host = sysinfo::System::host_name().unwrap_or_else(|| "unknown".into());
        let name = format!(
            "{host}-{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..6]
        );
        let mut config = config;
        if config.isolation == Isolation::Process && config.slot_memory_bytes.is_none() {
            config.slot_memory_bytes = Some(default_slot_memory(config.slots));
        }
        let mut io = Io::new(self, config, name, host)?;
        let result = io.serve(&shutdown);
        io.stop_threads();
        result
    }
}

struct Io {
    ctx: zmq::Context,
    config: BrokerConfig,
    name: String,
    host: String,
    workers: Arc<HashMap<String, Arc<dyn Worker>>>,
    store_factory: Box<StoreFactory>,
    store: Option<Arc<dyn Store>>,
    socket: zmq::Socket,
    results: zmq::Socket,
    results_endpoint: String,
    next_id: u64,
    last_heard: Instant,
    last_beat: Instant,
    hello_id: Option<(u64, Instant)>,
    welcomed: bool,
    running: HashMap<(PipelineId, u32), JobRef>,
    unsent: Vec<JobReport>,
    inflight: HashMap<u64, (Instant, Vec<JobReport>)>,
    jobs_tx: Option<Sender<Assignment>>,
    cancels: Vec<CancelTx>,
    revoked: Arc<Mutex<HashSet<JobRef>>>,
    threads: Vec<JoinHandle<()>>,
    slots: Slots,
    done: Arc<AtomicU64>,
    stop_monitor: Shutdown,
}

impl Io {
    fn new(
        b: Broker,
        config: BrokerConfig,
        name: String,
        host: String,
    ) -> Result<Self, BrokerError> {
        let ctx = zmq::Context::new();
        let results = ctx.socket(zmq::PULL)?;
        let results_endpoint = format!("inproc://results-{name}");
        results.bind(&results_endpoint)?;
        let socket = dealer(&ctx, &config.api)?;
        let slots = Arc::new(Mutex::new(vec![None; config.slots]));
        Ok(Io {
            ctx,
            name,
            host,
            workers: Arc::new(b.workers),
            store_factory: b.store_factory,
            store: None,
            socket,
            results,
            results_endpoint,
            next_id: 1,
            last_heard: Instant::now(),
            last_beat: Instant::now(),
            hello_id: None,
            welcomed: false,
            running: HashMap::new(),
            unsent: Vec::new(),
            inflight: HashMap::new(),
            jobs_tx: None,
            cancels: Vec::new(),
            revoked: Arc::new(Mutex::new(HashSet::new())),
            threads: Vec::new(),
            slots,
            done: Arc::new(AtomicU64::new(0)),
            stop_monitor: Shutdown::new(),
            config,
        })
    }

    fn serve(&mut self, shutdown: &Shutdown) -> Result<(), BrokerError> {
        info!(broker = %self.name, api = %self.config.api, slots = self.config.slots, workers = ?self.worker_names(), "broker started");
        self.hello()?;
        let mut drain_deadline: Option<Instant> = None;
        loop {
            if drain_deadline.is_none() && shutdown.is_triggered() {
                info!(
                    running = self.running.len(),
                    "stopping: no new jobs, finishing running ones"
                );
                self.send(&Request::Drain)?;
                drain_deadline = Some(Instant::now() + self.config.drain_timeout);
            }
            if let Some(deadline) = drain_deadline {
                let idle =
                    self.running.is_empty() && self.unsent.is_empty() && self.inflight.is_empty();
                if idle || Instant::now() >= deadline {
                    if !idle {
                        warn!(
                            running = self.running.len(),
                            unacked = self.unsent.len() + self.inflight.len(),
                            "drain timeout: giving jobs back"
                        );
                    }
                    self.send(&Request::Bye)?;
                    std::thread::sleep(Duration::from_millis(50));
                    return Ok(());
                }
            }
            if self.last_heard.elapsed() > HEARTBEAT_INTERVAL * PEER_LIVENESS {
                warn!("router silent; reconnecting");
                self.reconnect()?;
            }
            let mut items = [
                self.socket.as_poll_item(zmq::POLLIN),
                self.results.as_poll_item(zmq::POLLIN),
            ];
            // Until welcomed, look again soon: the hello may not have left yet.
            let wait = if self.welcomed {
                HEARTBEAT_INTERVAL / 2
            } else {
                Duration::from_millis(20)
            };
            pypelinin_common::transport::poll(&mut items, wait.as_millis() as i64)?;
            while let Ok(bytes) = self.socket.recv_bytes(zmq::DONTWAIT) {
                self.last_heard = Instant::now();
                self.on_router(&bytes)?;
            }
            while let Ok(bytes) = self.results.recv_bytes(zmq::DONTWAIT) {
                match rmp_serde::from_slice::<Internal>(&bytes) {
                    Ok(Internal::Done(report)) => {
                        self.running.remove(&(report.job.pipeline, report.job.job));
                        self.unsent.push(report);
                    }
                    Ok(Internal::Monitor(m)) => {
                        if self.welcomed {
                            self.send(&Request::Monitor(m))?;
                        }
                    }
                    Err(e) => error!(error = %e, "bad internal message"),
                }
            }
            if !self.welcomed && !self.hello_pending() {
                self.hello()?;
            }
            // Lazy Pirate for reports: one not acknowledged in time is sent again (a
            // duplicate is recognised by the router and changes nothing).
            let overdue: Vec<u64> = self
                .inflight
                .iter()
                .filter(|(_, (at, _))| at.elapsed() > REQUEST_TIMEOUT)
                .map(|(id, _)| *id)
                .collect();
            for id in overdue {
                let (_, reports) = self.inflight.remove(&id).unwrap();
                self.unsent.extend(reports);
            }
            if self.welcomed && !self.unsent.is_empty() {
                let reports = std::mem::take(&mut self.unsent);
                match self.send(&Request::JobDone(reports.clone()))? {
                    Some(id) => {
                        self.inflight.insert(id, (Instant::now(), reports));
                    }
                    None => self.unsent = reports,
                }
            }
            if self.last_beat.elapsed() >= HEARTBEAT_INTERVAL {
                self.send(&Request::Heartbeat)?;
            }
        }
    }

    fn worker_names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.workers.keys().map(|s| s.as_str()).collect();
        v.sort();
        v
    }

    fn on_router(&mut self, bytes: &[u8]) -> Result<(), BrokerError> {
        let (id, msg) = match decode::<FromRouter>(bytes) {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e.error, "undecodable frame from router");
                return Ok(());
            }
        };
        match msg {
            FromRouter::Push(Push::Assign(list)) => {
                for a in list {
                    self.running.insert((a.job.pipeline, a.job.job), a.job);
                    match &self.jobs_tx {
                        Some(tx) => {
                            let _ = tx.send(a);
                        }
                        None => warn!(
                            "job assigned before the welcome; dropped, the lease will return it"
                        ),
                    }
                }
            }
            FromRouter::Push(Push::Revoke(list)) => {
                let slots = self.slots.lock().unwrap().clone();
                for job in list {
                    info!(pipeline = %job.pipeline, job = job.job, attempt = job.attempt, "attempt revoked");
                    match slots
                        .iter()
                        .position(|s| s.as_ref().is_some_and(|s| s.job == job))
                    {
                        Some(k) => {
                            self.cancels[k].send(job);
                        }
                        None => {
                            self.revoked.lock().unwrap().insert(job);
                        }
                    }
                }
            }
            FromRouter::Push(other) => debug!(?other, "push meant for a pipeliner; ignored"),
            FromRouter::Reply(reply) => {
                let acked = self.inflight.remove(&id).map(|(_, r)| r);
                match reply {
                    Reply::Welcome(config) if self.hello_id.is_some_and(|(h, _)| h == id) => {
                        self.hello_id = None;
                        self.welcomed = true;
                        self.start_threads(&config)?;
                        info!(store = %config.store, "welcomed by the router");
                    }
                    Reply::Error(ProtocolError::UnknownPeer) => {
                        if let Some(reports) = acked {
                            self.unsent.extend(reports);
                        }
                        self.welcomed = false;
                        if !self.hello_pending() {
                            info!("router does not know us (restarted?); saying hello again");
                            self.hello()?;
                        }
                    }
                    Reply::Error(ProtocolError::Stale(msg)) => {
                        // The router gave these attempts to someone else: drop them.
                        warn!(%msg, "reports refused as stale");
                    }
                    Reply::Error(e) => warn!(error = %e, "router refused a request"),
                    _ => {}
                }
            }
        }
        Ok(())
    }

    fn prefetch(&self) -> usize {
        self.config
            .prefetch
            .unwrap_or(PREFETCH_PER_SLOT * self.config.slots)
    }

    /// A hello is on its way and not overdue.
    fn hello_pending(&self) -> bool {
        self.hello_id
            .is_some_and(|(_, at)| at.elapsed() < REQUEST_TIMEOUT)
    }

    fn hello(&mut self) -> Result<(), BrokerError> {
        // Reports not acknowledged yet are announced in the hello and sent after it.
        for (_, (_, reports)) in self.inflight.drain() {
            self.unsent.extend(reports);
        }
        let unreported = self.unsent.iter().map(|r| r.job).collect();
        let hello = BrokerHello {
            name: self.name.clone(),
            host: self.host.clone(),
            workers: self.worker_names().iter().map(|s| s.to_string()).collect(),
            slots: self.config.slots as u32,
            running: self.running.values().copied().collect(),
            unreported,
            prefetch: self.prefetch() as u32,
        };
        self.hello_id = self
            .send(&Request::BrokerHello(hello))?
            .map(|id| (id, Instant::now()));
        Ok(())
    }

    fn reconnect(&mut self) -> Result<(), BrokerError> {
        self.socket = dealer(&self.ctx, &self.config.api)?;
        self.last_heard = Instant::now();
        self.welcomed = false;
        self.hello()
    }

    /// Sends without blocking; `None` when there is no connection to the router (the
    /// loop tries again: nothing that matters is dropped for good).
    fn send(&mut self, req: &Request) -> Result<Option<u64>, BrokerError> {
        let id = self.next_id;
        self.next_id += 1;
        self.last_beat = Instant::now();
        match self.socket.send(encode(id, req), zmq::DONTWAIT) {
            Ok(()) => Ok(Some(id)),
            Err(zmq::Error::EAGAIN) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn start_threads(&mut self, config: &ClusterConfig) -> Result<(), BrokerError> {
        if self.store.is_some() {
            return Ok(());
        }
        let store = (self.store_factory)(config).map_err(|e| BrokerError::Store(e.to_string()))?;
        self.store = Some(store.clone());
        let (tx, rx) = crossbeam_channel::unbounded::<Assignment>();
        self.jobs_tx = Some(tx);
        for slot in 0..self.config.slots {
            let push = self.ctx.socket(zmq::PUSH)?;
            push.connect(&self.results_endpoint)?;
            let (cancel_tx, cancel_rx) = cancel_channel()?;
            self.cancels.push(cancel_tx);
            let mode = match self.config.isolation {
                Isolation::Thread => Mode::Thread {
                    store: store.clone(),
                    workers: self.workers.clone(),
                },
                Isolation::Process => Mode::Process {
                    config: config.clone(),
                    memory: self.config.slot_memory_bytes,
                    in_child: if self.prefetch() == 0 { 1 } else { 2 },
                },
            };
            let ctx = SlotCtx {
                slot,
                push,
                slots: self.slots.clone(),
                done: self.done.clone(),
                cancel: cancel_rx,
                revoked: self.revoked.clone(),
            };
            let rx = rx.clone();
            let h = std::thread::Builder::new()
                .name(format!("slot-{slot}"))
                .spawn(move || slot_loop(ctx, mode, rx))
                .expect("spawn worker thread");
            self.threads.push(h);
        }
        let push = self.ctx.socket(zmq::PUSH)?;
        push.connect(&self.results_endpoint)?;
        let mut monitor = HostMonitor::new(self.name.clone(), self.host.clone());
        let (slots, done, stop) = (
            self.slots.clone(),
            self.done.clone(),
            self.stop_monitor.clone(),
        );
        let every = Duration::from_millis(config.monitoring_interval_ms.max(100));
        let h = std::thread::Builder::new()
            .name("monitor".into())
            .spawn(move || {
                let mut next = Instant::now() + every.min(Duration::from_secs(1));
                while !stop.is_triggered() {
                    if Instant::now() < next {
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                    next = Instant::now() + every;
                    let report =
                        monitor.report(slots.lock().unwrap().clone(), done.load(Ordering::Relaxed));
                    if let Err(e) = store.save_monitoring(&report) {
                        warn!(error = %e, "store could not save monitoring");
                    }
                    let bytes =
                        rmp_serde::to_vec_named(&Internal::Monitor(report)).expect("encodes");
                    let _ = push.send(bytes, 0);
                }
            })
            .expect("spawn monitor thread");
        self.threads.push(h);
        Ok(())
    }

    fn stop_threads(&mut self) {
        self.stop_monitor.trigger();
        self.jobs_tx = None;
        // Worker threads still inside a job are not joined: the process exit ends them,
        // and the router already has their jobs back.
        let slots = self
            .slots
            .lock()
            .map(|s| s.iter().filter(|x| x.is_some()).count())
            .unwrap_or(0);
        if slots == 0 {
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
        /// Jobs kept in the child at once: 1, or 2 when the broker prefetches.
        in_child: usize,
    },
}

struct SlotCtx {
    slot: usize,
    push: zmq::Socket,
    slots: Slots,
    done: Arc<AtomicU64>,
    cancel: CancelRx,
    revoked: Arc<Mutex<HashSet<JobRef>>>,
}

impl SlotCtx {
    /// Shows `a` as this slot's job from now on (for monitoring, and so that a revoke
    /// reaches this slot); its start time.
    fn start(&self, a: &Assignment) -> u64 {
        let started_ms = now_ms();
        self.slots.lock().unwrap()[self.slot] = Some(SlotJob {
            job: a.job,
            name: a.info.name.clone(),
            worker: a.info.worker.clone(),
            started_ms,
        });
        started_ms
    }

    /// Whether `a` was revoked before it reached this slot (and forgets it).
    fn was_revoked(&self, a: &Assignment) -> bool {
        self.revoked.lock().unwrap().remove(&a.job)
    }

    /// Whether every slot of the broker is busy (then a slot may queue a job).
    fn all_busy(&self) -> bool {
        self.slots.lock().unwrap().iter().all(Option::is_some)
    }

    /// Reports how `a` ended; false if the broker is gone.
    fn finish(&self, a: &Assignment, started_ms: u64, result: Result<Data, String>) -> bool {
        if let Err(e) = &result {
            job_span(a).in_scope(|| warn!(error = %e, worker = %a.info.worker, "job failed"));
        }
        self.slots.lock().unwrap()[self.slot] = None;
        self.done.fetch_add(1, Ordering::Relaxed);
        let report = JobReport {
            job: a.job,
            started_ms,
            finished_ms: now_ms(),
            result,
        };
        let bytes = rmp_serde::to_vec_named(&Internal::Done(report)).expect("encodes");
        self.push.send(bytes, 0).is_ok()
    }
}

fn slot_loop(ctx: SlotCtx, mode: Mode, jobs: Receiver<Assignment>) {
    match mode {
        Mode::Thread { store, workers } => thread_slot(&ctx, &*store, &workers, &jobs),
        Mode::Process {
            config,
            memory,
            in_child,
        } => process_slot(&ctx, &config, memory, in_child, &jobs),
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
        let result = if ctx.was_revoked(&a) {
            Err("cancelled".to_string())
        } else {
            let t0 = Instant::now();
            let r = job_span(&a).in_scope(|| run_job(store, workers, &a.info));
            match a.info.timeout_ms.map(Duration::from_millis) {
                Some(t) if t0.elapsed() > t => Err(format!(
                    "timed out after {} ms (thread isolation cannot stop a worker: it ran for {} ms)",
                    t.as_millis(),
                    t0.elapsed().as_millis()
                )),
                _ => r,
            }
        };
        if !ctx.finish(&a, started_ms, result) {
            return;
        }
    }
}

/// The span a job's events are logged in, as in the router.
fn job_span(a: &Assignment) -> tracing::Span {
    info_span!("job", pipeline = %a.info.pipeline, job = %a.info.name, attempt = a.job.attempt)
}

/// When the job starting now times out, and after how long.
fn timeout_from_now(a: &Assignment) -> Option<(Instant, Duration)> {
    let t = Duration::from_millis(a.info.timeout_ms?);
    Some((Instant::now() + t, t))
}

/// Puts the jobs a lost child never started in front of those still to send.
fn give_back(sent: &mut VecDeque<Assignment>, again: &mut VecDeque<Assignment>) {
    while let Some(b) = sent.pop_back() {
        again.push_front(b);
    }
}

/// A slot in process isolation: its child runs the jobs it is sent in order. When the
/// broker prefetches (`in_child` 2) and every slot is busy, the next job already waits
/// in the child's pipe while the current one runs.
fn process_slot(
    ctx: &SlotCtx,
    config: &ClusterConfig,
    memory: Option<u64>,
    in_child: usize,
    jobs: &Receiver<Assignment>,
) {
    let mut child: Option<SlotProcess> = None;
    // Sent to the child and not answered, in order: the first one is running.
    let mut sent: VecDeque<Assignment> = VecDeque::new();
    let mut started_ms = 0;
    let mut deadline = None;
    // Jobs a lost child never started, to send to the next one first.
    let mut again: VecDeque<Assignment> = VecDeque::new();
    loop {
        while sent.len() < in_child {
            let behind = !sent.is_empty();
            let next = match again.pop_front() {
                Some(a) => a,
                None if !behind => match jobs.recv() {
                    Ok(a) => a,
                    Err(_) => return,
                },
                None if ctx.all_busy() => match jobs.try_recv() {
                    Ok(a) => a,
                    Err(_) => break,
                },
                None => break,
            };
            if !behind {
                started_ms = ctx.start(&next);
                if ctx.was_revoked(&next) {
                    if !ctx.finish(&next, started_ms, Err("cancelled".into())) {
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
                        // Nothing runs yet (`behind` is false): the job fails with why.
                        if !ctx.finish(&next, started_ms, Err(why)) {
                            return;
                        }
                        continue;
                    }
                },
            };
            match c.send(&next.info, behind) {
                Ok(true) => {
                    if !behind {
                        deadline = timeout_from_now(&next);
                    }
                    sent.push_back(next);
                }
                Ok(false) => {
                    again.push_front(next);
                    break;
                }
                Err(why) if !behind => {
                    child = None;
                    if !ctx.finish(&next, started_ms, Err(why)) {
                        return;
                    }
                }
                // The child died under the running job: waiting for it tells how.
                Err(_) => {
                    again.push_front(next);
                    break;
                }
            }
        }
        let Some(front) = sent.front() else {
            continue;
        };
        let c = child.as_mut().expect("a child holds the jobs sent");
        let ended = job_span(front).in_scope(|| c.wait(front.job, deadline, &ctx.cancel));
        let a = sent.pop_front().expect("front");
        let result = match ended {
            Ended::Returned(r) => r,
            Ended::Lost(why) => {
                child = None;
                if !sent.is_empty() {
                    info!(
                        jobs = sent.len(),
                        "jobs queued in a lost slot process go to the next one"
                    );
                }
                // Those queued behind it never started: they go to the next child.
                give_back(&mut sent, &mut again);
                Err(why)
            }
        };
        if !ctx.finish(&a, started_ms, result) {
            return;
        }
        // The next one sent has started in the child already.
        if let Some(next) = sent.front() {
            started_ms = ctx.start(next);
            deadline = timeout_from_now(next);
            if ctx.was_revoked(next) {
                let why = child.as_mut().expect("holds it").lost("cancelled");
                child = None;
                let a = sent.pop_front().expect("front");
                give_back(&mut sent, &mut again);
                if !ctx.finish(&a, started_ms, Err(why)) {
                    return;
                }
            }
        }
    }
}

/// `retrieve → process → save` for one job, with every failure turned into a message.
pub(crate) fn run_job(
    store: &dyn Store,
    workers: &HashMap<String, Arc<dyn Worker>>,
    info: &JobInfo,
) -> Result<Data, String> {
    let worker = workers
        .get(&info.worker)
        .ok_or_else(|| format!("this broker has no worker {:?}", info.worker))?;
    let input = store
        .retrieve(info)
        .map_err(|e| format!("store could not retrieve the input: {e}"))?;
    let output = match catch_unwind(AssertUnwindSafe(|| worker.process(info, input))) {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(panic) => return Err(format!("worker panicked: {}", panic_message(&*panic))),
    };
    check_output_size(&output).map_err(|e| e.to_string())?;
    store
        .save(info, &output)
        .map_err(|e| format!("store could not save the output: {e}"))?;
    Ok(output)
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".into()
    }
}

/// Each slot's share of the host's memory, and at least 1 GiB of address space (which
/// counts reservations a process never touches).
fn default_slot_memory(slots: usize) -> u64 {
    let mut sys = sysinfo::System::new();
    sys.refresh_memory();
    (sys.total_memory() / slots.max(1) as u64).max(1 << 30)
}
