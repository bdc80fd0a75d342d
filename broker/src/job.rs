//! A job's life on a slot: load its input from the user's [`Store`], run the worker,
//! check the output's size, save it; and every way that can fail, as a [`JobError`].
//! Used by thread slots and inside slot child processes alike.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use pypelinin_common::protocol::{
    check_output_size, Assignment, JobInfo, OutputTooLarge, TARGET_DONE_KEY,
};
use pypelinin_common::Data;
use tracing::info_span;

use crate::api::{Store, Worker};

/// Why an attempt failed before its worker could return an output. Its text becomes
/// the job's error, as users and operators read it.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The router sent a job for a worker this broker does not offer.
    #[error("this broker has no worker {0:?}")]
    NoWorker(String),
    /// `Store::target_exists` failed.
    #[error("store could not check the target {target:?}: {error}")]
    Target {
        /// The target, placeholders filled.
        target: String,
        /// What the store said.
        error: String,
    },
    /// The target names a placeholder the job's data does not hold.
    #[error("target {target:?}: the job's data has no {key:?} to fill it")]
    TargetPlaceholder {
        /// The target as written.
        target: String,
        /// The missing key.
        key: String,
    },
    /// The job's `wait_for` condition could not be checked.
    #[error("wait_for: {0}")]
    Wait(String),
    /// `Store::retrieve` failed.
    #[error("store could not retrieve the input: {0}")]
    Retrieve(String),
    /// `Worker::process` returned an error: its message, as is.
    #[error("{0}")]
    Worker(String),
    /// `Worker::process` panicked (thread isolation, or inside a slot process).
    #[error("worker panicked: {0}")]
    Panicked(String),
    /// The output is larger than the router keeps.
    #[error(transparent)]
    OutputTooLarge(#[from] OutputTooLarge),
    /// `Store::save` failed.
    #[error("store could not save the output: {0}")]
    Save(String),
    /// The attempt was revoked before it ran.
    #[error("cancelled")]
    Cancelled,
    /// In thread isolation, the worker returned after its timeout.
    #[error("timed out after {limit_ms} ms (thread isolation cannot stop a worker: it ran for {ran_ms} ms)")]
    TimedOutInThread {
        /// The job's timeout.
        limit_ms: u128,
        /// How long the worker ran.
        ran_ms: u128,
    },
}

/// `retrieve → process → check → save` for one job; first its target (exists: done,
/// not run) and its `wait_for` condition (not met: reported, not run).
pub(crate) fn run_job(
    store: &dyn Store,
    workers: &HashMap<String, Arc<dyn Worker>>,
    info: &JobInfo,
) -> Result<Data, JobError> {
    let worker = workers
        .get(&info.worker)
        .ok_or_else(|| JobError::NoWorker(info.worker.clone()))?;
    if let Some(written) = &info.target {
        let target = fill_target(written, &info.data)?;
        let exists = store
            .target_exists(info, &target)
            .map_err(|e| JobError::Target {
                target: target.clone(),
                error: e.to_string(),
            })?;
        if exists {
            let mut done = Data::new();
            done.insert(TARGET_DONE_KEY.into(), serde_json::Value::String(target));
            return Ok(done);
        }
    }
    if let Some(wait) = &info.wait_for {
        if let Some(not_yet) = crate::sensor::check(wait, &info.data)? {
            return Ok(not_yet);
        }
    }
    let input = store
        .retrieve(info)
        .map_err(|e| JobError::Retrieve(e.to_string()))?;
    let output = match catch_unwind(AssertUnwindSafe(|| worker.process(info, input))) {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return Err(JobError::Worker(e.to_string())),
        Err(panic) => return Err(JobError::Panicked(panic_message(&*panic))),
    };
    check_output_size(&output)?;
    store
        .save(info, &output)
        .map_err(|e| JobError::Save(e.to_string()))?;
    Ok(output)
}

