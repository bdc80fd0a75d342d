//! The pipeline model: a DAG of named jobs, each naming a worker, plus shared `data`.
//!
//! A [`PipelineSpec`] is what users write (the pipeline file is its JSON form).
//! [`Pipeline::new`] validates it once, at submit time, and turns it into the indexed
//! form the router and pipeliners work with, so that a bad pipeline is refused with a
//! clear error before anything runs.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use petgraph::algo::tarjan_scc;
use petgraph::graph::{DiGraph, NodeIndex};
use serde::{Deserialize, Serialize};

use crate::status::JobState;

/// A JSON object: the `data` of a pipeline or a job, and the input and output of workers.
pub type Data = serde_json::Map<String, serde_json::Value>;

/// Most jobs one pipeline may have; bounds the router's memory per submission.
pub const MAX_JOBS: usize = 100_000;
/// Longest job or worker name, in bytes.
pub const MAX_NAME_LEN: usize = 256;
/// Most parents one job may list.
pub const MAX_PARENTS: usize = 10_000;

/// A pipeline as users write it: shared `data` plus named jobs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    /// Given to every job; a job's own `data` is laid on top of it.
    #[serde(default)]
    pub data: Data,
    /// The jobs, by name. Names are unique by construction.
    pub jobs: BTreeMap<String, JobSpec>,
    /// Default extra attempts for a job that fails (a job's own value wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// Default delay before the first retry, doubled on each further one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_delay_ms: Option<u64>,
    /// Default time limit of one attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Run every job even if its `target` exists (set on the runs of a backfill with
    /// `--reprocess all`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore_targets: bool,
}

/// One job of a pipeline.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Name of the worker that runs this job; the same worker may serve many jobs.
    pub worker: String,
    /// Jobs that must succeed before this one starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
    /// Laid over the pipeline's `data` for this job only.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub data: Data,
    /// Extra attempts after a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// Delay before the first retry, doubled on each further one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_delay_ms: Option<u64>,
    /// Time limit of one attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// What the job makes (a file path, or a key the broker's store knows). When it
    /// already exists the job is not run and ends `skipped_done`. `{name}` is replaced
    /// by the job's `data[name]` (e.g. `/data/{logical_date}.csv`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// A condition the job waits for before it runs (a sensor), checked every
    /// `poke_interval_ms` up to its `timeout_ms`, without holding a worker slot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_for: Option<crate::sensor::WaitFor>,
}

impl PipelineSpec {
    /// Parses the pipeline file format (JSON), with the line and column of any problem.
    pub fn from_json(text: &str) -> Result<Self, PipelineError> {
        serde_json::from_str(text).map_err(|e| PipelineError::Parse {
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        })
    }

    /// Adds a job; a small builder for pipelines written in Rust.
    pub fn job(mut self, name: &str, worker: &str, after: &[&str]) -> Self {
        self.jobs.insert(
            name.to_string(),
            JobSpec {
                worker: worker.to_string(),
                after: after.iter().map(|s| s.to_string()).collect(),
                ..JobSpec::default()
            },
        );
        self
    }

    /// Sets a key of the pipeline-wide `data`.
    pub fn with_data(mut self, key: &str, value: serde_json::Value) -> Self {
        self.data.insert(key.to_string(), value);
        self
    }
}

