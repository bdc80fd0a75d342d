//! Losing nothing: crash isolation, timeouts, retries, cancel, and processes that die.

use std::time::{Duration, Instant};

use pypelinin_common::status::{JobState, PipelineState};
use pypelinin_common::PipelineSpec;
use pypelinin_tests::job;
use pypelinin_tests::{assert_ran_once_in_order, Cluster};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(120);

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn workers_that_abort_segfault_exit_exhaust_memory_or_hang_fail_only_their_attempt() {
    let mut c = Cluster::start_with(1, 2, &["--slot-memory-mb", "256"]);
    let mut pm = c.client();
    let mut spec = PipelineSpec::default();
    for mode in ["panic", "abort", "segfault", "exit", "oom"] {
        spec.jobs
            .insert(mode.into(), job("Crash", &[], json!({"mode": mode})));
    }
    let mut hang = job("Crash", &[], json!({"mode": "hang"}));
    hang.timeout_ms = Some(400);
    spec.jobs.insert("hang".into(), hang);
    spec.jobs.insert("fine".into(), job("Noop", &[], json!({})));
    let id = pm.start(&spec).unwrap();
    let status = pm.wait(id, WAIT).unwrap().status().clone();
    assert_eq!(status.state, PipelineState::Failed);
    let err = |j: &str| status.jobs[j].error.clone().unwrap_or_default();
    assert_eq!(status.jobs["fine"].state, JobState::Succeeded);
    assert!(err("panic").contains("panicked"), "{}", err("panic"));
    assert!(err("abort").contains("SIGABRT"), "{}", err("abort"));
    assert!(err("segfault").contains("SIGSEGV"), "{}", err("segfault"));
    assert!(
        err("exit").contains("exited with code 3"),
        "{}",
        err("exit")
    );
    assert!(err("oom").contains("SIGABRT"), "{}", err("oom"));
    assert!(
        err("hang").contains("timed out after 400 ms"),
        "{}",
        err("hang")
    );
    for j in ["panic", "abort", "segfault", "exit", "oom", "hang"] {
        assert_eq!(status.jobs[j].state, JobState::Failed, "{j}");
    }
    assert!(c.brokers[0].alive(), "the broker survives all of it");
    let id = pm
        .start(&PipelineSpec::default().job("after", "Echo", &[]))
        .unwrap();
    assert!(pm.wait(id, WAIT).unwrap().is_success(), "and keeps serving");
}

#[test]
fn retries_back_off_and_record_every_attempt() {
    let c = Cluster::start(1, 2);
    let mut pm = c.client();
    let mut spec = PipelineSpec {
        retry_delay_ms: Some(150),
        ..PipelineSpec::default()
    };
    let mut flaky = job("Flaky", &[], json!({"fail_attempts": 2}));
    flaky.retries = Some(2);
    spec.jobs.insert("flaky".into(), flaky);
    spec.jobs
        .insert("child".into(), job("Echo", &["flaky"], json!({})));
    let id = pm.start(&spec).unwrap();
    let outcome = pm.wait(id, WAIT).unwrap();
    assert!(outcome.is_success(), "{outcome:?}");
    let f = &outcome.status().jobs["flaky"];
    assert_eq!(f.attempts, 3);
    assert_eq!(f.history.len(), 3);
    assert!(f.history[0].error.as_deref().unwrap().contains("attempt 1"));
    assert!(f.history[1].error.as_deref().unwrap().contains("attempt 2"));
    assert!(f.history[2].error.is_none());
    let gap = |a: usize| f.history[a + 1].started_ms - f.history[a].finished_ms.unwrap();
    assert!(gap(0) >= 150, "first retry after the delay: {}", gap(0));
    assert!(
        gap(1) >= 300,
        "second retry after twice the delay: {}",
        gap(1)
    );
    assert_eq!(
        pm.outputs(id).unwrap()["child"]["parents"]["flaky"]["attempt"],
        3
    );

    let mut spec = PipelineSpec::default();
    let mut fail = job("Fail", &[], json!({"message": "always"}));
    fail.retries = Some(1);
    spec.jobs.insert("fail".into(), fail);
    let id = pm.start(&spec).unwrap();
    let outcome = pm.wait(id, WAIT).unwrap();
    assert!(!outcome.is_success());
    assert_eq!(
        outcome.status().jobs["fail"].attempts,
        2,
        "1 + retries attempts, then failed"
    );
}

