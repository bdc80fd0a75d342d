//! Advancing: arming ahead, closing on success, and the decisions the router refuses.

use super::*;

#[test]
fn an_armed_job_starts_in_the_turn_its_parent_succeeds_with_the_parents_output() {
    let mut r = Rig::with_peers(1);
    let id = r.submit_planned(chain());
    let a = r.assigned().remove(0);
    r.succeed(a.job);
    // No advance from the pipeliner in between: the router started b itself.
    let b = r.assigned();
    assert_eq!(b.len(), 1);
    assert_eq!((b[0].job.pipeline, b[0].job.job), (id, 1));
    assert_eq!(b[0].info.parents["a"], output(0));
}

#[test]
fn a_job_not_armed_waits_for_the_pipeliner_after_its_parent_succeeds() {
    let mut r = Rig::with_peers(1);
    let id = r.submit(chain());
    r.advance(Advance {
        pipeline: id,
        enqueue: vec![0],
        ..Advance::default()
    });
    let a = r.assigned().remove(0);
    r.succeed(a.job);
    assert!(r.assigned().is_empty());
    assert_eq!(r.job_state(id, "b"), JobState::Queued);
    r.advance(Advance {
        pipeline: id,
        enqueue: vec![1],
        ..Advance::default()
    });
    assert_eq!(r.assigned()[0].job.job, 1);
}

#[test]
fn enqueueing_a_job_whose_parents_have_not_succeeded_is_ignored() {
    let mut r = Rig::with_peers(1);
    let id = r.submit(chain());
    r.advance(Advance {
        pipeline: id,
        enqueue: vec![1, 2, 99],
        ..Advance::default()
    });
    let started: Vec<u32> = r.assigned().iter().map(|a| a.job.job).collect();
    assert_eq!(
        started,
        [0],
        "only the root, queued when the pipeliner took it"
    );
    assert_eq!(r.job_state(id, "b"), JobState::Queued);
}

#[test]
fn a_pipeline_asked_to_close_on_success_closes_when_its_last_job_succeeds() {
    let mut r = Rig::with_peers(1);
    let id = r.submit_planned(chain());
    for k in 0..3 {
        let j = r.assigned().remove(0);
        assert_eq!(j.job.job, k);
        assert_eq!(r.pipeline_state(id), PipelineState::Running);
        r.succeed(j.job);
    }
    let s = r.status(id);
    assert_eq!(s.state, PipelineState::Succeeded);
    assert!(s.finished_ms.is_some());
}

#[test]
fn without_close_on_success_a_pipeline_waits_for_finish() {
    let mut r = Rig::with_peers(1);
    let id = r.submit(single());
    r.advance(Advance {
        pipeline: id,
        enqueue: vec![0],
        ..Advance::default()
    });
    let a = r.assigned().remove(0);
    r.succeed(a.job);
    assert_eq!(r.pipeline_state(id), PipelineState::Running);
    r.advance(Advance {
        pipeline: id,
        finish: true,
        ..Advance::default()
    });
    assert_eq!(r.pipeline_state(id), PipelineState::Succeeded);
}

#[test]
fn finish_while_jobs_are_open_is_ignored() {
    let mut r = Rig::with_peers(1);
    let id = r.submit_planned(chain());
    r.advance(Advance {
        pipeline: id,
        finish: true,
        ..Advance::default()
    });
    assert_eq!(r.pipeline_state(id), PipelineState::Running);
}

#[test]
fn a_skip_of_a_job_that_can_still_run_is_ignored() {
    let mut r = Rig::with_peers(1);
    let id = r.submit_planned(chain());
    r.advance(Advance {
        pipeline: id,
        skip: vec![1, 2],
        ..Advance::default()
    });
    assert_eq!(r.job_state(id, "b"), JobState::Queued);
    assert_eq!(r.job_state(id, "c"), JobState::Queued);
}

#[test]
fn decisions_from_a_pipeliner_that_does_not_own_the_pipeline_are_stale() {
    let mut r = Rig::with_peers(1);
    let id = r.submit(chain());
    let root = r.assigned().remove(0);
    let other = b"pipeliner-2";
    let hello = Request::PipelinerHello {
        pipeliner: Uuid::new_v4(),
        capacity: 1,
    };
    assert!(matches!(r.send(other, hello), Reply::Ok));
    // Arming b would start it when a succeeds: refused, it does not.
    let a = Advance {
        pipeline: id,
        after: vec![1],
        close_on_success: true,
        ..Advance::default()
    };
    let reply = r.send(other, Request::Advance(vec![a]));
    assert!(matches!(reply, Reply::Error(_)), "{reply:?}");
    r.succeed(root.job);
    assert!(r.assigned().is_empty());
    assert_eq!(r.job_state(id, "b"), JobState::Queued);
}

#[test]
fn the_roots_start_in_the_turn_a_pipeliner_takes_the_pipeline_and_its_first_walk_changes_nothing() {
    let mut r = Rig::new();
    r.broker(super::BROKER, super::BROKER_NAME, 4, 0);
    let spec = PipelineSpec::default()
        .job("a", "W", &[])
        .job("b", "W", &[])
        .job("c", "W", &["a", "b"]);
    let id = r.submit(spec);
    assert!(r.assigned().is_empty(), "no pipeliner has it: nothing runs");
    assert_eq!(r.pipeline_state(id), PipelineState::Queued);
    r.pipeliner();
    let mut roots: Vec<u32> = r.assigned().iter().map(|a| a.job.job).collect();
    roots.sort();
    assert_eq!(roots, [0, 1], "queued in the turn it was taken");
    assert_eq!(r.pipeline_state(id), PipelineState::Running);
    assert_eq!(r.take(id).states, vec![JobState::Queued; 3]);
    // The pipeliner's first walk asks for them again: nothing starts twice.
    r.advance(Advance {
        pipeline: id,
        enqueue: vec![0, 1],
        after: vec![2],
        close_on_success: true,
        ..Advance::default()
    });
    assert!(r.assigned().is_empty());
    for k in 0..2 {
        r.succeed(JobRef {
            pipeline: id,
            job: k,
            attempt: 1,
        });
    }
    let c = r.assigned();
    assert_eq!((c.len(), c[0].job.job), (1, 2));
    r.succeed(c[0].job);
    assert_eq!(r.pipeline_state(id), PipelineState::Succeeded);
}
