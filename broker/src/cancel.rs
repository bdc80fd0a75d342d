//! How a running worker learns that the router revoked its job.
//!
//! In thread isolation a worker runs on its slot's thread, which nothing can stop from
//! outside. So each attempt gets a [`CancelFlag`]: the slot table raises it when the
//! router revokes the job, and the slot thread makes it the thread's current flag
//! while the worker runs. A worker that can stop early (a [`crate::CommandWorker`],
//! which kills its process group) polls [`is_cancelled`] or keeps [`cancel_flag`] for
//! threads of its own. The [`crate::Worker`] trait is unchanged: workers that never
//! look simply run to the end, and their result is dropped by the router.
//!
//! In process isolation the broker kills the whole slot process on a revoke, so there
//! the flag is never raised: the worker is gone before it could look.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A revoke flag for one attempt, shared between the slot table (which raises it) and
/// the worker (which reads it). Cloning shares the flag.
#[derive(Clone, Debug, Default)]
pub struct CancelFlag(Arc<AtomicBool>);

impl CancelFlag {
    /// A flag not raised.
    pub fn new() -> Self {
        Self::default()
    }

    /// Raises the flag: the attempt should stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether the attempt should stop.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

thread_local! {
    static CURRENT: RefCell<Option<CancelFlag>> = const { RefCell::new(None) };
}

/// Whether the job running on this thread was revoked by the router. False outside a
/// job, and always in process isolation (where a revoke kills the slot process).
pub fn is_cancelled() -> bool {
    CURRENT.with(|c| c.borrow().as_ref().is_some_and(CancelFlag::is_cancelled))
}

/// The flag of the job running on this thread, for a worker that hands it to threads
/// of its own; outside a job, a flag that is never raised.
pub fn cancel_flag() -> CancelFlag {
    CURRENT.with(|c| c.borrow().clone().unwrap_or_default())
}

/// Runs `f` with `flag` as this thread's current flag, then restores the previous one
/// (even if `f` panics).
pub(crate) fn with_flag<R>(flag: CancelFlag, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<CancelFlag>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            CURRENT.with(|c| *c.borrow_mut() = previous);
        }
    }
    let _restore = Restore(CURRENT.with(|c| c.borrow_mut().replace(flag)));
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_current_flag_is_seen_only_while_its_job_runs() {
        assert!(!is_cancelled());
        let flag = CancelFlag::new();
        flag.cancel();
        assert!(with_flag(flag.clone(), is_cancelled));
        assert!(!is_cancelled(), "restored after the job");
        assert!(!cancel_flag().is_cancelled());
    }

    #[test]
    fn a_flag_raised_while_the_job_runs_is_seen_by_it_and_its_clones() {
        let flag = CancelFlag::new();
        with_flag(flag.clone(), || {
            let mine = cancel_flag();
            assert!(!is_cancelled());
            flag.cancel();
            assert!(is_cancelled() && mine.is_cancelled());
        });
    }
}
