//! The example's stores and the factory that picks one from the cluster configuration.
//!
//! The router hands every broker the same `ClusterConfig`, whose free-form `store`
//! value is read here by [`store_from_config`]. Two kinds are offered:
//! - `{"kind": "cluster"}` (the default): [`pypelinin_broker::ClusterStore`], outputs kept in the
//!   router's database. Nothing to set up, and it works across machines.
//! - `{"kind": "json", "dir": "..."}`: [`JsonFileStore`], outputs written as JSON files,
//!   the way pypelinin's example stored results. Useful to inspect outputs with ordinary
//!   tools, and to keep large outputs out of the router; brokers on several machines
//!   need the directory on a shared file system.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pypelinin_broker::{BoxError, ClusterConfig, ClusterStore, JobInfo, MonitoringReport, Store};
use pypelinin_common::{Data, PipelineId};
use serde_json::Value;

/// Name of the monitoring log inside a [`JsonFileStore`]'s directory.
pub const MONITORING_FILE: &str = "monitoring.jsonl";

/// A store that keeps each job's output in `DIR/<pipeline id>/<job name>.json`.
///
/// Exists as the example of a user store, after pypelinin's file-based example:
/// - `save` writes pretty JSON to a temporary file in the same directory, syncs it and
///   renames it over the final name. A reader sees the old file or the new one, never a
///   half-written one, and saving a job again (a retried or re-run attempt) leaves
///   exactly one complete copy: `save` is idempotent, as the cluster requires.
/// - `retrieve` gives the job's `data` plus `"parents"`, each parent's output read from
///   its file, falling back to the copy the router keeps when there is no file.
/// - `save_monitoring` appends one JSON line per report to `DIR/monitoring.jsonl`.
///
/// Job names are free text, so the file name is the job name with every byte other than
/// ASCII letters, digits, `-` and `_` written as `%XX` (a `.` too, so that no name can
/// climb out of the directory); very long names are shortened and suffixed with a hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonFileStore {
    /// The root directory; created on demand.
    pub dir: PathBuf,
}

impl JsonFileStore {
    /// A store rooted at `dir`, creating the directory if needed so that a bad path is
    /// reported when the broker starts rather than at the first job.
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self, BoxError> {
        let dir = dir.into();
        fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create store directory {}: {e}", dir.display()))?;
        Ok(JsonFileStore { dir })
    }

    /// The directory holding the outputs of `pipeline`.
    pub fn pipeline_dir(&self, pipeline: &PipelineId) -> PathBuf {
        self.dir.join(pipeline.to_string())
    }

    /// The file holding the output of job `job` of `pipeline` (it may not exist yet).
    pub fn output_path(&self, pipeline: &PipelineId, job: &str) -> PathBuf {
        self.pipeline_dir(pipeline)
            .join(format!("{}.json", file_stem(job)))
    }

    /// The saved output of job `job` of `pipeline`, or `None` if it was never saved.
    ///
    /// Exists for tests and tools that check what the cluster wrote.
    pub fn load(&self, pipeline: &PipelineId, job: &str) -> Result<Option<Data>, BoxError> {
        let path = self.output_path(pipeline, job);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display()).into()),
        };
        match serde_json::from_str(&text) {
            Ok(Value::Object(data)) => Ok(Some(data)),
            Ok(_) => Err(format!("{} does not hold a JSON object", path.display()).into()),
            Err(e) => Err(format!("{} is not valid JSON: {e}", path.display()).into()),
        }
    }
}

impl Store for JsonFileStore {
    fn retrieve(&self, job: &JobInfo) -> Result<Data, BoxError> {
        let mut input = job.data.clone();
        let mut parents = Data::new();
        for (name, kept) in &job.parents {
            let output = match self.load(&job.pipeline, name)? {
                Some(saved) => saved,
                None => kept.clone(),
            };
            parents.insert(name.clone(), Value::Object(output));
        }
        input.insert("parents".into(), Value::Object(parents));
        Ok(input)
    }

