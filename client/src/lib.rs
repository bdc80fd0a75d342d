//! The pypelinin client: submit pipelines, follow them, read their outcome.
//!
//! Every answer comes from request/reply with the router ([`Requester`] retries on a
//! fresh socket when the router does not answer). Broadcasts are only used by
//! [`PipelineManager::subscribe`] as a convenience: waiting never depends on one.
//!
//! [`PipelineManager`] blocks its caller; [`AsyncPipelineManager`] is the same client for
//! tokio applications, with its sockets on a thread of its own so the runtime never blocks.

#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use pypelinin_common::curve::Security;
use pypelinin_common::protocol::{
    BrokerStatus, ClusterMetrics, LogPage, PipelineId, PipelineResult, PipelineSummary,
    PoolRequest, PoolStatus, Reply, Request, ScheduleRequest, REQUEST_TIMEOUT,
};
use pypelinin_common::schedule::{BackfillStatus, ScheduleStatus};
use pypelinin_common::status::PipelineStatus;
use pypelinin_common::transport::{subscriber_with, Requester, TransportError};
use pypelinin_common::{Data, PipelineSpec};

pub use pypelinin_common::protocol::ProtocolError;

mod async_client;
mod broadcasts;
pub use async_client::{AsyncPipelineManager, JobEvent, EVENTS_POLL};
pub use broadcasts::{Finished, LogWakeups};

/// Longest a single `Wait` request is held by the router; longer waits are split, so a
/// router restart costs at most this much extra waiting.
pub const WAIT_CHUNK: Duration = Duration::from_secs(5);

/// What went wrong talking to the cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The router did not answer, or refused.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The pipeline did not finish in time.
    #[error("pipeline {id} is still {state} after {waited:.1?}")]
    Timeout {
        /// The pipeline.
        id: PipelineId,
        /// Its state when the wait ended.
        state: &'static str,
        /// How long we waited.
        waited: Duration,
    },
    /// The router answered with something this client does not expect.
    #[error("unexpected reply from router: {0}")]
    Unexpected(String),
    /// The [`AsyncPipelineManager`]'s I/O thread is gone, so nothing can be asked: it
    /// was stopped, or its ZeroMQ context failed.
    #[error("the client's I/O thread has stopped")]
    Closed,
    /// The [`AsyncPipelineManager`]'s I/O thread could not be started.
    #[error("could not start the client's I/O thread: {0}")]
    Spawn(std::io::Error),
}

/// A failed job: its name and error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobFailure {
    /// The job's name.
    pub job: String,
    /// Its error.
    pub error: String,
}

/// How a finished pipeline ended.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// Every job succeeded.
    Succeeded(PipelineStatus),
    /// At least one job failed without `allow_failure` (or was cancelled); jobs its
    /// failure ruled out by their trigger rules were skipped.
    Failed {
        /// Each failed job with its error.
        failures: Vec<JobFailure>,
        /// The whole status.
        status: PipelineStatus,
    },
}

impl Outcome {
    fn from_status(status: PipelineStatus) -> Self {
        use pypelinin_common::status::PipelineState;
        if status.state == PipelineState::Succeeded {
            Outcome::Succeeded(status)
        } else {
            let failures = status
                .failed_jobs()
                .into_iter()
                .map(|(j, e)| JobFailure {
                    job: j.to_string(),
                    error: e.to_string(),
                })
                .collect();
            Outcome::Failed { failures, status }
        }
    }

    /// Whether every job succeeded.
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Succeeded(_))
    }

    /// The full status, with each job's state, attempts and durations.
    pub fn status(&self) -> &PipelineStatus {
        match self {
            Outcome::Succeeded(s) => s,
            Outcome::Failed { status, .. } => status,
        }
    }
}

/// Submits pipelines to a cluster and follows them.
pub struct PipelineManager {
    requester: Requester,
    submitting: std::collections::HashMap<u64, PipelineId>,
    ctx: zmq::Context,
    broadcast: String,
    security: Security,
}

impl PipelineManager {
    /// A manager for the router at `api` (request/reply) and `broadcast` (events).
    /// Connecting is lazy: an absent router shows up as an error on the first call.
    pub fn connect(api: &str, broadcast: &str) -> Result<Self, ClientError> {
        Self::connect_with(api, broadcast, &Security::None)
    }

    /// [`PipelineManager::connect`] with CURVE keys (see [`Security::client_from`]):
    /// every socket to the router authenticates and encrypts.
    pub fn connect_with(
        api: &str,
        broadcast: &str,
        security: &Security,
    ) -> Result<Self, ClientError> {
        let ctx = zmq::Context::new();
        Ok(PipelineManager {
            requester: Requester::with_security(&ctx, api, security.clone()),
            submitting: std::collections::HashMap::new(),
            ctx,
            broadcast: broadcast.to_string(),
            security: security.clone(),
        })
    }

