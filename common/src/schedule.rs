//! The pure rules of schedules: when a recurrence ticks, what an overrun policy does
//! at a tick, and which logical dates are due after the router was down.
//!
//! Nothing here holds state or reads a clock: every function takes the times it needs
//! (milliseconds since the Unix epoch, like the rest of the protocol), so the router's
//! schedule state machine and its tests can drive them with a clock they control.
//!
//! Cron parsing and time-zone arithmetic are not hand-written: `croner` parses the
//! expression (five fields, or six with seconds first) and walks it in an IANA zone from
//! `chrono-tz`, handling daylight-saving transitions as Vixie cron does. A fixed-time
//! tick that falls in a spring-forward gap runs at the first instant after the gap; a
//! fixed-time tick in a fall-back overlap runs once; an interval pattern (`*/15 * * * *`)
//! keeps its real-time spacing through both.
//!
//! A run's time slice follows Airflow 3's cron timetable: the run created at tick `t`
//! has `logical_date = t`, `interval_end = t` and `interval_start` = the tick before `t`,
//! so a daily 00:00 schedule's run at midnight processes the day that just ended.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, LocalResult, NaiveDate, NaiveTime, SecondsFormat, TimeZone, Utc};
pub use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds};
use croner::Cron;
use serde::{Deserialize, Serialize};

use crate::ids::PipelineId;
use crate::pipeline::PipelineSpec;
use crate::status::PipelineState;

/// At most this many ticks are listed by one call ([`Recurrence::ticks`],
/// [`due_ticks`]): a cron of every second over a year is 31 million ticks, which no
/// caller wants in memory. Callers that need more page with the last tick returned.
pub const MAX_TICKS_PER_CALL: usize = 100_000;

/// Why a schedule, or a time given for one, is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The cron expression does not parse.
    #[error("bad cron expression {cron:?}: {reason}")]
    BadCron {
        /// The expression as given.
        cron: String,
        /// What the parser said.
        reason: String,
    },
    /// The time zone is not an IANA name known to `chrono-tz`.
    #[error("unknown time zone {0:?} (expected an IANA name such as Europe/Paris or UTC)")]
    UnknownZone(String),
    /// A time is neither RFC 3339 nor a plain `YYYY-MM-DD` date.
    #[error("bad time {text:?}: expected RFC 3339 (2026-12-01T06:00:00Z) or a date (2026-12-01)")]
    BadTime {
        /// The text as given.
        text: String,
    },
    /// `end` is before `start`.
    #[error("end {end} is before start {start}")]
    EndBeforeStart {
        /// The start, RFC 3339.
        start: String,
        /// The end, RFC 3339.
        end: String,
    },
    /// The expression never matches a real time (for example the 30th of February).
    #[error("cron expression {0:?} never matches a real time")]
    NeverTicks(String),
    /// A schedule's name is empty, too long, or holds spaces or control characters.
    #[error(
        "bad schedule name {0:?}: 1 to {MAX_NAME_BYTES} bytes, no spaces or control characters"
    )]
    BadName(String),
    /// `max_running` is 0.
    #[error("max_running must be at least 1")]
    ZeroMaxRunning,
}

/// Longest schedule name, in bytes.
pub const MAX_NAME_BYTES: usize = 128;

/// A schedule as the user writes it: a pipeline template and when to run it. The JSON
/// form is what `pypelinin schedule add` sends and `schedule show --json` prints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScheduleSpec {
    /// Unique among the router's schedules.
    pub name: String,
    /// Cron expression, five fields or six with seconds first.
    pub cron: String,
    /// IANA zone the expression is read in; `None` is UTC.
    #[serde(default)]
    pub timezone: Option<String>,
    /// The template of every run; each run's `data` gets `logical_date`,
    /// `interval_start` and `interval_end` on top of the template's.
    pub pipeline: PipelineSpec,
    /// No tick before this (ms since the epoch).
    #[serde(default)]
    pub start_ms: Option<u64>,
    /// No tick after this (ms since the epoch).
    #[serde(default)]
    pub end_ms: Option<u64>,
    /// After downtime, run every missed tick (oldest first) instead of only the latest.
    #[serde(default)]
    pub catchup: bool,
    /// What a tick does while `max_running` runs are still going.
    #[serde(default)]
    pub overrun: OverrunPolicy,
    /// Most runs of this schedule going at once (backfills not counted). Also read
    /// as `max_active`, the name pipelines use for their own limit.
    #[serde(default = "one", alias = "max_active")]
    pub max_running: u32,
}

