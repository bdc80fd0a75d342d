//! The run queue: jobs whose parents are done and whose delays are over, waiting for a
//! broker's slot, one max-heap per worker, highest effective priority first and first
//! come, first served among equals.
//!
//! Aging keeps low priorities from starving: a job gains one point of priority for
//! every `aging_ms` it has waited. That is built into the heap key once, when the job
//! is queued — `effective_priority × aging_ms − queued_at_ms` — so that no key ever has
//! to change as time passes: two jobs compare as if each had gained its waiting time
//! divided by `aging_ms`. With `aging_ms` 0 the key is the effective priority alone.

use std::cmp::{Ordering, Reverse};
use std::collections::BTreeMap;

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
///
/// An ordered map rather than a binary heap: a pipeline's jobs are queued in bursts
/// (16,000 roots at once), and popping the best of a heap that size walked a path of
/// cache lines across all of it, 4 % of the router's event loop at 16 brokers of 1 ms
/// jobs; the best entry of the map sits in its first leaf, which stays in cache.
#[derive(Clone, Debug, Default)]
pub(super) struct RunQueue {
    tickets: BTreeMap<(Reverse<i128>, u64), (PipelineId, u32)>,
}

impl RunQueue {
    /// Queues a ticket.
    pub(super) fn push(&mut self, t: Ticket) {
        self.tickets.insert((Reverse(t.key), t.seq), (t.id, t.job));
    }

    /// The best ticket, left in the queue.
    pub(super) fn peek(&self) -> Option<Ticket> {
        self.tickets.first_key_value().map(ticket)
    }

    /// Takes the best ticket out.
    pub(super) fn pop(&mut self) -> Option<Ticket> {
        self.tickets.pop_first().map(|(k, v)| ticket((&k, &v)))
    }

    /// How many tickets wait.
    pub(super) fn len(&self) -> usize {
        self.tickets.len()
    }

    /// Whether none does.
    pub(super) fn is_empty(&self) -> bool {
        self.tickets.is_empty()
    }

    /// The tickets, best first.
    pub(super) fn iter(&self) -> impl Iterator<Item = Ticket> + '_ {
        self.tickets.iter().map(ticket)
    }
}

fn ticket(
    (&(Reverse(key), seq), &(id, job)): (&(Reverse<i128>, u64), &(PipelineId, u32)),
) -> Ticket {
    Ticket { key, seq, id, job }
}

impl Extend<Ticket> for RunQueue {
    fn extend<I: IntoIterator<Item = Ticket>>(&mut self, iter: I) {
        for t in iter {
            self.push(t);
        }
    }
}

/// The heap key of a job of effective priority `priority` queued at `now_ms`.
pub(super) fn key(priority: i64, now_ms: u64, aging_ms: u64) -> i128 {
    if aging_ms == 0 {
        priority as i128
    } else {
        priority as i128 * aging_ms as i128 - now_ms as i128
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(key: i128, seq: u64) -> Ticket {
        Ticket {
            key,
            seq,
            id: PipelineId::new(),
            job: seq as u32,
        }
    }

    #[test]
    fn best_key_first_then_first_queued_whatever_the_order_of_pushes() {
        // Keys from a few priorities, pushed in a scrambled order, some seqs late.
        let mut all: Vec<Ticket> = (0..500u64)
            .map(|n| t([5, -3, 5, 0, 12][(n * 7 % 5) as usize], (n * 211) % 500))
            .collect();
        let mut q = RunQueue::default();
        q.extend(all.iter().copied());
        assert_eq!(q.len(), 500);
        assert_eq!(q.iter().count(), 500);
        // Best first: the highest key, then the lowest seq; as `Ticket`'s order says.
        all.sort_by(|a, b| b.cmp(a));
        assert_eq!(q.iter().collect::<Vec<_>>(), all, "iter walks best first");
        for want in &all {
            assert_eq!(q.peek(), Some(*want));
            assert_eq!(q.pop(), Some(*want));
        }
        assert!(q.is_empty());
        assert_eq!(q.pop(), None);
        assert_eq!(q.peek(), None);
    }
}
