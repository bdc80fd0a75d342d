//! The database behind the journal: one redb file, `history.redb`, a table per kind of
//! record. redb keeps its memory within a set cache whatever the size of the file,
//! which is what lets the router run for months: sled 0.34, used before, held about
//! 33 KiB of memory per pipeline stored (measured by the soak benchmark, 60,000
//! pipelines: 2 GiB), growing with history. A database sled wrote is copied in once,
//! at the first start that finds one.

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableTable, TableDefinition, TableHandle};
use tracing::{info, warn};

use super::super::StoreError;
use super::list::{self, List};
use crate::journal::{Changes, Table};

type Def = TableDefinition<'static, &'static [u8], &'static [u8]>;
/// Entries read back: key and value.
pub(super) type Entries = Vec<(Vec<u8>, Vec<u8>)>;
/// Log lines read back, by key.
pub(super) type LogEntries = Vec<([u8; 32], Vec<u8>)>;
type Guards<'a> = (
    redb::AccessGuard<'a, &'static [u8]>,
    redb::AccessGuard<'a, &'static [u8]>,
);

/// The tables in [`Table`] order: an entry's table byte is its index here.
const TABLES: [Def; 10] = [
    TableDefinition::new("pipelines"),
    TableDefinition::new("specs"),
    TableDefinition::new("jobs"),
    TableDefinition::new("outputs"),
    TableDefinition::new("schedules"),
    TableDefinition::new("backfills"),
    TableDefinition::new("pools"),
    TableDefinition::new("notifications"),
    TableDefinition::new("seqs"),
    TableDefinition::new("logs"),
];

/// Captured logs, by attempt and line number.
pub(super) const LOGS: Def = TABLES[Table::Log as usize];

/// Job records and outputs, a [`List`] per pipeline, in place of the `jobs` and
/// `outputs` tables' entry per job (which databases written before still hold, and
/// which are read where a pipeline has no list yet).
const LISTS: [Def; 2] = [
    TableDefinition::new("job_lists"),
    TableDefinition::new("output_lists"),
];

/// Most slots a list has: a job numbered past it keeps an entry of its own.
pub(super) const MAX_LISTED_JOB: u32 = 1 << 22;

/// The list table of `t` (the job or output table).
#[cfg(test)]
pub(super) fn list_table(t: Table) -> Def {
    list_of(t).expect("a table with lists")
}

/// The list table of `t`, for the job and output tables.
fn list_of(t: Table) -> Option<Def> {
    match t {
        Table::Job => Some(LISTS[0]),
        Table::Output => Some(LISTS[1]),
        _ => None,
    }
}

/// Where a key of the job or output table goes: its pipeline's list, and its slot
/// (`None` for another table, another shape, or a job past [`MAX_LISTED_JOB`]).
pub(super) fn listed(t: Table, key: &[u8]) -> Option<([u8; 16], u32)> {
    list_of(t)?;
    if key.len() != 20 {
        return None;
    }
    let job = u32::from_be_bytes(key[16..].try_into().ok()?);
    (job < MAX_LISTED_JOB).then(|| (key[..16].try_into().unwrap(), job))
}

/// The key of job `job` of pipeline `id` in the job and output tables.
pub(super) fn job_key(id: &[u8; 16], job: u32) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..16].copy_from_slice(id);
    k[16..].copy_from_slice(&job.to_be_bytes());
    k
}

/// The file's name in the database directory.
pub const FILE: &str = "history.redb";

/// Memory redb may use to cache the file's pages: history is read rarely, and the
/// router's memory must not grow with it.
pub const CACHE_BYTES: usize = 32 << 20;

/// Entries read from the database per step of a range.
pub(super) const PAGE: usize = 512;

/// A database failure, with the file it concerns.
trait At<T> {
    fn at(self, path: &Path) -> Result<T, StoreError>;
}

impl<T, E: Into<redb::Error>> At<T> for Result<T, E> {
    fn at(self, path: &Path) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::Db {
            path: path.display().to_string(),
            message: e.into().to_string(),
        })
    }
}

/// The database; clones share it.
#[derive(Clone)]
pub(super) struct Db {
    db: Arc<Database>,
    path: PathBuf,
}

impl Db {
    /// Opens (or creates) the database of `dir`, copying in what sled kept there.
    pub(super) fn open(dir: &Path) -> Result<Db, StoreError> {
        let path = dir.join(FILE);
        let fresh = !path.exists();
        let err = path.as_path();
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .at(err)?;
        let db = Db {
            db: Arc::new(db),
            path: path.clone(),
        };
        // Every table exists from the start, so that a read never meets a missing one.
        let tx = db.db.begin_write().at(err)?;
        for def in TABLES.iter().chain(&LISTS) {
            tx.open_table(*def).at(err)?;
        }
        tx.commit().at(err)?;
        if fresh {
            db.migrate_from_sled(dir)?;
        }
        Ok(db)
    }

