//! The diagnostic and benchmark workers: the ones that exercise the cluster itself.
//!
//! `Noop`, `Echo`, `Sleep`, `Fail`, `Crash` and `Flaky` probe timing, failures, panics
//! and retries; `Step` and `Join` are the links and fan-ins of benchmark pipelines.

use std::time::Duration;

use pypelinin_broker::{BoxError, JobInfo, Worker};
use pypelinin_common::Data;
use serde_json::{json, Value};

use super::{count_setting, object, parent_outputs};

// ---------------------------------------------------------------------------------
// Diagnostic workers
// ---------------------------------------------------------------------------------

/// Does nothing and returns `{}`.
///
/// Exists to measure the cluster's own overhead per job, with no work in the way.
#[derive(Clone, Copy, Debug, Default)]
pub struct Noop;

impl Worker for Noop {
    fn process(&self, _job: &JobInfo, _input: Data) -> Result<Data, BoxError> {
        Ok(Data::new())
    }
}

/// Returns its whole input (job data plus `"parents"`).
///
/// Exists to see exactly what a store's `retrieve` hands a worker.
#[derive(Clone, Copy, Debug, Default)]
pub struct Echo;

impl Worker for Echo {
    fn process(&self, _job: &JobInfo, input: Data) -> Result<Data, BoxError> {
        Ok(input)
    }
}

/// Sleeps `data["ms"]` milliseconds (default 100), then returns `{"slept_ms": ms}`.
///
/// Exists to make jobs that take a known time: for timeouts, slot usage, monitoring,
/// and to kill a broker in the middle of a job.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sleep;

impl Worker for Sleep {
    fn process(&self, _job: &JobInfo, input: Data) -> Result<Data, BoxError> {
        let ms = count_setting(&input, "ms", 100)?;
        std::thread::sleep(Duration::from_millis(ms));
        Ok(object(json!({ "slept_ms": ms })))
    }
}

/// Fails with `data["message"]`, or a default message.
///
/// Exists to test failure handling: retries, skipped descendants, error reporting.
#[derive(Clone, Copy, Debug, Default)]
pub struct Fail;

impl Worker for Fail {
    fn process(&self, _job: &JobInfo, input: Data) -> Result<Data, BoxError> {
        Err(message(&input, "Fail worker failed as asked").into())
    }
}

/// Misbehaves as `data["mode"]` says: `panic` (the default, with `data["message"]`),
/// `abort` (the process aborts), `segfault` (writes through a null pointer), `oom`
/// (allocates until memory runs out), `hang` (never returns), `exit` (exits the process).
///
/// Exists to check that no worker can take its broker down: with process isolation each
/// of these fails only its own attempt.
#[derive(Clone, Copy, Debug, Default)]
pub struct Crash;

impl Worker for Crash {
    fn process(&self, _job: &JobInfo, input: Data) -> Result<Data, BoxError> {
        let mode = input.get("mode").and_then(Value::as_str).unwrap_or("panic");
        match mode {
            "panic" => panic!("{}", message(&input, "Crash worker panicked as asked")),
            "abort" => std::process::abort(),
            "exit" => std::process::exit(3),
            "segfault" => {
                // SAFETY: none; crashing the process is the point of this mode.
                unsafe { std::ptr::null_mut::<u64>().write_volatile(1) };
                unreachable!()
            }
            "oom" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 64 << 20]);
                }
            }
            "hang" => loop {
                std::thread::sleep(Duration::from_secs(3600));
            },
            other => Err(format!("unknown Crash mode {other:?}").into()),
        }
    }
}

/// Fails its first `data["fail_attempts"]` attempts (default 1), then succeeds with
/// `{"attempt": n}`.
///
/// Exists to test retries: a job with `retries` at least `fail_attempts` succeeds.
/// Says which attempt it is through `tracing`, to show (and test) that a Rust worker's
/// events land in its job's captured log.
#[derive(Clone, Copy, Debug, Default)]
pub struct Flaky;

impl Worker for Flaky {
    fn process(&self, job: &JobInfo, input: Data) -> Result<Data, BoxError> {
        let fail = count_setting(&input, "fail_attempts", 1)?;
        tracing::info!(attempt = job.attempt, fail, "flaky worker starting");
        if u64::from(job.attempt) <= fail {
            return Err(format!("flaky failure on attempt {}", job.attempt).into());
        }
        Ok(object(json!({ "attempt": job.attempt })))
    }
}

