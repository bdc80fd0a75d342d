//! In-process tests of the router's state machine: a [`RouterState`] over a
//! [`MemoryStore`] and a [`ManualClock`], driven by the same requests its peers send,
//! one event-loop turn at a time, with no sockets and no sleeping. What it sends back
//! is decoded and inspected as a peer would see it.

mod advance;
mod backfills;
mod dag_rule;
mod dispatch;
mod history;
mod jobs;
mod logs;
mod notify;
mod pools;
mod priorities;
mod recovery;
mod schedules;
mod sensors;
mod targets;
mod trigger_rules;
mod waiters;
mod why;

use std::time::Duration;

use pypelinin_common::protocol::{
    decode, Advance, Assignment, BrokerHello, ClusterConfig, FromRouter, JobChange, JobRef,
    JobReport, PipelineSnapshot, Push, Reply, Request,
};
use pypelinin_common::status::{JobState, PipelineState, PipelineStatus};
use pypelinin_common::{Data, PipelineId, PipelineSpec};
use uuid::Uuid;

use super::{ManualClock, ReplyTo, RouterState};
use crate::store::MemoryStore;

/// The broker every rig starts with, and the one pipeliner.
const BROKER: &[u8] = b"broker-1";
const BROKER_NAME: &str = "b1";
const PIPELINER: &[u8] = b"pipeliner-1";
const CLIENT: &[u8] = b"client";

/// A router state with its store and clock, and what it has sent so far.
struct Rig {
    state: RouterState,
    store: MemoryStore,
    clock: ManualClock,
    next_id: u64,
    /// Pushes received, by peer, oldest first.
    pushes: Vec<(Vec<u8>, Push)>,
    /// Replies not taken yet: peer, request id, reply.
    replies: Vec<(Vec<u8>, u64, Reply)>,
}

impl Rig {
    fn new() -> Self {
        Rig::at(1_000_000)
    }

    /// A rig whose clock starts at `start_ms` since the epoch.
    fn at(start_ms: u64) -> Self {
        let store = MemoryStore::new();
        let clock = ManualClock::new(start_ms);
        let state = RouterState::load_with_clock(
            Box::new(store.clone()),
            ClusterConfig::default(),
            Box::new(clock.clone()),
        )
        .unwrap();
        Rig {
            state,
            store,
            clock,
            next_id: 1,
            pushes: Vec::new(),
            replies: Vec::new(),
        }
    }

    /// The router restarted: a new state loaded from what this one committed, with no
    /// peers; the clock goes on.
    fn restart(self) -> Self {
        let state = RouterState::load_with_clock(
            Box::new(self.store.clone()),
            ClusterConfig::default(),
            Box::new(self.clock.clone()),
        )
        .unwrap();
        Rig {
            state,
            pushes: Vec::new(),
            replies: Vec::new(),
            ..self
        }
    }

    /// A rig with one pipeliner and one broker of `slots` slots serving worker `W`.
    fn with_peers(slots: u32) -> Self {
        let mut r = Rig::new();
        r.pipeliner();
        r.broker(BROKER, BROKER_NAME, slots, 0);
        r
    }

    /// What the event loop does after taking frames: timers, matching, commit, send.
    fn turn(&mut self) {
        self.state.tick(self.clock_now()).unwrap();
        self.state.dispatch().unwrap();
        let mut out = self.state.drain_hints();
        self.state.commit().unwrap();
        let (rest, _events) = self.state.drain_outbox();
        out.extend(rest);
        for o in out {
            match decode::<FromRouter>(&o.payload).unwrap() {
                (_, FromRouter::Push(p)) => self.pushes.push((o.peer, p)),
                (id, FromRouter::Reply(r)) => self.replies.push((o.peer, id, r)),
            }
        }
    }

    fn clock_now(&self) -> std::time::Instant {
        use super::Clock;
        self.clock.instant()
    }

    /// Sends `req` from `peer`, runs one turn and returns the reply.
    fn send(&mut self, peer: &[u8], req: Request) -> Reply {
        let id = self.post(peer, req);
        self.reply_to(peer, id).expect("a reply")
    }

