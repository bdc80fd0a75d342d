//! [`AsyncPipelineManager::events`]: a pipeline's job events, derived from its status.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use futures_util::Stream;

use pypelinin_common::protocol::PipelineId;
use pypelinin_common::status::{JobState, PipelineState, PipelineStatus};

use super::AsyncPipelineManager;
use crate::ClientError;

/// How often [`AsyncPipelineManager::events`] asks the router for a pipeline's status
/// when no broadcast says it finished: job changes are not broadcast, so polling is
/// what sees them; a broadcast that the pipeline finished cuts the pause short.
pub const EVENTS_POLL: Duration = Duration::from_millis(150);

/// A job's change of state, as seen by [`AsyncPipelineManager::events`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobEvent {
    /// The pipeline.
    pub pipeline: PipelineId,
    /// The job's name.
    pub job: String,
    /// The state it left.
    pub from: JobState,
    /// The state it entered.
    pub to: JobState,
    /// The attempt this change belongs to (1 for the first; 0 before any started).
    pub attempt: u32,
    /// The job's error, when it entered a failed, skipped, cancelled or queued (retry)
    /// state with one.
    pub error: Option<String>,
    /// When the router recorded the change (ms since the epoch), when it says.
    pub at_ms: Option<u64>,
    /// The pipeline's state in the status this change was read from: the last event of
    /// a stream carries the pipeline's final state.
    pub pipeline_state: PipelineState,
}

impl AsyncPipelineManager {
    /// The job events of a pipeline, in order, ending once the pipeline is final.
    ///
    /// The router broadcasts only pipeline-level news, and a broadcast may be lost, so
    /// the events are derived from its status, read every [`EVENTS_POLL`] (at once when
    /// a broadcast says the pipeline finished) and compared with the last one read.
    /// Because the final status is always read and compared, every job's final state
    /// is always reported. A change too quick to be seen between two reads is filled
    /// in: a job seen queued and then finished, with a new attempt, gets its `running`
    /// event first. Events read together are ordered by the router's timestamps.
    ///
    /// An item is an error when the router stops answering (after the patience of
    /// [`AsyncPipelineManager::set_patience`]); the stream ends after it.
    pub fn events(&self, id: PipelineId) -> impl Stream<Item = Result<JobEvent, ClientError>> {
        let follow = Follow {
            pm: self.clone(),
            diff: Diff::new(id),
            queue: VecDeque::new(),
            first: true,
            done: false,
        };
        futures_util::stream::unfold(follow, |mut f| async move {
            loop {
                if let Some(event) = f.queue.pop_front() {
                    return Some((Ok(event), f));
                }
                if f.done {
                    return None;
                }
                if !f.first {
                    if let Err(e) = f.pm.tick(f.diff.id, EVENTS_POLL).await {
                        f.done = true;
                        return Some((Err(e), f));
                    }
                }
                f.first = false;
                match f.pm.status(f.diff.id).await {
                    Ok(status) => {
                        f.queue.extend(f.diff.compare(&status));
                        f.done = status.state.is_final();
                    }
                    Err(e) => {
                        f.done = true;
                        return Some((Err(e), f));
                    }
                }
            }
        })
    }
}

/// The state of an [`AsyncPipelineManager::events`] stream.
struct Follow {
    pm: AsyncPipelineManager,
    diff: Diff,
    /// Events read but not yet yielded.
    queue: VecDeque<JobEvent>,
    first: bool,
    done: bool,
}

/// What was last read of a pipeline's jobs, to tell what changed since.
struct Diff {
    id: PipelineId,
    /// Each job's state and attempts when last read.
    seen: BTreeMap<String, (JobState, u32)>,
}

impl Diff {
    fn new(id: PipelineId) -> Self {
        Diff {
            id,
            seen: BTreeMap::new(),
        }
    }

