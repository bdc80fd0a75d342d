//! The broker library: runs the user's workers for the cluster.
//!
//! A user builds a broker binary of their own: register [`Worker`]s by name, give a
//! factory for their [`Store`], and call [`Broker::run`]. For each job the broker calls
//! `Store::retrieve` → `Worker::process` → `Store::save`, then reports the outcome (and
//! the output, which the router keeps for the job's children) to the router.
//!
//! Modules, each one concern, from the top: `event_loop` (the [`Broker`] and its loop)
//! drives `io` (the router link), `ledger` (jobs and reports the router must hear
//! about) and `slots` (the slot threads), which drive `queue` (a process slot's jobs),
//! [`slot`] (a slot's child process, from the broker's side), `child` (the child's
//! side and the frames both exchange), `job` (a job's life) and `monitor`; `config`,
//! `api` and `table` (what threads share) are leaves.
//!
//! Workers in any language: [`CommandWorker`] runs a program per attempt (module
//! `command`), [`PersistentWorker`] serves many jobs with one long-lived process (module
//! `persistent`, which specifies its protocol), [`WorkersFile`] declares them in TOML (module `workers_file`), and
//! [`run_workers_file`] is the `pypelinin-broker` binary's body. A running worker sees a
//! revoke of its job through [`is_cancelled`] (module `cancel`).

#![warn(missing_docs)]

mod api;
mod cancel;
mod child;
pub mod cli;
mod command;
mod config;
mod event_loop;
mod io;
mod job;
mod joblog;
mod ledger;
pub use ledger::REPORT_LINGER;
mod monitor;
mod persistent;
mod pipes;
mod queue;
mod sensor;
pub mod slot;
mod slots;
mod table;
mod workers_file;

pub use api::{BoxError, ClusterStore, Store, StoreFactory, Worker};
pub use cancel::{cancel_flag, is_cancelled, CancelFlag};
pub use command::{CommandError, CommandWorker, STDERR_TAIL_BYTES};
pub use config::{BrokerConfig, BrokerError, Isolation, DEFAULT_DRAIN_TIMEOUT, PREFETCH_PER_SLOT};
pub use event_loop::Broker;
pub use job::JobError;
pub use joblog::JobLogLayer;
pub use persistent::{PersistentError, PersistentWorker, MAX_RESPONSE_LINE_BYTES};
pub use pypelinin_common::protocol::{ClusterConfig, JobInfo, MonitoringReport};
pub use pypelinin_common::Data;
pub use slot::{Death, SlotError};
pub use workers_file::{Mode, WorkerSpec, WorkersFile, WorkersFileError};

/// Starts `tracing` like [`pypelinin_common::init_tracing`] (stderr, filtered by
/// `RUST_LOG`, default `info`) and adds [`JobLogLayer`], so that the events a worker
/// emits at level `info` and above while it runs also land in its job's captured log,
/// whatever `RUST_LOG` lets through to stderr. Broker binaries call this once, first.
pub fn init_tracing() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{filter::LevelFilter, EnvFilter, Layer};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(filter),
        )
        .with(JobLogLayer.with_filter(LevelFilter::INFO))
        .try_init();
}

/// Why `pypelinin-broker` stopped: a bad workers file, or the broker itself.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The workers file was refused at start-up.
    #[error(transparent)]
    WorkersFile(#[from] WorkersFileError),
    /// The broker stopped with an error.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// The `pypelinin-broker` binary's body: offers the command workers of `file` until
/// `shutdown` triggers. Command workers are processes already, so slots run them on
/// threads ([`Isolation::Thread`]) whatever `config.isolation` says: a crash of a
/// command ends only its own process.
pub fn run_workers_file(
    file: &std::path::Path,
    mut config: BrokerConfig,
    shutdown: pypelinin_common::Shutdown,
) -> Result<(), RunError> {
    let workers = WorkersFile::load(file)?;
    let mut broker = Broker::new();
    for (name, spec) in &workers.workers {
        broker = match spec.mode {
            Mode::Oneshot => broker.worker(name, spec.worker()),
            Mode::Persistent => broker.worker(name, spec.persistent_worker()),
        };
    }
    config.isolation = Isolation::Thread;
    tracing::info!(workers = ?broker.worker_names(), file = %file.display(), "command workers");
    broker.run(config, shutdown)?;
    Ok(())
}
