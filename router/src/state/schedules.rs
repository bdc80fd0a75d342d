//! Schedules: pipelines made by the clock.
//!
//! A schedule is a stored [`ScheduleRecord`]: a pipeline template, a recurrence, and a
//! cursor, the last tick already dealt with. At every turn of the event loop
//! ([`RouterState::tick`]) each schedule whose next tick is due looks at the ticks
//! after its cursor ([`due_ticks`]): without catch-up only the latest, with it every
//! one. A single live tick goes through the overrun policy ([`on_tick`]); ticks being
//! caught up, and ticks a policy holds, wait in the schedule's `pending` queue and
//! start oldest first as runs end. The cursor moves in the same commit as the runs it
//! made, and a run's pipeline id is derived from the schedule and the tick, so a tick
//! never makes two runs, even across a kill -9 of the router.
//!
//! The rules themselves (cron in a zone, the policies, what is due) are pure functions
//! in `pypelinin_common::schedule`; this file keeps the state and applies them.

use std::collections::{BTreeMap, BTreeSet};

use pypelinin_common::protocol::{PipelineId, ProtocolError, Reply, ScheduleRequest};
use pypelinin_common::schedule::{
    due_ticks, on_tick, LastOutcome, Recurrence, RunKind, RunOrigin, ScheduleSpec, ScheduleStatus,
    TickAction, TickRecord,
};
use pypelinin_common::status::PipelineState;
use pypelinin_common::{Pipeline, PipelineSpec};
use tracing::{info, warn};
use uuid::Uuid;

use super::{Result, RouterState};
use crate::store::{ScheduleRecord, RECENT_TICKS};

/// Most ticks a schedule keeps waiting for room. Beyond it the oldest are dropped (and
/// said so in `schedule show`): a `delay` schedule whose runs are always slower than
/// its cron would otherwise grow without bound.
pub const MAX_PENDING_TICKS: usize = 1_000;

/// How many upcoming ticks `schedule show` lists.
pub const SHOWN_TICKS: usize = 5;

/// A schedule in memory: its record, its parsed recurrence, and what the router
/// derives from its pipelines (not stored: rebuilt at load).
pub(super) struct ScheduleEntry {
    rec: ScheduleRecord,
    recurrence: Recurrence,
    /// Its runs not yet final, by submission order (oldest first).
    open: BTreeSet<(u64, PipelineId)>,
    /// How its most recent finished run ended.
    last: LastOutcome,
    /// Its next tick after the cursor, within its window; `None` once it has ended.
    next_due: Option<u64>,
}

impl ScheduleEntry {
    fn new(rec: ScheduleRecord, recurrence: Recurrence) -> Self {
        let mut entry = ScheduleEntry {
            rec,
            recurrence,
            open: BTreeSet::new(),
            last: LastOutcome::None,
            next_due: None,
        };
        entry.refresh_next_due();
        entry
    }

    /// Counts run `id` (submission order `seq`) as one of the schedule's running runs.
    pub(super) fn count_run(&mut self, seq: u64, id: PipelineId) {
        self.open.insert((seq, id));
    }

    fn refresh_next_due(&mut self) {
        let next = self.recurrence.next_after(self.rec.cursor_ms);
        self.next_due = next.filter(|t| self.rec.spec.end_ms.is_none_or(|end| *t <= end));
    }

    fn remember(&mut self, tick: TickRecord) {
        self.rec.recent.push_back(tick);
        while self.rec.recent.len() > RECENT_TICKS {
            self.rec.recent.pop_front();
        }
    }
}

/// Schedules, by name.
pub(super) type Schedules = BTreeMap<String, ScheduleEntry>;

impl RouterState {
    /// Rebuilds the schedules at start-up, after the pipelines (whose origins say which
    /// runs are open and how the last one ended).
    pub(super) fn load_schedules(&mut self) -> Result<()> {
        for rec in self.store.load_schedules()? {
            match rec.spec.check() {
                Ok(recurrence) => {
                    let name = rec.spec.name.clone();
                    self.schedules
                        .insert(name, ScheduleEntry::new(rec, recurrence));
                }
                // A stored schedule that no longer parses (a zone dropped from the tz
                // database): kept on disk, not run, and said loudly.
                Err(e) => {
                    warn!(schedule = %rec.spec.name, error = %e, "stored schedule not loaded")
                }
            }
        }
        // The latest finished run of each schedule, noted while the history's records
        // were read at load (finished pipelines are not held in memory).
        let last_finished = std::mem::take(&mut self.tally.last_runs);
        for (seq, id) in &self.order {
            let p = &self.pipelines[id];
            let Some(origin) = &p.rec.origin else {
                continue;
            };
            let Some(entry) = self.schedules.get_mut(&origin.schedule) else {
                continue;
            };
            if origin.kind == RunKind::Backfill {
                continue; // counted (or not) by its backfill
            }
            if !p.rec.state.is_final() {
                entry.open.insert((*seq, *id));
            }
        }
        for (name, (_, state)) in last_finished {
            if let Some(entry) = self.schedules.get_mut(&name) {
                entry.last = outcome(state);
            }
        }
        self.recompute_schedules_due();
        Ok(())
    }

