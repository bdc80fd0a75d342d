//! What a broker is told: where the router is, how many slots, where workers run; and
//! the errors that stop a broker. A leaf: every other module may use it.

use std::time::Duration;

/// How long a stopping broker waits for its running jobs before giving them back.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Most jobs a broker holds queued per slot unless told otherwise.
pub const PREFETCH_PER_SLOT: usize = 32;

/// Where workers run: see [`crate::slot`] for the trade-off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Isolation {
    /// Each slot runs jobs in a child process: a crash, abort, segfault, memory
    /// exhaustion or hang ends only that attempt. The default.
    #[default]
    Process,
    /// Jobs run on the broker's threads: no pipe hop per job, but a worker that aborts
    /// or segfaults takes the broker down, and a hung worker holds its slot forever
    /// (its attempt is still reported as timed out when it returns).
    Thread,
}

/// Where a broker connects and how much it runs at once.
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    /// Router API address.
    pub api: String,
    /// Concurrent worker slots.
    pub slots: usize,
    /// On shutdown, how long to let running jobs finish before giving them back.
    pub drain_timeout: Duration,
    /// Where workers run.
    pub isolation: Isolation,
    /// Address-space limit of each slot process, in bytes (process isolation only);
    /// a worker that goes past it fails its attempt instead of starving the host.
    pub slot_memory_bytes: Option<u64>,
    /// Most jobs held queued beyond the slots (default [`PREFETCH_PER_SLOT`] per slot),
    /// so that a slot that frees starts its next job at once instead of after a round
    /// trip to the router. The router fills this queue only as far as the broker's
    /// recent jobs say it holds a few milliseconds of work: long jobs are never queued
    /// here behind one another. 0 turns queueing off.
    pub prefetch: Option<usize>,
    /// CURVE keys for the connection to the router (none: plain, as before).
    pub security: pypelinin_common::curve::Security,
    /// Longest a finished job's report waits for others to leave with it, while jobs
    /// are queued beyond the slots (default [`crate::REPORT_LINGER`]): fewer, larger
    /// reports cost the router less per job. Zero reports every job at once.
    pub report_linger: Duration,
}

impl BrokerConfig {
    /// A config with one slot per CPU and the default drain timeout. A broker needs only
    /// the router's API address: its jobs come by direct push, never by broadcast.
    pub fn new(api: &str) -> Self {
        BrokerConfig {
            api: api.to_string(),
            slots: std::thread::available_parallelism().map_or(1, |n| n.get()),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            isolation: Isolation::Process,
            slot_memory_bytes: None,
            prefetch: None,
            security: pypelinin_common::curve::Security::None,
            report_linger: crate::REPORT_LINGER,
        }
    }

    /// Most jobs held queued beyond the slots, as announced to the router.
    pub(crate) fn prefetch(&self) -> usize {
        self.prefetch.unwrap_or(PREFETCH_PER_SLOT * self.slots)
    }
}

/// Each slot's share of the host's memory, and at least 1 GiB of address space (which
/// counts reservations a process never touches).
pub(crate) fn default_slot_memory(slots: usize) -> u64 {
    let mut sys = sysinfo::System::new();
    sys.refresh_memory();
    (sys.total_memory() / slots.max(1) as u64).max(1 << 30)
}

/// Why a broker stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// ZeroMQ failed.
    #[error("zeromq: {0}")]
    Zmq(#[from] zmq::Error),
    /// The store could not be built from the router's configuration.
    #[error("store from cluster configuration: {0}")]
    Store(String),
    /// The operating system refused a resource (a socket pair for a slot, a thread).
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The broker was given nothing to run.
    #[error("a broker needs at least one worker and one slot")]
    Empty,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefetch_defaults_to_a_queue_per_slot_and_can_be_turned_off() {
        let mut c = BrokerConfig::new("tcp://x:1");
        c.slots = 3;
        assert_eq!(c.prefetch(), 3 * PREFETCH_PER_SLOT);
        c.prefetch = Some(0);
        assert_eq!(c.prefetch(), 0);
        c.prefetch = Some(5);
        assert_eq!(c.prefetch(), 5);
    }
}
