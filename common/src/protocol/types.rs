//! The payloads the protocol's messages carry: a broker's hello and monitoring, job
//! reports and assignments, a pipeliner's decisions and snapshots, results, summaries,
//! metrics and the cluster configuration. Part of the one `protocol` module; the
//! messages themselves are in `messages.rs`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{JobRef, PipelineId};
use crate::pipeline::{Data, PipelineSpec};
use crate::status::{JobState, PipelineState};

/// A broker's introduction.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BrokerHello {
    /// A name unique in the cluster (host, pid and a random suffix).
    pub name: String,
    /// Host name, for operators.
    pub host: String,
    /// Workers this broker runs; it only gets jobs for these.
    pub workers: Vec<String>,
    /// Concurrent worker slots.
    pub slots: u32,
    /// Attempts it is still running (after a router restart or a reconnect).
    pub running: Vec<JobRef>,
    /// Attempts it finished but whose reports the router has not acknowledged yet;
    /// it sends them right after this hello.
    #[serde(default)]
    pub unreported: Vec<JobRef>,
    /// Most jobs it accepts queued beyond its slots, so that a slot that frees finds its
    /// next job already there instead of waiting a round trip to the router; the router
    /// sends that many only while the broker's jobs are short. 0 (the value a broker
    /// that does not say) means none.
    #[serde(default)]
    pub prefetch: u32,
}

/// The outcome of one attempt.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobReport {
    /// The attempt.
    pub job: JobRef,
    /// When the worker started.
    pub started_ms: u64,
    /// When it ended.
    pub finished_ms: u64,
    /// The output, or the error that failed the attempt.
    pub result: Result<Data, String>,
}

impl JobReport {
    /// How long the worker ran, in whole milliseconds.
    pub fn ran_ms(&self) -> u64 {
        self.finished_ms.saturating_sub(self.started_ms)
    }
}

/// What a pipeliner decided for one pipeline.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Advance {
    /// The pipeline.
    pub pipeline: PipelineId,
    /// Jobs whose trigger rule holds (by default: every parent succeeded): run them.
    pub enqueue: Vec<u32>,
    /// Jobs that can never run: their trigger rule can never hold (by default because an
    /// ancestor failed). Applied before `enqueue`, since a skip may make a job ready.
    pub skip: Vec<u32>,
    /// Every job is final: close the pipeline.
    pub finish: bool,
    /// Jobs to run as soon as their trigger rule holds (at once if it does): the
    /// decision made ahead, so that the router starts a child in the very turn the
    /// parent's end that makes it hold arrives, whatever that end, instead of after a
    /// round trip to the pipeliner. A child whose rule can never hold is still left to
    /// the pipeliner, to skip.
    #[serde(default)]
    pub after: Vec<u32>,
    /// Close the pipeline as succeeded as soon as every job has succeeded, without
    /// waiting for a `finish` (which a pipeline with a failure still needs).
    #[serde(default)]
    pub close_on_success: bool,
}

/// Host and slot monitoring, sent by brokers every monitoring interval.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MonitoringReport {
    /// The broker's name.
    pub broker: String,
    /// Its host.
    pub host: String,
    /// When measured.
    pub at_ms: u64,
    /// Host CPU use, percent of all cores.
    pub cpu_percent: f32,
    /// Host memory in use.
    pub memory_used_bytes: u64,
    /// Host memory in all.
    pub memory_total_bytes: u64,
    /// 1, 5 and 15 minute load averages.
    pub load: [f64; 3],
    /// Each slot: the job it runs, if any.
    pub slots: Vec<Option<SlotJob>>,
    /// Attempts finished since the broker started.
    pub jobs_done: u64,
}

/// The job a broker slot is running.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SlotJob {
    /// The attempt.
    pub job: JobRef,
    /// Job name.
    pub name: String,
    /// Worker name.
    pub worker: String,
    /// Since when.
    pub started_ms: u64,
}
/// A job given to a broker.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Assignment {
    /// The attempt.
    pub job: JobRef,
    /// Everything the worker and store need to know.
    pub info: JobInfo,
}

/// What a [`Store`](../../broker/trait.Store.html) and a worker are told about a job.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobInfo {
    /// The pipeline.
    pub pipeline: PipelineId,
    /// The job's name in its pipeline.
    pub name: String,
    /// The worker to run.
    pub worker: String,
    /// Attempt number, from 1. Above 1, an earlier attempt may have run (even fully):
    /// stores must make `save` idempotent.
    pub attempt: u32,
    /// Pipeline data with the job's own data laid on top.
    pub data: Data,
    /// Outputs of the job's parents kept by the router, by parent name.
    pub parents: BTreeMap<String, Data>,
    /// Time limit of this attempt.
    pub timeout_ms: Option<u64>,
    /// The job's `target`, placeholders not yet filled (`None` when the pipeline
    /// ignores targets): the broker checks it before running the job.
    #[serde(default)]
    pub target: Option<String>,
    /// A condition the broker checks before running the job (a file or a command;
    /// `None` once no check is needed): not met, it reports [`crate::sensor::NOT_YET_KEY`].
    #[serde(default)]
    pub wait_for: Option<crate::sensor::WaitFor>,
}

/// A pipeline and the state of each of its jobs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PipelineSnapshot {
    /// The pipeline.
    pub id: PipelineId,
    /// Its spec (valid: the router checked it).
    pub spec: PipelineSpec,
    /// State of each job, by index.
    pub states: Vec<JobState>,
}

/// A job changed state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobChange {
    /// The pipeline.
    pub pipeline: PipelineId,
    /// The job's index.
    pub job: u32,
    /// Its new state.
    pub state: JobState,
}

