//! The broker library: runs the user's workers for the cluster.
//!
//! A user builds a broker binary of their own: register [`Worker`]s by name, give a
//! factory for their [`Store`], and call [`Broker::run`]. For each job the broker calls
//! `Store::retrieve` → `Worker::process` → `Store::save`, then reports the outcome (and
//! the output, which the router keeps for the job's children) to the router.

#![warn(missing_docs)]

mod api;
mod monitor;
mod runtime;
pub mod slot;

pub use api::{BoxError, ClusterStore, Store, StoreFactory, Worker};
pub use pypelinin_common::protocol::{ClusterConfig, JobInfo, MonitoringReport};
pub use pypelinin_common::Data;
pub use runtime::{
    Broker, BrokerConfig, BrokerError, Isolation, DEFAULT_DRAIN_TIMEOUT, PREFETCH_PER_SLOT,
};
