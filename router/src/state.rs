//! The router's state machine: every pipeline, job, broker and pipeliner.
//!
//! It has no sockets. The event loop ([`crate::server`]) feeds it requests and timer
//! ticks; it answers by filling an outbox, which the loop sends only after
//! [`RouterState::commit`] made every change durable (all but the hints of
//! [`RouterState::drain_hints`], which acknowledge nothing).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use pypelinin_common::now_ms;
use pypelinin_common::protocol::{
    check_output_size, Advance, Assignment, BrokerHello, BrokerStatus, ClusterConfig,
    ClusterMetrics, Event, FromRouter, Histogram, JobChange, JobInfo, JobRef, JobReport,
    MonitoringReport, PipelineId, PipelineResult, PipelineSnapshot, PipelineSummary, ProtocolError,
    Push, Reply, Request, HEARTBEAT_INTERVAL, MAX_WAIT_MS, PEER_LIVENESS,
};
use pypelinin_common::status::{Attempt, JobState, JobStatus, PipelineState, PipelineStatus};
use pypelinin_common::Pipeline;
use tracing::{debug, info, info_span, warn};
use uuid::Uuid;

use crate::store::{JobRecord, PipelineRecord, StateStore, StoreError};

/// A peer's ZeroMQ routing identity.
pub type PeerId = Vec<u8>;

/// Where a reply goes: the peer and whether it is a REQ socket (which needs the empty
/// delimiter frame back).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyTo {
    /// Routing identity.
    pub peer: PeerId,
    /// REQ peers need an empty delimiter frame.
    pub req: bool,
    /// The request's id.
    pub id: u64,
}

/// A frame ready to send: identity, optional delimiter, payload.
pub struct Outgoing {
    /// Routing identity.
    pub peer: PeerId,
    /// Whether to add the empty delimiter frame.
    pub req: bool,
    /// Encoded frame.
    pub payload: Vec<u8>,
}

/// How long a peer may stay silent before it is declared dead.
pub fn peer_timeout() -> Duration {
    HEARTBEAT_INTERVAL * PEER_LIVENESS
}

struct PipelineEntry {
    rec: PipelineRecord,
    dag: Pipeline,
    jobs: Vec<JobRecord>,
    owner: Option<PeerId>,
    done: u32,
    /// Jobs a pipeliner asked to start once their parents have succeeded (`after`).
    /// Not stored: after a restart, the pipeliner that takes the pipeline asks again.
    armed: Vec<bool>,
    /// Close as succeeded once every job succeeded, without a `finish` (not stored
    /// either).
    close_on_success: bool,
}

impl PipelineEntry {
    fn status(&self) -> PipelineStatus {
        let jobs = self
            .dag
            .names()
            .iter()
            .zip(&self.jobs)
            .enumerate()
            .map(|(i, (name, j))| {
                let last = j.history.last();
                let status = JobStatus {
                    worker: self.dag.job(i as u32).worker.clone(),
                    state: j.state,
                    attempts: j.attempt(),
                    error: j.error.clone(),
                    started_ms: last.map(|a| a.started_ms),
                    finished_ms: last.and_then(|a| a.finished_ms),
                    duration_ms: last
                        .and_then(|a| a.finished_ms.map(|f| f.saturating_sub(a.started_ms))),
                    history: j.history.clone(),
                };
                (name.clone(), status)
            })
            .collect();
        PipelineStatus {
            id: self.rec.id,
            state: self.rec.state,
            submitted_ms: self.rec.submitted_ms,
            finished_ms: self.rec.finished_ms,
            jobs,
        }
    }
}

struct BrokerPeer {
    name: String,
    host: String,
    slots: u32,
    workers: Vec<String>,
    /// Most jobs it accepts queued beyond its slots.
    prefetch: u32,
    /// How long its jobs take, in ms (a moving average of what it reports).
    job_ms: Option<f64>,
    draining: bool,
    /// Attempts assigned and not yet reported: running, or queued at the broker.
    running: HashSet<JobRef>,
    rotate: usize,
    monitor: Option<MonitoringReport>,
}

/// A broker is sent jobs to queue beyond its slots only as far as their work lasts
/// this long: many for jobs of microseconds, where a round trip per job would be most
/// of the cost, none for jobs of this length or more, which must not wait behind one
/// another at one broker while a slot elsewhere is free.
pub const PREFETCH_HORIZON_MS: f64 = 20.0;
/// Weight of the latest job in a broker's moving average of job durations.
const JOB_MS_WEIGHT: f64 = 0.1;

impl BrokerPeer {
    /// Jobs beyond its slots it may hold now.
    fn extra(&self) -> u32 {
        match self.job_ms {
            // Until it has reported a job, nothing is known of their length.
            None => 0,
            Some(ms) => {
                let per_slot = (PREFETCH_HORIZON_MS / ms.max(1e-3)).floor();
                (per_slot * self.slots as f64).min(self.prefetch as f64) as u32
            }
        }
    }

    /// Jobs it may be sent now.
    fn credit(&self) -> u32 {
        if self.draining {
            return 0;
        }
        (self.slots + self.extra()).saturating_sub(self.running.len() as u32)
    }

    fn observe(&mut self, r: &JobReport) {
        let ms = r.finished_ms.saturating_sub(r.started_ms) as f64;
        self.job_ms = Some(match self.job_ms {
            None => ms,
            Some(avg) => avg + JOB_MS_WEIGHT * (ms - avg),
        });
    }
}

struct PipelinerPeer {
    id: Uuid,
    capacity: u32,
    owned: HashSet<PipelineId>,
}

enum Role {
    Broker(Box<BrokerPeer>),
    Pipeliner(PipelinerPeer),
}

struct Peer {
    role: Role,
    last_seen: Instant,
}

struct Waiter {
    to: ReplyTo,
    ids: Vec<PipelineId>,
    pending: usize,
    deadline: Instant,
    outputs: bool,
}

/// Counters for logs and tests.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    /// Reports refused because their attempt was no longer current.
    pub stale_reports: u64,
    /// Attempts given back to the queue because their broker died or left.
    pub requeued: u64,
}

