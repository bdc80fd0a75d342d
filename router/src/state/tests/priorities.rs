//! Priorities: the run queue starts the highest effective priority first, first come,
//! first served among equals, ages waiting jobs, and is not defeated by prefetch.

use pypelinin_common::pipeline::WeightRule;

use super::*;

/// A one-job pipeline of priority `p`.
fn prio(p: i64) -> PipelineSpec {
    let mut s = single();
    s.priority = p;
    s
}

/// A pipeliner that walks up to 20,000 pipelines at once.
fn big_pipeliner(r: &mut Rig) {
    let hello = Request::PipelinerHello {
        pipeliner: Uuid::new_v4(),
        capacity: 20_000,
    };
    assert!(matches!(r.send(PIPELINER, hello), Reply::Ok));
}

/// A rig with one 1-slot broker that is busy with a blocker job; returns the blocker.
fn busy_rig(r: &mut Rig) -> JobRef {
    big_pipeliner(r);
    r.broker(BROKER, BROKER_NAME, 1, 0);
    r.submit_planned(single());
    r.assigned().remove(0).job
}

/// Frees the one slot `n` times, one job at a time; the pipelines started, in order.
fn drain(r: &mut Rig, first: JobRef, n: usize) -> Vec<PipelineId> {
    let mut current = first;
    let mut order = Vec::new();
    for _ in 0..n {
        r.succeed(current);
        let a = r.assigned();
        assert_eq!(a.len(), 1, "one slot, one job at a time");
        order.push(a[0].job.pipeline);
        current = a[0].job;
    }
    order
}

/// A rig whose router ages waiting jobs by one point per `aging_ms` (0: no aging).
fn aging_rig(aging_ms: u64) -> Rig {
    let store = crate::store::MemoryStore::new();
    let clock = ManualClock::new(1_000_000);
    let config = ClusterConfig {
        priority_aging_ms: Some(aging_ms),
        ..ClusterConfig::default()
    };
    let state =
        RouterState::load_with_clock(Box::new(store.clone()), config, Box::new(clock.clone()))
            .unwrap();
    Rig {
        state,
        store,
        clock,
        next_id: 1,
        pushes: Vec::new(),
        replies: Vec::new(),
    }
}

#[test]
fn a_higher_priority_starts_first_even_when_submitted_last() {
    // Airflow #26933: low priority scheduled before high.
    let mut r = Rig::new();
    let blocker = busy_rig(&mut r);
    let low1 = r.submit_planned(prio(0));
    let low2 = r.submit_planned(prio(-3));
    let high = r.submit_planned(prio(7));
    let mid = r.submit_planned(prio(2));
    assert_eq!(drain(&mut r, blocker, 4), vec![high, mid, low1, low2]);
}

#[test]
fn equal_priorities_start_in_the_order_they_were_queued() {
    let mut r = Rig::new();
    let blocker = busy_rig(&mut r);
    let ids: Vec<PipelineId> = (0..5).map(|_| r.submit_planned(prio(3))).collect();
    assert_eq!(drain(&mut r, blocker, 5), ids);
}

#[test]
fn the_downstream_rule_puts_a_job_with_more_work_behind_it_first() {
    let mut r = Rig::new();
    let blocker = busy_rig(&mut r);
    let lone = r.submit_planned(single());
    // The root of a chain of three weighs 3 (itself and two descendants), its second
    // job 2: both go before the lone job (1); the last (1) comes after it, queued later.
    let chained = r.submit_planned(chain());
    assert_eq!(
        drain(&mut r, blocker, 4),
        vec![chained, chained, lone, chained]
    );
}

#[test]
fn the_absolute_rule_counts_only_the_jobs_own_weight() {
    let mut r = Rig::new();
    let blocker = busy_rig(&mut r);
    let lone = r.submit_planned(single());
    let mut spec = chain();
    for j in spec.jobs.values_mut() {
        j.weight_rule = WeightRule::Absolute;
    }
    let chained = r.submit_planned(spec);
    assert_eq!(drain(&mut r, blocker, 2), vec![lone, chained]);
}

#[test]
fn a_priority_weight_adds_to_the_pipelines_priority() {
    let mut r = Rig::new();
    let blocker = busy_rig(&mut r);
    let plain = r.submit_planned(prio(5));
    let mut heavy = single();
    heavy.jobs.get_mut("a").unwrap().priority_weight = Some(6);
    // 0 + 6 beats 5 + 1 only if it is strictly more: 6 = 6, so first come goes first.
    let weighed = r.submit_planned(heavy.clone());
    heavy.jobs.get_mut("a").unwrap().priority_weight = Some(7);
    let heavier = r.submit_planned(heavy);
    assert_eq!(drain(&mut r, blocker, 3), vec![heavier, plain, weighed]);
}

