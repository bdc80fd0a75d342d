//! Targets: a job whose target existed at the broker ends `skipped_done` and counts as
//! succeeded for its children and its pipeline; a pipeline that ignores targets sends
//! none; a backfill with `--reprocess all` ignores them unless asked.

use pypelinin_common::protocol::{Reply, Request, ScheduleRequest, TARGET_DONE_KEY};
use pypelinin_common::schedule::{BackfillSpec, OverrunPolicy, Reprocess};
use pypelinin_common::status::{JobState, PipelineState};
use pypelinin_common::{Data, PipelineSpec};
use serde_json::json;

use super::schedules::spec;
use super::{chain, Rig, CLIENT};

fn with_target(mut p: PipelineSpec, job: &str, target: &str) -> PipelineSpec {
    p.jobs.get_mut(job).unwrap().target = Some(target.into());
    p
}

fn done(target: &str) -> Data {
    [(TARGET_DONE_KEY.to_string(), json!(target))]
        .into_iter()
        .collect()
}

#[test]
fn a_job_whose_target_existed_is_skipped_done_and_its_children_run() {
    let mut r = Rig::with_peers(2);
    let id = r.submit_planned(with_target(chain(), "a", "/data/{day}.csv"));
    let a = r.assigned().remove(0);
    assert_eq!(a.info.target.as_deref(), Some("/data/{day}.csv"));
    r.report_from(super::BROKER, a.job, Ok(done("/data/2026-12-01.csv")));
    assert_eq!(r.job_state(id, "a"), JobState::SkippedDone);
    // b was armed: it starts in the same turn, as after a success.
    let b = r.assigned().remove(0);
    assert_eq!(b.info.name, "b");
    assert_eq!(b.info.parents["a"], Data::new(), "no output of its own");
    r.succeed(b.job);
    let c = r.assigned().remove(0);
    r.succeed(c.job);
    assert_eq!(r.pipeline_state(id), PipelineState::Succeeded);
    match r.send(CLIENT, Request::Outputs { id }) {
        Reply::Outputs(o) => assert_eq!(o["a"], Data::new()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_pipeline_that_ignores_targets_sends_none_to_brokers() {
    let mut r = Rig::with_peers(2);
    let mut p = with_target(chain(), "a", "/data/x.csv");
    p.ignore_targets = true;
    r.submit_planned(p);
    let a = r.assigned().remove(0);
    assert_eq!(a.info.target, None);
}

#[test]
fn a_backfill_reprocessing_all_ignores_targets_unless_told_to_respect_them() {
    for (reprocess, respect, ignored) in [
        (Reprocess::All, false, true),
        (Reprocess::All, true, false),
        (Reprocess::None, false, false),
        (Reprocess::Failed, false, false),
    ] {
        let mut r = Rig::with_peers(2);
        let mut s = spec("s", OverrunPolicy::Skip, 1);
        s.pipeline = with_target(s.pipeline, "a", "/data/{logical_date}.csv");
        r.add_schedule(s);
        r.schedule(ScheduleRequest::Pause { name: "s".into() });
        let b = BackfillSpec {
            schedule: "s".into(),
            from_ms: 1_001_000,
            to_ms: 1_001_000,
            reprocess,
            max_active: 1,
            backwards: false,
            dry_run: false,
            count_against_schedule: false,
            respect_targets: respect,
        };
        match r.schedule(ScheduleRequest::Backfill(b)) {
            Reply::Backfills(_) => {}
            other => panic!("{other:?}"),
        }
        let run = r.runs("s")[0].1;
        let spec = match r.send(CLIENT, Request::Spec { id: run }) {
            Reply::Spec(s) => s,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            spec.ignore_targets, ignored,
            "{reprocess:?} respect={respect}"
        );
    }
}
