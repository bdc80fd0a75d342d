//! Shared vocabulary of a pypelinin cluster.
//!
//! Every process (router, pipeliner, broker, client) speaks the protocol defined in
//! [`protocol`] and describes work with the model in [`pipeline`]. Keeping both in one
//! crate means a message can only be changed in one place, and every peer sees the change.

#![warn(missing_docs)]

pub mod cli;
pub mod curve;
pub mod dag;
pub mod ids;
pub mod notify;
pub mod pipeline;
pub mod protocol;
pub mod render;
pub mod schedule;
pub mod sensor;
pub mod shutdown;
pub mod status;
pub mod transport;

pub use ids::{JobRef, PipelineId};
pub use notify::{NotifyEvent, NotifySpec};
pub use pipeline::{Data, JobSpec, Pipeline, PipelineError, PipelineSpec, TriggerRule, WeightRule};
pub use shutdown::Shutdown;
pub use status::{JobState, JobStatus, PipelineState, PipelineStatus};

/// Milliseconds since the Unix epoch: the one clock every record and message uses,
/// so that times stay comparable across machines and across a router restart.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// An exponential moving average: `avg` moved `weight` of the way to `sample`, or
/// `sample` itself when there is no average yet. How routers, brokers and slots follow
/// job lengths, each with its own weight.
pub fn moving_average(avg: Option<f64>, sample: f64, weight: f64) -> f64 {
    match avg {
        None => sample,
        Some(avg) => avg + weight * (sample - avg),
    }
}

/// Starts `tracing` output on stderr, filtered by `RUST_LOG` (default `info`).
///
/// Binaries call this once; libraries only emit events.
pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
