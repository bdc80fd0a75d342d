//! The benchmark's Python scenarios, against the same Rust router and pipeliner:
//! S8, the `pypelinin` package's client (`PipelineManager`) submitting S1's pipelines
//! from a Python program, and S9, Python workers run by `pypelinin.Broker` in place of
//! the Rust broker. Both run the scripts of `example/bench/` with the interpreter of
//! [`interpreter`], so that what is measured is what a Python user runs; a machine
//! without the package skips them (see [`check_pypelinin`]) rather than failing
//! `--scenario all`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{ensure, Context};
use serde::Deserialize;

use crate::cluster::{reaped_children_cpu_seconds, Cluster};

/// The workspace's directory, where the scripts and `target/py-venv` are.
fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("example/ is inside the workspace")
}

/// The directory of the Python scripts; also the Python broker's working directory,
/// so that its workers module (`bench_workers`) is importable.
pub fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("bench")
}

/// The Python interpreter: `--python`, else `$PYPELININ_PYTHON`, else the venv that
/// `.ci/python` installs the package into (`target/py-venv`), else `python3`.
pub fn interpreter(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os("PYPELININ_PYTHON") {
        return p.into();
    }
    let venv = workspace().join("target/py-venv/bin/python");
    if venv.exists() {
        return venv;
    }
    "python3".into()
}

/// Whether `python` can import `pypelinin`; if not, why, for the one line printed
/// instead of S8 and S9.
pub fn check_pypelinin(python: &Path) -> Result<(), String> {
    let out = Command::new(python)
        .args(["-c", "import pypelinin"])
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            let last = err.lines().last().unwrap_or("").trim();
            Err(format!(
                "{} cannot import pypelinin ({last}); install it with `pip install ./python` and pass --python",
                python.display()
            ))
        }
        Err(e) => Err(format!("cannot run {}: {e}", python.display())),
    }
}

/// S8: runs the Python client for `n` pipelines on `c`; its wall seconds, the seconds
/// its `start` calls took (one round trip each), and the CPU seconds to add to the
/// driver's part of `c.cpu_seconds()`.
///
/// The client process is reaped by this driver, so its whole CPU, start-up included,
/// lands in the driver's cutime; that is taken out again and the client's own figure
/// for its timed section counted instead, to match the wall time.
pub fn s8(c: &Cluster, python: &Path, n: usize) -> anyhow::Result<(f64, f64, f64)> {
    let (api, broadcast) = c.endpoints();
    let reaped = reaped_children_cpu_seconds();
    let report = run_client(python, api, broadcast, n)?;
    let extra = report.cpu_s - (reaped_children_cpu_seconds() - reaped);
    Ok((report.wall_s, report.submit_s, extra))
}

/// What `python_client.py` reports of its timed section.
#[derive(Debug, Deserialize)]
struct ClientReport {
    n: usize,
    succeeded: usize,
    wall_s: f64,
    submit_s: f64,
    cpu_s: f64,
}

/// Runs S8's client for `n` pipelines against the cluster at `api`/`broadcast` and
/// returns its report, once it has checked that every pipeline succeeded.
fn run_client(python: &Path, api: &str, broadcast: &str, n: usize) -> anyhow::Result<ClientReport> {
    let script = scripts_dir().join("python_client.py");
    let out = Command::new(python)
        .arg(&script)
        .args([
            "--api",
            api,
            "--broadcast",
            broadcast,
            "--n",
            &n.to_string(),
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {} {}", python.display(), script.display()))?;
    ensure!(
        out.status.success(),
        "{} exited with {}",
        script.display(),
        out.status
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .last()
        .context("the Python client printed nothing")?;
    let report: ClientReport =
        serde_json::from_str(line).with_context(|| format!("the Python client said {line:?}"))?;
    ensure!(
        report.n == n && report.succeeded == n,
        "the Python client saw {} of {} pipelines succeed",
        report.succeeded,
        report.n
    );
    Ok(report)
}
