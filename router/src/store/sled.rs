//! [`SledStore`]: the router's durable [`StateStore`], a write-ahead journal in front of
//! a sled database that checkpoints fold the journal into. Part of the one `store`
//! module; its tests are in `sled/tests.rs`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pypelinin_common::protocol::{LogLine, PipelineId};
use pypelinin_common::{Data, PipelineSpec};
use serde::{Deserialize, Serialize};
use tracing::{debug, error, info, warn};

use super::{
    BackfillRecord, Durability, JobRecord, Loaded, LogKey, LogMeta, NotificationRecord,
    PipelineRecord, PoolRecord, ScheduleRecord, StateStore, StoreError,
};
use crate::journal::{self, Changes, Journal, Table};

/// The spec inside a pipeline record, as databases of the first release stored it.
#[derive(Deserialize)]
struct InlineSpec {
    spec: PipelineSpec,
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
///
/// Captured logs bypass the journal: they go straight into a sled tree of their own,
/// which sled writes out on its own cadence (every half second, on its flusher
/// thread), and [`StateStore::flush_logs`] forces when a job changes: at once in
/// [`Durability::Flush`] mode (the turn's commit waits for it, so a finished job's log
/// is on disk with its result), on another thread in [`Durability::Background`]. The
/// tradeoff: a crash loses at most the last half second of the logs of jobs still
/// running, and a log line never costs an fsync of its own.
pub struct SledStore {
    dir: PathBuf,
    trees: Trees,
    journal: Journal,
    last_sync: Instant,
    /// In [`Durability::Background`] mode, where journal files go to be synced off the
    /// router's thread; `None` in [`Durability::Flush`] mode, which syncs every commit.
    syncer: Option<SyncSender<File>>,
    checkpoint_bytes: u64,
    /// History records written since the last checkpoint began: reads see them before
    /// sled does.
    recent: Overlay,
    checkpoint: Option<Checkpoint>,
    specs_written: HashSet<PipelineId>,
    /// In [`Durability::Background`] mode, where log flushes are asked for, to run off
    /// the router's thread.
    log_flusher: Option<(SyncSender<()>, JoinHandle<()>)>,
}

/// The records of pipelines' history (records, specs, jobs, outputs and the order
/// index) written to the journal since a checkpoint began, encoded, by table and key:
/// sled has them only once that checkpoint is done, and the router, which no longer
/// holds finished pipelines, reads them back. An empty value is a deletion. Its size is
/// bounded by [`CHECKPOINT_BYTES`] of journal.
#[derive(Default)]
struct Overlay {
    records: HashMap<(Table, [u8; 20]), Vec<u8>>,
    seqs: BTreeMap<u64, Vec<u8>>,
}

impl Overlay {
    fn get(&self, table: Table, key: &[u8]) -> Option<&Vec<u8>> {
        self.records.get(&(table, pad(key)))
    }
}

/// A key of at most 20 bytes, padded with zeros.
fn pad(key: &[u8]) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..key.len()].copy_from_slice(key);
    k
}

/// A checkpoint under way: the records it writes (readable here until it is done) and
/// its thread.
struct Checkpoint {
    overlay: Arc<Overlay>,
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
    /// Submission order: `seq` (big-endian) to pipeline id, for listing history.
    seqs: sled::Tree,
    schedules: sled::Tree,
    backfills: sled::Tree,
    pools: sled::Tree,
    /// The notification outbox, by sequence number.
    notifications: sled::Tree,
    /// Logs, by [`log_key`]; sequence number 0 holds the attempt's [`LogMeta`].
    logs: sled::Tree,
}

/// How long opening the database waits for its file lock. sled's own background
/// flusher holds the database for a moment after the last handle is dropped, so that a
/// store reopened at once in the same process (a restart in tests, a store swapped
/// in place) can find it still locked.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The most memory sled's page cache takes (its default is 1 GiB): history is read
/// rarely, and the router's memory must not grow with it.
pub const SLED_CACHE_BYTES: u64 = 32 << 20;

