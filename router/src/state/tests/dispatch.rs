//! Dispatch: slots, prefetch beyond them, draining.

use super::*;

/// Submits `n` one-job pipelines, each enqueued at once.
fn many(r: &mut Rig, n: usize) {
    for _ in 0..n {
        r.submit_planned(single());
    }
}

#[test]
fn a_broker_gets_one_job_per_slot_until_its_job_length_is_known() {
    let mut r = Rig::new();
    r.pipeliner();
    r.broker(BROKER, BROKER_NAME, 2, 8);
    many(&mut r, 10);
    assert_eq!(r.assigned().len(), 2);
}

#[test]
fn short_jobs_are_prefetched_up_to_the_brokers_bound() {
    let mut r = Rig::new();
    r.pipeliner();
    r.broker(BROKER, BROKER_NAME, 1, 4);
    many(&mut r, 10);
    let first = r.assigned();
    assert_eq!(first.len(), 1);
    // 1 ms jobs: twenty fit in the horizon per slot, but the broker takes four extra.
    r.report_timed(BROKER, first[0].job, Ok(output(0)), 1);
    assert_eq!(r.assigned().len(), 1 + 4);
}

#[test]
fn long_jobs_are_not_prefetched() {
    let mut r = Rig::new();
    r.pipeliner();
    r.broker(BROKER, BROKER_NAME, 1, 4);
    many(&mut r, 10);
    let first = r.assigned();
    let ms = super::super::peers::PREFETCH_HORIZON_MS as u64 + 1;
    r.report_timed(BROKER, first[0].job, Ok(output(0)), ms);
    assert_eq!(r.assigned().len(), 1, "one per slot, none queued beyond");
}

#[test]
fn a_draining_broker_gets_nothing_more() {
    let mut r = Rig::with_peers(1);
    assert!(matches!(r.send(BROKER, Request::Drain), Reply::Ok));
    many(&mut r, 2);
    assert!(r.assigned().is_empty());
}

#[test]
fn a_broker_gets_only_jobs_of_its_workers() {
    let mut r = Rig::with_peers(1);
    r.submit_planned(PipelineSpec::default().job("a", "Other", &[]));
    assert!(r.assigned().is_empty());
}

#[test]
fn a_broker_that_asks_for_it_gets_its_next_jobs_in_the_answer_to_its_reports() {
    let mut r = Rig::new();
    r.pipeliner();
    r.broker_with(BROKER, BROKER_NAME, 1, 0, true);
    r.broker(b"plain", "plain", 1, 0);
    r.submit_planned(single());
    r.submit_planned(single());
    // Nothing reported yet: the first jobs go by push, one to each broker.
    let first = r.assigned_to(BROKER).remove(0);
    let other = r.assigned_to(b"plain").remove(0);
    r.submit_planned(single());
    r.submit_planned(single());
    // Its report's answer carries its next job, and no push goes to it.
    let next = match r.succeed(first.job) {
        Reply::Assigned(list) => list,
        other => panic!("expected the next job in the answer: {other:?}"),
    };
    assert_eq!(next.len(), 1);
    assert_ne!(next[0].job, first.job);
    assert!(
        r.assigned_to(BROKER).is_empty(),
        "no push besides the answer"
    );
    // A broker that did not ask gets a plain answer and a push.
    assert!(matches!(
        r.report_from(b"plain", other.job, Ok(Data::new())),
        Reply::Ok
    ));
    assert_eq!(r.assigned_to(b"plain").len(), 1);
    // With nothing left to give, the answer is plain.
    assert!(matches!(r.succeed(next[0].job), Reply::Ok));
    assert!(r.assigned_to(BROKER).is_empty());
}
