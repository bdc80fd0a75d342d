//! Schedules in the state machine: ticks make runs, each overrun policy, catch-up
//! across a restart, pause, remove, trigger, and refusals. The rig's clock starts at
//! 1,000 s past the epoch; an every-second cron ticks at each whole second.

use std::collections::BTreeSet;
use std::time::Duration;

use pypelinin_common::protocol::{Advance, JobRef, ProtocolError, Reply, Request, ScheduleRequest};
use pypelinin_common::schedule::{OverrunPolicy, RunKind, ScheduleSpec, ScheduleStatus};
use pypelinin_common::status::{JobState, PipelineState};
use pypelinin_common::PipelineId;

use super::{single, Rig, CLIENT};

const EVERY_SECOND: &str = "* * * * * *";

pub(super) fn spec(name: &str, overrun: OverrunPolicy, max_running: u32) -> ScheduleSpec {
    ScheduleSpec {
        name: name.into(),
        cron: EVERY_SECOND.into(),
        timezone: None,
        pipeline: single(),
        start_ms: None,
        end_ms: None,
        catchup: false,
        overrun,
        max_running,
    }
}

impl Rig {
    pub(super) fn schedule(&mut self, req: ScheduleRequest) -> Reply {
        self.send(CLIENT, Request::Schedule(req))
    }

    pub(super) fn add_schedule(&mut self, spec: ScheduleSpec) -> ScheduleStatus {
        match self.schedule(ScheduleRequest::Add(spec)) {
            Reply::Schedules(mut l) => l.remove(0),
            other => panic!("{other:?}"),
        }
    }

    pub(super) fn show(&mut self, name: &str) -> ScheduleStatus {
        match self.schedule(ScheduleRequest::Show { name: name.into() }) {
            Reply::Schedules(mut l) => l.remove(0),
            other => panic!("{other:?}"),
        }
    }

    /// Lets `secs` seconds pass, one event-loop turn per second.
    pub(super) fn seconds(&mut self, secs: u64) {
        for _ in 0..secs {
            self.clock.advance(Duration::from_secs(1));
            self.turn();
        }
    }

    /// Runs of schedule `name`, oldest first: (logical date, pipeline, state).
    pub(super) fn runs(&mut self, name: &str) -> Vec<(u64, PipelineId, PipelineState)> {
        let list = match self.send(
            CLIENT,
            Request::List {
                limit: 1_000,
                state: None,
                schedule: Some(name.into()),
                before: None,
            },
        ) {
            Reply::List(l) => l,
            other => panic!("{other:?}"),
        };
        let mut runs: Vec<_> = list
            .into_iter()
            .map(|p| {
                (
                    p.origin.expect("a run has an origin").logical_date,
                    p.id,
                    p.state,
                )
            })
            .collect();
        runs.sort_by_key(|(t, id, _)| (*t, *id));
        runs
    }

    pub(super) fn open_runs(&mut self, name: &str) -> Vec<PipelineId> {
        self.runs(name)
            .into_iter()
            .filter(|(_, _, s)| !s.is_final())
            .map(|(_, id, _)| id)
            .collect()
    }

    /// Runs the single job of run `id` to success through the pipeliner and broker.
    pub(super) fn finish_run(&mut self, id: PipelineId) {
        self.advance(Advance {
            pipeline: id,
            enqueue: vec![0],
            close_on_success: true,
            ..Advance::default()
        });
        // The latest attempt (a retried run was assigned again). The router queues a
        // run's job when the pipeliner takes it: one started before a restart is still
        // its broker's, and reported by it.
        let job = match self
            .assigned_for(id)
            .into_iter()
            .max_by_key(|a| a.job.attempt)
        {
            Some(a) => a.job,
            None => {
                let status = self.status(id);
                let j = status.jobs.values().next().expect("one job");
                assert_eq!(j.state, JobState::Running, "the run's job was assigned");
                JobRef {
                    pipeline: id,
                    job: 0,
                    attempt: j.attempts,
                }
            }
        };
        self.succeed(job);
        assert_eq!(self.pipeline_state(id), PipelineState::Succeeded);
    }