    /// Sets how long one attempt waits for the router, and how many attempts are made.
    pub fn set_patience(&mut self, timeout: Duration, attempts: u32) {
        self.requester.timeout = timeout;
        self.requester.attempts = attempts;
    }

    /// Submits a pipeline; returns once the router has made it durable.
    pub fn start(&mut self, pipeline: &PipelineSpec) -> Result<PipelineId, ClientError> {
        let id = PipelineId::new();
        match self.requester.request(&Request::Submit {
            id,
            pipeline: pipeline.clone(),
        })? {
            Reply::Submitted { id } => Ok(id),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Submits a pipeline without waiting for the router: returns its id at once.
    /// Submissions travel back to back; [`PipelineManager::confirm`] (called by the
    /// waiting methods) waits until every one is acknowledged, resending as needed.
    pub fn start_async(&mut self, pipeline: &PipelineSpec) -> Result<PipelineId, ClientError> {
        let id = PipelineId::new();
        let req = self.requester.post(&Request::Submit {
            id,
            pipeline: pipeline.clone(),
        })?;
        self.submitting.insert(req, id);
        Ok(id)
    }

    /// Waits until every [`PipelineManager::start_async`] submission is acknowledged
    /// (durable); the first refusal, if any, is returned as an error.
    pub fn confirm(&mut self) -> Result<(), ClientError> {
        if self.submitting.is_empty() {
            return Ok(());
        }
        let answers = self.requester.collect()?;
        let mut first_error = None;
        for (req, answer) in answers {
            if self.submitting.remove(&req).is_some() {
                if let Err(e) = answer {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(ClientError::Transport(TransportError::Refused(e))),
            None => Ok(()),
        }
    }

    /// Waits until every pipeline is final, for at most `timeout`, and returns each
    /// one's state and outputs: results in hand in one round trip.
    pub fn results(
        &mut self,
        ids: &[PipelineId],
        timeout: Duration,
    ) -> Result<Vec<PipelineResult>, ClientError> {
        self.long_poll(
            ids,
            timeout,
            true,
            |reply| match reply {
                Reply::Results(r) => Ok(r),
                other => Err(format!("{other:?}")),
            },
            |r| (r.id, r.state),
        )
    }

    /// The captured log of one attempt of job `job` (`None`: the latest attempt): the
    /// lines numbered after `after` (0: all that are kept). To follow a running job,
    /// ask again with the last line's number until the page says it is `finished`.
    pub fn logs(
        &mut self,
        id: PipelineId,
        job: &str,
        attempt: Option<u32>,
        after: u64,
    ) -> Result<LogPage, ClientError> {
        let req = Request::GetLogs {
            id,
            job: job.to_string(),
            attempt,
            after,
        };
        match self.requester.request(&req)? {
            Reply::Logs(page) => Ok(page),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// The current status of a pipeline.
    pub fn status(&mut self, id: PipelineId) -> Result<PipelineStatus, ClientError> {
        match self.requester.request(&Request::Status { id })? {
            Reply::Status(s) => Ok(s),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// The current statuses of several pipelines, in order, in one round trip (a `Wait`
    /// that does not wait): finished or not, never a timeout.
    pub fn statuses(&mut self, ids: &[PipelineId]) -> Result<Vec<PipelineStatus>, ClientError> {
        self.confirm()?;
        let req = Request::Wait {
            ids: ids.to_vec(),
            timeout_ms: 0,
        };
        match self.requester.request(&req)? {
            Reply::Statuses(s) => Ok(s),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Waits until the pipeline is final, for at most `timeout`.
    pub fn wait(&mut self, id: PipelineId, timeout: Duration) -> Result<Outcome, ClientError> {
        let mut all = self.wait_all(&[id], timeout)?;
        Ok(Outcome::from_status(all.remove(0)))
    }

    /// Waits until every pipeline is final, for at most `timeout`; statuses in order.
    pub fn wait_all(
        &mut self,
        ids: &[PipelineId],
        timeout: Duration,
    ) -> Result<Vec<PipelineStatus>, ClientError> {
        self.long_poll(
            ids,
            timeout,
            false,
            |reply| match reply {
                Reply::Statuses(s) => Ok(s),
                other => Err(format!("{other:?}")),
            },
            |s| (s.id, s.state),
        )
    }

    /// Holds `Wait` (or, with `outputs`, `Results`) requests of at most [`WAIT_CHUNK`]
    /// each until every pipeline is final or `timeout` has passed.
    fn long_poll<T>(
        &mut self,
        ids: &[PipelineId],
        timeout: Duration,
        outputs: bool,
        unpack: impl Fn(Reply) -> Result<Vec<T>, String>,
        state_of: impl Fn(&T) -> (PipelineId, pypelinin_common::PipelineState),
    ) -> Result<Vec<T>, ClientError> {
        self.confirm()?;
        let started = Instant::now();
        loop {
            let left = timeout.saturating_sub(started.elapsed());
            let chunk = left.min(WAIT_CHUNK);
            let (ids, timeout_ms) = (ids.to_vec(), chunk.as_millis() as u64);
            let req = if outputs {
                Request::Results { ids, timeout_ms }
            } else {
                Request::Wait { ids, timeout_ms }
            };
            let reply = self.requester.request_with(&req, chunk + REQUEST_TIMEOUT)?;
            // Unpacked without a copy: a wait's reply can hold thousands of statuses.
            let items = unpack(reply).map_err(ClientError::Unexpected)?;
            match items.iter().map(&state_of).find(|(_, s)| !s.is_final()) {
                None => return Ok(items),
                Some((id, state)) if left.is_zero() || started.elapsed() >= timeout => {
                    return Err(ClientError::Timeout {
                        id,
                        state: state.as_str(),
                        waited: started.elapsed(),
                    })
                }
                Some(_) => {}
            }
        }
    }

    /// Cancels a pipeline: running jobs are stopped, no new ones start. Returns its
    /// status; cancelling a finished pipeline changes nothing.
    pub fn cancel(&mut self, id: PipelineId) -> Result<PipelineStatus, ClientError> {
        match self.requester.request(&Request::Cancel { id })? {
            Reply::Status(s) => Ok(s),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Runs again a finished pipeline's jobs that did not succeed (with the jobs after
    /// them, such as cleanup jobs), or the named jobs and their descendants, reusing
    /// every other job's result.
    pub fn retry(
        &mut self,
        id: PipelineId,
        jobs: &[String],
    ) -> Result<PipelineStatus, ClientError> {
        match self.requester.request(&Request::Retry {
            id,
            jobs: jobs.to_vec(),
        })? {
            Reply::Status(s) => Ok(s),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// The spec a pipeline was submitted with.
    pub fn spec(&mut self, id: PipelineId) -> Result<PipelineSpec, ClientError> {
        match self.requester.request(&Request::Spec { id })? {
            Reply::Spec(s) => Ok(s),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// The latest `limit` notifications the router made, newest first, with their
    /// delivery (at most [`MAX_NOTIFICATIONS_SHOWN`](pypelinin_common::notify::MAX_NOTIFICATIONS_SHOWN)).
    pub fn notifications(
        &mut self,
        limit: u32,
    ) -> Result<Vec<pypelinin_common::notify::NotificationStatus>, ClientError> {
        match self.requester.request(&Request::Notifications { limit })? {
            Reply::Notifications(list) => Ok(list),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Every broker the router knows, with its last monitoring report.
    pub fn brokers(&mut self) -> Result<Vec<BrokerStatus>, ClientError> {
        match self.requester.request(&Request::Brokers)? {
            Reply::Brokers(b) => Ok(b),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Cluster metrics: counts by state, queue depth, histograms.
    pub fn metrics(&mut self) -> Result<ClusterMetrics, ClientError> {
        match self.requester.request(&Request::Metrics)? {
            Reply::Metrics(m) => Ok(m),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Outputs of the pipeline's succeeded jobs, as kept by the router.
    pub fn outputs(&mut self, id: PipelineId) -> Result<BTreeMap<String, Data>, ClientError> {
        match self.requester.request(&Request::Outputs { id })? {
            Reply::Outputs(o) => Ok(o),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// The most recent pipelines, newest first.
    pub fn list(&mut self, limit: u32) -> Result<Vec<PipelineSummary>, ClientError> {
        self.list_in(limit, None)
    }

    /// The most recent pipelines in `state` (any state with `None`), newest first.
    pub fn list_in(
        &mut self,
        limit: u32,
        state: Option<pypelinin_common::PipelineState>,
    ) -> Result<Vec<PipelineSummary>, ClientError> {
        self.list_where(limit, state, None)
    }

    /// The most recent pipelines in `state` (any with `None`) made by the schedule
    /// named `schedule` (any pipeline with `None`), newest first.
    pub fn list_where(
        &mut self,
        limit: u32,
        state: Option<pypelinin_common::PipelineState>,
        schedule: Option<&str>,
    ) -> Result<Vec<PipelineSummary>, ClientError> {
        self.list_page(limit, state, schedule, None)
    }

    /// [`Self::list_where`], only pipelines accepted before the one whose `seq` is
    /// `before`: pass the last `seq` of a page to get the next, older one.
    pub fn list_page(
        &mut self,
        limit: u32,
        state: Option<pypelinin_common::PipelineState>,
        schedule: Option<&str>,
        before: Option<u64>,
    ) -> Result<Vec<PipelineSummary>, ClientError> {
        let req = Request::List {
            limit,
            state,
            schedule: schedule.map(str::to_string),
            before,
        };
        match self.requester.request(&req)? {
            Reply::List(l) => Ok(l),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Adds, lists, shows, pauses, resumes or removes schedules; the schedules
    /// concerned as they are after the request. (`Trigger` is [`Self::trigger`].)
    pub fn schedules(&mut self, req: ScheduleRequest) -> Result<Vec<ScheduleStatus>, ClientError> {
        match self.requester.request(&Request::Schedule(req))? {
            Reply::Schedules(l) => Ok(l),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Starts, lists, shows or cancels backfills (the `Backfill*` requests); the
    /// backfills concerned as they are after the request.
    pub fn backfills(&mut self, req: ScheduleRequest) -> Result<Vec<BackfillStatus>, ClientError> {
        match self.requester.request(&Request::Schedule(req))? {
            Reply::Backfills(l) => Ok(l),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Sets, lists or removes pools; the pools concerned (all of them for `List`, the
    /// removed one as it was for `Remove`).
    pub fn pools(&mut self, req: PoolRequest) -> Result<Vec<PoolStatus>, ClientError> {
        match self.requester.request(&Request::Pool(req))? {
            Reply::Pools(l) => Ok(l),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Makes a run of the schedule `name` now; its pipeline id.
    pub fn trigger(&mut self, name: &str) -> Result<PipelineId, ClientError> {
        let req = Request::Schedule(ScheduleRequest::Trigger {
            name: name.to_string(),
        });
        match self.requester.request(&req)? {
            Reply::Submitted { id } => Ok(id),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Tells as pipelines finish, from the router's broadcasts.
    ///
    /// A broadcast can be lost (a slow subscriber, a reconnect): use this to react
    /// quickly, and [`PipelineManager::wait`] or [`PipelineManager::status`] for truth.
    pub fn subscribe(&self) -> Result<Finished, ClientError> {
        let socket = subscriber_with(
            &self.ctx,
            &self.broadcast,
            &[b"pipeline.finished"],
            &self.security,
        )
        .map_err(TransportError::from)?;
        Ok(Finished { socket })
    }

    /// Wake-ups for following logs: the router's broadcasts that a pipeline's jobs
    /// logged lines or that it finished. Only wake-ups: ask [`PipelineManager::logs`]
    /// after each, and on a timer too, since a broadcast can be lost.
    pub fn subscribe_logs(&self) -> Result<LogWakeups, ClientError> {
        let socket = subscriber_with(
            &self.ctx,
            &self.broadcast,
            &[b"job.logs", b"pipeline.finished"],
            &self.security,
        )
        .map_err(TransportError::from)?;
        Ok(LogWakeups { socket })
    }
}

/// A readable table of a pipeline's jobs: name, worker, state, attempts, duration, error.
pub fn render_table(status: &PipelineStatus) -> String {
    let mut rows: Vec<[String; 6]> = vec![[
        "JOB".into(),
        "WORKER".into(),
        "STATE".into(),
        "ATTEMPTS".into(),
        "MS".into(),
        "ERROR".into(),
    ]];
    for (name, j) in &status.jobs {
        rows.push([
            name.clone(),
            j.worker.clone(),
            j.state.as_str().into(),
            j.attempts.to_string(),
            j.duration_ms
                .map(|d| d.to_string())
                .unwrap_or_else(|| "-".into()),
            j.error.clone().unwrap_or_default(),
        ]);
    }
    let mut widths = [0usize; 6];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let total = status
        .duration_ms()
        .map(|d| format!("{d} ms"))
        .unwrap_or_else(|| "-".into());
    let _ = writeln!(
        out,
        "pipeline {}  {}  {}",
        status.id,
        status.state.as_str(),
        total
    );
    for r in &rows {
        let mut line = String::new();
        for (k, (c, w)) in r.iter().zip(widths).enumerate() {
            if k == 5 {
                line.push_str(c);
            } else {
                let _ = write!(line, "{c:<w$}  ");
            }
        }
        let _ = writeln!(out, "  {}", line.trim_end());
    }
    out
}

/// Text renderings (progress, tables, DOT, times, sizes), kept in `pypelinin-common` so
/// that the dashboard shares them; re-exported here so the client's API is unchanged.
pub use pypelinin_common::render;
