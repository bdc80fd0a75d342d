//! Backfills: a schedule's pipeline run over a range of its past (or future) ticks, as
//! one tracked operation (Airflow's backfill, "time travel").
//!
//! A backfill is a stored [`BackfillRecord`]: a copy of the schedule (so removing the
//! schedule does not orphan it) and the list of its dates, in run order, each marked
//! with its run once made, or with why it gets none (`reprocess`). It keeps at most
//! `max_active` runs going; each run that closes makes room for the next date. Its runs
//! do not count against the schedule's `max_running` unless `count_against_schedule`.

use std::collections::{BTreeMap, BTreeSet};

use pypelinin_common::protocol::{PipelineId, ProtocolError, Reply, ScheduleRequest};
use pypelinin_common::schedule::{
    BackfillSpec, BackfillState, BackfillStatus, Recurrence, Reprocess, RunKind, RunOrigin,
    TickRecord, MAX_BACKFILL_DATES,
};
use pypelinin_common::status::PipelineState;
use tracing::{info, warn};
use uuid::Uuid;

use super::{Result, RouterState};
use crate::store::BackfillRecord;

/// A backfill in memory: its record, its recurrence, and its runs not yet final.
pub(super) struct BackfillEntry {
    pub(super) rec: BackfillRecord,
    recurrence: Recurrence,
    open: BTreeSet<PipelineId>,
}

/// Backfills, by number.
pub(super) type Backfills = BTreeMap<u64, BackfillEntry>;

impl RouterState {
    /// Rebuilds the backfills at start-up, after pipelines and schedules.
    pub(super) fn load_backfills(&mut self) -> Result<()> {
        for rec in self.store.load_backfills()? {
            self.next_backfill = self.next_backfill.max(rec.id + 1);
            let recurrence = match rec.schedule.check() {
                Ok(r) => r,
                Err(e) => {
                    warn!(backfill = rec.id, error = %e, "stored backfill not loaded");
                    continue;
                }
            };
            let mut open = BTreeSet::new();
            for d in &rec.dates {
                let Some(id) = d.pipeline else { continue };
                let Some(p) = self.pipelines.get(&id) else {
                    continue;
                };
                if !p.rec.state.is_final() {
                    open.insert(id);
                    if rec.spec.count_against_schedule {
                        self.count_against_schedule(&rec.spec.schedule, id);
                    }
                }
            }
            self.backfills.insert(
                rec.id,
                BackfillEntry {
                    rec,
                    recurrence,
                    open,
                },
            );
        }
        Ok(())
    }

    fn count_against_schedule(&mut self, schedule: &str, id: PipelineId) {
        let seq = self.pipelines.get(&id).map(|p| p.rec.seq);
        if let (Some(seq), Some(e)) = (seq, self.schedules.get_mut(schedule)) {
            e.count_run(seq, id);
        }
    }

    /// Answers the backfill requests of [`ScheduleRequest`].
    pub(super) fn backfill_request(&mut self, req: ScheduleRequest) -> Result<Reply> {
        let now = self.clock.wall_ms();
        Ok(match req {
            ScheduleRequest::Backfill(spec) => self.start_backfill(spec, now)?,
            ScheduleRequest::Backfills => Reply::Backfills(
                self.backfills
                    .values()
                    .rev()
                    .map(|b| self.backfill_status(b))
                    .collect(),
            ),
            ScheduleRequest::BackfillShow { id } => match self.backfills.get(&id) {
                Some(b) => Reply::Backfills(vec![self.backfill_status(b)]),
                None => Reply::Error(ProtocolError::UnknownBackfill(id)),
            },
            ScheduleRequest::BackfillCancel { id } => {
                let Some(b) = self.backfills.get_mut(&id) else {
                    return Ok(Reply::Error(ProtocolError::UnknownBackfill(id)));
                };
                if b.rec.state == BackfillState::Running {
                    b.rec.state = BackfillState::Cancelled;
                    b.rec.finished_ms = Some(now);
                    self.dirty_backfills.insert(id);
                    info!(backfill = id, "backfill cancelled");
                    let open: Vec<PipelineId> = b.open.iter().copied().collect();
                    for run in open {
                        self.cancel(run)?;
                    }
                }
                Reply::Backfills(vec![self.backfill_status(&self.backfills[&id])])
            }
            _ => Reply::Error(ProtocolError::Refused("not a backfill request".into())),
        })
    }

