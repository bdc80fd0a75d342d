//! Durable router state behind a small trait, so that sled can be swapped out.
//!
//! The router writes every change through a [`StateStore`] and calls
//! [`StateStore::commit`] once per event-loop turn, before it sends any reply: a change
//! is acknowledged only once it is durable, and concurrent changes share one flush.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pypelinin_common::protocol::PipelineId;
use pypelinin_common::status::{Attempt, JobState, PipelineState};
use pypelinin_common::{Data, PipelineSpec};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::journal::{self, Changes, Journal, Table};

/// A storage failure; the router stops rather than acknowledge what it could not keep.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed.
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// The journal could not be read or written.
    #[error("journal: {0}")]
    Io(#[from] std::io::Error),
    /// A checkpoint into sled failed.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// A record did not encode (a job's output that MessagePack cannot hold).
    #[error("encoding a record: {0}")]
    Encode(String),
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
}

/// The spec inside a pipeline record, as databases of the first release stored it.
#[derive(Deserialize)]
struct InlineSpec {
    spec: PipelineSpec,
}

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
    /// Every attempt; the last one is the current one while running.
    pub history: Vec<Attempt>,
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
        }
    }

    /// Number of the latest attempt (0 before the first).
    pub fn attempt(&self) -> u32 {
        self.history.len() as u32
    }
}

impl Default for JobRecord {
    fn default() -> Self {
        Self::new()
    }
}

/// A pipeline with its jobs, as loaded at start-up.
pub type Loaded = (PipelineRecord, Vec<JobRecord>);

/// Where the router keeps its state.
pub trait StateStore: Send {
    /// Everything stored, oldest pipeline first.
    fn load(&self) -> Result<Vec<Loaded>, StoreError>;
    /// Writes a pipeline record.
    fn put_pipeline(&mut self, rec: &PipelineRecord) -> Result<(), StoreError>;
    /// Writes a job record.
    fn put_job(&mut self, id: PipelineId, job: u32, rec: &JobRecord) -> Result<(), StoreError>;
    /// Writes a job's output.
    fn put_output(&mut self, id: PipelineId, job: u32, output: &Data) -> Result<(), StoreError>;
    /// Reads a job's output.
    fn get_output(&self, id: PipelineId, job: u32) -> Result<Option<Data>, StoreError>;
    /// Makes every write so far durable (per the durability mode).
    fn commit(&mut self) -> Result<(), StoreError>;
}

/// Journal bytes after which a checkpoint folds the journal into sled.
pub const CHECKPOINT_BYTES: u64 = 64 << 20;
/// In [`Durability::Background`] mode, the longest a journal write waits for its sync.
pub const BACKGROUND_SYNC: Duration = Duration::from_millis(500);

/// The sled implementation, with a write-ahead journal in front of it.
///
/// Every commit appends one frame to the journal ([`crate::journal`]); sled is written
/// only by checkpoints, on a thread of their own, which read the journals back and
/// write the latest value of each record in them. A pipeline that starts and ends
/// between two checkpoints thus costs sled one write per record instead of one per
/// change, and none on the router's thread. Only outputs are kept here in memory until
/// sled has them (the router reads them back for children and results; everything
/// else it holds itself). At start-up the journals left are replayed into sled first.
pub struct SledStore {
    dir: PathBuf,
    trees: Trees,
    journal: Journal,
    last_sync: Instant,
    /// In [`Durability::Background`] mode, where journal files go to be synced off the
    /// router's thread; `None` in [`Durability::Flush`] mode, which syncs every commit.
    syncer: Option<SyncSender<File>>,
    checkpoint_bytes: u64,
    /// Outputs written since the last checkpoint began.
    recent: Outputs,
    checkpoint: Option<Checkpoint>,
    specs_written: HashSet<PipelineId>,
}

/// Encoded outputs by job key.
type Outputs = HashMap<[u8; 20], Vec<u8>>;

