//! The run queue: jobs whose parents are done and whose delays are over, waiting for a
//! broker's slot, one max-heap per worker, highest effective priority first and first
//! come, first served among equals.
//!
//! Aging keeps low priorities from starving: a job gains one point of priority for
//! every `aging_ms` it has waited. That is built into the heap key once, when the job
//! is queued — `effective_priority × aging_ms − queued_at_ms` — so that no key ever has
//! to change as time passes: two jobs compare as if each had gained its waiting time
//! divided by `aging_ms`. With `aging_ms` 0 the key is the effective priority alone.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use pypelinin_common::protocol::PipelineId;

/// Default of the router's `--priority-aging-ms`: one point of priority per minute
/// waited. A job of priority 0 overtakes one of priority 10 queued at the same time
/// after ten minutes of waiting; equal priorities stay first come, first served.
pub const DEFAULT_PRIORITY_AGING_MS: u64 = 60_000;

/// One job's place in a run queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Ticket {
    /// Higher runs first.
    pub(super) key: i128,
    /// Order of queueing, unique: lower runs first among equal keys.
    pub(super) seq: u64,
    pub(super) id: PipelineId,
    pub(super) job: u32,
}

impl Ord for Ticket {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key
            .cmp(&other.key)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

impl PartialOrd for Ticket {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Jobs waiting for a slot, best first.
pub(super) type RunQueue = BinaryHeap<Ticket>;

/// The heap key of a job of effective priority `priority` queued at `now_ms`.
pub(super) fn key(priority: i64, now_ms: u64, aging_ms: u64) -> i128 {
    if aging_ms == 0 {
        priority as i128
    } else {
        priority as i128 * aging_ms as i128 - now_ms as i128
    }
}