/// All of the router's state.
pub struct RouterState {
    store: Box<dyn StateStore>,
    config: ClusterConfig,
    pipelines: HashMap<PipelineId, PipelineEntry>,
    order: BTreeMap<u64, PipelineId>,
    next_seq: u64,
    peers: HashMap<PeerId, Peer>,
    queues: HashMap<String, VecDeque<(PipelineId, u32)>>,
    delayed: BinaryHeap<Reverse<(u64, PipelineId, u32)>>,
    unowned: VecDeque<PipelineId>,
    orphans: HashMap<(PipelineId, u32), Instant>,
    waiters: HashMap<u64, Waiter>,
    waiting_on: HashMap<PipelineId, Vec<u64>>,
    next_waiter: u64,
    outbox: Vec<Outgoing>,
    assigns: HashMap<PeerId, Vec<Assignment>>,
    takes: HashMap<PeerId, Vec<PipelineSnapshot>>,
    changes: HashMap<PeerId, Vec<JobChange>>,
    revokes: HashMap<PeerId, Vec<JobRef>>,
    /// Records changed this turn, written once each at commit.
    dirty_jobs: HashSet<(PipelineId, u32)>,
    dirty_pipelines: HashSet<PipelineId>,
    deadlines: BinaryHeap<Reverse<(Instant, PipelineId, u32, u32)>>,
    events: Vec<Event>,
    /// Counters for operators and tests.
    pub counters: Counters,
    job_durations: HashMap<String, Histogram>,
    latency: Histogram,
    attempts_finished: u64,
    throughput: VecDeque<(u64, u32)>,
}

/// Bounds of the job-duration histograms, in seconds.
const DURATION_BOUNDS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0,
];
/// Bounds of the request-latency histogram, in seconds.
const LATENCY_BOUNDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1, 1.0,
];
/// Seconds of throughput history kept for the dashboard's chart.
const THROUGHPUT_SECONDS: u64 = 300;

type Result<T> = std::result::Result<T, StoreError>;

impl RouterState {
    /// Loads the state kept in `store`.
    pub fn load(store: Box<dyn StateStore>, config: ClusterConfig) -> Result<Self> {
        let mut s = RouterState {
            store,
            config,
            pipelines: HashMap::new(),
            order: BTreeMap::new(),
            next_seq: 1,
            peers: HashMap::new(),
            queues: HashMap::new(),
            delayed: BinaryHeap::new(),
            unowned: VecDeque::new(),
            orphans: HashMap::new(),
            waiters: HashMap::new(),
            waiting_on: HashMap::new(),
            next_waiter: 1,
            outbox: Vec::new(),
            assigns: HashMap::new(),
            takes: HashMap::new(),
            changes: HashMap::new(),
            revokes: HashMap::new(),
            dirty_jobs: HashSet::new(),
            dirty_pipelines: HashSet::new(),
            deadlines: BinaryHeap::new(),
            events: Vec::new(),
            counters: Counters::default(),
            job_durations: HashMap::new(),
            latency: Histogram::new(LATENCY_BOUNDS),
            attempts_finished: 0,
            throughput: VecDeque::new(),
        };
        let grace = Instant::now() + peer_timeout() * 2;
        let (mut open, mut running) = (0, 0);
        for (rec, jobs) in s.store.load()? {
            let dag = Pipeline::new(rec.spec.clone()).map_err(|e| StoreError::Corrupt {
                key: rec.id.to_string(),
                message: e.to_string(),
            })?;
            let id = rec.id;
            s.next_seq = s.next_seq.max(rec.seq + 1);
            s.order.insert(rec.seq, id);
            let done = jobs.iter().filter(|j| j.state.is_final()).count() as u32;
            let is_open = !rec.state.is_final();
            let todo: Vec<(u32, JobState, bool, u64)> = jobs
                .iter()
                .enumerate()
                .map(|(i, j)| (i as u32, j.state, j.enqueued, j.not_before_ms))
                .collect();
            let armed = vec![false; jobs.len()];
            let entry = PipelineEntry {
                rec,
                dag,
                jobs,
                owner: None,
                done,
                armed,
                close_on_success: false,
            };
            s.pipelines.insert(id, entry);
            if is_open {
                open += 1;
                s.unowned.push_back(id);
                for (i, state, enqueued, not_before_ms) in todo {
                    match state {
                        JobState::Queued if enqueued => s.schedule(id, i, not_before_ms),
                        JobState::Running => {
                            // Its broker may still be running it: wait for it to say hello.
                            running += 1;
                            s.orphans.insert((id, i), grace);
                        }
                        _ => {}
                    }
                }
            }
        }
        info!(
            pipelines = s.pipelines.len(),
            open, running, "router state loaded"
        );
        Ok(s)
    }

    /// Handles one request from `to.peer`.
    pub fn handle(&mut self, to: ReplyTo, req: Request) -> Result<()> {
        let now = Instant::now();
        if let Some(p) = self.peers.get_mut(&to.peer) {
            p.last_seen = now;
        }
        let reply = match req {
            Request::Submit { id, pipeline } => self.submit(id, pipeline)?,
            Request::Status { id } => match self.pipelines.get(&id) {
                Some(p) => Reply::Status(p.status()),
                None => Reply::Error(ProtocolError::UnknownPipeline(id)),
            },
            Request::Wait { ids, timeout_ms } => {
                match self.wait(&to, ids, timeout_ms, now, false)? {
                    Some(r) => r,
                    None => return Ok(()),
                }
            }
            Request::Results { ids, timeout_ms } => {
                match self.wait(&to, ids, timeout_ms, now, true)? {
                    Some(r) => r,
                    None => return Ok(()),
                }
            }
            Request::Outputs { id } => self.outputs(id)?,
            Request::List { limit, state } => Reply::List(self.list(limit as usize, state)),
            Request::Retry { id, jobs } => self.retry(id, jobs)?,
            Request::Brokers => Reply::Brokers(self.brokers(now)),
            Request::Spec { id } => match self.pipelines.get(&id) {
                Some(p) => Reply::Spec(p.rec.spec.clone()),
                None => Reply::Error(ProtocolError::UnknownPipeline(id)),
            },
            Request::Metrics => Reply::Metrics(self.metrics()),
            Request::Cancel { id } => self.cancel(id)?,
            Request::BrokerHello(h) => self.broker_hello(&to.peer, h, now)?,
            Request::JobDone(reports) => self.job_done(&to.peer, reports)?,
            Request::Monitor(m) => match self.broker_mut(&to.peer) {
                Some(b) => {
                    b.monitor = Some(m);
                    Reply::Ok
                }
                None => Reply::Error(ProtocolError::UnknownPeer),
            },
            Request::Drain => match self.broker_mut(&to.peer) {
                Some(b) => {
                    b.draining = true;
                    Reply::Ok
                }
                None => Reply::Error(ProtocolError::UnknownPeer),
            },
            Request::PipelinerHello {
                pipeliner,
                capacity,
            } => self.pipeliner_hello(&to.peer, pipeliner, capacity, now),
            Request::Advance(list) => self.advance(&to.peer, list)?,
            Request::Heartbeat => {
                if self.peers.contains_key(&to.peer) {
                    Reply::Ok
                } else {
                    Reply::Error(ProtocolError::UnknownPeer)
                }
            }
            Request::Bye => {
                self.drop_peer(&to.peer, "said bye")?;
                Reply::Ok
            }
        };
        self.reply(&to, reply);
        Ok(())
    }