/// Why a pipeline was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PipelineError {
    /// The pipeline file is not valid JSON of the expected shape.
    #[error("pipeline file, line {line} column {column}: {message}")]
    Parse {
        /// 1-based line of the problem.
        line: usize,
        /// 1-based column of the problem.
        column: usize,
        /// What serde found wrong.
        message: String,
    },
    /// No jobs at all.
    #[error("the pipeline has no jobs")]
    Empty,
    /// More jobs than [`MAX_JOBS`].
    #[error("the pipeline has {count} jobs; at most {max} are allowed")]
    TooManyJobs {
        /// Jobs given.
        count: usize,
        /// The bound.
        max: usize,
    },
    /// A name is empty or too long.
    #[error("job {job:?}: {problem}")]
    BadName {
        /// The job concerned.
        job: String,
        /// What is wrong with it.
        problem: String,
    },
    /// `after` names a job that does not exist.
    #[error("job {job:?} runs after {parent:?}, which is not a job of this pipeline")]
    UnknownParent {
        /// The job whose `after` is wrong.
        job: String,
        /// The missing name.
        parent: String,
    },
    /// A job's `wait_for` is not usable.
    #[error("job {job:?}: {problem}")]
    BadWait {
        /// The job concerned.
        job: String,
        /// What is wrong with it.
        problem: String,
    },
    /// Every job waits for another: nothing could ever start.
    #[error("no job can start: every job runs after another one")]
    NoStart,
    /// The jobs form a cycle, named in order.
    #[error("the pipeline has a cycle: {}", .cycle.join(" -> "))]
    Cycle {
        /// The jobs of the cycle, first one repeated at the end.
        cycle: Vec<String>,
    },
}

/// A validated pipeline, with jobs indexed `0..len` in name order.
///
/// Job indexes are what the protocol uses to name a job inside its pipeline: they are
/// stable because job names are sorted.
#[derive(Clone, Debug)]
pub struct Pipeline {
    spec: PipelineSpec,
    names: Vec<String>,
    index: HashMap<String, u32>,
    parents: Vec<Vec<u32>>,
    children: Vec<Vec<u32>>,
}

