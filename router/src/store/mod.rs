//! Durable router state behind a small trait, so that the database can be swapped out (it was: sled, then redb).
//!
//! The router writes every change through a [`StateStore`] and calls
//! [`StateStore::commit`] once per event-loop turn, before it sends any reply: a change
//!
//! One module, `store`, split into files by kind; every item is public here, at
//! `pypelinin_router::store::X`, whichever file holds it:
//! - this file: the [`StateStore`] trait, the records it keeps ([`PipelineRecord`],
//!   [`JobRecord`], [`Loaded`]), [`StoreError`] and the [`Durability`] modes;
//! - `disk.rs`: [`DiskStore`], the durable implementation (a write-ahead journal
//!   checkpointed into a redb database, `disk/db.rs`), with its tests in
//!   `disk/tests.rs`;
//! - `memory.rs`: [`MemoryStore`], the in-memory implementation for tests.

use std::collections::VecDeque;

use pypelinin_common::protocol::{LogLine, PipelineId};
use pypelinin_common::schedule::{
    BackfillSpec, BackfillState, RunOrigin, ScheduleSpec, TickRecord,
};
use pypelinin_common::status::{Attempt, JobState, PipelineState};
use pypelinin_common::{Data, PipelineSpec};
use serde::{Deserialize, Serialize};

pub use crate::notify::NotificationRecord;

mod disk;
mod memory;

pub use self::disk::{
    DiskStore, BACKGROUND_SYNC, CACHE_BYTES, CHECKPOINT_BYTES, COMPACT_MIN_BYTES, FILE,
};
pub use self::memory::MemoryStore;

/// The durable store's name before its database moved from sled to redb.
pub type SledStore = DiskStore;

/// A storage failure; the router stops rather than acknowledge what it could not keep.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed (reading a database of an earlier release, to copy it in).
    #[error("sled: {0}")]
    Sled(#[from] ::sled::Error),
    /// The journal could not be read or written.
    #[error("journal: {0}")]
    Io(#[from] std::io::Error),
    /// A checkpoint into the database failed.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// A record did not encode (a job's output that MessagePack cannot hold).
    #[error("encoding a record: {0}")]
    Encode(String),
    /// The database failed (redb), naming its file.
    #[error("database {path}: {message}")]
    Db {
        /// The database file.
        path: String,
        /// What failed.
        message: String,
    },
    /// A record did not decode (a corrupt or foreign database).
    #[error("corrupt record {key}: {message}")]
    Corrupt {
        /// Which record.
        key: String,
        /// What failed.
        message: String,
    },
}

/// When the router makes changes durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// Sync the journal before every acknowledgement (one `fdatasync` per event-loop
    /// turn, shared by every change of the turn). The default.
    #[default]
    Flush,
    /// Write the journal before every acknowledgement but sync it only every
    /// [`BACKGROUND_SYNC`], from another thread: a crash of the router process loses
    /// nothing (the kernel has the writes), a crash of the machine can lose the last
    /// half second.
    Background,
}

/// A pipeline as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PipelineRecord {
    /// The pipeline.
    pub id: PipelineId,
    /// What was submitted; stored once, apart from the record, which changes often.
    #[serde(skip)]
    pub spec: PipelineSpec,
    /// Its state.
    pub state: PipelineState,
    /// Submission order, for listing.
    pub seq: u64,
    /// When accepted.
    pub submitted_ms: u64,
    /// When final.
    pub finished_ms: Option<u64>,
    /// The schedule that made it, if one did.
    #[serde(default)]
    pub origin: Option<RunOrigin>,
    /// How many jobs it has (kept here so that a listing of history need not read
    /// the spec; 0 in records written before it was).
    #[serde(default)]
    pub jobs: u32,
    /// How many of them are final, as of the last write of the record.
    #[serde(default)]
    pub done: u32,
    /// Once finished, its jobs counted by final state (for `/metrics`, which counts
    /// history the router no longer holds).
    #[serde(default)]
    pub job_states: Vec<(JobState, u32)>,
    /// Log lines were captured for it, so that deleting it looks for logs only then
    /// (a record written before this field existed reads as `true`: it may have some).
    #[serde(default = "unknown_logs")]
    pub logs: bool,
}

/// Records written before [`PipelineRecord::logs`] existed may have logs.
fn unknown_logs() -> bool {
    true
}

