//! Pools and `max_active`: limits on how many jobs run at once, across every broker.
//!
//! A pool's capacity is durable (the store's pool table); how many of its slots are in
//! use is not stored at all. A slot is held by a job from the moment it is assigned to
//! a broker (running there, or held in the broker's prefetch queue) until that attempt
//! ends, however it ends: a report, a failure before a retry, a requeue when its
//! broker is lost or its lease expires, an overdue backstop, a cancel. At load the
//! use is worked out again from the jobs that are running, so a restart cannot leak a
//! slot either.
//!
//! A job popped from the run queue whose pool is full, or whose pipeline already runs
//! `max_active` jobs, does not block the queue: it is parked in its pool's (or its
//! pipeline's) own heap, keeping its ticket, and the best parked jobs go back to the
//! run queue as slots free up. Within a pool the order is strict: a job does not take
//! a free slot while a better job of the same pool waits for more slots than are free.

use std::collections::{BTreeMap, BTreeSet};

use foldhash::{HashMap, HashMapExt, HashSet};

use pypelinin_common::pipeline::MAX_POOL_NAME_LEN;
use pypelinin_common::protocol::{PipelineId, PoolRequest, PoolStatus, ProtocolError, Reply};
use pypelinin_common::status::JobState;
use pypelinin_common::{JobSpec, Pipeline};
use tracing::{info, warn};

use super::queue::{RunQueue, Ticket};
use super::{PipelineEntry, Result, RouterState};
use crate::store::PoolRecord;

/// Checks a pool's name and capacity as `pool set` and the config file give them.
pub fn check_pool(name: &str, slots: u32) -> std::result::Result<(), String> {
    if name.is_empty() || name.len() > MAX_POOL_NAME_LEN {
        return Err(format!(
            "a pool name must have 1 to {MAX_POOL_NAME_LEN} bytes, not {}",
            name.len()
        ));
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "pool name {name:?} holds spaces or control characters"
        ));
    }
    if slots == 0 {
        return Err(format!("pool {name:?} must have at least 1 slot"));
    }
    Ok(())
}

#[derive(Default)]
pub(super) struct Pool {
    /// `None`: not defined (only seen named by a job loaded from the store).
    capacity: Option<u32>,
    used: u32,
    /// Its jobs that found it full, best first.
    parked: RunQueue,
}

impl Pool {
    fn open(&self) -> u32 {
        self.capacity.unwrap_or(0).saturating_sub(self.used)
    }
}

/// What a running job holds.
struct Hold {
    pool: Option<(String, u32)>,
    /// Counted against its pipeline's `max_active`.
    capped: bool,
}

/// Every pool, what running jobs hold, and the jobs parked for want of a slot.
#[derive(Default)]
pub(super) struct Limits {
    pools: BTreeMap<String, Pool>,
    held: HashMap<(PipelineId, u32), Hold>,
    /// Running jobs of each pipeline that has a `max_active`.
    active: HashMap<PipelineId, u32>,
    /// Jobs of a pipeline at its `max_active`, best first.
    capped: HashMap<PipelineId, RunQueue>,
}

impl RouterState {
    /// Pools from the store, then those of the config file, which win (and are
    /// stored, so that they stay if a later config file drops them).
    pub(super) fn load_pools(&mut self) -> Result<()> {
        for rec in self.store.load_pools()? {
            self.limits.pools.entry(rec.name).or_default().capacity = Some(rec.capacity);
        }
        let from_config: Vec<(String, u32)> = self
            .config
            .pools
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        for (name, slots) in from_config {
            if let Err(e) = check_pool(&name, slots) {
                warn!(pool = %name, error = %e, "pool of the config file ignored");
                continue;
            }
            let p = self.limits.pools.entry(name.clone()).or_default();
            if p.capacity != Some(slots) {
                info!(pool = %name, slots, "pool set from the config file");
                p.capacity = Some(slots);
                self.store.put_pool(&PoolRecord {
                    name,
                    capacity: slots,
                    removed: false,
                })?;
            }
        }
        Ok(())
    }

