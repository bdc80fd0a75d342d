//! The router's state machine: every pipeline, job, broker and pipeliner.
//!
//! It has no sockets. The event loop ([`crate::server`]) feeds it requests and timer
//! ticks; it answers by filling an outbox, which the loop sends only after
//! [`RouterState::commit`] made every change durable (all but the hints of
//! [`RouterState::drain_hints`], which acknowledge nothing).
//!
//! This file owns the one shared [`RouterState`]: its construction and recovery from
//! the store, the dispatch of each request to the concern that handles it, the timers,
//! and the commit and outbox. Each concern is a file of its own, adding methods to the
//! same struct: `peers` (peers and leases), `jobs` (the job state machine and its
//! attempts), `advance` (what the pipeliner decides and what a success starts or
//! closes), `dispatch` (jobs to brokers, pipelines to pipeliners), `waiters`
//! (waits and read-only replies), `why` (why a queued job is not running), `logs`
//! (captured logs), `metrics`, and `clock`.

mod advance;
mod backfills;
mod clock;
mod dispatch;
mod history;
mod jobs;
mod logs;
mod metrics;
mod notify;
mod peers;
mod pools;
mod queue;
mod schedules;
mod views;
mod waiters;
mod why;

#[cfg(test)]
mod tests;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

// foldhash: std's SipHash was a visible share of the router's CPU per job.
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use pypelinin_common::protocol::{
    Assignment, ClusterConfig, Event, FromRouter, Histogram, JobChange, JobRef, PipelineId,
    PipelineSnapshot, ProtocolError, Push, Reply, Request, HEARTBEAT_INTERVAL, PEER_LIVENESS,
};
use pypelinin_common::schedule::RunKind;
use pypelinin_common::status::JobState;
use pypelinin_common::Pipeline;
use tracing::info;

pub use clock::{Clock, ManualClock, SystemClock};
pub use history::{PURGE_BATCH, PURGE_EVERY_MS};
use metrics::LATENCY_BOUNDS;
use peers::Peer;
pub use peers::PREFETCH_HORIZON_MS;
pub use pools::check_pool;
pub use queue::DEFAULT_PRIORITY_AGING_MS;
pub use schedules::{MAX_PENDING_TICKS, SHOWN_TICKS};
use waiters::Waiter;

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

/// All of the router's state.
pub struct RouterState {
    store: Box<dyn StateStore>,
    clock: Box<dyn Clock>,
    config: ClusterConfig,
    pipelines: HashMap<PipelineId, PipelineEntry>,
    order: BTreeMap<u64, PipelineId>,
    next_seq: u64,
    peers: HashMap<PeerId, Peer>,
    /// The run queue, by worker: jobs ready to start, best first (`queue`).
    queues: HashMap<String, queue::RunQueue>,
    /// Order of queueing, for first come, first served among equal priorities.
    next_ticket: u64,
    /// A waiting job gains a point of priority per this many ms (0: never).
    aging_ms: u64,
    /// Pools, `max_active`, and the jobs parked for them (`pools`).
    limits: pools::Limits,
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
    dirty_jobs: Vec<(PipelineId, u32)>,
    dirty_pipelines: HashSet<PipelineId>,
    deadlines: BinaryHeap<Reverse<(Instant, PipelineId, u32, u32)>>,
    events: Vec<Event>,
    job_durations: HashMap<String, Histogram>,
    latency: Histogram,
    attempts_finished: u64,
    /// Job reports received, and the messages that carried them.
    job_reports: u64,
    report_messages: u64,
    throughput: VecDeque<(u64, u32)>,
    schedules: schedules::Schedules,
    /// The earliest `next_due` of the schedules not paused: kept up to date whenever a
    /// schedule changes, so that a turn of the event loop reads one number instead of
    /// walking every schedule.
    schedules_due: Option<u64>,
    dirty_schedules: HashSet<String>,
    backfills: backfills::Backfills,
    dirty_backfills: HashSet<u64>,
    next_backfill: u64,
    logs: logs::Logs,
    notify: notify::NotifyState,
    /// Finished history older than this is deleted (`None`: kept for ever).
    retention_ms: Option<u64>,
    /// Pipelines closed this turn, dropped from memory once the commit has them.
    closed: Vec<PipelineId>,
    /// Counts of the history not held in memory.
    tally: history::Tally,
    purge: history::Purge,
}

type Result<T> = std::result::Result<T, StoreError>;

impl RouterState {
    /// Loads the state kept in `store`.
    pub fn load(store: Box<dyn StateStore>, config: ClusterConfig) -> Result<Self> {
        Self::load_with_clock(store, config, Box::new(SystemClock))
    }

