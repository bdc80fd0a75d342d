//! `pypelinin._native`: the native half of the Python package.
//!
//! The Python package (`python/pypelinin/`) gives pypelinin's API; this module gives it
//! the one implementation of the protocol, the Rust crates: [`client::Client`] wraps the
//! sync [`pypelinin_client::PipelineManager`], [`broker::run_broker`] runs a
//! [`pypelinin_broker::Broker`] inside the Python process, with the user's store called
//! under the GIL and the user's workers served by long-lived Python processes
//! ([`pypelinin_broker::PersistentWorker`] running `python -m pypelinin._worker_host`).
//!
//! Values cross the boundary as JSON text: the Python side encodes and decodes with its
//! `json` module, so this module has no Python object conversions to get wrong.
//! Errors become the exception classes of `pypelinin.errors`, built by [`raise`].

#![warn(missing_docs)]

use pyo3::prelude::*;

pub mod broker;
pub mod client;

/// The CURVE setting of a client or broker from its key file and the router's key
/// (`None`, `None`: plain). A bad or missing key raises `PypelininError` naming it:
/// keys asked for never fall back to plain text.
pub fn security(
    py: Python<'_>,
    curve_secret: Option<String>,
    router_key: Option<String>,
) -> PyResult<pypelinin_common::curve::Security> {
    pypelinin_common::curve::Security::client_from(
        curve_secret.as_deref().map(std::path::Path::new),
        router_key.as_deref(),
    )
    .map_err(|e| raise(py, "PypelininError", e.to_string()))
}

/// A `pypelinin.errors` exception of class `class` with `message`; a plain
/// `RuntimeError` if that module cannot be imported (it always can in the package).
pub fn raise(py: Python<'_>, class: &str, message: String) -> PyErr {
    let built = py
        .import("pypelinin.errors")
        .and_then(|m| m.getattr(class))
        .and_then(|cls| cls.call1((message.clone(),)));
    match built {
        Ok(value) => PyErr::from_value(value),
        Err(_) => pyo3::exceptions::PyRuntimeError::new_err(message),
    }
}

/// The exception's text with its Python traceback, as a job's error shows it.
pub fn describe(py: Python<'_>, err: &PyErr) -> String {
    let tb = err
        .traceback(py)
        .and_then(|t| pyo3::types::PyTracebackMethods::format(&t).ok())
        .unwrap_or_default();
    format!("{tb}{}: {}", type_name(py, err), err.value(py))
}

fn type_name(py: Python<'_>, err: &PyErr) -> String {
    err.get_type(py)
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "Exception".into())
}

/// The module: `Client` and `run_broker`.
#[pymodule]
#[pyo3(name = "_native")]
fn native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<client::Client>()?;
    m.add_function(wrap_pyfunction!(broker::run_broker, m)?)?;
    Ok(())
}
