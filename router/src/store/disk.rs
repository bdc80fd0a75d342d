//! [`DiskStore`]: the router's durable [`StateStore`], a write-ahead journal in front of
//! a database (`db.rs`, redb) that checkpoints fold the journal into. Part of the one
//! `store` module; its tests are in `disk/tests.rs`.

mod db;
mod list;

pub use db::{CACHE_BYTES, COMPACT_MIN_BYTES, FILE};

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
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
/// Journal bytes after which a checkpoint folds the journal into the database.
pub const CHECKPOINT_BYTES: u64 = 64 << 20;
/// Overlay records after which a checkpoint starts, whatever the journal's size: the
/// overlay's memory follows its records, not the journal's bytes. A deletion journals a
/// few bytes but holds a record like any other: under a retention, which deletes a
/// pipeline for each one run, 64 MiB of journal came to about 900,000 records, against
/// 510,000 without (when the overlay was one table of every record, that doubled the
/// table to 100 MiB, held twice while a checkpoint ran).
pub const CHECKPOINT_RECORDS: usize = 800_000;
/// In [`Durability::Background`] mode, the longest a journal write waits for its sync.
pub const BACKGROUND_SYNC: Duration = Duration::from_millis(500);

/// The durable store: a write-ahead journal in front of a database.
///
/// Every commit appends one frame to the journal ([`crate::journal`]); the database is
/// written only by checkpoints, on a thread of their own, which write the latest value
/// of each record the journals hold (kept in memory, the overlay), in one transaction.
/// A pipeline that starts and ends between two checkpoints thus costs the database one
/// write per record instead of one per change, and none on the router's thread; its job
/// records are one list, and its outputs another (`list.rs`). What the journal
/// holds of pipelines' history is also kept here, in memory, until the database has it
/// (the router reads finished pipelines back). At start-up the journals left are
/// replayed into the database first.
///
/// Captured log lines go through the journal too, but a turn that wrote nothing but
/// log lines is not synced: its frame reaches the disk with the next turn that needs a
/// sync (a job's end among them, so a finished job's log is on disk with its result),
/// or from the background syncer. A log line thus never costs an fsync of its own, a
/// crash of the router process loses none, and a crash of the machine can lose the
/// lines of jobs still running since their last change.
pub struct DiskStore {
    dir: PathBuf,
    db: db::Db,
    journal: Journal,
    last_sync: Instant,
    /// In [`Durability::Background`] mode, where journal files go to be synced off the
    /// router's thread; `None` in [`Durability::Flush`] mode, which syncs every commit.
    syncer: Option<SyncSender<File>>,
    checkpoint_bytes: u64,
    checkpoint_records: usize,
    /// History records written since the last checkpoint began: reads see them before
    /// the database does.
    recent: Overlay,
    checkpoint: Option<Checkpoint>,
    specs_written: HashSet<PipelineId>,
    /// This turn wrote something other than log lines: its frame must be synced.
    needs_sync: bool,
}

/// Every record written to the journal since a checkpoint began, encoded, by table and
/// key, latest value only: the checkpoint writes the database from it (the journal is
/// read back only at start-up, after a crash), and the router, which no longer holds
/// finished pipelines, reads its history from it until the database has it. An empty
/// value is a deletion. Its size is bounded by [`CHECKPOINT_BYTES`] of journal and
/// [`CHECKPOINT_RECORDS`] records.
#[derive(Default)]
struct Overlay {
    /// Pipeline records and specs, and their jobs' records and outputs, by pipeline.
    records: foldhash::HashMap<[u8; 16], ByPipeline>,
    /// How many values `records` holds.
    records_len: usize,
    /// Keys of those tables in another shape than a pipeline id (and a job index): none
    /// are written today; kept here rather than lost if one ever is.
    odd: Changes,
    /// The order index.
    seqs: BTreeMap<u64, Vec<u8>>,
    /// Captured log lines, in key order for ranges.
    logs: BTreeMap<[u8; 32], Vec<u8>>,
    /// Schedules, backfills, pools and notifications: few, and read only at start-up.
    other: Changes,
}

/// One pipeline's records in the overlay: its own two, and its jobs' by index. Writing a
/// job's record is then a lookup among pipelines and an index, not an insert into one
/// table of every job since the last checkpoint: under load, growing that table (copied
/// into fresh memory the kernel must zero) and probing it cost a tenth of the router's
/// CPU.
#[derive(Default)]
struct ByPipeline {
    pipeline: Option<Vec<u8>>,
    spec: Option<Vec<u8>>,
    jobs: Vec<Option<Vec<u8>>>,
    outputs: Vec<Option<Vec<u8>>>,
}