#[test]
fn cancel_stops_running_jobs_and_frees_their_slots() {
    let c = Cluster::start(1, 2);
    let mut pm = c.client();
    let mut spec = PipelineSpec::default();
    spec.jobs
        .insert("long1".into(), job("Sleep", &[], json!({"ms": 60_000})));
    spec.jobs
        .insert("long2".into(), job("Sleep", &[], json!({"ms": 60_000})));
    spec.jobs
        .insert("after".into(), job("Noop", &["long1"], json!({})));
    let id = pm.start(&spec).unwrap();
    wait_until("both jobs running", Duration::from_secs(30), || {
        let s = pm.status(id).unwrap();
        s.jobs["long1"].state == JobState::Running && s.jobs["long2"].state == JobState::Running
    });
    let s = pm.cancel(id).unwrap();
    assert_eq!(s.state, PipelineState::Cancelled);
    for j in ["long1", "long2", "after"] {
        assert_eq!(s.jobs[j].state, JobState::Cancelled, "{j}");
    }
    // Both slots come back quickly: the sleeping children were killed, not waited for.
    let t0 = Instant::now();
    let ids: Vec<_> = (0..2)
        .map(|_| {
            pm.start(&PipelineSpec::default().job("x", "Sleep", &[]))
                .unwrap()
        })
        .collect();
    let done = pm.wait_all(&ids, Duration::from_secs(20)).unwrap();
    assert!(done.iter().all(|s| s.state == PipelineState::Succeeded));
    assert!(t0.elapsed() < Duration::from_secs(20));
    assert_eq!(
        pm.cancel(id).unwrap().state,
        PipelineState::Cancelled,
        "idempotent"
    );
}

fn sleep_chains(n: usize, len: usize, ms: u64) -> Vec<PipelineSpec> {
    (0..n)
        .map(|k| {
            let mut p = PipelineSpec::default()
                .with_data("ms", json!(ms))
                .with_data("k", json!(k));
            for j in 0..len {
                let name = format!("s{j}");
                let prev = format!("s{}", j.wrapping_sub(1));
                let after: Vec<&str> = if j == 0 { vec![] } else { vec![prev.as_str()] };
                p = p.job(&name, "Sleep", &after);
            }
            p
        })
        .collect()
}

#[test]
fn a_router_killed_mid_run_restarts_and_every_pipeline_finishes() {
    let mut c = Cluster::start(2, 2);
    let mut pm = c.client();
    let specs = sleep_chains(30, 3, 40);
    let ids: Vec<_> = specs.iter().map(|s| pm.start(s).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(500));
    let before: Vec<_> = ids.iter().map(|id| pm.status(*id).unwrap()).collect();
    let done_before: usize = before
        .iter()
        .map(|s| {
            s.jobs
                .values()
                .filter(|j| j.state == JobState::Succeeded)
                .count()
        })
        .sum();
    c.kill_and_restart_router();
    eprintln!("{}", c.log("router-1.log"));
    let after = pm.wait_all(&ids, WAIT).unwrap();
    let mut reruns = 0;
    for ((s, spec), b) in after.iter().zip(&specs).zip(&before) {
        assert_eq!(s.state, PipelineState::Succeeded, "{}", s.id);
        for (name, j) in &s.jobs {
            if b.jobs[name].state == JobState::Succeeded {
                assert_eq!(
                    j.history, b.jobs[name].history,
                    "{name} succeeded before the crash: never again"
                );
            }
            reruns += j.attempts as usize - 1;
        }
        if s.jobs.values().all(|j| j.attempts == 1) {
            assert_ran_once_in_order(s, spec);
        }
    }
    eprintln!("router kill -9: {done_before} jobs had succeeded before; {reruns} attempts re-run after the restart");
}

#[test]
fn jobs_of_a_killed_broker_move_to_another_and_its_late_reports_are_refused() {
    let c = Cluster::start(2, 1);
    let mut pm = c.client();
    let mut spec = PipelineSpec::default();
    for k in 0..4 {
        spec.jobs
            .insert(format!("j{k}"), job("Sleep", &[], json!({"ms": 1500})));
    }
    let id = pm.start(&spec).unwrap();
    wait_until("two jobs running", Duration::from_secs(30), || {
        pm.status(id)
            .unwrap()
            .jobs
            .values()
            .filter(|j| j.state == JobState::Running)
            .count()
            == 2
    });
    let victim = pm
        .status(id)
        .unwrap()
        .jobs
        .values()
        .find(|j| j.state == JobState::Running)
        .map(|j| j.history[0].broker.clone())
        .unwrap();
    let pid: u32 = victim.split('-').rev().nth(1).unwrap().parse().unwrap();
    let k = c
        .brokers
        .iter()
        .position(|b| b.pid() == pid)
        .expect("victim is one of ours");
    c.brokers[k].signal("KILL");
    let outcome = pm.wait(id, WAIT).unwrap();
    assert!(outcome.is_success(), "{outcome:?}");
    let moved: Vec<_> = outcome
        .status()
        .jobs
        .values()
        .filter(|j| j.attempts == 2)
        .collect();
    assert!(
        !moved.is_empty(),
        "the killed broker's job ran again elsewhere"
    );
    for j in moved {
        assert_eq!(j.history[0].broker, victim);
        assert!(j.history[0]
            .error
            .as_deref()
            .unwrap()
            .contains("fell silent"));
        assert_ne!(j.history[1].broker, victim);
    }
}

