//! A pipeline's status as the router reads it from its own records, borrowed: what
//! [`PipelineStatus`] holds, and the same bytes on the wire when a waiter is answered,
//! without first copying every job's name, worker and attempts into one. The answer to
//! a wait on a pipeline of 20,000 jobs built that copy, encoded it and dropped it: a
//! sixth of the router's CPU in the scale benchmark.

use pypelinin_common::protocol::PipelineId;
use pypelinin_common::status::{Attempt, JobState, JobStatus, PipelineState, PipelineStatus};
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use super::PipelineEntry;

/// One job's status, borrowed from the pipeline's entry. Its fields, their names, order
/// and skips are [`JobStatus`]'s: it serializes as one.
#[derive(Serialize)]
#[serde(rename = "JobStatus")]
pub(super) struct JobView<'a> {
    worker: &'a str,
    state: JobState,
    attempts: u32,
    error: Option<&'a str>,
    started_ms: Option<u64>,
    finished_ms: Option<u64>,
    duration_ms: Option<u64>,
    history: &'a [Attempt],
    #[serde(skip_serializing_if = "Option::is_none")]
    waiting_for: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    late: bool,
}

impl<'a> JobView<'a> {
    pub(super) fn of(p: &'a PipelineEntry, i: usize) -> Self {
        let j = &p.jobs[i];
        let last = j.history.last();
        JobView {
            worker: &p.dag.job(i as u32).worker,
            state: j.state,
            attempts: j.attempt(),
            error: j.error.as_deref(),
            started_ms: last.map(|a| a.started_ms),
            finished_ms: last.and_then(|a| a.finished_ms),
            duration_ms: last.and_then(|a| a.finished_ms.map(|f| f.saturating_sub(a.started_ms))),
            history: &j.history,
            late: j.late,
            waiting_for: (j.state == JobState::Waiting).then(|| {
                format!(
                    "{} (poke {}, next at {})",
                    j.waiting_for.as_deref().unwrap_or("its condition"),
                    j.wait_checks,
                    pypelinin_common::render::rfc3339_ms(j.not_before_ms)
                )
            }),
        }
    }

    pub(super) fn to_owned(&self) -> JobStatus {
        JobStatus {
            worker: self.worker.to_string(),
            state: self.state,
            attempts: self.attempts,
            error: self.error.map(str::to_string),
            started_ms: self.started_ms,
            finished_ms: self.finished_ms,
            duration_ms: self.duration_ms,
            history: self.history.to_vec(),
            waiting_for: self.waiting_for.clone(),
            late: self.late,
        }
    }
}

/// Every job of a pipeline by name, in name order (the order of its job indexes), as
/// [`PipelineStatus::jobs`] serializes.
struct JobsView<'a>(&'a PipelineEntry);

impl Serialize for JobsView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let p = self.0;
        let mut map = s.serialize_map(Some(p.jobs.len()))?;
        for (i, name) in p.dag.names().iter().enumerate().take(p.jobs.len()) {
            map.serialize_entry(name, &JobView::of(p, i))?;
        }
        map.end()
    }
}

/// A pipeline's status, borrowed: serializes as [`PipelineStatus`].
#[derive(Serialize)]
#[serde(rename = "PipelineStatus")]
pub(super) struct StatusView<'a> {
    id: PipelineId,
    state: PipelineState,
    submitted_ms: u64,
    finished_ms: Option<u64>,
    jobs: JobsView<'a>,
}

impl<'a> StatusView<'a> {
    pub(super) fn of(p: &'a PipelineEntry) -> Self {
        StatusView {
            id: p.rec.id,
            state: p.rec.state,
            submitted_ms: p.rec.submitted_ms,
            finished_ms: p.rec.finished_ms,
            jobs: JobsView(p),
        }
    }
}

impl PipelineEntry {
    /// Its status, owned (for replies other than a wait's, and the dashboard).
    pub(super) fn status(&self) -> PipelineStatus {
        let jobs = (self.dag.names().iter().enumerate())
            .take(self.jobs.len())
            .map(|(i, name)| (name.clone(), JobView::of(self, i).to_owned()))
            .collect();
        PipelineStatus {
            id: self.rec.id,
            state: self.rec.state,
            submitted_ms: self.rec.submitted_ms,
            finished_ms: self.rec.finished_ms,
            jobs,
        }
    }
}

/// The frame of a reply of statuses, [`pypelinin_common::protocol::Reply::Statuses`]
/// inside [`pypelinin_common::protocol::FromRouter::Reply`], from borrowed statuses:
/// enum variants go on the wire by name, so these encode as those.
#[derive(Serialize)]
#[serde(rename = "FromRouter")]
pub(super) enum FrameView<'a> {
    Reply(ReplyView<'a>),
}

/// See [`FrameView`].
#[derive(Serialize)]
#[serde(rename = "Reply")]
pub(super) enum ReplyView<'a> {
    Statuses(Vec<StatusView<'a>>),
}