/// Where a key of the pipeline, spec, job and output tables goes: the pipeline id, and
/// the job index for a job's record or output; `None` for any other shape (a job past
/// [`db::MAX_LISTED_JOB`] included: it goes to the overlay's `odd` map).
fn split_key(table: Table, key: &[u8]) -> Option<([u8; 16], Option<u32>)> {
    match table {
        Table::Pipeline | Table::Spec => Some((key.try_into().ok()?, None)),
        _ => db::listed(table, key).map(|(id, job)| (id, Some(job))),
    }
}

impl ByPipeline {
    fn slot(&self, table: Table, job: Option<u32>) -> Option<&Vec<u8>> {
        match (table, job) {
            (Table::Pipeline, None) => self.pipeline.as_ref(),
            (Table::Spec, None) => self.spec.as_ref(),
            (Table::Job, Some(i)) => self.jobs.get(i as usize)?.as_ref(),
            (Table::Output, Some(i)) => self.outputs.get(i as usize)?.as_ref(),
            _ => None,
        }
    }

    fn slot_mut(&mut self, table: Table, job: Option<u32>) -> &mut Option<Vec<u8>> {
        fn at(v: &mut Vec<Option<Vec<u8>>>, i: u32) -> &mut Option<Vec<u8>> {
            let i = i as usize;
            if v.len() <= i {
                v.resize_with(i + 1, || None);
            }
            &mut v[i]
        }
        match (table, job) {
            (Table::Spec, _) => &mut self.spec,
            (Table::Job, Some(i)) => at(&mut self.jobs, i),
            (Table::Output, Some(i)) => at(&mut self.outputs, i),
            _ => &mut self.pipeline,
        }
    }
}

impl Overlay {
    fn get(&self, table: Table, key: &[u8]) -> Option<&Vec<u8>> {
        match table {
            Table::Log => self.logs.get(key),
            Table::Pipeline | Table::Spec | Table::Job | Table::Output => {
                match split_key(table, key) {
                    Some((id, job)) => self.records.get(&id)?.slot(table, job),
                    None => self.odd.get(&(table, key.to_vec())),
                }
            }
            _ => None,
        }
    }

    /// Keeps a record of the pipeline, spec, job or output tables.
    fn put_record(&mut self, table: Table, key: &[u8], value: Vec<u8>) {
        let Some((id, job)) = split_key(table, key) else {
            self.odd.insert((table, key.to_vec()), value);
            return;
        };
        let slot = self.records.entry(id).or_default().slot_mut(table, job);
        if slot.replace(value).is_none() {
            self.records_len += 1;
        }
    }

    /// Its entries, as the database writes them: each table's in key order, so that
    /// the writes touch each page once.
    fn entries(&self) -> impl Iterator<Item = (Table, Cow<'_, [u8]>, &[u8])> {
        // By pipeline in id order, and each pipeline's jobs by index: every table's
        // keys come in order. Only the pipelines are sorted, as references.
        let mut pipelines: Vec<_> = self.records.iter().collect();
        pipelines.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let records = pipelines.into_iter().flat_map(|(id, p)| {
            let own = [(Table::Pipeline, &p.pipeline), (Table::Spec, &p.spec)]
                .into_iter()
                .filter_map(move |(t, v)| Some((t, Cow::Borrowed(&id[..]), &v.as_ref()?[..])));
            let jobs = [(Table::Job, &p.jobs), (Table::Output, &p.outputs)]
                .into_iter()
                .flat_map(move |(t, list)| {
                    list.iter().enumerate().filter_map(move |(i, v)| {
                        let k = db::job_key(id, i as u32).to_vec();
                        Some((t, Cow::Owned(k), &v.as_ref()?[..]))
                    })
                });
            own.chain(jobs)
        });
        let seqs = self
            .seqs
            .iter()
            .map(|(s, v)| (Table::Seq, Cow::Owned(s.to_be_bytes().to_vec()), &v[..]));
        let logs = self
            .logs
            .iter()
            .map(|(k, v)| (Table::Log, Cow::Borrowed(&k[..]), &v[..]));
        records
            .chain(db::sorted(&self.odd))
            .chain(seqs)
            .chain(logs)
            .chain(db::sorted(&self.other))
    }

