//! The messages of the protocol: what peers ask of the router ([`Request`]), what it
//! sends back on the API socket ([`FromRouter`]: a [`Reply`] or a [`Push`]), and what it
//! broadcasts ([`Event`]). Part of the one `protocol` module; the payloads they carry
//! are in `types.rs`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{
    Advance, Assignment, BrokerHello, BrokerStatus, ClusterConfig, ClusterMetrics, JobChange,
    JobRef, JobReport, LogChunk, LogPage, MonitoringReport, PipelineId, PipelineResult,
    PipelineSnapshot, PipelineSummary, PoolStatus, ProtocolError,
};
use crate::pipeline::{Data, PipelineSpec};
use crate::schedule::{BackfillSpec, BackfillStatus, ScheduleSpec, ScheduleStatus};
use crate::status::{PipelineState, PipelineStatus};

/// What peers ask of the router.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Request {
    /// Accept a pipeline. Idempotent: the same id with the same spec is accepted again.
    Submit {
        /// Client-chosen id.
        id: PipelineId,
        /// The pipeline.
        pipeline: PipelineSpec,
    },
    /// Current status of a pipeline.
    Status {
        /// The pipeline.
        id: PipelineId,
    },
    /// Reply once every pipeline is final, or after `timeout_ms`, with their statuses.
    Wait {
        /// The pipelines.
        ids: Vec<PipelineId>,
        /// At most [`MAX_WAIT_MS`](super::MAX_WAIT_MS).
        timeout_ms: u64,
    },
    /// Like `Wait`, but replies with each pipeline's state and outputs (`Results`):
    /// one round trip from submission to results in hand, for many pipelines at once.
    Results {
        /// The pipelines.
        ids: Vec<PipelineId>,
        /// At most [`MAX_WAIT_MS`](super::MAX_WAIT_MS).
        timeout_ms: u64,
    },
    /// The outputs the router keeps for a pipeline's succeeded jobs.
    Outputs {
        /// The pipeline.
        id: PipelineId,
    },
    /// Stop a pipeline: running jobs are stopped, no new ones start. Replies with its
    /// status; cancelling a finished pipeline changes nothing.
    Cancel {
        /// The pipeline.
        id: PipelineId,
    },
    /// The most recent pipelines, newest first.
    List {
        /// At most this many.
        limit: u32,
        /// Only pipelines in this state.
        #[serde(default)]
        state: Option<PipelineState>,
        /// Only runs of this schedule.
        #[serde(default)]
        schedule: Option<String>,
        /// Only pipelines accepted before this one: the `seq` of the last pipeline of
        /// the previous page (a cursor that stays put while new pipelines arrive).
        #[serde(default)]
        before: Option<u64>,
    },
    /// Run again the failed, skipped and cancelled jobs of a finished pipeline, or the
    /// named jobs, and in both cases all their descendants (a cleanup job that ran after
    /// a failure runs again), keeping what else succeeded. Replies with its status.
    Retry {
        /// The pipeline.
        id: PipelineId,
        /// Jobs to run again with their descendants; empty: every job that did not
        /// succeed, with its descendants.
        #[serde(default)]
        jobs: Vec<String>,
    },
    /// Every broker the router knows, with its last monitoring report.
    Brokers,
    /// The spec a pipeline was submitted with (for diagrams).
    Spec {
        /// The pipeline.
        id: PipelineId,
    },
    /// Counters and histograms for operators (the `/metrics` page).
    Metrics,
    /// A broker joins (or rejoins after a router restart) with what it runs.
    BrokerHello(BrokerHello),
    /// Attempts that ended, with their outputs or errors.
    JobDone(Vec<JobReport>),
    /// Host and slot monitoring from a broker.
    Monitor(MonitoringReport),
    /// Stop assigning jobs to this broker (it is shutting down).
    Drain,
    /// A pipeliner joins with room for `capacity` pipelines.
    PipelinerHello {
        /// Stable id of the pipeliner process.
        pipeliner: Uuid,
        /// Most pipelines it walks at once.
        capacity: u32,
    },
    /// Decisions of a pipeliner about the pipelines it walks.
    Advance(Vec<Advance>),
    /// Add, inspect or steer a schedule.
    Schedule(ScheduleRequest),
    /// Set, list or remove a pool (a cluster-wide limit on concurrent slots). Replies
    /// `Pools`.
    Pool(PoolRequest),
    /// The peer is alive.
    Heartbeat,
    /// The peer leaves; its running jobs and pipelines go to others.
    Bye,
    /// Lines running attempts printed, from the broker running them, at most
    /// [`LOG_BATCH_BYTES`](super::LOG_BATCH_BYTES) of them per request. Always answered
    /// `Ok`: lines of an attempt the router does not know are dropped, and lines it
    /// already has (a resent batch) are recognised by their numbers.
    Logs(Vec<LogChunk>),
    /// The captured log of one attempt of a job: the lines numbered after `after`
    /// (0: from the start). Replies `Logs`.
    GetLogs {
        /// The pipeline.
        id: PipelineId,
        /// The job's name.
        job: String,
        /// Which attempt, from 1; `None`: the latest.
        #[serde(default)]
        attempt: Option<u32>,
        /// The last line number the reader has (0: none).
        #[serde(default)]
        after: u64,
    },
    /// The latest notifications and their delivery, newest first, at most `limit` (and
    /// at most [`MAX_NOTIFICATIONS_SHOWN`](crate::notify::MAX_NOTIFICATIONS_SHOWN)).
    /// Replies `Notifications`.
    Notifications {
        /// How many.
        limit: u32,
    },
}
/// What a client asks about schedules. Each replies `Schedules` with the schedules
/// concerned (all of them for `List`), but `Trigger`, which replies `Submitted`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ScheduleRequest {
    /// Add a schedule; refused if the name is taken, the cron or zone is bad, `end` is
    /// before `start`, or the pipeline is invalid.
    Add(ScheduleSpec),
    /// Every schedule, by name.
    List,
    /// One schedule.
    Show {
        /// Its name.
        name: String,
    },
    /// Stop ticking; runs already made go on.
    Pause {
        /// Its name.
        name: String,
    },
    /// Tick again, from now on: ticks missed while paused are not made up.
    Resume {
        /// Its name.
        name: String,
    },
    /// Forget the schedule; its runs stay, as ordinary pipelines.
    Remove {
        /// Its name.
        name: String,
    },
    /// Make a run now, outside the recurrence (its logical date is now).
    Trigger {
        /// Its name.
        name: String,
    },
    /// Run a schedule's pipeline over a range of its ticks, as one tracked operation.
    /// Replies `Backfills` with it (with `dry_run`, with what would run).
    Backfill(BackfillSpec),
    /// Every backfill, newest first.
    Backfills,
    /// One backfill.
    BackfillShow {
        /// Its number.
        id: u64,
    },
    /// Stop a backfill: no new runs; its running runs are cancelled.
    BackfillCancel {
        /// Its number.
        id: u64,
    },
}

