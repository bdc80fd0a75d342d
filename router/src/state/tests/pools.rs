//! Pools and `max_active`: each transition, and each way peers (Airflow, Prefect) got
//! their slot counts wrong.

use pypelinin_common::protocol::{PoolRequest, PoolStatus, ProtocolError};

use super::*;

fn set_pool(r: &mut Rig, name: &str, slots: u32) {
    let reply = r.send(
        CLIENT,
        Request::Pool(PoolRequest::Set {
            name: name.into(),
            slots,
        }),
    );
    assert!(matches!(reply, Reply::Pools(_)), "{reply:?}");
}

fn pools(r: &mut Rig) -> Vec<PoolStatus> {
    match r.send(CLIENT, Request::Pool(PoolRequest::List)) {
        Reply::Pools(p) => p,
        other => panic!("{other:?}"),
    }
}

fn pool(r: &mut Rig, name: &str) -> PoolStatus {
    pools(r)
        .into_iter()
        .find(|p| p.name == name)
        .expect("the pool is listed")
}

/// A one-job pipeline whose job holds `slots` slots of `pool`.
fn in_pool(pool: &str, slots: u32) -> PipelineSpec {
    let mut s = single();
    let j = s.jobs.get_mut("a").unwrap();
    j.pool = Some(pool.into());
    j.pool_slots = (slots != 1).then_some(slots);
    s
}

/// A pipeliner that walks many pipelines at once.
fn big_pipeliner(r: &mut Rig) {
    let hello = Request::PipelinerHello {
        pipeliner: Uuid::new_v4(),
        capacity: 1_000,
    };
    assert!(matches!(r.send(PIPELINER, hello), Reply::Ok));
}

/// A rig with a pipeliner and one broker of `slots` slots.
fn rig(slots: u32) -> Rig {
    let mut r = Rig::new();
    big_pipeliner(&mut r);
    r.broker(BROKER, BROKER_NAME, slots, 0);
    r
}

/// Jobs of pool `name` running now, from the pipelines' statuses: what `used` must
/// always equal (in slots).
fn running_slots(r: &mut Rig, ids: &[PipelineId], name: &str) -> u32 {
    let mut n = 0;
    for &id in ids {
        let s = r.status(id);
        let spec = match r.send(CLIENT, Request::Spec { id }) {
            Reply::Spec(s) => s,
            other => panic!("{other:?}"),
        };
        for (job, st) in &s.jobs {
            let j = &spec.jobs[job];
            if st.state == JobState::Running && j.pool.as_deref() == Some(name) {
                n += j.slots();
            }
        }
    }
    n
}

