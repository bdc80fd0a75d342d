//! Sensors: a job's `wait_for` condition. A broker's poke that finds it not met puts
//! the job `waiting` (no slot held, no failure counted) until its next poke; past the
//! wait's timeout the job fails as any failure; waiting survives a restart; a schedule
//! condition is checked by the router alone.

use std::time::Duration;

use pypelinin_common::protocol::{Advance, NOT_YET_KEY};
use pypelinin_common::schedule::OverrunPolicy;
use pypelinin_common::sensor::WaitFor;
use pypelinin_common::status::{JobState, PipelineState};
use pypelinin_common::{Data, PipelineSpec};
use serde_json::json;

use super::schedules::spec;
use super::{chain, single, Rig, BROKER, BROKER_NAME};

fn file_wait(poke_ms: u64, timeout_ms: u64) -> WaitFor {
    WaitFor {
        file: Some("/data/{day}.csv".into()),
        poke_interval_ms: Some(poke_ms),
        timeout_ms: Some(timeout_ms),
        ..WaitFor::default()
    }
}

fn waiting_on(mut p: PipelineSpec, job: &str, w: WaitFor) -> PipelineSpec {
    p.jobs.get_mut(job).unwrap().wait_for = Some(w);
    p
}

fn not_yet(what: &str) -> Data {
    [(NOT_YET_KEY.to_string(), json!(what))]
        .into_iter()
        .collect()
}

#[test]
fn a_wait_not_met_frees_the_slot_counts_no_failure_and_runs_once_met() {
    let mut r = Rig::with_peers(1);
    let id = r.submit_planned(waiting_on(chain(), "a", file_wait(1_000, 60_000)));
    let poke = r.assigned().remove(0);
    assert_eq!(poke.info.wait_for, Some(file_wait(1_000, 60_000)));
    r.report_from(BROKER, poke.job, Ok(not_yet("file /data/2026-12-01.csv")));
    let s = r.status(id);
    let a = &s.jobs["a"];
    assert_eq!(a.state, JobState::Waiting);
    assert_eq!(a.error, None);
    assert!(a.history.is_empty(), "a poke is not kept as an attempt");
    assert_eq!(a.attempts, 1);
    let w = a.waiting_for.as_deref().unwrap();
    assert!(
        w.starts_with("file /data/2026-12-01.csv (poke 1, next at 1970-01-01T00:16:41"),
        "{w}"
    );
    assert_eq!(s.jobs["b"].state, JobState::Queued);
    // The one slot is free meanwhile: another pipeline's job runs on it.
    let other = r.submit_planned(single());
    let o = r.assigned().remove(0);
    assert_eq!(o.job.pipeline, other);
    r.succeed(o.job);
    assert!(r.assigned().is_empty(), "no poke before its interval");
    // Next poke: met at the broker, the job runs in that same attempt.
    r.wait(Duration::from_secs(1));
    let again = r.assigned().remove(0);
    assert_eq!(again.job.job, poke.job.job);
    assert_eq!(again.job.attempt, 2, "attempt numbers go on past pokes");
    r.succeed(again.job);
    let s = r.status(id);
    assert_eq!(s.jobs["a"].state, JobState::Succeeded);
    assert_eq!(s.jobs["a"].waiting_for, None);
    assert_eq!(s.jobs["a"].history.len(), 1);
    assert_eq!(s.jobs["a"].history[0].number, 2);
    let b = r.assigned().remove(0);
    assert_eq!(b.info.name, "b");
    assert_eq!(b.info.wait_for, None);
}

