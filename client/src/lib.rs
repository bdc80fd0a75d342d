//! The pypelinin client: submit pipelines, follow them, read their outcome.
//!
//! Every answer comes from request/reply with the router ([`Requester`] retries on a
//! fresh socket when the router does not answer). Broadcasts are only used by
//! [`PipelineManager::subscribe`] as a convenience: waiting never depends on one.

#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use pypelinin_common::protocol::{
    decode, BrokerStatus, ClusterMetrics, Event, PipelineId, PipelineResult, PipelineSummary,
    Reply, Request, REQUEST_TIMEOUT,
};
use pypelinin_common::status::PipelineStatus;
use pypelinin_common::transport::{subscriber, Requester, TransportError};
use pypelinin_common::{Data, PipelineSpec};

pub use pypelinin_common::protocol::ProtocolError;

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
    /// At least one job failed; its descendants were skipped.
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
}

impl PipelineManager {
    /// A manager for the router at `api` (request/reply) and `broadcast` (events).
    /// Connecting is lazy: an absent router shows up as an error on the first call.
    pub fn connect(api: &str, broadcast: &str) -> Result<Self, ClientError> {
        let ctx = zmq::Context::new();
        Ok(PipelineManager {
            requester: Requester::new(&ctx, api),
            submitting: std::collections::HashMap::new(),
            ctx,
            broadcast: broadcast.to_string(),
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
                Reply::Results(r) => Some(r),
                _ => None,
            },
            |r| (r.id, r.state),
        )
    }

    /// The current status of a pipeline.
    pub fn status(&mut self, id: PipelineId) -> Result<PipelineStatus, ClientError> {
        match self.requester.request(&Request::Status { id })? {
            Reply::Status(s) => Ok(s),
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
                Reply::Statuses(s) => Some(s),
                _ => None,
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
        unpack: impl Fn(Reply) -> Option<Vec<T>>,
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
            let items = unpack(reply.clone())
                .ok_or_else(|| ClientError::Unexpected(format!("{reply:?}")))?;
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

    /// Runs again a finished pipeline's jobs that did not succeed, or the named jobs
    /// and their descendants, reusing what already succeeded.
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
        match self.requester.request(&Request::List { limit, state })? {
            Reply::List(l) => Ok(l),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Tells as pipelines finish, from the router's broadcasts.
    ///
    /// A broadcast can be lost (a slow subscriber, a reconnect): use this to react
    /// quickly, and [`PipelineManager::wait`] or [`PipelineManager::status`] for truth.
    pub fn subscribe(&self) -> Result<Finished, ClientError> {
        let socket = subscriber(&self.ctx, &self.broadcast, &[b"pipeline.finished"])
            .map_err(TransportError::from)?;
        Ok(Finished { socket })
    }
}

/// Pipelines finishing, as broadcast by the router.
pub struct Finished {
    socket: zmq::Socket,
}

impl Finished {
    /// The next finished pipeline, waiting at most `timeout`.
    pub fn next_timeout(
        &self,
        timeout: Duration,
    ) -> Option<(PipelineId, pypelinin_common::PipelineState)> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut items = [self.socket.as_poll_item(zmq::POLLIN)];
            pypelinin_common::transport::poll(&mut items, left.as_millis() as i64).ok()?;
            if !items[0].is_readable() {
                return None;
            }
            let parts = self.socket.recv_multipart(0).ok()?;
            if let Some(Ok((_, Event::PipelineFinished { id, state }))) =
                parts.get(1).map(|p| decode::<Event>(p))
            {
                return Some((id, state));
            }
        }
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

/// Text renderings shared by the `pypelinin` command line and the router's dashboard:
/// progress counts, tables of pipelines and brokers, DOT diagrams, times and sizes.
pub mod render {
    use std::fmt::Write as _;

    use pypelinin_common::protocol::{BrokerStatus, PipelineSummary};
    use pypelinin_common::status::{JobState, PipelineStatus};
    use pypelinin_common::{Pipeline, PipelineError, PipelineSpec};
    use serde::Serialize;

    /// A pipeline's jobs counted by state.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
    pub struct Progress {
        /// Jobs in all.
        pub total: u32,
        /// Jobs in a final state (succeeded, failed, skipped or cancelled).
        pub done: u32,
        /// Waiting for parents, a retry delay or a slot.
        pub queued: u32,
        /// Running on a broker.
        pub running: u32,
        /// Succeeded.
        pub succeeded: u32,
        /// Failed.
        pub failed: u32,
        /// Skipped because an ancestor failed.
        pub skipped: u32,
        /// Cancelled.
        pub cancelled: u32,
    }

    impl Progress {
        /// Counts the jobs of `status`.
        pub fn of(status: &PipelineStatus) -> Self {
            let mut p = Progress::default();
            for job in status.jobs.values() {
                p.total += 1;
                if job.state.is_final() {
                    p.done += 1;
                }
                match job.state {
                    JobState::Queued => p.queued += 1,
                    JobState::Running => p.running += 1,
                    JobState::Succeeded => p.succeeded += 1,
                    JobState::Failed => p.failed += 1,
                    JobState::Skipped => p.skipped += 1,
                    JobState::Cancelled => p.cancelled += 1,
                }
            }
            p
        }
    }

    /// One line for a terminal: the pipeline's state, a bar of `width` cells, jobs
    /// done / total, how many run and failed, and the time since submission.
    ///
    /// `running   [███████░░░░░░░] 7/14 jobs · 2 running · 1 failed · 3.2 s`
    pub fn progress_line(status: &PipelineStatus, width: usize, now_ms: u64) -> String {
        let p = Progress::of(status);
        let filled = if p.total == 0 {
            0
        } else {
            (p.done as usize * width) / p.total as usize
        };
        let mut line = String::with_capacity(width * 3 + 64);
        let _ = write!(line, "{:<9} [", status.state.as_str());
        for k in 0..width {
            line.push(if k < filled { '█' } else { '░' });
        }
        let _ = write!(line, "] {}/{} jobs", p.done, p.total);
        if p.running > 0 {
            let _ = write!(line, " · {} running", p.running);
        }
        if p.failed > 0 {
            let _ = write!(line, " · {} failed", p.failed);
        }
        let end = status.finished_ms.unwrap_or(now_ms);
        let _ = write!(
            line,
            " · {}",
            duration(end.saturating_sub(status.submitted_ms))
        );
        line
    }

    /// The pipeline list: id, state, jobs done/total, submission time (UTC), duration.
    ///
    /// The first three columns keep the layout of earlier versions, so that scripts
    /// cutting them out keep working.
    pub fn pipeline_list(list: &[PipelineSummary], now_ms: u64) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<36}  {:<9}  {:>9}  {:<19}  DURATION",
            "PIPELINE", "STATE", "DONE", "SUBMITTED (UTC)"
        );
        for p in list {
            let end = p.finished_ms.unwrap_or(now_ms);
            let _ = writeln!(
                out,
                "{:<36}  {:<9}  {:>4}/{:<4}  {:<19}  {}",
                p.id,
                p.state.as_str(),
                p.done,
                p.jobs,
                utc_time(p.submitted_ms),
                duration(end.saturating_sub(p.submitted_ms))
            );
        }
        out
    }