    /// [`RouterState::load`], reading the time from `clock` (tests move it by hand).
    pub fn load_with_clock(
        store: Box<dyn StateStore>,
        config: ClusterConfig,
        clock: Box<dyn Clock>,
    ) -> Result<Self> {
        let mut s = RouterState {
            store,
            clock,
            config,
            pipelines: HashMap::new(),
            order: BTreeMap::new(),
            next_seq: 1,
            peers: HashMap::new(),
            queues: HashMap::new(),
            next_ticket: 0,
            aging_ms: 0,
            limits: pools::Limits::default(),
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
            dirty_jobs: Vec::new(),
            dirty_pipelines: HashSet::new(),
            deadlines: BinaryHeap::new(),
            events: Vec::new(),
            job_durations: HashMap::new(),
            latency: Histogram::new(LATENCY_BOUNDS),
            attempts_finished: 0,
            job_reports: 0,
            report_messages: 0,
            throughput: VecDeque::new(),
            schedules: BTreeMap::new(),
            schedules_due: None,
            dirty_schedules: HashSet::new(),
            backfills: BTreeMap::new(),
            dirty_backfills: HashSet::new(),
            next_backfill: 1,
            logs: logs::Logs::default(),
            notify: notify::NotifyState::default(),
            retention_ms: None,
            closed: Vec::new(),
            tally: history::Tally::default(),
            purge: history::Purge::default(),
        };
        s.aging_ms = s
            .config
            .priority_aging_ms
            .unwrap_or(queue::DEFAULT_PRIORITY_AGING_MS);
        s.load_pools()?;
        let grace = s.clock.instant() + peer_timeout() * 2;
        let (mut open, mut running, mut finished) = (0, 0, 0u64);
        let (mut next_seq, mut tally) = (1, history::Tally::default());
        let loaded = s.store.load_open(&mut |rec| {
            next_seq = next_seq.max(rec.seq + 1);
            finished += 1;
            tally.add(&rec);
            if let Some(o) = rec.origin.as_ref().filter(|o| o.kind != RunKind::Backfill) {
                let last = tally
                    .last_runs
                    .entry(o.schedule.clone())
                    .or_insert((0, rec.state));
                if rec.seq >= last.0 {
                    *last = (rec.seq, rec.state);
                }
            }
        })?;
        s.next_seq = next_seq;
        s.tally = tally;
        for loaded in loaded {
            let entry = match history::entry_of(loaded) {
                Ok(e) => e,
                Err(e) => {
                    return Err(StoreError::Corrupt {
                        key: "an open pipeline's spec".into(),
                        message: e,
                    })
                }
            };
            let id = entry.rec.id;
            s.next_seq = s.next_seq.max(entry.rec.seq + 1);
            s.order.insert(entry.rec.seq, id);
            let todo: Vec<(u32, JobState, bool, u64)> = entry
                .jobs
                .iter()
                .enumerate()
                .map(|(i, j)| (i as u32, j.state, j.enqueued, j.not_before_ms))
                .collect();
            s.pipelines.insert(id, entry);
            open += 1;
            s.unowned.push_back(id);
            for (i, state, enqueued, not_before_ms) in todo {
                match state {
                    JobState::Queued if enqueued => s.schedule(id, i, not_before_ms),
                    // Its next poke, as before the restart.
                    JobState::Waiting => s.delayed.push(Reverse((not_before_ms, id, i))),
                    JobState::Running => {
                        // Its broker may still be running it: wait for it to say hello.
                        running += 1;
                        s.orphans.insert((id, i), grace);
                        s.hold(id, i);
                    }
                    _ => {}
                }
            }
        }
        s.load_schedules()?;
        s.load_backfills()?;
        s.load_notifications()?;
        info!(
            schedules = s.schedules.len(),
            finished, open, running, "router state loaded"
        );
        Ok(s)
    }

    /// Keeps finished pipelines (with their outputs and logs) for `retention` after they
    /// end, then deletes them; `None`, the default, keeps them for ever.
    pub fn set_retention(&mut self, retention: Option<Duration>) {
        self.retention_ms = retention.map(|d| d.as_millis() as u64);
    }