/// A schedule as stored. Removing a schedule writes it once more with `removed` set
/// (the journal only ever writes whole new values), and loading skips it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScheduleRecord {
    /// What the user asked for.
    pub spec: ScheduleSpec,
    /// Not ticking.
    pub paused: bool,
    /// Removed: a tombstone.
    #[serde(default)]
    pub removed: bool,
    /// When added.
    pub created_ms: u64,
    /// The last tick dealt with (run made, skipped, or queued in `pending`); the ticks
    /// after it are due. Written in the same commit as the runs it made, so that a
    /// crash never makes a tick's run twice.
    pub cursor_ms: u64,
    /// Ticks waiting for room, oldest first.
    pub pending: VecDeque<u64>,
    /// The latest ticks and what became of them, oldest first, at most
    /// [`RECENT_TICKS`].
    pub recent: VecDeque<TickRecord>,
}

/// A backfill as stored: what was asked, a copy of the schedule's template and
/// recurrence (so that removing the schedule does not orphan it), and its dates.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BackfillRecord {
    /// Its number.
    pub id: u64,
    /// What was asked.
    pub spec: BackfillSpec,
    /// The schedule's recurrence and template when the backfill was made.
    pub schedule: ScheduleSpec,
    /// Where it is.
    pub state: BackfillState,
    /// When asked for.
    pub created_ms: u64,
    /// When it ended.
    pub finished_ms: Option<u64>,
    /// Every date it covers, in run order; `pipeline` is set once its run is made.
    pub dates: Vec<TickRecord>,
    /// Index in `dates` of the next date to consider: every date before it has its
    /// run made, or a note saying why it gets none.
    pub next: u32,
}

/// A pool as stored: only its capacity, which the user sets. How many of its slots
/// are in use is never stored: it is worked out from the jobs running at load, so that
/// no crash or restart can leak a slot. Removing a pool writes it once more with
/// `removed` set (the journal only ever writes whole new values).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolRecord {
    /// Its name.
    pub name: String,
    /// Most slots its jobs hold at once, cluster-wide.
    pub capacity: u32,
    /// Removed: a tombstone.
    #[serde(default)]
    pub removed: bool,
}

/// How many ticks a schedule remembers for `schedule show`.
pub const RECENT_TICKS: usize = 50;

/// A job as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobRecord {
    /// Its state.
    pub state: JobState,
    /// In the run queue (or waiting out a retry delay): its parents all succeeded.
    pub enqueued: bool,
    /// Failed attempts so far (retries are counted against these).
    pub failures: u32,
    /// Earliest start of the next attempt (retry backoff), ms since the epoch.
    pub not_before_ms: u64,
    /// Last error.
    pub error: Option<String>,
    /// Every attempt; the last one is the current one while running. Pokes of a
    /// `wait_for` condition by a broker are taken out of it once reported not met.
    pub history: Vec<Attempt>,
    /// Attempts that were pokes of its `wait_for` condition (not in `history`): the
    /// next attempt's number is `history.len() + pokes + 1`.
    #[serde(default)]
    pub pokes: u32,
    /// While its condition has not held: when it was first found not met (the wait's
    /// timeout counts from there), ms since the epoch.
    #[serde(default)]
    pub waiting_since_ms: Option<u64>,
    /// While `waiting`: what it waits for, as last checked (placeholders filled).
    #[serde(default)]
    pub waiting_for: Option<String>,
    /// While `waiting`: how many checks found the condition not met in this wait.
    #[serde(default)]
    pub wait_checks: u32,
    /// The current attempt ran past the job's `warn_after_ms` (it was not stopped).
    #[serde(default)]
    pub late: bool,
}

impl JobRecord {
    /// A job that has not started.
    pub fn new() -> Self {
        JobRecord {
            state: JobState::Queued,
            enqueued: false,
            failures: 0,
            not_before_ms: 0,
            error: None,
            history: Vec::new(),
            pokes: 0,
            waiting_since_ms: None,
            waiting_for: None,
            wait_checks: 0,
            late: false,
        }
    }

    /// Number of the latest attempt (0 before the first), pokes included.
    pub fn attempt(&self) -> u32 {
        self.history.len() as u32 + self.pokes
    }
}

impl Default for JobRecord {
    fn default() -> Self {
        Self::new()
    }
}

/// A pipeline with its jobs, as loaded at start-up.
pub type Loaded = (PipelineRecord, Vec<JobRecord>);

/// One attempt's log: pipeline, job index, attempt number.
pub type LogKey = (PipelineId, u32, u32);

/// What is kept of an attempt's log besides its lines.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogMeta {
    /// Bytes the router dropped from the start of the log to keep it within its bound.
    pub dropped_bytes: u64,
}