    fn len(&self) -> usize {
        self.records_len + self.odd.len() + self.seqs.len() + self.logs.len() + self.other.len()
    }
}

/// A checkpoint under way: the records it writes (readable here until it is done) and
/// its thread.
struct Checkpoint {
    overlay: Arc<Overlay>,
    thread: JoinHandle<Result<(), StoreError>>,
}

impl DiskStore {
    /// Opens (or creates) the database in `dir`, replaying any journal left there.
    pub fn open(dir: &Path, durability: Durability) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)?;
        let mut db = db::Db::open(dir)?;
        let found = journal::list(dir)?;
        let folded = fold(dir, &db, found.last().copied().unwrap_or(0))?;
        db.compact_if_sparse()?;
        if folded > 0 {
            info!(
                journals = found.len(),
                records = folded,
                "replayed the journal into the database"
            );
        }
        let journal = Journal::create(dir, found.last().map_or(1, |n| n + 1))?;
        index_seqs(&db)?;
        Ok(DiskStore {
            dir: dir.to_path_buf(),
            journal,
            last_sync: Instant::now(),
            syncer: match durability {
                Durability::Flush => None,
                Durability::Background => Some(background_syncer()?),
            },
            checkpoint_bytes: CHECKPOINT_BYTES,
            checkpoint_records: CHECKPOINT_RECORDS,
            recent: Overlay::default(),
            checkpoint: None,
            specs_written: HashSet::new(),
            needs_sync: false,
            db,
        })
    }

    /// Checkpoints once the journal holds `bytes` (default [`CHECKPOINT_BYTES`]).
    pub fn checkpoint_after(mut self, bytes: u64) -> Self {
        self.checkpoint_bytes = bytes;
        self
    }

    /// Checkpoints once the overlay holds `records` pipeline, spec, job and output
    /// records (default [`CHECKPOINT_RECORDS`]), whatever the journal's size.
    pub fn checkpoint_after_records(mut self, records: usize) -> Self {
        self.checkpoint_records = records;
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

    /// Starts a new journal and folds everything before it into the database, in the background.
    fn start_checkpoint(&mut self) -> Result<(), StoreError> {
        let last = self.journal.number();
        self.journal = Journal::create(&self.dir, last + 1)?;
        let overlay = Arc::new(std::mem::take(&mut self.recent));
        let (db, dir, records) = (self.db.clone(), self.dir.clone(), overlay.clone());
        // The journals up to `last` hold exactly what the overlay does (it was started
        // with the journal after the last checkpoint's): the database is written from
        // the overlay, without reading them back, and they are then removed.
        let thread = std::thread::Builder::new()
            .name("checkpoint".into())
            .spawn(move || {
                db.write_sorted(records.entries())?;
                remove_journals(&dir, &journals_upto(&dir, last)?)?;
                debug!(records = records.len(), "checkpoint written");
                Ok(())
            })?;
        self.checkpoint = Some(Checkpoint { overlay, thread });
        Ok(())
    }

    /// Journals a record (empty: deleted), and keeps it in the overlay, which reads see
    /// and the next checkpoint writes. Every change but a log line must be synced
    /// before the turn is acknowledged.
    fn put(&mut self, table: Table, key: &[u8], value: Vec<u8>) {
        self.journal.put(table, key, &value);
        match table {
            Table::Seq => {
                let mut seq = [0u8; 8];
                seq.copy_from_slice(key);
                self.recent.seqs.insert(u64::from_be_bytes(seq), value);
            }
            Table::Log => {
                let mut k = [0u8; 32];
                k.copy_from_slice(key);
                self.recent.logs.insert(k, value);
                return;
            }
            Table::Pipeline | Table::Spec | Table::Job | Table::Output => {
                self.recent.put_record(table, key, value);
            }
            Table::Schedule | Table::Backfill | Table::Pool | Table::Notification => {
                self.recent.other.insert((table, key.to_vec()), value);
            }
        }
        self.needs_sync = true;
    }

    /// The log entries from `lo` to `hi`: the database's, under what the journal holds
    /// (a deletion removes one).
    fn log_entries(
        &self,
        lo: &[u8; 32],
        hi: &[u8; 32],
    ) -> Result<BTreeMap<[u8; 32], Vec<u8>>, StoreError> {
        let mut all: BTreeMap<[u8; 32], Vec<u8>> = self.db.log_range(lo, hi)?.into_iter().collect();
        let layers = [
            self.checkpoint.as_ref().map(|c| &c.overlay.logs),
            Some(&self.recent.logs),
        ];
        for layer in layers.into_iter().flatten() {
            for (k, v) in layer.range(*lo..=*hi) {
                if v.is_empty() {
                    all.remove(k);
                } else {
                    all.insert(*k, v.clone());
                }
            }
        }
        Ok(all)
    }

    /// Deletes the log entries from `lo` to `hi`.
    fn delete_logs(&mut self, lo: &[u8; 32], hi: &[u8; 32]) -> Result<(), StoreError> {
        for k in self.log_entries(lo, hi)?.into_keys() {
            self.put(Table::Log, &k, Vec::new());
        }
        Ok(())
    }

    /// What the journal holds of a history record: written since a checkpoint began,
    /// or being checkpointed (`Some(empty)`: deleted).
    fn pending(&self, table: Table, key: &[u8]) -> Option<&Vec<u8>> {
        self.recent
            .get(table, key)
            .or_else(|| self.checkpoint.as_ref()?.overlay.get(table, key))
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

    /// The latest value of a history record: in the journal, or in the database.
    fn read(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(v) = self.pending(table, key) {
            return Ok((!v.is_empty()).then(|| v.clone()));
        }
        match table {
            Table::Job | Table::Output => {
                Ok(self.get_listed(table, &[key.to_vec()])?.pop().flatten())
            }
            _ => self.db.get(db::table(table), key),
        }
    }

    /// Job records or outputs from the database, a failure named with the file.
    fn get_listed(
        &self,
        table: Table,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let what = if table == Table::Output {
            "outputs"
        } else {
            "job records"
        };
        self.db
            .get_listed(table, keys)
            .map_err(|e| self.corrupt(what, e))
    }

    /// [`DiskStore::read`] of several keys of one table, the database's in one read.
    fn read_many(
        &self,
        table: Table,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let mut out: Vec<Option<Option<Vec<u8>>>> = keys
            .iter()
            .map(|k| {
                self.pending(table, k)
                    .map(|v| (!v.is_empty()).then(|| v.clone()))
            })
            .collect();
        let missing: Vec<Vec<u8>> = keys
            .iter()
            .zip(&out)
            .filter(|(_, o)| o.is_none())
            .map(|(k, _)| k.clone())
            .collect();
        if !missing.is_empty() {
            let found = match table {
                Table::Job | Table::Output => self.get_listed(table, &missing)?,
                _ => self.db.get_many(db::table(table), &missing)?,
            };
            let mut found = found.into_iter();
            for o in out.iter_mut().filter(|o| o.is_none()) {
                *o = Some(found.next().flatten());
            }
        }
        Ok(out.into_iter().map(Option::flatten).collect())
    }

    /// The pipeline ids of the order index past `bound`, in the direction asked, the
    /// journal's latest entries over the database's.
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
        let mut from: Option<u64> = Some(bound);
        let mut page: std::collections::VecDeque<(u64, Vec<u8>)> = Default::default();
        let db = &self.db;
        let stored: Source<'_> = Box::new(std::iter::from_fn(move || {
            if page.is_empty() {
                let after = from?;
                let key = after.to_be_bytes();
                let got = match db.page(
                    db::table(Table::Seq),
                    Some(&key),
                    None,
                    newest_first,
                    db::PAGE,
                ) {
                    Ok(p) => p,
                    Err(e) => {
                        from = None;
                        return Some(Err(e));
                    }
                };
                let full = got.len() == db::PAGE;
                for (k, v) in got {
                    let mut seq = [0u8; 8];
                    seq.copy_from_slice(&k[..8.min(k.len())]);
                    page.push_back((u64::from_be_bytes(seq), v));
                }
                // The next page starts past this one's last entry; a short page was the end.
                from = page.back().map(|last| last.0).filter(|_| full);
            }
            page.pop_front().map(Ok)
        }));
        // Highest precedence first: what was written since the checkpoint began, what
        // the checkpoint is writing, then the database.
        let mut sources: Vec<std::iter::Peekable<Source<'_>>> = vec![
            overlay(&self.recent.seqs, bound, newest_first).peekable(),
            match &self.checkpoint {
                Some(c) => overlay(&c.overlay.seqs, bound, newest_first),
                None => Box::new(std::iter::empty()),
            }
            .peekable(),
            stored.peekable(),
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
fn index_seqs(db: &db::Db) -> Result<(), StoreError> {
    let seqs = db::table(Table::Seq);
    let pipelines = db::table(Table::Pipeline);
    if !db.page(seqs, None, None, false, 1)?.is_empty()
        || db.page(pipelines, None, None, false, 1)?.is_empty()
    {
        return Ok(());
    }
    let mut changes = Changes::new();
    for (k, v) in db.all(pipelines)? {
        match rmp_serde::from_slice::<PipelineRecord>(&v) {
            Ok(rec) => {
                changes.insert((Table::Seq, rec.seq.to_be_bytes().to_vec()), k);
            }
            Err(e) => {
                warn!(key = ?k, error = %e, "pipeline record does not decode; left out of the history's index")
            }
        }
    }
    let n = changes.len();
    db.write(&changes)?;
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

/// Replays the journals of `dir` numbered up to `last` into the database, then removes
/// them; how many records it wrote.
fn fold(dir: &Path, db: &db::Db, last: u64) -> Result<usize, StoreError> {
    let found = journals_upto(dir, last)?;
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
        db.write(&changes)?;
    }
    remove_journals(dir, &found)?;
    Ok(changes.len())
}