/// A checkpoint under way: the outputs it writes (readable here until it is done) and
/// its thread.
struct Checkpoint {
    outputs: Arc<Outputs>,
    thread: JoinHandle<Result<(), StoreError>>,
}

/// The database's trees; clones share them.
#[derive(Clone)]
struct Trees {
    db: sled::Db,
    pipelines: sled::Tree,
    jobs: sled::Tree,
    outputs: sled::Tree,
    specs: sled::Tree,
}

impl Trees {
    fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new().path(dir).open()?;
        Ok(Trees {
            pipelines: db.open_tree("pipelines")?,
            jobs: db.open_tree("jobs")?,
            outputs: db.open_tree("outputs")?,
            specs: db.open_tree("specs")?,
            db,
        })
    }

    /// Writes `changes` and flushes. Outputs first, then jobs, specs and pipelines: a
    /// crash between two batches leaves at worst an output without its job record,
    /// and the journal, still there, is replayed again.
    fn write(&self, changes: &Changes) -> Result<(), StoreError> {
        let mut batches: [sled::Batch; 4] = Default::default();
        for ((table, key), value) in changes {
            batches[*table as usize].insert(&key[..], &value[..]);
        }
        let [pipelines, specs, jobs, outputs] = batches;
        self.outputs.apply_batch(outputs)?;
        self.jobs.apply_batch(jobs)?;
        self.specs.apply_batch(specs)?;
        self.pipelines.apply_batch(pipelines)?;
        self.db.flush()?;
        Ok(())
    }
}

impl SledStore {
    /// Opens (or creates) the database in `dir`, replaying any journal left there.
    pub fn open(dir: &Path, durability: Durability) -> Result<Self, StoreError> {
        let trees = Trees::open(dir)?;
        let found = journal::list(dir)?;
        let folded = fold(dir, &trees, found.last().copied().unwrap_or(0))?;
        if folded > 0 {
            info!(
                journals = found.len(),
                records = folded,
                "replayed the journal into the database"
            );
        }
        let journal = Journal::create(dir, found.last().map_or(1, |n| n + 1))?;
        Ok(SledStore {
            dir: dir.to_path_buf(),
            trees,
            journal,
            last_sync: Instant::now(),
            syncer: match durability {
                Durability::Flush => None,
                Durability::Background => Some(background_syncer()?),
            },
            checkpoint_bytes: CHECKPOINT_BYTES,
            recent: Outputs::new(),
            checkpoint: None,
            specs_written: HashSet::new(),
        })
    }

    /// Checkpoints once the journal holds `bytes` (default [`CHECKPOINT_BYTES`]).
    pub fn checkpoint_after(mut self, bytes: u64) -> Self {
        self.checkpoint_bytes = bytes;
        self
    }

    /// Joins a finished checkpoint (or, with `wait`, any checkpoint).
    fn reap_checkpoint(&mut self, wait: bool) -> Result<(), StoreError> {
        let Some(c) = self.checkpoint.take_if(|c| wait || c.thread.is_finished()) else {
            return Ok(());
        };
        c.thread.join().unwrap_or_else(|_| {
            Err(StoreError::Checkpoint(
                "the checkpoint thread panicked".into(),
            ))
        })
    }

    /// Starts a new journal and folds everything before it into sled, in the background.
    fn start_checkpoint(&mut self) -> Result<(), StoreError> {
        let last = self.journal.number();
        self.journal = Journal::create(&self.dir, last + 1)?;
        let outputs = Arc::new(std::mem::take(&mut self.recent));
        let (trees, dir) = (self.trees.clone(), self.dir.clone());
        let thread = std::thread::Builder::new()
            .name("checkpoint".into())
            .spawn(move || {
                let records = fold(&dir, &trees, last)?;
                debug!(records, "checkpoint written");
                Ok(())
            })?;
        self.checkpoint = Some(Checkpoint { outputs, thread });
        Ok(())
    }
}