fn open_db(dir: &Path) -> Result<sled::Db, sled::Error> {
    let started = std::time::Instant::now();
    loop {
        match sled::Config::new()
            .path(dir)
            .cache_capacity(SLED_CACHE_BYTES)
            .open()
        {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && started.elapsed() < LOCK_WAIT =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

impl Trees {
    fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = open_db(dir)?;
        Ok(Trees {
            pipelines: db.open_tree("pipelines")?,
            jobs: db.open_tree("jobs")?,
            outputs: db.open_tree("outputs")?,
            specs: db.open_tree("specs")?,
            seqs: db.open_tree("seqs")?,
            schedules: db.open_tree("schedules")?,
            backfills: db.open_tree("backfills")?,
            pools: db.open_tree("pools")?,
            notifications: db.open_tree("notifications")?,
            logs: db.open_tree("logs")?,
            db,
        })
    }

    /// Writes `changes` and flushes. Outputs first, then jobs, specs, pipelines and
    /// the order index: a crash between two batches leaves at worst an output without
    /// its job record, and the journal, still there, is replayed again. An empty value
    /// removes the record.
    fn write(&self, changes: &Changes) -> Result<(), StoreError> {
        let mut batches: [sled::Batch; 9] = Default::default();
        for ((table, key), value) in changes {
            if value.is_empty() {
                batches[*table as usize].remove(&key[..]);
            } else {
                batches[*table as usize].insert(&key[..], &value[..]);
            }
        }
        let [pipelines, specs, jobs, outputs, schedules, backfills, pools, notifications, seqs] =
            batches;
        self.outputs.apply_batch(outputs)?;
        self.jobs.apply_batch(jobs)?;
        self.specs.apply_batch(specs)?;
        self.pipelines.apply_batch(pipelines)?;
        self.seqs.apply_batch(seqs)?;
        self.schedules.apply_batch(schedules)?;
        self.backfills.apply_batch(backfills)?;
        self.pools.apply_batch(pools)?;
        self.notifications.apply_batch(notifications)?;
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
        index_seqs(dir, &trees)?;
        Ok(SledStore {
            dir: dir.to_path_buf(),
            journal,
            last_sync: Instant::now(),
            syncer: match durability {
                Durability::Flush => None,
                Durability::Background => Some(background_syncer()?),
            },
            checkpoint_bytes: CHECKPOINT_BYTES,
            recent: Overlay::default(),
            checkpoint: None,
            specs_written: HashSet::new(),
            log_flusher: match durability {
                Durability::Flush => None,
                Durability::Background => Some(log_flusher(trees.logs.clone())?),
            },
            trees,
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
        let overlay = Arc::new(std::mem::take(&mut self.recent));
        let (trees, dir) = (self.trees.clone(), self.dir.clone());
        let thread = std::thread::Builder::new()
            .name("checkpoint".into())
            .spawn(move || {
                let records = fold(&dir, &trees, last)?;
                debug!(records, "checkpoint written");
                Ok(())
            })?;
        self.checkpoint = Some(Checkpoint { overlay, thread });
        Ok(())
    }

    /// Journals a record of the history, and keeps it readable until sled has it.
    fn put_history(&mut self, table: Table, key: &[u8], value: Vec<u8>) {
        self.journal.put(table, key, &value);
        if table == Table::Seq {
            let mut seq = [0u8; 8];
            seq.copy_from_slice(key);
            self.recent.seqs.insert(u64::from_be_bytes(seq), value);
        } else {
            self.recent.records.insert((table, pad(key)), value);
        }
    }

    /// The latest value of a history record: written since a checkpoint began, being
    /// checkpointed, or in sled.
    fn read(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let pending = self
            .recent
            .get(table, key)
            .or_else(|| self.checkpoint.as_ref()?.overlay.get(table, key));
        if let Some(v) = pending {
            return Ok((!v.is_empty()).then(|| v.clone()));
        }
        let tree = match table {
            Table::Pipeline => &self.trees.pipelines,
            Table::Spec => &self.trees.specs,
            Table::Job => &self.trees.jobs,
            Table::Output => &self.trees.outputs,
            Table::Seq => &self.trees.seqs,
            _ => return Ok(None),
        };
        Ok(tree.get(key)?.map(|v| v.to_vec()))
    }

    /// A record that did not decode, named with the database it is in.
    fn corrupt(&self, what: &str, e: StoreError) -> StoreError {
        match e {
            StoreError::Corrupt { key, message } => StoreError::Corrupt {
                key: format!("{what} ({key}) in {}", self.dir.display()),
                message,
            },
            other => other,
        }
    }

    /// The pipeline ids of the order index past `bound`, in the direction asked, the
    /// journal's latest entries over sled's.
    fn seq_ids(
        &self,
        bound: u64,
        newest_first: bool,
    ) -> impl Iterator<Item = Result<(u64, Vec<u8>), StoreError>> + '_ {
        type Source<'a> = Box<dyn Iterator<Item = Result<(u64, Vec<u8>), StoreError>> + 'a>;
        fn overlay(seqs: &BTreeMap<u64, Vec<u8>>, bound: u64, newest_first: bool) -> Source<'_> {
            let item = |(k, v): (&u64, &Vec<u8>)| Ok((*k, v.clone()));
            if newest_first {
                Box::new(seqs.range(..bound).rev().map(item))
            } else {
                Box::new(seqs.range(bound.saturating_add(1)..).map(item))
            }
        }
        let sled_range: Source<'_> = {
            let decode = |item: sled::Result<(sled::IVec, sled::IVec)>| {
                let (k, v) = item?;
                let mut seq = [0u8; 8];
                seq.copy_from_slice(&k[..8.min(k.len())]);
                Ok((u64::from_be_bytes(seq), v.to_vec()))
            };
            if newest_first {
                Box::new(
                    self.trees
                        .seqs
                        .range(..bound.to_be_bytes())
                        .rev()
                        .map(decode),
                )
            } else {
                Box::new(
                    self.trees
                        .seqs
                        .range((
                            std::ops::Bound::Excluded(bound.to_be_bytes()),
                            std::ops::Bound::Unbounded,
                        ))
                        .map(decode),
                )
            }
        };
        // Highest precedence first: what was written since the checkpoint began, what
        // the checkpoint is writing, then sled.
        let mut sources: Vec<std::iter::Peekable<Source<'_>>> = vec![
            overlay(&self.recent.seqs, bound, newest_first).peekable(),
            match &self.checkpoint {
                Some(c) => overlay(&c.overlay.seqs, bound, newest_first),
                None => Box::new(std::iter::empty()),
            }
            .peekable(),
            sled_range.peekable(),
        ];
        std::iter::from_fn(move || loop {
            let mut best: Option<(usize, u64)> = None;
            for (n, src) in sources.iter_mut().enumerate() {
                match src.peek() {
                    Some(Err(_)) => return src.next(),
                    Some(Ok((k, _))) => {
                        let better = match best {
                            None => true,
                            Some((_, b)) => (newest_first && *k > b) || (!newest_first && *k < b),
                        };
                        if better {
                            best = Some((n, *k));
                        }
                    }
                    None => {}
                }
            }
            let (n, k) = best?;
            let item = sources[n].next();
            // Shadowed entries of the same seq in lower sources are skipped.
            for src in sources.iter_mut().skip(n + 1) {
                while src
                    .peek()
                    .is_some_and(|r| r.as_ref().is_ok_and(|(x, _)| *x == k))
                {
                    src.next();
                }
            }
            match item {
                Some(Ok((_, v))) if v.is_empty() => continue,
                other => return other,
            }
        })
    }
}

