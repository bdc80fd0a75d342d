//! The wire protocol of a pypelinin cluster.
//!
//! # Sockets
//! The router binds two sockets:
//! - **API** (ZeroMQ ROUTER). Every other process connects a DEALER socket and sends
//!   one-frame messages: a [`Frame`] whose body is a [`Request`]. The router answers each
//!   request with a [`Frame`] carrying the same `id` and a [`FromRouter::Reply`], and may
//!   also send unsolicited [`FromRouter::Push`] frames (with `id` 0) to brokers and
//!   pipeliners that said hello. REQ sockets work too for plain request/reply (the router
//!   keeps their empty delimiter frame).
//! - **Broadcast** (ZeroMQ PUB): two frames, a topic ([`Event::topic`]) and a [`Frame`]
//!   whose body is an [`Event`]. Broadcasts only wake peers up: they may be lost, so no
//!   peer takes one as the truth, which always comes from a request.
//!
//! Every frame is MessagePack (rmp-serde, structs as maps so that fields can be added),
//! at most [`MAX_FRAME_BYTES`], and starts with the protocol version [`PROTOCOL_VERSION`].
//!
//! # Conversations
//! | sender | request | reply | pushes it leads to |
//! |---|---|---|---|
//! | client | [`Request::Submit`] | `Submitted` (idempotent on the client-chosen id) | — |
//! | client | [`Request::Status`] | `Status` | — |
//! | client | [`Request::Wait`] | `Statuses`, once every id is final or the timeout passed | — |
//! | client | [`Request::Results`] | `Results`, once every id is final or the timeout passed | — |
//! | client | [`Request::Outputs`] | `Outputs` | — |
//! | client | [`Request::List`] | `List` | — |
//! | client | [`Request::Cancel`] | `Status` | `Revoke` to the brokers running its jobs |
//! | broker | [`Request::BrokerHello`] | `Welcome` (the cluster configuration) | `Assign` while it has free slots |
//! | broker | [`Request::JobDone`] | `Ok` (the result is durable) | more `Assign` |
//! | broker | [`Request::Monitor`] | `Ok` | — |
//! | broker | [`Request::Drain`] | `Ok`: no more `Assign` | — |
//! | pipeliner | [`Request::PipelinerHello`] | `Ok` | `Take` with whole pipelines, then `Changed` |
//! | pipeliner | [`Request::Advance`] | `Ok` | `Changed` as jobs end |
//! | any peer | [`Request::Heartbeat`] | `Ok`, or `Error(UnknownPeer)`: say hello again | — |
//! | any peer | [`Request::Bye`] | `Ok`: its jobs and pipelines go to others | — |
//!
//! A job is named by a [`JobRef`]: pipeline id, job index (jobs are indexed in name
//! order, see [`crate::Pipeline`]) and attempt number. The attempt number fences late
//! reports: a report for an attempt that is no longer the current one is refused with
//! `Error(Stale)` and changes nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use crate::ids::{JobRef, PipelineId};
use crate::pipeline::{Data, PipelineSpec};
use crate::status::{JobState, PipelineState, PipelineStatus};

/// Version carried by every frame; a peer with another version gets `Error(Version)`.
pub const PROTOCOL_VERSION: u16 = 1;
/// Largest frame any peer accepts, in bytes. Larger frames are refused unread.
pub const MAX_FRAME_BYTES: usize = 16 << 20;
/// Largest message the router reads at all: a larger one closes the sender's
/// connection unread (ZeroMQ's `maxmsgsize`), bounding the memory a peer can make the
/// router spend. Frames between [`MAX_FRAME_BYTES`] and this get `Error(TooLarge)`.
pub const MAX_RECEIVE_BYTES: usize = 4 * MAX_FRAME_BYTES;
/// Most MessagePack values (maps, arrays, strings, numbers…) one frame may hold. A
/// decoded value takes far more memory than its encoded byte, so without this bound a
/// 16 MiB frame of tiny values could cost the decoder half a gigabyte.
pub const MAX_ELEMENTS: usize = 2_000_000;
/// Deepest nesting of maps and arrays a decoder follows (bounds stack use on garbage).
pub const MAX_DEPTH: usize = 128;
/// Largest job output the router keeps, encoded. Larger outputs belong in the user's store.
pub const MAX_OUTPUT_BYTES: usize = 1 << 20;

/// An output refused for its size: larger than [`MAX_OUTPUT_BYTES`] once encoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("output of {size} bytes exceeds the router's limit of {MAX_OUTPUT_BYTES}; keep large outputs in your own Store and return a reference")]
pub struct OutputTooLarge {
    /// Its encoded size in bytes (`usize::MAX` when it could not be encoded at all).
    pub size: usize,
}

