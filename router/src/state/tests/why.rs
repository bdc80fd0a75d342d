//! "Why is it waiting?": each queued job's `waiting_for` in a status, and what brokers
//! say they hold, through real requests to the state machine.

use std::time::Duration;

use pypelinin_common::protocol::{Reply, Request};
use pypelinin_common::status::JobState;
use pypelinin_common::PipelineSpec;

use super::*;

fn why(r: &mut Rig, id: PipelineId, job: &str) -> Option<String> {
    let s = r.status(id);
    assert_eq!(
        s.jobs[job].state,
        JobState::Queued,
        "{job}: {:?}",
        s.jobs[job]
    );
    s.jobs[job].waiting_for.clone()
}

#[test]
fn a_job_behind_its_parents_names_them() {
    let mut r = Rig::with_peers(1);
    let id = r.submit_planned(chain());
    assert_eq!(r.job_state(id, "a"), JobState::Running);
    assert_eq!(why(&mut r, id, "b").as_deref(), Some("parents running: a"));
    assert_eq!(
        why(&mut r, id, "c").as_deref(),
        Some("parents not done: b (queued)")
    );
    let a = r.assigned().remove(0);
    r.succeed(a.job);
    assert_eq!(r.job_state(id, "b"), JobState::Running, "armed b started");
    assert_eq!(why(&mut r, id, "c").as_deref(), Some("parents running: b"));
}

#[test]
fn a_job_no_broker_offers_says_which_worker() {
    let mut r = Rig::with_peers(1);
    let id = r.submit_planned(PipelineSpec::default().job("a", "Resize", &[]));
    assert_eq!(
        why(&mut r, id, "a").as_deref(),
        Some("no connected broker offers worker Resize")
    );
}

#[test]
fn a_pipeline_no_pipeliner_walks_says_so() {
    let mut r = Rig::new();
    r.broker(BROKER, BROKER_NAME, 1, 0);
    let id = r.submit(single());
    assert_eq!(
        why(&mut r, id, "a").as_deref(),
        Some("no pipeliner is connected to walk its pipeline")
    );
}

#[test]
fn a_failed_attempt_waiting_for_its_retry_says_when() {
    let mut r = Rig::with_peers(1);
    let mut spec = single();
    spec.retries = Some(3);
    spec.retry_delay_ms = Some(60_000);
    let id = r.submit_planned(spec);
    let a = r.assigned().remove(0);
    r.fail(a.job);
    // The clock started at 1,000,000 ms since the epoch: 00:16:40 UTC, plus a minute.
    assert_eq!(
        why(&mut r, id, "a").as_deref(),
        Some("retry 1 at 00:17:40 UTC")
    );
    r.wait(Duration::from_secs(61));
    let again = r.assigned().remove(0);
    r.fail(again.job);
    assert_eq!(
        why(&mut r, id, "a").as_deref(),
        Some("retry 2 at 00:19:41 UTC"),
        "two minutes after the second failure: the delay doubled"
    );
}

#[test]
fn a_job_behind_busy_slots_says_how_busy_and_its_place() {
    let mut r = Rig::with_peers(1);
    let first = r.submit_planned(single());
    let second = r.submit_planned(single());
    let third = r.submit_planned(single());
    assert_eq!(r.job_state(first, "a"), JobState::Running);
    let w = why(&mut r, second, "a").unwrap();
    assert_eq!(w, "1/1 slots busy on the 1 broker offering worker W");
    let w = why(&mut r, third, "a").unwrap();
    assert!(w.contains("behind 1 "), "{w}");
}

#[test]
fn a_job_whose_only_broker_drains_says_so() {
    let mut r = Rig::with_peers(1);
    assert!(matches!(r.send(BROKER, Request::Drain), Reply::Ok));
    let id = r.submit_planned(single());
    assert_eq!(
        why(&mut r, id, "a").as_deref(),
        Some("every broker offering worker W is draining")
    );
}

#[test]
fn running_and_final_jobs_give_no_reason() {
    let mut r = Rig::with_peers(1);
    let id = r.submit_planned(single());
    assert!(r.status(id).jobs["a"].waiting_for.is_none(), "running");
    let a = r.assigned().remove(0);
    r.succeed(a.job);
    assert!(r.status(id).jobs["a"].waiting_for.is_none(), "succeeded");
}

#[test]
fn brokers_list_what_each_holds_oldest_first() {
    let mut r = Rig::with_peers(1);
    let first = r.submit_planned(single());
    r.clock.advance(Duration::from_millis(5));
    let _second = r.submit_planned(single());
    let brokers = match r.send(CLIENT, Request::Brokers) {
        Reply::Brokers(b) => b,
        other => panic!("{other:?}"),
    };
    assert_eq!(brokers.len(), 1);
    let held = &brokers[0].assigned;
    assert_eq!(
        held.len(),
        1,
        "one slot, no prefetch before a job was timed"
    );
    assert_eq!(held[0].job.pipeline, first);
    assert_eq!((held[0].name.as_str(), held[0].worker.as_str()), ("a", "W"));
    let a = r.assigned().remove(0);
    r.succeed(a.job);
    let brokers = match r.send(CLIENT, Request::Brokers) {
        Reply::Brokers(b) => b,
        other => panic!("{other:?}"),
    };
    assert_eq!(brokers[0].assigned.len(), 1, "the second job took the slot");
    assert_ne!(brokers[0].assigned[0].job.pipeline, first);
}
