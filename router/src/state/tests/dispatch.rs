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
