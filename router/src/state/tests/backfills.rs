//! Backfills in the state machine: reprocess modes and dry runs, `max_active` and
//! order, not counting against the schedule (unless asked), cancel, restart, refusals.

use pypelinin_common::protocol::{ProtocolError, Reply, ScheduleRequest};
use pypelinin_common::schedule::{BackfillSpec, BackfillState, BackfillStatus, Reprocess};
use pypelinin_common::status::PipelineState;
use pypelinin_common::PipelineId;

use super::schedules::spec;
use super::Rig;
use pypelinin_common::schedule::OverrunPolicy;

const T1: u64 = 1_001_000;

fn backfill(from: u64, to: u64, reprocess: Reprocess) -> BackfillSpec {
    BackfillSpec {
        schedule: "s".into(),
        from_ms: from,
        to_ms: to,
        reprocess,
        max_active: 10,
        backwards: false,
        dry_run: false,
        count_against_schedule: false,
        respect_targets: false,
    }
}

impl Rig {
    fn backfill(&mut self, b: BackfillSpec) -> BackfillStatus {
        match self.schedule(ScheduleRequest::Backfill(b)) {
            Reply::Backfills(mut l) => l.remove(0),
            other => panic!("{other:?}"),
        }
    }

    fn backfill_show(&mut self, id: u64) -> BackfillStatus {
        match self.schedule(ScheduleRequest::BackfillShow { id }) {
            Reply::Backfills(mut l) => l.remove(0),
            other => panic!("{other:?}"),
        }
    }

    /// A paused every-second schedule `s` with runs for its first three ticks: the
    /// first succeeded, the second cancelled, the third still going.
    fn three_runs(&mut self) -> [PipelineId; 3] {
        self.add_schedule(spec("s", OverrunPolicy::StartNew, 10));
        self.seconds(3);
        self.schedule(ScheduleRequest::Pause { name: "s".into() });
        let runs = self.runs("s");
        assert_eq!(runs.len(), 3);
        let ids = [runs[0].1, runs[1].1, runs[2].1];
        self.finish_run(ids[0]);
        self.cancel_run(ids[1]);
        ids
    }
}

/// The backfill's dates: (logical date, gets a run).
fn plan(b: &BackfillStatus) -> Vec<(u64, bool)> {
    b.dates
        .iter()
        .map(|d| (d.logical_date, d.note.is_none()))
        .collect()
}

#[test]
fn reprocess_modes_decide_which_dates_with_runs_run_again_and_dry_runs_create_nothing() {
    let mut r = Rig::with_peers(8);
    r.three_runs();
    let dates = |reprocess| {
        let mut b = backfill(T1, T1 + 4_000, reprocess);
        b.dry_run = true;
        b
    };
    let none = r.backfill(dates(Reprocess::None));
    assert_eq!(none.state, BackfillState::DryRun);
    let t = |k: u64| T1 + k * 1000;
    assert_eq!(
        plan(&none),
        vec![
            (t(0), false),
            (t(1), false),
            (t(2), false),
            (t(3), true),
            (t(4), true)
        ]
    );
    let failed = r.backfill(dates(Reprocess::Failed));
    assert_eq!(
        plan(&failed),
        vec![
            (t(0), false),
            (t(1), true),
            (t(2), false),
            (t(3), true),
            (t(4), true)
        ]
    );
    let all = r.backfill(dates(Reprocess::All));
    assert_eq!(
        plan(&all),
        vec![
            (t(0), true),
            (t(1), true),
            (t(2), false),
            (t(3), true),
            (t(4), true)
        ],
        "a date whose run is still going is never run twice at once"
    );
    assert!(all.dates[2].note.as_deref().unwrap().contains("going"));
    assert!(none.dates[0].note.as_deref().unwrap().contains("succeeded"));
    assert_eq!(r.runs("s").len(), 3, "dry runs created nothing");
    match r.schedule(ScheduleRequest::Backfills) {
        Reply::Backfills(l) => assert!(l.is_empty(), "dry runs are not kept"),
        other => panic!("{other:?}"),
    }
    // The real one makes the runs it planned.
    let made = r.backfill(backfill(T1, T1 + 4_000, Reprocess::Failed));
    assert_eq!(made.state, BackfillState::Running);
    let runs = r.runs("s");
    assert_eq!(runs.len(), 6);
    let rerun = runs.iter().filter(|x| x.0 == t(1)).count();
    assert_eq!(rerun, 2, "the cancelled date has its old run and a new one");
}

#[test]
fn max_active_bounds_its_runs_and_it_ends_succeeded_or_failed() {
    let mut r = Rig::with_peers(8);
    r.add_schedule(spec("s", OverrunPolicy::Skip, 1));
    r.schedule(ScheduleRequest::Pause { name: "s".into() });
    let mut b = backfill(T1, T1 + 4_000, Reprocess::None);
    b.max_active = 2;
    b.backwards = true;
    let started = r.backfill(b);
    let order: Vec<u64> = started.dates.iter().map(|d| d.logical_date).collect();
    assert_eq!(
        order,
        vec![T1 + 4_000, T1 + 3_000, T1 + 2_000, T1 + 1_000, T1]
    );
    for step in 0..5 {
        let open = r.open_runs("s");
        assert_eq!(open.len(), 2.min(5 - step), "step {step}");
        let newest_open = r
            .runs("s")
            .into_iter()
            .filter(|x| !x.2.is_final())
            .max_by_key(|x| x.0)
            .unwrap();
        if step == 4 {
            r.cancel_run(newest_open.1);
        } else {
            r.finish_run(newest_open.1);
        }
    }
    let done = r.backfill_show(started.id);
    assert_eq!(done.state, BackfillState::Failed, "one run was cancelled");
    assert_eq!(done.progress(), (5, 5));
    assert!(done.finished_ms.is_some());
}

