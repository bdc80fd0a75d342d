//! [`ProtocolError`]: the typed refusal the router sends back instead of a reply.
//! Part of the one `protocol` module.

use serde::{Deserialize, Serialize};

use super::PipelineId;

/// A typed refusal, sent back instead of a reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ProtocolError {
    /// The frame could not be decoded.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The frame decoded but names a request this router does not know.
    #[error("unknown command: {0}")]
    UnknownCommand(String),
    /// The sender speaks another protocol version.
    #[error("protocol version {got} is not supported (router speaks {want})")]
    Version {
        /// The sender's version.
        got: u16,
        /// Ours.
        want: u16,
    },
    /// The frame is larger than [`MAX_FRAME_BYTES`](super::MAX_FRAME_BYTES).
    #[error("frame of {bytes} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Its size.
        bytes: usize,
        /// The bound.
        max: usize,
    },
    /// The pipeline was refused at submit time.
    #[error("invalid pipeline: {0}")]
    InvalidPipeline(String),
    /// The schedule was refused (bad cron or zone, name taken, bad window).
    #[error("invalid schedule: {0}")]
    InvalidSchedule(String),
    /// No schedule by that name.
    #[error("unknown schedule {0:?}")]
    UnknownSchedule(String),
    /// No backfill by that number.
    #[error("unknown backfill {0}")]
    UnknownBackfill(u64),
    /// No pool by that name.
    #[error("unknown pool {0:?}")]
    UnknownPool(String),
    /// No such pipeline.
    #[error("unknown pipeline {0}")]
    UnknownPipeline(PipelineId),
    /// The pipeline has no job of that name.
    #[error("pipeline {pipeline} has no job {job:?}")]
    UnknownJob {
        /// The pipeline.
        pipeline: PipelineId,
        /// The name asked for.
        job: String,
    },
    /// The id is taken by a different pipeline.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The router does not know this peer (it restarted, or the peer was declared
    /// dead): say hello again.
    #[error("unknown peer: send a hello first")]
    UnknownPeer,
    /// A report or decision that no longer applies (a lease expired, another pipeliner
    /// owns the pipeline); it changed nothing.
    #[error("stale: {0}")]
    Stale(String),
    /// The request is well-formed but not allowed now.
    #[error("refused: {0}")]
    Refused(String),
    /// The router could not make the change durable; nothing was acknowledged.
    #[error("storage error: {0}")]
    Storage(String),
}