    pub(super) fn cancel_run(&mut self, id: PipelineId) {
        self.send(CLIENT, Request::Cancel { id });
        assert_eq!(self.pipeline_state(id), PipelineState::Cancelled);
    }
}

fn logical_dates(runs: &[(u64, PipelineId, PipelineState)]) -> Vec<u64> {
    runs.iter().map(|(t, _, _)| *t).collect()
}

#[test]
fn each_tick_makes_a_run_whose_data_holds_its_interval() {
    let mut r = Rig::with_peers(4);
    let added = r.add_schedule(spec("s", OverrunPolicy::StartNew, 10));
    assert_eq!(added.next_ticks.len(), 5);
    assert_eq!(added.next_ticks[0], 1_001_000);
    r.seconds(3);
    let runs = r.runs("s");
    assert_eq!(logical_dates(&runs), vec![1_001_000, 1_002_000, 1_003_000]);
    let spec = match r.send(CLIENT, Request::Spec { id: runs[1].1 }) {
        Reply::Spec(s) => s,
        other => panic!("{other:?}"),
    };
    assert_eq!(spec.data["logical_date"], "1970-01-01T00:16:42Z");
    assert_eq!(spec.data["interval_start"], "1970-01-01T00:16:41Z");
    assert_eq!(spec.data["interval_end"], "1970-01-01T00:16:42Z");
    // Unscheduled pipelines are not in the schedule's list.
    r.submit(single());
    assert_eq!(r.runs("s").len(), 3);
    let shown = r.show("s");
    assert_eq!(shown.running.len(), 3);
    assert_eq!(shown.recent.len(), 3);
    assert_eq!(shown.recent[0].logical_date, 1_003_000, "newest first");
}

#[test]
fn skip_drops_a_tick_while_a_run_goes_then_starts_again() {
    let mut r = Rig::with_peers(1);
    r.add_schedule(spec("s", OverrunPolicy::Skip, 1));
    r.seconds(3);
    let runs = r.runs("s");
    assert_eq!(
        logical_dates(&runs),
        vec![1_001_000],
        "ticks 2 and 3 skipped"
    );
    let shown = r.show("s");
    assert!(shown.recent[0]
        .note
        .as_deref()
        .is_some_and(|n| n.starts_with("skipped")));
    r.finish_run(runs[0].1);
    r.seconds(1);
    assert_eq!(logical_dates(&r.runs("s")), vec![1_001_000, 1_004_000]);
}

#[test]
fn start_new_runs_side_by_side_up_to_max_running_then_waits() {
    let mut r = Rig::with_peers(4);
    r.add_schedule(spec("s", OverrunPolicy::StartNew, 2));
    r.seconds(3);
    assert_eq!(logical_dates(&r.runs("s")), vec![1_001_000, 1_002_000]);
    assert_eq!(r.show("s").pending, vec![1_003_000]);
    assert_eq!(
        r.show("s").waiting_for.as_deref(),
        Some("schedule max_running 2 reached")
    );
    let first = r.runs("s")[0].1;
    r.cancel_run(first);
    assert_eq!(
        logical_dates(&r.runs("s")),
        vec![1_001_000, 1_002_000, 1_003_000],
        "the waiting tick started as soon as a run ended"
    );
    assert_eq!(r.open_runs("s").len(), 2);
}

#[test]
fn delay_keeps_every_tick_and_starts_each_when_the_previous_ends() {
    let mut r = Rig::with_peers(1);
    r.add_schedule(spec("s", OverrunPolicy::Delay, 1));
    r.seconds(3);
    assert_eq!(logical_dates(&r.runs("s")), vec![1_001_000]);
    assert_eq!(r.show("s").pending, vec![1_002_000, 1_003_000]);
    let first = r.runs("s")[0].1;
    r.finish_run(first);
    let runs = r.runs("s");
    assert_eq!(logical_dates(&runs), vec![1_001_000, 1_002_000]);
    r.cancel_run(runs[1].1);
    // A failed or cancelled run makes room too: delay does not look at outcomes.
    assert_eq!(logical_dates(&r.runs("s")).len(), 3);
}