/// A thread that syncs the journal files it is sent; it ends with the store.
fn background_syncer() -> Result<SyncSender<File>, StoreError> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<File>(1);
    std::thread::Builder::new()
        .name("journal-sync".into())
        .spawn(move || {
            for f in rx {
                if let Err(e) = f.sync_data() {
                    warn!(error = %e, "background sync of the journal failed");
                }
            }
        })?;
    Ok(tx)
}

/// Replays the journals of `dir` numbered up to `last` into sled, then removes them;
/// how many records it wrote.
fn fold(dir: &Path, trees: &Trees, last: u64) -> Result<usize, StoreError> {
    let found: Vec<u64> = journal::list(dir)?
        .into_iter()
        .filter(|n| *n <= last)
        .collect();
    let mut changes = Changes::new();
    for &n in &found {
        let r = journal::replay(dir, n, &mut changes)?;
        if r.torn_bytes > 0 {
            warn!(
                journal = n,
                frames = r.frames,
                torn_bytes = r.torn_bytes,
                "journal ends in a torn write (a crash while appending); ignoring its tail"
            );
        }
    }
    if !changes.is_empty() {
        trees.write(&changes)?;
    }
    for &n in &found {
        std::fs::remove_file(journal::path(dir, n))?;
    }
    Ok(changes.len())
}

impl Drop for SledStore {
    fn drop(&mut self) {
        if let Err(e) = self.reap_checkpoint(true) {
            warn!(error = %e, "checkpoint failed; the journal will be replayed at the next start");
        }
    }
}

fn job_key(id: PipelineId, job: u32) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..16].copy_from_slice(id.0.as_bytes());
    k[16..].copy_from_slice(&job.to_be_bytes());
    k
}

fn enc<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    rmp_serde::to_vec_named(v).map_err(|e| StoreError::Encode(e.to_string()))
}

fn dec<T: serde::de::DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    rmp_serde::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: format!("{key:02x?}"),
        message: e.to_string(),
    })
}

impl StateStore for SledStore {
    fn load(&self) -> Result<Vec<Loaded>, StoreError> {
        let t = &self.trees;
        let mut out = Vec::new();
        for item in t.pipelines.iter() {
            let (k, v) = item?;
            let mut rec: PipelineRecord = dec(&k, &v)?;
            rec.spec = match t.specs.get(&k)? {
                Some(spec) => dec(&k, &spec)?,
                // Databases written before specs had their own tree kept it inline.
                None => dec::<InlineSpec>(&k, &v)?.spec,
            };
            let mut jobs = Vec::with_capacity(rec.spec.jobs.len());
            for j in t.jobs.scan_prefix(&k) {
                let (jk, jv) = j?;
                jobs.push(dec::<JobRecord>(&jk, &jv)?);
            }
            // Jobs are written in full at submission, so a short list means corruption.
            if jobs.len() != rec.spec.jobs.len() {
                return Err(StoreError::Corrupt {
                    key: rec.id.to_string(),
                    message: format!(
                        "{} job records for {} jobs",
                        jobs.len(),
                        rec.spec.jobs.len()
                    ),
                });
            }
            out.push((rec, jobs));
        }
        out.sort_by_key(|(p, _)| p.seq);
        Ok(out)
    }

    fn put_pipeline(&mut self, rec: &PipelineRecord) -> Result<(), StoreError> {
        if !self.specs_written.contains(&rec.id) {
            self.journal
                .put(Table::Spec, rec.id.0.as_bytes(), &enc(&rec.spec)?);
            self.specs_written.insert(rec.id);
        }
        self.journal
            .put(Table::Pipeline, rec.id.0.as_bytes(), &enc(rec)?);
        Ok(())
    }

    fn put_job(&mut self, id: PipelineId, job: u32, rec: &JobRecord) -> Result<(), StoreError> {
        self.journal.put(Table::Job, &job_key(id, job), &enc(rec)?);
        Ok(())
    }