/// The journals of `dir` numbered up to `last`, oldest first.
fn journals_upto(dir: &Path, last: u64) -> Result<Vec<u64>, StoreError> {
    let mut found = journal::list(dir)?;
    found.retain(|n| *n <= last);
    Ok(found)
}

/// Removes journals whose records the database has.
fn remove_journals(dir: &Path, numbers: &[u64]) -> Result<(), StoreError> {
    for &n in numbers {
        std::fs::remove_file(journal::path(dir, n))?;
    }
    Ok(())
}

impl Drop for DiskStore {
    fn drop(&mut self) {
        if let Err(e) = self.reap_checkpoint(true) {
            warn!(error = %e, "checkpoint failed; the journal will be replayed at the next start");
        }
    }
}

fn job_key(id: PipelineId, job: u32) -> [u8; 20] {
    db::job_key(id.0.as_bytes(), job)
}

fn log_key((id, job, attempt): LogKey, seq: u64) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..20].copy_from_slice(&job_key(id, job));
    k[20..24].copy_from_slice(&attempt.to_be_bytes());
    k[24..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// Records are stored with their fields named: some types skip empty fields (a
/// pipeline spec), which a positional encoding cannot read back.
fn enc<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    encode_with(v, rmp_serde::encode::write_named)
}

/// Pipeline and job records, written on every change, are stored with their fields by
/// position: their types skip no field, and serde fills fields added since (all
/// `#[serde(default)]`, at the end) when an older, shorter record is read. Records
/// written by name before still decode.
fn enc_compact<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    encode_with(v, rmp_serde::encode::write)
}