#[test]
fn delay_until_success_holds_after_a_failure_until_a_retry_succeeds() {
    // Two slots: the cancelled first attempt holds one until the broker reports it.
    let mut r = Rig::with_peers(2);
    r.add_schedule(spec("s", OverrunPolicy::DelayUntilSuccess, 1));
    r.seconds(1);
    let first = r.runs("s")[0].1;
    r.cancel_run(first);
    r.seconds(2);
    assert_eq!(r.runs("s").len(), 1, "held although nothing runs");
    assert_eq!(r.show("s").pending, vec![1_002_000, 1_003_000]);
    let why = r.show("s").waiting_for.unwrap();
    assert!(why.starts_with("delay_until_success: held"), "{why}");
    // The user retries the failed run; once it succeeds, the held ticks go.
    match r.send(
        CLIENT,
        Request::Retry {
            id: first,
            jobs: vec![],
        },
    ) {
        Reply::Status(_) => {}
        other => panic!("{other:?}"),
    }
    r.finish_run(first);
    let runs = r.runs("s");
    assert_eq!(logical_dates(&runs), vec![1_001_000, 1_002_000]);
    assert_eq!(r.show("s").pending, vec![1_003_000]);
}

#[test]
fn abort_running_cancels_the_running_run_and_starts_the_new_one() {
    let mut r = Rig::with_peers(1);
    r.add_schedule(spec("s", OverrunPolicy::AbortRunning, 1));
    r.seconds(2);
    let runs = r.runs("s");
    assert_eq!(logical_dates(&runs), vec![1_001_000, 1_002_000]);
    assert_eq!(runs[0].2, PipelineState::Cancelled);
    assert!(!runs[1].2.is_final());
    assert!(r.show("s").pending.is_empty());
}

#[test]
fn catchup_after_downtime_makes_every_missed_run_oldest_first_within_max_running() {
    let mut r = Rig::with_peers(1);
    let mut s = spec("s", OverrunPolicy::Skip, 1);
    s.catchup = true;
    r.add_schedule(s);
    r.seconds(1);
    let first = r.runs("s")[0].1;
    r.finish_run(first);
    // The router is down for five seconds.
    let mut r = r.restart();
    r.clock.advance(Duration::from_secs(5));
    r.turn();
    r.pipeliner();
    assert_eq!(logical_dates(&r.runs("s")), vec![1_001_000, 1_002_000]);
    assert_eq!(
        r.show("s").pending,
        vec![1_003_000, 1_004_000, 1_005_000, 1_006_000]
    );
    r.broker(super::BROKER, super::BROKER_NAME, 1, 0);
    for expected in [1_003_000, 1_004_000, 1_005_000, 1_006_000] {
        let open = r.open_runs("s");
        assert_eq!(open.len(), 1);
        r.finish_run(open[0]);
        assert_eq!(*logical_dates(&r.runs("s")).last().unwrap(), expected);
    }
}

#[test]
fn without_catchup_downtime_makes_only_the_latest_run() {
    let mut r = Rig::with_peers(1);
    r.add_schedule(spec("s", OverrunPolicy::Skip, 1));
    let mut r = r.restart();
    r.clock.advance(Duration::from_millis(5_500));
    r.turn();
    assert_eq!(logical_dates(&r.runs("s")), vec![1_005_000]);
    assert!(r.show("s").pending.is_empty());
}

