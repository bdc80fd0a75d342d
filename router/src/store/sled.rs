//! [`SledStore`]: the router's durable [`StateStore`], a write-ahead journal in front of
//! a sled database that checkpoints fold the journal into. Part of the one `store`
//! module; its tests are in `sled/tests.rs`.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pypelinin_common::protocol::{LogLine, PipelineId};
use pypelinin_common::{Data, PipelineSpec};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

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
    /// Outputs written since the last checkpoint began.
    recent: Outputs,
    checkpoint: Option<Checkpoint>,
    specs_written: HashSet<PipelineId>,
    /// In [`Durability::Background`] mode, where log flushes are asked for, to run off
    /// the router's thread.
    log_flusher: Option<(SyncSender<()>, JoinHandle<()>)>,
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

fn open_db(dir: &Path) -> Result<sled::Db, sled::Error> {
    let started = std::time::Instant::now();
    loop {
        match sled::Config::new().path(dir).open() {
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
            schedules: db.open_tree("schedules")?,
            backfills: db.open_tree("backfills")?,
            pools: db.open_tree("pools")?,
            notifications: db.open_tree("notifications")?,
            logs: db.open_tree("logs")?,
            db,
        })
    }

    /// Writes `changes` and flushes. Outputs first, then jobs, specs and pipelines: a
    /// crash between two batches leaves at worst an output without its job record,
    /// and the journal, still there, is replayed again.
    fn write(&self, changes: &Changes) -> Result<(), StoreError> {
        let mut batches: [sled::Batch; 8] = Default::default();
        for ((table, key), value) in changes {
            if *table == Table::Notification && value.is_empty() {
                batches[*table as usize].remove(&key[..]);
            } else {
                batches[*table as usize].insert(&key[..], &value[..]);
            }
        }
        let [pipelines, specs, jobs, outputs, schedules, backfills, pools, notifications] = batches;
        self.outputs.apply_batch(outputs)?;
        self.jobs.apply_batch(jobs)?;
        self.specs.apply_batch(specs)?;
        self.pipelines.apply_batch(pipelines)?;
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
        Ok(SledStore {
            dir: dir.to_path_buf(),
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
