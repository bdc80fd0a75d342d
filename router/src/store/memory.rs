//! [`MemoryStore`]: a [`StateStore`] in memory, for tests of the router's state
//! machine. Part of the one `store` module.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use pypelinin_common::protocol::{LogLine, PipelineId};
use pypelinin_common::Data;

use super::{
    BackfillRecord, JobRecord, Loaded, LogKey, LogMeta, NotificationRecord, PipelineRecord,
    PoolRecord, ScheduleRecord, StateStore, StoreError,
};

/// A [`StateStore`] in memory: nothing survives the process. For tests of the state
/// machine, which then need no disk and no database; clones share one store, so a test
/// can load a second [`crate::state::RouterState`] from what the first one wrote, as a
/// restarted router would. Only committed writes are loaded, as with the journal.
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
    /// Logs are not part of commits (as on disk, they are kept as they come).
    logs: BTreeMap<(LogKey, u64), LogLine>,
    log_meta: HashMap<LogKey, LogMeta>,
}

#[derive(Clone, Default)]
struct Tables {
    pipelines: HashMap<PipelineId, PipelineRecord>,
    jobs: HashMap<(PipelineId, u32), JobRecord>,
    outputs: HashMap<(PipelineId, u32), Data>,
    schedules: HashMap<String, ScheduleRecord>,
    backfills: std::collections::BTreeMap<u64, BackfillRecord>,
    pools: BTreeMap<String, PoolRecord>,
    /// `None`: removed.
    notifications: BTreeMap<u64, Option<NotificationRecord>>,
}

impl Tables {
    fn merge(&mut self, other: Tables) {
        self.pipelines.extend(other.pipelines);
        self.jobs.extend(other.jobs);
        self.outputs.extend(other.outputs);
        self.schedules.extend(other.schedules);
        self.backfills.extend(other.backfills);
        self.pools.extend(other.pools);
        for (seq, rec) in other.notifications {
            match rec {
                Some(r) => {
                    self.notifications.insert(seq, Some(r));
                }
                None => {
                    self.notifications.remove(&seq);
                }
            }
        }
    }
}

fn missing_job(id: PipelineId, i: u32) -> StoreError {
    StoreError::Corrupt {
        key: id.to_string(),
        message: format!("no record of job {i}"),
    }
}

