//! Trigger rules through the router's own transitions: what a job's end starts on its
//! own (armed children whose rule now holds, after any end), which skips and enqueues
//! the router accepts under each rule, how a finished pipeline's state is decided
//! (`allow_failure`), and a retry of a pipeline with cleanup jobs. The pipeliner's
//! decisions are sent by hand, as its walk would send them.

use pypelinin_common::dag::{readiness, Readiness};
use pypelinin_common::TriggerRule;

use super::*;

/// A spec from `(name, parents, rule)`, each job served by worker `W`.
fn spec(jobs: &[(&str, &[&str], TriggerRule)]) -> PipelineSpec {
    let mut s = PipelineSpec::default();
    for (name, after, rule) in jobs {
        s = s.job(name, "W", after);
        s.jobs.get_mut(*name).unwrap().trigger_rule = *rule;
    }
    s
}

fn allow_failure(mut s: PipelineSpec, name: &str) -> PipelineSpec {
    s.jobs.get_mut(name).unwrap().allow_failure = true;
    s
}

use TriggerRule::*;

/// `a`; `b` after `a`; `clean` after `a` with `all_done` (indices a0 b1 clean2).
fn with_cleanup() -> PipelineSpec {
    spec(&[
        ("a", &[], AllSuccess),
        ("b", &["a"], AllSuccess),
        ("clean", &["a"], AllDone),
    ])
}

/// The jobs assigned since the last call, by index.
fn started(r: &mut Rig) -> Vec<u32> {
    let mut v: Vec<u32> = r.assigned().iter().map(|a| a.job.job).collect();
    v.sort();
    v
}

fn finish(r: &mut Rig, id: PipelineId, skip: Vec<u32>) {
    let reply = r.advance(Advance {
        pipeline: id,
        skip,
        finish: true,
        ..Advance::default()
    });
    assert!(matches!(reply, Reply::Ok), "{reply:?}");
}

/// Runs `with_cleanup` until `a` fails and `clean` succeeds, the pipeliner then
/// skipping `b` and asking to finish; the pipeline's final status.
fn cleanup_after_a_failure(spec: PipelineSpec) -> PipelineStatus {
    let mut r = Rig::with_peers(2);
    let id = r.submit_planned(spec);
    let a = r.assigned().remove(0);
    assert_eq!(a.job.job, 0);
    r.fail(a.job);
    // In the turn a failed, the router started the armed cleanup job on its own.
    let clean = r.assigned();
    assert_eq!(clean.len(), 1);
    assert_eq!(clean[0].job.job, 2);
    assert!(
        clean[0].info.parents.is_empty(),
        "a failed: no output to hand on"
    );
    assert_eq!(
        r.job_state(id, "b"),
        JobState::Queued,
        "b waits for its skip"
    );
    r.succeed(clean[0].job);
    assert_eq!(
        r.pipeline_state(id),
        PipelineState::Running,
        "not every job succeeded: the router waits for the pipeliner's finish"
    );
    finish(&mut r, id, vec![1]);
    r.status(id)
}

#[test]
fn a_cleanup_job_runs_after_a_failure_and_the_pipeline_still_fails() {
    let s = cleanup_after_a_failure(with_cleanup());
    assert_eq!(s.jobs["a"].state, JobState::Failed);
    assert_eq!(s.jobs["b"].state, JobState::Skipped);
    assert_eq!(s.jobs["b"].error.as_deref(), Some("not run: a failed"));
    assert_eq!(s.jobs["clean"].state, JobState::Succeeded);
    assert_eq!(s.state, PipelineState::Failed);
}

#[test]
fn with_allow_failure_the_failed_job_shows_failed_its_children_are_skipped_and_the_pipeline_succeeds(
) {
    let s = cleanup_after_a_failure(allow_failure(with_cleanup(), "a"));
    assert_eq!(s.jobs["a"].state, JobState::Failed);
    assert_eq!(s.jobs["b"].state, JobState::Skipped);
    assert_eq!(s.jobs["clean"].state, JobState::Succeeded);
    assert_eq!(s.state, PipelineState::Succeeded);
}

#[test]
fn allow_failure_on_another_job_does_not_excuse_a_failure() {
    let s = cleanup_after_a_failure(allow_failure(with_cleanup(), "b"));
    assert_eq!(s.state, PipelineState::Failed);
}