    fn save(&self, job: &JobInfo, output: &Data) -> Result<(), BoxError> {
        let dir = self.pipeline_dir(&job.pipeline);
        fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let path = self.output_path(&job.pipeline, &job.name);
        let mut text = serde_json::to_string_pretty(output)?;
        text.push('\n');
        write_atomically(&dir, &path, text.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", path.display()).into())
    }

    fn save_monitoring(&self, report: &MonitoringReport) -> Result<(), BoxError> {
        fs::create_dir_all(&self.dir)
            .map_err(|e| format!("cannot create {}: {e}", self.dir.display()))?;
        let path = self.dir.join(MONITORING_FILE);
        let mut line = serde_json::to_string(report)?;
        line.push('\n');
        // One write of the whole line in append mode: lines from several threads or
        // brokers sharing the file do not interleave.
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        file.write_all(line.as_bytes())
            .map_err(|e| format!("cannot append to {}: {e}", path.display()).into())
    }
}

/// Writes `bytes` to `path` through a synced temporary file in `dir` and a rename.
fn write_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = tempfile::Builder::new()
        .prefix(".partial-")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    // Make the rename itself durable (directories cannot be opened this way elsewhere).
    #[cfg(unix)]
    fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Longest file stem written as is; longer encoded names are cut and given a hash.
const MAX_STEM: usize = 180;

/// A file-name-safe, collision-free form of a job name.
fn file_stem(name: &str) -> String {
    let mut stem = String::with_capacity(name.len());
    for &b in name.as_bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            stem.push(b as char);
        } else {
            stem.push_str(&format!("%{b:02X}"));
        }
    }
    if stem.is_empty() {
        // Job names are never empty, but a file must still have a name.
        stem.push('%');
    }
    if stem.len() > MAX_STEM {
        // The encoded form is ASCII, so any byte index is a character boundary.
        stem.truncate(MAX_STEM - 17);
        stem.push_str(&format!("~{:016x}", fnv1a(name.as_bytes())));
    }
    stem
}