#[test]
fn its_runs_do_not_count_against_max_running_unless_asked() {
    let mut r = Rig::with_peers(8);
    r.add_schedule(spec("s", OverrunPolicy::Skip, 1));
    r.seconds(1);
    r.schedule(ScheduleRequest::Pause { name: "s".into() });
    assert_eq!(
        r.open_runs("s").len(),
        1,
        "the schedule is at its max_running"
    );
    let mut b = backfill(T1 + 10_000, T1 + 12_000, Reprocess::None);
    b.max_active = 2;
    r.backfill(b.clone());
    assert_eq!(
        r.open_runs("s").len(),
        3,
        "two backfill runs beside the scheduled one"
    );
    // Counted: it waits for the schedule's room.
    let mut r = Rig::with_peers(8);
    r.add_schedule(spec("s", OverrunPolicy::Skip, 1));
    r.seconds(1);
    r.schedule(ScheduleRequest::Pause { name: "s".into() });
    b.count_against_schedule = true;
    let counted = r.backfill(b);
    assert_eq!(r.open_runs("s").len(), 1);
    let scheduled = r.open_runs("s")[0];
    r.finish_run(scheduled);
    assert_eq!(r.open_runs("s").len(), 1, "one backfill run took the room");
    assert_eq!(r.backfill_show(counted.id).progress(), (0, 3));
}

#[test]
fn cancelling_a_backfill_cancels_its_runs_and_starts_no_more() {
    let mut r = Rig::with_peers(8);
    r.add_schedule(spec("s", OverrunPolicy::Skip, 1));
    r.schedule(ScheduleRequest::Pause { name: "s".into() });
    let mut b = backfill(T1, T1 + 9_000, Reprocess::None);
    b.max_active = 3;
    let started = r.backfill(b);
    assert_eq!(r.open_runs("s").len(), 3);
    let cancelled = match r.schedule(ScheduleRequest::BackfillCancel { id: started.id }) {
        Reply::Backfills(mut l) => l.remove(0),
        other => panic!("{other:?}"),
    };
    assert_eq!(cancelled.state, BackfillState::Cancelled);
    assert!(r.open_runs("s").is_empty());
    let runs = r.runs("s");
    assert_eq!(runs.len(), 3, "no run after the cancel");
    assert!(runs.iter().all(|x| x.2 == PipelineState::Cancelled));
}

#[test]
fn a_backfill_goes_on_after_a_restart_without_running_a_date_twice() {
    let mut r = Rig::with_peers(8);
    r.add_schedule(spec("s", OverrunPolicy::Skip, 1));
    r.schedule(ScheduleRequest::Pause { name: "s".into() });
    let mut b = backfill(T1, T1 + 5_000, Reprocess::None);
    b.max_active = 2;
    let id = r.backfill(b).id;
    let first = r.open_runs("s")[0];
    r.finish_run(first);
    let mut r = r.restart();
    r.pipeliner();
    r.broker(super::BROKER, super::BROKER_NAME, 8, 0);
    while let Some(&open) = r.open_runs("s").first() {
        assert!(
            r.open_runs("s").len() <= 2,
            "max_active holds after the restart"
        );
        r.finish_run(open);
    }
    let done = r.backfill_show(id);
    assert_eq!(done.state, BackfillState::Succeeded);
    let dates: Vec<u64> = r.runs("s").iter().map(|x| x.0).collect();
    assert_eq!(dates, (0..6).map(|k| T1 + k * 1_000).collect::<Vec<_>>());
}

#[test]
fn bad_backfills_are_refused_with_the_reason() {
    let mut r = Rig::with_peers(1);
    let mut s = spec("s", OverrunPolicy::Skip, 1);
    s.start_ms = Some(T1 + 10_000);
    s.end_ms = Some(T1 + 20_000);
    r.add_schedule(s);
    let refused = |r: &mut Rig, b: BackfillSpec| match r.schedule(ScheduleRequest::Backfill(b)) {
        Reply::Error(e) => e.to_string(),
        other => panic!("{other:?}"),
    };
    let mut unknown = backfill(T1 + 10_000, T1 + 11_000, Reprocess::None);
    unknown.schedule = "t".into();
    assert!(refused(&mut r, unknown).contains("unknown schedule"));
    let e = refused(&mut r, backfill(T1 + 12_000, T1 + 11_000, Reprocess::None));
    assert!(e.contains("after its --to"), "{e}");
    let e = refused(&mut r, backfill(T1, T1 + 11_000, Reprocess::None));
    assert!(e.contains("outside the schedule's start..end"), "{e}");
    let e = refused(&mut r, backfill(T1 + 10_100, T1 + 10_900, Reprocess::None));
    assert!(e.contains("no tick"), "{e}");
    let show = r.schedule(ScheduleRequest::BackfillShow { id: 42 });
    assert!(
        matches!(show, Reply::Error(ProtocolError::UnknownBackfill(42))),
        "{show:?}"
    );
}