impl Pipeline {
    /// Validates `spec`: not empty, not too large, known parents, a start, no cycle.
    pub fn new(spec: PipelineSpec) -> Result<Self, PipelineError> {
        if spec.jobs.is_empty() {
            return Err(PipelineError::Empty);
        }
        if spec.jobs.len() > MAX_JOBS {
            return Err(PipelineError::TooManyJobs {
                count: spec.jobs.len(),
                max: MAX_JOBS,
            });
        }
        let names: Vec<String> = spec.jobs.keys().cloned().collect();
        let index: HashMap<String, u32> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i as u32))
            .collect();
        let mut parents = vec![Vec::new(); names.len()];
        let mut children = vec![Vec::new(); names.len()];
        for (i, (name, job)) in spec.jobs.iter().enumerate() {
            check_name(name, name, "job name")?;
            check_name(name, &job.worker, "worker name")?;
            if job.after.len() > MAX_PARENTS {
                return Err(PipelineError::BadName {
                    job: name.clone(),
                    problem: format!("more than {MAX_PARENTS} parents"),
                });
            }
            if let Some(w) = &job.wait_for {
                w.validate().map_err(|problem| PipelineError::BadWait {
                    job: name.clone(),
                    problem,
                })?;
            }
            for parent in &job.after {
                let p = *index
                    .get(parent)
                    .ok_or_else(|| PipelineError::UnknownParent {
                        job: name.clone(),
                        parent: parent.clone(),
                    })?;
                if !parents[i].contains(&p) {
                    parents[i].push(p);
                    children[p as usize].push(i as u32);
                }
            }
        }
        if parents.iter().all(|p| !p.is_empty()) {
            return Err(PipelineError::NoStart);
        }
        let pipeline = Pipeline {
            spec,
            names,
            index,
            parents,
            children,
        };
        if let Some(cycle) = pipeline.find_cycle() {
            return Err(PipelineError::Cycle { cycle });
        }
        Ok(pipeline)
    }

    /// The spec this pipeline was built from.
    pub fn spec(&self) -> &PipelineSpec {
        &self.spec
    }

    /// Number of jobs.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Always false: an empty pipeline is refused by [`Pipeline::new`].
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Name of job `i`.
    pub fn name(&self, i: u32) -> &str {
        &self.names[i as usize]
    }

    /// All job names, in index order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Index of the job called `name`.
    pub fn index_of(&self, name: &str) -> Option<u32> {
        self.index.get(name).copied()
    }

    /// The spec of job `i`.
    pub fn job(&self, i: u32) -> &JobSpec {
        &self.spec.jobs[&self.names[i as usize]]
    }

    /// Jobs that job `i` waits for.
    pub fn parents(&self, i: u32) -> &[u32] {
        &self.parents[i as usize]
    }

    /// Jobs that wait for job `i`.
    pub fn children(&self, i: u32) -> &[u32] {
        &self.children[i as usize]
    }

    /// The data job `i` receives: the pipeline's `data` with the job's own laid on top.
    pub fn job_data(&self, i: u32) -> Data {
        let mut data = self.spec.data.clone();
        for (k, v) in &self.job(i).data {
            data.insert(k.clone(), v.clone());
        }
        data
    }

    /// Extra attempts allowed for job `i` (job value, else pipeline default, else 0).
    pub fn retries(&self, i: u32) -> u32 {
        self.job(i).retries.or(self.spec.retries).unwrap_or(0)
    }

    /// Delay before the first retry of job `i`, in ms (default 0).
    pub fn retry_delay_ms(&self, i: u32) -> u64 {
        self.job(i)
            .retry_delay_ms
            .or(self.spec.retry_delay_ms)
            .unwrap_or(0)
    }

    /// Time limit of one attempt of job `i`, if any.
    pub fn timeout_ms(&self, i: u32) -> Option<u64> {
        self.job(i).timeout_ms.or(self.spec.timeout_ms)
    }

    /// The DAG as a petgraph graph; node `i` is job `i`.
    pub fn graph(&self) -> DiGraph<u32, ()> {
        let mut g = DiGraph::with_capacity(self.len(), self.len());
        for i in 0..self.len() as u32 {
            g.add_node(i);
        }
        for (child, ps) in self.parents.iter().enumerate() {
            for &p in ps {
                g.add_edge(NodeIndex::new(p as usize), NodeIndex::new(child), ());
            }
        }
        g
    }

    /// All jobs reachable from `i` through children (not `i` itself).
    pub fn descendants(&self, i: u32) -> Vec<u32> {
        let mut seen = vec![false; self.len()];
        let mut stack = self.children(i).to_vec();
        let mut out = Vec::new();
        while let Some(j) = stack.pop() {
            if !std::mem::replace(&mut seen[j as usize], true) {
                out.push(j);
                stack.extend_from_slice(self.children(j));
            }
        }
        out
    }

    fn find_cycle(&self) -> Option<Vec<String>> {
        let g = self.graph();
        let scc = tarjan_scc(&g)
            .into_iter()
            .find(|c| c.len() > 1 || g.contains_edge(c[0], c[0]))?;
        // Walk inside the strongly connected set until a job repeats: that walk is a cycle.
        let inside: std::collections::HashSet<NodeIndex> = scc.iter().copied().collect();
        let mut here = scc[0];
        let mut path = vec![here];
        loop {
            let next = g.neighbors(here).find(|n| inside.contains(n))?;
            if let Some(pos) = path.iter().position(|&n| n == next) {
                let mut cycle: Vec<String> = path[pos..]
                    .iter()
                    .map(|n| self.names[n.index()].clone())
                    .collect();
                cycle.push(self.names[next.index()].clone());
                return Some(cycle);
            }
            path.push(next);
            here = next;
        }
    }

    /// The DAG in Graphviz DOT; with `states`, each job is coloured by its state.
    pub fn to_dot(&self, states: Option<&[JobState]>) -> String {
        let mut out = String::from("digraph pipeline {\n  rankdir=LR;\n  node [shape=box, style=\"rounded,filled\", fillcolor=white];\n");
        for (i, name) in self.names.iter().enumerate() {
            let job = &self.spec.jobs[name];
            let (label, color) = match states.and_then(|s| s.get(i)) {
                Some(st) => (
                    format!("{name}\\n{} · {}", job.worker, st.as_str()),
                    st.color(),
                ),
                None => (format!("{name}\\n{}", job.worker), "white"),
            };
            let _ = writeln!(
                out,
                "  \"{}\" [label=\"{}\", fillcolor=\"{color}\"];",
                escape(name),
                escape_label(&label)
            );
        }
        for (child, ps) in self.parents.iter().enumerate() {
            for &p in ps {
                let _ = writeln!(
                    out,
                    "  \"{}\" -> \"{}\";",
                    escape(&self.names[p as usize]),
                    escape(&self.names[child])
                );
            }
        }
        out.push_str("}\n");
        out
    }
}