/// A pipeline's outcome with its outputs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PipelineResult {
    /// The pipeline.
    pub id: PipelineId,
    /// Its state (final unless the wait timed out).
    pub state: PipelineState,
    /// Outputs of its succeeded jobs, by job name.
    pub outputs: BTreeMap<String, Data>,
    /// Failed jobs with their errors.
    pub failed: Vec<(String, String)>,
}

/// A line of the pipeline list.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PipelineSummary {
    /// The pipeline.
    pub id: PipelineId,
    /// Its state.
    pub state: PipelineState,
    /// When accepted.
    pub submitted_ms: u64,
    /// When final.
    pub finished_ms: Option<u64>,
    /// Jobs in all.
    pub jobs: u32,
    /// Jobs in a final state.
    pub done: u32,
    /// The schedule that made it, and for which tick.
    #[serde(default)]
    pub origin: Option<crate::schedule::RunOrigin>,
    /// Its place in the order the router accepted pipelines: the cursor for the next
    /// page of a listing (`List { before }`).
    #[serde(default)]
    pub seq: u64,
}

/// A broker as the router sees it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BrokerStatus {
    /// Its name (host, pid, suffix).
    pub name: String,
    /// Its host.
    pub host: String,
    /// Workers it offers.
    pub workers: Vec<String>,
    /// Its slots.
    pub slots: u32,
    /// Slots running a job.
    pub busy: u32,
    /// Whether it stopped taking jobs (shutting down).
    pub draining: bool,
    /// Milliseconds since the router last heard from it.
    pub last_seen_ms_ago: u64,
    /// Its last monitoring report.
    pub monitor: Option<MonitoringReport>,
    /// The attempts the router has given it and not yet heard back about, oldest
    /// first: the first `slots` of them fill its slots, the rest wait in its queue
    /// (prefetch). The router's live view, where `monitor` is the broker's own, sent
    /// every monitoring interval.
    #[serde(default)]
    pub assigned: Vec<SlotJob>,
}

/// A histogram with fixed upper bounds, Prometheus style (cumulative on output).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Histogram {
    /// Upper bounds of the buckets, in seconds, increasing.
    pub bounds: Vec<f64>,
    /// Observations per bucket (not cumulative); one more than `bounds` for +Inf.
    pub counts: Vec<u64>,
    /// Sum of observations, in seconds.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

impl Histogram {
    /// An empty histogram with `bounds` (seconds).
    pub fn new(bounds: &[f64]) -> Self {
        Histogram {
            bounds: bounds.to_vec(),
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    /// Records one observation.
    pub fn observe(&mut self, seconds: f64) {
        let k = self
            .bounds
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[k] += 1;
        self.sum += seconds;
        self.count += 1;
    }
}

/// What operators watch: counts by state, queue depth, liveness, latencies.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ClusterMetrics {
    /// Pipelines by state name.
    pub pipelines: BTreeMap<String, u64>,
    /// Jobs by state name.
    pub jobs: BTreeMap<String, u64>,
    /// Jobs ready to run and waiting for a broker slot (or a retry delay).
    pub queue_depth: u64,
    /// Brokers alive.
    pub brokers: u64,
    /// Pipeliners alive.
    pub pipeliners: u64,
    /// Attempt durations by worker.
    pub job_duration: BTreeMap<String, Histogram>,
    /// Time from a request's arrival to its reply leaving the router.
    pub request_latency: Histogram,
    /// Attempts finished since the router started.
    pub attempts_finished: u64,
    /// Attempts finished per second over the last minutes: (unix second, count), oldest first.
    pub throughput: Vec<(u64, u32)>,
    /// Distinct client keys the router's CURVE check refused since it started (each is
    /// logged once).
    #[serde(default)]
    pub refused_keys: u64,
    /// Handshakes the router's CURVE check refused since it started (a refused client
    /// retries, so this grows while it does).
    #[serde(default)]
    pub refused_handshakes: u64,
    /// Job reports brokers sent since the router started (a report sent again counts
    /// again).
    #[serde(default)]
    pub job_reports: u64,
    /// The messages that carried them: `job_reports / report_messages` is how many
    /// reports a broker's message carries on average (see the broker's
    /// `--report-linger-ms`).
    #[serde(default)]
    pub report_messages: u64,
}

/// What the router tells brokers about the cluster (pypelinin's `get configuration`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterConfig {
    /// Store settings, read by the broker's store factory. Free-form by design: the
    /// store is the user's.
    #[serde(default)]
    pub store: serde_json::Value,
    /// How often brokers send monitoring.
    #[serde(default = "default_monitoring_ms")]
    pub monitoring_interval_ms: u64,
    /// Pools the router creates or resizes when it starts (name to capacity), so that
    /// a cluster's limits can live in its config file. They win over what `pool set`
    /// stored before the start; a later `pool set` wins until the next start.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pools: BTreeMap<String, u32>,
    /// A job waiting for a slot gains one point of priority per this many ms, so that
    /// low priorities do not starve; 0 turns aging off. `None`: the router's default
    /// (one point a minute). The router's `--priority-aging-ms` wins over it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_aging_ms: Option<u64>,
}

/// One pool as `pool list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolStatus {
    /// Its name.
    pub name: String,
    /// Most slots its jobs hold at once.
    pub capacity: u32,
    /// Slots held now: by jobs assigned to a broker and not yet reported, whether
    /// running or held in the broker's prefetch queue. May exceed `capacity` for a
    /// while after the pool shrank.
    pub used: u32,
    /// Jobs of the pool ready to run and waiting for a slot.
    pub queued: u32,
}

fn default_monitoring_ms() -> u64 {
    5_000
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            store: serde_json::json!({"kind": "cluster"}),
            monitoring_interval_ms: default_monitoring_ms(),
            pools: BTreeMap::new(),
            priority_aging_ms: None,
        }
    }
}