/// The one check of an output's size, made by the broker before it saves the output
/// and by the router before it keeps it: both must refuse the same outputs. Counts the
/// encoded bytes without allocating them.
pub fn check_output_size(output: &Data) -> Result<(), OutputTooLarge> {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut n = Count(0);
    let size = match rmp_serde::encode::write(&mut n, output) {
        Ok(()) => n.0,
        Err(_) => usize::MAX,
    };
    if size > MAX_OUTPUT_BYTES {
        Err(OutputTooLarge { size })
    } else {
        Ok(())
    }
}
/// How often brokers and pipeliners say they are alive.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);
/// Heartbeats a peer may miss before the router gives its jobs and pipelines to others.
pub const PEER_LIVENESS: u32 = 6;
/// How long a request waits for its reply before it is sent again on a fresh socket.
pub const REQUEST_TIMEOUT: Duration = Duration::from_millis(2_500);
/// How many times a request is sent before the peer is declared unreachable.
pub const REQUEST_ATTEMPTS: u32 = 4;
/// Send and receive high-water marks: far above any burst we produce, so that ZeroMQ
/// never drops silently; a send that would block is treated as a dead peer.
pub const SOCKET_HWM: i32 = 1_000_000;
/// Longest a `Wait` request may be held by the router.
pub const MAX_WAIT_MS: u64 = 3_600_000;

/// Envelope of every frame: version, request id (0 for pushes and events), body.
#[derive(Debug, Serialize, Deserialize)]
pub struct Frame<T> {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub v: u16,
    /// Chosen by the requester; echoed in the reply.
    pub id: u64,
    /// The message.
    pub body: T,
}

#[derive(Serialize)]
struct FrameRef<'a, T> {
    v: u16,
    id: u64,
    body: &'a T,
}

#[derive(Deserialize)]
struct Header {
    v: u16,
    id: u64,
}

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
        /// At most [`MAX_WAIT_MS`].
        timeout_ms: u64,
    },
    /// Like `Wait`, but replies with each pipeline's state and outputs (`Results`):
    /// one round trip from submission to results in hand, for many pipelines at once.
    Results {
        /// The pipelines.
        ids: Vec<PipelineId>,
        /// At most [`MAX_WAIT_MS`].
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
    },
    /// Run again the failed, skipped and cancelled jobs of a finished pipeline, or the
    /// named jobs and all their descendants, keeping what already succeeded. Replies
    /// with its status.
    Retry {
        /// The pipeline.
        id: PipelineId,
        /// Jobs to run again with their descendants; empty: every job that did not succeed.
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
    /// The peer is alive.
    Heartbeat,
    /// The peer leaves; its running jobs and pipelines go to others.
    Bye,
}

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

/// What a pipeliner decided for one pipeline.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Advance {
    /// The pipeline.
    pub pipeline: PipelineId,
    /// Jobs whose parents all succeeded: run them.
    pub enqueue: Vec<u32>,
    /// Jobs that can never run because an ancestor failed.
    pub skip: Vec<u32>,
    /// Every job is final: close the pipeline.
    pub finish: bool,
    /// Jobs to run as soon as their parents have all succeeded (at once if they have):
    /// the decision made ahead, so that the router starts a child in the very turn its
    /// last parent's result arrives, instead of after a round trip to the pipeliner.
    /// A failure among the parents still leaves the child to the pipeliner, to skip.
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

/// Everything the router sends to a peer on the API socket.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum FromRouter {
    /// The answer to the request with the frame's id.
    Reply(Reply),
    /// Unsolicited work or news (frame id 0).
    Push(Push),
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
    /// The cluster configuration, in answer to a broker's hello.
    Welcome(ClusterConfig),
    /// The request was refused.
    Error(ProtocolError),
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
}

fn default_monitoring_ms() -> u64 {
    5_000
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            store: serde_json::json!({"kind": "cluster"}),
            monitoring_interval_ms: default_monitoring_ms(),
        }
    }
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
}

impl Event {
    /// Topic frame, for subscription filters.
    pub fn topic(&self) -> &'static [u8] {
        match self {
            Event::PipelineSubmitted { .. } => b"pipeline.submitted",
            Event::PipelineFinished { .. } => b"pipeline.finished",
        }
    }
}

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
    /// The frame is larger than [`MAX_FRAME_BYTES`].
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
    /// No such pipeline.
    #[error("unknown pipeline {0}")]
    UnknownPipeline(PipelineId),
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