    pub(super) fn pool_request(&mut self, r: PoolRequest) -> Result<Reply> {
        match r {
            PoolRequest::List => Ok(Reply::Pools(self.pool_statuses(None))),
            PoolRequest::Set { name, slots } => {
                if let Err(e) = check_pool(&name, slots) {
                    info!(pool = %name, error = %e, "pool refused");
                    return Ok(Reply::Error(ProtocolError::Refused(e)));
                }
                let p = self.limits.pools.entry(name.clone()).or_default();
                info!(pool = %name, slots, was = ?p.capacity, used = p.used, "pool set");
                p.capacity = Some(slots);
                self.store.put_pool(&PoolRecord {
                    name: name.clone(),
                    capacity: slots,
                    removed: false,
                })?;
                self.unpark_pool(&name);
                Ok(Reply::Pools(self.pool_statuses(Some(&name))))
            }
            PoolRequest::Remove { name } => {
                let defined = self
                    .limits
                    .pools
                    .get(&name)
                    .is_some_and(|p| p.capacity.is_some());
                if !defined {
                    return Ok(Reply::Error(ProtocolError::UnknownPool(name)));
                }
                let (running, waiting) = self.pool_jobs(&name);
                if running + waiting > 0 {
                    info!(pool = %name, running, waiting, "pool removal refused");
                    return Ok(Reply::Error(ProtocolError::Refused(format!(
                        "pool {name:?} is named by {} job(s) of open pipelines ({running} \
                         running, {waiting} not started): remove it once they are done",
                        running + waiting
                    ))));
                }
                let status = self.pool_statuses(Some(&name));
                self.limits.pools.remove(&name);
                self.store.put_pool(&PoolRecord {
                    name: name.clone(),
                    capacity: 0,
                    removed: true,
                })?;
                info!(pool = %name, "pool removed");
                Ok(Reply::Pools(status))
            }
        }
    }

    /// Jobs of open pipelines that name pool `name` and have not ended: running, and
    /// not started.
    fn pool_jobs(&self, name: &str) -> (u32, u32) {
        let (mut running, mut waiting) = (0, 0);
        for p in self.pipelines.values() {
            if p.rec.state.is_final() {
                continue;
            }
            for (i, j) in p.jobs.iter().enumerate() {
                if j.state.is_final() || p.dag.job(i as u32).pool.as_deref() != Some(name) {
                    continue;
                }
                if j.state == JobState::Running {
                    running += 1;
                } else {
                    waiting += 1;
                }
            }
        }
        (running, waiting)
    }

    /// Pools as `pool list` shows them (only `only`, if given). Walks the run queue:
    /// for status requests only.
    fn pool_statuses(&self, only: Option<&str>) -> Vec<PoolStatus> {
        let mut queued: HashMap<&str, HashSet<(PipelineId, u32)>> = HashMap::new();
        let tickets = self
            .queues
            .values()
            .flat_map(RunQueue::iter)
            .chain(self.limits.pools.values().flat_map(|p| p.parked.iter()))
            .chain(self.limits.capped.values().flat_map(RunQueue::iter));
        for t in tickets {
            let Some(p) = self.pipelines.get(&t.id) else {
                continue;
            };
            let Some(pool) = p.dag.job(t.job).pool.as_deref() else {
                continue;
            };
            if only.is_some_and(|o| o != pool) || !waits(p.jobs[t.job as usize].state) {
                continue;
            }
            queued.entry(pool).or_default().insert((t.id, t.job));
        }
        self.limits
            .pools
            .iter()
            .filter(|(n, p)| p.capacity.is_some() && only.is_none_or(|o| o == n.as_str()))
            .map(|(n, p)| PoolStatus {
                name: n.clone(),
                capacity: p.capacity.unwrap_or(0),
                used: p.used,
                queued: queued.get(n.as_str()).map_or(0, |s| s.len() as u32),
            })
            .collect()
    }

    /// Why a pipeline cannot run with the pools as they are: a job names a pool that
    /// does not exist, or asks for more slots than its pool has.
    pub(super) fn check_pools(&self, dag: &Pipeline) -> Option<String> {
        for i in 0..dag.len() as u32 {
            let job = dag.job(i);
            let Some(name) = &job.pool else { continue };
            let slots = job.slots();
            match self.limits.pools.get(name).and_then(|p| p.capacity) {
                None => {
                    return Some(format!(
                        "job {:?} names pool {name:?}, which does not exist \
                         (create it with `pypelinin pool set {name} SLOTS`)",
                        dag.name(i)
                    ))
                }
                Some(c) if slots > c => {
                    return Some(format!(
                        "job {:?} asks for {slots} slots of pool {name:?}, which has {c}",
                        dag.name(i)
                    ))
                }
                Some(_) => {}
            }
        }
        None
    }

    /// Whether the job of ticket `t` may start now; if not, it is parked until a slot
    /// frees up. A job that may start holds its slots from here on.
    pub(super) fn admit(&mut self, t: Ticket) -> bool {
        let Some(p) = self.pipelines.get(&t.id) else {
            return true;
        };
        let job = p.dag.job(t.job);
        let max = p.rec.spec.max_active;
        if job.pool.is_none() && max.is_none() {
            return true;
        }
        if let Some(max) = max {
            if self.limits.active.get(&t.id).copied().unwrap_or(0) >= max {
                self.limits.capped.entry(t.id).or_default().push(t);
                return false;
            }
        }
        if let Some(name) = &job.pool {
            let slots = job.slots();
            let pool = self.limits.pools.entry(name.clone()).or_default();
            // The best job parked in the pool goes first, unless it ended meanwhile
            // (cancelled) or can never fit (the pool shrank below its slots).
            let better_waits =
                live_head(&mut pool.parked, &self.pipelines).is_some_and(|(h, hp)| {
                    h > t && hp.dag.job(h.job).slots() <= pool.capacity.unwrap_or(0)
                });
            if better_waits || pool.open() < slots {
                pool.parked.push(t);
                return false;
            }
        }
        self.hold(t.id, t.job);
        true
    }

