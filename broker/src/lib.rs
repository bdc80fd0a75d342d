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

#![warn(missing_docs)]

mod api;
mod child;
mod config;
mod event_loop;
mod io;
mod job;
mod ledger;
mod monitor;
mod queue;
pub mod slot;
mod slots;
mod table;

pub use api::{BoxError, ClusterStore, Store, StoreFactory, Worker};
pub use config::{BrokerConfig, BrokerError, Isolation, DEFAULT_DRAIN_TIMEOUT, PREFETCH_PER_SLOT};
pub use event_loop::Broker;
pub use job::JobError;
pub use pypelinin_common::protocol::{ClusterConfig, JobInfo, MonitoringReport};
pub use pypelinin_common::Data;
pub use slot::{Death, SlotError};
