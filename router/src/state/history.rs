//! History: what the router keeps of finished pipelines, and for how long.
//!
//! A pipeline leaves the router's memory at the commit that makes its end durable
//! ([`RouterState::evict_closed`]); from then on `status`, `outputs`, `logs`, `list`,
//! `spec`, waits and the dashboard read it from the store, which answers from its
//! journal until the database has it. Memory thus grows with what is live, not with what ran.
//! A retry brings a finished pipeline back in. With a retention
//! ([`RouterState::set_retention`]), a timer deletes finished pipelines older than it,
//! with their outputs and logs, a bounded batch per turn.
//!
//! Reading history can fail (a record corrupt on disk): that is answered as a storage
//! error naming the database and the record, logged here, and never stops the router,
//! unlike a failed write, which must.

use std::collections::{BTreeMap, HashMap};
use std::ops::Deref;

use pypelinin_common::protocol::{PipelineId, PipelineSummary, ProtocolError};
use pypelinin_common::status::{JobState, PipelineState};
use pypelinin_common::Pipeline;
use tracing::{info, warn};

use super::{PipelineEntry, Result, RouterState};
use crate::store::{Loaded, PipelineRecord};

/// Most finished pipelines a retention pass deletes in one turn of the event loop, so
/// that a large backlog (a retention shortened, a router down for a while) is worked off
/// over many turns without holding up the others.
pub const PURGE_BATCH: usize = 256;

/// How often, in ms of wall time, the retention pass runs once it has caught up.
pub const PURGE_EVERY_MS: u64 = 1_000;

/// Records read from the store per step of a listing.
const LIST_CHUNK: usize = 256;

/// A pipeline, from memory (open) or read back from the store (finished).
pub(super) enum Found<'a> {
    Live(&'a PipelineEntry),
    Past(Box<PipelineEntry>),
}

impl Deref for Found<'_> {
    type Target = PipelineEntry;
    fn deref(&self) -> &PipelineEntry {
        match self {
            Found::Live(p) => p,
            Found::Past(p) => p,
        }
    }
}

/// What the router counts of the history it does not hold, for `/metrics`.
#[derive(Default)]
pub(super) struct Tally {
    pub(super) pipelines: HashMap<PipelineState, u64>,
    pub(super) jobs: HashMap<JobState, u64>,
    /// The latest finished run of each schedule, as found at load (for its `last`).
    pub(super) last_runs: BTreeMap<String, (u64, PipelineState)>,
}

impl Tally {
    pub(super) fn add(&mut self, rec: &PipelineRecord) {
        *self.pipelines.entry(rec.state).or_default() += 1;
        for (s, n) in &rec.job_states {
            *self.jobs.entry(*s).or_default() += u64::from(*n);
        }
    }

    pub(super) fn remove(&mut self, rec: &PipelineRecord) {
        if let Some(n) = self.pipelines.get_mut(&rec.state) {
            *n = n.saturating_sub(1);
        }
        for (s, n) in &rec.job_states {
            if let Some(c) = self.jobs.get_mut(s) {
                *c = c.saturating_sub(u64::from(*n));
            }
        }
    }
}

/// The retention pass's progress.
#[derive(Default)]
pub(super) struct Purge {
    /// Wall time of the next pass.
    pub(super) next_ms: u64,
    /// Pipelines deleted since the router started.
    pub(super) deleted: u64,
    /// Every pipeline up to this `seq` was dealt with: deleted, or held back below.
    /// Each pass starts after it, so that it walks neither the deleted ones again nor
    /// the journal's deletions of them.
    cursor: u64,
    /// Pipelines passed over while older than the retention (still open, or finished
    /// too recently): looked at again at each pass.
    held: BTreeMap<u64, PipelineId>,
}

/// Builds a pipeline entry from what the store holds.
pub(super) fn entry_of((rec, jobs): Loaded) -> std::result::Result<PipelineEntry, String> {
    let dag = Pipeline::new(rec.spec.clone()).map_err(|e| e.to_string())?;
    let done = jobs.iter().filter(|j| j.state.is_final()).count() as u32;
    Ok(PipelineEntry {
        armed: vec![false; jobs.len()],
        close_on_success: false,
        rec,
        dag,
        jobs,
        owner: None,
        done,
    })
}

