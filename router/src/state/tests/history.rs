//! History: a finished pipeline leaves memory at the commit that closes it and is read
//! back from the store; a retry brings it back; a restart loads only open pipelines;
//! the retention deletes what is older than it, and nothing else.

use std::time::Duration;

use pypelinin_common::protocol::{PipelineSummary, ProtocolError, Reply, Request};
use pypelinin_common::status::{JobState, PipelineState};
use pypelinin_common::PipelineId;

use super::{chain, output, single, Rig, CLIENT};

/// Runs `single()` to success: submitted, planned, its job reported.
fn run_one(r: &mut Rig) -> PipelineId {
    let id = r.submit_planned(single());
    let a = r.assigned_for(id).remove(0);
    let report = r.report_from(super::BROKER, a.job, Ok(output(7)));
    assert!(matches!(report, Reply::Ok), "{report:?}");
    assert_eq!(r.pipeline_state(id), PipelineState::Succeeded);
    id
}

fn list(r: &mut Rig, state: Option<PipelineState>, before: Option<u64>) -> Vec<PipelineSummary> {
    match r.send(
        CLIENT,
        Request::List {
            limit: 100,
            state,
            schedule: None,
            before,
        },
    ) {
        Reply::List(l) => l,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_finished_pipeline_leaves_memory_and_is_still_answered_from_the_store() {
    let mut r = Rig::with_peers(1);
    let id = run_one(&mut r);
    assert_eq!(r.state.pipelines_in_memory(), 0, "gone from memory");
    assert_eq!(r.status(id).jobs["a"].state, JobState::Succeeded);
    assert_eq!(r.status(id).jobs["a"].attempts, 1);
    match r.send(CLIENT, Request::Outputs { id }) {
        Reply::Outputs(o) => assert_eq!(o["a"], output(7)),
        other => panic!("{other:?}"),
    }
    match r.send(CLIENT, Request::Spec { id }) {
        Reply::Spec(s) => assert_eq!(s, single()),
        other => panic!("{other:?}"),
    }
    match r.send(
        CLIENT,
        Request::Results {
            ids: vec![id],
            timeout_ms: 1_000,
        },
    ) {
        Reply::Results(res) => {
            assert_eq!(res[0].state, PipelineState::Succeeded);
            assert_eq!(res[0].outputs["a"], output(7));
        }
        other => panic!("{other:?}"),
    }
    let l = list(&mut r, None, None);
    assert_eq!(l.len(), 1);
    assert_eq!((l[0].id, l[0].jobs, l[0].done), (id, 1, 1));
    // Cancelling a finished pipeline changes nothing and says where it is.
    match r.send(CLIENT, Request::Cancel { id }) {
        Reply::Status(s) => assert_eq!(s.state, PipelineState::Succeeded),
        other => panic!("{other:?}"),
    }
    assert_eq!(r.state.pipelines_in_memory(), 0);
}

#[test]
fn a_wait_on_a_finished_and_an_open_pipeline_is_answered_when_the_open_one_ends() {
    let mut r = Rig::with_peers(1);
    let done = run_one(&mut r);
    let open = r.submit_planned(single());
    let w = r.post(
        CLIENT,
        Request::Wait {
            ids: vec![done, open],
            timeout_ms: 60_000,
        },
    );
    assert!(r.reply_to(CLIENT, w).is_none(), "waits for the open one");
    let a = r.assigned().remove(0);
    r.succeed(a.job);
    match r.reply_to(CLIENT, w) {
        Some(Reply::Statuses(s)) => {
            assert_eq!(s[0].id, done);
            assert!(s.iter().all(|x| x.state == PipelineState::Succeeded));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_retry_brings_a_finished_pipeline_back_into_memory_and_runs_it_again() {
    let mut r = Rig::with_peers(1);
    let id = r.submit_planned(single());
    let a = r.assigned().remove(0);
    r.fail(a.job);
    // The pipeliner closes a failed pipeline.
    r.advance(pypelinin_common::protocol::Advance {
        pipeline: id,
        finish: true,
        ..Default::default()
    });
    assert_eq!(r.pipeline_state(id), PipelineState::Failed);
    assert_eq!(r.state.pipelines_in_memory(), 0);
    match r.send(CLIENT, Request::Retry { id, jobs: vec![] }) {
        Reply::Status(s) => assert_eq!(s.state, PipelineState::Queued),
        other => panic!("{other:?}"),
    }
    assert_eq!(r.state.pipelines_in_memory(), 1, "open again");
    let snap = r.take(id);
    assert_eq!(snap.states, vec![JobState::Queued]);
    r.advance(pypelinin_common::protocol::Advance {
        pipeline: id,
        enqueue: vec![0],
        close_on_success: true,
        ..Default::default()
    });
    let a = r.assigned().remove(0);
    assert_eq!(
        a.job.attempt, 2,
        "the attempts go on from the stored history"
    );
    r.succeed(a.job);
    assert_eq!(r.pipeline_state(id), PipelineState::Succeeded);
    assert_eq!(r.state.pipelines_in_memory(), 0);
}

#[test]
fn a_submit_sent_again_after_its_pipeline_finished_is_recognised() {
    let mut r = Rig::with_peers(1);
    let id = run_one(&mut r);
    match r.send(
        CLIENT,
        Request::Submit {
            id,
            pipeline: single(),
        },
    ) {
        Reply::Submitted { id: got } => assert_eq!(got, id),
        other => panic!("{other:?}"),
    }
    match r.send(
        CLIENT,
        Request::Submit {
            id,
            pipeline: chain(),
        },
    ) {
        Reply::Error(ProtocolError::Conflict(_)) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(r.state.pipelines_in_memory(), 0, "not run twice");
    assert!(r.assigned().is_empty());
}

#[test]
fn a_listing_merges_open_pipelines_with_finished_history_newest_first() {
    let mut r = Rig::with_peers(2); // the open chain's root holds one slot
    let first = run_one(&mut r);
    let open = r.submit(chain());
    let last = run_one(&mut r);
    let all: Vec<PipelineId> = list(&mut r, None, None).iter().map(|p| p.id).collect();
    assert_eq!(all, vec![last, open, first]);
    let newest = list(&mut r, None, None)[0].seq;
    let after_last = list(&mut r, None, Some(newest));
    assert_eq!(
        after_last.iter().map(|p| p.id).collect::<Vec<_>>(),
        vec![open, first]
    );
    let running = list(&mut r, Some(PipelineState::Running), None);
    assert_eq!(running.iter().map(|p| p.id).collect::<Vec<_>>(), vec![open]);
    let succeeded = list(&mut r, Some(PipelineState::Succeeded), None);
    assert_eq!(
        succeeded.iter().map(|p| p.id).collect::<Vec<_>>(),
        vec![last, first]
    );
}

#[test]
fn a_restart_loads_only_open_pipelines_and_still_counts_and_serves_the_rest() {
    let mut r = Rig::with_peers(2); // the open chain's root holds one slot
    let done: Vec<PipelineId> = (0..3).map(|_| run_one(&mut r)).collect();
    let open = r.submit(chain());
    let mut r = r.restart();
    assert_eq!(r.state.pipelines_in_memory(), 1, "only the open one");
    assert_eq!(r.state.open_pipelines(), 1);
    assert_eq!(list(&mut r, None, None).len(), 4);
    for id in &done {
        assert_eq!(r.status(*id).state, PipelineState::Succeeded);
    }
    assert_eq!(r.status(open).state, PipelineState::Running);
    match r.send(CLIENT, Request::Metrics) {
        Reply::Metrics(m) => {
            assert_eq!(m.pipelines.get("succeeded"), Some(&3));
            assert_eq!(m.pipelines.get("running"), Some(&1));
            assert_eq!(m.jobs.get("succeeded"), Some(&3));
            // The open chain's root started when the pipeliner took it.
            assert_eq!(m.jobs.get("queued"), Some(&2));
            assert_eq!(m.jobs.get("running"), Some(&1));
        }
        other => panic!("{other:?}"),
    }
    // A new pipeline comes after every one before the restart.
    let newer = r.submit(single());
    assert_eq!(list(&mut r, None, None)[0].id, newer);
}

#[test]
fn the_retention_deletes_finished_pipelines_older_than_it_and_nothing_else() {
    let mut r = Rig::with_peers(2); // the open chain's root holds one slot
    r.state.set_retention(Some(Duration::from_secs(3_600)));
    let old = run_one(&mut r);
    let still_open = r.submit(chain());
    r.clock.advance(Duration::from_secs(1_800));
    // Peers silent that long are gone: they say hello again.
    r.pipeliner();
    r.broker(super::BROKER, super::BROKER_NAME, 2, 0);
    let recent = run_one(&mut r);
    r.clock.advance(Duration::from_secs(1_801));
    r.turn();
    match r.send(CLIENT, Request::Status { id: old }) {
        Reply::Error(ProtocolError::UnknownPipeline(x)) => assert_eq!(x, old),
        other => panic!("deleted: {other:?}"),
    }
    match r.send(CLIENT, Request::Outputs { id: old }) {
        Reply::Error(ProtocolError::UnknownPipeline(_)) => {}
        other => panic!("its outputs too: {other:?}"),
    }
    assert_eq!(
        r.status(recent).state,
        PipelineState::Succeeded,
        "within the window"
    );
    assert!(
        !r.status(still_open).state.is_final(),
        "open: never deleted"
    );
    assert_eq!(r.state.purged(), 1);
    let listed: Vec<PipelineId> = list(&mut r, None, None).iter().map(|p| p.id).collect();
    assert_eq!(listed, vec![recent, still_open]);
    match r.send(CLIENT, Request::Metrics) {
        Reply::Metrics(m) => assert_eq!(m.pipelines.get("succeeded"), Some(&1)),
        other => panic!("{other:?}"),
    }
    // A restart does not bring it back.
    let mut r = r.restart();
    assert_eq!(list(&mut r, None, None).len(), 2);
}

#[test]
fn without_a_retention_nothing_is_deleted() {
    let mut r = Rig::with_peers(1);
    let old = run_one(&mut r);
    r.clock.advance(Duration::from_secs(86_400 * 400));
    r.turn();
    assert_eq!(r.status(old).state, PipelineState::Succeeded);
    assert_eq!(r.state.purged(), 0);
}

#[test]
fn a_large_backlog_is_deleted_a_batch_per_turn() {
    let mut r = Rig::with_peers(1);
    let n = super::super::PURGE_BATCH + 10;
    for _ in 0..n {
        run_one(&mut r);
    }
    r.clock.advance(Duration::from_secs(120));
    r.state.set_retention(Some(Duration::from_secs(60)));
    r.turn();
    assert_eq!(
        r.state.purged(),
        super::super::PURGE_BATCH as u64,
        "one batch"
    );
    r.turn();
    assert_eq!(r.state.purged(), n as u64, "the rest at the next turn");
    assert!(list(&mut r, None, None).is_empty());
}

#[test]
fn a_pipeline_passed_over_while_open_is_deleted_once_finished_and_old_enough() {
    let mut r = Rig::with_peers(1);
    r.state.set_retention(Some(Duration::from_secs(60)));
    let long = r.submit_planned(single());
    assert_eq!(r.assigned().len(), 1, "it holds the first broker's slot");
    let done = run_one_more(&mut r);
    r.clock.advance(Duration::from_secs(120));
    // Peers silent that long are gone: they say hello again (the job stays running).
    r.pipeliner();
    r.turn();
    assert_eq!(
        r.state.purged(),
        1,
        "the finished one goes, the open one is passed over"
    );
    assert!(matches!(
        r.send(CLIENT, Request::Status { id: done }),
        Reply::Error(ProtocolError::UnknownPipeline(_))
    ));
    r.send(CLIENT, Request::Cancel { id: long });
    assert_eq!(r.pipeline_state(long), PipelineState::Cancelled);
    r.clock.advance(Duration::from_secs(30));
    r.turn();
    assert_eq!(r.state.purged(), 1, "finished 30 s ago: kept");
    r.clock.advance(Duration::from_secs(31));
    r.turn();
    assert_eq!(
        r.state.purged(),
        2,
        "past the retention: deleted on a later pass"
    );
    assert!(list(&mut r, None, None).is_empty());
}

/// Runs `single()` to success while another pipeline holds the broker's one slot: on a
/// second broker.
fn run_one_more(r: &mut Rig) -> PipelineId {
    r.broker(b"broker-2", "b2", 1, 0);
    let id = r.submit_planned(single());
    let a = r.assigned_to(b"broker-2").remove(0);
    let report = r.report_from(b"broker-2", a.job, Ok(output(1)));
    assert!(matches!(report, Reply::Ok), "{report:?}");
    assert_eq!(r.pipeline_state(id), PipelineState::Succeeded);
    id
}