fn jobs_of(c: &Tables, rec: &PipelineRecord) -> Result<Vec<JobRecord>, StoreError> {
    (0..rec.spec.jobs.len() as u32)
        .map(|i| {
            c.jobs
                .get(&(rec.id, i))
                .cloned()
                .ok_or_else(|| missing_job(rec.id, i))
        })
        .collect()
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
    fn load_open(
        &self,
        finished: &mut dyn FnMut(PipelineRecord),
    ) -> Result<Vec<Loaded>, StoreError> {
        let m = self.lock();
        let c = &m.committed;
        let mut out = Vec::new();
        for rec in c.pipelines.values() {
            if rec.state.is_final() {
                finished(rec.clone());
                continue;
            }
            out.push((rec.clone(), jobs_of(c, rec)?));
        }
        out.sort_by_key(|(p, _)| p.seq);
        Ok(out)
    }

    fn get_pipeline(&self, id: PipelineId) -> Result<Option<Loaded>, StoreError> {
        let m = self.lock();
        let Some(rec) = m
            .pending
            .pipelines
            .get(&id)
            .or_else(|| m.committed.pipelines.get(&id))
        else {
            return Ok(None);
        };
        let mut jobs = Vec::with_capacity(rec.spec.jobs.len());
        for i in 0..rec.spec.jobs.len() as u32 {
            let k = (id, i);
            match m.pending.jobs.get(&k).or_else(|| m.committed.jobs.get(&k)) {
                Some(j) => jobs.push(j.clone()),
                None => return Err(missing_job(id, i)),
            }
        }
        Ok(Some((rec.clone(), jobs)))
    }

    fn get_record(&self, id: PipelineId) -> Result<Option<PipelineRecord>, StoreError> {
        let m = self.lock();
        Ok(m.pending
            .pipelines
            .get(&id)
            .or_else(|| m.committed.pipelines.get(&id))
            .cloned())
    }

    fn records(
        &self,
        bound: u64,
        newest_first: bool,
        max: usize,
    ) -> Result<Vec<PipelineRecord>, StoreError> {
        let m = self.lock();
        let mut all: BTreeMap<u64, &PipelineRecord> = BTreeMap::new();
        for rec in m.committed.pipelines.values() {
            all.insert(rec.seq, rec);
        }
        for rec in m.pending.pipelines.values() {
            all.insert(rec.seq, rec);
        }
        let picked: Vec<PipelineRecord> = if newest_first {
            all.range(..bound)
                .rev()
                .take(max)
                .map(|(_, r)| (*r).clone())
                .collect()
        } else {
            all.range(bound.saturating_add(1)..)
                .take(max)
                .map(|(_, r)| (*r).clone())
                .collect()
        };
        Ok(picked)
    }

    fn delete_pipeline(&mut self, rec: &PipelineRecord, jobs: u32) -> Result<(), StoreError> {
        let mut guard = self.lock();
        let m = &mut *guard;
        let id = rec.id;
        for t in [&mut m.pending, &mut m.committed] {
            t.pipelines.remove(&id);
            for i in 0..jobs {
                t.jobs.remove(&(id, i));
                t.outputs.remove(&(id, i));
            }
        }
        m.logs.retain(|((p, _, _), _), _| *p != id);
        m.log_meta.retain(|(p, _, _), _| *p != id);
        Ok(())
    }

    fn disk_bytes(&self) -> u64 {
        0
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

    fn load_schedules(&self) -> Result<Vec<ScheduleRecord>, StoreError> {
        let m = self.lock();
        let mut out: Vec<ScheduleRecord> = m
            .committed
            .schedules
            .values()
            .filter(|r| !r.removed)
            .cloned()
            .collect();
        out.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        Ok(out)
    }

    fn put_schedule(&mut self, rec: &ScheduleRecord) -> Result<(), StoreError> {
        self.lock()
            .pending
            .schedules
            .insert(rec.spec.name.clone(), rec.clone());
        Ok(())
    }

    fn load_backfills(&self) -> Result<Vec<BackfillRecord>, StoreError> {
        Ok(self.lock().committed.backfills.values().cloned().collect())
    }

    fn load_pools(&self) -> Result<Vec<PoolRecord>, StoreError> {
        let m = self.lock();
        Ok(m.committed
            .pools
            .values()
            .filter(|r| !r.removed)
            .cloned()
            .collect())
    }

    fn put_pool(&mut self, rec: &PoolRecord) -> Result<(), StoreError> {
        self.lock()
            .pending
            .pools
            .insert(rec.name.clone(), rec.clone());
        Ok(())
    }

    fn put_backfill(&mut self, rec: &BackfillRecord) -> Result<(), StoreError> {
        self.lock().pending.backfills.insert(rec.id, rec.clone());
        Ok(())
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        let mut m = self.lock();
        let pending = std::mem::take(&mut m.pending);
        m.committed.merge(pending);
        m.commits += 1;
        Ok(())
    }

    fn put_log(&mut self, key: LogKey, line: &LogLine) -> Result<(), StoreError> {
        self.lock().logs.insert((key, line.seq), line.clone());
        Ok(())
    }

    fn trim_log(&mut self, key: LogKey, upto: u64, meta: &LogMeta) -> Result<(), StoreError> {
        let mut m = self.lock();
        m.logs.retain(|(k, seq), _| *k != key || *seq > upto);
        m.log_meta.insert(key, meta.clone());
        Ok(())
    }

    fn read_log(&self, key: LogKey, after: u64) -> Result<(LogMeta, Vec<LogLine>), StoreError> {
        let m = self.lock();
        let lines = m
            .logs
            .range((key, after.saturating_add(1))..=(key, u64::MAX))
            .map(|(_, l)| l.clone())
            .collect();
        Ok((m.log_meta.get(&key).cloned().unwrap_or_default(), lines))
    }

    fn flush_logs(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    fn load_notifications(&self) -> Result<Vec<NotificationRecord>, StoreError> {
        let m = self.lock();
        Ok(m.committed
            .notifications
            .values()
            .flatten()
            .cloned()
            .collect())
    }

    fn put_notification(&mut self, rec: &NotificationRecord) -> Result<(), StoreError> {
        self.lock()
            .pending
            .notifications
            .insert(rec.seq, Some(rec.clone()));
        Ok(())
    }

    fn remove_notification(&mut self, seq: u64) -> Result<(), StoreError> {
        self.lock().pending.notifications.insert(seq, None);
        Ok(())
    }
}