/// `data["message"]` as text (a non-string value as its JSON), else `default`.
fn message(input: &Data, default: &str) -> String {
    match input.get("message") {
        None | Some(Value::Null) => default.to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

// ---------------------------------------------------------------------------------
// Benchmark workers
// ---------------------------------------------------------------------------------

/// One link of a benchmark chain: `{"i": i, "n": n + 1}`.
///
/// Reads `i` and `n` from its single parent's output, or for a root job from its data
/// (`i` defaults to 0, `n` to 0). So after a chain of `k` steps, `n` is `k`: a check that
/// every step ran once and saw its parent's output. It does no other work, so that a
/// benchmark measures the cluster. More than one parent is an error: that is `Join`'s job.
#[derive(Clone, Copy, Debug, Default)]
pub struct Step;

impl Worker for Step {
    fn process(&self, _job: &JobInfo, input: Data) -> Result<Data, BoxError> {
        let parents = parent_outputs(&input);
        let source = match parents.as_slice() {
            [] => &input,
            [one] => *one,
            many => {
                return Err(format!(
                    "Step takes at most one parent, this job has {}; use Join for fan-in",
                    many.len()
                )
                .into())
            }
        };
        let i = source.get("i").cloned().unwrap_or(json!(0));
        let n = count_setting(source, "n", 0)?;
        Ok(object(json!({ "i": i, "n": n + 1 })))
    }
}

/// The fan-in of a benchmark: `{"i": i, "n": max(n) + 1, "k": parents}`.
///
/// `i` comes from any parent that has one (else the data, else 0), `n` is one more than
/// the largest parent `n` (so it is the longest path's length), `k` counts the parents
/// so that a benchmark can check that every branch arrived.
#[derive(Clone, Copy, Debug, Default)]
pub struct Join;

impl Worker for Join {
    fn process(&self, _job: &JobInfo, input: Data) -> Result<Data, BoxError> {
        let parents = parent_outputs(&input);
        let i = parents
            .iter()
            .find_map(|p| p.get("i"))
            .or_else(|| input.get("i"))
            .cloned()
            .unwrap_or(json!(0));
        let mut n = 0;
        for parent in &parents {
            n = n.max(count_setting(parent, "n", 0)?);
        }
        if parents.is_empty() {
            n = count_setting(&input, "n", 0)?;
        }
        Ok(object(json!({ "i": i, "n": n + 1, "k": parents.len() })))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{input, run};
    use super::*;

    #[test]
    fn diagnostic_workers_do_what_they_say() {
        assert!(run(&Noop, object(json!({"x": 1}))).unwrap().is_empty());
        let inp = input(json!({"x": 1}), json!({"p": {"y": 2}}));
        assert_eq!(run(&Echo, inp.clone()).unwrap(), inp);

        let started = std::time::Instant::now();
        let out = run(&Sleep, object(json!({"ms": 30}))).unwrap();
        assert!(started.elapsed() >= Duration::from_millis(30));
        assert_eq!(out["slept_ms"], 30);

        let err = run(&Fail, Data::new()).unwrap_err();
        assert_eq!(err.to_string(), "Fail worker failed as asked");
        let err = run(&Fail, object(json!({"message": "boom"}))).unwrap_err();
        assert_eq!(err.to_string(), "boom");

        let panic = std::panic::catch_unwind(|| run(&Crash, object(json!({"message": "bang"}))))
            .unwrap_err();
        assert_eq!(
            panic.downcast_ref::<String>().map(String::as_str),
            Some("bang")
        );
    }

    #[test]
    fn step_and_join_count_the_longest_path() {
        let root = run(&Step, object(json!({"i": 7}))).unwrap();
        assert_eq!(Value::Object(root.clone()), json!({"i": 7, "n": 1}));
        let second = run(&Step, input(json!({"i": 99}), json!({"s0": root}))).unwrap();
        assert_eq!(Value::Object(second.clone()), json!({"i": 7, "n": 2}));

        let other = object(json!({"i": 7, "n": 5}));
        let joined = run(&Join, input(json!({}), json!({"a": second, "b": other}))).unwrap();
        assert_eq!(Value::Object(joined), json!({"i": 7, "n": 6, "k": 2}));

        let err = run(
            &Step,
            input(json!({}), json!({"a": {"n": 1}, "b": {"n": 2}})),
        )
        .unwrap_err();
        assert!(err.to_string().contains("Join"), "{err}");
        assert_eq!(run(&Join, object(json!({"i": 3}))).unwrap()["k"], 0);
    }
}
