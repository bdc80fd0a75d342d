//! `pypelinin._native.Client`: the Rust sync client for the Python `PipelineManager`.
//!
//! Every network wait runs with the GIL released. Answers are JSON text of the
//! protocol's types (`PipelineStatus`, as `pypelinin status --json` prints it).

use std::str::FromStr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use pyo3::prelude::*;
use pypelinin_client::{ClientError, Finished, PipelineManager};
use pypelinin_common::protocol::{PipelineId, ProtocolError};
use pypelinin_common::transport::TransportError;
use pypelinin_common::PipelineSpec;

use crate::raise;

/// A connection to one router: submit, read statuses, wait, cancel.
#[pyclass(module = "pypelinin._native")]
pub struct Client {
    manager: Mutex<PipelineManager>,
    /// The router's `pipeline.finished` broadcasts, subscribed on first use.
    finished: Mutex<Option<Finished>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Seconds from Python, as a duration (negative and NaN count as zero).
fn seconds(s: f64) -> Duration {
    Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::MAX)
}

/// The Python exception for a client error: who is at fault decides the class.
fn convert(py: Python<'_>, e: ClientError) -> PyErr {
    match e {
        ClientError::Transport(TransportError::Unreachable { .. })
        | ClientError::Transport(TransportError::Zmq(_)) => {
            raise(py, "RouterUnavailable", e.to_string())
        }
        ClientError::Transport(TransportError::Refused(ProtocolError::InvalidPipeline(why))) => {
            raise(py, "PipelineRefused", why)
        }
        ClientError::Timeout { .. } => raise(py, "Timeout", e.to_string()),
        other => raise(py, "PypelininError", other.to_string()),
    }
}

fn parse_id(id: &str) -> PyResult<PipelineId> {
    PipelineId::from_str(id).map_err(|e| {
        pyo3::exceptions::PyValueError::new_err(format!("not a pipeline id {id:?}: {e}"))
    })
}

fn to_json<T: serde::Serialize>(value: &T) -> PyResult<String> {
    serde_json::to_string(value)
        .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))
}

#[pymethods]
impl Client {
    /// A client of the router at `api` (requests) and `broadcast` (events). Each
    /// request waits `timeout` seconds for an answer, `attempts` times, before
    /// `RouterUnavailable` is raised. With `curve_secret` (a key file of
    /// `pypelinin keygen`) and `router_key` (the router's public key, or a `.pub` file)
    /// every connection is CURVE-authenticated and encrypted.
    #[new]
    #[pyo3(signature = (api, broadcast, timeout, attempts, curve_secret=None, router_key=None))]
    fn new(
        py: Python<'_>,
        api: &str,
        broadcast: &str,
        timeout: f64,
        attempts: u32,
        curve_secret: Option<String>,
        router_key: Option<String>,
    ) -> PyResult<Self> {
        let security = crate::security(py, curve_secret, router_key)?;
        let mut manager =
            PipelineManager::connect_with(api, broadcast, &security).map_err(|e| convert(py, e))?;
        manager.set_patience(seconds(timeout), attempts.max(1));
        Ok(Client {
            manager: Mutex::new(manager),
            finished: Mutex::new(None),
        })
    }

    /// Submits a pipeline (the JSON of a `PipelineSpec`); returns its id once the
    /// router has made it durable. A spec the cluster cannot take raises
    /// `PipelineRefused` with the reason.
    fn submit(&self, py: Python<'_>, spec: &str) -> PyResult<String> {
        let spec: PipelineSpec = serde_json::from_str(spec)
            .map_err(|e| raise(py, "PipelineRefused", format!("invalid pipeline: {e}")))?;
        let id = py
            .detach(|| lock(&self.manager).start(&spec))
            .map_err(|e| convert(py, e))?;
        Ok(id.to_string())
    }

    /// The statuses of `ids` now (a JSON list, in order), finished or not.
    fn statuses(&self, py: Python<'_>, ids: Vec<String>) -> PyResult<String> {
        let ids = ids
            .iter()
            .map(|i| parse_id(i))
            .collect::<PyResult<Vec<_>>>()?;
        let s = py
            .detach(|| lock(&self.manager).statuses(&ids))
            .map_err(|e| convert(py, e))?;
        to_json(&s)
    }

    /// Waits until every one of `ids` is final, at most `timeout` seconds (then
    /// `Timeout`); their statuses as a JSON list.
    fn wait(&self, py: Python<'_>, ids: Vec<String>, timeout: f64) -> PyResult<String> {
        let ids = ids
            .iter()
            .map(|i| parse_id(i))
            .collect::<PyResult<Vec<_>>>()?;
        let s = py
            .detach(|| lock(&self.manager).wait_all(&ids, seconds(timeout)))
            .map_err(|e| convert(py, e))?;
        to_json(&s)
    }

    /// Cancels a pipeline; its status (JSON) after the cancel.
    fn cancel(&self, py: Python<'_>, id: &str) -> PyResult<String> {
        let id = parse_id(id)?;
        let s = py
            .detach(|| lock(&self.manager).cancel(id))
            .map_err(|e| convert(py, e))?;
        to_json(&s)
    }

    /// Waits at most `timeout` seconds for the router to broadcast that a pipeline
    /// finished; its id, or `None`. A wake-up only: broadcasts can be lost, statuses
    /// are the truth.
    fn next_finished(&self, py: Python<'_>, timeout: f64) -> PyResult<Option<String>> {
        let outcome = py.detach(|| -> Result<Option<String>, ClientError> {
            let mut sub = lock(&self.finished);
            if sub.is_none() {
                *sub = Some(lock(&self.manager).subscribe()?);
            }
            let next = sub.as_ref().and_then(|s| s.next_timeout(seconds(timeout)));
            Ok(next.map(|(id, _)| id.to_string()))
        });
        outcome.map_err(|e| convert(py, e))
    }
}