/// Everything the router sends to a peer on the API socket.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum FromRouter {
    /// The answer to the request with the frame's id.
    Reply(Reply),
    /// Unsolicited work or news (frame id 0).
    Push(Push),
}

/// What a client asks about pools. Each replies `Pools`: every pool for `List`, the
/// pool concerned otherwise (`Remove`: as it was before it went).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PoolRequest {
    /// Create a pool or change its capacity. A capacity below what its running jobs
    /// hold takes nothing back: no new job of the pool starts until use drops below it.
    Set {
        /// Its name, 1 to [`MAX_POOL_NAME_LEN`](crate::pipeline::MAX_POOL_NAME_LEN) bytes.
        name: String,
        /// Most slots its jobs hold at once, at least 1.
        slots: u32,
    },
    /// Every pool, by name.
    List,
    /// Forget a pool; refused while a job of an open pipeline names it.
    Remove {
        /// Its name.
        name: String,
    },
}

/// Answers to requests.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Reply {
    /// Done, nothing to return.
    Ok,
    /// The pipeline is accepted and durable.
    Submitted {
        /// Its id.
        id: PipelineId,
    },
    /// One pipeline's status.
    Status(PipelineStatus),
    /// Several pipelines' statuses, in the order asked.
    Statuses(Vec<PipelineStatus>),
    /// Outputs of succeeded jobs, by job name.
    Outputs(BTreeMap<String, Data>),
    /// States and outputs, in the order asked.
    Results(Vec<PipelineResult>),
    /// Recent pipelines.
    List(Vec<PipelineSummary>),
    /// The brokers.
    Brokers(Vec<BrokerStatus>),
    /// A pipeline's spec.
    Spec(PipelineSpec),
    /// Cluster metrics.
    Metrics(ClusterMetrics),
    /// Answer to a `Schedule` request.
    Schedules(Vec<ScheduleStatus>),
    /// Answer to a backfill request.
    Backfills(Vec<BackfillStatus>),
    /// Answer to a `Pool` request.
    Pools(Vec<PoolStatus>),
    /// The cluster configuration, in answer to a broker's hello.
    Welcome(ClusterConfig),
    /// The request was refused.
    Error(ProtocolError),
    /// Lines of an attempt's log.
    Logs(LogPage),
    /// Notifications and their delivery, newest first.
    Notifications(Vec<crate::notify::NotificationStatus>),
}

/// Work and news the router pushes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Push {
    /// Jobs for a broker, one per free slot it announced.
    Assign(Vec<Assignment>),
    /// Whole pipelines for a pipeliner to walk from their current states.
    Take(Vec<PipelineSnapshot>),
    /// Job state changes in pipelines the receiving pipeliner walks.
    Changed(Vec<JobChange>),
    /// Stop these attempts (their pipeline was cancelled); their reports will be stale.
    Revoke(Vec<JobRef>),
}
/// Broadcast on the PUB socket, to wake peers up; never the truth.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Event {
    /// A pipeline was accepted.
    PipelineSubmitted {
        /// The pipeline.
        id: PipelineId,
    },
    /// A pipeline reached a final state.
    PipelineFinished {
        /// The pipeline.
        id: PipelineId,
        /// Its final state.
        state: PipelineState,
    },
    /// Jobs of a pipeline logged new lines (at most once per
    /// [`LOG_BATCH_INTERVAL`](super::LOG_BATCH_INTERVAL) per pipeline): followers ask
    /// with `GetLogs`. Only a wake-up: followers also ask on a timer.
    JobLogs {
        /// The pipeline.
        id: PipelineId,
    },
}

impl Event {
    /// Topic frame, for subscription filters.
    pub fn topic(&self) -> &'static [u8] {
        match self {
            Event::PipelineSubmitted { .. } => b"pipeline.submitted",
            Event::PipelineFinished { .. } => b"pipeline.finished",
            Event::JobLogs { .. } => b"job.logs",
        }
    }
}