    fn start_backfill(&mut self, spec: BackfillSpec, now: u64) -> Result<Reply> {
        let invalid = |m: String| Ok(Reply::Error(ProtocolError::InvalidSchedule(m)));
        let Some(schedule) = self.schedule_record(&spec.schedule) else {
            return Ok(Reply::Error(ProtocolError::UnknownSchedule(spec.schedule)));
        };
        let schedule = schedule.clone();
        if spec.from_ms > spec.to_ms {
            return invalid("the backfill's --from is after its --to".into());
        }
        if spec.max_active == 0 {
            return invalid("--max-active must be at least 1".into());
        }
        let recurrence = match schedule.check() {
            Ok(r) => r,
            Err(e) => return invalid(e.to_string()),
        };
        let outside = schedule.start_ms.is_some_and(|s| spec.from_ms < s)
            || schedule.end_ms.is_some_and(|e| spec.to_ms > e);
        if outside {
            let show = |t: Option<u64>| t.map_or("-".into(), |t| recurrence.format(t));
            return invalid(format!(
                "the backfill {}..{} is outside the schedule's start..end {}..{}",
                recurrence.format(spec.from_ms),
                recurrence.format(spec.to_ms),
                show(schedule.start_ms),
                show(schedule.end_ms)
            ));
        }
        let mut ticks = recurrence.ticks(spec.from_ms, spec.to_ms, MAX_BACKFILL_DATES + 1);
        if ticks.len() > MAX_BACKFILL_DATES {
            return invalid(format!(
                "the backfill covers more than {MAX_BACKFILL_DATES} ticks: split it"
            ));
        }
        if ticks.is_empty() {
            return invalid("the schedule has no tick in that range".into());
        }
        if spec.backwards {
            ticks.reverse();
        }
        let latest = self.latest_runs(&spec.schedule);
        let dates: Vec<TickRecord> = ticks
            .into_iter()
            .map(|t| {
                let state = latest.get(&t).copied();
                let note = (!spec.reprocess.reruns(state)).then(|| match state {
                    Some(s) if !s.is_final() => "has a run going".to_string(),
                    Some(s) => format!("has a run: {} (reprocess {})", s.as_str(), spec.reprocess),
                    None => unreachable!("a date without a run always gets one"),
                });
                TickRecord {
                    logical_date: t,
                    pipeline: None,
                    state: None,
                    note,
                }
            })
            .collect();
        let id = if spec.dry_run { 0 } else { self.next_backfill };
        let rec = BackfillRecord {
            id,
            state: if spec.dry_run {
                BackfillState::DryRun
            } else {
                BackfillState::Running
            },
            spec,
            schedule,
            created_ms: now,
            finished_ms: None,
            dates,
            next: 0,
        };
        let entry = BackfillEntry {
            rec,
            recurrence,
            open: BTreeSet::new(),
        };
        if entry.rec.spec.dry_run {
            return Ok(Reply::Backfills(vec![self.backfill_status(&entry)]));
        }
        self.next_backfill += 1;
        info!(backfill = id, schedule = %entry.rec.spec.schedule, dates = entry.rec.dates.len(), "backfill started");
        self.backfills.insert(id, entry);
        self.dirty_backfills.insert(id);
        self.serve_backfill(id)?;
        Ok(Reply::Backfills(vec![
            self.backfill_status(&self.backfills[&id])
        ]))
    }

    /// The state of the latest run of each logical date of `schedule`.
    fn latest_runs(&self, schedule: &str) -> BTreeMap<u64, PipelineState> {
        let mut latest = BTreeMap::new();
        // Walks the whole history (the store's, oldest first): a backfill's creation
        // is rare, and a later run of a date wins.
        let walked = self.each_record(|rec| {
            if let Some(o) = rec.origin.as_ref().filter(|o| o.schedule == schedule) {
                latest.insert(o.logical_date, rec.state);
            }
        });
        if let Err(e) = walked {
            warn!(%schedule, error = %e, "reading the history for a backfill failed; every date counts as not run");
        }
        latest
    }

    /// Makes runs for the backfill's next dates while it has room; ends it when every
    /// date is done.
    pub(super) fn serve_backfill(&mut self, id: u64) -> Result<()> {
        loop {
            let Some(b) = self.backfills.get(&id) else {
                return Ok(());
            };
            if b.rec.state != BackfillState::Running {
                return Ok(());
            }
            let next = b.rec.next as usize;
            if next >= b.rec.dates.len() {
                if b.open.is_empty() {
                    self.finish_backfill(id);
                }
                return Ok(());
            }
            if b.rec.dates[next].note.is_some() {
                if let Some(b) = self.backfills.get_mut(&id) {
                    b.rec.next += 1;
                }
                continue;
            }
            let mut room = (b.open.len() as u32) < b.rec.spec.max_active;
            if b.rec.spec.count_against_schedule {
                room &= self.schedule_has_room(&b.rec.spec.schedule);
            }
            if !room {
                return Ok(());
            }
            let date = b.rec.dates[next].logical_date;
            let run = self.make_backfill_run(id, date)?;
            if let Some(b) = self.backfills.get_mut(&id) {
                b.rec.dates[next].pipeline = run;
                if run.is_none() {
                    b.rec.dates[next].note = Some("refused: see the router's log".into());
                }
                b.rec.next += 1;
            }
            self.dirty_backfills.insert(id);
        }
    }