#[test]
fn a_killed_pipeliner_is_replaced_and_the_pipeline_goes_on() {
    let mut c = Cluster::start(1, 2);
    let mut pm = c.client();
    let spec = sleep_chains(1, 6, 250).remove(0);
    let id = pm.start(&spec).unwrap();
    wait_until("the chain to start", Duration::from_secs(30), || {
        pm.status(id).unwrap().jobs["s1"].state != JobState::Queued
    });
    c.pipeliners[0].signal("KILL");
    c.add_pipeliner();
    let outcome = pm.wait(id, WAIT).unwrap();
    assert!(outcome.is_success(), "{outcome:?}");
    assert_ran_once_in_order(outcome.status(), &spec);
}

#[test]
fn a_broker_asked_to_stop_finishes_its_job_then_exits_cleanly() {
    let mut c = Cluster::start(1, 1);
    let mut pm = c.client();
    let mut spec = PipelineSpec::default();
    spec.jobs
        .insert("work".into(), job("Sleep", &[], json!({"ms": 1000})));
    spec.jobs
        .insert("next".into(), job("Noop", &["work"], json!({})));
    let id = pm.start(&spec).unwrap();
    wait_until("the job to run", Duration::from_secs(30), || {
        pm.status(id).unwrap().jobs["work"].state == JobState::Running
    });
    c.brokers[0].signal("TERM");
    let st = c.brokers[0]
        .wait_exit(Duration::from_secs(20))
        .expect("broker exits");
    assert!(
        st.success(),
        "clean exit: {st:?}\n{}",
        c.log("broker-0.log")
    );
    let s = pm.status(id).unwrap();
    assert_eq!(
        s.jobs["work"].state,
        JobState::Succeeded,
        "finished, not abandoned"
    );
    assert_eq!(s.jobs["work"].attempts, 1);
    assert_eq!(
        s.jobs["next"].state,
        JobState::Queued,
        "a draining broker takes no new job"
    );
    c.add_broker(1);
    assert!(pm.wait(id, WAIT).unwrap().is_success());
}

#[test]
fn a_job_that_finishes_while_the_router_is_down_is_reported_when_it_is_back() {
    let mut c = Cluster::start(1, 1);
    let mut pm = c.client();
    let mut spec = PipelineSpec::default();
    spec.jobs
        .insert("work".into(), job("Sleep", &[], json!({"ms": 800})));
    let id = pm.start(&spec).unwrap();
    wait_until("the job to run", Duration::from_secs(30), || {
        pm.status(id).unwrap().jobs["work"].state == JobState::Running
    });
    c.router.signal("STOP"); // the router hangs: no answers at all
    std::thread::sleep(Duration::from_millis(1500)); // the job ends meanwhile
    c.kill_and_restart_router();
    let outcome = pm.wait(id, WAIT).unwrap();
    assert!(outcome.is_success(), "{outcome:?}");
    assert_eq!(
        outcome.status().jobs["work"].attempts,
        1,
        "kept and reported, not re-run"
    );
}

