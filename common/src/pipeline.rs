//! The pipeline model: a DAG of named jobs, each naming a worker, plus shared `data`.
//!
//! A [`PipelineSpec`] is what users write (the pipeline file is its JSON form).
//! [`Pipeline::new`] validates it once, at submit time, and turns it into the indexed
//! form the router and pipeliners work with, so that a bad pipeline is refused with a
//! clear error before anything runs.

use std::collections::BTreeMap;
use std::fmt::Write as _;

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
/// Largest pipeline `priority` (either sign) and job `priority_weight`: sums of them
/// stay far from `i64`'s bounds, and so do the dispatch keys built from those sums.
pub const MAX_PRIORITY: i64 = 1_000_000_000;
/// Longest pool name, in bytes.
pub const MAX_POOL_NAME_LEN: usize = 128;
/// Pipelines with more jobs than this get their `downstream` and `upstream` weights by
/// summing along the DAG's edges (exact for trees, an over-count where paths rejoin)
/// instead of counting each related job once, which costs jobs × edges.
pub const EXACT_WEIGHT_MAX_JOBS: usize = 10_000;

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
    /// How urgent the whole pipeline is (default 0; negative is less urgent). It is
    /// added to each job's weight to give the job's effective priority: jobs waiting
    /// for a slot start highest effective priority first.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: i64,
    /// Most of this pipeline's jobs that may run at once (unset: no limit of its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_active: Option<u32>,
    /// Who hears of this pipeline's end, its retries and its late jobs (on top of the
    /// router's defaults). Boxed: most pipelines have none, and specs are moved a lot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<Box<crate::notify::NotifySpec>>,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// How a job's `priority_weight` becomes its effective weight (Airflow's weight rules).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightRule {
    /// Its own weight plus that of every job after it (each counted once): jobs that
    /// unblock the most work go first (Pinball's and Airflow's default).
    #[default]
    Downstream,
    /// Its own weight plus that of every job before it: a pipeline near its end goes
    /// before a new one.
    Upstream,
    /// Its own weight only.
    Absolute,
}

impl WeightRule {
    /// Whether this is the default (left out of the JSON form).
    pub fn is_default(&self) -> bool {
        *self == WeightRule::default()
    }

    /// The name used in the pipeline file.
    pub fn as_str(self) -> &'static str {
        match self {
            WeightRule::Downstream => "downstream",
            WeightRule::Upstream => "upstream",
            WeightRule::Absolute => "absolute",
        }
    }
}

/// When a job may start, given how its parents ended (Airflow's trigger rules). The one
/// place that applies it is [`crate::dag`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TriggerRule {
    /// Every parent succeeded (or its target existed): the default.
    #[default]
    AllSuccess,
    /// Every parent is done, however it ended.
    AllDone,
    /// Every parent failed.
    AllFailed,
    /// At least one parent failed (it starts without waiting for the others).
    OneFailed,
    /// At least one parent succeeded (it starts without waiting for the others).
    OneSuccess,
    /// Every parent is done and none failed (succeeded or skipped).
    NoneFailed,
    /// Whatever happens to its parents, once they are done (a cleanup job).
    Always,
}

impl TriggerRule {
    /// Whether this is the default (left out of the JSON form).
    pub fn is_default(&self) -> bool {
        *self == TriggerRule::default()
    }

    /// The name used in the pipeline file.
    pub fn as_str(self) -> &'static str {
        match self {
            TriggerRule::AllSuccess => "all_success",
            TriggerRule::AllDone => "all_done",
            TriggerRule::AllFailed => "all_failed",
            TriggerRule::OneFailed => "one_failed",
            TriggerRule::OneSuccess => "one_success",
            TriggerRule::NoneFailed => "none_failed",
            TriggerRule::Always => "always",
        }
    }
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
    /// This job's own weight in the priority order (default 1, never negative).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_weight: Option<i64>,
    /// How `priority_weight` adds up along the DAG (default `downstream`).
    #[serde(default, skip_serializing_if = "WeightRule::is_default")]
    pub weight_rule: WeightRule,
    /// The cluster-wide pool whose slots this job holds while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// How many of its pool's slots the job holds (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_slots: Option<u32>,
    /// When the job may start, given how its parents ended (default `all_success`).
    #[serde(default, skip_serializing_if = "TriggerRule::is_default")]
    pub trigger_rule: TriggerRule,
    /// Its failure does not fail the pipeline (its children still see it failed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_failure: bool,
    /// An attempt running longer than this is reported `late` (it keeps running).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warn_after_ms: Option<u64>,
}