    fn make_backfill_run(&mut self, id: u64, date: u64) -> Result<Option<PipelineId>> {
        let b = &self.backfills[&id];
        let mut spec = super::schedules::run_spec(&b.rec.schedule.pipeline, &b.recurrence, date);
        spec.ignore_targets = b.rec.spec.reprocess == Reprocess::All && !b.rec.spec.respect_targets;
        let key = format!("pypelinin-backfill/{id}/{}/{date}", b.rec.created_ms);
        let run = PipelineId(Uuid::new_v5(&Uuid::NAMESPACE_URL, key.as_bytes()));
        let origin = RunOrigin {
            schedule: b.rec.spec.schedule.clone(),
            logical_date: date,
            kind: RunKind::Backfill,
            backfill: Some(id),
        };
        let counted = b.rec.spec.count_against_schedule;
        let schedule = b.rec.spec.schedule.clone();
        let made = self.submit_run(run, spec, origin)?;
        if let Some(run) = made {
            if let Some(b) = self.backfills.get_mut(&id) {
                b.open.insert(run);
            }
            if counted {
                self.count_against_schedule(&schedule, run);
            }
        }
        Ok(made)
    }

    fn finish_backfill(&mut self, id: u64) {
        let now = self.clock.wall_ms();
        let all_succeeded = {
            let b = &self.backfills[&id];
            b.rec
                .dates
                .iter()
                .filter_map(|d| d.pipeline)
                .all(|run| self.state_of(run) == Some(PipelineState::Succeeded))
        };
        if let Some(b) = self.backfills.get_mut(&id) {
            b.rec.state = if all_succeeded {
                BackfillState::Succeeded
            } else {
                BackfillState::Failed
            };
            b.rec.finished_ms = Some(now);
            info!(
                backfill = id,
                state = b.rec.state.as_str(),
                "backfill finished"
            );
        }
        self.dirty_backfills.insert(id);
    }

    /// A run of backfill `id` closed: room for its next date.
    pub(super) fn backfill_run_closed(&mut self, id: u64, run: PipelineId) -> Result<()> {
        if let Some(b) = self.backfills.get_mut(&id) {
            b.open.remove(&run);
            self.dirty_backfills.insert(id);
        }
        self.serve_backfill(id)
    }

    /// A run of backfill `id` was reopened by a retry.
    pub(super) fn backfill_run_reopened(&mut self, id: u64, run: PipelineId) {
        if let Some(b) = self.backfills.get_mut(&id) {
            if b.rec.state == BackfillState::Running {
                b.open.insert(run);
            }
        }
    }

    /// Running backfills that wait on the schedule's room get their turn.
    pub(super) fn serve_counted_backfills(&mut self, schedule: &str) -> Result<()> {
        let waiting: Vec<u64> = self
            .backfills
            .values()
            .filter(|b| {
                b.rec.state == BackfillState::Running
                    && b.rec.spec.count_against_schedule
                    && b.rec.spec.schedule == schedule
            })
            .map(|b| b.rec.id)
            .collect();
        for id in waiting {
            self.serve_backfill(id)?;
        }
        Ok(())
    }

    fn backfill_status(&self, b: &BackfillEntry) -> BackfillStatus {
        BackfillStatus {
            id: b.rec.id,
            spec: b.rec.spec.clone(),
            timezone: b.rec.schedule.timezone.clone(),
            state: b.rec.state,
            created_ms: b.rec.created_ms,
            finished_ms: b.rec.finished_ms,
            dates: b
                .rec
                .dates
                .iter()
                .map(|d| TickRecord {
                    state: d.pipeline.and_then(|id| self.state_of(id)),
                    ..d.clone()
                })
                .collect(),
        }
    }

    /// Writes the backfills changed this turn; part of [`RouterState::commit`].
    pub(super) fn write_backfills(&mut self) -> Result<()> {
        for id in std::mem::take(&mut self.dirty_backfills) {
            if let Some(b) = self.backfills.get(&id) {
                self.store.put_backfill(&b.rec)?;
            }
        }
        Ok(())
    }
}