#[test]
fn pokes_consume_no_retries() {
    let mut r = Rig::with_peers(1);
    let mut p = waiting_on(single(), "a", file_wait(1_000, 60_000));
    p.jobs.get_mut("a").unwrap().retries = Some(1);
    p.jobs.get_mut("a").unwrap().retry_delay_ms = Some(1_000);
    let id = r.submit_planned(p);
    for _ in 0..3 {
        let poke = r.assigned().remove(0);
        r.report_from(BROKER, poke.job, Ok(not_yet("file /x")));
        assert_eq!(r.job_state(id, "a"), JobState::Waiting);
        r.wait(Duration::from_secs(1));
    }
    let a = r.assigned().remove(0);
    r.fail(a.job);
    assert_eq!(
        r.job_state(id, "a"),
        JobState::Queued,
        "its one retry is left"
    );
    r.wait(Duration::from_secs(1));
    let a = r.assigned().remove(0);
    r.fail(a.job);
    assert_eq!(r.job_state(id, "a"), JobState::Failed);
}

#[test]
fn a_wait_past_its_timeout_fails_the_job() {
    let mut r = Rig::with_peers(1);
    let id = r.submit_planned(waiting_on(single(), "a", file_wait(1_000, 2_500)));
    for _ in 0..3 {
        let poke = r.assigned().remove(0);
        r.report_from(BROKER, poke.job, Ok(not_yet("file /x")));
        assert_eq!(r.job_state(id, "a"), JobState::Waiting);
        r.wait(Duration::from_secs(1));
    }
    let poke = r.assigned().remove(0);
    r.report_from(BROKER, poke.job, Ok(not_yet("file /x")));
    let s = r.status(id);
    let a = &s.jobs["a"];
    assert_eq!(a.state, JobState::Failed);
    assert_eq!(
        a.error.as_deref(),
        Some("waited 3.0 s for file /x: timed out")
    );
    assert_eq!(
        a.history.len(),
        1,
        "the poke that timed out is the failed attempt"
    );
    assert_eq!(a.waiting_for, None);
}

#[test]
fn a_waiting_job_keeps_waiting_and_its_next_poke_across_a_restart() {
    let mut r = Rig::with_peers(1);
    let id = r.submit_planned(waiting_on(single(), "a", file_wait(5_000, 60_000)));
    let poke = r.assigned().remove(0);
    r.report_from(BROKER, poke.job, Ok(not_yet("file /x")));
    let before = r.status(id).jobs["a"].clone();
    let mut r = r.restart();
    r.pipeliner();
    r.broker(BROKER, BROKER_NAME, 1, 0);
    let after = r.status(id).jobs["a"].clone();
    assert_eq!(after.state, JobState::Waiting);
    assert_eq!(after.waiting_for, before.waiting_for);
    r.wait(Duration::from_secs(4));
    assert!(r.assigned().is_empty(), "not before its next poke");
    r.wait(Duration::from_secs(1));
    let again = r.assigned().remove(0);
    assert_eq!(again.job.attempt, 2);
    r.succeed(again.job);
    assert_eq!(r.job_state(id, "a"), JobState::Succeeded);
}

#[test]
fn a_schedule_condition_is_checked_by_the_router_until_the_upstream_run_succeeded() {
    let mut r = Rig::with_peers(1);
    r.add_schedule(spec("up", OverrunPolicy::Skip, 1));
    let mut down = spec("down", OverrunPolicy::Skip, 1);
    down.pipeline = waiting_on(
        down.pipeline,
        "a",
        WaitFor {
            schedule: Some("up".into()),
            poke_interval_ms: Some(500),
            ..WaitFor::default()
        },
    );
    r.add_schedule(down);
    r.seconds(1);
    let (date, up_run, _) = r.runs("up")[0];
    let (down_date, down_run, _) = r.runs("down")[0];
    assert_eq!(date, down_date);
    r.advance(Advance {
        pipeline: down_run,
        enqueue: vec![0],
        close_on_success: true,
        ..Advance::default()
    });
    let s = r.status(down_run);
    assert_eq!(s.jobs["a"].state, JobState::Waiting);
    let w = s.jobs["a"].waiting_for.clone().unwrap();
    assert!(w.contains("schedule up"), "{w}");
    assert!(
        r.assigned_for(down_run).is_empty(),
        "no broker pokes a schedule condition"
    );
    r.wait(Duration::from_millis(500));
    assert_eq!(r.job_state(down_run, "a"), JobState::Waiting);
    assert!(r.status(down_run).jobs["a"]
        .waiting_for
        .clone()
        .unwrap()
        .contains("poke 2"));
    r.finish_run(up_run);
    r.wait(Duration::from_millis(500));
    let a = r.assigned().remove(0);
    assert_eq!(a.job.pipeline, down_run);
    assert_eq!(
        a.info.wait_for, None,
        "met: the broker has nothing to check"
    );
    r.succeed(a.job);
    assert_eq!(r.pipeline_state(down_run), PipelineState::Succeeded);
}

