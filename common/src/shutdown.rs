//! A cloneable stop flag shared by a daemon's threads.
//!
//! Components take a [`Shutdown`] instead of installing signal handlers themselves, so a
//! test can stop a router or broker it started in-process, and a binary can wire the same
//! flag to SIGINT/SIGTERM.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A flag that, once triggered, tells every holder to wind down.
#[derive(Clone, Debug, Default)]
pub struct Shutdown(Arc<AtomicBool>);

impl Shutdown {
    /// A flag that has not been triggered.
    pub fn new() -> Self {
        Self::default()
    }

    /// A flag triggered by SIGINT or SIGTERM.
    pub fn on_signals() -> std::io::Result<Self> {
        let s = Self::new();
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(sig, s.0.clone())?;
        }
        Ok(s)
    }

    /// Asks every holder to stop.
    pub fn trigger(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether a stop was asked for.
    pub fn is_triggered(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}