#[test]
fn a_frozen_broker_loses_its_lease_and_its_late_report_changes_nothing() {
    let mut c = Cluster::start(1, 1);
    let mut pm = c.client();
    let mut spec = PipelineSpec::default();
    spec.jobs
        .insert("work".into(), job("Sleep", &[], json!({"ms": 1000})));
    let id = pm.start(&spec).unwrap();
    wait_until("the job to run", Duration::from_secs(30), || {
        pm.status(id).unwrap().jobs["work"].state == JobState::Running
    });
    c.brokers[0].signal("STOP");
    c.add_broker(1);
    // Past the lease the job moves to the new broker and succeeds there.
    let outcome = pm.wait(id, WAIT).unwrap();
    assert!(outcome.is_success());
    let work = &outcome.status().jobs["work"];
    assert_eq!(work.attempts, 2);
    assert!(work.history[0]
        .error
        .as_deref()
        .unwrap()
        .contains("fell silent"));
    // The frozen broker wakes up, finishes attempt 1 and reports it: refused as stale.
    c.brokers[0].signal("CONT");
    wait_until("the stale report", Duration::from_secs(30), || {
        c.log("router.log").contains("stale report ignored")
    });
    let after = pm.status(id).unwrap();
    assert_eq!(after.jobs["work"].history, work.history, "nothing changed");
    assert_eq!(after.state, PipelineState::Succeeded);
}

#[test]
fn a_prefetched_job_waits_behind_a_long_one_without_its_timeout_running_out() {
    // One slot and a queue of two: `short` is sent to the broker while `long` runs,
    // and waits there for longer than its timeout plus the router's lease.
    let c = Cluster::start_with(1, 1, &["--prefetch", "2"]);
    let mut pm = c.client();
    prime_with_short_jobs(&mut pm);
    let long = pm
        .start(
            &PipelineSpec::default()
                .job("long", "Sleep", &[])
                .with_data("ms", json!(3800)),
        )
        .unwrap();
    wait_until("the long job to start", WAIT, || {
        pm.status(long).unwrap().jobs["long"].state == JobState::Running
    });
    let mut spec = PipelineSpec::default();
    let mut short = job("Sleep", &[], json!({"ms": 20}));
    short.timeout_ms = Some(200);
    spec.jobs.insert("short".into(), short);
    let short = pm.start(&spec).unwrap();
    let short = pm.wait(short, WAIT).unwrap().status().clone();
    let long = pm.wait(long, WAIT).unwrap().status().clone();
    let (l, s) = (&long.jobs["long"], &short.jobs["short"]);
    assert_eq!(short.state, PipelineState::Succeeded, "{s:?}");
    assert_eq!(s.attempts, 1, "never timed out and retried: {s:?}");
    assert!(
        s.started_ms.unwrap() < l.finished_ms.unwrap(),
        "short sent to the broker while long still ran: {l:?} {s:?}"
    );
    assert!(
        s.finished_ms.unwrap() >= l.finished_ms.unwrap(),
        "and run after it, in the one slot: {l:?} {s:?}"
    );
}

#[test]
fn a_job_waiting_in_a_slot_process_behind_a_hung_one_runs_in_the_next_process() {
    // One slot, whose `Sleep` jobs are known to be quick. `hang` and `after` wait at the
    // broker; the slot starts `hang` and, since its jobs are quick and it has only just
    // started, sends `after` to the slot process too, to wait in its pipe.
    // The hang's timeout kills that process: `after` must run in the next one, once.
    let c = Cluster::start_with(1, 1, &["--prefetch", "2"]);
    let mut pm = c.client();
    prime_with_short_jobs(&mut pm);
    let sleep = |name: &str, ms: u64, timeout_ms: Option<u64>| {
        let mut j = job("Sleep", &[], json!({ "ms": ms }));
        j.timeout_ms = timeout_ms;
        let mut p = PipelineSpec::default();
        p.jobs.insert(name.into(), j);
        p
    };
    // `lead` runs first and gives `hang` and `after` time to reach the broker's queue
    // (the router queues them there: its jobs are quick). When `lead` ends, the slot
    // starts `hang` and finds `after` ready at once. All three go in one batch, in
    // order; should the broker still see them otherwise (a loaded machine), the round is
    // run again, at most 5 times, and every round must end right either way.
    let marker = "jobs queued in a lost slot process go to the next one";
    let mut queued_behind = false;
    for round in 0..5 {
        // A round's hang weighs on the slot's and the router's averages of job lengths:
        // quick jobs bring them back down (0.8^20 of 1,500 ms < 20 ms at the slot).
        if round > 0 {
            prime_with_short_jobs(&mut pm);
        }
        for _ in 0..20 {
            let quick = pm.start(&sleep("quick", 1, None)).unwrap();
            assert!(pm.wait(quick, WAIT).unwrap().is_success());
        }
        let seen = c.log("broker-0.log").matches(marker).count();
        let lead = pm.start_async(&sleep("lead", 60, None)).unwrap();
        let hung = pm.start_async(&sleep("hang", 600_000, Some(1500))).unwrap();
        let after = pm.start_async(&sleep("after", 1, None)).unwrap();
        pm.confirm().unwrap();
        assert!(pm.wait(lead, WAIT).unwrap().is_success());
        let after = pm.wait(after, WAIT).unwrap().status().clone();
        let hung = pm.wait(hung, WAIT).unwrap().status().clone();
        let (h, a) = (&hung.jobs["hang"], &after.jobs["after"]);
        assert!(
            h.error
                .as_deref()
                .is_some_and(|e| e.contains("timed out after 1500 ms")),
            "round {round}: {h:?}"
        );
        assert_eq!(
            after.state,
            PipelineState::Succeeded,
            "round {round}: {a:?}"
        );
        assert_eq!(
            a.attempts, 1,
            "round {round}: not failed with the hung process: {a:?}"
        );
        if c.log("broker-0.log").matches(marker).count() > seen {
            queued_behind = true;
            break;
        }
    }
    assert!(
        queued_behind,
        "after was never queued in the hung process in 5 rounds"
    );
}

