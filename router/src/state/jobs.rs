//! Jobs and their attempts: submission, the job state machine (queued, waiting,
//! running, succeeded, failed, skipped, cancelled), fencing reports by attempt number,
//! retries with backoff, sensors' waits (a poke not met puts the job `waiting` until its
//! next poke through the delayed heap: no slot held, no failure counted, the poke left
//! out of the history; a schedule condition is checked here, in `release`), requeues,
//! timeouts, cancel and retry of a whole pipeline.

use std::cmp::Reverse;

use pypelinin_common::protocol::{
    check_output_size, Event, JobChange, JobRef, JobReport, PipelineId, ProtocolError, Reply,
    NOT_YET_KEY, TARGET_DONE_KEY,
};
use pypelinin_common::sensor::Condition;
use pypelinin_common::status::{JobState, PipelineState};
use pypelinin_common::{Data, Pipeline, PipelineSpec};
use tracing::{debug, info, info_span, warn};

use super::peers::Role;
use super::queue::{self, Ticket};
use super::{PeerId, PipelineEntry, Result, RouterState};
use crate::store::{JobRecord, PipelineRecord};

impl RouterState {
    pub(super) fn submit(&mut self, id: PipelineId, spec: PipelineSpec) -> Result<Reply> {
        let same = |known: &PipelineSpec| {
            if *known == spec {
                Reply::Submitted { id }
            } else {
                Reply::Error(ProtocolError::Conflict(format!(
                    "pipeline {id} exists with another spec"
                )))
            }
        };
        if let Some(p) = self.pipelines.get(&id) {
            return Ok(same(&p.rec.spec));
        }
        // A submit sent again after its pipeline finished (and left memory).
        match self.store.get_record(id) {
            Ok(None) => {}
            Ok(Some(_)) => {
                return Ok(match self.lookup(id) {
                    Ok(p) => same(&p.rec.spec),
                    Err(e) => Reply::Error(e),
                })
            }
            Err(e) => return Ok(Reply::Error(ProtocolError::Storage(e.to_string()))),
        }
        let dag = match Pipeline::new(spec) {
            Ok(d) => d,
            Err(e) => {
                info!(pipeline = %id, error = %e, "pipeline refused");
                return Ok(Reply::Error(ProtocolError::InvalidPipeline(e.to_string())));
            }
        };
        if let Some(e) = self.check_pools(&dag) {
            info!(pipeline = %id, error = %e, "pipeline refused");
            return Ok(Reply::Error(ProtocolError::InvalidPipeline(e)));
        }
        let rec = PipelineRecord {
            id,
            spec: dag.to_spec(),
            state: PipelineState::Queued,
            seq: self.next_seq,
            submitted_ms: self.clock.wall_ms(),
            finished_ms: None,
            origin: None,
            jobs: 0,
            done: 0,
            job_states: Vec::new(),
            logs: false,
        };
        self.next_seq += 1;
        let jobs = vec![JobRecord::new(); dag.len()];
        for i in 0..jobs.len() {
            self.dirty_jobs.push((id, i as u32));
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

    pub(super) fn job_done(&mut self, peer: &PeerId, reports: Vec<JobReport>) -> Result<Reply> {
        if self.broker_mut(peer).is_none() {
            return Ok(Reply::Error(ProtocolError::UnknownPeer));
        }
        self.report_messages += 1;
        self.job_reports += reports.len() as u64;
        let mut stale = Vec::new();
        for r in reports {
            let Some(b) = self.broker_mut(peer) else {
                break; // checked above; handling a report never drops a peer
            };
            if b.running.remove(&r.job) {
                b.observe(&r);
            }
            let broker = b.name.clone();
            // The attempt number and the broker's name fence the report: a broker whose
            // lease expired, or a report resent after a reconnect, changes nothing.
            if !self.is_current(&r.job, &broker) {
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

    pub(super) fn is_current(&self, r: &JobRef, broker: &str) -> bool {
        self.pipelines.get(&r.pipeline).is_some_and(|p| {
            p.jobs.get(r.job as usize).is_some_and(|j| {
                j.state == JobState::Running
                    && j.attempt() == r.attempt
                    && j.history.last().is_some_and(|a| a.broker == broker)
            })
        })
    }

    /// Records the outcome of attempt `r.job`, which the caller checked is current.
    pub(super) fn finish_attempt(&mut self, r: JobReport) -> Result<()> {
        let (id, i) = (r.job.pipeline, r.job.job);
        self.free_slots(id, i);
        let Some(p) = self.pipelines.get(&id) else {
            return Ok(());
        };
        let Some(started_ms) = p
            .jobs
            .get(i as usize)
            .and_then(|j| j.history.last())
            .map(|a| a.started_ms)
        else {
            return Ok(());
        };
        let name = p.dag.name(i).to_string();
        let _span =
            info_span!("job", pipeline = %id, job = %name, attempt = r.job.attempt).entered();
        let finished_ms = r.finished_ms.max(started_ms);
        let worker = p.dag.job(i).worker.clone();
        let now = self.clock.wall_ms();
        let mut result = r.result.and_then(|out| {
            check_output_size(&out)
                .map(|()| out)
                .map_err(|e| e.to_string())
        });
        let not_yet = match &result {
            Ok(out) if out.len() == 1 => out.get(NOT_YET_KEY).map(|v| match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            }),
            _ => None,
        };
        if let Some(what) = not_yet {
            match self.keep_waiting(id, i, what, now) {
                // A poke that found the condition not met: it leaves the history (its
                // number stays taken), the job waits for its next poke, no slot held.
                None => {
                    if let Some(j) = self
                        .pipelines
                        .get_mut(&id)
                        .and_then(|p| p.jobs.get_mut(i as usize))
                    {
                        j.history.pop();
                        j.pokes += 1;
                        self.store.put_job(id, i, j)?;
                    }
                    return Ok(());
                }
                Some(timed_out) => result = Err(timed_out),
            }
        } else {
            self.record_attempt(worker, (finished_ms - started_ms) as f64 / 1000.0);
        }
        let Some(j) = self
            .pipelines
            .get_mut(&id)
            .and_then(|p| p.jobs.get_mut(i as usize))
        else {
            return Ok(());
        };
        j.waiting_since_ms = None;
        j.waiting_for = None;
        j.wait_checks = 0;
        let Some(last) = j.history.last_mut() else {
            return Ok(());
        };
        last.finished_ms = Some(finished_ms);
        match result {
            Ok(output) if output.len() == 1 && output.contains_key(TARGET_DONE_KEY) => {
                info!(target = %output[TARGET_DONE_KEY], "target exists: not run");
                j.state = JobState::SkippedDone;
                j.error = None;
                self.store.put_output(id, i, &Data::new())?;
            }
            Ok(output) => {
                j.state = JobState::Succeeded;
                j.error = None;
                self.store.put_output(id, i, &output)?;
            }
            Err(error) => {
                last.error = Some(error.clone());
                return self.job_failed(id, i, error);
            }
        }
        let state = j.state;
        self.job_final(id, i, state)
    }

    /// Counts a failure of job `i`: queued again after its backoff while retries are
    /// left, failed for good otherwise.
    pub(super) fn job_failed(&mut self, id: PipelineId, i: u32, error: String) -> Result<()> {
        let now = self.clock.wall_ms();
        let Some(p) = self.pipelines.get_mut(&id) else {
            return Ok(());
        };
        let retries = p.dag.retries(i);
        let delay = p.dag.retry_delay_ms(i);
        let Some(j) = p.jobs.get_mut(i as usize) else {
            return Ok(());
        };
        j.error = Some(error.clone());
        j.failures += 1;
        if j.failures <= retries {
            let backoff = delay.saturating_mul(1u64 << (j.failures - 1).min(20));
            j.state = JobState::Queued;
            j.not_before_ms = now + backoff;
            info!(%error, retry_in_ms = backoff, "attempt failed, will retry");
            let nb = j.not_before_ms;
            self.store
                .put_job(id, i, &self.pipelines[&id].jobs[i as usize])?;
            self.schedule(id, i, nb);
            self.notify_retrying(id, i, &error);
            return Ok(());
        }
        warn!(%error, "job failed");
        j.state = JobState::Failed;
        self.job_final(id, i, JobState::Failed)
    }

    /// Job `i`'s condition (`what`, as checked) did not hold at `now`: it waits for its
    /// next poke, or, past its wait's timeout, the error to fail it with.
    fn keep_waiting(&mut self, id: PipelineId, i: u32, what: String, now: u64) -> Option<String> {
        let p = self.pipelines.get_mut(&id)?;
        let (interval, timeout) = p
            .dag
            .job(i)
            .wait_for
            .as_ref()
            .map_or((1, 0), |w| (w.poke_interval_ms(), w.timeout_ms()));
        let j = p.jobs.get_mut(i as usize)?;
        let since = *j.waiting_since_ms.get_or_insert(now);
        let waited = now.saturating_sub(since);
        if waited >= timeout {
            warn!(pipeline = %id, job = i, %what, waited_ms = waited, "wait timed out");
            j.waiting_since_ms = None;
            j.waiting_for = None;
            j.wait_checks = 0;
            return Some(format!(
                "waited {} for {what}: timed out",
                pypelinin_common::render::duration(waited)
            ));
        }
        j.state = JobState::Waiting;
        j.not_before_ms = now.saturating_add(interval);
        j.wait_checks += 1;
        debug!(pipeline = %id, job = i, %what, checks = j.wait_checks, "condition not met yet");
        j.waiting_for = Some(what);
        self.dirty_jobs.push((id, i));
        self.delayed
            .push(Reverse((now.saturating_add(interval), id, i)));
        None
    }

    /// A job's delay is over (retry backoff, next poke, or a condition the router
    /// checks): it goes to the run queue, unless it waits for a schedule's run, which
    /// is checked here.
    pub(super) fn release(&mut self, id: PipelineId, i: u32) -> Result<()> {
        let Some(p) = self.pipelines.get(&id) else {
            return Ok(());
        };
        let Some(j) = p.jobs.get(i as usize) else {
            return Ok(());
        };
        if !matches!(j.state, JobState::Queued | JobState::Waiting) {
            return Ok(()); // cancelled meanwhile
        }
        let upstream = match p.dag.job(i).wait_for.as_ref().map(|w| w.condition()) {
            Some(Condition::Schedule(s)) => s.to_string(),
            _ => {
                self.push_queue(id, i);
                return Ok(());
            }
        };
        let _span = info_span!("job", pipeline = %id, job = %p.dag.name(i)).entered();
        let met = match &p.rec.origin {
            None => {
                let error = format!(
                    "waits for a run of schedule {upstream} for the same logical date, \
                     but its pipeline is not a scheduled run"
                );
                return self.job_failed(id, i, error);
            }
            Some(o) => self.schedule_run_succeeded(&upstream, o.logical_date),
        };
        if met {
            if let Some(j) = self
                .pipelines
                .get_mut(&id)
                .and_then(|p| p.jobs.get_mut(i as usize))
            {
                j.state = JobState::Queued;
                j.waiting_since_ms = None;
                j.waiting_for = None;
                j.wait_checks = 0;
                self.dirty_jobs.push((id, i));
            }
            self.push_queue(id, i);
            return Ok(());
        }
        let what = format!("a successful run of schedule {upstream} for the same logical date");
        match self.keep_waiting(id, i, what, self.clock.wall_ms()) {
            None => Ok(()),
            Some(timed_out) => self.job_failed(id, i, timed_out),
        }
    }

    /// Job `i` is ready to start: into its worker's run queue, ordered by its
    /// effective priority (aged from now) and then by arrival.
    fn push_queue(&mut self, id: PipelineId, i: u32) {
        let dag = &self.pipelines[&id].dag;
        let ticket = Ticket {
            key: queue::key(
                dag.effective_priority(i),
                self.clock.wall_ms(),
                self.aging_ms,
            ),
            seq: self.next_ticket,
            id,
            job: i,
        };
        self.next_ticket += 1;
        let worker = dag.job(i).worker.clone();
        self.queues.entry(worker).or_default().push(ticket);
    }

    /// Records that job `i` reached a final state and tells its pipeliner.
    pub(super) fn job_final(&mut self, id: PipelineId, i: u32, state: JobState) -> Result<()> {
        let Some(p) = self.pipelines.get_mut(&id) else {
            return Ok(());
        };
        p.done += 1;
        self.dirty_jobs.push((id, i));
        if let Some(owner) = p.owner.clone() {
            self.changes.entry(owner).or_default().push(JobChange {
                pipeline: id,
                job: i,
                state,
            });
        }
        // A cancelled job comes only from a cancel, which starts nothing new.
        if state == JobState::Cancelled {
            return Ok(());
        }
        // What the pipeliner asked ahead happens in this very turn: armed children whose
        // trigger rule this end makes hold start (after any end: a cleanup job runs after
        // a failure), and the pipeline closes if every job has succeeded.
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
        if state.is_success() {
            self.close_if_all_succeeded(id)?;
        }
        Ok(())
    }

    /// Job `i` may run from `not_before_ms` on: to the run queue now, or to the delayed
    /// heap. A job whose condition the router checks always goes through the heap, so
    /// that the next tick checks it ([`RouterState::release`]).
    pub(super) fn schedule(&mut self, id: PipelineId, i: u32, not_before_ms: u64) {
        let now = self.clock.wall_ms();
        let router_checks = self.pipelines[&id]
            .dag
            .job(i)
            .wait_for
            .as_ref()
            .is_some_and(|w| w.checked_by_router());
        if not_before_ms > now || router_checks {
            self.delayed.push(Reverse((not_before_ms.max(now), id, i)));
        } else {
            self.push_queue(id, i);
        }
    }

    /// Runs again the jobs of a finished pipeline that did not succeed, or the named
    /// ones, and in either case their descendants; what succeeded otherwise is kept.
    pub(super) fn retry(&mut self, id: PipelineId, names: Vec<String>) -> Result<Reply> {
        if !self.revive(id) {
            return Ok(match self.lookup(id) {
                Err(e) => Reply::Error(e),
                Ok(_) => Reply::Error(ProtocolError::UnknownPipeline(id)),
            });
        }
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
            // With trigger rules a job may have run after one that did not succeed (a
            // cleanup job after a failure): it runs again after the new attempt, like
            // the descendants of a job retried by name.
            // One walk from all of them at once: a long chain under an early failure
            // is walked once, not once per skipped job.
            let mut seen = vec![false; p.jobs.len()];
            let mut stack: Vec<u32> = (0..p.jobs.len() as u32)
                .filter(|&i| !p.jobs[i as usize].state.is_success())
                .collect();
            while let Some(i) = stack.pop() {
                if !std::mem::replace(&mut seen[i as usize], true) {
                    targets.push(i);
                    stack.extend_from_slice(p.dag.children(i));
                }
            }
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
        let Some(p) = self.pipelines.get_mut(&id) else {
            return Ok(Reply::Error(ProtocolError::UnknownPipeline(id)));
        };
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
            j.waiting_since_ms = None;
            j.waiting_for = None;
            j.wait_checks = 0;
            self.dirty_jobs.push((id, i));
        }
        p.rec.state = PipelineState::Queued;
        p.rec.finished_ms = None;
        p.armed.fill(false);
        p.close_on_success = false;
        self.dirty_pipelines.insert(p.rec.id);
        self.unowned.push_back(id);
        self.schedule_run_reopened(id);
        Ok(Reply::Status(self.pipelines[&id].status()))
    }

    /// Cancels a pipeline: queued jobs never start, running ones are revoked.
    pub(super) fn cancel(&mut self, id: PipelineId) -> Result<Reply> {
        let Some(p) = self.pipelines.get(&id) else {
            // Not in memory: finished already, or unknown.
            return Ok(match self.lookup(id) {
                Ok(p) => Reply::Status(p.status()),
                Err(e) => Reply::Error(e),
            });
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
                    self.free_slots(id, i);
                }
                let now = self.clock.wall_ms();
                let Some(j) = self
                    .pipelines
                    .get_mut(&id)
                    .and_then(|p| p.jobs.get_mut(i as usize))
                else {
                    continue;
                };
                if state == JobState::Running {
                    if let Some(last) = j.history.last_mut() {
                        last.finished_ms = Some(now);
                        last.error = Some("cancelled".into());
                    }
                }
                j.state = JobState::Cancelled;
                j.error = Some("cancelled".into());
                self.job_final(id, i, JobState::Cancelled)?;
            }
            self.forget_capped(id);
            self.close_pipeline(id, PipelineState::Cancelled)?;
        }
        Ok(Reply::Status(self.pipelines[&id].status()))
    }

    /// Tells the broker running job `i` to stop it.
    pub(super) fn revoke(&mut self, id: PipelineId, i: u32) {
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
    pub(super) fn overdue(&mut self, id: PipelineId, i: u32, attempt: u32) -> Result<()> {
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
            finished_ms: self.clock.wall_ms(),
            result: Err(format!(
                "timed out after {t} ms (no report from its broker within a lease after that)"
            )),
        })
    }

    /// Gives a running attempt back to the queue (its broker is gone); the attempt
    /// number moves on, so a late report from the old broker is stale.
    pub(super) fn requeue(&mut self, id: PipelineId, i: u32, why: &str) -> Result<()> {
        let Some(p) = self.pipelines.get_mut(&id) else {
            return Ok(());
        };
        let j = &mut p.jobs[i as usize];
        if j.state != JobState::Running {
            return Ok(());
        }
        if let Some(last) = j.history.last_mut() {
            last.finished_ms = Some(self.clock.wall_ms());
            last.error = Some(format!("lost: {why}"));
        }
        j.state = JobState::Queued;
        j.not_before_ms = 0;
        self.store
            .put_job(id, i, &self.pipelines[&id].jobs[i as usize])?;
        self.free_slots(id, i);
        self.schedule(id, i, 0);
        Ok(())
    }
}
