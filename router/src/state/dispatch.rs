//! Dispatch: matching queued jobs with brokers' free slots (and the prefetch allowed
//! beyond them), and open pipelines with pipeliners.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::time::Duration;

use pypelinin_common::protocol::{Assignment, JobInfo, JobRef, PipelineId, PipelineSnapshot};
use pypelinin_common::status::{Attempt, JobState, PipelineState};

use super::peers::{Peer, Role};
use super::queue::Ticket;
use super::{peer_timeout, PeerId, Result, RouterState};

impl RouterState {
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
                // The best head among the queues of the broker's workers.
                let mut best: Option<(usize, Ticket)> = None;
                for (k, w) in b.workers.iter().enumerate() {
                    if let Some(t) = self.queues.get(w).and_then(|q| q.peek()) {
                        if best.is_none_or(|(_, b)| t > b) {
                            best = Some((k, t));
                        }
                    }
                }
                let Some((k, ticket)) = best else { break };
                if let Some(q) = self.queues.get_mut(&b.workers[k]) {
                    q.pop();
                }
                let (id, i) = (ticket.id, ticket.job);
                let runnable = self.pipelines.get(&id).is_some_and(|p| {
                    matches!(
                        p.jobs[i as usize].state,
                        JobState::Queued | JobState::Waiting
                    )
                });
                if !runnable {
                    continue; // cancelled while it waited in the queue
                }
                if !self.admit(ticket) {
                    continue; // parked until its pool or pipeline has room
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
                let Some(a) = self.start_attempt(id, i, name, queued_for)? else {
                    self.free_slots(id, i);
                    continue;
                };
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
    pub(super) fn longest_wait(&self, peer: &PeerId) -> Option<u64> {
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
    pub(super) fn start_attempt(
        &mut self,
        id: PipelineId,
        i: u32,
        broker: String,
        queued_for: Option<u64>,
    ) -> Result<Option<Assignment>> {
        let Some(p) = self.pipelines.get_mut(&id) else {
            return Ok(None);
        };
        let Some(j) = p.jobs.get_mut(i as usize) else {
            return Ok(None);
        };
        let number = j.attempt() + 1;
        j.state = JobState::Running;
        j.history.push(Attempt {
            number,
            broker,
            started_ms: self.clock.wall_ms(),
            finished_ms: None,
            error: None,
        });
        self.dirty_jobs.push((id, i));
        let late_after = p.dag.job(i).warn_after_ms.map(|_| number);
        if let (Some(t), Some(q)) = (p.dag.timeout_ms(i), queued_for) {
            // A backstop: brokers stop a job at its timeout and report; this fires only
            // if no report came within a lease after that (and after its longest wait
            // in the broker's queue). Without a bound on that wait, the broker's own
            // timeout and its lease are what stop the attempt.
            let at =
                self.clock.instant() + Duration::from_millis(t.saturating_add(q)) + peer_timeout();
            self.deadlines.push(Reverse((at, id, i, number)));
        }
        if let Some(n) = late_after {
            self.arm_late(id, i, n);
        }
        let p = &self.pipelines[&id];
        let mut parents = BTreeMap::new();
        let of = p.dag.parents(i);
        for (&q, out) in of.iter().zip(self.store.get_outputs(id, of)?) {
            if let Some(out) = out {
                parents.insert(p.dag.name(q).to_string(), out);
            }
        }
        let job = JobRef {
            pipeline: id,
            job: i,
            attempt: number,
        };
        Ok(Some(Assignment {
            job,
            info: JobInfo {
                pipeline: id,
                name: p.dag.name(i).to_string(),
                worker: p.dag.job(i).worker.clone(),
                attempt: number,
                data: p.dag.job_data(i),
                parents,
                timeout_ms: p.dag.timeout_ms(i),
                target: if p.rec.spec.ignore_targets {
                    None
                } else {
                    p.dag.job(i).target.clone()
                },
                wait_for: p
                    .dag
                    .job(i)
                    .wait_for
                    .clone()
                    .filter(|w| !w.checked_by_router()),
            },
        }))
    }

    pub(super) fn assign_pipelines(&mut self) -> Result<()> {
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
            let Some(p) = self.pipelines.get_mut(&id) else {
                continue; // cannot be: checked open above
            };
            p.owner = Some(peer.clone());
            if p.rec.state == PipelineState::Queued {
                p.rec.state = PipelineState::Running;
                self.dirty_pipelines.insert(p.rec.id);
            }
            if let Some(snap) = self.snapshot(id) {
                self.takes.entry(peer).or_default().push(snap);
            }
            // Roots are ready from the start, whatever their trigger rule, and the
            // pipeliner's first walk asks for them: they are queued now, in the turn
            // it is handed over (for a new pipeline, the turn that accepted it), not a
            // round trip later. Its walk asks again, and a job is queued once.
            let roots: Vec<u32> = self.pipelines[&id].dag.roots().collect();
            for i in roots {
                self.enqueue_if_ready(id, i);
            }
        }
        Ok(())
    }

    pub(super) fn snapshot(&self, id: PipelineId) -> Option<PipelineSnapshot> {
        let p = self.pipelines.get(&id)?;
        Some(PipelineSnapshot {
            id,
            spec: p.rec.spec.clone(),
            states: p.jobs.iter().map(|j| j.state).collect(),
        })
    }
}
