//! The example's workers: their registration by name, and the input helpers they share.
//!
//! This module owns the table of workers ([`WORKER_NAMES`], [`by_name`], [`register`]);
//! the workers themselves live in two submodules, re-exported here:
//! `documents` holds a small document-analysis pipeline (`Reader`, `WordCount`,
//! `Links`, `Report`, with [`WordStats`] and [`extract_links`]), and `diagnostic` holds
//! the workers that exercise the cluster itself (`Noop`, `Echo`, `Sleep`, `Fail`,
//! `Crash`, `Flaky`, and the benchmark workers `Step` and `Join`): timing, failures,
//! panics, retries and fan-in.
//!
//! # Input convention
//! A worker's input is what the store's `retrieve` built: the job's `data` plus a
//! `"parents"` key mapping each parent job's name to that parent's output. Workers never
//! look up a parent by name: they take the parent output that has the field they need
//! (for instance the one with `"text"`), so the same worker fits any pipeline shape.

use std::sync::Arc;

use pypelinin_broker::{BoxError, Broker, CommandWorker, JobInfo, PersistentWorker, Worker};
use pypelinin_common::Data;
use serde_json::Value;

mod diagnostic;
mod documents;

pub use diagnostic::{Crash, Echo, Fail, Flaky, Join, Noop, Sleep, Step};
pub use documents::{extract_links, Links, Reader, Report, WordCount, WordStats};

/// The name of every worker [`register`] offers, in the order it registers them.
///
/// Exists so that binaries can print what a broker runs and tests can check that each
/// name resolves (see [`by_name`]).
pub const WORKER_NAMES: &[&str] = &[
    "Reader",
    "WordCount",
    "Links",
    "Report",
    "Noop",
    "Echo",
    "Sleep",
    "Fail",
    "Crash",
    "Flaky",
    "Step",
    "Join",
    "InputBytes",
    "True",
    "Persist",
];

/// `InputBytes`: a command worker, to show one next to the Rust workers. A POSIX
/// shell counts the bytes of the JSON input it reads on stdin and writes
/// `{"input_bytes": N}` to `$PYPELININ_OUTPUT`, which becomes the job's output.
pub fn input_bytes() -> CommandWorker {
    CommandWorker::new(
        [
            "sh",
            "-c",
            r#"n=$(wc -c | tr -d ' '); printf '{"input_bytes": %s}' "$n" > "$PYPELININ_OUTPUT""#,
        ]
        .map(String::from)
        .to_vec(),
    )
}

/// `Persist`: the cheapest persistent worker, to measure what a job costs on a
/// long-lived process (S7) against a process per job (S6, `True`). Python, since that
/// is what users run: a loop answering every request line with an empty output.
pub fn persist() -> PersistentWorker {
    PersistentWorker::new(
        [
            "python3",
            "-c",
            r#"import json, sys
for line in sys.stdin:
    sys.stdout.write('{"id": %d, "output": {}}\n' % json.loads(line)["id"])
    sys.stdout.flush()"#,
        ]
        .map(String::from)
        .to_vec(),
    )
}

/// The worker registered under `name`, if it is one of [`WORKER_NAMES`].
///
/// Exists so that one table maps names to workers: [`register`] uses it for a broker,
/// and a program can also run a worker in-process (e.g. to try it without a cluster).
pub fn by_name(name: &str) -> Option<Arc<dyn Worker>> {
    let worker: Arc<dyn Worker> = match name {
        "Reader" => Arc::new(Reader),
        "WordCount" => Arc::new(WordCount),
        "Links" => Arc::new(Links),
        "Report" => Arc::new(Report),
        "Noop" => Arc::new(Noop),
        "Echo" => Arc::new(Echo),
        "Sleep" => Arc::new(Sleep),
        "Fail" => Arc::new(Fail),
        "Crash" => Arc::new(Crash),
        "Flaky" => Arc::new(Flaky),
        "Step" => Arc::new(Step),
        "Join" => Arc::new(Join),
        "InputBytes" => Arc::new(input_bytes()),
        // The cheapest command there is: the benchmark's one-shot scenario (S6).
        "True" => Arc::new(CommandWorker::new(vec!["true".to_string()])),
        // Its persistent counterpart: the benchmark's persistent scenario (S7).
        "Persist" => Arc::new(persist()),
        _ => return None,
    };
    Some(worker)
}