#[test]
fn a_tick_never_makes_two_runs_across_restarts() {
    let mut r = Rig::with_peers(8);
    r.add_schedule(spec("s", OverrunPolicy::StartNew, 100));
    for _ in 0..5 {
        r.seconds(2);
        r = r.restart();
        r.pipeliner();
        r.broker(super::BROKER, super::BROKER_NAME, 8, 0);
    }
    let dates = logical_dates(&r.runs("s"));
    let unique: BTreeSet<u64> = dates.iter().copied().collect();
    assert_eq!(dates.len(), unique.len(), "{dates:?}");
    assert_eq!(
        dates,
        (1..=10).map(|s| 1_000_000 + s * 1000).collect::<Vec<_>>()
    );
}

#[test]
fn paused_schedules_do_not_tick_and_resume_without_making_up() {
    let mut r = Rig::with_peers(4);
    r.add_schedule(spec("s", OverrunPolicy::StartNew, 10));
    r.seconds(1);
    let paused = r.schedule(ScheduleRequest::Pause { name: "s".into() });
    assert!(
        matches!(&paused, Reply::Schedules(l) if l[0].paused),
        "{paused:?}"
    );
    assert!(r.show("s").paused);
    r.seconds(3);
    assert_eq!(r.runs("s").len(), 1);
    // Paused survives a restart.
    let mut r = r.restart();
    r.turn();
    assert!(r.show("s").paused);
    r.schedule(ScheduleRequest::Resume { name: "s".into() });
    r.seconds(1);
    assert_eq!(logical_dates(&r.runs("s")), vec![1_001_000, 1_005_000]);
}

#[test]
fn a_removed_schedule_stops_and_its_runs_stay() {
    let mut r = Rig::with_peers(4);
    r.add_schedule(spec("s", OverrunPolicy::StartNew, 10));
    r.seconds(2);
    match r.schedule(ScheduleRequest::Remove { name: "s".into() }) {
        Reply::Schedules(l) => assert_eq!(l[0].spec.name, "s"),
        other => panic!("{other:?}"),
    }
    r.seconds(2);
    assert_eq!(r.runs("s").len(), 2);
    let mut r = r.restart();
    r.turn();
    let shown = r.schedule(ScheduleRequest::Show { name: "s".into() });
    assert!(
        matches!(&shown, Reply::Error(ProtocolError::UnknownSchedule(n)) if n == "s"),
        "{shown:?}"
    );
    // The name can be used again.
    r.add_schedule(spec("s", OverrunPolicy::StartNew, 10));
}

#[test]
fn trigger_makes_a_manual_run_now() {
    let mut r = Rig::with_peers(4);
    let mut s = spec("s", OverrunPolicy::Skip, 1);
    s.cron = "0 0 * * *".into();
    r.add_schedule(s);
    r.clock.advance(Duration::from_millis(1_500));
    let id = match r.schedule(ScheduleRequest::Trigger { name: "s".into() }) {
        Reply::Submitted { id } => id,
        other => panic!("{other:?}"),
    };
    let list = match r.send(
        CLIENT,
        Request::List {
            limit: 10,
            state: None,
            schedule: Some("s".into()),
            before: None,
        },
    ) {
        Reply::List(l) => l,
        other => panic!("{other:?}"),
    };
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].id, id);
    let origin = list[0].origin.clone().unwrap();
    assert_eq!(origin.kind, RunKind::Manual);
    assert_eq!(origin.logical_date, 1_001_500);
    let unknown = r.schedule(ScheduleRequest::Trigger { name: "t".into() });
    assert!(
        matches!(&unknown, Reply::Error(ProtocolError::UnknownSchedule(n)) if n == "t"),
        "{unknown:?}"
    );
}

#[test]
fn no_tick_after_end_and_none_before_start() {
    let mut r = Rig::with_peers(4);
    let mut s = spec("s", OverrunPolicy::StartNew, 10);
    s.start_ms = Some(1_003_000);
    s.end_ms = Some(1_004_000);
    let added = r.add_schedule(s);
    assert_eq!(added.next_ticks, vec![1_003_000, 1_004_000]);
    r.seconds(6);
    assert_eq!(logical_dates(&r.runs("s")), vec![1_003_000, 1_004_000]);
    assert!(r.show("s").next_ticks.is_empty());
}