/// Runs instant jobs, so that the router knows the broker's jobs are short and fills
/// its queue. Enough of them that its moving average of job durations forgets the
/// first, which may include starting a slot process on a loaded machine (0.9^40 < 2 %).
fn prime_with_short_jobs(pm: &mut pypelinin_client::PipelineManager) {
    for _ in 0..40 {
        let id = pm
            .start(&PipelineSpec::default().job("quick", "Noop", &[]))
            .unwrap();
        assert!(pm.wait(id, WAIT).unwrap().is_success());
    }
}

#[test]
fn long_jobs_are_not_queued_at_a_busy_broker() {
    // A queue of up to 4, but once the broker's jobs are known to take 300 ms, a job
    // is sent only when a slot is free: `b` is assigned after `a` ends.
    let c = Cluster::start_with(1, 1, &["--prefetch", "4"]);
    let mut pm = c.client();
    let sleep = |ms: u64| {
        PipelineSpec::default()
            .job("s", "Sleep", &[])
            .with_data("ms", json!(ms))
    };
    let first = pm.start(&sleep(300)).unwrap();
    assert!(pm.wait(first, WAIT).unwrap().is_success());
    let a = pm.start(&sleep(300)).unwrap();
    let b = pm.start(&sleep(300)).unwrap();
    let a = pm.wait(a, WAIT).unwrap().status().jobs["s"].clone();
    let b = pm.wait(b, WAIT).unwrap().status().jobs["s"].clone();
    let (first, second) = if a.started_ms <= b.started_ms {
        (a, b)
    } else {
        (b, a)
    };
    assert!(
        second.started_ms.unwrap() >= first.finished_ms.unwrap(),
        "the second long job waited at the router, not at the broker: {first:?} {second:?}"
    );
}

#[test]
fn a_chain_runs_and_closes_while_its_pipeliner_is_frozen() {
    // The pipeliner asks ahead for every job to start once its parents succeed, and
    // for the pipeline to close once they all have: a chain that succeeds needs it
    // only at the start.
    let c = Cluster::start(1, 1);
    let mut pm = c.client();
    let mut spec = PipelineSpec::default();
    spec.jobs
        .insert("a".into(), job("Sleep", &[], json!({"ms": 300})));
    spec.jobs
        .insert("b".into(), job("Sleep", &["a"], json!({"ms": 300})));
    spec.jobs
        .insert("c".into(), job("Sleep", &["b"], json!({"ms": 300})));
    let id = pm.start(&spec).unwrap();
    wait_until("a to start", WAIT, || {
        pm.status(id).unwrap().jobs["a"].state == JobState::Running
    });
    c.pipeliners[0].signal("STOP");
    // Well within the 3 s a silent pipeliner keeps its pipelines.
    let frozen = Instant::now();
    let status = pm
        .wait(id, Duration::from_secs(2))
        .unwrap()
        .status()
        .clone();
    assert!(frozen.elapsed() < Duration::from_secs(3));
    c.pipeliners[0].signal("CONT");
    assert_eq!(status.state, PipelineState::Succeeded, "{:?}", status.jobs);
    assert_ran_once_in_order(&status, &spec);
    // A pipeline with a failure still waits for the pipeliner to skip and close.
    let failing = PipelineSpec::default()
        .job("bad", "Fail", &[])
        .job("never", "Noop", &["bad"]);
    let id = pm.start(&failing).unwrap();
    let status = pm.wait(id, WAIT).unwrap().status().clone();
    assert_eq!(status.state, PipelineState::Failed);
    assert_eq!(status.jobs["never"].state, JobState::Skipped);
}
