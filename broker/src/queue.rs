//! The jobs of one process-isolated slot, as a plain state machine its thread drives:
//! which job its child runs, which waits in the child's pipe behind it, and which a
//! lost child never started. No I/O and no clock: the driver passes time in.
//!
//! A slot's child runs the jobs it is sent in order. With prefetch on, the slot keeps
//! up to two jobs in its child, and takes the second only while every slot of the
//! broker is busy (a free slot should run it instead): the pipe hop of the next job
//! then overlaps with the current one's work.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use pypelinin_common::protocol::Assignment;

/// Where the slot's next job comes from, if it should take one now.
#[derive(Debug)]
pub(crate) enum Take {
    /// A job a lost child never started: it goes first.
    Again(Box<Assignment>),
    /// Nothing runs: wait for the broker's next job.
    Wait,
    /// A job runs: queue the broker's next one behind it, only if one is ready and
    /// every slot is busy.
    IfAllBusy,
}

/// The jobs of one slot and its child.
pub(crate) struct ChildQueue {
    /// Most jobs in the child at once: 1, or 2 when the broker prefetches.
    in_child: usize,
    /// Sent to the child and not answered, in order: the first one runs.
    sent: VecDeque<Assignment>,
    /// Jobs a lost child never started, to send to the next child first.
    again: VecDeque<Assignment>,
    /// When the running job times out, and its timeout.
    deadline: Option<(Instant, Duration)>,
}

impl ChildQueue {
    /// An empty slot; `prefetch` as the broker announces it.
    pub(crate) fn new(prefetch: usize) -> Self {
        ChildQueue {
            in_child: if prefetch == 0 { 1 } else { 2 },
            sent: VecDeque::new(),
            again: VecDeque::new(),
            deadline: None,
        }
    }

    /// Whether and where to take the next job from; `None` while the child holds all
    /// it may.
    pub(crate) fn take(&mut self) -> Option<Take> {
        if self.sent.len() >= self.in_child {
            return None;
        }
        Some(match self.again.pop_front() {
            Some(a) => Take::Again(Box::new(a)),
            None if self.sent.is_empty() => Take::Wait,
            None => Take::IfAllBusy,
        })
    }

    /// The job the child runs now.
    pub(crate) fn running(&self) -> Option<&Assignment> {
        self.sent.front()
    }

    /// When the running job times out.
    pub(crate) fn deadline(&self) -> Option<(Instant, Duration)> {
        self.deadline
    }

    /// `a` was handed to the child at `now`; if nothing ran, it runs from now.
    pub(crate) fn sent(&mut self, a: Assignment, now: Instant) {
        if self.sent.is_empty() {
            self.deadline = timeout_from(&a, now);
        }
        self.sent.push_back(a);
    }

    /// `a` could not be queued in the child now: it is the next one to send.
    pub(crate) fn hold(&mut self, a: Assignment) {
        self.again.push_front(a);
    }

    /// The child answered its running job: that job.
    pub(crate) fn answered(&mut self) -> Option<Assignment> {
        self.sent.pop_front()
    }

    /// After an answer, the job queued behind it (if any) started in the child at
    /// `now`: it runs from then.
    pub(crate) fn next_started(&mut self, now: Instant) -> Option<&Assignment> {
        let next = self.sent.front()?;
        self.deadline = timeout_from(next, now);
        Some(next)
    }

    /// The child is gone: its running job (failed with it), and how many jobs queued
    /// behind it go to the next child, first and in order.
    pub(crate) fn lost(&mut self) -> (Option<Assignment>, usize) {
        let running = self.sent.pop_front();
        let behind = self.sent.len();
        while let Some(b) = self.sent.pop_back() {
            self.again.push_front(b);
        }
        (running, behind)
    }
}