    /// The reply to request `id` of `peer`, if it came.
    fn reply_to(&mut self, peer: &[u8], id: u64) -> Option<Reply> {
        let k = self
            .replies
            .iter()
            .position(|(p, i, _)| p == peer && *i == id)?;
        Some(self.replies.remove(k).2)
    }

    /// Sends `req` from `peer` and runs one turn; the request's id.
    fn post(&mut self, peer: &[u8], req: Request) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let to = ReplyTo {
            peer: peer.to_vec(),
            req: false,
            id,
        };
        self.state.handle(to, req).unwrap();
        self.turn();
        id
    }

    fn pipeliner(&mut self) {
        let r = self.send(
            PIPELINER,
            Request::PipelinerHello {
                pipeliner: Uuid::new_v4(),
                capacity: 10,
            },
        );
        assert!(matches!(r, Reply::Ok), "{r:?}");
    }

    fn broker(&mut self, peer: &[u8], name: &str, slots: u32, prefetch: u32) {
        let r = self.send(
            peer,
            Request::BrokerHello(BrokerHello {
                name: name.into(),
                host: "here".into(),
                workers: vec!["W".into()],
                slots,
                running: vec![],
                unreported: vec![],
                prefetch,
            }),
        );
        assert!(matches!(r, Reply::Welcome(_)), "{r:?}");
    }

    fn submit(&mut self, spec: PipelineSpec) -> PipelineId {
        let id = PipelineId::new();
        let r = self.send(CLIENT, Request::Submit { id, pipeline: spec });
        assert!(matches!(r, Reply::Submitted { .. }), "{r:?}");
        id
    }

    /// Submits `spec` and arms it as a pipeliner's first plan would: roots enqueued,
    /// every other job armed, close on success asked.
    fn submit_planned(&mut self, spec: PipelineSpec) -> PipelineId {
        let id = self.submit(spec);
        let snap = self.take(id);
        let (roots, rest): (Vec<u32>, Vec<u32>) = {
            let dag = pypelinin_common::Pipeline::new(snap.spec).unwrap();
            let roots: Vec<u32> = dag.roots().collect();
            (0..dag.len() as u32).partition(|i| roots.contains(i))
        };
        self.advance(Advance {
            pipeline: id,
            enqueue: roots,
            after: rest,
            close_on_success: true,
            ..Advance::default()
        });
        id
    }

    /// The snapshot the pipeliner was given of pipeline `id`.
    fn take(&self, id: PipelineId) -> PipelineSnapshot {
        self.pushes
            .iter()
            .rev()
            .find_map(|(p, push)| match push {
                Push::Take(snaps) if p == PIPELINER => snaps.iter().find(|s| s.id == id).cloned(),
                _ => None,
            })
            .expect("the pipeline was given to the pipeliner")
    }

    fn advance(&mut self, a: Advance) -> Reply {
        self.send(PIPELINER, Request::Advance(vec![a]))
    }

    /// Assignments pushed to `peer` since the last call.
    fn assigned_to(&mut self, peer: &[u8]) -> Vec<Assignment> {
        let mut out = Vec::new();
        self.pushes.retain(|(p, push)| match push {
            Push::Assign(list) if p == peer => {
                out.extend(list.iter().cloned());
                false
            }
            _ => true,
        });
        out
    }

    fn assigned(&mut self) -> Vec<Assignment> {
        self.assigned_to(BROKER)
    }

    /// Assignments of pipeline `id`'s jobs pushed to [`BROKER`] since the last call; the
    /// others stay (the router queues a pipeline's roots itself when a pipeliner takes
    /// it, so runs started by a schedule may be assigned in the same turn).
    fn assigned_for(&mut self, id: PipelineId) -> Vec<Assignment> {
        let mut out = Vec::new();
        for (p, push) in self.pushes.iter_mut() {
            if let (true, Push::Assign(list)) = (p == BROKER, push) {
                list.retain(|a| {
                    let mine = a.job.pipeline == id;
                    if mine {
                        out.push(a.clone());
                    }
                    !mine
                });
            }
        }
        self.pushes
            .retain(|(_, push)| !matches!(push, Push::Assign(list) if list.is_empty()));
        out
    }

    /// Job changes told to the pipeliner since the last call.
    fn changes(&mut self) -> Vec<JobChange> {
        let mut out = Vec::new();
        self.pushes.retain(|(p, push)| match push {
            Push::Changed(list) if p == PIPELINER => {
                out.extend(list.iter().cloned());
                false
            }
            _ => true,
        });
        out
    }

    /// Jobs the broker was told to stop since the last call.
    fn revoked(&mut self) -> Vec<JobRef> {
        let mut out = Vec::new();
        self.pushes.retain(|(p, push)| match push {
            Push::Revoke(list) if p == BROKER => {
                out.extend(list.iter().copied());
                false
            }
            _ => true,
        });
        out
    }

    fn report_from(&mut self, peer: &[u8], job: JobRef, result: Result<Data, String>) -> Reply {
        self.report_timed(peer, job, result, 0)
    }

    /// Reports an attempt that took `ms` at the broker.
    fn report_timed(
        &mut self,
        peer: &[u8],
        job: JobRef,
        result: Result<Data, String>,
        ms: u64,
    ) -> Reply {
        let report = JobReport {
            job,
            started_ms: 1_000,
            finished_ms: 1_000 + ms,
            result,
        };
        self.send(peer, Request::JobDone(vec![report]))
    }

    fn succeed(&mut self, job: JobRef) -> Reply {
        self.report_from(BROKER, job, Ok(output(job.job)))
    }

    fn fail(&mut self, job: JobRef) -> Reply {
        self.report_from(BROKER, job, Err("boom".into()))
    }

    fn status(&mut self, id: PipelineId) -> PipelineStatus {
        match self.send(CLIENT, Request::Status { id }) {
            Reply::Status(s) => s,
            other => panic!("{other:?}"),
        }
    }

    fn job_state(&mut self, id: PipelineId, name: &str) -> JobState {
        self.status(id).jobs[name].state
    }

    fn pipeline_state(&mut self, id: PipelineId) -> PipelineState {
        self.status(id).state
    }

    /// Lets `d` pass while the broker and the pipeliner keep their leases (they
    /// send a heartbeat every second of it).
    fn wait(&mut self, d: Duration) {
        let mut left = d;
        while !left.is_zero() {
            let step = left.min(Duration::from_secs(1));
            left -= step;
            self.clock.advance(step);
            for peer in [BROKER, PIPELINER] {
                let r = self.send(peer, Request::Heartbeat);
                assert!(matches!(r, Reply::Ok), "{r:?}");
            }
        }
    }
}

fn output(job: u32) -> Data {
    [("job".to_string(), serde_json::json!(job))]
        .into_iter()
        .collect()
}

/// `a`; `b` after `a`; `c` after `b` (indices 0, 1, 2: jobs are in name order).
fn chain() -> PipelineSpec {
    PipelineSpec::default()
        .job("a", "W", &[])
        .job("b", "W", &["a"])
        .job("c", "W", &["b"])
}

fn single() -> PipelineSpec {
    PipelineSpec::default().job("a", "W", &[])
}

#[test]
fn the_memory_store_keeps_what_was_committed_for_a_restarted_router() {
    let mut r = Rig::with_peers(1);
    let id = r.submit_planned(chain());
    let a = r.assigned().remove(0);
    r.succeed(a.job);
    assert!(r.store.commits() > 0);
    let again = RouterState::load_with_clock(
        Box::new(r.store.clone()),
        ClusterConfig::default(),
        Box::new(r.clock.clone()),
    )
    .unwrap();
    let s = again.pipelines[&id].status();
    assert_eq!(s.jobs["a"].state, JobState::Succeeded);
    assert_eq!(
        s.jobs["b"].state,
        JobState::Running,
        "armed b started with a"
    );
    assert_eq!(s.state, PipelineState::Running);
}