    /// The broker table: name, host, busy/total slots, last heartbeat, CPU, memory,
    /// load, whether it drains, and the workers it offers.
    pub fn broker_table(brokers: &[BrokerStatus]) -> String {
        let mut rows: Vec<Vec<String>> = vec![[
            "BROKER",
            "HOST",
            "SLOTS",
            "HEARTBEAT",
            "CPU",
            "MEMORY",
            "LOAD",
            "STATE",
            "WORKERS",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()];
        for b in brokers {
            let (cpu, memory, load) = match &b.monitor {
                Some(m) => (
                    format!("{:.0}%", m.cpu_percent),
                    format!(
                        "{} / {}",
                        bytes(m.memory_used_bytes),
                        bytes(m.memory_total_bytes)
                    ),
                    format!("{:.2}", m.load[0]),
                ),
                None => ("-".into(), "-".into(), "-".into()),
            };
            rows.push(vec![
                b.name.clone(),
                b.host.clone(),
                format!("{}/{}", b.busy, b.slots),
                format!("{} ago", duration(b.last_seen_ms_ago)),
                cpu,
                memory,
                load,
                if b.draining { "draining" } else { "serving" }.into(),
                b.workers.join(","),
            ]);
        }
        let mut out = table(&rows);
        if brokers.is_empty() {
            out.push_str("(no broker has joined)\n");
        }
        out
    }

    /// The pipeline as Graphviz DOT, each job coloured by its state in `status`.
    pub fn dot(spec: &PipelineSpec, status: &PipelineStatus) -> Result<String, PipelineError> {
        let pipeline = Pipeline::new(spec.clone())?;
        let states: Vec<JobState> = pipeline
            .names()
            .iter()
            .map(|n| {
                status
                    .jobs
                    .get(n)
                    .map(|j| j.state)
                    .unwrap_or(JobState::Queued)
            })
            .collect();
        Ok(pipeline.to_dot(Some(&states)))
    }

    /// Every edge of `spec` as (parent, child), in job name order.
    pub fn edges(spec: &PipelineSpec) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (name, job) in &spec.jobs {
            for parent in &job.after {
                let edge = (parent.clone(), name.clone());
                if !out.contains(&edge) {
                    out.push(edge);
                }
            }
        }
        out
    }