    /// Answers a frame that could not be decoded.
    pub fn reply_error(&mut self, to: &ReplyTo, error: ProtocolError) {
        self.reply(to, Reply::Error(error));
    }

    fn reply(&mut self, to: &ReplyTo, reply: Reply) {
        self.outbox.push(Outgoing {
            peer: to.peer.clone(),
            req: to.req,
            payload: pypelinin_common::protocol::encode(to.id, &FromRouter::Reply(reply)),
        });
    }

    fn broker_mut(&mut self, peer: &PeerId) -> Option<&mut BrokerPeer> {
        match self.peers.get_mut(peer) {
            Some(Peer {
                role: Role::Broker(b),
                ..
            }) => Some(b),
            _ => None,
        }
    }

    fn submit(&mut self, id: PipelineId, spec: pypelinin_common::PipelineSpec) -> Result<Reply> {
        if let Some(p) = self.pipelines.get(&id) {
            return Ok(if p.rec.spec == spec {
                Reply::Submitted { id }
            } else {
                Reply::Error(ProtocolError::Conflict(format!(
                    "pipeline {id} exists with another spec"
                )))
            });
        }
        let dag = match Pipeline::new(spec) {
            Ok(d) => d,
            Err(e) => {
                info!(pipeline = %id, error = %e, "pipeline refused");
                return Ok(Reply::Error(ProtocolError::InvalidPipeline(e.to_string())));
            }
        };
        let rec = PipelineRecord {
            id,
            spec: dag.spec().clone(),
            state: PipelineState::Queued,
            seq: self.next_seq,
            submitted_ms: now_ms(),
            finished_ms: None,
        };
        self.next_seq += 1;
        let jobs = vec![JobRecord::new(); dag.len()];
        for i in 0..jobs.len() {
            self.dirty_jobs.insert((id, i as u32));
        }
        self.dirty_pipelines.insert(id);
        self.order.insert(rec.seq, id);
        debug!(pipeline = %id, jobs = dag.len(), "pipeline accepted");
        self.pipelines.insert(
            id,
            PipelineEntry {
                armed: vec![false; jobs.len()],
                close_on_success: false,
                rec,
                dag,
                jobs,
                owner: None,
                done: 0,
            },
        );
        self.unowned.push_back(id);
        self.events.push(Event::PipelineSubmitted { id });
        Ok(Reply::Submitted { id })
    }

    fn wait(
        &mut self,
        to: &ReplyTo,
        ids: Vec<PipelineId>,
        timeout_ms: u64,
        now: Instant,
        outputs: bool,
    ) -> Result<Option<Reply>> {
        let mut pending = 0;
        for id in &ids {
            match self.pipelines.get(id) {
                None => return Ok(Some(Reply::Error(ProtocolError::UnknownPipeline(*id)))),
                Some(p) if !p.rec.state.is_final() => pending += 1,
                Some(_) => {}
            }
        }
        if pending == 0 || timeout_ms == 0 {
            return self.answer(&ids, outputs).map(Some);
        }
        let key = self.next_waiter;
        self.next_waiter += 1;
        for id in &ids {
            if !self.pipelines[id].rec.state.is_final() {
                self.waiting_on.entry(*id).or_default().push(key);
            }
        }
        let deadline = now + Duration::from_millis(timeout_ms.min(MAX_WAIT_MS));
        self.waiters.insert(
            key,
            Waiter {
                to: to.clone(),
                ids,
                pending,
                deadline,
                outputs,
            },
        );
        Ok(None)
    }