    /// Writes `changes` in one durable transaction (an empty value removes a record).
    pub(super) fn write(&self, changes: &Changes) -> Result<(), StoreError> {
        self.write_sorted(sorted(changes))
    }

    /// Writes entries (table, key, value; an empty value removes the record) in one
    /// durable transaction; each key at most once. Each table's entries come together
    /// and in key order, so that the writes touch each page once; a pipeline's job
    /// records (and outputs) thus come together, and go into its list in one write.
    pub(super) fn write_sorted<'a>(
        &self,
        entries: impl Iterator<Item = (Table, std::borrow::Cow<'a, [u8]>, &'a [u8])>,
    ) -> Result<(), StoreError> {
        let err = self.path.as_path();
        let tx = self.db.begin_write().at(err)?;
        {
            let mut tables = Vec::with_capacity(TABLES.len());
            for def in TABLES {
                tables.push(tx.open_table(def).at(err)?);
            }
            let mut lists = [
                tx.open_table(LISTS[0]).at(err)?,
                tx.open_table(LISTS[1]).at(err)?,
            ];
            let mut entries = entries.peekable();
            while let Some((table, key, value)) = entries.next() {
                if let Some((id, job)) = listed(table, &key) {
                    let mut slots = vec![(job, value)];
                    while let Some(job) = entries
                        .peek()
                        .filter(|(t, _, _)| *t == table)
                        .and_then(|(_, k, _)| listed(table, k))
                        .and_then(|(other, job)| (other == id).then_some(job))
                    {
                        let (_, _, value) = entries.next().expect("peeked");
                        slots.push((job, value));
                    }
                    let list = &mut lists[usize::from(table == Table::Output)];
                    self.write_list(list, &mut tables[table as usize], &id, &slots)?;
                    continue;
                }
                let t = &mut tables[table as usize];
                if value.is_empty() {
                    t.remove(&key[..]).at(err)?;
                } else {
                    t.insert(&key[..], value).at(err)?;
                }
            }
        }
        tx.commit().at(err)?;
        Ok(())
    }

    /// Writes slots of pipeline `id`'s list (an empty value empties a slot). A pipeline
    /// without a list yet takes in the entries it has in the table of an entry per job
    /// (`single`, from a database written before lists), which are removed.
    fn write_list(
        &self,
        lists: &mut redb::Table<'_, &'static [u8], &'static [u8]>,
        single: &mut redb::Table<'_, &'static [u8], &'static [u8]>,
        id: &[u8; 16],
        slots: &[(u32, &[u8])],
    ) -> Result<(), StoreError> {
        let err = self.path.as_path();
        let old: Option<Vec<u8>> = lists.get(&id[..]).at(err)?.map(|g| g.value().to_vec());
        let mut before: Vec<(u32, Vec<u8>)> = Vec::new();
        if old.is_none() {
            let range = job_key(id, 0)..=job_key(id, MAX_LISTED_JOB - 1);
            for item in single
                .range(&range.start()[..]..=&range.end()[..])
                .at(err)?
            {
                let (k, v) = item.at(err)?;
                let job = u32::from_be_bytes(k.value()[16..20].try_into().unwrap());
                before.push((job, v.value().to_vec()));
            }
            for (job, _) in &before {
                single.remove(&job_key(id, *job)[..]).at(err)?;
            }
        }
        let old = match old.as_deref().map(List::parse) {
            Some(Ok(l)) => Some(l),
            Some(Err(_)) => {
                warn!(pipeline = ?id, db = %self.path.display(), "a job list does not parse; its slots not written now are lost");
                None
            }
            None => None,
        };
        let n = (before.iter().map(|(j, _)| *j))
            .chain(slots.iter().map(|(j, _)| *j))
            .map(|j| j as usize + 1)
            .fold(old.map_or(0, |l| l.len()), usize::max);
        let mut all: Vec<Option<&[u8]>> = vec![None; n];
        if let Some(l) = old {
            for (i, slot) in all.iter_mut().enumerate().take(l.len()) {
                // A slot that does not read is lost, as the list would be.
                *slot = l.get(i).unwrap_or_else(|_| {
                    warn!(pipeline = ?id, job = i, db = %self.path.display(), "a slot of a job list does not read; dropped");
                    None
                });
            }
        }
        for (job, v) in &before {
            all[*job as usize] = Some(v);
        }
        for (job, v) in slots {
            all[*job as usize] = Some(v);
        }
        match list::build(&all) {
            Some(bytes) => lists.insert(&id[..], &bytes[..]).at(err)?,
            None => lists.remove(&id[..]).at(err)?,
        };
        Ok(())
    }

    /// The job records (or outputs: `table`) of `keys`, from their pipelines' lists, or
    /// the table of an entry per job for a pipeline without one; in one read.
    pub(super) fn get_listed(
        &self,
        table: Table,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let err = self.path.as_path();
        let tx = self.db.begin_read().at(err)?;
        let single = tx.open_table(TABLES[table as usize]).at(err)?;
        let lists = match list_of(table) {
            Some(def) => Some(tx.open_table(def).at(err)?),
            None => None,
        };
        // Keys mostly come a pipeline at a time: its list is read once for them.
        let mut current: Option<([u8; 16], Option<Vec<u8>>)> = None;
        let mut out = Vec::with_capacity(keys.len());
        let corrupt = |id: [u8; 16]| StoreError::Corrupt {
            key: format!("pipeline {}", uuid::Uuid::from_bytes(id)),
            message: format!("its {} list does not read", TABLES[table as usize].name()),
        };
        for key in keys {
            if let (Some(lists), Some((id, job))) = (&lists, listed(table, key)) {
                if current.as_ref().is_none_or(|(c, _)| *c != id) {
                    let bytes = lists.get(&id[..]).at(err)?.map(|g| g.value().to_vec());
                    current = Some((id, bytes));
                }
                if let Some((_, Some(bytes))) = &current {
                    let list = List::parse(bytes).map_err(|_| corrupt(id))?;
                    let slot = list.get(job as usize).map_err(|_| corrupt(id))?;
                    out.push(slot.map(<[u8]>::to_vec));
                    continue;
                }
            }
            // Not listed, or its pipeline has no list yet: its own entry, if any.
            out.push(single.get(&key[..]).at(err)?.map(|g| g.value().to_vec()));
        }
        Ok(out)
    }

    /// Writes entries into `def` as they are, bypassing lists: a database written before
    /// them, or a list as given.
    #[cfg(test)]
    pub(super) fn insert_raw<'a>(
        &self,
        def: Def,
        entries: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    ) -> Result<(), StoreError> {
        let err = self.path.as_path();
        let tx = self.db.begin_write().at(err)?;
        {
            let mut t = tx.open_table(def).at(err)?;
            for (k, v) in entries {
                t.insert(k, v).at(err)?;
            }
        }
        tx.commit().at(err)
    }

    /// The value of `key` in `table`.
    pub(super) fn get(&self, table: Def, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let err = self.path.as_path();
        let tx = self.db.begin_read().at(err)?;
        let t = tx.open_table(table).at(err)?;
        let v = t.get(key).at(err)?;
        Ok(v.map(|g| g.value().to_vec()))
    }

    /// The values of several keys of `table`, read together.
    pub(super) fn get_many(
        &self,
        table: Def,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let err = self.path.as_path();
        let tx = self.db.begin_read().at(err)?;
        let t = tx.open_table(table).at(err)?;
        keys.iter()
            .map(|k| Ok(t.get(&k[..]).at(err)?.map(|g| g.value().to_vec())))
            .collect()
    }

    /// Up to `max` entries of `table` with keys past `from` (excluded, or from the start
    /// when `None`), in the direction asked.
    pub(super) fn page(
        &self,
        table: Def,
        from: Option<&[u8]>,
        upto: Option<&[u8]>,
        newest_first: bool,
        max: usize,
    ) -> Result<Entries, StoreError> {
        let err = self.path.as_path();
        let tx = self.db.begin_read().at(err)?;
        let t = tx.open_table(table).at(err)?;
        let (lo, hi) = if newest_first {
            (
                upto.map_or(Bound::Unbounded, Bound::Included),
                from.map_or(Bound::Unbounded, Bound::Excluded),
            )
        } else {
            (
                from.map_or(Bound::Unbounded, Bound::Excluded),
                upto.map_or(Bound::Unbounded, Bound::Included),
            )
        };
        let range = t.range::<&[u8]>((lo, hi)).at(err)?;
        let pick = |item: Result<Guards<'_>, redb::StorageError>| {
            let (k, v) = item.at(err)?;
            Ok((k.value().to_vec(), v.value().to_vec()))
        };
        if newest_first {
            range.rev().take(max).map(pick).collect()
        } else {
            range.take(max).map(pick).collect()
        }
    }

    /// The log lines with keys from `lo` to `hi`, both included.
    pub(super) fn log_range(&self, lo: &[u8; 32], hi: &[u8; 32]) -> Result<LogEntries, StoreError> {
        let err = self.path.as_path();
        let tx = self.db.begin_read().at(err)?;
        let t = tx.open_table(LOGS).at(err)?;
        let mut out = Vec::new();
        for item in t.range::<&[u8]>(&lo[..]..=&hi[..]).at(err)? {
            let (k, v) = item.at(err)?;
            let mut key = [0u8; 32];
            if k.value().len() == 32 {
                key.copy_from_slice(k.value());
                out.push((key, v.value().to_vec()));
            }
        }
        Ok(out)
    }

    /// Every entry of a table, in key order.
    pub(super) fn all(&self, table: Def) -> Result<Entries, StoreError> {
        self.page(table, None, None, false, usize::MAX)
    }

    /// Compacts the file if it is large and mostly free (see [`COMPACT_MIN_BYTES`]);
    /// only before the database is shared with a checkpoint.
    pub(super) fn compact_if_sparse(&mut self) -> Result<(), StoreError> {
        match Arc::get_mut(&mut self.db) {
            Some(db) => compact(db, &self.path),
            None => Ok(()),
        }
    }

    /// Copies the trees of a sled database found in `dir` into this one, once; sled's
    /// files are then moved to `dir/sled-migrated/` (delete it once satisfied).
    fn migrate_from_sled(&self, dir: &Path) -> Result<(), StoreError> {
        if !dir.join("conf").exists() || !dir.join("db").exists() {
            return Ok(());
        }
        let sled = sled::Config::new().path(dir).open()?;
        let err = self.path.as_path();
        let tx = self.db.begin_write().at(err)?;
        let mut records = 0usize;
        {
            for def in TABLES.iter() {
                let name = def.name();
                if !sled.tree_names().iter().any(|n| &n[..] == name.as_bytes()) {
                    continue;
                }
                let tree = sled.open_tree(name)?;
                let mut t = tx.open_table(*def).at(err)?;
                for item in tree.iter() {
                    let (k, v) = item?;
                    t.insert(&k[..], &v[..]).at(err)?;
                    records += 1;
                }
            }
        }
        tx.commit().at(err)?;
        drop(sled);
        let aside = dir.join("sled-migrated");
        std::fs::create_dir_all(&aside)?;
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name == "conf" || name == "db" || name == "blobs" || name.starts_with("snap.") {
                std::fs::rename(entry.path(), aside.join(&*name))?;
            }
        }
        info!(records, moved_to = %aside.display(), "copied the sled database into {FILE}");
        if records == 0 {
            warn!("the sled database was empty");
        }
        Ok(())
    }
}