    /// Job `i` is running: it holds its pool's slots and counts against its
    /// pipeline's `max_active`.
    pub(super) fn hold(&mut self, id: PipelineId, i: u32) {
        let Some(p) = self.pipelines.get(&id) else {
            return;
        };
        let job = p.dag.job(i);
        let capped = p.rec.spec.max_active.is_some();
        let pool = job.pool.as_ref().map(|n| (n.clone(), job.slots()));
        if (pool.is_none() && !capped) || self.limits.held.contains_key(&(id, i)) {
            return;
        }
        if let Some((name, slots)) = &pool {
            self.limits.pools.entry(name.clone()).or_default().used += slots;
        }
        if capped {
            *self.limits.active.entry(id).or_default() += 1;
        }
        self.limits.held.insert((id, i), Hold { pool, capped });
    }

    /// Job `i`'s attempt ended (however): what it held is free, and the best jobs
    /// parked for it go back to the run queue.
    pub(super) fn free_slots(&mut self, id: PipelineId, i: u32) {
        if self.limits.held.is_empty() {
            return;
        }
        let Some(h) = self.limits.held.remove(&(id, i)) else {
            return;
        };
        if let Some((name, slots)) = h.pool {
            if let Some(p) = self.limits.pools.get_mut(&name) {
                p.used = p.used.saturating_sub(slots);
            }
            self.unpark_pool(&name);
        }
        if h.capped {
            if let Some(a) = self.limits.active.get_mut(&id) {
                *a = a.saturating_sub(1);
                if *a == 0 {
                    self.limits.active.remove(&id);
                }
            }
            self.unpark_capped(id);
        }
    }

    /// Jobs parked for a pool or a `max_active` (cancelled ones may still be among
    /// them until their pool frees a slot).
    pub(super) fn parked(&self) -> usize {
        self.limits
            .pools
            .values()
            .map(|p| p.parked.len())
            .sum::<usize>()
            + self.limits.capped.values().map(|q| q.len()).sum::<usize>()
    }

    /// Forgets the jobs of pipeline `id` parked for its `max_active` (it was
    /// cancelled).
    pub(super) fn forget_capped(&mut self, id: PipelineId) {
        self.limits.capped.remove(&id);
    }

    /// Puts back in the run queue as many of pool `name`'s parked jobs, best first, as
    /// its free slots can take.
    fn unpark_pool(&mut self, name: &str) {
        let Some(pool) = self.limits.pools.get_mut(name) else {
            return;
        };
        let mut open = pool.open();
        let capacity = pool.capacity.unwrap_or(0);
        // Jobs needing more slots than the pool now has stay parked without holding
        // up those behind them.
        let mut too_big = Vec::new();
        while let Some((t, p)) = live_head(&mut pool.parked, &self.pipelines) {
            let job = p.dag.job(t.job);
            let need = job.slots();
            if need > capacity {
                too_big.extend(pool.parked.pop());
                continue;
            }
            if need > open {
                break;
            }
            open -= need;
            pool.parked.pop();
            self.queues.entry(job.worker.clone()).or_default().push(t);
        }
        pool.parked.extend(too_big);
    }

    /// Puts back in the run queue as many of pipeline `id`'s parked jobs as its
    /// `max_active` has room for.
    fn unpark_capped(&mut self, id: PipelineId) {
        let Some(p) = self.pipelines.get(&id) else {
            self.limits.capped.remove(&id);
            return;
        };
        let max = p.rec.spec.max_active.unwrap_or(u32::MAX);
        let active = self.limits.active.get(&id).copied().unwrap_or(0);
        let mut room = max.saturating_sub(active);
        let Some(q) = self.limits.capped.get_mut(&id) else {
            return;
        };
        while room > 0 {
            let Some(t) = q.pop() else { break };
            if !waits(p.jobs[t.job as usize].state) {
                continue;
            }
            room -= 1;
            let worker = p.dag.job(t.job).worker.clone();
            self.queues.entry(worker).or_default().push(t);
        }
        if q.is_empty() {
            self.limits.capped.remove(&id);
        }
    }