/// When `a`, starting at `now`, times out, and after how long.
fn timeout_from(a: &Assignment, now: Instant) -> Option<(Instant, Duration)> {
    let t = Duration::from_millis(a.info.timeout_ms?);
    Some((now + t, t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pypelinin_common::protocol::{JobInfo, JobRef};

    fn job(n: u32, timeout_ms: Option<u64>) -> Assignment {
        Assignment {
            job: JobRef {
                pipeline: pypelinin_common::protocol::PipelineId(uuid::Uuid::nil()),
                job: n,
                attempt: 1,
            },
            info: JobInfo {
                pipeline: pypelinin_common::protocol::PipelineId(uuid::Uuid::nil()),
                name: format!("j{n}"),
                worker: "W".into(),
                attempt: 1,
                data: Default::default(),
                parents: Default::default(),
                timeout_ms,
                target: None,
                wait_for: None,
            },
        }
    }

    fn n(a: Option<&Assignment>) -> Option<u32> {
        a.map(|a| a.job.job)
    }

    #[test]
    fn an_idle_slot_waits_for_a_job_which_runs_with_its_timeout_from_when_it_was_sent() {
        let mut q = ChildQueue::new(0);
        assert!(matches!(q.take(), Some(Take::Wait)));
        let t0 = Instant::now();
        q.sent(job(1, Some(400)), t0);
        assert_eq!(n(q.running()), Some(1));
        assert_eq!(
            q.deadline(),
            Some((t0 + Duration::from_millis(400), Duration::from_millis(400)))
        );
    }

    #[test]
    fn without_prefetch_a_child_holds_one_job_at_a_time() {
        let mut q = ChildQueue::new(0);
        q.sent(job(1, None), Instant::now());
        assert!(q.take().is_none(), "never asks for a second job");
    }

    #[test]
    fn with_prefetch_a_second_job_is_queued_only_if_all_slots_are_busy_and_no_third() {
        let mut q = ChildQueue::new(8);
        let t0 = Instant::now();
        q.sent(job(1, Some(100)), t0);
        assert!(matches!(q.take(), Some(Take::IfAllBusy)));
        q.sent(job(2, Some(100)), t0 + Duration::from_millis(50));
        assert!(q.take().is_none(), "two in the child at most");
        // The queued job's timeout does not run while it waits.
        assert_eq!(
            q.deadline().map(|d| d.0),
            Some(t0 + Duration::from_millis(100))
        );
    }

    #[test]
    fn an_answer_frees_the_slot_and_the_queued_job_runs_from_then() {
        let mut q = ChildQueue::new(8);
        let t0 = Instant::now();
        q.sent(job(1, None), t0);
        q.sent(job(2, Some(100)), t0);
        assert_eq!(q.answered().map(|a| a.job.job), Some(1));
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(n(q.next_started(t1)), Some(2));
        assert_eq!(
            q.deadline().map(|d| d.0),
            Some(t1 + Duration::from_millis(100))
        );
        // Freed: it takes the next job behind the one now running.
        assert!(matches!(q.take(), Some(Take::IfAllBusy)));
        assert_eq!(q.answered().map(|a| a.job.job), Some(2));
        assert!(q.next_started(t1).is_none());
        assert!(matches!(q.take(), Some(Take::Wait)), "an empty slot waits");
    }

    #[test]
    fn a_lost_child_fails_its_running_job_and_the_next_child_runs_the_queued_ones_first() {
        let mut q = ChildQueue::new(8);
        let t0 = Instant::now();
        q.sent(job(1, None), t0);
        q.sent(job(2, None), t0);
        let (failed, behind) = q.lost();
        assert_eq!(failed.map(|a| a.job.job), Some(2 - 1));
        assert_eq!(behind, 1);
        assert!(q.running().is_none());
        match q.take() {
            Some(Take::Again(a)) => assert_eq!(a.job.job, 2),
            other => panic!("the queued job goes first, not {other:?}"),
        }
    }

    #[test]
    fn jobs_given_back_keep_their_order_ahead_of_one_held_back() {
        let mut q = ChildQueue::new(8);
        q.hold(job(9, None));
        q.sent(job(1, None), Instant::now());
        q.in_child = 3; // so that two wait behind the running one
        q.sent(job(2, None), Instant::now());
        q.sent(job(3, None), Instant::now());
        q.lost();
        let order: Vec<u32> = std::iter::from_fn(|| match q.take() {
            Some(Take::Again(a)) => {
                q.sent((*a).clone(), Instant::now());
                Some(a.job.job)
            }
            _ => None,
        })
        .collect();
        assert_eq!(order, [2, 3, 9]);
    }

    #[test]
    fn a_job_too_large_to_queue_is_held_and_sent_first_once_the_child_is_free() {
        let mut q = ChildQueue::new(8);
        q.sent(job(1, None), Instant::now());
        q.hold(job(2, None));
        assert!(q.answered().is_some());
        assert!(q.next_started(Instant::now()).is_none());
        assert!(matches!(q.take(), Some(Take::Again(a)) if a.job.job == 2));
    }
}