/// Builds the order index of a database written before it had one.
fn index_seqs(dir: &Path, trees: &Trees) -> Result<(), StoreError> {
    if !trees.seqs.is_empty() || trees.pipelines.is_empty() {
        return Ok(());
    }
    let mut batch = sled::Batch::default();
    let mut n = 0;
    for item in trees.pipelines.iter() {
        let (k, v) = item?;
        match rmp_serde::from_slice::<PipelineRecord>(&v) {
            Ok(rec) => {
                batch.insert(&rec.seq.to_be_bytes()[..], &k[..]);
                n += 1;
            }
            Err(e) => {
                warn!(db = %dir.display(), key = ?k, error = %e, "pipeline record does not decode; left out of the history's index")
            }
        }
    }
    trees.seqs.apply_batch(batch)?;
    trees.db.flush()?;
    info!(pipelines = n, "indexed the history by submission order");
    Ok(())
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

/// A thread that flushes the logs tree when asked; it ends with the store.
fn log_flusher(logs: sled::Tree) -> Result<(SyncSender<()>, JoinHandle<()>), StoreError> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
    let thread = std::thread::Builder::new()
        .name("log-flush".into())
        .spawn(move || {
            for () in rx {
                if let Err(e) = logs.flush() {
                    warn!(error = %e, "flushing the logs failed");
                }
            }
        })?;
    Ok((tx, thread))
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
        // The flusher holds the database open: it ends (flushing what it was asked to)
        // before the store is gone, so that the directory can be opened again at once.
        if let Some((tx, thread)) = self.log_flusher.take() {
            drop(tx);
            let _ = thread.join();
        }
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

fn log_key((id, job, attempt): LogKey, seq: u64) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..20].copy_from_slice(&job_key(id, job));
    k[20..24].copy_from_slice(&attempt.to_be_bytes());
    k[24..].copy_from_slice(&seq.to_be_bytes());
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
    fn load_open(
        &self,
        finished: &mut dyn FnMut(PipelineRecord),
    ) -> Result<Vec<Loaded>, StoreError> {
        let mut out = Vec::new();
        for item in self.trees.pipelines.iter() {
            let (k, v) = item?;
            let rec: PipelineRecord = match dec(&k, &v) {
                Ok(r) => r,
                Err(e) => {
                    error!(error = %self.corrupt("pipeline record", e), "skipped a pipeline record that does not decode; the rest of the history is served");
                    continue;
                }
            };
            if rec.state.is_final() {
                finished(rec);
                continue;
            }
            let id = rec.id;
            match self.get_pipeline(id) {
                Ok(Some(loaded)) => out.push(loaded),
                Ok(None) => {}
                Err(e) => {
                    error!(pipeline = %id, error = %e, "skipped an open pipeline whose records do not decode");
                }
            }
        }
        out.sort_by_key(|(p, _)| p.seq);
        Ok(out)
    }

    fn get_pipeline(&self, id: PipelineId) -> Result<Option<Loaded>, StoreError> {
        let k = id.0.as_bytes();
        let Some(v) = self.read(Table::Pipeline, k)? else {
            return Ok(None);
        };
        let name = |what: &str| format!("{what} of pipeline {id}");
        let mut rec: PipelineRecord = dec(k, &v).map_err(|e| self.corrupt(&name("record"), e))?;
        rec.spec = match self.read(Table::Spec, k)? {
            Some(spec) => dec(k, &spec),
            // Databases written before specs had their own tree kept it inline.
            None => dec::<InlineSpec>(k, &v).map(|s| s.spec),
        }
        .map_err(|e| self.corrupt(&name("spec"), e))?;
        let mut jobs = Vec::with_capacity(rec.spec.jobs.len());
        for i in 0..rec.spec.jobs.len() as u32 {
            let jk = job_key(id, i);
            // Jobs are written in full at submission, so a missing one means corruption.
            let Some(jv) = self.read(Table::Job, &jk)? else {
                return Err(self.corrupt(
                    &name("jobs"),
                    StoreError::Corrupt {
                        key: id.to_string(),
                        message: format!("no record of job {i} of {}", rec.spec.jobs.len()),
                    },
                ));
            };
            jobs.push(dec::<JobRecord>(&jk, &jv).map_err(|e| self.corrupt(&name("job"), e))?);
        }
        Ok(Some((rec, jobs)))
    }

    fn get_record(&self, id: PipelineId) -> Result<Option<PipelineRecord>, StoreError> {
        let k = id.0.as_bytes();
        match self.read(Table::Pipeline, k)? {
            Some(v) => dec(k, &v)
                .map(Some)
                .map_err(|e| self.corrupt(&format!("record of pipeline {id}"), e)),
            None => Ok(None),
        }
    }

    fn records(
        &self,
        bound: u64,
        newest_first: bool,
        max: usize,
    ) -> Result<Vec<PipelineRecord>, StoreError> {
        let mut out = Vec::new();
        for item in self.seq_ids(bound, newest_first) {
            if out.len() >= max {
                break;
            }
            let (seq, id) = item?;
            let Ok(bytes) = <[u8; 16]>::try_from(&id[..]) else {
                warn!(seq, db = %self.dir.display(), "order index entry is not a pipeline id; skipped");
                continue;
            };
            let id = PipelineId(uuid::Uuid::from_bytes(bytes));
            match self.get_record(id) {
                Ok(Some(rec)) => out.push(rec),
                Ok(None) => {}
                Err(e) => {
                    warn!(error = %e, "pipeline record does not decode; left out of the listing")
                }
            }
        }
        Ok(out)
    }

    fn delete_pipeline(&mut self, rec: &PipelineRecord, jobs: u32) -> Result<(), StoreError> {
        let k = rec.id.0.as_bytes();
        self.put_history(Table::Pipeline, k, Vec::new());
        self.put_history(Table::Spec, k, Vec::new());
        self.put_history(Table::Seq, &rec.seq.to_be_bytes(), Vec::new());
        for i in 0..jobs {
            let jk = job_key(rec.id, i);
            self.put_history(Table::Job, &jk, Vec::new());
            self.put_history(Table::Output, &jk, Vec::new());
        }
        self.specs_written.remove(&rec.id);
        let mut batch = sled::Batch::default();
        for key in self.trees.logs.scan_prefix(k).keys() {
            batch.remove(key?);
        }
        self.trees.logs.apply_batch(batch)?;
        Ok(())
    }

    fn disk_bytes(&self) -> u64 {
        fn walk(dir: &Path) -> u64 {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return 0;
            };
            entries
                .filter_map(|e| e.ok())
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => walk(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        }
        walk(&self.dir)
    }

    fn put_pipeline(&mut self, rec: &PipelineRecord) -> Result<(), StoreError> {
        let k = *rec.id.0.as_bytes();
        // The spec and the index entry once per pipeline while it is open; a retried
        // pipeline writes them again, harmlessly, and nothing here outlives it.
        if !self.specs_written.contains(&rec.id) {
            self.put_history(Table::Spec, &k, enc(&rec.spec)?);
            self.put_history(Table::Seq, &rec.seq.to_be_bytes(), k.to_vec());
        }
        if rec.state.is_final() {
            self.specs_written.remove(&rec.id);
        } else {
            self.specs_written.insert(rec.id);
        }
        self.put_history(Table::Pipeline, &k, enc(rec)?);
        Ok(())
    }

    fn put_job(&mut self, id: PipelineId, job: u32, rec: &JobRecord) -> Result<(), StoreError> {
        self.put_history(Table::Job, &job_key(id, job), enc(rec)?);
        Ok(())
    }

    fn put_output(&mut self, id: PipelineId, job: u32, output: &Data) -> Result<(), StoreError> {
        self.put_history(Table::Output, &job_key(id, job), enc(output)?);
        Ok(())
    }

    fn get_output(&self, id: PipelineId, job: u32) -> Result<Option<Data>, StoreError> {
        let k = job_key(id, job);
        match self.read(Table::Output, &k)? {
            Some(v) => {
                Ok(Some(dec(&k, &v).map_err(|e| {
                    self.corrupt(&format!("output of pipeline {id}"), e)
                })?))
            }
            None => Ok(None),
        }
    }

    fn load_schedules(&self) -> Result<Vec<ScheduleRecord>, StoreError> {
        let mut out = Vec::new();
        for item in self.trees.schedules.iter() {
            let (k, v) = item?;
            let rec: ScheduleRecord = dec(&k, &v)?;
            if !rec.removed {
                out.push(rec);
            }
        }
        Ok(out)
    }

    fn put_schedule(&mut self, rec: &ScheduleRecord) -> Result<(), StoreError> {
        self.journal
            .put(Table::Schedule, rec.spec.name.as_bytes(), &enc(rec)?);
        Ok(())
    }

    fn load_backfills(&self) -> Result<Vec<BackfillRecord>, StoreError> {
        let mut out = Vec::new();
        for item in self.trees.backfills.iter() {
            let (k, v) = item?;
            out.push(dec::<BackfillRecord>(&k, &v)?);
        }
        Ok(out)
    }

    fn put_backfill(&mut self, rec: &BackfillRecord) -> Result<(), StoreError> {
        self.journal
            .put(Table::Backfill, &rec.id.to_be_bytes(), &enc(rec)?);
        Ok(())
    }

    fn load_pools(&self) -> Result<Vec<PoolRecord>, StoreError> {
        let mut out = Vec::new();
        for item in self.trees.pools.iter() {
            let (k, v) = item?;
            let rec: PoolRecord = dec(&k, &v)?;
            if !rec.removed {
                out.push(rec);
            }
        }
        Ok(out)
    }

    fn put_pool(&mut self, rec: &PoolRecord) -> Result<(), StoreError> {
        self.journal
            .put(Table::Pool, rec.name.as_bytes(), &enc(rec)?);
        Ok(())
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

    fn put_log(&mut self, key: LogKey, line: &LogLine) -> Result<(), StoreError> {
        self.trees
            .logs
            .insert(log_key(key, line.seq.max(1)), enc(line)?)?;
        Ok(())
    }

    fn trim_log(&mut self, key: LogKey, upto: u64, meta: &LogMeta) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for k in self
            .trees
            .logs
            .range(log_key(key, 1)..=log_key(key, upto))
            .keys()
        {
            batch.remove(k?);
        }
        batch.insert(&log_key(key, 0)[..], enc(meta)?);
        self.trees.logs.apply_batch(batch)?;
        Ok(())
    }

    fn read_log(&self, key: LogKey, after: u64) -> Result<(LogMeta, Vec<LogLine>), StoreError> {
        let k0 = log_key(key, 0);
        let meta = match self.trees.logs.get(k0)? {
            Some(v) => dec(&k0, &v)?,
            None => LogMeta::default(),
        };
        let mut lines = Vec::new();
        for item in self
            .trees
            .logs
            .range(log_key(key, after.saturating_add(1).max(1))..=log_key(key, u64::MAX))
        {
            let (k, v) = item?;
            lines.push(dec(&k, &v)?);
        }
        Ok((meta, lines))
    }

    fn load_notifications(&self) -> Result<Vec<NotificationRecord>, StoreError> {
        let mut out = Vec::new();
        for item in self.trees.notifications.iter() {
            let (k, v) = item?;
            out.push(dec::<NotificationRecord>(&k, &v)?);
        }
        Ok(out)
    }

    fn put_notification(&mut self, rec: &NotificationRecord) -> Result<(), StoreError> {
        self.journal
            .put(Table::Notification, &rec.seq.to_be_bytes(), &enc(rec)?);
        Ok(())
    }

    fn remove_notification(&mut self, seq: u64) -> Result<(), StoreError> {
        self.journal
            .put(Table::Notification, &seq.to_be_bytes(), &[]);
        Ok(())
    }

    fn flush_logs(&mut self) -> Result<(), StoreError> {
        match &self.log_flusher {
            // One asked is enough: a flush waiting to run covers this one.
            Some((tx, _)) => {
                let _ = tx.try_send(());
            }
            None => {
                self.trees.logs.flush()?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