/// Why a frame could not be decoded; carries the request id when it was readable, so
/// that the error can be sent back to the right request.
#[derive(Debug)]
pub struct DecodeError {
    /// The request id, when the envelope was readable.
    pub id: Option<u64>,
    /// What is wrong.
    pub error: ProtocolError,
}

/// Encodes a frame.
pub fn encode<T: Serialize>(id: u64, body: &T) -> Vec<u8> {
    let frame = FrameRef {
        v: PROTOCOL_VERSION,
        id,
        body,
    };
    // Our message types are plain data: encoding into a Vec cannot fail.
    rmp_serde::to_vec_named(&frame).expect("protocol messages always encode")
}

/// Decodes a frame, bounded in size and nesting.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<(u64, T), DecodeError> {
    if bytes.len() > MAX_FRAME_BYTES {
        return Err(DecodeError {
            id: None,
            error: ProtocolError::TooLarge {
                bytes: bytes.len(),
                max: MAX_FRAME_BYTES,
            },
        });
    }
    if let Err(why) = scan(bytes) {
        let id = from_slice::<Header>(bytes).ok().map(|h| h.id);
        return Err(DecodeError {
            id,
            error: ProtocolError::Malformed(why),
        });
    }
    let header: Option<Header> = from_slice(bytes).ok();
    if let Some(h) = &header {
        if h.v != PROTOCOL_VERSION {
            return Err(DecodeError {
                id: Some(h.id),
                error: ProtocolError::Version {
                    got: h.v,
                    want: PROTOCOL_VERSION,
                },
            });
        }
    }
    match from_slice::<Frame<T>>(bytes) {
        Ok(f) => Ok((f.id, f.body)),
        Err(e) => {
            let msg = e.to_string();
            let error = if header.is_some() && msg.contains("unknown variant") {
                ProtocolError::UnknownCommand(msg)
            } else {
                ProtocolError::Malformed(msg)
            };
            Err(DecodeError {
                id: header.map(|h| h.id),
                error,
            })
        }
    }
}

/// Walks the MessagePack structure of `bytes` without building anything: refuses more
/// than [`MAX_ELEMENTS`] values, containers that declare more elements than there are
/// bytes left, and bytes after the one top-level value. Truncation is left to the
/// decoder, which reports it.
fn scan(bytes: &[u8]) -> Result<(), String> {
    let mut pos = 0usize;
    let mut pending: u64 = 1;
    let mut elements = 0usize;
    let be = |at: usize, n: usize| -> Option<u64> {
        let b = bytes.get(at..at + n)?;
        Some(b.iter().fold(0u64, |acc, x| (acc << 8) | u64::from(*x)))
    };
    while pending > 0 {
        let Some(&m) = bytes.get(pos) else {
            return Ok(()); // truncated: the decoder says so
        };
        pos += 1;
        pending -= 1;
        elements += 1;
        if elements > MAX_ELEMENTS {
            return Err(format!("more than {MAX_ELEMENTS} values in one frame"));
        }
        // (bytes to skip, child values announced)
        let (skip, children): (u64, u64) = match m {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0),
            0x80..=0x8f => (0, 2 * u64::from(m & 0x0f)),
            0x90..=0x9f => (0, u64::from(m & 0x0f)),
            0xa0..=0xbf => (u64::from(m & 0x1f), 0),
            0xc4 | 0xd9 => (be(pos, 1).unwrap_or(0) + 1, 0),
            0xc5 | 0xda => (be(pos, 2).unwrap_or(0) + 2, 0),
            0xc6 | 0xdb => (be(pos, 4).unwrap_or(0) + 4, 0),
            0xc7 => (be(pos, 1).unwrap_or(0) + 2, 0),
            0xc8 => (be(pos, 2).unwrap_or(0) + 3, 0),
            0xc9 => (be(pos, 4).unwrap_or(0) + 5, 0),
            0xca | 0xce | 0xd2 => (4, 0),
            0xcb | 0xcf | 0xd3 => (8, 0),
            0xcc | 0xd0 => (1, 0),
            0xcd | 0xd1 => (2, 0),
            0xd4 => (2, 0),
            0xd5 => (3, 0),
            0xd6 => (5, 0),
            0xd7 => (9, 0),
            0xd8 => (17, 0),
            0xdc => (2, be(pos, 2).unwrap_or(0)),
            0xdd => (4, be(pos, 4).unwrap_or(0)),
            0xde => (2, 2 * be(pos, 2).unwrap_or(0)),
            0xdf => (4, 2 * be(pos, 4).unwrap_or(0)),
            0xc1 => return Err(format!("byte 0xc1 at {} is not MessagePack", pos - 1)),
        };
        pos = pos.saturating_add(skip as usize);
        // Every value takes at least a byte: more announced than bytes left is a lie.
        if pending + children > bytes.len().saturating_sub(pos) as u64 {
            return Err(format!(
                "a container at byte {} announces {children} values in {} bytes",
                pos - skip as usize - 1,
                bytes.len().saturating_sub(pos)
            ));
        }
        pending += children;
    }
    if pos < bytes.len() {
        return Err(format!(
            "{} bytes after the end of the frame",
            bytes.len() - pos
        ));
    }
    Ok(())
}

fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, rmp_serde::decode::Error> {
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
    de.set_max_depth(MAX_DEPTH);
    T::deserialize(&mut de)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_requests_and_replies() {
        let spec = PipelineSpec::default().job("a", "Noop", &[]);
        let id = PipelineId::new();
        let bytes = encode(
            7,
            &Request::Submit {
                id,
                pipeline: spec.clone(),
            },
        );
        let (rid, req): (u64, Request) = decode(&bytes).unwrap();
        assert_eq!(rid, 7);
        match req {
            Request::Submit { id: got, pipeline } => {
                assert_eq!(got, id);
                assert_eq!(pipeline, spec);
            }
            other => panic!("{other:?}"),
        }
        let bytes = encode(
            0,
            &FromRouter::Reply(Reply::Error(ProtocolError::UnknownPeer)),
        );
        let (_, back): (u64, FromRouter) = decode(&bytes).unwrap();
        assert!(matches!(
            back,
            FromRouter::Reply(Reply::Error(ProtocolError::UnknownPeer))
        ));
    }

    #[test]
    fn garbage_truncation_versions_and_unknown_commands_are_typed() {
        let e = decode::<Request>(b"\xc1\xff garbage").unwrap_err();
        assert!(matches!(e.error, ProtocolError::Malformed(_)) && e.id.is_none());

        let good = encode(9, &Request::Heartbeat);
        for cut in 0..good.len() {
            assert!(decode::<Request>(&good[..cut]).is_err());
        }

        #[derive(Serialize)]
        enum Future {
            Frobnicate { x: u32 },
        }
        let e = decode::<Request>(&encode(5, &Future::Frobnicate { x: 1 })).unwrap_err();
        assert_eq!(e.id, Some(5));
        assert!(
            matches!(e.error, ProtocolError::UnknownCommand(_)),
            "{:?}",
            e.error
        );

        let old = rmp_serde::to_vec_named(&Frame {
            v: 99,
            id: 3,
            body: Request::Heartbeat,
        })
        .unwrap();
        let e = decode::<Request>(&old).unwrap_err();
        assert_eq!(
            e.error,
            ProtocolError::Version {
                got: 99,
                want: PROTOCOL_VERSION
            }
        );

        let big = vec![0u8; MAX_FRAME_BYTES + 1];
        assert!(matches!(
            decode::<Request>(&big).unwrap_err().error,
            ProtocolError::TooLarge { .. }
        ));

        // Trailing bytes after a valid frame.
        let mut extra = encode(8, &Request::Heartbeat);
        extra.extend_from_slice(b"\xde\xad");
        let e = decode::<Request>(&extra).unwrap_err();
        assert_eq!(e.id, Some(8));
        assert!(matches!(&e.error, ProtocolError::Malformed(m) if m.contains("after the end")));

        // Millions of one-byte values: refused before any is built.
        let mut many = vec![0xdd, 0x00, 0x2d, 0xc6, 0xc0]; // array of 3,000,000
        many.extend(std::iter::repeat_n(0xc0u8, 3_000_000));
        let e = decode::<Request>(&many).unwrap_err();
        assert!(
            matches!(&e.error, ProtocolError::Malformed(m) if m.contains("values in one frame")),
            "{:?}",
            e.error
        );

        // A container announcing more values than there are bytes.
        let e = decode::<Request>(&[0xdd, 0xff, 0xff, 0xff, 0xff, 0xc0]).unwrap_err();
        assert!(matches!(&e.error, ProtocolError::Malformed(m) if m.contains("announces")));

        // 10k nested arrays: refused by the depth bound, not by a stack overflow.
        let mut deep = vec![0x91u8; 10_000];
        deep.push(0xc0);
        assert!(decode::<Request>(&deep).is_err());
    }
}