/// 64-bit FNV-1a: a tiny hash that is the same on every machine and Rust version.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Builds the store described by `config.store`; the factory every example broker uses.
///
/// Exists so that the store is chosen once, in the router's configuration, and every
/// broker that joins builds the same one. Accepted settings:
/// - missing, `null`, `{}` or `{"kind": "cluster"}`: [`ClusterStore`];
/// - `{"kind": "json", "dir": "path"}`: [`JsonFileStore`] (the directory is created;
///   a relative path is relative to the broker's working directory).
///
/// Anything else is an error that names the accepted kinds.
pub fn store_from_config(config: &ClusterConfig) -> Result<Arc<dyn Store>, BoxError> {
    const ACCEPTED: &str = "accepted store kinds: \"cluster\" (outputs kept by the router, \
                            the default) and \"json\" (with \"dir\": JSON files in a directory)";
    let settings = match &config.store {
        Value::Null => return Ok(Arc::new(ClusterStore)),
        Value::Object(settings) => settings,
        other => {
            return Err(format!("store settings must be an object, not {other}; {ACCEPTED}").into())
        }
    };
    match settings.get("kind") {
        None if settings.is_empty() => Ok(Arc::new(ClusterStore)),
        Some(Value::String(kind)) if kind == "cluster" => Ok(Arc::new(ClusterStore)),
        Some(Value::String(kind)) if kind == "json" => match settings.get("dir") {
            Some(Value::String(dir)) if !dir.is_empty() => Ok(Arc::new(JsonFileStore::new(dir)?)),
            _ => Err("store kind \"json\" needs \"dir\": the directory to write outputs to".into()),
        },
        None => Err(format!(
            "store settings {} have no \"kind\"; {ACCEPTED}",
            config.store
        )
        .into()),
        Some(kind) => Err(format!("unknown store kind {kind}; {ACCEPTED}").into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::BTreeMap;

    fn object(value: Value) -> Data {
        value.as_object().cloned().expect("an object")
    }

    fn job(pipeline: PipelineId, name: &str, parents: &[(&str, Value)]) -> JobInfo {
        JobInfo {
            pipeline,
            name: name.to_string(),
            worker: "Echo".to_string(),
            attempt: 1,
            data: object(json!({"document": "rivers.txt", "top": 3})),
            parents: parents
                .iter()
                .map(|(n, v)| (n.to_string(), object(v.clone())))
                .collect::<BTreeMap<_, _>>(),
            timeout_ms: None,
            target: None,
            wait_for: None,
        }
    }

    fn config(store: Value) -> ClusterConfig {
        ClusterConfig {
            store,
            ..ClusterConfig::default()
        }
    }

    #[test]
    fn json_store_round_trips_and_prefers_parent_files() {
        let tmp = tempfile::tempdir().unwrap();
        let store = JsonFileStore::new(tmp.path().join("out")).unwrap();
        let pipeline = PipelineId::new();

        let read = job(pipeline, "read", &[]);
        store
            .save(&read, &object(json!({"text": "from the file"})))
            .unwrap();
        let path = tmp
            .path()
            .join("out")
            .join(pipeline.to_string())
            .join("read.json");
        assert!(path.is_file(), "{}", path.display());
        let on_disk: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(on_disk, json!({"text": "from the file"}));

        // "read" has a file, which wins over the router's copy; "other" has none.
        let words = job(
            pipeline,
            "words",
            &[
                ("read", json!({"text": "router copy"})),
                ("other", json!({"x": 1})),
            ],
        );
        let input = store.retrieve(&words).unwrap();
        assert_eq!(
            Value::Object(input),
            json!({
                "document": "rivers.txt",
                "top": 3,
                "parents": {"read": {"text": "from the file"}, "other": {"x": 1}},
            })
        );
        assert_eq!(
            store.load(&pipeline, "read").unwrap(),
            Some(object(json!({"text": "from the file"})))
        );
        assert_eq!(store.load(&pipeline, "other").unwrap(), None);
        assert_eq!(store.load(&PipelineId::new(), "read").unwrap(), None);
    }

    #[test]
    fn json_store_save_twice_leaves_one_file_with_the_last_output() {
        let tmp = tempfile::tempdir().unwrap();
        let store = JsonFileStore::new(tmp.path()).unwrap();
        let pipeline = PipelineId::new();
        let mut report = job(pipeline, "report", &[]);
        store
            .save(
                &report,
                &object(json!({"n": 1, "long": "x".repeat(10_000)})),
            )
            .unwrap();
        report.attempt = 2;
        store.save(&report, &object(json!({"n": 2}))).unwrap();

        let files: Vec<String> = fs::read_dir(store.pipeline_dir(&pipeline))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(files, vec!["report.json".to_string()]);
        assert_eq!(
            store.load(&pipeline, "report").unwrap(),
            Some(object(json!({"n": 2})))
        );
    }

    #[test]
    fn json_store_keeps_odd_job_names_inside_its_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let store = JsonFileStore::new(tmp.path()).unwrap();
        let pipeline = PipelineId::new();
        let long = "é".repeat(200);
        for name in ["../escape", "a/b", "a.b", "a%2Eb", ".", long.as_str()] {
            let j = job(pipeline, name, &[]);
            store.save(&j, &object(json!({"name": name}))).unwrap();
            let path = store.output_path(&pipeline, name);
            assert_eq!(
                path.parent().unwrap(),
                store.pipeline_dir(&pipeline),
                "{name}"
            );
            assert!(path.file_name().unwrap().len() < 200, "{name}");
        }
        for name in ["../escape", "a/b", "a.b", "a%2Eb", ".", long.as_str()] {
            let saved = store.load(&pipeline, name).unwrap().unwrap();
            assert_eq!(saved["name"], name);
        }
        assert_eq!(
            fs::read_dir(store.pipeline_dir(&pipeline)).unwrap().count(),
            6
        );
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);
    }

    #[test]
    fn json_store_appends_monitoring_lines() {
        let tmp = tempfile::tempdir().unwrap();
        let store = JsonFileStore::new(tmp.path()).unwrap();
        for at_ms in [10, 20] {
            let report = MonitoringReport {
                broker: "b1".into(),
                at_ms,
                ..MonitoringReport::default()
            };
            store.save_monitoring(&report).unwrap();
        }
        let text = fs::read_to_string(tmp.path().join(MONITORING_FILE)).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["broker"], "b1");
        assert_eq!(lines[1]["at_ms"], 20);
    }

    #[test]
    fn config_picks_the_cluster_store_by_default() {
        let pipeline = PipelineId::new();
        let j = job(pipeline, "words", &[("read", json!({"text": "kept"}))]);
        for settings in [Value::Null, json!({}), json!({"kind": "cluster"})] {
            let store = store_from_config(&config(settings.clone())).unwrap();
            let input = store.retrieve(&j).unwrap();
            assert_eq!(
                input["parents"],
                json!({"read": {"text": "kept"}}),
                "{settings}"
            );
            store.save(&j, &Data::new()).unwrap();
        }
        let store = store_from_config(&ClusterConfig::default()).unwrap();
        assert_eq!(store.retrieve(&j).unwrap()["top"], 3);
    }

    #[test]
    fn config_builds_a_json_store_in_the_named_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("nested").join("outputs");
        let store = store_from_config(&config(json!({"kind": "json", "dir": dir}))).unwrap();
        assert!(dir.is_dir());
        let pipeline = PipelineId::new();
        store
            .save(&job(pipeline, "read", &[]), &object(json!({"ok": true})))
            .unwrap();
        let direct = JsonFileStore { dir: dir.clone() };
        assert_eq!(
            direct.load(&pipeline, "read").unwrap(),
            Some(object(json!({"ok": true})))
        );
    }

    #[test]
    fn config_refuses_unknown_or_incomplete_settings() {
        for (settings, expect) in [
            (json!({"kind": "redis"}), "unknown store kind \"redis\""),
            (json!({"kind": "json"}), "needs \"dir\""),
            (json!({"dir": "/tmp/x"}), "no \"kind\""),
            (json!("json"), "must be an object"),
        ] {
            let err = match store_from_config(&config(settings.clone())) {
                Ok(_) => panic!("{settings} was accepted"),
                Err(e) => e.to_string(),
            };
            assert!(err.contains(expect), "{settings}: {err}");
            if expect != "needs \"dir\"" {
                assert!(
                    err.contains("\"cluster\"") && err.contains("\"json\""),
                    "{err}"
                );
            }
        }
    }
}