    fn put_output(&mut self, id: PipelineId, job: u32, output: &Data) -> Result<(), StoreError> {
        let (key, value) = (job_key(id, job), enc(output)?);
        self.journal.put(Table::Output, &key, &value);
        self.recent.insert(key, value);
        Ok(())
    }

    fn get_output(&self, id: PipelineId, job: u32) -> Result<Option<Data>, StoreError> {
        let k = job_key(id, job);
        let pending = self
            .recent
            .get(&k)
            .or_else(|| self.checkpoint.as_ref()?.outputs.get(&k));
        if let Some(v) = pending {
            return Ok(Some(dec(&k, v)?));
        }
        match self.trees.outputs.get(k)? {
            Some(v) => Ok(Some(dec(&k, &v)?)),
            None => Ok(None),
        }
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        self.journal.append(self.syncer.is_none())?;
        if let Some(syncer) = &self.syncer {
            if self.last_sync.elapsed() >= BACKGROUND_SYNC {
                self.last_sync = Instant::now();
                // A sync of half a second of writes can take milliseconds: another
                // thread waits for it. One at a time; a sync still running covers this.
                let _ = syncer.try_send(self.journal.handle()?);
            }
        }
        self.reap_checkpoint(false)?;
        if self.journal.len() >= self.checkpoint_bytes && self.checkpoint.is_none() {
            self.start_checkpoint()?;
        }
        Ok(())
    }
}

/// A [`StateStore`] in memory: nothing survives the process. For tests of the state
/// machine, which then need no disk and no sled; clones share one store, so a test
/// can load a second [`crate::state::RouterState`] from what the first one wrote, as a
/// restarted router would. Only committed writes are loaded, as with sled's journal.
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<Memory>>,
}

#[derive(Default)]
struct Memory {
    /// Written and not yet committed.
    pending: Tables,
    committed: Tables,
    commits: u64,
}

#[derive(Clone, Default)]
struct Tables {
    pipelines: HashMap<PipelineId, PipelineRecord>,
    jobs: HashMap<(PipelineId, u32), JobRecord>,
    outputs: HashMap<(PipelineId, u32), Data>,
}

