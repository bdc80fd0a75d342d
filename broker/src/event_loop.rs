//! The broker and its event loop.
//!
//! One thread runs the loop: it owns the router link's socket and the PULL socket the
//! slot and monitor threads push their messages to, and polls both, so no socket is
//! ever shared between threads and nothing waits on a timer to notice a result. The
//! loop feeds assignments to the slots, reports to the router, and keeps its
//! [`Ledger`] of what the router must hear about.
//!
//! Reliability: a finished job's report is kept until the router acknowledges it. If
//! the router falls silent, the broker reconnects on a fresh socket, says hello again
//! with the jobs it runs and the reports it still holds, and resends them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pypelinin_common::protocol::{
    BrokerHello, ClusterConfig, FromRouter, ProtocolError, Push, Reply, Request, LOG_BATCH_BYTES,
    LOG_BATCH_INTERVAL, LOG_BUFFER_BYTES,
};
use pypelinin_common::Shutdown;
use tracing::{debug, error, info, warn};

use crate::api::{BoxError, Store, StoreFactory, Worker};
use crate::config::{default_slot_memory, BrokerConfig, BrokerError, Isolation};
use crate::io::RouterLink;
use crate::joblog::LogSink;
use crate::ledger::{DrainEnd, Ledger};
use crate::slots::{Slots, SlotsSpec};
use crate::table::Internal;

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
        let mut id = uuid::Uuid::new_v4().simple().to_string();
        id.truncate(6);
        let name = format!("{host}-{}-{id}", std::process::id());
        let mut config = config;
        if config.isolation == Isolation::Process && config.slot_memory_bytes.is_none() {
            config.slot_memory_bytes = Some(default_slot_memory(config.slots));
        }
        let mut lp = EventLoop::new(self, config, name, host)?;
        let result = lp.serve(&shutdown);
        lp.slots.stop();
        result
    }
}

struct EventLoop {
    ctx: zmq::Context,
    config: BrokerConfig,
    name: String,
    host: String,
    workers: Arc<HashMap<String, Arc<dyn Worker>>>,
    store_factory: Box<StoreFactory>,
    /// Built from the welcome; the slots start with it.
    store: Option<Arc<dyn Store>>,
    link: RouterLink,
    results: zmq::Socket,
    results_endpoint: String,
    ledger: Ledger,
    slots: Slots,
    /// Lines the slots' jobs printed, waiting to go to the router.
    logs: Arc<LogSink>,
    /// When lines last went.
    logs_sent: Instant,
}

