//! Notifications, as the router's state sees them: which events make them (a pipeline
//! closed, a job to be retried, a job running late), who they go to, the late timers,
//! and the outbox's place in a turn (written at commit, handed out after it). The
//! outbox itself, and the threads that deliver, are in [`crate::notify`].

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};

use pypelinin_common::notify::{NotificationStatus, NotifyEvent, MAX_NOTIFICATIONS_SHOWN};
use pypelinin_common::protocol::PipelineId;
use pypelinin_common::status::{JobState, PipelineState};
use tracing::{info, warn};

use super::{Result, RouterState};
use crate::notify::{Channel, Delivery, Message, NotifyDefaults, Outbox, Outcome, RetryPolicy};

/// The notification part of the router's state.
#[derive(Default)]
pub(super) struct NotifyState {
    outbox: Outbox,
    defaults: NotifyDefaults,
    /// When running attempts become late: (wall ms, pipeline, job, attempt number).
    late: BinaryHeap<Reverse<(u64, PipelineId, u32, u32)>>,
}

impl RouterState {
    /// Sets the router-wide channels and the retry policy (from the router's flags).
    pub fn set_notify(&mut self, defaults: NotifyDefaults, policy: RetryPolicy) {
        self.notify.defaults = defaults;
        self.notify.outbox.policy = policy;
    }

    /// Loads the outbox and arms the late timers of the attempts still running; part
    /// of [`RouterState::load`].
    pub(super) fn load_notifications(&mut self) -> Result<()> {
        let policy = self.notify.outbox.policy;
        self.notify.outbox = Outbox::load(self.store.load_notifications()?, policy);
        let mut late = Vec::new();
        for (id, p) in &self.pipelines {
            if p.rec.state.is_final() {
                continue;
            }
            for (i, j) in p.jobs.iter().enumerate() {
                let warn = p.dag.job(i as u32).warn_after_ms;
                if let (JobState::Running, false, Some(w), Some(a)) =
                    (j.state, j.late, warn, j.history.last())
                {
                    late.push((a.started_ms.saturating_add(w), *id, i as u32, j.attempt()));
                }
            }
        }
        self.notify.late.extend(late.into_iter().map(Reverse));
        if self.notify.outbox.pending() > 0 {
            info!(
                pending = self.notify.outbox.pending(),
                "notifications to deliver again"
            );
        }
        Ok(())
    }

    /// Attempt `attempt` of job `i` just started: it is not late, and becomes late
    /// after the job's `warn_after_ms`.
    pub(super) fn arm_late(&mut self, id: PipelineId, i: u32, attempt: u32) {
        let now = self.clock.wall_ms();
        let Some(p) = self.pipelines.get_mut(&id) else {
            return;
        };
        let warn = p.dag.job(i).warn_after_ms;
        if let Some(j) = p.jobs.get_mut(i as usize) {
            j.late = false;
        }
        if let Some(w) = warn {
            self.notify
                .late
                .push(Reverse((now.saturating_add(w), id, i, attempt)));
        }
    }

    /// Marks late the attempts that passed their warning time still running; part of
    /// [`RouterState::tick`].
    pub(super) fn tick_late(&mut self) {
        let now = self.clock.wall_ms();
        while let Some(Reverse((at, id, i, attempt))) = self.notify.late.peek().copied() {
            if at > now {
                break;
            }
            self.notify.late.pop();
            let Some(p) = self.pipelines.get_mut(&id) else {
                continue;
            };
            let warn = p.dag.job(i).warn_after_ms.unwrap_or(0);
            let name = p.dag.name(i).to_string();
            let Some(j) = p.jobs.get_mut(i as usize) else {
                continue;
            };
            if j.state != JobState::Running || j.attempt() != attempt || j.late {
                continue;
            }
            j.late = true;
            self.dirty_jobs.push((id, i));
            warn!(pipeline = %id, job = %name, attempt, warn_after_ms = warn, "job is late: still running past its warn_after_ms");
            let error = format!(
                "attempt {attempt} has run for more than {}",
                pypelinin_common::render::duration(warn)
            );
            self.notify_event(id, NotifyEvent::Late, Some(name), Some(error));
        }
    }

    /// Pipeline `id` closed as `state`.
    pub(super) fn notify_closed(&mut self, id: PipelineId, state: PipelineState) {
        let event = match state {
            PipelineState::Succeeded => NotifyEvent::Succeeded,
            PipelineState::Failed => NotifyEvent::Failed,
            PipelineState::Cancelled => NotifyEvent::Cancelled,
            PipelineState::Queued | PipelineState::Running => return,
        };
        if !self.anyone_hears(id, event) {
            return;
        }
        let error = self.pipelines.get(&id).and_then(|p| {
            p.jobs
                .iter()
                .enumerate()
                .find(|(_, j)| j.state == JobState::Failed)
                .map(|(i, j)| {
                    format!(
                        "job {}: {}",
                        p.dag.name(i as u32),
                        j.error.as_deref().unwrap_or("failed")
                    )
                })
        });
        self.notify_event(id, event, None, error);
    }