impl Tables {
    fn merge(&mut self, other: Tables) {
        self.pipelines.extend(other.pipelines);
        self.jobs.extend(other.jobs);
        self.outputs.extend(other.outputs);
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many commits it has seen.
    pub fn commits(&self) -> u64 {
        self.lock().commits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Memory> {
        // A panic while holding the lock leaves whole maps behind (each write is one
        // insert): the data is still consistent, so a poisoned lock is used as is.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl StateStore for MemoryStore {
    fn load(&self) -> Result<Vec<Loaded>, StoreError> {
        let m = self.lock();
        let c = &m.committed;
        let mut out = Vec::with_capacity(c.pipelines.len());
        for rec in c.pipelines.values() {
            let mut jobs = Vec::with_capacity(rec.spec.jobs.len());
            for i in 0..rec.spec.jobs.len() as u32 {
                match c.jobs.get(&(rec.id, i)) {
                    Some(j) => jobs.push(j.clone()),
                    None => {
                        return Err(StoreError::Corrupt {
                            key: rec.id.to_string(),
                            message: format!("no record of job {i}"),
                        })
                    }
                }
            }
            out.push((rec.clone(), jobs));
        }
        out.sort_by_key(|(p, _)| p.seq);
        Ok(out)
    }

    fn put_pipeline(&mut self, rec: &PipelineRecord) -> Result<(), StoreError> {
        self.lock().pending.pipelines.insert(rec.id, rec.clone());
        Ok(())
    }

    fn put_job(&mut self, id: PipelineId, job: u32, rec: &JobRecord) -> Result<(), StoreError> {
        self.lock().pending.jobs.insert((id, job), rec.clone());
        Ok(())
    }

    fn put_output(&mut self, id: PipelineId, job: u32, output: &Data) -> Result<(), StoreError> {
        self.lock()
            .pending
            .outputs
            .insert((id, job), output.clone());
        Ok(())
    }

    fn get_output(&self, id: PipelineId, job: u32) -> Result<Option<Data>, StoreError> {
        let m = self.lock();
        let k = (id, job);
        Ok(m.pending
            .outputs
            .get(&k)
            .or_else(|| m.committed.outputs.get(&k))
            .cloned())
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        let mut m = self.lock();
        let pending = std::mem::take(&mut m.pending);
        m.committed.merge(pending);
        m.commits += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline(seq: u64) -> PipelineRecord {
        let spec = PipelineSpec::default()
            .job("a", "Noop", &[])
            .job("b", "Noop", &["a"]);
        PipelineRecord {
            id: PipelineId::new(),
            spec,
            state: PipelineState::Running,
            seq,
            submitted_ms: 1,
            finished_ms: None,
        }
    }

    /// Writes `n` pipelines of two jobs, one commit each, job `a` finished with output.
    fn write(store: &mut SledStore, n: u64) -> Vec<PipelineId> {
        (1..=n)
            .map(|seq| {
                let rec = pipeline(seq);
                store.put_pipeline(&rec).unwrap();
                let mut done = JobRecord::new();
                done.state = JobState::Succeeded;
                store.put_job(rec.id, 0, &JobRecord::new()).unwrap();
                store.put_job(rec.id, 1, &JobRecord::new()).unwrap();
                store.put_job(rec.id, 0, &done).unwrap();
                let out: Data = [("seq".to_string(), serde_json::json!(seq))]
                    .into_iter()
                    .collect();
                store.put_output(rec.id, 0, &out).unwrap();
                store.commit().unwrap();
                rec.id
            })
            .collect()
    }

    fn check_outputs(store: &SledStore, ids: &[PipelineId]) {
        for (k, id) in ids.iter().enumerate() {
            let out = store.get_output(*id, 0).unwrap().expect("output kept");
            assert_eq!(out["seq"], serde_json::json!(k as u64 + 1));
            assert!(store.get_output(*id, 1).unwrap().is_none());
        }
    }

    /// What a restarted router loads.
    fn check(store: &SledStore, ids: &[PipelineId]) {
        let loaded = store.load().unwrap();
        assert_eq!(loaded.len(), ids.len());
        for ((rec, jobs), id) in loaded.iter().zip(ids) {
            assert_eq!(rec.id, *id);
            assert_eq!(rec.spec.jobs.len(), 2);
            assert_eq!(jobs[0].state, JobState::Succeeded, "latest write wins");
            assert_eq!(jobs[1].state, JobState::Queued);
        }
        check_outputs(store, ids);
    }

    #[test]
    fn what_only_the_journal_holds_is_there_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let ids = {
            let mut s = SledStore::open(dir.path(), Durability::Flush).unwrap();
            write(&mut s, 20)
        };
        // Nothing reached sled: the journal alone carries the 20 pipelines.
        assert_eq!(journal::list(dir.path()).unwrap(), vec![1]);
        let s = SledStore::open(dir.path(), Durability::Background).unwrap();
        check(&s, &ids);
        assert_eq!(
            journal::list(dir.path()).unwrap(),
            vec![2],
            "replayed, then removed"
        );
    }

    #[test]
    fn checkpoints_move_records_to_sled_and_remove_old_journals() {
        let dir = tempfile::tempdir().unwrap();
        let ids = {
            let mut s = SledStore::open(dir.path(), Durability::Background)
                .unwrap()
                .checkpoint_after(1);
            let ids = write(&mut s, 50);
            // Readable whether a record sits in the journal, in a running checkpoint
            // or in sled.
            check_outputs(&s, &ids);
            s.reap_checkpoint(true).unwrap();
            assert!(!s.trees.outputs.is_empty(), "a checkpoint wrote to sled");
            ids
        };
        let left = journal::list(dir.path()).unwrap();
        assert!(left.len() <= 2, "old journals removed: {left:?}");
        let s = SledStore::open(dir.path(), Durability::Flush).unwrap();
        check(&s, &ids);
    }
}