fn one() -> u32 {
    1
}

impl ScheduleSpec {
    /// Checks everything but the pipeline itself (which the router validates like any
    /// submission) and returns the parsed recurrence.
    pub fn check(&self) -> Result<Recurrence, ScheduleError> {
        let bad_name = self.name.is_empty()
            || self.name.len() > MAX_NAME_BYTES
            || self
                .name
                .chars()
                .any(|c| c.is_whitespace() || c.is_control());
        if bad_name {
            return Err(ScheduleError::BadName(self.name.clone()));
        }
        if self.max_running == 0 {
            return Err(ScheduleError::ZeroMaxRunning);
        }
        let recurrence = Recurrence::parse(&self.cron, self.timezone.as_deref())?;
        check_window(self.start_ms, self.end_ms, recurrence.zone())?;
        Ok(recurrence)
    }
}

/// How a scheduled pipeline came to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunKind {
    /// Made by a tick.
    Scheduled,
    /// Made by `schedule trigger`.
    Manual,
    /// Made by a backfill.
    Backfill,
}

/// The link from a pipeline back to the schedule that made it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunOrigin {
    /// The schedule's name.
    pub schedule: String,
    /// The tick the run belongs to (for a manual run, when it was triggered).
    pub logical_date: u64,
    /// How it was made.
    pub kind: RunKind,
    /// The backfill that made it, if one did.
    #[serde(default)]
    pub backfill: Option<u64>,
}

/// What became of one tick of a schedule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TickRecord {
    /// The tick.
    pub logical_date: u64,
    /// The run it made, if any.
    #[serde(default)]
    pub pipeline: Option<PipelineId>,
    /// The run's state when asked, if it made one.
    #[serde(default)]
    pub state: Option<PipelineState>,
    /// Why it made none (`skipped: 1 run still going`, ...).
    #[serde(default)]
    pub note: Option<String>,
}

/// A schedule as `schedule list` and `schedule show` see it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScheduleStatus {
    /// What the user asked for.
    pub spec: ScheduleSpec,
    /// Paused schedules do not tick; ticks missed while paused are not caught up.
    pub paused: bool,
    /// When it was added.
    pub created_ms: u64,
    /// The next ticks (up to 5), none once `end` is past.
    pub next_ticks: Vec<u64>,
    /// Its runs not yet final.
    pub running: Vec<PipelineId>,
    /// Ticks waiting for room (`delay` policies, catch-up beyond `max_running`).
    pub pending: Vec<u64>,
    /// Why the pending ticks have not started (`schedule max_running 1 reached`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    /// The latest ticks and what became of them, newest first.
    pub recent: Vec<TickRecord>,
}

/// A cron expression in a time zone: when a schedule ticks.
#[derive(Clone, Debug)]
pub struct Recurrence {
    cron: Cron,
    text: String,
    zone: Tz,
}

impl Recurrence {
    /// Parses `cron` (five fields, or six with seconds first; `@daily` and the like)
    /// in `timezone` (an IANA name; `None` means UTC). Refuses an expression that never
    /// ticks, so that a stored schedule always has a next tick or has ended.
    pub fn parse(cron: &str, timezone: Option<&str>) -> Result<Recurrence, ScheduleError> {
        let zone = parse_zone(timezone.unwrap_or("UTC"))?;
        let parsed = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(cron)
            .map_err(|e| ScheduleError::BadCron {
                cron: cron.to_string(),
                reason: e.to_string(),
            })?;
        let recurrence = Recurrence {
            cron: parsed,
            text: cron.to_string(),
            zone,
        };
        if recurrence.next_after(0).is_none() {
            return Err(ScheduleError::NeverTicks(cron.to_string()));
        }
        Ok(recurrence)
    }

    /// The expression as given.
    pub fn cron(&self) -> &str {
        &self.text
    }

    /// The zone the expression is read in.
    pub fn zone(&self) -> Tz {
        self.zone
    }

    /// The first tick strictly after `t_ms`; `None` if the expression never ticks again.
    pub fn next_after(&self, t_ms: u64) -> Option<u64> {
        let local = self.local(t_ms)?;
        let next = self.cron.find_next_occurrence(&local, false).ok()?;
        to_ms(&next)
    }