    /// Handles one request from `to.peer`.
    pub fn handle(&mut self, to: ReplyTo, req: Request) -> Result<()> {
        let now = self.clock.instant();
        if let Some(p) = self.peers.get_mut(&to.peer) {
            p.last_seen = now;
        }
        let reply = match req {
            Request::Submit { id, pipeline } => self.submit(id, pipeline)?,
            Request::Status { id } => match self.pipeline_status(id) {
                Some(s) => Reply::Status(s),
                None => match self.lookup(id) {
                    Ok(p) => Reply::Status(p.status()),
                    Err(e) => Reply::Error(e),
                },
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
            Request::List {
                limit,
                state,
                schedule,
                before,
            } => match self.list(limit as usize, state, schedule.as_deref(), before) {
                Ok(list) => Reply::List(list),
                Err(e) => Reply::Error(e),
            },
            Request::Retry { id, jobs } => self.retry(id, jobs)?,
            Request::Brokers => Reply::Brokers(self.brokers(now)),
            Request::Spec { id } => match self.lookup(id) {
                Ok(p) => Reply::Spec(p.rec.spec.clone()),
                Err(e) => Reply::Error(e),
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
            Request::Schedule(r) => self.schedule_request(r)?,
            Request::Pool(r) => self.pool_request(r)?,
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
            Request::Logs(chunks) => self.logs_in(chunks)?,
            Request::GetLogs {
                id,
                job,
                attempt,
                after,
            } => self.get_logs(id, &job, attempt, after)?,
            Request::Notifications { limit } => Reply::Notifications(self.notifications(limit)),
        };
        self.reply(&to, reply);
        Ok(())
    }

    /// Answers a frame that could not be decoded.
    pub fn reply_error(&mut self, to: &ReplyTo, error: ProtocolError) {
        self.reply(to, Reply::Error(error));
    }

    fn reply(&mut self, to: &ReplyTo, reply: Reply) {
        let payload = pypelinin_common::protocol::encode(to.id, &FromRouter::Reply(reply));
        self.reply_frame(to, payload);
    }

    /// Queues an encoded reply frame to `to` (a reply encoded from borrowed state, as a
    /// wait's statuses are, comes here directly).
    fn reply_frame(&mut self, to: &ReplyTo, payload: Vec<u8>) {
        self.outbox.push(Outgoing {
            peer: to.peer.clone(),
            req: to.req,
            payload,
        });
    }

    /// Timers: schedules, retry delays, waits, silent peers, orphaned attempts.
    pub fn tick(&mut self, now: Instant) -> Result<()> {
        self.tick_schedules()?;
        self.tick_late();
        self.tick_retention()?;
        let wall = self.clock.wall_ms();
        while let Some(Reverse((t, id, i))) = self.delayed.peek().copied() {
            if t > wall {
                break;
            }
            self.delayed.pop();
            self.release(id, i)?;
        }
        let expired: Vec<u64> = self
            .waiters
            .iter()
            .filter(|(_, w)| w.deadline <= now)
            .map(|(k, _)| *k)
            .collect();
        for k in expired {
            let Some(w) = self.waiters.remove(&k) else {
                continue;
            };
            for id in &w.ids {
                if let Some(v) = self.waiting_on.get_mut(id) {
                    v.retain(|x| *x != k);
                }
            }
            self.answer(&w.to, &w.ids, w.outputs)?;
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
        let wall = self.clock.wall_ms();
        let retry = self
            .delayed
            .peek()
            .map(|Reverse((t, _, _))| Duration::from_millis(t.saturating_sub(wall)));
        let wait = self
            .waiters
            .values()
            .map(|w| w.deadline.saturating_duration_since(now))
            .min();
        let schedule = self
            .next_schedule_due()
            .map(|t| Duration::from_millis(t.saturating_sub(wall)));
        let notify = self
            .notify_next_due()
            .map(|t| Duration::from_millis(t.saturating_sub(wall)));
        [retry, wait, schedule, notify].into_iter().flatten().min()
    }

    /// Makes every change durable; only then may the outbox be sent.
    pub fn commit(&mut self) -> Result<()> {
        // A job changed (it may have ended): its log is complete, make it durable with
        // the change. Lines of running jobs wait for the store's own cadence.
        if self.logs.dirty && !self.dirty_jobs.is_empty() {
            self.store.flush_logs()?;
            self.logs.dirty = false;
        }
        // Each record changed this turn is written once, however often it changed; in
        // order, so that a pipeline's jobs are written together.
        self.dirty_jobs.sort_unstable();
        self.dirty_jobs.dedup();
        let mut current: Option<(PipelineId, &PipelineEntry)> = None;
        for &(id, i) in &self.dirty_jobs {
            let p = match current {
                Some((at, p)) if at == id => p,
                _ => &self.pipelines[&id],
            };
            current = Some((id, p));
            self.store.put_job(id, i, &p.jobs[i as usize])?;
        }
        self.dirty_jobs.clear();
        let mut dirty = std::mem::take(&mut self.dirty_pipelines);
        for id in dirty.drain() {
            self.stamp(id);
            self.store.put_pipeline(&self.pipelines[&id].rec)?;
        }
        self.dirty_pipelines = dirty;
        self.write_schedules()?;
        self.write_backfills()?;
        self.write_notifications()?;
        self.store.commit()?;
        self.evict_closed();
        Ok(())
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

    /// Pipelines not yet final (all of them in memory: finished ones are not).
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