    /// The reply to a wait: statuses, or states with outputs.
    fn answer(&self, ids: &[PipelineId], outputs: bool) -> Result<Reply> {
        if !outputs {
            return Ok(Reply::Statuses(
                ids.iter().map(|id| self.pipelines[id].status()).collect(),
            ));
        }
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let p = &self.pipelines[id];
            let mut result = PipelineResult {
                id: *id,
                state: p.rec.state,
                outputs: BTreeMap::new(),
                failed: Vec::new(),
            };
            for (i, j) in p.jobs.iter().enumerate() {
                let name = p.dag.name(i as u32);
                match j.state {
                    JobState::Succeeded => {
                        if let Some(o) = self.store.get_output(*id, i as u32)? {
                            result.outputs.insert(name.to_string(), o);
                        }
                    }
                    JobState::Failed => result
                        .failed
                        .push((name.to_string(), j.error.clone().unwrap_or_default())),
                    _ => {}
                }
            }
            out.push(result);
        }
        Ok(Reply::Results(out))
    }

    fn outputs(&self, id: PipelineId) -> Result<Reply> {
        let Some(p) = self.pipelines.get(&id) else {
            return Ok(Reply::Error(ProtocolError::UnknownPipeline(id)));
        };
        let mut out = BTreeMap::new();
        for (i, j) in p.jobs.iter().enumerate() {
            if j.state == JobState::Succeeded {
                if let Some(o) = self.store.get_output(id, i as u32)? {
                    out.insert(p.dag.name(i as u32).to_string(), o);
                }
            }
        }
        Ok(Reply::Outputs(out))
    }

    fn list(&self, limit: usize, state: Option<PipelineState>) -> Vec<PipelineSummary> {
        self.order
            .values()
            .rev()
            .filter(|id| state.is_none_or(|s| self.pipelines[*id].rec.state == s))
            .take(limit)
            .map(|id| {
                let p = &self.pipelines[id];
                PipelineSummary {
                    id: *id,
                    state: p.rec.state,
                    submitted_ms: p.rec.submitted_ms,
                    finished_ms: p.rec.finished_ms,
                    jobs: p.jobs.len() as u32,
                    done: p.done,
                }
            })
            .collect()
    }

    fn broker_hello(&mut self, peer: &PeerId, h: BrokerHello, now: Instant) -> Result<Reply> {
        // The same broker again (a new socket, or a hello after a lost one): forget its
        // old registration, but not the attempts it says it still holds.
        let keep: HashSet<JobRef> = h.running.iter().chain(&h.unreported).copied().collect();
        let old: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(k, p)| *k == peer || matches!(&p.role, Role::Broker(b) if b.name == h.name))
            .map(|(k, _)| k.clone())
            .collect();
        for k in old {
            self.forget_peer(&k, "said hello again", &keep)?;
        }
        let mut running = HashSet::new();
        for r in h.running.iter().chain(&h.unreported) {
            if self.is_current(r, &h.name) {
                self.orphans.remove(&(r.pipeline, r.job));
                if h.running.contains(r) {
                    running.insert(*r);
                }
            }
        }
        info!(broker = %h.name, host = %h.host, slots = h.slots, workers = ?h.workers, adopted = running.len(), "broker joined");
        self.peers.insert(
            peer.clone(),
            Peer {
                role: Role::Broker(Box::new(BrokerPeer {
                    name: h.name,
                    host: h.host,
                    slots: h.slots,
                    workers: h.workers,
                    prefetch: h.prefetch,
                    job_ms: None,
                    draining: false,
                    running,
                    rotate: 0,
                    monitor: None,
                })),
                last_seen: now,
            },
        );
        Ok(Reply::Welcome(self.config.clone()))
    }

    fn pipeliner_hello(&mut self, peer: &PeerId, id: Uuid, capacity: u32, now: Instant) -> Reply {
        // A pipeliner that says hello again lost its state: give its pipelines back whole.
        let owned = match self.peers.remove(peer) {
            Some(Peer {
                role: Role::Pipeliner(p),
                ..
            }) => p.owned,
            Some(Peer {
                role: Role::Broker(_),
                ..
            }) => {
                return Reply::Error(ProtocolError::Refused("this connection is a broker".into()))
            }
            None => HashSet::new(),
        };
        for pid in &owned {
            if let Some(snap) = self.snapshot(*pid) {
                self.takes.entry(peer.clone()).or_default().push(snap);
            }
        }
        info!(pipeliner = %id, capacity, "pipeliner joined");
        self.peers.insert(
            peer.clone(),
            Peer {
                role: Role::Pipeliner(PipelinerPeer {
                    id,
                    capacity: capacity.max(1),
                    owned,
                }),
                last_seen: now,
            },
        );
        Reply::Ok
    }

    fn snapshot(&self, id: PipelineId) -> Option<PipelineSnapshot> {
        let p = self.pipelines.get(&id)?;
        Some(PipelineSnapshot {
            id,
            spec: p.rec.spec.clone(),
            states: p.jobs.iter().map(|j| j.state).collect(),
        })
    }

    fn job_done(&mut self, peer: &PeerId, reports: Vec<JobReport>) -> Result<Reply> {
        if self.broker_mut(peer).is_none() {
            return Ok(Reply::Error(ProtocolError::UnknownPeer));
        }
        let mut stale = Vec::new();
        for r in reports {
            let b = self.broker_mut(peer).expect("checked above");
            if b.running.remove(&r.job) {
                b.observe(&r);
            }
            let broker = b.name.clone();
            // The attempt number and the broker's name fence the report: a broker whose
            // lease expired, or a report resent after a reconnect, changes nothing.
            if !self.is_current(&r.job, &broker) {
                self.counters.stale_reports += 1;
                warn!(pipeline = %r.job.pipeline, job = r.job.job, attempt = r.job.attempt, %broker, "stale report ignored");
                stale.push(r.job);
                continue;
            }
            self.finish_attempt(r)?;
        }
        Ok(if stale.is_empty() {
            Reply::Ok
        } else {
            Reply::Error(ProtocolError::Stale(format!(
                "{} report(s) for attempts that are no longer current",
                stale.len()
            )))
        })
    }

    fn is_current(&self, r: &JobRef, broker: &str) -> bool {
        self.pipelines.get(&r.pipeline).is_some_and(|p| {
            p.jobs.get(r.job as usize).is_some_and(|j| {
                j.state == JobState::Running
                    && j.attempt() == r.attempt
                    && j.history.last().is_some_and(|a| a.broker == broker)
            })
        })
    }

    fn finish_attempt(&mut self, r: JobReport) -> Result<()> {
        let (id, i) = (r.job.pipeline, r.job.job);
        let p = self.pipelines.get_mut(&id).expect("current attempt");
        let name = p.dag.name(i).to_string();
        let _span =
            info_span!("job", pipeline = %id, job = %name, attempt = r.job.attempt).entered();
        let retries = p.dag.retries(i);
        let delay = p.dag.retry_delay_ms(i);
        let j = &mut p.jobs[i as usize];
        let last = j.history.last_mut().expect("running job has an attempt");
        last.finished_ms = Some(r.finished_ms.max(last.started_ms));
        let seconds = (last.finished_ms.unwrap() - last.started_ms) as f64 / 1000.0;
        let worker = p.dag.job(i).worker.clone();
        self.job_durations
            .entry(worker)
            .or_insert_with(|| Histogram::new(DURATION_BOUNDS))
            .observe(seconds);
        self.attempts_finished += 1;
        let sec = now_ms() / 1000;
        match self.throughput.back_mut() {
            Some((s, n)) if *s == sec => *n += 1,
            _ => self.throughput.push_back((sec, 1)),
        }
        while self
            .throughput
            .front()
            .is_some_and(|(s, _)| *s + THROUGHPUT_SECONDS < sec)
        {
            self.throughput.pop_front();
        }
        let j = &mut self.pipelines.get_mut(&id).unwrap().jobs[i as usize];
        let last = j.history.last_mut().unwrap();
        let result = r.result.and_then(|out| {
            check_output_size(&out)
                .map(|()| out)
                .map_err(|e| e.to_string())
        });
        match result {
            Ok(output) => {
                j.state = JobState::Succeeded;
                j.error = None;
                self.store.put_output(id, i, &output)?;
            }
            Err(error) => {
                last.error = Some(error.clone());
                j.error = Some(error.clone());
                j.failures += 1;
                if j.failures <= retries {
                    let backoff = delay.saturating_mul(1u64 << (j.failures - 1).min(20));
                    j.state = JobState::Queued;
                    j.not_before_ms = now_ms() + backoff;
                    info!(%error, retry_in_ms = backoff, "attempt failed, will retry");
                    let nb = j.not_before_ms;
                    self.store
                        .put_job(id, i, &self.pipelines[&id].jobs[i as usize])?;
                    self.schedule(id, i, nb);
                    return Ok(());
                }
                warn!(%error, "job failed");
                j.state = JobState::Failed;
            }
        }
        let state = j.state;
        self.job_final(id, i, state)
    }

    /// Records that job `i` reached a final state and tells its pipeliner.
    fn job_final(&mut self, id: PipelineId, i: u32, state: JobState) -> Result<()> {
        let p = self.pipelines.get_mut(&id).expect("known pipeline");
        p.done += 1;
        self.dirty_jobs.insert((id, i));
        if let Some(owner) = p.owner.clone() {
            self.changes.entry(owner).or_default().push(JobChange {
                pipeline: id,
                job: i,
                state,
            });
        }
        if state == JobState::Succeeded {
            // What the pipeliner asked ahead happens in this very turn: armed children
            // start, and the pipeline closes if every job has succeeded.
            let p = &self.pipelines[&id];
            let armed: Vec<u32> = p
                .dag
                .children(i)
                .iter()
                .copied()
                .filter(|&c| p.armed[c as usize])
                .collect();
            for c in armed {
                self.enqueue_if_ready(id, c);
            }
            self.close_if_all_succeeded(id)?;
        }
        Ok(())
    }

    /// Closes the pipeline if its pipeliner asked for that and every job succeeded.
    fn close_if_all_succeeded(&mut self, id: PipelineId) -> Result<()> {
        let p = &self.pipelines[&id];
        let close = p.close_on_success
            && !p.rec.state.is_final()
            && p.done as usize == p.jobs.len()
            && p.jobs.iter().all(|j| j.state == JobState::Succeeded);
        if close {
            self.close_pipeline(id, PipelineState::Succeeded)?;
        }
        Ok(())
    }

    fn schedule(&mut self, id: PipelineId, i: u32, not_before_ms: u64) {
        if not_before_ms > now_ms() {
            self.delayed.push(Reverse((not_before_ms, id, i)));
        } else {
            let worker = self.pipelines[&id].dag.job(i).worker.clone();
            self.queues.entry(worker).or_default().push_back((id, i));
        }
    }

    fn advance(&mut self, peer: &PeerId, list: Vec<Advance>) -> Result<Reply> {
        match self.peers.get(peer) {
            Some(Peer {
                role: Role::Pipeliner(_),
                ..
            }) => {}
            _ => return Ok(Reply::Error(ProtocolError::UnknownPeer)),
        }
        let mut stale = Vec::new();
        for a in list {
            let owned = self
                .pipelines
                .get(&a.pipeline)
                .is_some_and(|p| p.owner.as_ref() == Some(peer));
            if !owned {
                stale.push(a.pipeline);
                continue;
            }
            self.apply_advance(a)?;
        }
        Ok(if stale.is_empty() {
            Reply::Ok
        } else {
            Reply::Error(ProtocolError::Stale(format!(
                "not the owner of pipeline(s) {stale:?}"
            )))
        })
    }

    fn apply_advance(&mut self, a: Advance) -> Result<()> {
        let id = a.pipeline;
        let _span = info_span!("pipeline", pipeline = %id).entered();
        for i in a.enqueue {
            if !self.enqueue_if_ready(id, i) {
                debug!(job = i, "enqueue ignored: not ready or already queued");
            }
        }
        for i in a.after {
            let p = self.pipelines.get_mut(&id).unwrap();
            if let Some(armed) = p.armed.get_mut(i as usize) {
                *armed = true;
                self.enqueue_if_ready(id, i);
            }
        }
        if a.close_on_success {
            self.pipelines.get_mut(&id).unwrap().close_on_success = true;
            self.close_if_all_succeeded(id)?;
        }
        for i in a.skip {
            let p = &self.pipelines[&id];
            let Some(j) = p.jobs.get(i as usize) else {
                continue;
            };
            let blocked_by = p.dag.parents(i).iter().copied().find(|&q| {
                matches!(
                    p.jobs[q as usize].state,
                    JobState::Failed | JobState::Skipped
                )
            });
            let (Some(q), false) = (blocked_by, j.enqueued || j.state != JobState::Queued) else {
                debug!(job = i, "skip ignored: job can still run");
                continue;
            };
            let reason = format!(
                "not run: {} {}",
                p.dag.name(q),
                p.jobs[q as usize].state.as_str()
            );
            let p = self.pipelines.get_mut(&id).unwrap();
            let j = &mut p.jobs[i as usize];
            j.state = JobState::Skipped;
            j.error = Some(reason);
            self.job_final(id, i, JobState::Skipped)?;
        }
        if a.finish {
            let p = self.pipelines.get_mut(&id).unwrap();
            if p.done as usize != p.jobs.len() || p.rec.state.is_final() {
                debug!("finish ignored: jobs still open");
                return Ok(());
            }
            let failed = p.jobs.iter().any(|j| j.state != JobState::Succeeded);
            let state = if failed {
                PipelineState::Failed
            } else {
                PipelineState::Succeeded
            };
            self.close_pipeline(id, state)?;
        }
        Ok(())
    }

    /// Puts job `i` in the run queue if it waits and its parents have all succeeded.
    fn enqueue_if_ready(&mut self, id: PipelineId, i: u32) -> bool {
        let p = &self.pipelines[&id];
        let ready = p.jobs.get(i as usize).is_some_and(|j| {
            j.state == JobState::Queued
                && !j.enqueued
                && p.dag
                    .parents(i)
                    .iter()
                    .all(|&q| p.jobs[q as usize].state == JobState::Succeeded)
        });
        if ready {
            let p = self.pipelines.get_mut(&id).unwrap();
            p.jobs[i as usize].enqueued = true;
            self.dirty_jobs.insert((id, i));
            self.schedule(id, i, 0);
        }
        ready
    }

    fn close_pipeline(&mut self, id: PipelineId, state: PipelineState) -> Result<()> {
        let p = self.pipelines.get_mut(&id).unwrap();
        p.rec.state = state;
        p.rec.finished_ms = Some(now_ms());
        self.dirty_pipelines.insert(p.rec.id);
        info!(pipeline = %id, state = state.as_str(), ms = p.rec.finished_ms.unwrap() - p.rec.submitted_ms, "pipeline finished");
        if let Some(owner) = p.owner.take() {
            if let Some(Peer {
                role: Role::Pipeliner(pl),
                ..
            }) = self.peers.get_mut(&owner)
            {
                pl.owned.remove(&id);
            }
        }
        self.events.push(Event::PipelineFinished { id, state });
        for key in self.waiting_on.remove(&id).unwrap_or_default() {
            let done = self.waiters.get_mut(&key).map(|w| {
                w.pending -= 1;
                w.pending == 0
            });
            if done == Some(true) {
                let w = self.waiters.remove(&key).unwrap();
                let reply = self.answer(&w.ids, w.outputs)?;
                self.reply(&w.to, reply);
            }
        }
        Ok(())
    }

    /// Records how long a request took, arrival to reply.
    pub fn observe_latency(&mut self, d: Duration) {
        self.latency.observe(d.as_secs_f64());
    }

    fn brokers(&self, now: Instant) -> Vec<BrokerStatus> {
        let mut out: Vec<BrokerStatus> = self
            .peers
            .values()
            .filter_map(|p| match &p.role {
                Role::Broker(b) => Some(BrokerStatus {
                    name: b.name.clone(),
                    host: b.host.clone(),
                    workers: b.workers.clone(),
                    slots: b.slots,
                    busy: (b.running.len() as u32).min(b.slots),
                    draining: b.draining,
                    last_seen_ms_ago: now.duration_since(p.last_seen).as_millis() as u64,
                    monitor: b.monitor.clone(),
                }),
                _ => None,
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    fn metrics(&self) -> ClusterMetrics {
        let mut m = ClusterMetrics::default();
        for p in self.pipelines.values() {
            *m.pipelines.entry(p.rec.state.as_str().into()).or_default() += 1;
            for j in &p.jobs {
                *m.jobs.entry(j.state.as_str().into()).or_default() += 1;
            }
        }
        m.queue_depth =
            (self.queues.values().map(|q| q.len()).sum::<usize>() + self.delayed.len()) as u64;
        for p in self.peers.values() {
            match p.role {
                Role::Broker(_) => m.brokers += 1,
                Role::Pipeliner(_) => m.pipeliners += 1,
            }
        }
        m.job_duration = self
            .job_durations
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        m.request_latency = self.latency.clone();
        m.attempts_finished = self.attempts_finished;
        m.throughput = self.throughput.iter().copied().collect();
        m
    }

    /// Runs again the jobs of a finished pipeline that did not succeed, or the named
    /// ones and their descendants; what succeeded otherwise is kept.
    fn retry(&mut self, id: PipelineId, names: Vec<String>) -> Result<Reply> {
        let Some(p) = self.pipelines.get(&id) else {
            return Ok(Reply::Error(ProtocolError::UnknownPipeline(id)));
        };
        if !p.rec.state.is_final() {
            return Ok(Reply::Error(ProtocolError::Refused(format!(
                "pipeline {id} is still {}: retry it once it has finished",
                p.rec.state.as_str()
            ))));
        }
        let mut targets: Vec<u32> = Vec::new();
        if names.is_empty() {
            targets.extend(
                (0..p.jobs.len() as u32)
                    .filter(|&i| p.jobs[i as usize].state != JobState::Succeeded),
            );
        } else {
            for n in &names {
                let Some(i) = p.dag.index_of(n) else {
                    return Ok(Reply::Error(ProtocolError::Refused(format!(
                        "pipeline {id} has no job {n:?}"
                    ))));
                };
                targets.push(i);
                targets.extend(p.dag.descendants(i));
            }
        }
        targets.sort_unstable();
        targets.dedup();
        if targets.is_empty() {
            return Ok(Reply::Status(p.status()));
        }
        info!(pipeline = %id, jobs = targets.len(), "retrying pipeline");
        let p = self.pipelines.get_mut(&id).unwrap();
        for &i in &targets {
            let j = &mut p.jobs[i as usize];
            if j.state.is_final() {
                p.done -= 1;
            }
            j.state = JobState::Queued;
            j.enqueued = false;
            j.failures = 0;
            j.not_before_ms = 0;
            j.error = None;
            self.dirty_jobs.insert((id, i));
        }
        p.rec.state = PipelineState::Queued;
        p.rec.finished_ms = None;
        p.armed.fill(false);
        p.close_on_success = false;
        self.dirty_pipelines.insert(p.rec.id);
        self.unowned.push_back(id);
        Ok(Reply::Status(self.pipelines[&id].status()))
    }

    /// Cancels a pipeline: queued jobs never start, running ones are revoked.
    fn cancel(&mut self, id: PipelineId) -> Result<Reply> {
        let Some(p) = self.pipelines.get(&id) else {
            return Ok(Reply::Error(ProtocolError::UnknownPipeline(id)));
        };
        if !p.rec.state.is_final() {
            info!(pipeline = %id, "cancelling pipeline");
            for i in 0..p.jobs.len() as u32 {
                let state = self.pipelines[&id].jobs[i as usize].state;
                if state.is_final() {
                    continue;
                }
                if state == JobState::Running {
                    self.revoke(id, i);
                }
                let j = &mut self.pipelines.get_mut(&id).unwrap().jobs[i as usize];
                if state == JobState::Running {
                    if let Some(last) = j.history.last_mut() {
                        last.finished_ms = Some(now_ms());
                        last.error = Some("cancelled".into());
                    }
                }
                j.state = JobState::Cancelled;
                j.error = Some("cancelled".into());
                self.job_final(id, i, JobState::Cancelled)?;
            }
            self.close_pipeline(id, PipelineState::Cancelled)?;
        }
        Ok(Reply::Status(self.pipelines[&id].status()))
    }

    /// Tells the broker running job `i` to stop it.
    fn revoke(&mut self, id: PipelineId, i: u32) {
        let attempt = self.pipelines[&id].jobs[i as usize].attempt();
        let holder = self.peers.iter().find_map(|(k, p)| match &p.role {
            Role::Broker(b) if b.running.iter().any(|r| r.pipeline == id && r.job == i) => {
                Some(k.clone())
            }
            _ => None,
        });
        if let Some(peer) = holder {
            self.revokes.entry(peer).or_default().push(JobRef {
                pipeline: id,
                job: i,
                attempt,
            });
        }
    }

    /// An attempt ran past its timeout and a lease more with no report: fail it here.
    fn overdue(&mut self, id: PipelineId, i: u32, attempt: u32) -> Result<()> {
        let current = self.pipelines.get(&id).is_some_and(|p| {
            let j = &p.jobs[i as usize];
            j.state == JobState::Running && j.attempt() == attempt
        });
        if !current {
            return Ok(());
        }
        self.revoke(id, i);
        let p = &self.pipelines[&id];
        let t = p.dag.timeout_ms(i).unwrap_or(0);
        let broker = p.jobs[i as usize].history.last().map(|a| a.broker.clone());
        warn!(pipeline = %id, job = i, attempt, ?broker, "attempt overdue: failing it");
        self.finish_attempt(JobReport {
            job: JobRef {
                pipeline: id,
                job: i,
                attempt,
            },
            started_ms: 0,
            finished_ms: now_ms(),
            result: Err(format!(
                "timed out after {t} ms (no report from its broker within a lease after that)"
            )),
        })
    }

    /// Forgets a peer: its running jobs go back to the queue, its pipelines to others.
    pub fn drop_peer(&mut self, peer: &PeerId, why: &str) -> Result<()> {
        self.forget_peer(peer, why, &HashSet::new())
    }

    /// [`RouterState::drop_peer`], keeping the attempts in `keep` running.
    fn forget_peer(&mut self, peer: &PeerId, why: &str, keep: &HashSet<JobRef>) -> Result<()> {
        let Some(p) = self.peers.remove(peer) else {
            return Ok(());
        };
        self.assigns.remove(peer);
        self.takes.remove(peer);
        self.changes.remove(peer);
        match p.role {
            Role::Broker(b) => {
                info!(broker = %b.name, why, running = b.running.len(), "broker gone");
                for r in b.running.difference(keep) {
                    self.requeue(r.pipeline, r.job, &format!("broker {} {why}", b.name))?;
                }
            }
            Role::Pipeliner(pl) => {
                info!(pipeliner = %pl.id, why, pipelines = pl.owned.len(), "pipeliner gone");
                for id in pl.owned {
                    if let Some(e) = self.pipelines.get_mut(&id) {
                        e.owner = None;
                        self.unowned.push_back(id);
                    }
                }
            }
        }
        Ok(())
    }

    /// Gives a running attempt back to the queue (its broker is gone); the attempt
    /// number moves on, so a late report from the old broker is stale.
    fn requeue(&mut self, id: PipelineId, i: u32, why: &str) -> Result<()> {
        let Some(p) = self.pipelines.get_mut(&id) else {
            return Ok(());
        };
        let j = &mut p.jobs[i as usize];
        if j.state != JobState::Running {
            return Ok(());
        }
        if let Some(last) = j.history.last_mut() {
            last.finished_ms = Some(now_ms());
            last.error = Some(format!("lost: {why}"));
        }
        j.state = JobState::Queued;
        j.not_before_ms = 0;
        self.counters.requeued += 1;
        self.store
            .put_job(id, i, &self.pipelines[&id].jobs[i as usize])?;
        self.schedule(id, i, 0);
        Ok(())
    }

    /// Timers: retry delays, waits, silent peers, orphaned attempts.
    pub fn tick(&mut self, now: Instant) -> Result<()> {
        let wall = now_ms();
        while let Some(Reverse((t, id, i))) = self.delayed.peek().copied() {
            if t > wall {
                break;
            }
            self.delayed.pop();
            self.schedule(id, i, 0);
        }
        let expired: Vec<u64> = self
            .waiters
            .iter()
            .filter(|(_, w)| w.deadline <= now)
            .map(|(k, _)| *k)
            .collect();
        for k in expired {
            let w = self.waiters.remove(&k).unwrap();
            for id in &w.ids {
                if let Some(v) = self.waiting_on.get_mut(id) {
                    v.retain(|x| *x != k);
                }
            }
            let reply = self.answer(&w.ids, w.outputs)?;
            self.reply(&w.to, reply);
        }
        let silent: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| now.duration_since(p.last_seen) > peer_timeout())
            .map(|(k, _)| k.clone())
            .collect();
        for peer in silent {
            self.drop_peer(&peer, "fell silent")?;
        }
        while let Some(Reverse((at, id, i, attempt))) = self.deadlines.peek().copied() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            self.overdue(id, i, attempt)?;
        }
        let lost: Vec<(PipelineId, u32)> = self
            .orphans
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(k, _)| *k)
            .collect();
        for (id, i) in lost {
            self.orphans.remove(&(id, i));
            self.requeue(id, i, "did not come back after the router restarted")?;
        }
        Ok(())
    }

    /// When the next timer is due, to bound the event loop's poll.
    pub fn next_timer(&self, now: Instant) -> Option<Duration> {
        let wall = now_ms();
        let retry = self
            .delayed
            .peek()
            .map(|Reverse((t, _, _))| Duration::from_millis(t.saturating_sub(wall)));
        let wait = self
            .waiters
            .values()
            .map(|w| w.deadline.saturating_duration_since(now))
            .min();
        [retry, wait].into_iter().flatten().min()
    }

    /// Matches queued jobs with brokers' free slots and open pipelines with pipeliners.
    pub fn dispatch(&mut self) -> Result<()> {
        self.assign_pipelines()?;
        let brokers: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| matches!(&p.role, Role::Broker(b) if b.credit() > 0))
            .map(|(k, _)| k.clone())
            .collect();
        for peer in brokers {
            while let Some(Peer {
                role: Role::Broker(b),
                ..
            }) = self.peers.get_mut(&peer)
            {
                if b.credit() == 0 {
                    break;
                }
                let n = b.workers.len();
                let mut next = None;
                for k in 0..n {
                    let w = &b.workers[(b.rotate + k) % n];
                    if let Some(q) = self.queues.get_mut(w) {
                        if let Some(job) = q.pop_front() {
                            next = Some(job);
                            b.rotate = (b.rotate + k + 1) % n;
                            break;
                        }
                    }
                }
                let Some((id, i)) = next else { break };
                let runnable = self
                    .pipelines
                    .get(&id)
                    .is_some_and(|p| p.jobs[i as usize].state == JobState::Queued);
                if !runnable {
                    continue; // cancelled while it waited in the queue
                }
                let Some(Peer {
                    role: Role::Broker(b),
                    ..
                }) = self.peers.get_mut(&peer)
                else {
                    break;
                };
                let name = b.name.clone();
                let queued_for = if b.running.len() < b.slots as usize {
                    Some(0)
                } else {
                    self.longest_wait(&peer)
                };
                let a = self.start_attempt(id, i, name, queued_for)?;
                if let Some(b) = self.broker_mut(&peer) {
                    b.running.insert(a.job);
                }
                self.assigns.entry(peer.clone()).or_default().push(a);
            }
        }
        Ok(())
    }

    /// The longest a job queued at broker `peer` now can wait for a slot: the sum of
    /// the timeouts of everything it holds, or `None` if one of those has no timeout.
    fn longest_wait(&self, peer: &PeerId) -> Option<u64> {
        let Some(Peer {
            role: Role::Broker(b),
            ..
        }) = self.peers.get(peer)
        else {
            return None;
        };
        b.running.iter().try_fold(0u64, |sum, r| {
            let t = self.pipelines.get(&r.pipeline)?.dag.timeout_ms(r.job)?;
            Some(sum.saturating_add(t))
        })
    }

    /// Starts attempt `n + 1` of job `i` on `broker`, where it may first wait in the
    /// broker's queue for up to `queued_for` ms (`None`: no bound is known).
    fn start_attempt(
        &mut self,
        id: PipelineId,
        i: u32,
        broker: String,
        queued_for: Option<u64>,
    ) -> Result<Assignment> {
        let p = self.pipelines.get_mut(&id).expect("queued job's pipeline");
        let j = &mut p.jobs[i as usize];
        let number = j.attempt() + 1;
        j.state = JobState::Running;
        j.history.push(Attempt {
            number,
            broker,
            started_ms: now_ms(),
            finished_ms: None,
            error: None,
        });
        self.dirty_jobs.insert((id, i));
        if let (Some(t), Some(q)) = (p.dag.timeout_ms(i), queued_for) {
            // A backstop: brokers stop a job at its timeout and report; this fires only
            // if no report came within a lease after that (and after its longest wait
            // in the broker's queue). Without a bound on that wait, the broker's own
            // timeout and its lease are what stop the attempt.
            let at = Instant::now() + Duration::from_millis(t.saturating_add(q)) + peer_timeout();
            self.deadlines.push(Reverse((at, id, i, number)));
        }
        let p = &self.pipelines[&id];
        let mut parents = BTreeMap::new();
        for &q in p.dag.parents(i) {
            if let Some(out) = self.store.get_output(id, q)? {
                parents.insert(p.dag.name(q).to_string(), out);
            }
        }
        let job = JobRef {
            pipeline: id,
            job: i,
            attempt: number,
        };
        Ok(Assignment {
            job,
            info: JobInfo {
                pipeline: id,
                name: p.dag.name(i).to_string(),
                worker: p.dag.job(i).worker.clone(),
                attempt: number,
                data: p.dag.job_data(i),
                parents,
                timeout_ms: p.dag.timeout_ms(i),
            },
        })
    }

    fn assign_pipelines(&mut self) -> Result<()> {
        while let Some(&id) = self.unowned.front() {
            let open = self
                .pipelines
                .get(&id)
                .is_some_and(|p| !p.rec.state.is_final() && p.owner.is_none());
            if !open {
                self.unowned.pop_front();
                continue;
            }
            let best = self
                .peers
                .iter_mut()
                .filter_map(|(k, p)| match &mut p.role {
                    Role::Pipeliner(pl) if (pl.owned.len() as u32) < pl.capacity => Some((k, pl)),
                    _ => None,
                })
                .min_by_key(|(_, pl)| pl.owned.len());
            let Some((peer, pl)) = best else { break };
            pl.owned.insert(id);
            let peer = peer.clone();
            self.unowned.pop_front();
            let p = self.pipelines.get_mut(&id).unwrap();
            p.owner = Some(peer.clone());
            if p.rec.state == PipelineState::Queued {
                p.rec.state = PipelineState::Running;
                self.dirty_pipelines.insert(p.rec.id);
            }
            let snap = self.snapshot(id).unwrap();
            self.takes.entry(peer).or_default().push(snap);
        }
        Ok(())
    }

    /// Makes every change durable; only then may the outbox be sent.
    pub fn commit(&mut self) -> Result<()> {
        // Each record changed this turn is written once, however often it changed.
        for (id, i) in self.dirty_jobs.drain() {
            self.store
                .put_job(id, i, &self.pipelines[&id].jobs[i as usize])?;
        }
        for id in self.dirty_pipelines.drain() {
            self.store.put_pipeline(&self.pipelines[&id].rec)?;
        }
        self.store.commit()
    }

    /// Pushes that may leave before [`RouterState::commit`]: the job changes told to
    /// pipeliners. They acknowledge nothing, and every decision a pipeliner sends back
    /// is checked against the router's state in a later turn, after this one's commit;
    /// sending them first lets the pipeliner decide while the router syncs.
    pub fn drain_hints(&mut self) -> Vec<Outgoing> {
        self.changes
            .drain()
            .map(|(peer, list)| push(peer, Push::Changed(list)))
            .collect()
    }

    /// Frames to send now (after [`RouterState::commit`]) and events to publish.
    pub fn drain_outbox(&mut self) -> (Vec<Outgoing>, Vec<Event>) {
        for (peer, list) in self.assigns.drain() {
            self.outbox.push(push(peer, Push::Assign(list)));
        }
        for (peer, list) in self.takes.drain() {
            self.outbox.push(push(peer, Push::Take(list)));
        }
        for (peer, list) in self.changes.drain() {
            self.outbox.push(push(peer, Push::Changed(list)));
        }
        for (peer, list) in self.revokes.drain() {
            self.outbox.push(push(peer, Push::Revoke(list)));
        }
        (
            std::mem::take(&mut self.outbox),
            std::mem::take(&mut self.events),
        )
    }

    /// Pipelines not yet final.
    pub fn open_pipelines(&self) -> usize {
        self.pipelines
            .values()
            .filter(|p| !p.rec.state.is_final())
            .count()
    }
}

fn push(peer: PeerId, p: Push) -> Outgoing {
    Outgoing {
        peer,
        req: false,
        payload: pypelinin_common::protocol::encode(0, &FromRouter::Push(p)),
    }
}