#[test]
fn a_pool_is_set_listed_resized_and_removed() {
    let mut r = rig(1);
    assert!(pools(&mut r).is_empty());
    set_pool(&mut r, "db", 4);
    set_pool(&mut r, "api", 2);
    let listed = pools(&mut r);
    let names: Vec<&str> = listed.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["api", "db"], "by name");
    assert_eq!(
        (listed[1].capacity, listed[1].used, listed[1].queued),
        (4, 0, 0)
    );
    set_pool(&mut r, "db", 6);
    assert_eq!(pool(&mut r, "db").capacity, 6);
    match r.send(
        CLIENT,
        Request::Pool(PoolRequest::Remove { name: "db".into() }),
    ) {
        Reply::Pools(p) => assert_eq!(p[0].name, "db"),
        other => panic!("{other:?}"),
    }
    assert_eq!(pools(&mut r).len(), 1);
    match r.send(
        CLIENT,
        Request::Pool(PoolRequest::Remove { name: "db".into() }),
    ) {
        Reply::Error(ProtocolError::UnknownPool(n)) => assert_eq!(n, "db"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_bad_pool_name_or_zero_slots_is_refused_naming_it() {
    let mut r = rig(1);
    for (name, slots) in [("", 1), ("has space", 1), ("db", 0)] {
        let reply = r.send(
            CLIENT,
            Request::Pool(PoolRequest::Set {
                name: name.into(),
                slots,
            }),
        );
        match reply {
            Reply::Error(ProtocolError::Refused(m)) => assert!(m.contains("pool"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
    assert!(pools(&mut r).is_empty());
}

#[test]
fn a_job_naming_an_unknown_pool_or_too_many_slots_is_refused_at_submit() {
    let mut r = rig(1);
    let id = PipelineId::new();
    match r.send(
        CLIENT,
        Request::Submit {
            id,
            pipeline: in_pool("db", 1),
        },
    ) {
        Reply::Error(ProtocolError::InvalidPipeline(m)) => {
            assert!(m.contains("\"db\"") && m.contains("does not exist"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    set_pool(&mut r, "db", 2);
    match r.send(
        CLIENT,
        Request::Submit {
            id,
            pipeline: in_pool("db", 3),
        },
    ) {
        Reply::Error(ProtocolError::InvalidPipeline(m)) => {
            assert!(
                m.contains("3 slots") && m.contains("\"db\"") && m.contains("has 2"),
                "{m}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        r.send(CLIENT, Request::Status { id }),
        Reply::Error(ProtocolError::UnknownPipeline(_))
    ));
}

#[test]
fn a_pool_limits_running_jobs_across_brokers() {
    let mut r = rig(3);
    r.broker(b"broker-2", "b2", 3, 0);
    set_pool(&mut r, "db", 2);
    let ids: Vec<PipelineId> = (0..6).map(|_| r.submit_planned(in_pool("db", 1))).collect();
    let mut a = r.assigned();
    a.extend(r.assigned_to(b"broker-2"));
    assert_eq!(a.len(), 2);
    let p = pool(&mut r, "db");
    assert_eq!((p.used, p.queued), (2, 4));
    assert_eq!(running_slots(&mut r, &ids, "db"), 2);
    // One ends: exactly one more starts.
    let first = a.remove(0);
    let peer: &[u8] = if r.status(first.job.pipeline).jobs["a"].history[0].broker == "b2" {
        b"broker-2"
    } else {
        BROKER
    };
    r.report_from(peer, first.job, Ok(output(0)));
    let mut more = r.assigned();
    more.extend(r.assigned_to(b"broker-2"));
    assert_eq!(more.len(), 1);
    assert_eq!(pool(&mut r, "db").used, 2);
}

#[test]
fn a_job_counts_against_its_pool_while_prefetched_at_a_broker() {
    // Airflow #15793: queued tasks not counted against the pool.
    let mut r = Rig::new();
    big_pipeliner(&mut r);
    r.broker(BROKER, BROKER_NAME, 1, 50);
    set_pool(&mut r, "db", 3);
    // Learn that jobs are short, so that the broker is sent jobs to hold.
    r.submit_planned(single());
    let first = r.assigned().remove(0);
    r.report_timed(BROKER, first.job, Ok(output(0)), 1);
    for _ in 0..10 {
        r.submit_planned(in_pool("db", 1));
    }
    let held = r.assigned();
    assert_eq!(
        held.len(),
        3,
        "one running and two held in prefetch: the pool's 3"
    );
    let p = pool(&mut r, "db");
    assert_eq!((p.used, p.queued), (3, 7));
}

#[test]
fn a_full_pool_does_not_block_jobs_of_other_pools_or_no_pool() {
    // Airflow #17975 (one full pool blocks a backfill's other work) and #45636 (a
    // priority window starved by one pool's tasks): many high-priority jobs of a full
    // pool ahead of everything else.
    let mut r = rig(10);
    set_pool(&mut r, "db", 1);
    set_pool(&mut r, "other", 2);
    for _ in 0..50 {
        let mut s = in_pool("db", 1);
        s.priority = 100;
        r.submit_planned(s);
    }
    assert_eq!(r.assigned().len(), 1);
    let free: Vec<PipelineId> = (0..3).map(|_| r.submit_planned(single())).collect();
    let other: Vec<PipelineId> = (0..3)
        .map(|_| r.submit_planned(in_pool("other", 1)))
        .collect();
    let a = r.assigned();
    let started: Vec<PipelineId> = a.iter().map(|a| a.job.pipeline).collect();
    for id in &free {
        assert!(started.contains(id), "a job of no pool starts");
    }
    assert_eq!(
        started.iter().filter(|id| other.contains(id)).count(),
        2,
        "two of pool other, its capacity"
    );
    assert_eq!(a.len(), 5);
    assert_eq!(pool(&mut r, "db").queued, 49);
}

#[test]
fn shrinking_a_pool_below_its_use_waits_and_never_goes_negative() {
    // Airflow #15399 and #23143: negative open slots that block other pools.
    let mut r = rig(10);
    set_pool(&mut r, "db", 3);
    set_pool(&mut r, "other", 5);
    let ids: Vec<PipelineId> = (0..5).map(|_| r.submit_planned(in_pool("db", 1))).collect();
    let running = r.assigned();
    assert_eq!(running.len(), 3);
    set_pool(&mut r, "db", 1);
    let p = pool(&mut r, "db");
    assert_eq!((p.capacity, p.used, p.queued), (1, 3, 2));
    // Other pools go on as before.
    r.submit_planned(in_pool("other", 1));
    assert_eq!(r.assigned().len(), 1, "pool other is not blocked");
    // Two ends: use 1, still not below the capacity: nothing of db starts.
    r.succeed(running[0].job);
    r.succeed(running[1].job);
    assert!(r.assigned().is_empty());
    assert_eq!(pool(&mut r, "db").used, 1);
    r.succeed(running[2].job);
    let next = r.assigned();
    assert_eq!(next.len(), 1, "one at a time now");
    assert_eq!(running_slots(&mut r, &ids, "db"), 1);
    // Growing it again starts the rest at once.
    set_pool(&mut r, "db", 5);
    assert_eq!(r.assigned().len(), 1);
    assert_eq!(pool(&mut r, "db").used, 2);
}

#[test]
fn a_job_needing_several_slots_is_not_overtaken_by_smaller_ones_of_its_pool() {
    let mut r = rig(10);
    set_pool(&mut r, "db", 3);
    let small = r.submit_planned(in_pool("db", 2));
    let running = r.assigned().remove(0);
    assert_eq!(running.job.pipeline, small);
    let mut big = in_pool("db", 3);
    big.priority = 10;
    let big = r.submit_planned(big);
    let after = r.submit_planned(in_pool("db", 1));
    assert!(
        r.assigned().is_empty(),
        "one slot free; the big job waits first"
    );
    r.succeed(running.job);
    let a = r.assigned();
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].job.pipeline, big);
    r.succeed(a[0].job);
    assert_eq!(r.assigned()[0].job.pipeline, after);
}

#[test]
fn slots_come_back_after_retries_timeouts_cancels_lease_expiry_and_broker_loss() {
    // Airflow #36335: leaked running-slot counts.
    let mut r = rig(4);
    set_pool(&mut r, "db", 4);
    let mut ids = Vec::new();
    let mut retried = in_pool("db", 1);
    retried.retries = Some(1);
    retried.retry_delay_ms = Some(1_000);
    ids.push(r.submit_planned(retried));
    let mut timed = in_pool("db", 1);
    timed.timeout_ms = Some(1_000);
    ids.push(r.submit_planned(timed));
    ids.push(r.submit_planned(in_pool("db", 1)));
    let cancelled = r.submit_planned(in_pool("db", 1));
    ids.push(cancelled);
    let a = r.assigned();
    assert_eq!(a.len(), 4);
    assert_eq!(pool(&mut r, "db").used, 4);
    let job_of = |id: PipelineId| a.iter().find(|x| x.job.pipeline == id).unwrap().job;

    // A failure with a retry left: the slot is free during the backoff.
    r.fail(job_of(ids[0]));
    assert_eq!(pool(&mut r, "db").used, running_slots(&mut r, &ids, "db"));
    assert_eq!(pool(&mut r, "db").used, 3);
    r.wait(Duration::from_millis(1_000));
    let retry = r.assigned();
    assert_eq!(retry.len(), 1, "the retry takes the slot back");
    assert_eq!(pool(&mut r, "db").used, 4);

    // A cancel.
    r.send(CLIENT, Request::Cancel { id: cancelled });
    assert_eq!(pool(&mut r, "db").used, 3);
    assert_eq!(running_slots(&mut r, &ids, "db"), 3);

    // An attempt overdue (past its timeout and a lease with no report).
    r.wait(Duration::from_millis(1_000) + super::super::peer_timeout());
    assert_eq!(r.job_state(ids[1], "a"), JobState::Failed);
    assert_eq!(pool(&mut r, "db").used, 2);
    assert_eq!(running_slots(&mut r, &ids, "db"), 2);

    // Lease expiry: the broker falls silent; its jobs go back to the queue.
    r.clock
        .advance(super::super::peer_timeout() + Duration::from_millis(1));
    r.turn();
    assert_eq!(pool(&mut r, "db").used, 0);
    assert_eq!(pool(&mut r, "db").queued, 2);
    assert_eq!(running_slots(&mut r, &ids, "db"), 0);

    // A new broker takes them; then it is killed (says nothing) and dropped.
    r.broker(b"broker-2", "b2", 4, 0);
    assert_eq!(r.assigned_to(b"broker-2").len(), 2);
    assert_eq!(pool(&mut r, "db").used, 2);
    r.state
        .drop_peer(&b"broker-2".to_vec(), "was killed")
        .unwrap();
    r.turn();
    assert_eq!(pool(&mut r, "db").used, 0);
    assert_eq!(pool(&mut r, "db").queued, 2);
}

#[test]
fn pool_use_is_recomputed_from_running_jobs_after_a_restart() {
    let mut r = rig(4);
    set_pool(&mut r, "db", 2);
    let ids: Vec<PipelineId> = (0..4).map(|_| r.submit_planned(in_pool("db", 1))).collect();
    let running = r.assigned();
    assert_eq!(running.len(), 2);
    let mut r = r.restart();
    big_pipeliner(&mut r);
    let p = pool(&mut r, "db");
    assert_eq!(
        (p.capacity, p.used),
        (2, 2),
        "the running jobs still hold their slots"
    );
    // The broker comes back holding both: nothing more starts.
    let hello = BrokerHello {
        name: BROKER_NAME.into(),
        host: "here".into(),
        workers: vec!["W".into()],
        slots: 4,
        running: running.iter().map(|a| a.job).collect(),
        unreported: vec![],
        prefetch: 0,
    };
    assert!(matches!(
        r.send(BROKER, Request::BrokerHello(hello)),
        Reply::Welcome(_)
    ));
    assert!(r.assigned().is_empty());
    assert_eq!(pool(&mut r, "db").used, running_slots(&mut r, &ids, "db"));
    r.succeed(running[0].job);
    assert_eq!(r.assigned().len(), 1);
    assert_eq!(pool(&mut r, "db").used, 2);
}

#[test]
fn slots_of_jobs_that_do_not_come_back_after_a_restart_are_freed() {
    let mut r = rig(4);
    set_pool(&mut r, "db", 2);
    let ids: Vec<PipelineId> = (0..3).map(|_| r.submit_planned(in_pool("db", 1))).collect();
    assert_eq!(r.assigned().len(), 2);
    let mut r = r.restart();
    big_pipeliner(&mut r);
    assert_eq!(pool(&mut r, "db").used, 2);
    // No broker says it holds them: after the grace period they are requeued.
    r.clock
        .advance(super::super::peer_timeout() * 2 + Duration::from_millis(1));
    r.turn();
    assert_eq!(pool(&mut r, "db").used, 0);
    r.broker(BROKER, BROKER_NAME, 4, 0);
    assert_eq!(
        r.assigned().len(),
        2,
        "the pool's limit holds after the restart"
    );
    assert_eq!(running_slots(&mut r, &ids, "db"), 2);
}

#[test]
fn a_pool_with_open_jobs_cannot_be_removed() {
    let mut r = rig(1);
    set_pool(&mut r, "db", 1);
    let id = r.submit_planned(in_pool("db", 1));
    r.submit_planned(in_pool("db", 1));
    match r.send(
        CLIENT,
        Request::Pool(PoolRequest::Remove { name: "db".into() }),
    ) {
        Reply::Error(ProtocolError::Refused(m)) => {
            assert!(
                m.contains("1 running") && m.contains("1 not started"),
                "{m}"
            )
        }
        other => panic!("{other:?}"),
    }
    let a = r.assigned().remove(0);
    r.succeed(a.job);
    assert_eq!(r.pipeline_state(id), PipelineState::Succeeded);
    let b = r.assigned().remove(0);
    r.succeed(b.job);
    assert!(matches!(
        r.send(
            CLIENT,
            Request::Pool(PoolRequest::Remove { name: "db".into() })
        ),
        Reply::Pools(_)
    ));
}

#[test]
fn pools_survive_a_restart_and_the_config_file_wins() {
    let mut r = rig(1);
    set_pool(&mut r, "db", 2);
    set_pool(&mut r, "api", 7);
    let store = r.store.clone();
    let clock = r.clock.clone();
    let mut config = ClusterConfig::default();
    config.pools.insert("db".into(), 5);
    config.pools.insert("new".into(), 1);
    let state =
        RouterState::load_with_clock(Box::new(store.clone()), config, Box::new(clock.clone()))
            .unwrap();
    let mut r = Rig {
        state,
        store,
        clock,
        next_id: 100,
        pushes: Vec::new(),
        replies: Vec::new(),
    };
    let caps: Vec<(String, u32)> = pools(&mut r)
        .into_iter()
        .map(|p| (p.name, p.capacity))
        .collect();
    assert_eq!(
        caps,
        [("api".into(), 7), ("db".into(), 5), ("new".into(), 1)]
    );
    // What the config set is stored too: a restart without it keeps it.
    let r = r.restart();
    let mut r = r;
    assert_eq!(pool(&mut r, "db").capacity, 5);
    assert_eq!(pool(&mut r, "new").capacity, 1);
}

#[test]
fn max_active_limits_the_jobs_of_a_pipeline_running_at_once() {
    let mut r = rig(10);
    let mut spec = PipelineSpec::default();
    for n in ["a", "b", "c", "d"] {
        spec = spec.job(n, "W", &[]);
    }
    spec.max_active = Some(2);
    let id = r.submit_planned(spec);
    let other = r.submit_planned(single());
    let a = r.assigned();
    let mine: Vec<&Assignment> = a.iter().filter(|x| x.job.pipeline == id).collect();
    assert_eq!(mine.len(), 2);
    assert!(
        a.iter().any(|x| x.job.pipeline == other),
        "another pipeline is not held up"
    );
    r.succeed(mine[0].job);
    let next = r.assigned();
    assert_eq!(next.len(), 1);
    r.fail(mine[1].job);
    assert_eq!(r.assigned().len(), 1);
    let s = r.status(id);
    let running = s
        .jobs
        .values()
        .filter(|j| j.state == JobState::Running)
        .count();
    assert_eq!(running, 2);
}

#[test]
fn why_a_queued_job_waits_is_told() {
    let mut r = rig(2);
    set_pool(&mut r, "db", 1);
    let first = r.submit_planned(in_pool("db", 1));
    let parked = r.submit_planned(in_pool("db", 1));
    r.submit_planned(single());
    assert_eq!(r.assigned().len(), 2);
    // The broker's slots are taken: a job of no pool waits in the run queue, as does a
    // lower one behind it.
    let free = r.submit_planned(prio_spec(5));
    let behind = r.submit_planned(prio_spec(0));
    // What `status` says (`waiting_for`), as users read it.
    let why = |r: &mut Rig, id| r.status(id).jobs["a"].waiting_for.clone();
    assert_eq!(why(&mut r, first), None, "running");
    assert_eq!(
        why(&mut r, parked).as_deref(),
        Some("pool db: 1/1 slots in use, 0 queued ahead")
    );
    assert_eq!(
        why(&mut r, free).as_deref(),
        Some("2/2 slots busy on the 1 broker offering worker W"),
        "first in line"
    );
    assert_eq!(
        why(&mut r, behind).as_deref(),
        Some("behind 1 job of higher priority")
    );
    let same = r.submit_planned(prio_spec(0));
    assert_eq!(
        why(&mut r, same).as_deref(),
        Some("behind 1 job of higher priority, 1 of the same priority queued earlier")
    );
    let nobody = r.submit_planned(PipelineSpec::default().job("a", "Other", &[]));
    assert_eq!(
        why(&mut r, nobody).as_deref(),
        Some("no connected broker offers worker Other")
    );
    let mut capped = PipelineSpec::default()
        .job("a", "W", &[])
        .job("b", "W", &[]);
    capped.max_active = Some(1);
    let mut r2 = rig(5);
    let c = r2.submit_planned(capped);
    r2.assigned();
    let reasons: Vec<Option<String>> = (0..2).map(|i| r2.state.queued_reason(c, i)).collect();
    assert!(
        reasons.contains(&Some("pipeline max_active 1 reached".into())),
        "{reasons:?}"
    );
}

fn prio_spec(p: i64) -> PipelineSpec {
    let mut s = single();
    s.priority = p;
    s
}

#[test]
fn a_parked_job_that_was_cancelled_or_can_no_longer_fit_does_not_hold_up_its_pool() {
    let mut r = rig(10);
    set_pool(&mut r, "db", 3);
    let small = r.submit_planned(in_pool("db", 2));
    let running = r.assigned().remove(0);
    assert_eq!(running.job.pipeline, small);
    let mut big = in_pool("db", 3);
    big.priority = 10;
    let big = r.submit_planned(big);
    assert!(r.assigned().is_empty());
    // The big job is cancelled while parked: a small one may take the free slot.
    r.send(CLIENT, Request::Cancel { id: big });
    r.submit_planned(in_pool("db", 1));
    assert_eq!(r.assigned().len(), 1);
    // A big job parked, then the pool shrinks below its slots: it waits for the pool to
    // grow, and smaller jobs of the pool go on meanwhile.
    let mut big = in_pool("db", 3);
    big.priority = 10;
    let big = r.submit_planned(big);
    set_pool(&mut r, "db", 2);
    r.succeed(running.job);
    let after = r.submit_planned(in_pool("db", 1));
    let a = r.assigned();
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].job.pipeline, after);
    assert_eq!(
        r.state.queued_reason(big, 0).as_deref(),
        Some("pool db: needs 3 slots, the pool has 2")
    );
    // One more waits behind the big one for a free slot, and gets it when one frees.
    let waiting = r.submit_planned(in_pool("db", 1));
    assert!(r.assigned().is_empty(), "the pool is full");
    r.succeed(a[0].job);
    let a = r.assigned();
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].job.pipeline, waiting);
    set_pool(&mut r, "db", 5);
    let a = r.assigned();
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].job.pipeline, big);
}

#[test]
fn a_retried_job_whose_pool_was_removed_waits_until_the_pool_is_back() {
    let mut r = rig(2);
    set_pool(&mut r, "db", 1);
    let mut spec = in_pool("db", 1);
    spec.retries = Some(0);
    let id = r.submit_planned(spec);
    let a = r.assigned().remove(0);
    r.fail(a.job);
    r.advance(pypelinin_common::protocol::Advance {
        pipeline: id,
        finish: true,
        ..Default::default()
    });
    assert_eq!(r.pipeline_state(id), PipelineState::Failed);
    assert!(matches!(
        r.send(
            CLIENT,
            Request::Pool(PoolRequest::Remove { name: "db".into() })
        ),
        Reply::Pools(_)
    ));
    assert!(matches!(
        r.send(CLIENT, Request::Retry { id, jobs: vec![] }),
        Reply::Status(_)
    ));
    let snap = r.take(id);
    assert_eq!(snap.id, id);
    r.advance(pypelinin_common::protocol::Advance {
        pipeline: id,
        enqueue: vec![0],
        close_on_success: true,
        ..Default::default()
    });
    assert!(r.assigned().is_empty(), "no pool, no slot");
    assert_eq!(
        r.state.queued_reason(id, 0).as_deref(),
        Some("pool db does not exist")
    );
    set_pool(&mut r, "db", 1);
    let again = r.assigned();
    assert_eq!(again.len(), 1);
    r.succeed(again[0].job);
    assert_eq!(r.pipeline_state(id), PipelineState::Succeeded);
}