    /// The last tick strictly before `t_ms`, if there is one.
    pub fn previous_before(&self, t_ms: u64) -> Option<u64> {
        // Cron ticks fall on whole seconds; from inside a second, that second's own
        // start is already "before".
        let whole = t_ms - t_ms % 1000;
        let local = self.local(whole)?;
        let previous = self
            .cron
            .find_previous_occurrence(&local, whole < t_ms)
            .ok()?;
        to_ms(&previous)
    }

    /// Every tick `t` with `from_ms <= t <= to_ms`, oldest first, at most `limit` of
    /// them (and never more than [`MAX_TICKS_PER_CALL`]).
    pub fn ticks(&self, from_ms: u64, to_ms: u64, limit: usize) -> Vec<u64> {
        let limit = limit.min(MAX_TICKS_PER_CALL);
        let mut out = Vec::new();
        let mut cursor = match from_ms.checked_sub(1) {
            Some(before) => self.next_after(before),
            // `from_ms == 0`: the epoch itself may be a tick.
            None => self.first_from_epoch(),
        };
        while let Some(t) = cursor {
            if t > to_ms || out.len() >= limit {
                break;
            }
            out.push(t);
            cursor = self.next_after(t);
        }
        out
    }

    /// The time slice of the run made at `tick`: from the tick before it to the tick.
    /// The first tick a cron ever has (none before it) gets an empty slice.
    pub fn interval(&self, tick: u64) -> Interval {
        Interval {
            logical_date: tick,
            start: self.previous_before(tick).unwrap_or(tick),
            end: tick,
        }
    }

    /// `t_ms` as RFC 3339 in this recurrence's zone (its offset shown), as runs' `data`
    /// and the CLI print it.
    pub fn format(&self, t_ms: u64) -> String {
        format_in(t_ms, self.zone)
    }

    fn local(&self, t_ms: u64) -> Option<DateTime<Tz>> {
        let utc = Utc
            .timestamp_millis_opt(i64::try_from(t_ms).ok()?)
            .single()?;
        Some(utc.with_timezone(&self.zone))
    }

    fn first_from_epoch(&self) -> Option<u64> {
        let epoch = self.local(0)?;
        let first = self.cron.find_next_occurrence(&epoch, true).ok()?;
        to_ms(&first)
    }
}

/// The slice of time a scheduled run processes, as its `data` carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interval {
    /// The tick the run belongs to: its identity within the schedule.
    pub logical_date: u64,
    /// The tick before: where the slice starts (inclusive).
    pub start: u64,
    /// The tick itself: where the slice ends (exclusive).
    pub end: u64,
}

/// What to do at a tick when earlier runs of the schedule are still going: Pinball's
/// overrun policies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverrunPolicy {
    /// Drop the tick: no run for that logical date (the default).
    #[default]
    Skip,
    /// Start the new run beside the running ones, up to `max_running`; at that ceiling
    /// the tick waits for a run to end, as with `delay`.
    StartNew,
    /// Keep the tick, and start its run when a running one ends.
    Delay,
    /// Keep the tick, and start its run only once the previous run has succeeded: a
    /// failed or cancelled previous run holds the schedule until it is retried.
    DelayUntilSuccess,
    /// Cancel the oldest running runs, and start the new one at once.
    AbortRunning,
}

impl OverrunPolicy {
    /// Every policy, in the order the CLI lists them.
    pub const ALL: [OverrunPolicy; 5] = [
        OverrunPolicy::Skip,
        OverrunPolicy::StartNew,
        OverrunPolicy::Delay,
        OverrunPolicy::DelayUntilSuccess,
        OverrunPolicy::AbortRunning,
    ];

    /// The policy's name on the command line and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            OverrunPolicy::Skip => "skip",
            OverrunPolicy::StartNew => "start_new",
            OverrunPolicy::Delay => "delay",
            OverrunPolicy::DelayUntilSuccess => "delay_until_success",
            OverrunPolicy::AbortRunning => "abort_running",
        }
    }
}

impl fmt::Display for OverrunPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OverrunPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        OverrunPolicy::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<_> = OverrunPolicy::ALL.iter().map(|p| p.as_str()).collect();
                format!("unknown overrun policy {s:?} (one of {})", names.join(", "))
            })
    }
}

/// How the schedule's most recent finished run ended, as far as the policy cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LastOutcome {
    /// No run has finished yet.
    None,
    /// It succeeded.
    Succeeded,
    /// It failed or was cancelled.
    Unsuccessful,
}