impl RouterState {
    /// Pipeline `id`, from memory or the store; `Err` is the error to answer when it is
    /// unknown or unreadable.
    pub(super) fn lookup(&self, id: PipelineId) -> std::result::Result<Found<'_>, ProtocolError> {
        if let Some(p) = self.pipelines.get(&id) {
            return Ok(Found::Live(p));
        }
        let unreadable = |e: String| {
            warn!(pipeline = %id, error = %e, "history unreadable");
            ProtocolError::Storage(e)
        };
        match self.store.get_pipeline(id) {
            Ok(Some(loaded)) => entry_of(loaded)
                .map(|e| Found::Past(Box::new(e)))
                .map_err(|e| unreadable(format!("the stored spec of pipeline {id}: {e}"))),
            Ok(None) => Err(ProtocolError::UnknownPipeline(id)),
            Err(e) => Err(unreadable(e.to_string())),
        }
    }

    /// The state of pipeline `id`, from memory or the store (`None` if unknown or
    /// unreadable).
    pub(super) fn state_of(&self, id: PipelineId) -> Option<PipelineState> {
        if let Some(p) = self.pipelines.get(&id) {
            return Some(p.rec.state);
        }
        self.store.get_record(id).ok().flatten().map(|r| r.state)
    }

    /// Brings finished pipeline `id` back into memory (a retry reopens it); whether it
    /// is there now.
    pub(super) fn revive(&mut self, id: PipelineId) -> bool {
        if self.pipelines.contains_key(&id) {
            return true;
        }
        let Ok(found) = self.lookup(id) else {
            return false;
        };
        let Found::Past(entry) = found else {
            return true;
        };
        self.tally.remove(&entry.rec);
        self.order.insert(entry.rec.seq, id);
        self.pipelines.insert(id, *entry);
        // Evicted again at this turn's commit unless it is reopened by then.
        self.closed.push(id);
        true
    }

    /// Fills in what a record carries for listings and metrics, before it is written.
    pub(super) fn stamp(&mut self, id: PipelineId) {
        let Some(p) = self.pipelines.get_mut(&id) else {
            return;
        };
        p.rec.jobs = p.jobs.len() as u32;
        p.rec.done = p.done;
        p.rec.job_states = if p.rec.state.is_final() {
            let mut by: Vec<(JobState, u32)> = Vec::new();
            for j in &p.jobs {
                match by.iter_mut().find(|(s, _)| *s == j.state) {
                    Some((_, n)) => *n += 1,
                    None => by.push((j.state, 1)),
                }
            }
            by
        } else {
            Vec::new()
        };
    }

    /// Drops from memory the pipelines closed this turn, now that their end is written
    /// (called by `commit`, after the store has the records).
    pub(super) fn evict_closed(&mut self) {
        for id in std::mem::take(&mut self.closed) {
            let Some(p) = self.pipelines.get(&id) else {
                continue;
            };
            if !p.rec.state.is_final() {
                continue; // reopened by a retry in the same turn
            }
            if let Some(p) = self.pipelines.remove(&id) {
                self.order.remove(&p.rec.seq);
                self.forget_capped(id);
                self.tally.add(&p.rec);
            }
        }
    }

    /// A finished pipeline's listing line, from its record.
    fn summary(&self, rec: &PipelineRecord) -> PipelineSummary {
        let (mut jobs, mut done) = (rec.jobs, rec.done);
        if jobs == 0 {
            // A record written before it carried its counts: read the spec and jobs.
            if let Ok(Some((full, js))) = self.store.get_pipeline(rec.id) {
                jobs = full.spec.jobs.len() as u32;
                done = js.iter().filter(|j| j.state.is_final()).count() as u32;
            }
        }
        summary_of(rec, jobs, done)
    }

    pub(super) fn list(
        &self,
        limit: usize,
        state: Option<PipelineState>,
        schedule: Option<&str>,
        before: Option<u64>,
    ) -> std::result::Result<Vec<PipelineSummary>, ProtocolError> {
        let keep = |rec: &PipelineRecord| {
            state.is_none_or(|s| rec.state == s)
                && schedule
                    .is_none_or(|name| rec.origin.as_ref().is_some_and(|o| o.schedule == name))
        };
        let before = before.unwrap_or(u64::MAX);
        let mut out = Vec::new();
        // Open pipelines are all in memory, and only they are: a listing of open ones
        // reads nothing from disk.
        if state.is_some_and(|s| !s.is_final()) {
            for id in self.order.range(..before).rev().map(|(_, id)| id) {
                let p = &self.pipelines[id];
                if keep(&p.rec) {
                    out.push(summary_of(&p.rec, p.jobs.len() as u32, p.done));
                    if out.len() >= limit {
                        break;
                    }
                }
            }
            return Ok(out);
        }
        // Everything else merges the open pipelines in memory with the store's history,
        // newest first; memory wins for a pipeline in both (its record there is newer).
        let mut live = self.order.range(..before).rev().peekable();
        let mut cursor = before;
        let mut stored: std::collections::VecDeque<PipelineRecord> = Default::default();
        let mut exhausted = false;
        while out.len() < limit {
            if stored.is_empty() && !exhausted {
                let chunk = self.store.records(cursor, true, LIST_CHUNK).map_err(|e| {
                    warn!(error = %e, "listing the history failed");
                    ProtocolError::Storage(e.to_string())
                })?;
                exhausted = chunk.len() < LIST_CHUNK;
                if let Some(last) = chunk.last() {
                    cursor = last.seq;
                }
                stored.extend(chunk);
            }
            let from_store = match (live.peek(), stored.front()) {
                (None, None) => break,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some((l, _)), Some(r)) => r.seq > **l,
            };
            if from_store {
                let Some(rec) = stored.pop_front() else { break };
                // An open one's copy in memory is newer: taken when `live` reaches it.
                if !self.pipelines.contains_key(&rec.id) && keep(&rec) {
                    out.push(self.summary(&rec));
                }
            } else if let Some((_, id)) = live.next() {
                let p = &self.pipelines[id];
                if keep(&p.rec) {
                    out.push(summary_of(&p.rec, p.jobs.len() as u32, p.done));
                }
            }
        }
        Ok(out)
    }

    /// Calls `f` with every pipeline record, oldest first: the store's history, with
    /// memory's copy of the open ones. Walks the whole history: for rare requests only
    /// (a backfill's creation).
    pub(super) fn each_record(&self, mut f: impl FnMut(&PipelineRecord)) -> Result<()> {
        let mut cursor = 0;
        loop {
            let chunk = self.store.records(cursor, false, 4096)?;
            for rec in &chunk {
                match self.pipelines.get(&rec.id) {
                    Some(p) => f(&p.rec),
                    None => f(rec),
                }
            }
            if let Some(last) = chunk.last() {
                cursor = last.seq;
            }
            if chunk.len() < 4096 {
                break;
            }
        }
        // Submitted this turn: not in the store yet.
        for id in self
            .order
            .range(cursor.saturating_add(1)..)
            .map(|(_, id)| id)
        {
            f(&self.pipelines[id].rec);
        }
        Ok(())
    }

    /// Deletes finished pipelines past the retention, a batch at a time.
    pub(super) fn tick_retention(&mut self) -> Result<()> {
        let Some(retention) = self.retention_ms else {
            return Ok(());
        };
        let now = self.clock.wall_ms();
        if now < self.purge.next_ms {
            return Ok(());
        }
        let cutoff = now.saturating_sub(retention);
        let mut deleted = 0;
        // Those passed over before: deleted once they are finished and old enough.
        let held: Vec<(u64, PipelineId)> = self.purge.held.iter().map(|(s, i)| (*s, *i)).collect();
        for (seq, id) in held {
            if deleted >= PURGE_BATCH {
                break;
            }
            match self.store.get_record(id)? {
                Some(rec) if self.expired(&rec, cutoff) => {
                    self.delete_expired(&rec)?;
                    deleted += 1;
                }
                Some(_) => continue,
                None => {}
            }
            self.purge.held.remove(&seq);
        }
        let mut caught_up = false;
        'scan: while deleted < PURGE_BATCH {
            let chunk = self.store.records(self.purge.cursor, false, PURGE_BATCH)?;
            if chunk.is_empty() {
                caught_up = true;
                break;
            }
            for rec in &chunk {
                if rec.submitted_ms >= cutoff {
                    caught_up = true;
                    break 'scan; // everything after it is newer still
                }
                self.purge.cursor = rec.seq;
                if self.expired(rec, cutoff) {
                    self.delete_expired(rec)?;
                    deleted += 1;
                    if deleted >= PURGE_BATCH {
                        break 'scan;
                    }
                } else {
                    self.purge.held.insert(rec.seq, rec.id);
                }
            }
        }
        self.purge.deleted += deleted as u64;
        if deleted > 0 {
            info!(
                deleted,
                total = self.purge.deleted,
                "retention: deleted finished pipelines"
            );
        }
        // Caught up: next pass in a while. Otherwise the next turn goes on.
        if caught_up || deleted < PURGE_BATCH {
            self.purge.next_ms = now + PURGE_EVERY_MS;
        }
        Ok(())
    }

    /// Whether `rec` is past the retention: finished before `cutoff`, and not open in
    /// memory (a retry may have reopened it since the record was written).
    fn expired(&self, rec: &PipelineRecord, cutoff: u64) -> bool {
        !self.pipelines.contains_key(&rec.id)
            && rec.state.is_final()
            && rec.finished_ms.is_some_and(|f| f < cutoff)
    }

    fn delete_expired(&mut self, rec: &PipelineRecord) -> Result<()> {
        let jobs = match rec.jobs {
            0 => match self.store.get_pipeline(rec.id) {
                Ok(Some((full, _))) => full.spec.jobs.len() as u32,
                _ => 0,
            },
            n => n,
        };
        self.store.delete_pipeline(rec, jobs)?;
        self.tally.remove(rec);
        Ok(())
    }

    /// Pipelines deleted by the retention since the router started.
    pub fn purged(&self) -> u64 {
        self.purge.deleted
    }

    /// Pipelines the router holds in memory (the open ones, and those closed this turn).
    pub fn pipelines_in_memory(&self) -> usize {
        self.pipelines.len()
    }
}

fn summary_of(rec: &PipelineRecord, jobs: u32, done: u32) -> PipelineSummary {
    PipelineSummary {
        id: rec.id,
        state: rec.state,
        submitted_ms: rec.submitted_ms,
        finished_ms: rec.finished_ms,
        jobs,
        done,
        origin: rec.origin.clone(),
        seq: rec.seq,
    }
}