/// A file at least this large is compacted at start-up when over half of it is free
/// (history deleted by the retention): redb reuses freed pages while it runs, so the
/// file stays flat, but only a compaction gives the space back to the system.
pub const COMPACT_MIN_BYTES: u64 = 8 << 20;

fn compact(db: &mut Database, path: &Path) -> Result<(), StoreError> {
    let before = std::fs::metadata(path)?.len();
    if before < COMPACT_MIN_BYTES {
        return Ok(());
    }
    let used = {
        let tx = db.begin_write().at(path)?;
        let stats = tx.stats().at(path)?;
        tx.abort().at(path)?;
        stats.allocated_pages() * stats.page_size() as u64
    };
    if before <= used * 2 {
        return Ok(());
    }
    let started = std::time::Instant::now();
    while db.compact().at(path)? {}
    let after = std::fs::metadata(path)?.len();
    info!(
        before_mib = before >> 20,
        after_mib = after >> 20,
        ms = started.elapsed().as_millis() as u64,
        "compacted the database (history deleted by the retention)"
    );
    Ok(())
}

/// `changes` (a hash map) in table and key order, as [`Db::write_sorted`] takes them.
pub(super) fn sorted(
    changes: &Changes,
) -> impl Iterator<Item = (Table, std::borrow::Cow<'_, [u8]>, &[u8])> {
    let mut sorted: Vec<_> = changes.iter().collect();
    sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
    sorted
        .into_iter()
        .map(|((t, k), v)| (*t, std::borrow::Cow::Borrowed(&k[..]), &v[..]))
}

/// The definition of the table of journal table `t`.
pub(super) fn table(t: Table) -> Def {
    TABLES[t as usize]
}