impl EventLoop {
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
        let link = RouterLink::connect(&ctx, &config.api, &config.security)?;
        Ok(EventLoop {
            ctx,
            name,
            host,
            workers: Arc::new(b.workers),
            store_factory: b.store_factory,
            store: None,
            link,
            results,
            results_endpoint,
            ledger: Ledger::default(),
            slots: Slots::new(config.slots),
            logs: Arc::new(LogSink::default()),
            logs_sent: Instant::now(),
            config,
        })
    }

    fn serve(&mut self, shutdown: &Shutdown) -> Result<(), BrokerError> {
        info!(broker = %self.name, api = %self.config.api, slots = self.config.slots, workers = ?self.worker_names(), "broker started");
        self.hello()?;
        loop {
            if !self.ledger.draining() && shutdown.is_triggered() {
                info!(
                    running = self.ledger.running(),
                    "stopping: no new jobs, finishing running ones"
                );
                self.link.send(&Request::Drain)?;
                self.ledger
                    .start_drain(Instant::now(), self.config.drain_timeout);
            }
            if let Some(end) = self.ledger.drain_over(Instant::now()) {
                if end == DrainEnd::TimedOut {
                    warn!(
                        running = self.ledger.running(),
                        unacked = self.ledger.unacked(),
                        "drain timeout: giving jobs back"
                    );
                }
                self.link.send(&Request::Bye)?;
                std::thread::sleep(Duration::from_millis(50));
                return Ok(());
            }
            if self.link.silent() {
                warn!("router silent; reconnecting");
                self.link.reconnect()?;
                self.hello()?;
            }
            let mut items = [
                self.link.socket().as_poll_item(zmq::POLLIN),
                self.results.as_poll_item(zmq::POLLIN),
            ];
            let mut wait = self.link.poll_wait();
            if self.link.welcomed() {
                // Lines are looked for every interval, and sent once their batch is due.
                let left = if self.logs.waiting() > 0 {
                    LOG_BATCH_INTERVAL.saturating_sub(self.logs_sent.elapsed())
                } else {
                    LOG_BATCH_INTERVAL
                };
                wait = wait.min(left);
            }
            if let Some(due) =
                self.ledger
                    .linger(self.config.slots, self.config.report_linger, Instant::now())
            {
                wait = wait.min(due.saturating_duration_since(Instant::now()));
            }
            // Rounded up: a linger of less than a millisecond must not spin.
            let ms = wait.as_micros().div_ceil(1000) as i64;
            pypelinin_common::transport::poll(&mut items, ms)?;
            while let Some(bytes) = self.link.recv() {
                self.on_router(&bytes)?;
            }
            let mut ended = Vec::new();
            while let Ok(bytes) = self.results.recv_bytes(zmq::DONTWAIT) {
                match rmp_serde::from_slice::<Internal>(&bytes) {
                    Ok(Internal::Done(report)) => {
                        ended.push(report.job);
                        self.ledger.finished(report, Instant::now());
                    }
                    Ok(Internal::Monitor(m)) => {
                        if self.link.welcomed() {
                            self.link.send(&Request::Monitor(m))?;
                        }
                    }
                    Err(e) => error!(error = %e, "bad internal message"),
                }
            }
            if !self.link.welcomed() && !self.link.hello_pending() {
                self.hello()?;
            }
            self.send_logs(false)?;
            // Lazy Pirate for reports: one not acknowledged in time is sent again (a
            // duplicate is recognised by the router and changes nothing).
            self.ledger.resend_overdue(Instant::now());
            let lingering = self
                .ledger
                .linger(self.config.slots, self.config.report_linger, Instant::now())
                .is_some();
            if self.link.welcomed() && !lingering {
                if let Some(reports) = self.ledger.take_unsent() {
                    // Attempts' last lines leave before their reports, on the same
                    // socket: the router has a job's whole log when it hears it ended.
                    self.send_logs(true)?;
                    let req = Request::JobDone(reports);
                    let sent = self.link.send(&req)?;
                    if let Request::JobDone(reports) = req {
                        match sent {
                            Some(id) => self.ledger.sent(id, reports, Instant::now()),
                            None => self.ledger.not_sent(reports),
                        }
                    }
                }
            }
            for job in ended {
                self.logs.ended(job);
            }
            self.link.heartbeat()?;
        }
    }

    /// Sends the waiting log lines, in batches, if it is time (`now`: at once). Lines
    /// are not resent: one lost with a connection is lost (the router numbers them and
    /// keeps what arrives), and while the router is away they wait, within the sink's
    /// bound.
    fn send_logs(&mut self, now: bool) -> Result<(), BrokerError> {
        let waiting = self.logs.waiting();
        let due =
            now || waiting >= LOG_BATCH_BYTES || self.logs_sent.elapsed() >= LOG_BATCH_INTERVAL;
        if waiting == 0 || !due || !self.link.welcomed() {
            return Ok(());
        }
        self.logs_sent = Instant::now();
        // At most the sink's bound per call: a job printing faster than this sends must
        // not keep the loop from the router's messages and its heartbeats.
        for _ in 0..LOG_BUFFER_BYTES.div_ceil(LOG_BATCH_BYTES) {
            let batch = self.logs.take(LOG_BATCH_BYTES);
            if batch.is_empty() {
                break;
            }
            self.link.send(&Request::Logs(batch))?;
        }
        Ok(())
    }

    fn worker_names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.workers.keys().map(|s| s.as_str()).collect();
        v.sort();
        v
    }

    fn on_router(&mut self, bytes: &[u8]) -> Result<(), BrokerError> {
        let Some((id, msg)) = RouterLink::decode(bytes) else {
            return Ok(());
        };
        match msg {
            FromRouter::Push(Push::Assign(list)) => {
                for a in list {
                    self.ledger.assigned(a.job);
                    if !self.slots.assign(a) {
                        warn!("job assigned before the welcome; dropped, the lease will return it");
                    }
                }
            }
            FromRouter::Push(Push::Revoke(list)) => {
                for job in list {
                    info!(pipeline = %job.pipeline, job = job.job, attempt = job.attempt, "attempt revoked");
                    self.slots.revoke(job);
                }
            }
            FromRouter::Push(other) => debug!(?other, "push meant for a pipeliner; ignored"),
            FromRouter::Reply(reply) => {
                let acked = self.ledger.answered(id);
                match reply {
                    Reply::Welcome(config) if self.link.welcome(id) => {
                        self.start_slots(&config)?;
                        info!(store = %config.store, "welcomed by the router");
                    }
                    Reply::Error(ProtocolError::UnknownPeer) => {
                        if let Some(reports) = acked {
                            self.ledger.refused(reports);
                        }
                        self.link.forgotten();
                        if !self.link.hello_pending() {
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

    fn hello(&mut self) -> Result<(), BrokerError> {
        // Reports not acknowledged yet are announced in the hello and sent after it.
        let (running, unreported) = self.ledger.for_hello();
        let hello = BrokerHello {
            name: self.name.clone(),
            host: self.host.clone(),
            workers: self.worker_names().iter().map(|s| s.to_string()).collect(),
            slots: self.config.slots as u32,
            running,
            unreported,
            prefetch: self.config.prefetch() as u32,
        };
        self.link.hello(hello)
    }

    /// On the first welcome: builds the store and starts the slots.
    fn start_slots(&mut self, cluster: &ClusterConfig) -> Result<(), BrokerError> {
        if self.store.is_some() {
            return Ok(());
        }
        let store = (self.store_factory)(cluster).map_err(|e| BrokerError::Store(e.to_string()))?;
        self.store = Some(store.clone());
        self.slots.start(SlotsSpec {
            ctx: &self.ctx,
            results: &self.results_endpoint,
            cluster,
            store,
            workers: self.workers.clone(),
            isolation: self.config.isolation,
            slot_memory_bytes: self.config.slot_memory_bytes,
            prefetch: self.config.prefetch(),
            name: &self.name,
            host: &self.host,
            logs: self.logs.clone(),
        })
    }
}