#[test]
fn bad_schedules_are_refused_with_the_reason() {
    let mut r = Rig::new();
    let refused = |r: &mut Rig, s: ScheduleSpec| match r.schedule(ScheduleRequest::Add(s)) {
        Reply::Error(ProtocolError::InvalidSchedule(m)) => m,
        other => panic!("{other:?}"),
    };
    let mut s = spec("s", OverrunPolicy::Skip, 1);
    s.cron = "61 * * * *".into();
    assert!(refused(&mut r, s).contains("61 * * * *"));
    let mut s = spec("s", OverrunPolicy::Skip, 1);
    s.timezone = Some("Nowhere/City".into());
    assert!(refused(&mut r, s).contains("Nowhere/City"));
    let mut s = spec("s", OverrunPolicy::Skip, 1);
    (s.start_ms, s.end_ms) = (Some(2_000_000), Some(1_000_000));
    assert!(refused(&mut r, s).contains("before start"));
    let mut s = spec("s", OverrunPolicy::Skip, 1);
    s.pipeline = s.pipeline.job("b", "W", &["c"]).job("c", "W", &["b"]);
    assert!(refused(&mut r, s).contains("pipeline is invalid"));
    let mut s = spec("has space", OverrunPolicy::Skip, 1);
    s.name = "has space".into();
    assert!(refused(&mut r, s).contains("has space"));
    r.add_schedule(spec("s", OverrunPolicy::Skip, 1));
    assert!(refused(&mut r, spec("s", OverrunPolicy::Skip, 1)).contains("exists"));
    match r.schedule(ScheduleRequest::List) {
        Reply::Schedules(l) => assert_eq!(l.len(), 1, "nothing refused was added"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_daily_schedule_in_paris_runs_once_a_day_across_both_dst_changes() {
    use pypelinin_common::schedule::{parse_time, Tz};
    let utc = |t: &str| parse_time(t, Tz::UTC).unwrap();
    for (start, want) in [
        // Spring forward on 2026-03-29: 02:30 does not exist; the run is at 03:00 CEST.
        (
            "2026-03-27T12:00:00Z",
            [
                "2026-03-28T01:30:00Z",
                "2026-03-29T01:00:00Z",
                "2026-03-30T00:30:00Z",
            ],
        ),
        // Fall back on 2026-10-25: 02:30 happens twice; one run, at the first.
        (
            "2026-10-23T12:00:00Z",
            [
                "2026-10-24T00:30:00Z",
                "2026-10-25T00:30:00Z",
                "2026-10-26T01:30:00Z",
            ],
        ),
    ] {
        let mut r = Rig::at(utc(start));
        let mut s = spec("paris", OverrunPolicy::StartNew, 10);
        s.cron = "30 2 * * *".into();
        s.timezone = Some("Europe/Paris".into());
        r.add_schedule(s);
        // Three days, an hour at a time.
        for _ in 0..72 {
            r.clock.advance(Duration::from_secs(3600));
            r.turn();
        }
        let dates = logical_dates(&r.runs("paris"));
        let want: Vec<u64> = want.iter().map(|t| utc(t)).collect();
        assert_eq!(dates, want, "from {start}");
        let run = r.runs("paris")[1].1;
        let spec = match r.send(CLIENT, Request::Spec { id: run }) {
            Reply::Spec(s) => s,
            other => panic!("{other:?}"),
        };
        // The run's dates are written in the zone, with the offset of the day.
        let date = spec.data["logical_date"].as_str().unwrap();
        assert!(
            date.ends_with("+02:00") || date.ends_with("+01:00"),
            "{date}"
        );
        assert_eq!(parse_time(date, Tz::UTC).unwrap(), want[1]);
    }
}
