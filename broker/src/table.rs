//! What the broker's threads share: the slot table (which job runs in which slot,
//! revokes of jobs not started yet, jobs done) and the messages slot and monitor
//! threads send the event loop. A leaf: it uses no other module of the broker.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use pypelinin_common::protocol::{Assignment, JobRef, JobReport, MonitoringReport, SlotJob};
use serde::{Deserialize, Serialize};

use crate::cancel::CancelFlag;

/// Messages from slot and monitor threads to the event loop, over inproc PUSH sockets.
#[derive(Serialize, Deserialize)]
pub(crate) enum Internal {
    /// A slot finished a job.
    Done(JobReport),
    /// A host report to forward to the router.
    Monitor(MonitoringReport),
}

/// The jobs in the broker's slots, shared by its threads.
pub(crate) struct SlotTable {
    jobs: Mutex<Vec<Option<SlotJob>>>,
    /// Each slot's job's revoke flag (a fresh one per job), locked after `jobs`.
    flags: Mutex<Vec<CancelFlag>>,
    /// The broker is stopping: every job starting from now gets a raised flag.
    stopping: std::sync::atomic::AtomicBool,
    /// Revoked while queued: cancelled by the slot that takes them.
    revoked: Mutex<HashSet<JobRef>>,
    done: AtomicU64,
}

/// A guard even if a thread panicked while holding it: every update of the table is
/// a single assignment, so a poisoned table is still consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl SlotTable {
    /// `slots` empty slots.
    pub(crate) fn new(slots: usize) -> Self {
        SlotTable {
            jobs: Mutex::new(vec![None; slots]),
            flags: Mutex::new(vec![CancelFlag::new(); slots]),
            stopping: std::sync::atomic::AtomicBool::new(false),
            revoked: Mutex::new(HashSet::new()),
            done: AtomicU64::new(0),
        }
    }

    /// `a` runs in `slot` from `started_ms` (for monitoring, and so that a revoke
    /// reaches the slot).
    pub(crate) fn start(&self, slot: usize, a: &Assignment, started_ms: u64) {
        let mut jobs = lock(&self.jobs);
        if let Some(f) = lock(&self.flags).get_mut(slot) {
            *f = CancelFlag::new();
            if self.stopping.load(Ordering::SeqCst) {
                f.cancel();
            }
        }
        if let Some(s) = jobs.get_mut(slot) {
            *s = Some(SlotJob {
                job: a.job,
                name: a.info.name.clone(),
                worker: a.info.worker.clone(),
                started_ms,
            });
        }
    }

    /// The revoke flag of the job `slot` runs now (raised by [`SlotTable::revoke`]).
    pub(crate) fn cancel_flag(&self, slot: usize) -> CancelFlag {
        lock(&self.flags).get(slot).cloned().unwrap_or_default()
    }

    /// The broker stops with jobs still running: raises the flag of every job running
    /// now or started later, so that workers that can stop (command workers) do, and
    /// leave no process behind the broker.
    pub(crate) fn cancel_all(&self) {
        let _jobs = lock(&self.jobs);
        self.stopping.store(true, Ordering::SeqCst);
        for f in lock(&self.flags).iter() {
            f.cancel();
        }
    }

    /// `slot`'s job finished.
    pub(crate) fn finish(&self, slot: usize) {
        if let Some(s) = lock(&self.jobs).get_mut(slot) {
            *s = None;
        }
        self.done.fetch_add(1, Ordering::Relaxed);
    }

    /// How many slots there are.
    pub(crate) fn len(&self) -> usize {
        lock(&self.jobs).len()
    }

    /// Whether every slot is busy (then a slot may queue a job in its child).
    pub(crate) fn all_busy(&self) -> bool {
        lock(&self.jobs).iter().all(Option::is_some)
    }

    /// How many slots run a job.
    pub(crate) fn busy(&self) -> usize {
        lock(&self.jobs).iter().filter(|s| s.is_some()).count()
    }

    /// The slots now, and how many jobs finished so far.
    pub(crate) fn snapshot(&self) -> (Vec<Option<SlotJob>>, u64) {
        (lock(&self.jobs).clone(), self.done.load(Ordering::Relaxed))
    }

    /// The router revoked `job`: the slot that runs it (whose revoke flag is raised),
    /// or none, and then the slot that takes it later cancels it.
    pub(crate) fn revoke(&self, job: JobRef) -> Option<usize> {
        let jobs = lock(&self.jobs);
        let slot = jobs
            .iter()
            .position(|s| s.as_ref().is_some_and(|s| s.job == job));
        match slot {
            Some(k) => {
                if let Some(f) = lock(&self.flags).get(k) {
                    f.cancel();
                }
            }
            None => {
                lock(&self.revoked).insert(job);
            }
        }
        slot
    }

    /// Whether `a` was revoked before it reached a slot (and forgets it).
    pub(crate) fn take_revoked(&self, a: &Assignment) -> bool {
        lock(&self.revoked).remove(&a.job)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pypelinin_common::protocol::JobInfo;

    fn job(n: u32) -> Assignment {
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
                timeout_ms: None,
                target: None,
                wait_for: None,
            },
        }
    }

    #[test]
    fn a_started_job_occupies_its_slot_until_it_finishes() {
        let t = SlotTable::new(2);
        t.start(1, &job(7), 42);
        let (slots, done) = t.snapshot();
        assert!(slots[0].is_none());
        assert_eq!(
            slots[1].as_ref().map(|s| (s.job, s.started_ms)),
            Some((job(7).job, 42))
        );
        assert_eq!((t.busy(), done), (1, 0));
        assert!(!t.all_busy());
        t.start(0, &job(8), 43);
        assert!(t.all_busy());
        t.finish(1);
        assert_eq!((t.busy(), t.snapshot().1), (1, 1));
        assert!(!t.all_busy(), "a freed slot takes the next job");
    }

    #[test]
    fn a_revoke_reaches_the_slot_running_the_job() {
        let t = SlotTable::new(3);
        t.start(2, &job(5), 0);
        let flag = t.cancel_flag(2);
        assert!(!flag.is_cancelled());
        assert_eq!(t.revoke(job(5).job), Some(2));
        assert!(flag.is_cancelled(), "the running worker can see it");
        assert!(!t.take_revoked(&job(5)), "not remembered for later");
        t.finish(2);
        t.start(2, &job(6), 0);
        assert!(!t.cancel_flag(2).is_cancelled(), "a fresh flag per job");
    }

    #[test]
    fn a_stopping_broker_raises_the_flags_of_running_and_later_jobs() {
        let t = SlotTable::new(2);
        t.start(0, &job(1), 0);
        let running = t.cancel_flag(0);
        t.cancel_all();
        assert!(running.is_cancelled());
        t.start(1, &job(2), 0);
        assert!(t.cancel_flag(1).is_cancelled(), "started after the stop");
    }

    #[test]
    fn a_job_revoked_while_queued_is_cancelled_once_by_the_slot_taking_it() {
        let t = SlotTable::new(1);
        assert_eq!(t.revoke(job(5).job), None);
        assert!(!t.take_revoked(&job(6)));
        assert!(t.take_revoked(&job(5)));
        assert!(!t.take_revoked(&job(5)), "forgotten once taken");
    }
}