    /// Why each job of pipeline `id` that waits in the run queue or is parked has not
    /// started: its pipeline's `max_active`, its pool, or jobs ahead of it (none for a
    /// job first in line). For status requests only; one pass over each queue and pool
    /// the pipeline's jobs are in, so a status of a pipeline of thousands of queued jobs
    /// costs a sort per queue, not a walk per job.
    pub(super) fn queued_reasons(&self, id: PipelineId) -> HashMap<u32, String> {
        let mut out = HashMap::new();
        let Some(p) = self.pipelines.get(&id) else {
            return out;
        };
        let waiting = |i: u32| p.jobs.get(i as usize).is_some_and(|j| waits(j.state));
        if let Some(q) = self.limits.capped.get(&id) {
            let max = p.rec.spec.max_active.unwrap_or(0);
            for t in q.iter().filter(|t| waiting(t.job)) {
                out.insert(t.job, format!("pipeline max_active {max} reached"));
            }
        }
        let names = |f: fn(&JobSpec) -> Option<&str>| -> BTreeSet<&str> {
            (0..p.dag.len() as u32)
                .filter_map(|i| f(p.dag.job(i)))
                .collect()
        };
        for name in names(|j| j.pool.as_deref()) {
            let Some(pool) = self.limits.pools.get(name) else {
                continue;
            };
            for (ahead, t) in pool.parked.iter().enumerate() {
                if t.id != id || !waiting(t.job) || out.contains_key(&t.job) {
                    continue;
                }
                let slots = p.dag.job(t.job).slots();
                out.insert(
                    t.job,
                    match pool.capacity {
                        None => format!("pool {name} does not exist"),
                        Some(c) if slots > c => {
                            format!("pool {name}: needs {slots} slots, the pool has {c}")
                        }
                        Some(c) => format!(
                            "pool {name}: {}/{c} slots in use, {ahead} queued ahead",
                            pool.used
                        ),
                    },
                );
            }
        }
        for worker in names(|j| Some(j.worker.as_str())) {
            let Some(q) = self.queues.get(worker) else {
                continue;
            };
            // Jobs ahead, by why: a higher effective priority, the same one queued
            // earlier, or a lower one that aging has carried past; counted by priority
            // as the queue is walked best first.
            let mut seen: BTreeMap<i64, usize> = BTreeMap::new();
            let mut unknown = 0;
            for t in q.iter() {
                if t.id == id && waiting(t.job) && !out.contains_key(&t.job) {
                    let own = p.dag.effective_priority(t.job);
                    let higher: usize = seen.range(own + 1..).map(|(_, n)| n).sum();
                    let same = seen.get(&own).copied().unwrap_or(0) + unknown;
                    let aged: usize = seen.range(..own).map(|(_, n)| n).sum();
                    if let Some(reason) = behind(higher, same, aged) {
                        out.insert(t.job, reason);
                    }
                }
                match self.pipelines.get(&t.id) {
                    Some(o) => *seen.entry(o.dag.effective_priority(t.job)).or_default() += 1,
                    None => unknown += 1,
                }
            }
        }
        out
    }

    /// [`RouterState::queued_reasons`] of one job.
    #[cfg(test)]
    pub(super) fn queued_reason(&self, id: PipelineId, i: u32) -> Option<String> {
        self.queued_reasons(id).remove(&i)
    }
}

/// `behind …` for a job with these counts of jobs ahead of it; `None` when first in
/// line (then `why` says how busy the brokers' slots are).
fn behind(higher: usize, same: usize, aged: usize) -> Option<String> {
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    let parts: Vec<String> = [
        (
            higher,
            format!("{higher} job{} of higher priority", plural(higher)),
        ),
        (same, format!("{same} of the same priority queued earlier")),
        (
            aged,
            format!("{aged} of lower priority that waited longer (aging)"),
        ),
    ]
    .into_iter()
    .filter(|(n, _)| *n > 0)
    .map(|(_, s)| s)
    .collect();
    (!parts.is_empty()).then(|| format!("behind {}", parts.join(", ")))
}

/// The best ticket of `parked` whose job still waits, with its pipeline; tickets above
/// it whose job ended meanwhile (cancelled, or its pipeline gone) are dropped.
fn live_head<'a>(
    parked: &mut RunQueue,
    pipelines: &'a HashMap<PipelineId, PipelineEntry>,
) -> Option<(Ticket, &'a PipelineEntry)> {
    while let Some(t) = parked.peek() {
        match pipelines.get(&t.id) {
            Some(p) if waits(p.jobs[t.job as usize].state) => return Some((t, p)),
            _ => {
                parked.pop();
            }
        }
    }
    None
}

/// Whether a job in this state is one a ticket may still start.
fn waits(state: JobState) -> bool {
    matches!(state, JobState::Queued | JobState::Waiting)
}
