//! `pypelinin._native.run_broker`: a Rust [`Broker`] inside the Python process.
//!
//! The broker's event loop and slot threads are Rust; Python is entered (the GIL
//! taken) only to call the user's store, through the adapter the Python `Broker`
//! builds (`retrieve_json`, `save_json`, `save_monitoring_json`), and to log a failed
//! job. Workers run in long-lived Python processes, one per busy slot, through one
//! shared [`PersistentWorker`] (its pool holds at most one process per slot), so
//! Python workers run in parallel, never behind one GIL.

use crossbeam_channel::{bounded, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;
use pypelinin_broker::{
    BoxError, Broker, BrokerConfig, ClusterConfig, Isolation, JobInfo, MonitoringReport,
    PersistentWorker, Store, Worker,
};
use pypelinin_common::{Data, Shutdown};

use crate::{describe, raise};

/// How often the thread that called `run_broker` looks for Python signals (Ctrl-C).
const SIGNAL_POLL: Duration = Duration::from_millis(100);

/// What a store is told about a job, as JSON: the adapter adds pypelinin's keys
/// (`worker_requires`, and `worker_result` on save) and calls the user's store.
pub fn job_json(job: &JobInfo) -> String {
    serde_json::json!({
        "pipeline_id": job.pipeline.to_string(),
        "job": job.name,
        "worker": job.worker,
        "attempt": job.attempt,
        "data": job.data,
        "parents": job.parents,
    })
    .to_string()
}

/// The user's store, behind the Python adapter; every call holds the GIL.
struct PyStore {
    adapter: Py<PyAny>,
}

/// A Python exception as a store or worker error: its text with its traceback.
fn boxed(py: Python<'_>, e: PyErr) -> BoxError {
    describe(py, &e).into()
}

impl PyStore {
    fn call(&self, method: &str, args: (String, Option<String>)) -> Result<String, BoxError> {
        Python::attach(|py| {
            let adapter = self.adapter.bind(py);
            let result = match args {
                (a, None) => adapter.call_method1(method, (a,)),
                (a, Some(b)) => adapter.call_method1(method, (a, b)),
            };
            let value = result.map_err(|e| boxed(py, e))?;
            if value.is_none() {
                return Ok(String::new());
            }
            value.extract::<String>().map_err(|e| boxed(py, e))
        })
    }
}

impl Store for PyStore {
    fn retrieve(&self, job: &JobInfo) -> Result<Data, BoxError> {
        let text = self.call("retrieve_json", (job_json(job), None))?;
        Ok(serde_json::from_str(&text)?)
    }

    fn save(&self, job: &JobInfo, output: &Data) -> Result<(), BoxError> {
        let output = serde_json::to_string(output)?;
        self.call("save_json", (job_json(job), Some(output)))?;
        Ok(())
    }

    fn save_monitoring(&self, report: &MonitoringReport) -> Result<(), BoxError> {
        let report = serde_json::to_string(report)?;
        self.call("save_monitoring_json", (report, None))?;
        Ok(())
    }
}

/// One worker name, served by the broker's shared pool of worker-host processes; a
/// failure is also handed to the Python side's logger.
struct HostWorker {
    pool: Arc<PersistentWorker>,
    on_error: Arc<Py<PyAny>>,
}

impl Worker for HostWorker {
    fn process(&self, job: &JobInfo, input: Data) -> Result<Data, BoxError> {
        self.pool.process(job, input).inspect_err(|e| {
            let message = e.to_string();
            Python::attach(|py| {
                let args = (
                    job.worker.clone(),
                    job.name.clone(),
                    job.pipeline.to_string(),
                    message,
                );
                if let Err(e) = self.on_error.call1(py, args) {
                    e.print(py);
                }
            });
        })
    }
}

/// Runs a broker until it stops or Python gets a signal (Ctrl-C: `KeyboardInterrupt`,
/// or whatever a handler raises), then drains (running jobs get `drain_timeout`
/// seconds) and re-raises it.
///
/// `workers` are the worker names offered; `argv`, `env` and `cwd` start a worker
/// host. `store_factory(store_config_json)` builds the store adapter when the router
/// welcomes the broker; `on_job_error(worker, job, pipeline_id, error)` is called when
/// a job fails in its worker.
#[pyfunction]
#[pyo3(signature = (api, slots, workers, argv, env, cwd, store_factory, on_job_error, drain_timeout, curve_secret=None, router_key=None))]
#[allow(clippy::too_many_arguments)]
pub fn run_broker(
    py: Python<'_>,
    api: &str,
    slots: usize,
    workers: Vec<String>,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    cwd: Option<String>,
    store_factory: Py<PyAny>,
    on_job_error: Py<PyAny>,
    drain_timeout: f64,
    curve_secret: Option<String>,
    router_key: Option<String>,
) -> PyResult<()> {
    if std::env::var_os("RUST_LOG").is_some() {
        pypelinin_common::init_tracing();
    }
    let mut pool = PersistentWorker::new(argv);
    for (k, v) in &env {
        pool = pool.env(k, v);
    }
    if let Some(dir) = &cwd {
        pool = pool.cwd(std::path::Path::new(dir));
    }
    let pool = Arc::new(pool);
    let on_error = Arc::new(on_job_error);
    let mut broker = Broker::new().store_factory(move |cluster: &ClusterConfig| {
        Python::attach(|py| {
            let adapter = store_factory
                .call1(py, (cluster.store.to_string(),))
                .map_err(|e| boxed(py, e))?;
            Ok(Arc::new(PyStore { adapter }) as Arc<dyn Store>)
        })
    });
    for name in &workers {
        let worker = HostWorker {
            pool: pool.clone(),
            on_error: on_error.clone(),
        };
        broker = broker.worker(name, worker);
    }
    let mut config = BrokerConfig::new(api);
    config.security = crate::security(py, curve_secret, router_key)?;
    config.slots = slots;
    config.isolation = Isolation::Thread;
    config.drain_timeout = Duration::try_from_secs_f64(drain_timeout.max(0.0))
        .unwrap_or(pypelinin_broker::DEFAULT_DRAIN_TIMEOUT);
    let shutdown = Shutdown::new();
    let (done_tx, done) = bounded(1);
    let stop = shutdown.clone();
    std::thread::Builder::new()
        .name("pypelinin-broker".into())
        .spawn(move || {
            let _ = done_tx.send(broker.run(config, stop));
        })
        .map_err(|e| {
            raise(
                py,
                "PypelininError",
                format!("could not start the broker: {e}"),
            )
        })?;
    let mut interrupted = None;
    let result = loop {
        match py.detach(|| done.recv_timeout(SIGNAL_POLL)) {
            Ok(result) => break result,
            Err(RecvTimeoutError::Timeout) => {
                if interrupted.is_none() {
                    if let Err(e) = py.check_signals() {
                        shutdown.trigger();
                        interrupted = Some(e);
                    }
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err(raise(py, "PypelininError", "the broker thread died".into()))
            }
        }
    };
    drop(pool);
    if let Some(e) = interrupted {
        return Err(e);
    }
    result.map_err(|e| raise(py, "PypelininError", format!("the broker stopped: {e}")))
}