fn check_name(job: &str, name: &str, what: &str) -> Result<(), PipelineError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(PipelineError::BadName {
            job: job.to_string(),
            problem: format!("{what} must have 1 to {MAX_NAME_LEN} bytes"),
        });
    }
    Ok(())
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

fn escape_label(s: &str) -> String {
    // `\n` in labels is a DOT line break and must survive; only quotes need escaping.
    s.replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(jobs: &[(&str, &[&str])]) -> PipelineSpec {
        jobs.iter()
            .fold(PipelineSpec::default(), |s, (n, a)| s.job(n, "W", a))
    }

    #[test]
    fn diamond_is_valid_and_indexed_by_name() {
        let p = Pipeline::new(spec(&[
            ("a", &[]),
            ("b", &["a"]),
            ("c", &["a"]),
            ("d", &["b", "c"]),
        ]))
        .unwrap();
        assert_eq!(p.names(), ["a", "b", "c", "d"]);
        assert_eq!(p.parents(3), [1, 2]);
        assert_eq!(p.children(0), [1, 2]);
        let mut d = p.descendants(0);
        d.sort();
        assert_eq!(d, [1, 2, 3]);
    }

    #[test]
    fn refuses_bad_pipelines_with_named_errors() {
        assert_eq!(Pipeline::new(spec(&[])).unwrap_err(), PipelineError::Empty);
        assert_eq!(
            Pipeline::new(spec(&[("a", &["zz"])])).unwrap_err(),
            PipelineError::UnknownParent {
                job: "a".into(),
                parent: "zz".into()
            }
        );
        assert_eq!(
            Pipeline::new(spec(&[("a", &["b"]), ("b", &["a"])])).unwrap_err(),
            PipelineError::NoStart
        );
        let err = Pipeline::new(spec(&[
            ("s", &[]),
            ("a", &["s", "c"]),
            ("b", &["a"]),
            ("c", &["b"]),
        ]))
        .unwrap_err();
        match err {
            PipelineError::Cycle { cycle } => {
                assert_eq!(cycle.first(), cycle.last());
                assert_eq!(cycle.len(), 4, "{cycle:?}");
                for j in ["a", "b", "c"] {
                    assert!(cycle.contains(&j.to_string()));
                }
            }
            other => panic!("expected a cycle, got {other:?}"),
        }
        let err = Pipeline::new(spec(&[("s", &[]), ("a", &["a"])])).unwrap_err();
        assert_eq!(
            err,
            PipelineError::Cycle {
                cycle: vec!["a".into(), "a".into()]
            }
        );
    }

    #[test]
    fn parses_the_readme_file_format_and_reports_lines() {
        let text = r#"{ "data": {"document": "a.txt"},
  "jobs": { "read":   {"worker": "Reader"},
            "words":  {"worker": "WordCount", "after": ["read"]},
            "links":  {"worker": "Links",     "after": ["read"]},
            "report": {"worker": "Report",    "after": ["words", "links"], "data": {"top": 10}} } }"#;
        let p = Pipeline::new(PipelineSpec::from_json(text).unwrap()).unwrap();
        let report = p.index_of("report").unwrap();
        assert_eq!(p.job_data(report)["top"], 10);
        assert_eq!(p.job_data(report)["document"], "a.txt");
        let err =
            PipelineSpec::from_json("{\"jobs\": {\n \"a\": {\"wrker\": \"x\"}}}").unwrap_err();
        assert!(matches!(err, PipelineError::Parse { line: 2, .. }), "{err}");
    }

    #[test]
    fn dot_export_names_every_job_and_edge() {
        let p = Pipeline::new(spec(&[("a", &[]), ("b", &["a"])])).unwrap();
        let dot = p.to_dot(Some(&[JobState::Succeeded, JobState::Failed]));
        assert!(dot.contains("\"a\" -> \"b\";"), "{dot}");
        assert!(dot.contains("succeeded") && dot.contains("failed"), "{dot}");
    }
}