    /// Answers a `Schedule` request.
    pub(super) fn schedule_request(&mut self, req: ScheduleRequest) -> Result<Reply> {
        let now = self.clock.wall_ms();
        let reply = match req {
            ScheduleRequest::Backfill(_)
            | ScheduleRequest::Backfills
            | ScheduleRequest::BackfillShow { .. }
            | ScheduleRequest::BackfillCancel { .. } => return self.backfill_request(req),
            ScheduleRequest::Add(spec) => self.add_schedule(spec, now),
            ScheduleRequest::List => Reply::Schedules(
                self.schedules
                    .keys()
                    .map(|name| self.schedule_status(name, now))
                    .collect(),
            ),
            ScheduleRequest::Show { name } => self.with_schedule(&name, now, |_, _| {}),
            ScheduleRequest::Pause { name } => {
                self.with_schedule(&name, now, |e, _| e.rec.paused = true)
            }
            ScheduleRequest::Resume { name } => self.with_schedule(&name, now, |e, now| {
                if e.rec.paused {
                    // Ticks missed while paused are not made up.
                    e.rec.paused = false;
                    e.rec.cursor_ms = e.rec.cursor_ms.max(now);
                    e.refresh_next_due();
                }
            }),
            ScheduleRequest::Remove { name } => match self.schedules.remove(&name) {
                Some(mut entry) => {
                    entry.rec.removed = true;
                    self.store.put_schedule(&entry.rec)?;
                    info!(schedule = %name, "schedule removed");
                    let mut status = self.status_of(&entry, now);
                    status.next_ticks.clear();
                    Reply::Schedules(vec![status])
                }
                None => Reply::Error(ProtocolError::UnknownSchedule(name)),
            },
            ScheduleRequest::Trigger { name } => {
                if !self.schedules.contains_key(&name) {
                    Reply::Error(ProtocolError::UnknownSchedule(name))
                } else {
                    match self.make_run(&name, now, RunKind::Manual)? {
                        Some(id) => Reply::Submitted { id },
                        None => Reply::Error(ProtocolError::Refused(format!(
                            "schedule {name:?} could not make a run"
                        ))),
                    }
                }
            }
        };
        self.recompute_schedules_due();
        Ok(reply)
    }

    fn add_schedule(&mut self, spec: ScheduleSpec, now: u64) -> Reply {
        let recurrence = match spec.check() {
            Ok(r) => r,
            Err(e) => return Reply::Error(ProtocolError::InvalidSchedule(e.to_string())),
        };
        if self.schedules.contains_key(&spec.name) {
            return Reply::Error(ProtocolError::InvalidSchedule(format!(
                "a schedule named {:?} exists (remove it first)",
                spec.name
            )));
        }
        if let Err(e) = Pipeline::new(spec.pipeline.clone()) {
            return Reply::Error(ProtocolError::InvalidSchedule(format!(
                "its pipeline is invalid: {e}"
            )));
        }
        // Ticks strictly after the cursor are due: from now on, or from `start`, or,
        // with catch-up and a `start` in the past, from `start` on (Airflow's catchup).
        let before_start = spec.start_ms.map(|s| s.saturating_sub(1));
        let cursor_ms = match (spec.catchup, before_start) {
            (true, Some(s)) => s,
            (false, Some(s)) => s.max(now),
            (_, None) => now,
        };
        let name = spec.name.clone();
        let rec = ScheduleRecord {
            spec,
            paused: false,
            removed: false,
            created_ms: now,
            cursor_ms,
            pending: Default::default(),
            recent: Default::default(),
        };
        info!(schedule = %name, cron = %rec.spec.cron, "schedule added");
        self.schedules
            .insert(name.clone(), ScheduleEntry::new(rec, recurrence));
        self.dirty_schedules.insert(name.clone());
        Reply::Schedules(vec![self.schedule_status(&name, now)])
    }