/// Where the router keeps its state.
///
/// Logs are written with the turn's [`StateStore::commit`] like the rest, but need no
/// sync of their own (a log line acknowledges nothing, and an fsync per batch of lines
/// would cost more than the lines): they become durable with the next commit that
/// syncs, which [`StateStore::flush_logs`] asks for when a job changed.
pub trait StateStore: Send {
    /// The pipelines not yet final, with their jobs, oldest first: what the router
    /// holds in memory. Each finished pipeline's record (without its spec or jobs) is
    /// handed to `finished` instead, and not kept. A finished record that does not
    /// decode is skipped with a warning naming the database and the record: the history
    /// around it is still served. An open one that does not decode is an error: work
    /// would be lost.
    fn load_open(
        &self,
        finished: &mut dyn FnMut(PipelineRecord),
    ) -> Result<Vec<Loaded>, StoreError>;
    /// A pipeline as stored, with its spec and jobs (finished pipelines are read from
    /// here: the router keeps only open ones).
    fn get_pipeline(&self, id: PipelineId) -> Result<Option<Loaded>, StoreError>;
    /// A pipeline's record without its spec or jobs: enough for a listing.
    fn get_record(&self, id: PipelineId) -> Result<Option<PipelineRecord>, StoreError>;
    /// Up to `max` pipeline records by submission order: with `newest_first`, those
    /// whose `seq` is below `bound`, newest first; otherwise those above it, oldest
    /// first. Records without their spec.
    fn records(
        &self,
        bound: u64,
        newest_first: bool,
        max: usize,
    ) -> Result<Vec<PipelineRecord>, StoreError>;
    /// Deletes a finished pipeline: its record, spec, `jobs` job records and outputs
    /// (part of the turn's commit), and its logs (at once: they are not journaled).
    fn delete_pipeline(&mut self, rec: &PipelineRecord, jobs: u32) -> Result<(), StoreError>;
    /// Bytes the store's files take on disk (0 for a store in memory).
    fn disk_bytes(&self) -> u64;
    /// Writes a pipeline record.
    fn put_pipeline(&mut self, rec: &PipelineRecord) -> Result<(), StoreError>;
    /// Writes a job record.
    fn put_job(&mut self, id: PipelineId, job: u32, rec: &JobRecord) -> Result<(), StoreError>;
    /// Writes a job's output.
    fn put_output(&mut self, id: PipelineId, job: u32, output: &Data) -> Result<(), StoreError>;
    /// Reads a job's output.
    fn get_output(&self, id: PipelineId, job: u32) -> Result<Option<Data>, StoreError>;
    /// Reads the outputs of several jobs of one pipeline (a pipeline's results, a job's
    /// parents): a store that keeps them together reads them together.
    fn get_outputs(&self, id: PipelineId, jobs: &[u32]) -> Result<Vec<Option<Data>>, StoreError> {
        jobs.iter().map(|&j| self.get_output(id, j)).collect()
    }
    /// Every schedule stored and not removed.
    fn load_schedules(&self) -> Result<Vec<ScheduleRecord>, StoreError>;
    /// Writes a schedule record (a removal is a record with `removed` set).
    fn put_schedule(&mut self, rec: &ScheduleRecord) -> Result<(), StoreError>;
    /// Every backfill stored, oldest first.
    fn load_backfills(&self) -> Result<Vec<BackfillRecord>, StoreError>;
    /// Writes a backfill record.
    fn put_backfill(&mut self, rec: &BackfillRecord) -> Result<(), StoreError>;
    /// Every pool stored and not removed.
    fn load_pools(&self) -> Result<Vec<PoolRecord>, StoreError>;
    /// Writes a pool record (a removal is a record with `removed` set).
    fn put_pool(&mut self, rec: &PoolRecord) -> Result<(), StoreError>;
    /// Makes every write so far durable (per the durability mode).
    fn commit(&mut self) -> Result<(), StoreError>;
    /// Keeps one line of an attempt's log.
    fn put_log(&mut self, key: LogKey, line: &LogLine) -> Result<(), StoreError>;
    /// Forgets the lines of an attempt's log numbered up to `upto`, and records what
    /// is known of the log besides its lines.
    fn trim_log(&mut self, key: LogKey, upto: u64, meta: &LogMeta) -> Result<(), StoreError>;
    /// An attempt's log: what is known besides its lines, and its lines numbered after
    /// `after`, oldest first.
    fn read_log(&self, key: LogKey, after: u64) -> Result<(LogMeta, Vec<LogLine>), StoreError>;
    /// Asks that this turn's commit make the log writes so far durable (a job ended: its
    /// log is complete).
    fn flush_logs(&mut self) -> Result<(), StoreError>;
    /// Every notification kept (pending ones and the latest finished), oldest first.
    fn load_notifications(&self) -> Result<Vec<NotificationRecord>, StoreError>;
    /// Writes a notification record (part of the turn's commit).
    fn put_notification(&mut self, rec: &NotificationRecord) -> Result<(), StoreError>;
    /// Forgets a finished notification that fell out of the log (part of the commit).
    fn remove_notification(&mut self, seq: u64) -> Result<(), StoreError>;
}