#[test]
fn a_compensation_job_starts_as_soon_as_one_parent_fails_while_a_sibling_still_runs() {
    let mut r = Rig::with_peers(3);
    let id = r.submit_planned(spec(&[
        ("p", &[], AllSuccess),
        ("q", &[], AllSuccess),
        ("undo", &["p", "q"], OneFailed),
    ]));
    let mut jobs = r.assigned();
    jobs.sort_by_key(|a| a.job.job);
    r.fail(jobs[0].job);
    assert_eq!(started(&mut r), vec![2], "undo starts, q still running");
    assert_eq!(r.job_state(id, "q"), JobState::Running);
    let undo = r.status(id).jobs["undo"].clone();
    assert_eq!(undo.state, JobState::Running);
    r.succeed(jobs[1].job);
    r.succeed(JobRef {
        pipeline: id,
        job: 2,
        attempt: 1,
    });
    finish(&mut r, id, vec![]);
    assert_eq!(r.pipeline_state(id), PipelineState::Failed);
}

#[test]
fn a_compensation_job_is_skipped_when_nothing_failed_and_the_pipeline_succeeds() {
    let mut r = Rig::with_peers(3);
    let id = r.submit_planned(spec(&[
        ("p", &[], AllSuccess),
        ("q", &[], AllSuccess),
        ("undo", &["p", "q"], OneFailed),
    ]));
    let jobs = r.assigned();
    // While q runs, undo may still run: the router refuses its skip.
    r.succeed(jobs.iter().find(|a| a.job.job == 0).unwrap().job);
    finish(&mut r, id, vec![2]);
    assert_eq!(r.job_state(id, "undo"), JobState::Queued);
    assert_eq!(r.pipeline_state(id), PipelineState::Running);
    r.succeed(jobs.iter().find(|a| a.job.job == 1).unwrap().job);
    assert!(r.assigned().is_empty(), "undo never starts");
    assert_eq!(r.pipeline_state(id), PipelineState::Running);
    finish(&mut r, id, vec![2]);
    let s = r.status(id);
    assert_eq!(s.jobs["undo"].state, JobState::Skipped);
    assert_eq!(
        s.jobs["undo"].error.as_deref(),
        Some("not run: p succeeded (trigger_rule one_failed)")
    );
    assert_eq!(s.state, PipelineState::Succeeded, "a skip fails nothing");
}

#[test]
fn one_success_starts_on_the_first_success_not_on_a_failure() {
    let mut r = Rig::with_peers(3);
    let id = r.submit_planned(spec(&[
        ("p", &[], AllSuccess),
        ("q", &[], AllSuccess),
        ("x", &["p", "q"], OneSuccess),
    ]));
    let mut jobs = r.assigned();
    jobs.sort_by_key(|a| a.job.job);
    r.fail(jobs[0].job);
    assert!(started(&mut r).is_empty(), "p failed, q may still succeed");
    r.succeed(jobs[1].job);
    assert_eq!(started(&mut r), vec![2]);
    assert_eq!(r.job_state(id, "x"), JobState::Running);
}

#[test]
fn one_success_is_skipped_once_every_parent_ended_without_a_success() {
    let mut r = Rig::with_peers(3);
    let id = r.submit_planned(spec(&[
        ("p", &[], AllSuccess),
        ("q", &[], AllSuccess),
        ("x", &["p", "q"], OneSuccess),
    ]));
    for a in r.assigned() {
        r.fail(a.job);
    }
    assert!(started(&mut r).is_empty());
    finish(&mut r, id, vec![2]);
    let s = r.status(id);
    assert_eq!(s.jobs["x"].state, JobState::Skipped);
    assert_eq!(s.state, PipelineState::Failed);
}

#[test]
fn none_failed_runs_after_a_skipped_parent_and_the_pipeline_succeeds() {
    // a; undo after a (one_failed); report after a and undo (none_failed).
    let mut r = Rig::with_peers(2);
    let id = r.submit_planned(spec(&[
        ("a", &[], AllSuccess),
        ("report", &["a", "undo"], NoneFailed),
        ("undo", &["a"], OneFailed),
    ]));
    let a = r.assigned().remove(0);
    r.succeed(a.job);
    assert!(
        started(&mut r).is_empty(),
        "undo is blocked, report waits for it"
    );
    // The pipeliner skips undo; in that very turn the router starts report.
    r.advance(Advance {
        pipeline: id,
        skip: vec![2],
        ..Advance::default()
    });
    assert_eq!(started(&mut r), vec![1]);
    r.succeed(JobRef {
        pipeline: id,
        job: 1,
        attempt: 1,
    });
    finish(&mut r, id, vec![]);
    let s = r.status(id);
    assert_eq!(s.jobs["undo"].state, JobState::Skipped);
    assert_eq!(s.jobs["report"].state, JobState::Succeeded);
    assert_eq!(s.state, PipelineState::Succeeded);
}