    /// Applies `change` to the schedule `name` (marking it to be written) and replies
    /// with its status.
    fn with_schedule(
        &mut self,
        name: &str,
        now: u64,
        change: impl FnOnce(&mut ScheduleEntry, u64),
    ) -> Reply {
        let Some(entry) = self.schedules.get_mut(name) else {
            return Reply::Error(ProtocolError::UnknownSchedule(name.to_string()));
        };
        change(entry, now);
        self.dirty_schedules.insert(name.to_string());
        Reply::Schedules(vec![self.schedule_status(name, now)])
    }

    /// The spec of the schedule `name`, if there is one.
    pub(super) fn schedule_record(&self, name: &str) -> Option<&ScheduleSpec> {
        self.schedules.get(name).map(|e| &e.rec.spec)
    }

    /// Whether the schedule `name` runs fewer than its `max_running` (true if it is
    /// gone: a backfill outlives its schedule).
    pub(super) fn schedule_has_room(&self, name: &str) -> bool {
        self.schedules
            .get(name)
            .is_none_or(|e| (e.open.len() as u32) < e.rec.spec.max_running.max(1))
    }

    fn schedule_status(&self, name: &str, now: u64) -> ScheduleStatus {
        self.status_of(&self.schedules[name], now)
    }

    fn status_of(&self, e: &ScheduleEntry, now: u64) -> ScheduleStatus {
        let mut next_ticks = Vec::new();
        let mut t = e.rec.cursor_ms.max(now);
        while next_ticks.len() < SHOWN_TICKS {
            match e.recurrence.next_after(t) {
                Some(n) if e.rec.spec.end_ms.is_none_or(|end| n <= end) => {
                    next_ticks.push(n);
                    t = n;
                }
                _ => break,
            }
        }
        let recent = e
            .rec
            .recent
            .iter()
            .rev()
            .map(|tick| TickRecord {
                state: tick.pipeline.and_then(|id| self.state_of(id)),
                ..tick.clone()
            })
            .collect();
        ScheduleStatus {
            spec: e.rec.spec.clone(),
            paused: e.rec.paused,
            created_ms: e.rec.created_ms,
            next_ticks,
            running: e.open.iter().map(|(_, id)| *id).collect(),
            pending: e.rec.pending.iter().copied().collect(),
            waiting_for: (!e.rec.pending.is_empty()).then(|| {
                // The conditions of `serve_pending`, in its order.
                let max = e.rec.spec.max_running.max(1);
                if e.open.len() as u32 >= max {
                    format!("schedule max_running {max} reached")
                } else if e.rec.spec.overrun
                    == pypelinin_common::schedule::OverrunPolicy::DelayUntilSuccess
                    && e.last == LastOutcome::Unsuccessful
                {
                    "delay_until_success: held until a run succeeds (retry the failed one)"
                        .to_string()
                } else {
                    "starting at the next turn".to_string()
                }
            }),
            recent,
        }
    }

    /// Makes the runs of every due tick; called from the timer tick.
    pub(super) fn tick_schedules(&mut self) -> Result<()> {
        let now = self.clock.wall_ms();
        if self.schedules_due.is_none_or(|t| t > now) {
            return Ok(());
        }
        let due: Vec<String> = self
            .schedules
            .iter()
            .filter(|(_, e)| !e.rec.paused && e.next_due.is_some_and(|t| t <= now))
            .map(|(name, _)| name.clone())
            .collect();
        for name in due {
            self.fire(&name, now)?;
        }
        self.recompute_schedules_due();
        Ok(())
    }

    /// When the next schedule is due (ms since the epoch), to bound the poll.
    pub(super) fn next_schedule_due(&self) -> Option<u64> {
        self.schedules_due
    }

    /// Reads the earliest due tick again; after anything that adds, removes, pauses,
    /// resumes or fires a schedule.
    fn recompute_schedules_due(&mut self) {
        self.schedules_due = self
            .schedules
            .values()
            .filter(|e| !e.rec.paused)
            .filter_map(|e| e.next_due)
            .min();
    }