/// Encodes `v` with `write` into a buffer of its exact size. The overlay keeps every
/// record written between checkpoints (hundreds of thousands), so a buffer sized
/// ahead for the encoder would be kept, mostly empty, with each: the encoder writes
/// into a reused scratch buffer instead, and the record is copied out of it.
fn encode_with<T: Serialize>(
    v: &T,
    write: fn(&mut Vec<u8>, &T) -> Result<(), rmp_serde::encode::Error>,
) -> Result<Vec<u8>, StoreError> {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SCRATCH.with(|scratch| {
        let mut buf = scratch.borrow_mut();
        buf.clear();
        write(&mut buf, v).map_err(|e| StoreError::Encode(e.to_string()))?;
        let out = buf.to_vec();
        // A huge record (a large output) leaves no huge buffer behind.
        if buf.capacity() > 64 << 10 {
            *buf = Vec::new();
        }
        Ok(out)
    })
}

fn dec<T: serde::de::DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    rmp_serde::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: format!("{key:02x?}"),
        message: e.to_string(),
    })
}

impl StateStore for DiskStore {
    fn load_open(
        &self,
        finished: &mut dyn FnMut(PipelineRecord),
    ) -> Result<Vec<Loaded>, StoreError> {
        let mut out = Vec::new();
        // Page by page: the history's records are read once, and not all held at once.
        let mut from: Option<Vec<u8>> = None;
        loop {
            let page = self.db.page(
                db::table(Table::Pipeline),
                from.as_deref(),
                None,
                false,
                4096,
            )?;
            let Some((last, _)) = page.last() else { break };
            from = Some(last.clone());
            for (k, v) in page {
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
        let n = rec.spec.jobs.len() as u32;
        let keys: Vec<Vec<u8>> = (0..n).map(|i| job_key(id, i).to_vec()).collect();
        for (i, (jk, jv)) in keys
            .iter()
            .zip(self.read_many(Table::Job, &keys)?)
            .enumerate()
        {
            // Jobs are written in full at submission, so a missing one means corruption.
            let Some(jv) = jv else {
                return Err(self.corrupt(
                    &name("jobs"),
                    StoreError::Corrupt {
                        key: id.to_string(),
                        message: format!("no record of job {i} of {n}"),
                    },
                ));
            };
            jobs.push(dec::<JobRecord>(jk, &jv).map_err(|e| self.corrupt(&name("job"), e))?);
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
        // The ids first, then their records in one read of the database.
        let mut keys: Vec<Vec<u8>> = Vec::new();
        for item in self.seq_ids(bound, newest_first) {
            if keys.len() >= max {
                break;
            }
            let (seq, id) = item?;
            if id.len() != 16 {
                warn!(seq, db = %self.dir.display(), "order index entry is not a pipeline id; skipped");
                continue;
            }
            keys.push(id);
        }
        let mut out = Vec::with_capacity(keys.len());
        for (k, v) in keys.iter().zip(self.read_many(Table::Pipeline, &keys)?) {
            let Some(v) = v else { continue };
            match dec::<PipelineRecord>(k, &v) {
                Ok(rec) => out.push(rec),
                Err(e) => warn!(
                    error = %self.corrupt("pipeline record", e),
                    "pipeline record does not decode; left out of the listing"
                ),
            }
        }
        Ok(out)
    }

    fn delete_pipeline(&mut self, rec: &PipelineRecord, jobs: u32) -> Result<(), StoreError> {
        let k = rec.id.0.as_bytes();
        self.put(Table::Pipeline, k, Vec::new());
        self.put(Table::Spec, k, Vec::new());
        self.put(Table::Seq, &rec.seq.to_be_bytes(), Vec::new());
        for i in 0..jobs {
            let jk = job_key(rec.id, i);
            self.put(Table::Job, &jk, Vec::new());
            self.put(Table::Output, &jk, Vec::new());
        }
        self.specs_written.remove(&rec.id);
        // Its logs: every attempt of every job (none to look for if it captured none).
        if !rec.logs {
            return Ok(());
        }
        self.delete_logs(
            &log_key((rec.id, 0, 0), 0),
            &log_key((rec.id, u32::MAX, u32::MAX), u64::MAX),
        )
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
            self.put(Table::Spec, &k, enc(&rec.spec)?);
            self.put(Table::Seq, &rec.seq.to_be_bytes(), k.to_vec());
        }
        if rec.state.is_final() {
            self.specs_written.remove(&rec.id);
        } else {
            self.specs_written.insert(rec.id);
        }
        self.put(Table::Pipeline, &k, enc_compact(rec)?);
        Ok(())
    }

    fn put_job(&mut self, id: PipelineId, job: u32, rec: &JobRecord) -> Result<(), StoreError> {
        self.put(Table::Job, &job_key(id, job), enc_compact(rec)?);
        Ok(())
    }

    fn put_output(&mut self, id: PipelineId, job: u32, output: &Data) -> Result<(), StoreError> {
        self.put(Table::Output, &job_key(id, job), enc(output)?);
        Ok(())
    }

    fn get_output(&self, id: PipelineId, job: u32) -> Result<Option<Data>, StoreError> {
        Ok(self.get_outputs(id, &[job])?.pop().flatten())
    }

    fn get_outputs(&self, id: PipelineId, jobs: &[u32]) -> Result<Vec<Option<Data>>, StoreError> {
        let keys: Vec<Vec<u8>> = jobs.iter().map(|&j| job_key(id, j).to_vec()).collect();
        keys.iter()
            .zip(self.read_many(Table::Output, &keys)?)
            .map(|(k, v)| match v {
                Some(v) => dec(k, &v)
                    .map(Some)
                    .map_err(|e| self.corrupt(&format!("output of pipeline {id}"), e)),
                None => Ok(None),
            })
            .collect()
    }

    fn load_schedules(&self) -> Result<Vec<ScheduleRecord>, StoreError> {
        let mut out = Vec::new();
        for (k, v) in self.db.all(db::table(Table::Schedule))? {
            let rec: ScheduleRecord = dec(&k, &v)?;
            if !rec.removed {
                out.push(rec);
            }
        }
        Ok(out)
    }

    fn put_schedule(&mut self, rec: &ScheduleRecord) -> Result<(), StoreError> {
        self.put(Table::Schedule, rec.spec.name.as_bytes(), enc(rec)?);
        Ok(())
    }

    fn load_backfills(&self) -> Result<Vec<BackfillRecord>, StoreError> {
        let mut out = Vec::new();
        for (k, v) in self.db.all(db::table(Table::Backfill))? {
            out.push(dec::<BackfillRecord>(&k, &v)?);
        }
        Ok(out)
    }

    fn put_backfill(&mut self, rec: &BackfillRecord) -> Result<(), StoreError> {
        self.put(Table::Backfill, &rec.id.to_be_bytes(), enc(rec)?);
        Ok(())
    }

    fn load_pools(&self) -> Result<Vec<PoolRecord>, StoreError> {
        let mut out = Vec::new();
        for (k, v) in self.db.all(db::table(Table::Pool))? {
            let rec: PoolRecord = dec(&k, &v)?;
            if !rec.removed {
                out.push(rec);
            }
        }
        Ok(out)
    }

    fn put_pool(&mut self, rec: &PoolRecord) -> Result<(), StoreError> {
        self.put(Table::Pool, rec.name.as_bytes(), enc(rec)?);
        Ok(())
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        let sync = self.syncer.is_none() && std::mem::take(&mut self.needs_sync);
        self.journal.append(sync)?;
        if let Some(syncer) = &self.syncer {
            if self.last_sync.elapsed() >= BACKGROUND_SYNC {
                self.last_sync = Instant::now();
                // A sync of half a second of writes can take milliseconds: another
                // thread waits for it. One at a time; a sync still running covers this.
                let _ = syncer.try_send(self.journal.handle()?);
            }
        }
        self.reap_checkpoint(false)?;
        let full = self.journal.len() >= self.checkpoint_bytes
            || self.recent.records_len >= self.checkpoint_records;
        if full && self.checkpoint.is_none() {
            self.start_checkpoint()?;
        }
        Ok(())
    }

    fn put_log(&mut self, key: LogKey, line: &LogLine) -> Result<(), StoreError> {
        self.put(Table::Log, &log_key(key, line.seq.max(1)), enc(line)?);
        Ok(())
    }

    fn trim_log(&mut self, key: LogKey, upto: u64, meta: &LogMeta) -> Result<(), StoreError> {
        self.delete_logs(&log_key(key, 1), &log_key(key, upto))?;
        self.put(Table::Log, &log_key(key, 0), enc(meta)?);
        Ok(())
    }

    fn read_log(&self, key: LogKey, after: u64) -> Result<(LogMeta, Vec<LogLine>), StoreError> {
        let k0 = log_key(key, 0);
        let meta = match self.read(Table::Log, &k0)? {
            Some(v) => dec(&k0, &v)?,
            None => LogMeta::default(),
        };
        let lo = log_key(key, after.saturating_add(1).max(1));
        let mut lines = Vec::new();
        for (k, v) in self.log_entries(&lo, &log_key(key, u64::MAX))? {
            lines.push(dec(&k, &v)?);
        }
        Ok((meta, lines))
    }

    fn load_notifications(&self) -> Result<Vec<NotificationRecord>, StoreError> {
        let mut out = Vec::new();
        for (k, v) in self.db.all(db::table(Table::Notification))? {
            out.push(dec::<NotificationRecord>(&k, &v)?);
        }
        Ok(out)
    }

    fn put_notification(&mut self, rec: &NotificationRecord) -> Result<(), StoreError> {
        self.put(Table::Notification, &rec.seq.to_be_bytes(), enc(rec)?);
        Ok(())
    }

    fn remove_notification(&mut self, seq: u64) -> Result<(), StoreError> {
        self.put(Table::Notification, &seq.to_be_bytes(), Vec::new());
        Ok(())
    }

    fn flush_logs(&mut self) -> Result<(), StoreError> {
        // Lines are in the journal: the turn's commit syncs them with the job's change.
        self.needs_sync = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
