//! "Why is it waiting?": a reason for every job that could run but does not yet, read
//! off the state that holds it back (its parents, its retry delay, the brokers, the
//! run queue), so that `pypelinin status`, the API and the dashboard answer the first
//! question users of a shared cluster ask. Reasons are worked out when a status is
//! asked for, never stored: they cost nothing on the dispatch path.

use foldhash::HashMap;

use pypelinin_common::protocol::PipelineId;
use pypelinin_common::render;
use pypelinin_common::status::{JobState, PipelineStatus};

use super::peers::Role;
use super::RouterState;

impl RouterState {
    /// The status of pipeline `id`, each queued job saying why it is not running
    /// (`waiting_for`); jobs `waiting` on a condition already say what for.
    pub(super) fn pipeline_status(&self, id: PipelineId) -> Option<PipelineStatus> {
        let p = self.pipelines.get(&id)?;
        let mut status = p.status();
        if p.rec.state.is_final() {
            return Some(status);
        }
        let now = self.clock.wall_ms();
        let mut queued = self.queued_reasons(id);
        for (i, name) in p.dag.names().iter().enumerate() {
            if p.jobs[i].state != JobState::Queued {
                continue;
            }
            if let (Some(reason), Some(job)) = (
                self.why_queued(id, i as u32, now, &mut queued),
                status.jobs.get_mut(name),
            ) {
                job.waiting_for = Some(reason);
            }
        }
        Some(status)
    }

    /// Why job `i` of pipeline `id`, queued, is not running at wall time `now`;
    /// `queued` holds the reasons of the pipeline's jobs in the run queue and the pools
    /// ([`RouterState::queued_reasons`]).
    fn why_queued(
        &self,
        id: PipelineId,
        i: u32,
        now: u64,
        queued: &mut HashMap<u32, String>,
    ) -> Option<String> {
        let p = self.pipelines.get(&id)?;
        let j = p.jobs.get(i as usize)?;
        if j.state != JobState::Queued {
            return None;
        }
        if !j.enqueued {
            let open: Vec<u32> = p
                .dag
                .parents(i)
                .iter()
                .copied()
                .filter(|&q| !p.jobs[q as usize].state.is_final())
                .collect();
            if !open.is_empty() {
                let names = |with_state: bool| {
                    open.iter()
                        .map(|&q| {
                            let name = p.dag.name(q);
                            match with_state {
                                true => format!("{name} ({})", p.jobs[q as usize].state.as_str()),
                                false => name.to_string(),
                            }
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let all_running = open
                    .iter()
                    .all(|&q| p.jobs[q as usize].state == JobState::Running);
                return Some(if all_running {
                    format!("parents running: {}", names(false))
                } else {
                    format!("parents not done: {}", names(true))
                });
            }
            if p.owner.is_none() {
                let pipeliners = self
                    .peers
                    .values()
                    .filter(|x| matches!(x.role, Role::Pipeliner(_)))
                    .count();
                return Some(match pipeliners {
                    0 => "no pipeliner is connected to walk its pipeline".into(),
                    n => format!("its pipeline waits for one of {n} pipeliners, all at capacity"),
                });
            }
            return Some("its pipeliner is deciding whether it runs".into());
        }
        if j.not_before_ms > now {
            return Some(format!(
                "retry {} at {}",
                j.failures,
                clock_time(j.not_before_ms, now)
            ));
        }
        let worker = &p.dag.job(i).worker;
        let (mut offering, mut serving, mut busy, mut slots) = (0, 0, 0u32, 0u32);
        for peer in self.peers.values() {
            let Role::Broker(b) = &peer.role else {
                continue;
            };
            if !b.workers.iter().any(|w| w == worker) {
                continue;
            }
            offering += 1;
            if !b.draining {
                serving += 1;
                busy += (b.running.len() as u32).min(b.slots);
                slots += b.slots;
            }
        }
        if offering == 0 {
            return Some(format!("no connected broker offers worker {worker}"));
        }
        if serving == 0 {
            return Some(format!("every broker offering worker {worker} is draining"));
        }
        if let Some(reason) = queued.remove(&i) {
            return Some(reason);
        }
        Some(format!(
            "{busy}/{slots} slots busy on the {serving} broker{} offering worker {worker}",
            if serving == 1 { "" } else { "s" }
        ))
    }
}

/// `at` as `HH:MM:SS UTC` when it falls on the same UTC day as `now`, else with its date.
fn clock_time(at: u64, now: u64) -> String {
    let (at_text, now_text) = (render::utc_time(at), render::utc_time(now));
    match (at_text.split_once(' '), now_text.split_once(' ')) {
        (Some((day, time)), Some((today, _))) if day == today => format!("{time} UTC"),
        _ => format!("{at_text} UTC"),
    }
}