#[test]
fn a_low_priority_job_that_waited_long_enough_overtakes_a_newer_higher_one() {
    // One point per minute: after three minutes a priority-0 job (effective 1) counts
    // as 4, more than a new priority-2 job (effective 3), less than a new 5 (6).
    let mut r = aging_rig(60_000);
    let blocker = busy_rig(&mut r);
    let old = r.submit_planned(prio(0));
    r.wait(Duration::from_secs(180));
    let newer = r.submit_planned(prio(2));
    let urgent = r.submit_planned(prio(5));
    assert_eq!(drain(&mut r, blocker, 3), vec![urgent, old, newer]);
}

#[test]
fn without_aging_a_low_priority_job_waits_behind_every_higher_one() {
    let mut r = aging_rig(0);
    let blocker = busy_rig(&mut r);
    let old = r.submit_planned(prio(0));
    r.wait(Duration::from_secs(3_600));
    let newer = r.submit_planned(prio(1));
    assert_eq!(drain(&mut r, blocker, 2), vec![newer, old]);
}

#[test]
fn a_retried_job_keeps_its_priority_in_the_queue() {
    let mut r = Rig::new();
    r.pipeliner();
    r.broker(BROKER, BROKER_NAME, 1, 0);
    let mut spec = prio(9);
    spec.retries = Some(1);
    let high = r.submit_planned(spec);
    let first = r.assigned().remove(0);
    let low = r.submit_planned(prio(0));
    r.fail(first.job);
    let a = r.assigned();
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].job.pipeline, high, "the retry goes before the low job");
    r.succeed(a[0].job);
    assert_eq!(r.assigned()[0].job.pipeline, low);
}

#[test]
fn a_broker_with_several_workers_takes_the_best_head_among_them() {
    let mut r = Rig::new();
    r.pipeliner();
    let hello = BrokerHello {
        name: BROKER_NAME.into(),
        host: "here".into(),
        workers: vec!["W".into(), "V".into()],
        slots: 1,
        running: vec![],
        unreported: vec![],
        prefetch: 0,
    };
    assert!(matches!(
        r.send(BROKER, Request::BrokerHello(hello)),
        Reply::Welcome(_)
    ));
    let blocker = r.submit_planned(single());
    let blocker = r
        .assigned()
        .into_iter()
        .find(|a| a.job.pipeline == blocker)
        .unwrap()
        .job;
    let w_low = r.submit_planned(prio(1));
    let mut v = PipelineSpec::default().job("a", "V", &[]);
    v.priority = 4;
    let v_high = r.submit_planned(v);
    let w_high = r.submit_planned(prio(8));
    assert_eq!(drain(&mut r, blocker, 3), vec![w_high, v_high, w_low]);
}

#[test]
fn a_high_priority_job_behind_ten_thousand_low_ones_starts_at_the_next_free_slot() {
    let mut r = Rig::new();
    let blocker = busy_rig(&mut r);
    for _ in 0..10_000 {
        r.submit_planned(prio(0));
    }
    let high = r.submit_planned(prio(1));
    assert_eq!(drain(&mut r, blocker, 1), vec![high]);
}

#[test]
fn prefetch_does_not_let_low_priority_jobs_past_a_high_one() {
    // Celery #4819: short jobs prefetched by the hundred make priorities moot. Here a
    // broker holds at most its prefetch horizon's worth beyond its slots; a high job
    // submitted later is the very next one sent.
    let mut r = Rig::new();
    big_pipeliner(&mut r);
    r.broker(BROKER, BROKER_NAME, 1, 100);
    for _ in 0..500 {
        r.submit_planned(prio(0));
    }
    let first = r.assigned();
    assert_eq!(first.len(), 1, "no prefetch before a job length is known");
    // 1 ms jobs: 20 ms of horizon is 20 jobs held beyond the slot.
    r.report_timed(BROKER, first[0].job, Ok(output(0)), 1);
    let held = r.assigned();
    assert_eq!(held.len(), 1 + 20);
    let high = r.submit_planned(prio(5));
    assert!(r.assigned().is_empty(), "no credit until a report");
    r.report_timed(BROKER, held[0].job, Ok(output(0)), 1);
    let next = r.assigned();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].job.pipeline, high);
}