#[test]
fn none_failed_is_skipped_as_soon_as_one_parent_fails() {
    let mut r = Rig::with_peers(3);
    let id = r.submit_planned(spec(&[
        ("p", &[], AllSuccess),
        ("q", &[], AllSuccess),
        ("x", &["p", "q"], NoneFailed),
    ]));
    let mut jobs = r.assigned();
    jobs.sort_by_key(|a| a.job.job);
    r.fail(jobs[0].job);
    r.advance(Advance {
        pipeline: id,
        skip: vec![2],
        ..Advance::default()
    });
    assert_eq!(r.job_state(id, "x"), JobState::Skipped, "q still runs");
    assert_eq!(r.job_state(id, "q"), JobState::Running);
}

#[test]
fn all_failed_starts_only_once_every_parent_failed() {
    let mut r = Rig::with_peers(3);
    let id = r.submit_planned(spec(&[
        ("p", &[], AllSuccess),
        ("q", &[], AllSuccess),
        ("x", &["p", "q"], AllFailed),
    ]));
    let mut jobs = r.assigned();
    jobs.sort_by_key(|a| a.job.job);
    r.fail(jobs[0].job);
    assert!(started(&mut r).is_empty());
    r.fail(jobs[1].job);
    assert_eq!(started(&mut r), vec![2]);
    r.succeed(JobRef {
        pipeline: id,
        job: 2,
        attempt: 1,
    });
    finish(&mut r, id, vec![]);
    assert_eq!(r.pipeline_state(id), PipelineState::Failed);
}

#[test]
fn all_failed_is_skipped_as_soon_as_one_parent_succeeds() {
    let mut r = Rig::with_peers(3);
    let id = r.submit_planned(spec(&[
        ("p", &[], AllSuccess),
        ("q", &[], AllSuccess),
        ("x", &["p", "q"], AllFailed),
    ]));
    let mut jobs = r.assigned();
    jobs.sort_by_key(|a| a.job.job);
    r.succeed(jobs[0].job);
    r.advance(Advance {
        pipeline: id,
        skip: vec![2],
        ..Advance::default()
    });
    let s = r.status(id);
    assert_eq!(s.jobs["x"].state, JobState::Skipped);
    assert_eq!(
        s.jobs["x"].error.as_deref(),
        Some("not run: p succeeded (trigger_rule all_failed)")
    );
}

/// `a`; `tidy` after `a` (all_done); `last` after `a` (always).
fn after_cancel() -> PipelineSpec {
    spec(&[
        ("a", &[], AllSuccess),
        ("last", &["a"], Always),
        ("tidy", &["a"], AllDone),
    ])
}

#[test]
fn a_cancel_starts_nothing_not_even_an_always_job() {
    let mut r = Rig::with_peers(2);
    let id = r.submit_planned(after_cancel());
    assert_eq!(started(&mut r), vec![0]);
    r.send(CLIENT, Request::Cancel { id });
    assert!(started(&mut r).is_empty());
    let s = r.status(id);
    assert_eq!(s.state, PipelineState::Cancelled);
    for n in ["a", "last", "tidy"] {
        assert_eq!(s.jobs[n].state, JobState::Cancelled, "{n}");
    }
}

#[test]
fn retried_by_name_under_a_cancelled_parent_an_always_job_runs_and_an_all_done_one_is_skipped() {
    let mut r = Rig::with_peers(2);
    let id = r.submit_planned(after_cancel());
    r.assigned();
    r.send(CLIENT, Request::Cancel { id });
    r.revoked();
    let reply = r.send(
        CLIENT,
        Request::Retry {
            id,
            jobs: vec!["last".into(), "tidy".into()],
        },
    );
    assert!(matches!(reply, Reply::Status(_)), "{reply:?}");
    assert_eq!(
        r.take(id).states,
        vec![JobState::Cancelled, JobState::Queued, JobState::Queued]
    );
    // What the pipeliner's plan asks: last is ready, tidy blocked. The router checks.
    r.advance(Advance {
        pipeline: id,
        enqueue: vec![1, 2],
        skip: vec![1, 2],
        ..Advance::default()
    });
    assert_eq!(started(&mut r), vec![1], "tidy's enqueue is refused");
    let s = r.status(id);
    assert_eq!(
        s.jobs["last"].state,
        JobState::Running,
        "last's skip refused"
    );
    assert_eq!(s.jobs["tidy"].state, JobState::Skipped);
    r.succeed(JobRef {
        pipeline: id,
        job: 1,
        attempt: 1,
    });
    finish(&mut r, id, vec![]);
    assert_eq!(
        r.pipeline_state(id),
        PipelineState::Failed,
        "a cancelled job's work was not done"
    );
}

