//! The job state machine: one test per transition, and fencing by attempt number.

use super::*;

#[test]
fn a_job_runs_then_succeeds_and_its_output_is_kept() {
    let mut r = Rig::with_peers(1);
    let id = r.submit_planned(single());
    assert_eq!(r.pipeline_state(id), PipelineState::Running, "taken");
    let a = r.assigned();
    assert_eq!(a.len(), 1);
    assert_eq!(
        (a[0].job.pipeline, a[0].job.job, a[0].job.attempt),
        (id, 0, 1)
    );
    assert_eq!(r.job_state(id, "a"), JobState::Running);
    assert!(matches!(r.succeed(a[0].job), Reply::Ok));
    assert_eq!(r.job_state(id, "a"), JobState::Succeeded);
    let told = r.changes();
    assert_eq!(told.len(), 1);
    assert_eq!((told[0].job, told[0].state), (0, JobState::Succeeded));
    match r.send(CLIENT, Request::Outputs { id }) {
        Reply::Outputs(o) => assert_eq!(o["a"], output(0)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_failure_with_no_retry_left_fails_the_job_and_leaves_closing_to_the_pipeliner() {
    let mut r = Rig::with_peers(1);
    let id = r.submit_planned(chain());
    let a = r.assigned().remove(0);
    assert!(matches!(r.fail(a.job), Reply::Ok));
    let s = r.status(id);
    assert_eq!(s.jobs["a"].state, JobState::Failed);
    assert_eq!(s.jobs["a"].error.as_deref(), Some("boom"));
    assert_eq!(
        s.jobs["b"].state,
        JobState::Queued,
        "armed, but never started"
    );
    assert!(r.assigned().is_empty());
    assert_eq!(
        s.state,
        PipelineState::Running,
        "the pipeliner skips and finishes"
    );
    assert!(r
        .changes()
        .iter()
        .any(|c| c.job == 0 && c.state == JobState::Failed));
}

#[test]
fn descendants_of_a_failure_are_skipped_and_the_pipeline_finishes_failed() {
    let mut r = Rig::with_peers(1);
    let id = r.submit_planned(chain());
    let a = r.assigned().remove(0);
    r.fail(a.job);
    r.advance(Advance {
        pipeline: id,
        skip: vec![1, 2],
        finish: true,
        ..Advance::default()
    });
    let s = r.status(id);
    assert_eq!(s.jobs["b"].state, JobState::Skipped);
    assert_eq!(s.jobs["b"].error.as_deref(), Some("not run: a failed"));
    assert_eq!(s.jobs["c"].state, JobState::Skipped);
    assert_eq!(s.jobs["c"].error.as_deref(), Some("not run: b skipped"));
    assert_eq!(s.state, PipelineState::Failed);
}

#[test]
fn a_report_for_an_attempt_that_is_no_longer_current_changes_nothing() {
    let mut r = Rig::with_peers(1);
    let mut spec = single();
    spec.retries = Some(1);
    let id = r.submit_planned(spec);
    let first = r.assigned().remove(0);
    r.fail(first.job);
    let second = r.assigned().remove(0);
    assert_eq!(second.job.attempt, 2);
    // The first attempt's report again (a resend), now a success: fenced off.
    let reply = r.succeed(first.job);
    assert!(
        matches!(
            reply,
            Reply::Error(pypelinin_common::protocol::ProtocolError::Stale(_))
        ),
        "{reply:?}"
    );
    assert_eq!(r.job_state(id, "a"), JobState::Running);
    // So is an attempt that was never given out.
    let future = JobRef {
        attempt: 3,
        ..second.job
    };
    assert!(matches!(r.succeed(future), Reply::Error(_)));
    assert_eq!(r.job_state(id, "a"), JobState::Running);
    // The current one counts.
    assert!(matches!(r.succeed(second.job), Reply::Ok));
    assert_eq!(r.job_state(id, "a"), JobState::Succeeded);
}

#[test]
fn a_report_from_another_broker_than_the_attempts_is_stale() {
    let mut r = Rig::with_peers(1);
    r.broker(b"broker-2", "b2", 0, 0);
    let id = r.submit_planned(single());
    let a = r.assigned().remove(0);
    let reply = r.report_from(b"broker-2", a.job, Ok(output(9)));
    assert!(matches!(reply, Reply::Error(_)), "{reply:?}");
    assert_eq!(r.job_state(id, "a"), JobState::Running);
}

#[test]
fn a_broker_whose_lease_expires_loses_its_attempt_to_the_queue() {
    let mut r = Rig::with_peers(1);
    let id = r.submit_planned(single());
    let first = r.assigned().remove(0);
    // The broker falls silent for longer than a lease; another one arrives.
    r.clock
        .advance(super::super::peer_timeout() + Duration::from_millis(1));
    r.broker(b"broker-2", "b2", 1, 0);
    let s = r.status(id);
    assert_eq!(
        s.jobs["a"].history[0].error.as_deref(),
        Some("lost: broker b1 fell silent")
    );
    let second = r.assigned_to(b"broker-2").remove(0);
    assert_eq!(second.job.attempt, 2, "the attempt number moves on");
    assert_eq!(r.job_state(id, "a"), JobState::Running);
    // The first broker comes back and reports its old attempt: it is a stranger now.
    let reply = r.succeed(first.job);
    assert!(matches!(reply, Reply::Error(_)), "{reply:?}");
    assert!(matches!(
        r.report_from(b"broker-2", second.job, Ok(output(0))),
        Reply::Ok
    ));
    assert_eq!(r.job_state(id, "a"), JobState::Succeeded);
}

#[test]
fn a_failed_attempt_is_retried_after_a_delay_that_doubles() {
    let mut r = Rig::with_peers(1);
    let mut spec = single();
    spec.retries = Some(2);
    spec.retry_delay_ms = Some(1_000);
    let id = r.submit_planned(spec);
    let first = r.assigned().remove(0);
    r.fail(first.job);
    assert_eq!(r.job_state(id, "a"), JobState::Queued);
    r.wait(Duration::from_millis(999));
    assert!(r.assigned().is_empty(), "not before its delay");
    r.wait(Duration::from_millis(1));
    let second = r.assigned().remove(0);
    assert_eq!(second.job.attempt, 2);
    r.fail(second.job);
    r.wait(Duration::from_millis(1_999));
    assert!(
        r.assigned().is_empty(),
        "the second delay is twice the first"
    );
    r.wait(Duration::from_millis(1));
    let third = r.assigned().remove(0);
    assert_eq!(third.job.attempt, 3);
    r.fail(third.job);
    let s = r.status(id);
    assert_eq!(s.jobs["a"].state, JobState::Failed, "no retry left");
    assert_eq!(s.jobs["a"].attempts, 3);
}

#[test]
fn cancelling_mid_run_revokes_the_attempt_and_cancels_every_open_job() {
    let mut r = Rig::with_peers(1);
    let id = r.submit_planned(chain());
    let a = r.assigned().remove(0);
    match r.send(CLIENT, Request::Cancel { id }) {
        Reply::Status(s) => {
            assert_eq!(s.state, PipelineState::Cancelled);
            for job in ["a", "b", "c"] {
                assert_eq!(s.jobs[job].state, JobState::Cancelled, "{job}");
            }
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(r.revoked(), vec![a.job]);
    // The revoked attempt's late report is stale, and nothing armed starts.
    assert!(matches!(r.succeed(a.job), Reply::Error(_)));
    assert_eq!(r.job_state(id, "a"), JobState::Cancelled);
    assert!(r.assigned().is_empty());
}

#[test]
fn an_attempt_past_its_timeout_and_a_lease_is_failed_by_the_router() {
    let mut r = Rig::with_peers(1);
    let mut spec = single();
    spec.timeout_ms = Some(1_000);
    let id = r.submit_planned(spec);
    let a = r.assigned().remove(0);
    let backstop = Duration::from_millis(1_000) + super::super::peer_timeout();
    r.wait(backstop - Duration::from_millis(1));
    assert_eq!(r.job_state(id, "a"), JobState::Running);
    r.wait(Duration::from_millis(1));
    let s = r.status(id);
    assert_eq!(s.jobs["a"].state, JobState::Failed);
    assert!(s.jobs["a"]
        .error
        .as_deref()
        .unwrap()
        .starts_with("timed out"));
    assert_eq!(r.revoked(), vec![a.job]);
}