    fn fire(&mut self, name: &str, now: u64) -> Result<()> {
        let Some(e) = self.schedules.get_mut(name) else {
            return Ok(());
        };
        let ticks = due_ticks(
            &e.recurrence,
            e.rec.cursor_ms,
            now,
            e.rec.spec.end_ms,
            e.rec.spec.catchup,
            MAX_PENDING_TICKS,
        );
        let Some(&latest) = ticks.last() else {
            e.rec.cursor_ms = e.rec.cursor_ms.max(now);
            e.refresh_next_due();
            return Ok(());
        };
        e.rec.cursor_ms = latest;
        e.refresh_next_due();
        self.dirty_schedules.insert(name.to_string());
        if ticks.len() > 1 || !e.rec.pending.is_empty() {
            // Catching up, or ticks already waiting: in line, oldest first.
            e.rec.pending.extend(ticks);
        } else {
            let running = e.open.len() as u32;
            match on_tick(e.rec.spec.overrun, e.rec.spec.max_running, running, e.last) {
                TickAction::Start => e.rec.pending.push_back(latest),
                TickAction::Hold => e.rec.pending.push_back(latest),
                TickAction::Skip => {
                    let note = format!("skipped: {running} run(s) still going");
                    info!(schedule = %name, tick = %e.recurrence.format(latest), "{note}");
                    e.remember(TickRecord {
                        logical_date: latest,
                        pipeline: None,
                        state: None,
                        note: Some(note),
                    });
                }
                TickAction::AbortThenStart(n) => {
                    let oldest: Vec<PipelineId> =
                        e.open.iter().take(n as usize).map(|(_, id)| *id).collect();
                    e.rec.pending.push_back(latest);
                    for id in oldest {
                        info!(schedule = %name, pipeline = %id, "overrun: cancelling the running run");
                        self.cancel(id)?;
                    }
                }
            }
        }
        self.trim_pending(name);
        self.serve_pending(name)
    }

    fn trim_pending(&mut self, name: &str) {
        let Some(e) = self.schedules.get_mut(name) else {
            return;
        };
        while e.rec.pending.len() > MAX_PENDING_TICKS {
            if let Some(t) = e.rec.pending.pop_front() {
                let note = format!("dropped: more than {MAX_PENDING_TICKS} ticks waiting");
                warn!(schedule = %name, tick = %e.recurrence.format(t), "{note}");
                e.remember(TickRecord {
                    logical_date: t,
                    pipeline: None,
                    state: None,
                    note: Some(note),
                });
            }
        }
    }

    /// Starts waiting ticks, oldest first, while the schedule has room.
    fn serve_pending(&mut self, name: &str) -> Result<()> {
        loop {
            let Some(e) = self.schedules.get_mut(name) else {
                return Ok(());
            };
            let room = (e.open.len() as u32) < e.rec.spec.max_running.max(1);
            let held = e.rec.spec.overrun
                == pypelinin_common::schedule::OverrunPolicy::DelayUntilSuccess
                && e.last == LastOutcome::Unsuccessful;
            if !room || held {
                return Ok(());
            }
            let Some(tick) = e.rec.pending.pop_front() else {
                return Ok(());
            };
            self.dirty_schedules.insert(name.to_string());
            self.make_run(name, tick, RunKind::Scheduled)?;
        }
    }

    /// Creates the run of `name` for `logical_date`: the template with the tick's
    /// interval in its `data`, under an id derived from both, so that making it again
    /// (a crash before the cursor was stored) finds it instead.
    fn make_run(
        &mut self,
        name: &str,
        logical_date: u64,
        kind: RunKind,
    ) -> Result<Option<PipelineId>> {
        let Some(e) = self.schedules.get(name) else {
            return Ok(None);
        };
        let spec = run_spec(&e.rec.spec.pipeline, &e.recurrence, logical_date);
        let id = run_id(name, e.rec.created_ms, logical_date, kind);
        let origin = RunOrigin {
            schedule: name.to_string(),
            logical_date,
            kind,
            backfill: None,
        };
        let made = self.submit_run(id, spec, origin)?;
        let seq = made
            .and_then(|id| self.pipelines.get(&id))
            .filter(|p| !p.rec.state.is_final())
            .map(|p| p.rec.seq);
        if let Some(e) = self.schedules.get_mut(name) {
            if let (Some(id), Some(seq)) = (made, seq) {
                e.open.insert((seq, id));
                info!(schedule = %name, pipeline = %id, tick = %e.recurrence.format(logical_date), "scheduled run made");
            }
            e.remember(TickRecord {
                logical_date,
                pipeline: made,
                state: None,
                note: match (kind, made) {
                    (_, None) => Some("refused: see the router's log".into()),
                    (RunKind::Manual, _) => Some("triggered".into()),
                    _ => None,
                },
            });
            self.dirty_schedules.insert(name.to_string());
        }
        Ok(made)
    }

