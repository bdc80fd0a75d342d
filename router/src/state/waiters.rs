//! Waiters and read-only replies: clients waiting for pipelines to finish, and the
//! statuses, results, outputs and listings they are answered with.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pypelinin_common::protocol::{
    self, PipelineId, PipelineResult, ProtocolError, Reply, MAX_WAIT_MS,
};
use pypelinin_common::status::JobState;

use super::views::{FrameView, ReplyView, StatusView};
use super::{PipelineEntry, ReplyTo, Result, RouterState};
use pypelinin_common::Data;

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
                Some(p) if !p.rec.state.is_final() => pending += 1,
                Some(_) => {}
                // Not in memory: finished, if the store knows it.
                None => match self.store.get_record(*id) {
                    Ok(Some(_)) => {}
                    Ok(None) => return Ok(Some(Reply::Error(ProtocolError::UnknownPipeline(*id)))),
                    Err(e) => return Ok(Some(Reply::Error(ProtocolError::Storage(e.to_string())))),
                },
            }
        }
        if pending == 0 || timeout_ms == 0 {
            self.answer(to, &ids, outputs)?;
            return Ok(None);
        }
        let key = self.next_waiter;
        self.next_waiter += 1;
        for id in &ids {
            if self
                .pipelines
                .get(id)
                .is_some_and(|p| !p.rec.state.is_final())
            {
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

    /// Answers a wait: statuses, or states with outputs. Statuses are encoded from the
    /// router's records as they are, not copied first ([`super::views`]).
    pub(super) fn answer(&mut self, to: &ReplyTo, ids: &[PipelineId], outputs: bool) -> Result<()> {
        let reply = if outputs {
            self.results(ids)?
        } else {
            let found: std::result::Result<Vec<_>, _> =
                ids.iter().map(|id| self.lookup(*id)).collect();
            match found {
                Ok(found) => {
                    let views = found.iter().map(|p| StatusView::of(p)).collect();
                    let payload =
                        protocol::encode(to.id, &FrameView::Reply(ReplyView::Statuses(views)));
                    drop(found);
                    self.reply_frame(to, payload);
                    return Ok(());
                }
                Err(e) => Reply::Error(e),
            }
        };
        self.reply(to, reply);
        Ok(())
    }

    /// Pipelines' states with their succeeded jobs' outputs and failed jobs' errors.
    fn results(&self, ids: &[PipelineId]) -> Result<Reply> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let p = match self.lookup(*id) {
                Ok(p) => p,
                Err(e) => return Ok(Reply::Error(e)),
            };
            let mut result = PipelineResult {
                id: *id,
                state: p.rec.state,
                outputs: self.succeeded_outputs(*id, &p)?,
                failed: Vec::new(),
            };
            for (i, j) in p.jobs.iter().enumerate() {
                if j.state == JobState::Failed {
                    let name = p.dag.name(i as u32).to_string();
                    result
                        .failed
                        .push((name, j.error.clone().unwrap_or_default()));
                }
            }
            out.push(result);
        }
        Ok(Reply::Results(out))
    }

    pub(super) fn outputs(&self, id: PipelineId) -> Result<Reply> {
        let p = match self.lookup(id) {
            Ok(p) => p,
            Err(e) => return Ok(Reply::Error(e)),
        };
        Ok(Reply::Outputs(self.succeeded_outputs(id, &p)?))
    }

    /// The outputs of a pipeline's succeeded jobs, by job name, read together.
    fn succeeded_outputs(
        &self,
        id: PipelineId,
        p: &PipelineEntry,
    ) -> Result<BTreeMap<String, Data>> {
        let succeeded: Vec<u32> = (0..p.jobs.len() as u32)
            .filter(|&i| p.jobs[i as usize].state.is_success())
            .collect();
        let outputs = self.store.get_outputs(id, &succeeded)?;
        Ok(succeeded
            .into_iter()
            .zip(outputs)
            .filter_map(|(i, o)| Some((p.dag.name(i).to_string(), o?)))
            .collect())
    }
}