    /// The changes from the last status read to `status`, in the order they happened.
    fn compare(&mut self, status: &PipelineStatus) -> Vec<JobEvent> {
        let mut batch = Vec::new();
        let pipeline = self.id;
        for (name, job) in &status.jobs {
            // Every job of a new pipeline starts queued, with no attempt.
            let (old, old_attempts) = self
                .seen
                .get(name)
                .copied()
                .unwrap_or((JobState::Queued, 0));
            let event = |from, to, at_ms, error| JobEvent {
                pipeline,
                job: name.clone(),
                from,
                to,
                attempt: job.attempts,
                error,
                at_ms,
                pipeline_state: status.state,
            };
            let mut from = old;
            let new_attempt = job.attempts > old_attempts;
            if new_attempt && job.state != JobState::Running {
                // The attempt started and ended between two reads.
                batch.push(event(from, JobState::Running, job.started_ms, None));
                from = JobState::Running;
            }
            if job.state != from || (job.state == JobState::Running && new_attempt) {
                let (at_ms, error) = match job.state {
                    JobState::Running => (job.started_ms, None),
                    JobState::Succeeded | JobState::SkippedDone => (job.finished_ms, None),
                    _ => (job.finished_ms, job.error.clone()),
                };
                batch.push(event(from, job.state, at_ms, error));
            }
            self.seen.insert(name.clone(), (job.state, job.attempts));
        }
        // Stable: changes without a time stay after the timed ones, in name order.
        batch.sort_by_key(|e| e.at_ms.unwrap_or(u64::MAX));
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pypelinin_common::status::JobStatus;
    use JobState::{Cancelled, Failed, Queued, Running, Skipped, Succeeded};

    fn job(state: JobState, attempts: u32, times: (Option<u64>, Option<u64>)) -> JobStatus {
        JobStatus {
            worker: "Noop".into(),
            state,
            attempts,
            error: matches!(state, Failed | Queued | Skipped)
                .then(|| "boom".to_string())
                .filter(|_| attempts > 0 || state == Skipped),
            started_ms: times.0,
            finished_ms: times.1,
            duration_ms: None,
            history: Vec::new(),
            waiting_for: None,
            late: false,
        }
    }

    fn status(id: PipelineId, state: PipelineState, jobs: &[(&str, JobStatus)]) -> PipelineStatus {
        PipelineStatus {
            id,
            state,
            submitted_ms: 0,
            finished_ms: None,
            jobs: jobs
                .iter()
                .map(|(n, j)| (n.to_string(), j.clone()))
                .collect(),
        }
    }

    fn changes(events: &[JobEvent]) -> Vec<(&str, JobState, JobState, u32)> {
        events
            .iter()
            .map(|e| (e.job.as_str(), e.from, e.to, e.attempt))
            .collect()
    }

    #[test]
    fn nothing_changed_nothing_reported() {
        let id = PipelineId::new();
        let mut d = Diff::new(id);
        let s = status(
            id,
            PipelineState::Queued,
            &[("a", job(Queued, 0, (None, None)))],
        );
        assert!(d.compare(&s).is_empty());
        assert!(d.compare(&s).is_empty());
        let s = status(
            id,
            PipelineState::Running,
            &[("a", job(Running, 1, (Some(5), None)))],
        );
        assert_eq!(changes(&d.compare(&s)), [("a", Queued, Running, 1)]);
        assert!(d.compare(&s).is_empty());
    }

    #[test]
    fn a_run_missed_between_two_reads_is_filled_in_and_ordered_by_time() {
        let id = PipelineId::new();
        let mut d = Diff::new(id);
        // b (named first) ran after a: the times, not the names, give the order.
        let s = status(
            id,
            PipelineState::Succeeded,
            &[
                ("b", job(Succeeded, 1, (Some(30), Some(40)))),
                ("a", job(Succeeded, 1, (Some(10), Some(20)))),
            ],
        );
        let events = d.compare(&s);
        assert_eq!(
            changes(&events),
            [
                ("a", Queued, Running, 1),
                ("a", Running, Succeeded, 1),
                ("b", Queued, Running, 1),
                ("b", Running, Succeeded, 1),
            ]
        );
        assert!(events
            .iter()
            .all(|e| e.pipeline == id && e.pipeline_state == PipelineState::Succeeded));
    }

    #[test]
    fn retries_failures_skips_and_cancels_carry_their_attempt_and_error() {
        let id = PipelineId::new();
        let mut d = Diff::new(id);
        let running = status(
            id,
            PipelineState::Running,
            &[("a", job(Running, 1, (Some(1), None)))],
        );
        d.compare(&running);
        // Attempt 1 failed and is queued for a retry.
        let retry = status(
            id,
            PipelineState::Running,
            &[("a", job(Queued, 1, (Some(1), Some(2))))],
        );
        let events = d.compare(&retry);
        assert_eq!(changes(&events), [("a", Running, Queued, 1)]);
        assert_eq!(events[0].error.as_deref(), Some("boom"));
        // Attempt 2 ran and failed unseen; its child was skipped; another was cancelled.
        let end = status(
            id,
            PipelineState::Failed,
            &[
                ("a", job(Failed, 2, (Some(3), Some(4)))),
                ("b", job(Skipped, 0, (None, None))),
                ("c", job(Cancelled, 0, (None, None))),
            ],
        );
        let events = d.compare(&end);
        assert_eq!(
            changes(&events),
            [
                ("a", Queued, Running, 2),
                ("a", Running, Failed, 2),
                ("b", Queued, Skipped, 0),
                ("c", Queued, Cancelled, 0),
            ]
        );
        assert_eq!(events[1].error.as_deref(), Some("boom"));
        assert_eq!(events[2].error.as_deref(), Some("boom"));
        assert_eq!(events[0].error, None);
    }
}
