//! Captured logs: lines brokers send for running attempts, kept per attempt within
//! [`MAX_LOG_BYTES_PER_ATTEMPT`] (oldest lines dropped first), and read back by
//! clients that show or follow them.
//!
//! The lines are in the store (see [`StateStore::put_log`] for when they are durable);
//! here the router only keeps, for attempts that log now, an index of their lines'
//! numbers and sizes, to know what to drop without reading the log back. An index
//! evicted (or lost with a restart) is rebuilt from the store when its attempt logs
//! again.
//!
//! [`StateStore::put_log`]: crate::store::StateStore::put_log

use std::collections::VecDeque;
use std::time::Instant;

use foldhash::{HashMap, HashMapExt};

use pypelinin_common::protocol::{
    Event, LogChunk, LogPage, PipelineId, ProtocolError, Reply, LOG_BATCH_INTERVAL,
    LOG_LINE_OVERHEAD, MAX_LOG_BYTES_PER_ATTEMPT, MAX_LOG_LINE_BYTES,
};
use pypelinin_common::status::JobState;

use super::{Result, RouterState};
use crate::store::{LogKey, LogMeta};

/// Attempts whose index stays in memory before those no longer running are evicted.
const MAX_INDEXES: usize = 256;

/// What the router knows of one attempt's kept lines.
#[derive(Default)]
pub(super) struct LogIndex {
    /// The last line number kept: lines numbered up to it are duplicates.
    last_seq: u64,
    /// Sum of the kept lines' costs.
    cost: usize,
    /// Kept lines, oldest first: number, cost, and bytes the broker dropped before it
    /// (counted in the meta's total once the line itself is dropped).
    lines: VecDeque<(u64, usize, u64)>,
    meta: LogMeta,
}

/// The logs' share of the router's state.
#[derive(Default)]
pub(super) struct Logs {
    indexes: HashMap<LogKey, LogIndex>,
    /// When each pipeline last had a `job.logs` event, to send at most one per interval.
    woken: HashMap<PipelineId, Instant>,
    /// Lines were written since the last flush.
    pub(super) dirty: bool,
}

impl RouterState {
    /// Keeps the lines of attempts the router knows; the rest are dropped.
    pub(super) fn logs_in(&mut self, chunks: Vec<LogChunk>) -> Result<Reply> {
        let mut trims: HashMap<LogKey, u64> = HashMap::new();
        let mut woke = Vec::new();
        for LogChunk { job, mut line } in chunks {
            let known = self
                .pipelines
                .get(&job.pipeline)
                .and_then(|p| p.jobs.get(job.job as usize))
                .is_some_and(|j| job.attempt >= 1 && job.attempt <= j.attempt());
            if !known || line.seq == 0 {
                continue;
            }
            let key = (job.pipeline, job.job, job.attempt);
            if !self.logs.indexes.contains_key(&key) {
                let index = self.load_index(key)?;
                self.logs.indexes.insert(key, index);
            }
            let Some(index) = self.logs.indexes.get_mut(&key) else {
                continue;
            };
            if line.seq <= index.last_seq {
                continue; // a batch sent again
            }
            line.bytes.truncate(MAX_LOG_LINE_BYTES);
            index.last_seq = line.seq;
            index.cost += line.cost();
            index.lines.push_back((line.seq, line.cost(), line.dropped));
            self.store.put_log(key, &line)?;
            if let Some(p) = self.pipelines.get_mut(&job.pipeline) {
                if !p.rec.logs {
                    p.rec.logs = true;
                    self.dirty_pipelines.insert(job.pipeline);
                }
            }
            while index.cost > MAX_LOG_BYTES_PER_ATTEMPT {
                let Some((seq, cost, before)) = index.lines.pop_front() else {
                    break;
                };
                index.cost -= cost;
                index.meta.dropped_bytes += (cost - LOG_LINE_OVERHEAD) as u64 + before;
                trims.insert(key, seq);
            }
            self.logs.dirty = true;
            if !woke.contains(&job.pipeline) {
                woke.push(job.pipeline);
            }
        }
        for (key, upto) in trims {
            let meta = &self.logs.indexes[&key].meta;
            self.store.trim_log(key, upto, meta)?;
        }
        let now = self.clock.instant();
        for id in woke {
            let due = self
                .logs
                .woken
                .get(&id)
                .is_none_or(|t| now.duration_since(*t) >= LOG_BATCH_INTERVAL);
            if due {
                self.logs.woken.insert(id, now);
                self.events.push(Event::JobLogs { id });
            }
        }
        self.evict_log_indexes(now);
        Ok(Reply::Ok)
    }

    /// An attempt's index, from its lines in the store.
    fn load_index(&self, key: LogKey) -> Result<LogIndex> {
        let (meta, lines) = self.store.read_log(key, 0)?;
        let lines: VecDeque<(u64, usize, u64)> =
            lines.iter().map(|l| (l.seq, l.cost(), l.dropped)).collect();
        Ok(LogIndex {
            last_seq: lines.back().map_or(0, |l| l.0),
            cost: lines.iter().map(|l| l.1).sum(),
            lines,
            meta,
        })
    }

    /// Forgets the indexes of attempts no longer running once there are many, and
    /// wake-up times long past.
    fn evict_log_indexes(&mut self, now: Instant) {
        if self.logs.indexes.len() > MAX_INDEXES {
            let pipelines = &self.pipelines;
            self.logs.indexes.retain(|(id, job, attempt), _| {
                pipelines
                    .get(id)
                    .and_then(|p| p.jobs.get(*job as usize))
                    .is_some_and(|j| j.state == JobState::Running && j.attempt() == *attempt)
            });
        }
        if self.logs.woken.len() > MAX_INDEXES {
            self.logs
                .woken
                .retain(|_, t| now.duration_since(*t) < LOG_BATCH_INTERVAL);
        }
    }

    /// The lines of one attempt of `job` numbered after `after`.
    pub(super) fn get_logs(
        &self,
        id: PipelineId,
        job: &str,
        attempt: Option<u32>,
        after: u64,
    ) -> Result<Reply> {
        let p = match self.lookup(id) {
            Ok(p) => p,
            Err(e) => return Ok(Reply::Error(e)),
        };
        let Some(i) = p.dag.index_of(job) else {
            return Ok(Reply::Error(ProtocolError::UnknownJob {
                pipeline: id,
                job: job.to_string(),
            }));
        };
        let j = &p.jobs[i as usize];
        let attempts = j.attempt();
        let n = attempt.unwrap_or(attempts);
        if n > attempts || attempt == Some(0) {
            return Ok(Reply::Error(ProtocolError::Refused(format!(
                "job {job} has had {attempts} attempt(s); there is no attempt {n}"
            ))));
        }
        let mut page = LogPage {
            attempt: n,
            attempts,
            job_final: j.state.is_final(),
            finished: n < attempts || j.state != JobState::Running,
            ..LogPage::default()
        };
        if n > 0 {
            let (meta, lines) = self.store.read_log((id, i, n), after)?;
            page.dropped_bytes = meta.dropped_bytes;
            page.lines = lines;
        }
        Ok(Reply::Logs(page))
    }
}
