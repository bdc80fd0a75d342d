//! Identifiers shared by every message and record: a pipeline's id and one attempt of
//! one job. They sit apart from [`crate::protocol`] and [`crate::status`] so that both can
//! use them without depending on each other.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Identifies a pipeline across the cluster; chosen by the client so that a resent
/// `Submit` is recognised instead of running the pipeline twice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PipelineId(pub Uuid);

impl PipelineId {
    /// A fresh id: a UUIDv7, random but ordered by creation time, so that the records
    /// of pipelines submitted together sit together in the router's database (a
    /// checkpoint then appends to a few pages instead of touching one per pipeline).
    pub fn new() -> Self {
        PipelineId(Uuid::now_v7())
    }
}

impl Default for PipelineId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for PipelineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for PipelineId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(PipelineId)
    }
}

/// One attempt of one job: what brokers hold and report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct JobRef {
    /// The pipeline.
    pub pipeline: PipelineId,
    /// The job's index in the pipeline (name order).
    pub job: u32,
    /// The attempt, from 1; the fencing token for late reports.
    pub attempt: u32,
}