/// `target` with each `{name}` replaced by the job's `data[name]` (a string as is, any
/// other value as JSON); `{{` and `}}` stand for braces.
pub(crate) fn fill_target(target: &str, data: &Data) -> Result<String, JobError> {
    let mut out = String::with_capacity(target.len());
    let mut rest = target;
    while let Some(k) = rest.find(['{', '}']) {
        out.push_str(&rest[..k]);
        let tail = &rest[k..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push_str(&tail[..1]);
            rest = &tail[2..];
            continue;
        }
        let close = match (tail.starts_with('{'), tail.find('}')) {
            (true, Some(close)) => close,
            _ => {
                // A lone brace is kept as written.
                out.push_str(&tail[..1]);
                rest = &tail[1..];
                continue;
            }
        };
        let key = &tail[1..close];
        match data.get(key) {
            Some(serde_json::Value::String(s)) => out.push_str(s),
            Some(v) => out.push_str(&v.to_string()),
            None => {
                return Err(JobError::TargetPlaceholder {
                    target: target.to_string(),
                    key: key.to_string(),
                })
            }
        }
        rest = &tail[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A job run on a broker thread cannot be stopped: one that returns an output after
/// its timeout fails as timed out. An error stands as returned: a worker that stops
/// itself at its timeout (a [`crate::CommandWorker`] kills its command) says why.
pub(crate) fn past_timeout(
    result: Result<Data, JobError>,
    timeout: Option<Duration>,
    ran: Duration,
) -> Result<Data, JobError> {
    match timeout {
        Some(t) if ran > t && result.is_ok() => Err(JobError::TimedOutInThread {
            limit_ms: t.as_millis(),
            ran_ms: ran.as_millis(),
        }),
        _ => result,
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".into()
    }
}

/// The span a job's events are logged in, as in the router.
pub(crate) fn job_span(a: &Assignment) -> tracing::Span {
    info_span!("job", pipeline = %a.info.pipeline, job = %a.info.name, attempt = a.job.attempt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{BoxError, ClusterStore};
    use pypelinin_common::protocol::MAX_OUTPUT_BYTES;
    use serde_json::json;
    use std::sync::Mutex;

    fn info(worker: &str) -> JobInfo {
        let mut data = Data::new();
        data.insert("x".into(), json!(1));
        JobInfo {
            pipeline: Default::default(),
            name: "j".into(),
            worker: worker.into(),
            attempt: 1,
            data,
            parents: Default::default(),
            timeout_ms: None,
            target: None,
            wait_for: None,
        }
    }

    fn workers(f: impl Worker) -> HashMap<String, Arc<dyn Worker>> {
        let mut m: HashMap<String, Arc<dyn Worker>> = HashMap::new();
        m.insert("W".into(), Arc::new(f));
        m
    }

    /// A store that records what it saved and fails where told.
    #[derive(Default)]
    struct Recording {
        fail_retrieve: bool,
        fail_save: bool,
        saved: Mutex<Vec<Data>>,
    }

    impl Store for Recording {
        fn retrieve(&self, job: &JobInfo) -> Result<Data, BoxError> {
            if self.fail_retrieve {
                return Err("disk gone".into());
            }
            Ok(job.data.clone())
        }
        fn save(&self, _job: &JobInfo, output: &Data) -> Result<(), BoxError> {
            if self.fail_save {
                return Err("disk full".into());
            }
            self.saved.lock().unwrap().push(output.clone());
            Ok(())
        }
    }

    fn echo(_: &JobInfo, input: Data) -> Result<Data, BoxError> {
        Ok(input)
    }

    #[test]
    fn a_job_that_succeeds_is_saved_and_returns_its_output() {
        let store = Recording::default();
        let out = run_job(&store, &workers(echo), &info("W")).unwrap();
        assert_eq!(out.get("x"), Some(&json!(1)));
        assert_eq!(store.saved.lock().unwrap().as_slice(), &[out]);
    }

    #[test]
    fn an_existing_target_skips_the_worker_and_the_store_and_a_missing_one_runs_the_job() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out-1.csv");
        let mut i = info("W");
        i.target = Some(format!("{}/out-{{x}}.csv", dir.path().display()));
        let store = Recording::default();
        let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = ran.clone();
        let w = move |_: &JobInfo, input: Data| -> Result<Data, BoxError> {
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok(input)
        };
        let missing = run_job(&store, &workers(w.clone()), &i).unwrap();
        assert!(ran.load(std::sync::atomic::Ordering::SeqCst));
        assert!(!missing.contains_key(TARGET_DONE_KEY));
        assert_eq!(store.saved.lock().unwrap().len(), 1);

        std::fs::write(&path, "done").unwrap();
        ran.store(false, std::sync::atomic::Ordering::SeqCst);
        let done = run_job(&store, &workers(w), &i).unwrap();
        assert!(
            !ran.load(std::sync::atomic::Ordering::SeqCst),
            "the worker did not run"
        );
        assert_eq!(store.saved.lock().unwrap().len(), 1, "nothing saved");
        assert_eq!(done.len(), 1);
        assert_eq!(done[TARGET_DONE_KEY], json!(path.display().to_string()));
    }

    #[test]
    fn a_wait_not_met_reports_not_yet_without_running_and_once_met_the_job_runs() {
        use pypelinin_common::protocol::NOT_YET_KEY;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in-1");
        let mut i = info("W");
        i.wait_for = Some(pypelinin_common::sensor::WaitFor {
            file: Some(format!("{}/in-{{x}}", dir.path().display())),
            ..Default::default()
        });
        let store = Recording::default();
        let not_yet = run_job(&store, &workers(echo), &i).unwrap();
        assert_eq!(not_yet.len(), 1);
        assert_eq!(
            not_yet[NOT_YET_KEY],
            json!(format!("file {}", path.display()))
        );
        assert!(store.saved.lock().unwrap().is_empty(), "nothing saved");
        std::fs::write(&path, "here").unwrap();
        let out = run_job(&store, &workers(echo), &i).unwrap();
        assert_eq!(out.get("x"), Some(&json!(1)));
        assert_eq!(store.saved.lock().unwrap().len(), 1);
    }

    #[test]
    fn target_placeholders_are_filled_from_the_job_data() {
        let mut data = Data::new();
        data.insert("logical_date".into(), json!("2026-12-01T00:00:00Z"));
        data.insert("n".into(), json!(7));
        let fill = |t: &str| fill_target(t, &data);
        assert_eq!(
            fill("/d/{logical_date}/{n}.csv").unwrap(),
            "/d/2026-12-01T00:00:00Z/7.csv"
        );
        assert_eq!(fill("{{literal}} {n}").unwrap(), "{literal} 7");
        assert_eq!(fill("plain } and { alone").unwrap(), "plain } and { alone");
        let e = fill("/d/{nope}.csv").unwrap_err();
        assert!(e.to_string().contains("\"nope\""), "{e}");
    }

    #[test]
    fn the_cluster_store_hands_the_worker_the_parents_outputs() {
        let mut i = info("W");
        i.parents.insert("p".into(), Data::new());
        let out = run_job(&ClusterStore, &workers(echo), &i).unwrap();
        assert_eq!(out.get("parents"), Some(&json!({"p": {}})));
    }

    #[test]
    fn a_worker_error_fails_the_job_with_its_message_and_saves_nothing() {
        let store = Recording::default();
        let w = |_: &JobInfo, _: Data| -> Result<Data, BoxError> { Err("bad input".into()) };
        let e = run_job(&store, &workers(w), &info("W")).unwrap_err();
        assert!(
            matches!(&e, JobError::Worker(m) if m == "bad input"),
            "{e:?}"
        );
        assert_eq!(e.to_string(), "bad input");
        assert!(store.saved.lock().unwrap().is_empty());
    }

    #[test]
    fn a_worker_that_panics_fails_the_job_with_the_panic_message() {
        let w = |_: &JobInfo, _: Data| -> Result<Data, BoxError> { panic!("index out of bounds") };
        let e = run_job(&Recording::default(), &workers(w), &info("W")).unwrap_err();
        assert!(matches!(&e, JobError::Panicked(m) if m == "index out of bounds"));
        assert_eq!(e.to_string(), "worker panicked: index out of bounds");
    }

    #[test]
    fn an_output_too_large_fails_the_job_and_is_not_saved() {
        let store = Recording::default();
        let w = |_: &JobInfo, _: Data| -> Result<Data, BoxError> {
            let mut d = Data::new();
            d.insert("big".into(), json!("x".repeat(MAX_OUTPUT_BYTES + 1)));
            Ok(d)
        };
        let e = run_job(&store, &workers(w), &info("W")).unwrap_err();
        assert!(matches!(e, JobError::OutputTooLarge(_)), "{e:?}");
        assert!(store.saved.lock().unwrap().is_empty());
    }

    #[test]
    fn store_failures_and_unknown_workers_fail_the_job() {
        let bad_in = Recording {
            fail_retrieve: true,
            ..Recording::default()
        };
        let e = run_job(&bad_in, &workers(echo), &info("W")).unwrap_err();
        assert!(matches!(e, JobError::Retrieve(_)), "{e:?}");
        let bad_out = Recording {
            fail_save: true,
            ..Recording::default()
        };
        let e = run_job(&bad_out, &workers(echo), &info("W")).unwrap_err();
        assert!(matches!(e, JobError::Save(_)), "{e:?}");
        let e = run_job(&bad_out, &workers(echo), &info("Nope")).unwrap_err();
        assert!(matches!(e, JobError::NoWorker(_)), "{e:?}");
    }

    #[test]
    fn a_thread_job_that_returns_after_its_timeout_fails_as_timed_out() {
        let t = Some(Duration::from_millis(400));
        let late = past_timeout(Ok(Data::new()), t, Duration::from_millis(401));
        assert!(matches!(
            late,
            Err(JobError::TimedOutInThread {
                limit_ms: 400,
                ran_ms: 401
            })
        ));
        assert!(past_timeout(Ok(Data::new()), t, Duration::from_millis(400)).is_ok());
        assert!(past_timeout(Ok(Data::new()), None, Duration::from_secs(9)).is_ok());
        let own = past_timeout(
            Err(JobError::Worker("timed out after 400 ms: killed".into())),
            t,
            Duration::from_millis(401),
        );
        assert!(
            matches!(own, Err(JobError::Worker(_))),
            "its own error stands"
        );
    }
}
