//! The pypelinin router: the one central process of a cluster.
//!
//! It owns the state of every pipeline and job (durable in a write-ahead journal checkpointed into a redb database), answers every peer's
//! requests on one ROUTER socket from one thread, pushes jobs to brokers with free slots
//! and pipelines to pipeliners, and broadcasts events on a PUB socket.

#![warn(missing_docs)]

pub mod journal;
pub mod notify;
pub mod server;
pub mod state;
pub mod store;

pub use server::{run, BoundRouter, NotifyConfig, RouterConfig, RouterError};
pub use store::Durability;
