//! Advancing pipelines: the pipeliner's decisions (skip, enqueue, arm, finish), what a
//! job's end starts on its own (armed children whose trigger rule now holds), and
//! closing a pipeline.

use pypelinin_common::dag::{self, Readiness};
use pypelinin_common::protocol::{Advance, Event, PipelineId, ProtocolError, Reply};
use pypelinin_common::status::{JobState, PipelineState};
use tracing::{debug, info, info_span};

use super::peers::{Peer, Role};
use super::{PeerId, Result, RouterState};

impl RouterState {
    pub(super) fn advance(&mut self, peer: &PeerId, list: Vec<Advance>) -> Result<Reply> {
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

    pub(super) fn apply_advance(&mut self, a: Advance) -> Result<()> {
        let id = a.pipeline;
        let _span = info_span!("pipeline", pipeline = %id).entered();
        // Skips first: a job they make ready (a cleanup job under a skipped parent) may
        // be among the enqueues below.
        for i in a.skip {
            let Some(p) = self.pipelines.get(&id) else {
                return Ok(());
            };
            let Some(j) = p.jobs.get(i as usize) else {
                continue;
            };
            let parents = p.dag.parents(i);
            let rule = p.dag.job(i).trigger_rule;
            let blocked_by =
                match dag::readiness(rule, parents.iter().map(|&q| p.jobs[q as usize].state)) {
                    Readiness::Blocked { by } => Some(parents[by]),
                    Readiness::Ready | Readiness::Waiting => None,
                };
            let (Some(q), false) = (blocked_by, j.enqueued || j.state != JobState::Queued) else {
                debug!(job = i, "skip ignored: job can still run");
                continue;
            };
            let mut reason = format!(
                "not run: {} {}",
                p.dag.name(q),
                p.jobs[q as usize].state.as_str()
            );
            if !rule.is_default() {
                reason = format!("{reason} (trigger_rule {})", rule.as_str());
            }
            let Some(j) = self
                .pipelines
                .get_mut(&id)
                .and_then(|p| p.jobs.get_mut(i as usize))
            else {
                return Ok(());
            };
            j.state = JobState::Skipped;
            j.error = Some(reason);
            self.job_final(id, i, JobState::Skipped)?;
        }
        for i in a.enqueue {
            if !self.enqueue_if_ready(id, i) {
                debug!(job = i, "enqueue ignored: not ready or already queued");
            }
        }
        // advance() found the pipeline, and pipelines are never removed: the lookups
        // below that give up when it is missing never do.
        for i in a.after {
            let Some(p) = self.pipelines.get_mut(&id) else {
                return Ok(());
            };
            if let Some(armed) = p.armed.get_mut(i as usize) {
                *armed = true;
                self.enqueue_if_ready(id, i);
            }
        }
        if a.close_on_success {
            let Some(p) = self.pipelines.get_mut(&id) else {
                return Ok(());
            };
            p.close_on_success = true;
            self.close_if_all_succeeded(id)?;
        }
        if a.finish {
            let Some(p) = self.pipelines.get(&id) else {
                return Ok(());
            };
            let outcome = dag::pipeline_outcome(&p.dag, p.jobs.iter().map(|j| j.state));
            let (Some(state), false) = (outcome, p.rec.state.is_final()) else {
                debug!("finish ignored: jobs still open, or the pipeline closed");
                return Ok(());
            };
            self.close_pipeline(id, state)?;
        }
        Ok(())
    }

    /// Puts job `i` in the run queue if it waits and its trigger rule holds.
    pub(super) fn enqueue_if_ready(&mut self, id: PipelineId, i: u32) -> bool {
        let Some(p) = self.pipelines.get(&id) else {
            return false;
        };
        let ready = p.jobs.get(i as usize).is_some_and(|j| {
            j.state == JobState::Queued
                && !j.enqueued
                && dag::readiness(
                    p.dag.job(i).trigger_rule,
                    p.dag.parents(i).iter().map(|&q| p.jobs[q as usize].state),
                ) == Readiness::Ready
        });
        if let (true, Some(j)) = (
            ready,
            self.pipelines
                .get_mut(&id)
                .and_then(|p| p.jobs.get_mut(i as usize)),
        ) {
            j.enqueued = true;
            self.dirty_jobs.push((id, i));
            self.schedule(id, i, 0);
        }
        ready
    }

    /// Closes the pipeline if its pipeliner asked for that and every job succeeded: the
    /// one end the router decides alone, in the turn of the last success, since the
    /// pipeliner then sends no `finish`. Any other end (a failure, allowed or not, a
    /// skip) waits for the pipeliner's `finish`, and `dag::pipeline_outcome` decides it.
    pub(super) fn close_if_all_succeeded(&mut self, id: PipelineId) -> Result<()> {
        let p = &self.pipelines[&id];
        let close = p.close_on_success
            && !p.rec.state.is_final()
            && p.done as usize == p.jobs.len()
            && p.jobs.iter().all(|j| j.state.is_success());
        if close {
            debug_assert_eq!(
                dag::pipeline_outcome(&p.dag, p.jobs.iter().map(|j| j.state)),
                Some(PipelineState::Succeeded)
            );
            self.close_pipeline(id, PipelineState::Succeeded)?;
        }
        Ok(())
    }

    pub(super) fn close_pipeline(&mut self, id: PipelineId, state: PipelineState) -> Result<()> {
        let Some(p) = self.pipelines.get_mut(&id) else {
            return Ok(());
        };
        let finished = self.clock.wall_ms();
        p.rec.state = state;
        p.rec.finished_ms = Some(finished);
        self.dirty_pipelines.insert(p.rec.id);
        self.closed.push(id);
        info!(pipeline = %id, state = state.as_str(), ms = finished.saturating_sub(p.rec.submitted_ms), "pipeline finished");
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
            if done != Some(true) {
                continue;
            }
            if let Some(w) = self.waiters.remove(&key) {
                self.answer(&w.to, &w.ids, w.outputs)?;
            }
        }
        self.notify_closed(id, state);
        self.schedule_run_closed(id)
    }
}