#[test]
fn a_retry_reruns_the_failed_job_and_the_cleanup_job_that_ran_after_it() {
    let mut r = Rig::with_peers(2);
    let id = r.submit_planned(with_cleanup());
    let a = r.assigned().remove(0);
    r.fail(a.job);
    let clean = r.assigned().remove(0);
    r.succeed(clean.job);
    finish(&mut r, id, vec![1]);
    assert_eq!(r.pipeline_state(id), PipelineState::Failed);
    let reply = r.send(CLIENT, Request::Retry { id, jobs: vec![] });
    let Reply::Status(s) = reply else {
        panic!("{reply:?}")
    };
    for n in ["a", "b", "clean"] {
        assert_eq!(s.jobs[n].state, JobState::Queued, "{n}");
    }
    // The pipeliner plans again: a enqueued, b and clean armed.
    r.advance(Advance {
        pipeline: id,
        enqueue: vec![0],
        after: vec![1, 2],
        close_on_success: true,
        ..Advance::default()
    });
    let a = r.assigned().remove(0);
    assert_eq!((a.job.job, a.job.attempt), (0, 2));
    r.succeed(a.job);
    let next = r.assigned();
    let mut ids: Vec<u32> = next.iter().map(|a| a.job.job).collect();
    ids.sort();
    assert_eq!(
        ids,
        vec![1, 2],
        "b now runs, and clean again after a's new end"
    );
    for j in next {
        assert_eq!(j.info.parents["a"], output(0));
        r.succeed(j.job);
    }
    let s = r.status(id);
    assert_eq!(s.jobs["clean"].attempts, 2);
    assert_eq!(
        s.state,
        PipelineState::Succeeded,
        "closed by the router itself"
    );
}

/// For every rule and every combination of two parents' states, the router accepts a
/// skip exactly when the common rule says the job is blocked, and an enqueue exactly
/// when it says ready: what the pipeliner decides, the router accepts.
#[test]
fn the_router_follows_the_common_rule_under_every_trigger_rule() {
    const STATES: [JobState; 6] = [
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Skipped,
        JobState::Cancelled,
    ];
    let rules = [
        AllSuccess, AllDone, AllFailed, OneFailed, OneSuccess, NoneFailed, Always,
    ];
    let mut disagree = Vec::new();
    for rule in rules {
        for p in STATES {
            for q in STATES {
                let want = readiness(rule, [p, q]);
                for asked in ["skip", "enqueue"] {
                    let mut r = Rig::with_peers(0);
                    let id = r.submit(spec(&[
                        ("p", &[], AllSuccess),
                        ("q", &[], AllSuccess),
                        ("x", &["p", "q"], rule),
                    ]));
                    let e = r.state.pipelines.get_mut(&id).unwrap();
                    e.jobs[0].state = p;
                    e.jobs[1].state = q;
                    let mut a = Advance {
                        pipeline: id,
                        ..Advance::default()
                    };
                    if asked == "skip" {
                        a.skip.push(2);
                    } else {
                        a.enqueue.push(2);
                    }
                    r.advance(a);
                    let x = &r.state.pipelines[&id].jobs[2];
                    let accepted = if asked == "skip" {
                        x.state == JobState::Skipped
                    } else {
                        x.enqueued
                    };
                    let should = match want {
                        Readiness::Blocked { .. } => asked == "skip",
                        Readiness::Ready => asked == "enqueue",
                        Readiness::Waiting => false,
                    };
                    if accepted != should {
                        disagree.push(format!(
                            "{} {}+{}: {asked} accepted {accepted}, rule says {want:?}",
                            rule.as_str(),
                            p.as_str(),
                            q.as_str()
                        ));
                    }
                }
            }
        }
    }
    assert!(disagree.is_empty(), "{}", disagree.join("\n"));
}

/// An armed job starts in the turn its last needed parent ends, whatever the end, under
/// every rule that the end makes hold.
#[test]
fn an_armed_job_starts_on_any_end_of_a_parent_that_makes_its_rule_hold() {
    for (rule, ends, starts) in [
        (AllDone, [false, true], true),
        (Always, [false, false], true),
        (OneFailed, [false, true], true),
        (AllFailed, [false, false], true),
        (AllSuccess, [false, true], false),
        (NoneFailed, [true, false], false),
        (NoneFailed, [true, true], true),
        (OneSuccess, [false, true], true),
    ] {
        let mut r = Rig::with_peers(3);
        let id = r.submit_planned(spec(&[
            ("p", &[], AllSuccess),
            ("q", &[], AllSuccess),
            ("x", &["p", "q"], rule),
        ]));
        let mut jobs = r.assigned();
        jobs.sort_by_key(|a| a.job.job);
        for (j, ok) in jobs.iter().zip(ends) {
            if ok {
                r.succeed(j.job);
            } else {
                r.fail(j.job);
            }
        }
        assert_eq!(
            started(&mut r) == vec![2],
            starts,
            "{} after {ends:?}",
            rule.as_str()
        );
        assert_eq!(r.job_state(id, "x") == JobState::Running, starts);
    }
}