    /// A duration for people: `850 ms`, `4.2 s`, `3m 07s`, `2h 05m`.
    pub fn duration(ms: u64) -> String {
        match ms {
            0..=999 => format!("{ms} ms"),
            1_000..=59_999 => format!("{:.1} s", ms as f64 / 1000.0),
            60_000..=3_599_999 => format!("{}m {:02}s", ms / 60_000, (ms / 1000) % 60),
            _ => format!("{}h {:02}m", ms / 3_600_000, (ms / 60_000) % 60),
        }
    }

    /// A size for people, in binary units: `512 B`, `3.4 MiB`, `15.6 GiB`.
    pub fn bytes(n: u64) -> String {
        const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut value = n as f64;
        let mut unit = 0;
        while value >= 1024.0 && unit + 1 < UNITS.len() {
            value /= 1024.0;
            unit += 1;
        }
        if unit == 0 {
            format!("{n} B")
        } else {
            format!("{value:.1} {}", UNITS[unit])
        }
    }

    /// Milliseconds since the epoch as `YYYY-MM-DD HH:MM:SS`, in UTC.
    pub fn utc_time(ms: u64) -> String {
        let secs = ms / 1000;
        let (y, m, d) = civil_date((secs / 86_400) as i64);
        let t = secs % 86_400;
        format!(
            "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
            t / 3600,
            (t / 60) % 60,
            t % 60
        )
    }

    /// Year, month and day of a count of days since 1970-01-01 (proleptic Gregorian).
    fn civil_date(days: i64) -> (i64, u32, u32) {
        // Count from 0000-03-01 so that the leap day ends each 4/100/400-year cycle.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let day_of_era = z.rem_euclid(146_097);
        let year_of_era =
            (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
        let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
        let month_index = (5 * day_of_year + 2) / 153; // 0 = March
        let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
        let month = if month_index < 10 {
            month_index + 3
        } else {
            month_index - 9
        } as u32;
        let year = year_of_era + era * 400 + i64::from(month <= 2);
        (year, month, day)
    }

    /// Columns padded to their widest cell, two spaces apart; the last one unpadded.
    pub fn table(rows: &[Vec<String>]) -> String {
        let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut widths = vec![0usize; columns];
        for r in rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let mut out = String::new();
        for r in rows {
            let mut line = String::new();
            for (k, c) in r.iter().enumerate() {
                if k + 1 == r.len() {
                    line.push_str(c);
                } else {
                    let w = widths[k];
                    let _ = write!(line, "{c:<w$}  ");
                }
            }
            let _ = writeln!(out, "{}", line.trim_end());
        }
        out
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn dates_times_durations_and_sizes_read_well() {
            assert_eq!(utc_time(0), "1970-01-01 00:00:00");
            assert_eq!(utc_time(951_782_400_000), "2000-02-29 00:00:00");
            assert_eq!(utc_time(1_763_900_000_123), "2025-11-23 12:13:20");
            assert_eq!(utc_time(4_107_542_399_000), "2100-02-28 23:59:59");
            assert_eq!(duration(850), "850 ms");
            assert_eq!(duration(4_250), "4.2 s");
            assert_eq!(duration(187_000), "3m 07s");
            assert_eq!(duration(7_500_000), "2h 05m");
            assert_eq!(bytes(512), "512 B");
            assert_eq!(bytes(3 << 20), "3.0 MiB");
        }

        #[test]
        fn tables_align_and_leave_the_last_column_free() {
            let rows = vec![
                vec!["A".to_string(), "BB".into(), "C".into()],
                vec!["long".to_string(), "x".into(), "tail text".into()],
            ];
            assert_eq!(table(&rows), "A     BB  C\nlong  x   tail text\n");
        }

        #[test]
        fn dot_colours_jobs_and_keeps_edges() {
            let spec = PipelineSpec::default()
                .job("a", "Noop", &[])
                .job("b", "Noop", &["a"]);
            let status: PipelineStatus = serde_json::from_value(serde_json::json!({
                "id": "00000000-0000-0000-0000-000000000001", "state": "failed",
                "submitted_ms": 1, "finished_ms": 2,
                "jobs": {"a": {"worker": "Noop", "state": "failed", "attempts": 1, "error": "x"},
                         "b": {"worker": "Noop", "state": "skipped", "attempts": 0, "error": null}}
            }))
            .unwrap();
            let text = dot(&spec, &status).unwrap();
            assert!(text.contains("\"a\" -> \"b\""), "{text}");
            assert!(text.contains(JobState::Failed.color()), "{text}");
            assert!(text.contains(JobState::Skipped.color()), "{text}");
            assert_eq!(edges(&spec), vec![("a".to_string(), "b".to_string())]);
            let p = Progress::of(&status);
            assert_eq!((p.total, p.done, p.failed, p.skipped), (2, 2, 1, 1));
            assert_eq!(
                progress_line(&status, 4, 10),
                "failed    [████] 2/2 jobs · 1 failed · 1 ms"
            );
        }
    }
}
