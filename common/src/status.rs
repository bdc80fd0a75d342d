//! States of pipelines and jobs, and the status report a client reads.
//!
//! The JSON form of [`PipelineStatus`] is a contract: `pypelinin status --json` prints it
//! and users' scripts parse it, so fields are only ever added, never renamed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::PipelineId;

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Not started: waiting for its parents, for a retry delay, or for a free broker slot.
    Queued,
    /// An attempt is running on a broker.
    Running,
    /// Finished and its output saved.
    Succeeded,
    /// Every attempt failed.
    Failed,
    /// Not run: its trigger rule can never hold (by default, because a job it depends on
    /// failed or was skipped).
    Skipped,
    /// Stopped or never started because its pipeline was cancelled.
    Cancelled,
    /// Not run because its `target` already existed (Make- or Luigi-style): its work
    /// was done before, so it counts as succeeded for its children and its pipeline.
    #[serde(rename = "skipped_done")]
    SkippedDone,
    /// Its parents are done but its `wait_for` condition does not hold yet: checked
    /// again at each poke, holding no worker slot meanwhile (like `queued`, not final).
    Waiting,
}

impl JobState {
    /// The lowercase name used in JSON and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Skipped => "skipped",
            JobState::Cancelled => "cancelled",
            JobState::SkippedDone => "skipped_done",
            JobState::Waiting => "waiting",
        }
    }

    /// Whether the job's work is done: it succeeded, or its target already existed.
    /// Children start after such a job, and a pipeline of such jobs succeeds.
    pub fn is_success(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::SkippedDone)
    }

    /// Whether the job will never change state again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded
                | JobState::Failed
                | JobState::Skipped
                | JobState::Cancelled
                | JobState::SkippedDone
        )
    }

    /// A fill colour for diagrams.
    pub fn color(self) -> &'static str {
        match self {
            JobState::Queued => "#e5e7eb",
            JobState::Running => "#93c5fd",
            JobState::Succeeded => "#86efac",
            JobState::Failed => "#fca5a5",
            JobState::Skipped => "#fde68a",
            JobState::Cancelled => "#d1d5db",
            JobState::SkippedDone => "#bbf7d0",
            JobState::Waiting => "#c4b5fd",
        }
    }
}

/// Where a pipeline is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PipelineState {
    /// Accepted and durable; no pipeliner has started it yet.
    Queued,
    /// A pipeliner is walking it.
    Running,
    /// Every job ended, none failed (but those with `allow_failure`) nor was cancelled;
    /// skipped jobs do not count (`dag::pipeline_outcome` decides).
    Succeeded,
    /// A job failed without `allow_failure` (or was left cancelled by a retry of some
    /// jobs): the jobs its failure ruled out were skipped, cleanup jobs ran.
    Failed,
    /// Cancelled by a user: running jobs were stopped, no new ones started.
    Cancelled,
}

impl PipelineState {
    /// The lowercase name used in JSON and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            PipelineState::Queued => "queued",
            PipelineState::Running => "running",
            PipelineState::Succeeded => "succeeded",
            PipelineState::Failed => "failed",
            PipelineState::Cancelled => "cancelled",
        }
    }

    /// Whether the pipeline will never change state again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            PipelineState::Succeeded | PipelineState::Failed | PipelineState::Cancelled
        )
    }
}

/// One attempt at running a job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// 1 for the first attempt.
    pub number: u32,
    /// The broker that ran it.
    pub broker: String,
    /// When the broker was given the job (ms since the epoch).
    pub started_ms: u64,
    /// When it ended, if it has.
    #[serde(default)]
    pub finished_ms: Option<u64>,
    /// Why it failed, if it did.
    #[serde(default)]
    pub error: Option<String>,
}

/// The state of one job, as reported to clients.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobStatus {
    /// The worker that runs it.
    pub worker: String,
    /// Its state.
    pub state: JobState,
    /// How many attempts have started: the latest attempt's number, pokes of a
    /// `wait_for` condition by a broker included (they are not kept in `history`).
    pub attempts: u32,
    /// The last error, for a failed job (or a skipped one: which parent failed).
    pub error: Option<String>,
    /// Start of the last attempt (ms since the epoch).
    #[serde(default)]
    pub started_ms: Option<u64>,
    /// End of the last attempt.
    #[serde(default)]
    pub finished_ms: Option<u64>,
    /// Duration of the last finished attempt.
    #[serde(default)]
    pub duration_ms: Option<u64>,
    /// Every attempt, oldest first (pokes of a `wait_for` condition left out).
    #[serde(default)]
    pub history: Vec<Attempt>,
    /// While `waiting`: what for, how many checks so far and when the next is due
    /// (`file /data/2026-12-01.csv (poke 3, next at 2026-12-01T12:04:07Z)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    /// The current (or last) attempt ran longer than the job's `warn_after_ms`: it was
    /// not stopped, only reported late.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub late: bool,
}

/// The state of a pipeline and all its jobs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PipelineStatus {
    /// The pipeline's id.
    pub id: PipelineId,
    /// Its state.
    pub state: PipelineState,
    /// When the router accepted it.
    pub submitted_ms: u64,
    /// When it reached a final state.
    #[serde(default)]
    pub finished_ms: Option<u64>,
    /// Every job by name.
    pub jobs: BTreeMap<String, JobStatus>,
}

impl PipelineStatus {
    /// Jobs that failed, with their errors, in name order.
    pub fn failed_jobs(&self) -> Vec<(&str, &str)> {
        self.jobs
            .iter()
            .filter(|(_, j)| j.state == JobState::Failed)
            .map(|(n, j)| (n.as_str(), j.error.as_deref().unwrap_or("")))
            .collect()
    }

    /// Wall time from acceptance to the final state, if reached.
    pub fn duration_ms(&self) -> Option<u64> {
        self.finished_ms
            .map(|f| f.saturating_sub(self.submitted_ms))
    }
}