impl JobSpec {
    /// Slots of its pool the job holds while it runs (`pool_slots`, default 1).
    pub fn slots(&self) -> u32 {
        self.pool_slots.unwrap_or(1)
    }

    /// Its own weight in the priority order (`priority_weight`, default 1).
    pub fn weight(&self) -> i64 {
        self.priority_weight.unwrap_or(1)
    }
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
    /// A priority, pool or limit setting is out of range.
    #[error("{at}: {problem}")]
    BadSetting {
        /// `job "name"`, or `pipeline` for the pipeline's own settings.
        at: String,
        /// What is wrong, and what is allowed.
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
    /// The spec's pipeline-wide settings; its jobs are moved into `jobs`.
    spec: PipelineSpec,
    /// Each job's spec, by index (a map lookup by name was a visible share of the
    /// router's CPU per job, in pipelines of thousands of jobs).
    jobs: Vec<JobSpec>,
    /// Sorted (the spec's jobs are a `BTreeMap`): a job's index is found by binary
    /// search, without a map of every name built for each pipeline accepted.
    names: Vec<String>,
    parents: Vec<Vec<u32>>,
    children: Vec<Vec<u32>>,
    /// Each job's effective weight, worked out the first time one is asked for.
    weights: std::sync::OnceLock<Vec<i64>>,
}

/// Where `name` is in the sorted `names`.
fn position(names: &[String], name: &str) -> Option<u32> {
    let i = names.binary_search_by(|n| n.as_str().cmp(name)).ok()?;
    u32::try_from(i).ok()
}

impl Pipeline {
    /// Validates `spec`: not empty, not too large, known parents, a start, no cycle.
    pub fn new(mut spec: PipelineSpec) -> Result<Self, PipelineError> {
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
        let index = |name: &str| position(&names, name);
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
                let p = index(parent).ok_or_else(|| PipelineError::UnknownParent {
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
        check_settings(&spec)?;
        // In name order, as `names`.
        let jobs: Vec<JobSpec> = std::mem::take(&mut spec.jobs).into_values().collect();
        let pipeline = Pipeline {
            spec,
            jobs,
            names,
            parents,
            children,
            weights: std::sync::OnceLock::new(),
        };
        if let Some(cycle) = pipeline.find_cycle() {
            return Err(PipelineError::Cycle { cycle });
        }
        Ok(pipeline)
    }

    /// The spec this pipeline was built from (rebuilt: a copy).
    pub fn to_spec(&self) -> PipelineSpec {
        let mut spec = self.spec.clone();
        spec.jobs = self
            .names
            .iter()
            .cloned()
            .zip(self.jobs.iter().cloned())
            .collect();
        spec
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
        position(&self.names, name)
    }

    /// The spec of job `i`.
    pub fn job(&self, i: u32) -> &JobSpec {
        &self.jobs[i as usize]
    }

    /// The jobs that wait for none: ready from the start, whatever their trigger rule
    /// (every valid pipeline has one).
    pub fn roots(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len() as u32).filter(|&i| self.parents(i).is_empty())
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

    /// Job `i`'s own `priority_weight` (default 1).
    pub fn priority_weight(&self, i: u32) -> i64 {
        self.job(i).weight()
    }

    /// Job `i`'s weight after its `weight_rule`: its own, plus every descendant's
    /// (`downstream`) or every ancestor's (`upstream`), each job counted once (see
    /// [`EXACT_WEIGHT_MAX_JOBS`] for very large pipelines). Capped at [`MAX_PRIORITY`].
    pub fn effective_weight(&self, i: u32) -> i64 {
        self.weights.get_or_init(|| self.compute_weights())[i as usize]
    }

    /// What orders job `i` against every other waiting job: the pipeline's `priority`
    /// plus the job's [`Pipeline::effective_weight`]. Higher starts first.
    pub fn effective_priority(&self, i: u32) -> i64 {
        self.spec.priority + self.effective_weight(i)
    }

    /// All jobs from which `i` can be reached through parents (not `i` itself).
    pub fn ancestors(&self, i: u32) -> Vec<u32> {
        self.reach(i, &self.parents)
    }

    fn compute_weights(&self) -> Vec<i64> {
        let n = self.len();
        let own: Vec<i64> = (0..n as u32).map(|i| self.priority_weight(i)).collect();
        let rules: Vec<WeightRule> = (0..n as u32).map(|i| self.job(i).weight_rule).collect();
        let cap = |w: i64| w.min(MAX_PRIORITY);
        let mut out = own.clone();
        for rule in [WeightRule::Downstream, WeightRule::Upstream] {
            if !rules.contains(&rule) {
                continue;
            }
            let edges = if rule == WeightRule::Downstream {
                &self.children
            } else {
                &self.parents
            };
            if n <= EXACT_WEIGHT_MAX_JOBS {
                for i in 0..n {
                    if rules[i] == rule {
                        let sum = self
                            .reach(i as u32, edges)
                            .iter()
                            .fold(own[i], |acc, &j| acc.saturating_add(own[j as usize]));
                        out[i] = cap(sum);
                    }
                }
            } else {
                // Sum along edges in an order where each job comes after those it
                // sums over: a job reached by two paths is counted twice.
                let order = self.topo_order();
                let mut acc = own.clone();
                let walk: Box<dyn Iterator<Item = &u32>> = if rule == WeightRule::Downstream {
                    Box::new(order.iter().rev())
                } else {
                    Box::new(order.iter())
                };
                for &i in walk {
                    let i = i as usize;
                    let sum = edges[i]
                        .iter()
                        .fold(own[i], |s, &j| s.saturating_add(acc[j as usize]));
                    acc[i] = cap(sum);
                    if rules[i] == rule {
                        out[i] = acc[i];
                    }
                }
            }
        }
        out.into_iter().map(cap).collect()
    }

    /// Jobs in an order where every job comes after its parents (Kahn's algorithm;
    /// `Pipeline::new` refused cycles).
    fn topo_order(&self) -> Vec<u32> {
        let mut missing: Vec<usize> = self.parents.iter().map(Vec::len).collect();
        let mut ready: Vec<u32> = (0..self.len() as u32)
            .filter(|&i| missing[i as usize] == 0)
            .collect();
        let mut out = Vec::with_capacity(self.len());
        while let Some(i) = ready.pop() {
            out.push(i);
            for &c in &self.children[i as usize] {
                missing[c as usize] -= 1;
                if missing[c as usize] == 0 {
                    ready.push(c);
                }
            }
        }
        out
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
        self.reach(i, &self.children)
    }

    /// Every job reachable from `i` along `edges` (children or parents), once each.
    fn reach(&self, i: u32, edges: &[Vec<u32>]) -> Vec<u32> {
        let mut seen = vec![false; self.len()];
        let mut stack = edges[i as usize].clone();
        let mut out = Vec::new();
        while let Some(j) = stack.pop() {
            if !std::mem::replace(&mut seen[j as usize], true) {
                out.push(j);
                stack.extend_from_slice(&edges[j as usize]);
            }
        }
        out
    }

    /// A cycle, if the jobs have one, named in order with its first job repeated.
    ///
    /// Iterative on purpose: a recursive search (petgraph's `tarjan_scc` in 0.6) runs
    /// out of stack on a chain of some ten thousand jobs, well within [`MAX_JOBS`].
    fn find_cycle(&self) -> Option<Vec<String>> {
        let order = self.topo_order();
        if order.len() == self.len() {
            return None;
        }
        // Jobs left out of the order each have a parent left out too: following those
        // parents must come back to a job already met, and the walk since is a cycle.
        let mut placed = vec![false; self.len()];
        for &i in &order {
            placed[i as usize] = true;
        }
        let start = (0..self.len()).find(|&i| !placed[i])? as u32;
        let mut pos_of = vec![usize::MAX; self.len()];
        let mut path = vec![start];
        pos_of[start as usize] = 0;
        loop {
            let here = *path.last()?;
            let next = *self.parents[here as usize]
                .iter()
                .find(|&&p| !placed[p as usize])?;
            if pos_of[next as usize] != usize::MAX {
                // path[pos..] walks parents: reversed, it follows the edges.
                let mut cycle: Vec<String> = path[pos_of[next as usize]..]
                    .iter()
                    .rev()
                    .map(|&n| self.names[n as usize].clone())
                    .collect();
                cycle.insert(0, self.names[next as usize].clone());
                cycle.dedup();
                if cycle.first() != cycle.last() || cycle.len() == 1 {
                    cycle.push(cycle[0].clone());
                }
                return Some(cycle);
            }
            pos_of[next as usize] = path.len();
            path.push(next);
        }
    }

    /// The DAG in Graphviz DOT; with `states`, each job is coloured by its state. A job
    /// whose trigger rule is not the default shows it on a line of its own, so that a
    /// cleanup job reads as one.
    pub fn to_dot(&self, states: Option<&[JobState]>) -> String {
        let mut out = String::from("digraph pipeline {\n  rankdir=LR;\n  node [shape=box, style=\"rounded,filled\", fillcolor=white];\n");
        for (i, name) in self.names.iter().enumerate() {
            let job = &self.jobs[i];
            let (mut label, color) = match states.and_then(|s| s.get(i)) {
                Some(st) => (
                    format!("{name}\\n{} · {}", job.worker, st.as_str()),
                    st.color(),
                ),
                None => (format!("{name}\\n{}", job.worker), "white"),
            };
            if !job.trigger_rule.is_default() {
                let _ = write!(label, "\\n{}", job.trigger_rule.as_str());
            }
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

/// Refuses settings out of range, naming the job and the bound.
fn check_settings(spec: &PipelineSpec) -> Result<(), PipelineError> {
    let bad = |at: String, problem: String| Err(PipelineError::BadSetting { at, problem });
    if spec.priority.abs() > MAX_PRIORITY {
        return bad(
            "pipeline".into(),
            format!("priority must be between -{MAX_PRIORITY} and {MAX_PRIORITY}"),
        );
    }
    if spec.max_active == Some(0) {
        return bad("pipeline".into(), "max_active must be at least 1".into());
    }
    if let Some(n) = &spec.notify {
        n.check().map_err(|problem| PipelineError::BadSetting {
            at: "notify".into(),
            problem,
        })?;
    }
    for (name, job) in &spec.jobs {
        let at = || format!("job {name:?}");
        if let Some(w) = job.priority_weight {
            if !(0..=MAX_PRIORITY).contains(&w) {
                return bad(
                    at(),
                    format!("priority_weight must be between 0 and {MAX_PRIORITY}, not {w}"),
                );
            }
        }
        match (&job.pool, job.pool_slots) {
            (None, Some(_)) => return bad(at(), "pool_slots given without a pool".into()),
            (Some(p), _) if p.is_empty() || p.len() > MAX_POOL_NAME_LEN => {
                return bad(
                    at(),
                    format!("a pool name must have 1 to {MAX_POOL_NAME_LEN} bytes"),
                )
            }
            (_, Some(0)) => return bad(at(), "pool_slots must be at least 1".into()),
            _ => {}
        }
        if job.warn_after_ms == Some(0) {
            return bad(at(), "warn_after_ms must be at least 1".into());
        }
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

    #[test]
    fn dot_export_shows_a_trigger_rule_that_is_not_the_default() {
        let mut s = spec(&[("a", &[]), ("b", &["a"]), ("clean", &["a"])]);
        s.jobs.get_mut("clean").unwrap().trigger_rule = TriggerRule::AllDone;
        let dot = Pipeline::new(s).unwrap().to_dot(None);
        assert!(dot.contains("label=\"clean\\nW\\nall_done\""), "{dot}");
        assert!(dot.contains("label=\"b\\nW\""), "{dot}");
        assert!(!dot.contains("all_success"), "{dot}");
    }

    #[test]
    fn weight_rules_count_each_related_job_once() {
        // a -> b -> d, a -> c -> d: d is reached from a by two paths.
        let mut s = spec(&[("a", &[]), ("b", &["a"]), ("c", &["a"]), ("d", &["b", "c"])]);
        s.jobs.get_mut("b").unwrap().priority_weight = Some(10);
        let p = Pipeline::new(s.clone()).unwrap();
        assert_eq!(p.effective_weight(0), 1 + 10 + 1 + 1, "d counted once");
        assert_eq!(p.effective_weight(1), 10 + 1);
        assert_eq!(p.effective_weight(3), 1);
        for (job, rule) in [("d", WeightRule::Upstream), ("b", WeightRule::Absolute)] {
            s.jobs.get_mut(job).unwrap().weight_rule = rule;
        }
        s.priority = -5;
        let p = Pipeline::new(s).unwrap();
        assert_eq!(
            p.effective_weight(3),
            1 + 10 + 1 + 1,
            "upstream: a, b, c and itself"
        );
        assert_eq!(p.effective_weight(1), 10, "absolute: its own");
        assert_eq!(
            p.effective_priority(1),
            5,
            "the pipeline's priority is added"
        );
        let mut a = p.ancestors(3);
        a.sort();
        assert_eq!(a, [0, 1, 2]);
    }

    #[test]
    fn a_chain_of_the_most_jobs_allowed_is_checked_without_deep_recursion() {
        // The test thread's stack is 2 MiB: a recursive cycle search overflowed it.
        let n = MAX_JOBS;
        let mut s = PipelineSpec::default();
        for k in 0..n {
            let name = format!("j{k:06}");
            let after = if k == 0 {
                vec![]
            } else {
                vec![format!("j{:06}", k - 1)]
            };
            s.jobs.insert(
                name,
                JobSpec {
                    worker: "W".into(),
                    after,
                    ..JobSpec::default()
                },
            );
        }
        let p = Pipeline::new(s.clone()).unwrap();
        assert!(n > EXACT_WEIGHT_MAX_JOBS);
        // A chain is a tree: summing along edges is still exact.
        assert_eq!(p.effective_weight(0), n as i64);
        assert_eq!(p.effective_weight(n as u32 - 1), 1);
        // j000001 after the last job too: a cycle of every job but the first.
        let back = format!("j{:06}", n - 1);
        s.jobs.get_mut("j000001").unwrap().after.push(back);
        match Pipeline::new(s).unwrap_err() {
            PipelineError::Cycle { cycle } => assert_eq!(cycle.len(), n),
            other => panic!("expected a cycle, got {other:?}"),
        }
    }

    #[test]
    fn refuses_settings_out_of_range_naming_the_job() {
        let set = |f: &dyn Fn(&mut JobSpec)| {
            let mut s = spec(&[("a", &[])]);
            f(s.jobs.get_mut("a").unwrap());
            Pipeline::new(s).unwrap_err().to_string()
        };
        let e = set(&|j| j.priority_weight = Some(-1));
        assert!(
            e.contains("job \"a\"") && e.contains("priority_weight"),
            "{e}"
        );
        assert!(set(&|j| j.pool_slots = Some(2)).contains("without a pool"));
        let e = set(&|j| {
            j.pool = Some("db".into());
            j.pool_slots = Some(0)
        });
        assert!(e.contains("pool_slots must be at least 1"), "{e}");
        assert!(set(&|j| j.pool = Some(String::new())).contains("pool name"));
        assert!(set(&|j| j.warn_after_ms = Some(0)).contains("warn_after_ms"));
        let mut s = spec(&[("a", &[])]);
        s.priority = MAX_PRIORITY + 1;
        assert!(Pipeline::new(s.clone())
            .unwrap_err()
            .to_string()
            .contains("priority"));
        s.priority = 0;
        s.max_active = Some(0);
        assert!(Pipeline::new(s)
            .unwrap_err()
            .to_string()
            .contains("max_active"));
        let e = PipelineSpec::from_json(
            r#"{"jobs": {"a": {"worker": "W", "trigger_rule": "sometimes"}}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("sometimes") && e.contains("one_failed"), "{e}");
    }

    #[test]
    fn new_settings_round_trip_through_json_and_stay_out_when_default() {
        let text = r#"{"priority": 3, "max_active": 2, "jobs": {"a": {"worker": "W",
            "priority_weight": 4, "weight_rule": "absolute", "pool": "db", "pool_slots": 2,
            "trigger_rule": "all_done", "allow_failure": true, "warn_after_ms": 100}}}"#;
        let s = PipelineSpec::from_json(text).unwrap();
        let a = &s.jobs["a"];
        assert_eq!(a.trigger_rule, TriggerRule::AllDone);
        assert_eq!(a.weight_rule, WeightRule::Absolute);
        assert_eq!(a.pool.as_deref(), Some("db"));
        let back = PipelineSpec::from_json(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        let plain = serde_json::to_string(&spec(&[("a", &[])])).unwrap();
        assert_eq!(plain, r#"{"data":{},"jobs":{"a":{"worker":"W"}}}"#);
    }
}