/// Offers every example worker to `b` under its name in [`WORKER_NAMES`].
///
/// Exists so that every broker binary (and test) runs the same set of workers with
/// one call: `register(Broker::new()).store_factory(...)`.
pub fn register(b: Broker) -> Broker {
    WORKER_NAMES.iter().fold(b, |b, &name| {
        let worker = by_name(name).expect("every name in WORKER_NAMES has a worker");
        b.worker(name, move |job: &JobInfo, input: Data| {
            worker.process(job, input)
        })
    })
}

// ---------------------------------------------------------------------------------
// Input helpers
// ---------------------------------------------------------------------------------

/// The parents' outputs in the input, in the order the store gave them.
fn parent_outputs(input: &Data) -> Vec<&Data> {
    match input.get("parents") {
        Some(Value::Object(parents)) => parents.values().filter_map(Value::as_object).collect(),
        _ => Vec::new(),
    }
}

/// The first parent output holding `field`; when no parent has it, the input itself if
/// it holds `field` (so a root job can be given, say, a `"text"` in its own data).
fn find_with<'a>(input: &'a Data, field: &str) -> Option<&'a Data> {
    parent_outputs(input)
        .into_iter()
        .find(|output| output.contains_key(field))
        .or_else(|| input.contains_key(field).then_some(input))
}

/// A non-negative integer setting from the job's data, or `default` when absent or null.
fn count_setting(input: &Data, key: &str, default: u64) -> Result<u64, BoxError> {
    match input.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(value) => value.as_u64().ok_or_else(|| {
            format!("data {key:?} must be a non-negative integer, not {value}").into()
        }),
    }
}

/// Turns a `json!` object literal into [`Data`].
fn object(value: Value) -> Data {
    match value {
        Value::Object(map) => map,
        _ => unreachable!("object() is only called with json!({{...}})"),
    }
}

/// Helpers shared by the workers' tests.
#[cfg(test)]
mod testing {
    use super::*;
    use pypelinin_common::PipelineId;
    use std::collections::BTreeMap;

    pub(super) fn job(worker: &str) -> JobInfo {
        JobInfo {
            pipeline: PipelineId::new(),
            name: format!("{}-job", worker.to_lowercase()),
            worker: worker.to_string(),
            attempt: 1,
            data: Data::new(),
            parents: BTreeMap::new(),
            timeout_ms: None,
            target: None,
            wait_for: None,
        }
    }

    /// An input as the stores build it: `data` plus `"parents"`.
    pub(super) fn input(data: Value, parents: Value) -> Data {
        let mut input = object(data);
        input.insert("parents".into(), parents);
        input
    }

    pub(super) fn run(worker: &dyn Worker, input: Data) -> Result<Data, BoxError> {
        worker.process(&job("test"), input)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::job;
    use super::*;
    use serde_json::json;
    use std::collections::HashSet;

    #[test]
    fn every_registered_name_resolves_to_a_worker() {
        let unique: HashSet<&str> = WORKER_NAMES.iter().copied().collect();
        assert_eq!(unique.len(), 15);
        for name in WORKER_NAMES {
            assert!(by_name(name).is_some(), "{name}");
        }
        assert!(by_name("Nope").is_none());
        let noop = by_name("Noop").unwrap();
        assert!(noop.process(&job("Noop"), Data::new()).unwrap().is_empty());
        let _broker = register(Broker::new());
    }

    #[test]
    fn input_bytes_counts_its_json_input_in_a_shell() {
        let input = super::testing::input(json!({"document": "a.txt"}), json!({}));
        let expected = serde_json::to_vec(&input).unwrap().len();
        let out = super::testing::run(&input_bytes(), input).unwrap();
        assert_eq!(out["input_bytes"], json!(expected), "{out:?}");
    }
}