    /// Whether some channel hears of `event` of pipeline `id` (most pipelines have none:
    /// they cost a look at two lists).
    fn anyone_hears(&self, id: PipelineId, event: NotifyEvent) -> bool {
        let d = &self.notify.defaults;
        let defaults = d.events.contains(&event) && !(d.webhook.is_empty() && d.email.is_empty());
        defaults
            || self
                .pipelines
                .get(&id)
                .and_then(|p| p.rec.spec.notify.as_ref())
                .is_some_and(|n| n.wants(event))
    }

    /// Job `i` of `id` failed an attempt with `error` and will be tried again.
    pub(super) fn notify_retrying(&mut self, id: PipelineId, i: u32, error: &str) {
        if !self.anyone_hears(id, NotifyEvent::Retrying) {
            return;
        }
        let Some(p) = self.pipelines.get(&id) else {
            return;
        };
        let name = p.dag.name(i).to_string();
        self.notify_event(
            id,
            NotifyEvent::Retrying,
            Some(name),
            Some(error.to_string()),
        );
    }

    /// Puts one notification of `event` in the outbox per channel that hears of it.
    fn notify_event(
        &mut self,
        id: PipelineId,
        event: NotifyEvent,
        job: Option<String>,
        error: Option<String>,
    ) {
        let Some(p) = self.pipelines.get(&id) else {
            return;
        };
        let mut channels = BTreeSet::new();
        if let Some(n) = p.rec.spec.notify.as_ref().filter(|n| n.wants(event)) {
            channels.extend(n.webhook.iter().cloned().map(Channel::Webhook));
            channels.extend(n.email.iter().cloned().map(Channel::Email));
        }
        let d = &self.notify.defaults;
        if d.events.contains(&event) {
            channels.extend(d.webhook.iter().cloned().map(Channel::Webhook));
            channels.extend(d.email.iter().cloned().map(Channel::Email));
        }
        if channels.is_empty() {
            return;
        }
        let message = Message {
            event,
            pipeline: id,
            job,
            state: p.rec.state.as_str().to_string(),
            error,
            at_ms: self.clock.wall_ms(),
        };
        for c in channels {
            let r = self.notify.outbox.add(message.clone(), c);
            info!(pipeline = %id, event = %event, channel = %r.channel, id = %r.id, "notification queued");
        }
    }

    /// Writes the outbox's changes; part of [`RouterState::commit`].
    pub(super) fn write_notifications(&mut self) -> Result<()> {
        let (changed, removed) = self.notify.outbox.drain_changes();
        for r in changed {
            self.store.put_notification(r)?;
        }
        for seq in removed {
            self.store.remove_notification(seq)?;
        }
        Ok(())
    }

    /// The notifications due now, to hand to the delivery threads. Only after
    /// [`RouterState::commit`]: each was made durable first.
    pub fn take_due_notifications(&mut self) -> Vec<Delivery> {
        let now = self.clock.wall_ms();
        self.notify.outbox.take_due(now)
    }

    /// Applies what the delivery threads reported (made durable by the next commit).
    pub fn notification_outcomes(&mut self, outcomes: Vec<Outcome>) {
        let now = self.clock.wall_ms();
        for o in outcomes {
            if let Some(r) = self.notify.outbox.outcome(o, now) {
                let status = r.delivery.as_str();
                match &r.last_error {
                    Some(e) if status == "failed" => {
                        warn!(pipeline = %r.message.pipeline, event = %r.message.event, channel = %r.channel, attempts = r.attempts, error = %e, "notification failed")
                    }
                    _ => {
                        info!(pipeline = %r.message.pipeline, event = %r.message.event, channel = %r.channel, attempts = r.attempts, status, "notification updated")
                    }
                }
            }
        }
    }

    /// When the next notification try or late timer is due (wall ms).
    pub(super) fn notify_next_due(&self) -> Option<u64> {
        let late = self.notify.late.peek().map(|Reverse((t, ..))| *t);
        [late, self.notify.outbox.next_due()]
            .into_iter()
            .flatten()
            .min()
    }

    /// The latest notifications, newest first.
    pub(super) fn notifications(&self, limit: u32) -> Vec<NotificationStatus> {
        let limit = limit.min(MAX_NOTIFICATIONS_SHOWN) as usize;
        self.notify.outbox.latest(limit)
    }
}