    /// Submits a run under `id` and links it to its schedule; `None` if refused
    /// (logged: the template was valid when the schedule was added).
    pub(super) fn submit_run(
        &mut self,
        id: PipelineId,
        spec: PipelineSpec,
        origin: RunOrigin,
    ) -> Result<Option<PipelineId>> {
        match self.submit(id, spec)? {
            Reply::Submitted { .. } => {}
            other => {
                warn!(schedule = %origin.schedule, reply = ?other, "scheduled run refused");
                return Ok(None);
            }
        }
        if let Some(p) = self.pipelines.get_mut(&id) {
            p.rec.origin = Some(origin);
            self.dirty_pipelines.insert(id);
        }
        Ok(Some(id))
    }

    /// A pipeline closed: if a schedule or backfill made it, it has room again.
    pub(super) fn schedule_run_closed(&mut self, id: PipelineId) -> Result<()> {
        let Some(p) = self.pipelines.get(&id) else {
            return Ok(());
        };
        let Some(origin) = &p.rec.origin else {
            return Ok(());
        };
        let (name, seq, state) = (origin.schedule.clone(), p.rec.seq, p.rec.state);
        let (kind, backfill) = (origin.kind, origin.backfill);
        if let Some(e) = self.schedules.get_mut(&name) {
            e.open.remove(&(seq, id));
            if kind != RunKind::Backfill {
                e.last = outcome(state);
            }
        }
        if let Some(b) = backfill {
            self.backfill_run_closed(b, id)?;
        }
        self.serve_pending(&name)?;
        self.serve_counted_backfills(&name)
    }

    /// A run of a schedule was reopened by a retry: it counts as running again.
    pub(super) fn schedule_run_reopened(&mut self, id: PipelineId) {
        let Some(p) = self.pipelines.get(&id) else {
            return;
        };
        let Some(origin) = &p.rec.origin else {
            return;
        };
        if let Some(b) = origin.backfill {
            self.backfill_run_reopened(b, id);
            return;
        }
        if let Some(e) = self.schedules.get_mut(&origin.schedule) {
            e.open.insert((p.rec.seq, id));
        }
    }

    /// Writes the schedules changed this turn; part of [`RouterState::commit`].
    pub(super) fn write_schedules(&mut self) -> Result<()> {
        for name in std::mem::take(&mut self.dirty_schedules) {
            if let Some(e) = self.schedules.get(&name) {
                self.store.put_schedule(&e.rec)?;
            }
        }
        Ok(())
    }
}

/// A run's spec: the template, with the tick's interval added to its `data` (RFC 3339
/// in the schedule's zone).
pub(super) fn run_spec(
    template: &PipelineSpec,
    recurrence: &Recurrence,
    logical_date: u64,
) -> PipelineSpec {
    let interval = recurrence.interval(logical_date);
    let mut spec = template.clone();
    for (key, t) in [
        ("logical_date", interval.logical_date),
        ("interval_start", interval.start),
        ("interval_end", interval.end),
    ] {
        spec.data
            .insert(key.into(), serde_json::Value::String(recurrence.format(t)));
    }
    spec
}

fn outcome(state: PipelineState) -> LastOutcome {
    if state == PipelineState::Succeeded {
        LastOutcome::Succeeded
    } else {
        LastOutcome::Unsuccessful
    }
}

/// The id of a schedule's run: the same schedule (name and creation time), tick and
/// kind always give the same id.
impl RouterState {
    /// Whether a run of schedule `name` for `logical_date` succeeded. A tick's and a
    /// trigger's run ids follow from the schedule and the date, and a backfill's runs
    /// are listed in it, so this reads a few records, wherever they are (finished runs
    /// are on disk only).
    pub(super) fn schedule_run_succeeded(&self, name: &str, logical_date: u64) -> bool {
        let succeeded = |id: PipelineId| self.state_of(id) == Some(PipelineState::Succeeded);
        let ticked = self.schedules.get(name).is_some_and(|e| {
            [RunKind::Scheduled, RunKind::Manual]
                .into_iter()
                .any(|kind| succeeded(run_id(name, e.rec.created_ms, logical_date, kind)))
        });
        ticked
            || self
                .backfills
                .values()
                .filter(|b| b.rec.spec.schedule == name)
                .flat_map(|b| &b.rec.dates)
                .filter(|d| d.logical_date == logical_date)
                .filter_map(|d| d.pipeline)
                .any(succeeded)
    }
}

fn run_id(name: &str, created_ms: u64, logical_date: u64, kind: RunKind) -> PipelineId {
    let key = format!("pypelinin-schedule/{name}/{created_ms}/{kind:?}/{logical_date}");
    PipelineId(Uuid::new_v5(&Uuid::NAMESPACE_URL, key.as_bytes()))
}
