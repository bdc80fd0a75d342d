//! Waiters and read-only replies: clients waiting for pipelines to finish, and the
//! statuses, results, outputs and listings they are answered with.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pypelinin_common::protocol::{
    PipelineId, PipelineResult, PipelineSummary, ProtocolError, Reply, MAX_WAIT_MS,
};
use pypelinin_common::status::{JobState, PipelineState};

use super::{ReplyTo, Result, RouterState};

pub(super) struct Waiter {
    pub(super) to: ReplyTo,
    pub(super) ids: Vec<PipelineId>,
    pub(super) pending: usize,
    pub(super) deadline: Instant,
    pub(super) outputs: bool,
}

impl RouterState {
    pub(super) fn wait(
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
    pub(super) fn answer(&self, ids: &[PipelineId], outputs: bool) -> Result<Reply> {
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
                    s if s.is_success() => {
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

    pub(super) fn outputs(&self, id: PipelineId) -> Result<Reply> {
        let Some(p) = self.pipelines.get(&id) else {
            return Ok(Reply::Error(ProtocolError::UnknownPipeline(id)));
        };
        let mut out = BTreeMap::new();
        for (i, j) in p.jobs.iter().enumerate() {
            if j.state.is_success() {
                if let Some(o) = self.store.get_output(id, i as u32)? {
                    out.insert(p.dag.name(i as u32).to_string(), o);
                }
            }
        }
        Ok(Reply::Outputs(out))
    }

    pub(super) fn list(
        &self,
        limit: usize,
        state: Option<PipelineState>,
        schedule: Option<&str>,
        before: Option<u64>,
    ) -> Vec<PipelineSummary> {
        self.order
            .range(..before.unwrap_or(u64::MAX))
            .rev()
            .map(|(_, id)| id)
            .filter(|id| state.is_none_or(|s| self.pipelines[*id].rec.state == s))
            .filter(|id| {
                schedule.is_none_or(|name| {
                    let origin = self.pipelines[*id].rec.origin.as_ref();
                    origin.is_some_and(|o| o.schedule == name)
                })
            })
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
                    origin: p.rec.origin.clone(),
                    seq: p.rec.seq,
                }
            })
            .collect()
    }
}
