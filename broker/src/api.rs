//! The two traits a user implements: [`Worker`] and [`Store`].

use pypelinin_common::protocol::{JobInfo, MonitoringReport};
use pypelinin_common::Data;

/// Any error a user's worker or store returns; its message becomes the job's error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Builds a broker's [`Store`] from the cluster configuration the router hands out.
pub type StoreFactory = dyn Fn(&pypelinin_common::protocol::ClusterConfig) -> Result<std::sync::Arc<dyn Store>, BoxError>
    + Send;

/// A unit of work: turns the input its store retrieved into an output.
///
/// Workers run on the broker's worker threads, several at once, so they are `Sync`.
/// A panic is caught and fails the job with the panic message. `job.attempt` above 1
/// means an earlier attempt may have run: a worker with side effects should make them
/// idempotent.
pub trait Worker: Send + Sync + 'static {
    /// Runs the job.
    fn process(&self, job: &JobInfo, input: Data) -> Result<Data, BoxError>;
}

impl<F> Worker for F
where
    F: Fn(&JobInfo, Data) -> Result<Data, BoxError> + Send + Sync + 'static,
{
    fn process(&self, job: &JobInfo, input: Data) -> Result<Data, BoxError> {
        self(job, input)
    }
}

/// Where workers' inputs come from and outputs go: the user's database, files, etc.
///
/// One store is built per broker (from the cluster configuration the router hands out)
/// and shared by its worker threads. Because a job can run more than once (a broker that
/// loses its lease, a router restart before a result was durable), `save` must be
/// idempotent: saving the same job's output twice must leave one copy.
pub trait Store: Send + Sync + 'static {
    /// Builds the input of `job`. `job.data` holds the pipeline and job data;
    /// `job.parents` the outputs of its parents that the router keeps.
    fn retrieve(&self, job: &JobInfo) -> Result<Data, BoxError>;

    /// Persists the output of `job`.
    fn save(&self, job: &JobInfo, output: &Data) -> Result<(), BoxError>;

    /// Whether `target` (a job's `target`, placeholders filled) already exists, so
    /// that the job need not run (it ends `skipped_done`). The default reads it as a
    /// file path on the broker's machine, which is what command workers make; a store
    /// that keeps its outputs elsewhere answers for its own keys.
    fn target_exists(&self, _job: &JobInfo, target: &str) -> Result<bool, BoxError> {
        Ok(std::path::Path::new(target).exists())
    }

    /// Persists a monitoring report (host load, memory, slots); optional.
    fn save_monitoring(&self, _report: &MonitoringReport) -> Result<(), BoxError> {
        Ok(())
    }
}

/// The embedded default store: outputs live in the router's sled database.
///
/// The broker always reports a job's output to the router, which keeps it durably and
/// hands it to the job's children in `JobInfo::parents`. So this store's input is the
/// job's `data` plus a `"parents"` key with the parents' outputs by job name, and its
/// `save` has nothing left to do. Nothing to set up, works across machines.
#[derive(Clone, Copy, Debug, Default)]
pub struct ClusterStore;

impl Store for ClusterStore {
    fn retrieve(&self, job: &JobInfo) -> Result<Data, BoxError> {
        let mut input = job.data.clone();
        let parents = job
            .parents
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::Object(v.clone())))
            .collect();
        input.insert("parents".into(), serde_json::Value::Object(parents));
        Ok(input)
    }

    fn save(&self, _job: &JobInfo, _output: &Data) -> Result<(), BoxError> {
        Ok(())
    }
}