/// What the router does with a due tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TickAction {
    /// Create the run now.
    Start,
    /// Cancel this many of the oldest running runs, then create the run now.
    AbortThenStart(u32),
    /// Keep the tick pending, and ask again when a run ends (or is retried).
    Hold,
    /// Drop the tick: its logical date gets no run.
    Skip,
}

/// Decides a due tick: `running` runs of the schedule are going (not counting
/// backfills unless the user asked), at most `max_running` may be (0 is read as 1),
/// and the last finished run ended as `last`.
pub fn on_tick(
    policy: OverrunPolicy,
    max_running: u32,
    running: u32,
    last: LastOutcome,
) -> TickAction {
    let max_running = max_running.max(1);
    if policy == OverrunPolicy::DelayUntilSuccess && last == LastOutcome::Unsuccessful {
        return TickAction::Hold;
    }
    if running < max_running {
        return TickAction::Start;
    }
    match policy {
        OverrunPolicy::Skip => TickAction::Skip,
        OverrunPolicy::StartNew | OverrunPolicy::Delay | OverrunPolicy::DelayUntilSuccess => {
            TickAction::Hold
        }
        OverrunPolicy::AbortRunning => TickAction::AbortThenStart(running + 1 - max_running),
    }
}

/// The logical dates due at `now_ms`: ticks after `after_ms` (the last tick the
/// schedule already dealt with, exclusive) up to `now_ms` and `end_ms` (inclusive).
/// With `catchup`, all of them oldest first (at most `limit`); without, only the
/// latest, so a router that was down for a week makes one run, not a week of them.
pub fn due_ticks(
    recurrence: &Recurrence,
    after_ms: u64,
    now_ms: u64,
    end_ms: Option<u64>,
    catchup: bool,
    limit: usize,
) -> Vec<u64> {
    let to = end_ms.map_or(now_ms, |end| end.min(now_ms));
    let Some(from) = after_ms.checked_add(1) else {
        return Vec::new();
    };
    if from > to {
        return Vec::new();
    }
    if catchup {
        return recurrence.ticks(from, to, limit);
    }
    // The latest tick at or before `to`, if it is after `after_ms`.
    let latest = match to.checked_add(1) {
        Some(past_to) => recurrence.previous_before(past_to),
        None => None,
    };
    match latest {
        Some(t) if t >= from && limit > 0 => vec![t],
        _ => Vec::new(),
    }
}

/// Parses an IANA zone name.
pub fn parse_zone(name: &str) -> Result<Tz, ScheduleError> {
    name.parse::<Tz>()
        .map_err(|_| ScheduleError::UnknownZone(name.to_string()))
}

/// Parses a time given to the CLI: RFC 3339, or a plain `YYYY-MM-DD` date meaning
/// midnight in `zone` (the first instant of that day, if a daylight-saving change
/// skips midnight).
pub fn parse_time(text: &str, zone: Tz) -> Result<u64, ScheduleError> {
    let bad = || ScheduleError::BadTime {
        text: text.to_string(),
    };
    let trimmed = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(trimmed) {
        return u64::try_from(t.timestamp_millis()).map_err(|_| bad());
    }
    let date = NaiveDate::parse_from_str(trimmed, "%Y-%m-%d").map_err(|_| bad())?;
    let mut local = date.and_time(NaiveTime::MIN);
    // A gap is at most a few hours; step through it a minute at a time.
    for _ in 0..24 * 60 {
        match zone.from_local_datetime(&local) {
            LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => {
                return u64::try_from(t.timestamp_millis()).map_err(|_| bad());
            }
            LocalResult::None => local += chrono::Duration::minutes(1),
        }
    }
    Err(bad())
}

/// Checks that `end` is not before `start`, when both are given.
pub fn check_window(start: Option<u64>, end: Option<u64>, zone: Tz) -> Result<(), ScheduleError> {
    match (start, end) {
        (Some(start), Some(end)) if end < start => Err(ScheduleError::EndBeforeStart {
            start: format_in(start, zone),
            end: format_in(end, zone),
        }),
        _ => Ok(()),
    }
}

