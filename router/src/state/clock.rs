//! The clock the state machine reads: the system's in a running router, one moved by
//! hand in tests, so that leases, deadlines and retry delays can be tested without
//! sleeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where [`super::RouterState`] reads the time.
///
/// Two readings, because the router needs both: monotonic time for leases and
/// deadlines (immune to the wall clock jumping), and milliseconds since the epoch
/// for what is stored or sent (comparable across machines and restarts).
pub trait Clock: Send {
    /// Monotonic time.
    fn instant(&self) -> Instant;
    /// Milliseconds since the Unix epoch.
    fn wall_ms(&self) -> u64;
}

/// The system clock: what a running router uses.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn instant(&self) -> Instant {
        Instant::now()
    }

    fn wall_ms(&self) -> u64 {
        pypelinin_common::now_ms()
    }
}

/// A clock that moves only when told to; clones share one time. Lets a test step
/// past a lease or a retry delay at once, and makes what it sees reproducible.
#[derive(Clone, Debug)]
pub struct ManualClock {
    start: Instant,
    start_ms: u64,
    elapsed_ms: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock stopped at `start_ms` since the epoch (and at the current instant).
    pub fn new(start_ms: u64) -> Self {
        ManualClock {
            start: Instant::now(),
            start_ms,
            elapsed_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Moves time forward by `d` (to the millisecond).
    pub fn advance(&self, d: Duration) {
        self.elapsed_ms
            .fetch_add(d.as_millis() as u64, Ordering::SeqCst);
    }

    fn elapsed(&self) -> u64 {
        self.elapsed_ms.load(Ordering::SeqCst)
    }
}

impl Clock for ManualClock {
    fn instant(&self) -> Instant {
        self.start + Duration::from_millis(self.elapsed())
    }

    fn wall_ms(&self) -> u64 {
        self.start_ms + self.elapsed()
    }
}