#[test]
fn a_schedule_condition_outside_a_scheduled_run_fails_the_job_clearly() {
    let mut r = Rig::with_peers(1);
    let w = WaitFor {
        schedule: Some("up".into()),
        ..WaitFor::default()
    };
    let id = r.submit_planned(waiting_on(single(), "a", w));
    let s = r.status(id);
    assert_eq!(s.jobs["a"].state, JobState::Failed);
    let e = s.jobs["a"].error.clone().unwrap();
    assert!(e.contains("not a scheduled run"), "{e}");
}

#[test]
fn a_bad_wait_is_refused_at_submit() {
    let mut r = Rig::with_peers(1);
    let w = WaitFor {
        command: Some(vec![]),
        ..WaitFor::default()
    };
    let id = pypelinin_common::PipelineId::new();
    let reply = r.send(
        super::CLIENT,
        pypelinin_common::protocol::Request::Submit {
            id,
            pipeline: waiting_on(single(), "a", w),
        },
    );
    match reply {
        pypelinin_common::protocol::Reply::Error(
            pypelinin_common::protocol::ProtocolError::InvalidPipeline(e),
        ) => assert!(e.contains("wait_for.command"), "{e}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_cancelled_waiting_job_is_never_poked_again() {
    let mut r = Rig::with_peers(1);
    let id = r.submit_planned(waiting_on(single(), "a", file_wait(1_000, 60_000)));
    let poke = r.assigned().remove(0);
    r.report_from(BROKER, poke.job, Ok(not_yet("file /x")));
    r.send(
        super::CLIENT,
        pypelinin_common::protocol::Request::Cancel { id },
    );
    assert_eq!(r.job_state(id, "a"), JobState::Cancelled);
    assert_eq!(r.status(id).jobs["a"].waiting_for, None);
    r.wait(Duration::from_secs(2));
    assert!(r.assigned().is_empty(), "no poke after a cancel");
}

#[test]
fn a_schedule_condition_that_never_holds_fails_at_its_timeout() {
    let mut r = Rig::with_peers(1);
    r.add_schedule(spec("up", OverrunPolicy::Skip, 1));
    let mut down = spec("down", OverrunPolicy::Skip, 1);
    down.pipeline = waiting_on(
        down.pipeline,
        "a",
        WaitFor {
            schedule: Some("up".into()),
            poke_interval_ms: Some(500),
            timeout_ms: Some(1_200),
            ..WaitFor::default()
        },
    );
    r.add_schedule(down);
    r.seconds(1);
    let (_, down_run, _) = r.runs("down")[0];
    r.advance(Advance {
        pipeline: down_run,
        enqueue: vec![0],
        close_on_success: true,
        ..Advance::default()
    });
    assert_eq!(r.job_state(down_run, "a"), JobState::Waiting);
    r.wait(Duration::from_secs(2));
    let s = r.status(down_run);
    assert_eq!(s.jobs["a"].state, JobState::Failed);
    let e = s.jobs["a"].error.clone().unwrap();
    assert!(
        e.starts_with("waited ")
            && e.ends_with(
                "for a successful run of schedule up for the same logical date: timed out"
            ),
        "{e}"
    );
    assert!(r.assigned_for(down_run).is_empty(), "it never ran");
}