/// `t_ms` as RFC 3339 in `zone`, with seconds (and milliseconds only when non-zero).
pub fn format_in(t_ms: u64, zone: Tz) -> String {
    let Some(utc) = i64::try_from(t_ms)
        .ok()
        .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
    else {
        return t_ms.to_string();
    };
    utc.with_timezone(&zone)
        .to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn to_ms(t: &DateTime<Tz>) -> Option<u64> {
    u64::try_from(t.timestamp_millis()).ok()
}

#[cfg(test)]
#[path = "schedule_tests.rs"]
mod tests;

/// What a backfill does with a logical date that already has a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reprocess {
    /// Leave it: only dates without a run get one (the default).
    #[default]
    None,
    /// Run it again if its latest run failed or was cancelled.
    Failed,
    /// Run every date again.
    All,
}

impl Reprocess {
    /// Every mode, in the order the CLI lists them.
    pub const ALL: [Reprocess; 3] = [Reprocess::None, Reprocess::Failed, Reprocess::All];

    /// The mode's name on the command line and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Reprocess::None => "none",
            Reprocess::Failed => "failed",
            Reprocess::All => "all",
        }
    }

    /// Whether a date whose latest run ended in `latest` (`None`: no run) gets a new
    /// run. A date whose run is still going never does.
    pub fn reruns(self, latest: Option<PipelineState>) -> bool {
        match latest {
            None => true,
            Some(s) if !s.is_final() => false,
            Some(PipelineState::Succeeded) => self == Reprocess::All,
            Some(_) => self != Reprocess::None,
        }
    }
}

impl fmt::Display for Reprocess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Reprocess {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reprocess::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("unknown reprocess mode {s:?} (one of none, failed, all)"))
    }
}

/// Most logical dates one backfill covers: a month of every-second ticks is 2.6
/// million runs, more than anyone means to ask for by mistake.
pub const MAX_BACKFILL_DATES: usize = 100_000;

/// A backfill as the user asks for it: a schedule's pipeline over a range of its ticks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackfillSpec {
    /// The schedule.
    pub schedule: String,
    /// First logical date considered (inclusive).
    pub from_ms: u64,
    /// Last logical date considered (inclusive).
    pub to_ms: u64,
    /// What to do with dates that already have a run.
    #[serde(default)]
    pub reprocess: Reprocess,
    /// Most of its runs going at once.
    #[serde(default = "one")]
    pub max_active: u32,
    /// Newest date first.
    #[serde(default)]
    pub backwards: bool,
    /// List what would run; create nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Count its runs against the schedule's own `max_running` too.
    #[serde(default)]
    pub count_against_schedule: bool,
    /// With `reprocess: all`, still skip jobs whose `target` exists (by default such a
    /// backfill runs every job again: that is what reprocessing all asks).
    #[serde(default)]
    pub respect_targets: bool,
}

/// Where a backfill is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackfillState {
    /// Only listed (`--dry-run`): nothing was created.
    DryRun,
    /// Runs are going or waiting.
    Running,
    /// Every run it made succeeded.
    Succeeded,
    /// Every run ended, and some did not succeed.
    Failed,
    /// Cancelled: no new runs, its running ones cancelled.
    Cancelled,
}

impl BackfillState {
    /// Its name on the command line and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            BackfillState::DryRun => "dry_run",
            BackfillState::Running => "running",
            BackfillState::Succeeded => "succeeded",
            BackfillState::Failed => "failed",
            BackfillState::Cancelled => "cancelled",
        }
    }

    /// Whether it will change no more.
    pub fn is_final(self) -> bool {
        self != BackfillState::Running
    }
}

/// A backfill as `backfill list` and `backfill show` see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackfillStatus {
    /// Its number, unique in the router.
    pub id: u64,
    /// What was asked.
    pub spec: BackfillSpec,
    /// The schedule's time zone, in which its dates read best.
    #[serde(default)]
    pub timezone: Option<String>,
    /// Where it is.
    pub state: BackfillState,
    /// When it was asked for.
    pub created_ms: u64,
    /// When it ended.
    #[serde(default)]
    pub finished_ms: Option<u64>,
    /// Every date it covers, in the order it runs them: its run and that run's state,
    /// or why it gets none (`has a run (reprocess none)`).
    pub dates: Vec<TickRecord>,
}

impl BackfillStatus {
    /// Dates with a run that ended, and dates that get a run: the progress bar.
    pub fn progress(&self) -> (usize, usize) {
        let runs = self.dates.iter().filter(|d| d.note.is_none());
        let (mut done, mut total) = (0, 0);
        for d in runs {
            total += 1;
            if d.state.is_some_and(|s| s.is_final()) {
                done += 1;
            }
        }
        (done, total)
    }
}
