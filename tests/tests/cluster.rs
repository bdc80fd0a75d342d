//! End to end over real processes: router, pipeliner and two brokers on loopback.

use std::time::Duration;

use pypelinin_common::status::{JobState, PipelineState};
use pypelinin_common::PipelineSpec;
use pypelinin_tests::{assert_ran_once_in_order, Cluster};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(120);

fn n_of(c: &Cluster, id: pypelinin_common::PipelineId, job: &str) -> u64 {
    let out = c
        .stored_output(id, job)
        .unwrap_or_else(|| panic!("store has no output for {job}"));
    out["n"].as_u64().unwrap()
}

#[test]
fn a_chain_runs_in_order_and_passes_data_along() {
    let c = Cluster::start(2, 2);
    let mut pm = c.client();
    let spec = PipelineSpec::default()
        .with_data("i", json!(7))
        .job("a", "Step", &[])
        .job("b", "Step", &["a"])
        .job("c", "Step", &["b"])
        .job("d", "Step", &["c"])
        .job("e", "Step", &["d"]);
    let id = pm.start(&spec).unwrap();
    let outcome = pm.wait(id, WAIT).unwrap();
    assert!(outcome.is_success(), "{:?}", outcome);
    assert_ran_once_in_order(outcome.status(), &spec);
    for (k, job) in ["a", "b", "c", "d", "e"].iter().enumerate() {
        assert_eq!(n_of(&c, id, job), k as u64 + 1, "job {job}");
    }
    // The router keeps the same outputs for the job's children and for clients.
    let outputs = pm.outputs(id).unwrap();
    assert_eq!(outputs["e"]["n"], 5);
    assert_eq!(outputs["e"]["i"], 7);
}

#[test]
fn a_diamond_joins_both_branches() {
    let c = Cluster::start(2, 2);
    let mut pm = c.client();
    let spec = PipelineSpec::default()
        .with_data("i", json!(1))
        .job("a", "Step", &[])
        .job("b", "Step", &["a"])
        .job("c", "Step", &["a"])
        .job("d", "Join", &["b", "c"]);
    let id = pm.start(&spec).unwrap();
    let outcome = pm.wait(id, WAIT).unwrap();
    assert!(outcome.is_success(), "{:?}", outcome);
    assert_ran_once_in_order(outcome.status(), &spec);
    let d = c.stored_output(id, "d").unwrap();
    assert_eq!((d["n"].as_u64(), d["k"].as_u64()), (Some(3), Some(2)));
}

#[test]
fn a_500_job_fan_out_with_one_join() {
    let c = Cluster::start(2, 2);
    let mut pm = c.client();
    let mut spec = PipelineSpec::default()
        .with_data("i", json!(3))
        .job("root", "Step", &[]);
    let names: Vec<String> = (0..500).map(|k| format!("f{k:03}")).collect();
    for n in &names {
        spec = spec.job(n, "Step", &["root"]);
    }
    let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
    spec = spec.job("join", "Join", &refs);
    let id = pm.start(&spec).unwrap();
    let outcome = pm.wait(id, WAIT).unwrap();
    assert!(outcome.is_success(), "{:?}", outcome.status().failed_jobs());
    assert_eq!(outcome.status().jobs.len(), 502);
    assert_ran_once_in_order(outcome.status(), &spec);
    for n in &names {
        assert_eq!(n_of(&c, id, n), 2, "{n}");
    }
    let join = c.stored_output(id, "join").unwrap();
    assert_eq!(
        (join["n"].as_u64(), join["k"].as_u64()),
        (Some(3), Some(500))
    );
    // Both brokers took part.
    let brokers: std::collections::HashSet<_> = outcome
        .status()
        .jobs
        .values()
        .map(|j| j.history[0].broker.clone())
        .collect();
    assert_eq!(brokers.len(), 2, "{brokers:?}");
}

#[test]
fn two_hundred_pipelines_at_once() {
    let c = Cluster::start(2, 2);
    let mut pm = c.client();
    let specs: Vec<PipelineSpec> = (0..200)
        .map(|i| {
            PipelineSpec::default()
                .with_data("i", json!(i))
                .job("a", "Step", &[])
                .job("b", "Step", &["a"])
                .job("c", "Step", &["a"])
                .job("d", "Join", &["b", "c"])
        })
        .collect();
    let ids: Vec<_> = specs.iter().map(|s| pm.start(s).unwrap()).collect();
    let statuses = pm.wait_all(&ids, WAIT).unwrap();
    for ((id, status), spec) in ids.iter().zip(&statuses).zip(&specs) {
        assert_eq!(status.state, PipelineState::Succeeded, "{id}");
        assert_ran_once_in_order(status, spec);
        let d = c.stored_output(*id, "d").unwrap();
        assert_eq!(d["i"], spec.data["i"], "outputs of pipelines must not mix");
        assert_eq!(d["k"], 2);
    }
    let list = pm.list(1000).unwrap();
    assert_eq!(list.len(), 200);
    assert!(list.iter().all(|p| p.done == 4 && p.jobs == 4));
}

#[test]
fn a_failing_job_fails_its_pipeline_skips_descendants_and_lets_other_branches_finish() {
    let c = Cluster::start(2, 2);
    let mut pm = c.client();
    let mut spec = PipelineSpec::default()
        .job("start", "Noop", &[])
        .job("bad", "Fail", &["start"])
        .job("after_bad", "Noop", &["bad"])
        .job("after_after", "Noop", &["after_bad"])
        .job("side", "Sleep", &["start"])
        .job("side2", "Noop", &["side"]);
    spec.jobs
        .get_mut("bad")
        .unwrap()
        .data
        .insert("message".into(), json!("disk on fire"));
    spec.jobs
        .get_mut("side")
        .unwrap()
        .data
        .insert("ms".into(), json!(300));
    let id = pm.start(&spec).unwrap();
    let outcome = pm.wait(id, WAIT).unwrap();
    let pypelinin_client::Outcome::Failed { failures, status } = outcome else {
        panic!("pipeline should fail: {outcome:?}");
    };
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].job, "bad");
    assert_eq!(failures[0].error, "disk on fire");
    let st = |j: &str| status.jobs[j].state;
    assert_eq!(st("after_bad"), JobState::Skipped);
    assert_eq!(st("after_after"), JobState::Skipped);
    assert_eq!(
        status.jobs["after_bad"].attempts, 0,
        "skipped jobs never run"
    );
    assert_eq!(st("side"), JobState::Succeeded);
    assert_eq!(
        st("side2"),
        JobState::Succeeded,
        "the other branch must finish"
    );
    assert!(c.stored_output(id, "after_bad").is_none());
}

#[test]
fn a_panicking_worker_fails_its_job_and_the_broker_keeps_serving() {
    let c = Cluster::start(1, 1);
    let mut pm = c.client();
    let mut spec = PipelineSpec::default().job("boom", "Crash", &[]);
    spec.jobs
        .get_mut("boom")
        .unwrap()
        .data
        .insert("message".into(), json!("kaboom"));
    let id = pm.start(&spec).unwrap();
    let outcome = pm.wait(id, WAIT).unwrap();
    assert!(!outcome.is_success());
    let err = outcome.status().jobs["boom"].error.clone().unwrap();
    assert!(err.contains("panicked") && err.contains("kaboom"), "{err}");
    // Same broker, next pipeline.
    let id = pm
        .start(&PipelineSpec::default().job("ok", "Noop", &[]))
        .unwrap();
    assert!(pm.wait(id, WAIT).unwrap().is_success());
}

#[test]
fn jobs_for_a_worker_no_broker_offers_wait_instead_of_failing() {
    let c = Cluster::start(1, 1);
    let mut pm = c.client();
    let id = pm
        .start(&PipelineSpec::default().job("x", "NobodyHasThis", &[]))
        .unwrap();
    let err = pm.wait(id, Duration::from_millis(800)).unwrap_err();
    assert!(
        matches!(err, pypelinin_client::ClientError::Timeout { .. }),
        "{err}"
    );
    let s = pm.status(id).unwrap();
    assert_eq!(s.state, PipelineState::Running);
    assert_eq!(s.jobs["x"].state, JobState::Queued);
}

#[test]
fn invalid_pipelines_are_refused_with_a_reason() {
    let c = Cluster::start(0, 1);
    let mut pm = c.client();
    let refused =
        |pm: &mut pypelinin_client::PipelineManager, spec: PipelineSpec| match pm.start(&spec) {
            Err(pypelinin_client::ClientError::Transport(
                pypelinin_common::transport::TransportError::Refused(
                    pypelinin_client::ProtocolError::InvalidPipeline(msg),
                ),
            )) => msg,
            other => panic!("expected a refusal, got {other:?}"),
        };
    let msg = refused(&mut pm, PipelineSpec::default());
    assert!(msg.contains("no jobs"), "{msg}");
    let msg = refused(
        &mut pm,
        PipelineSpec::default()
            .job("s", "W", &[])
            .job("a", "W", &["s", "b"])
            .job("b", "W", &["a"]),
    );
    assert!(
        msg.contains("cycle") && msg.contains("a -> b -> a") || msg.contains("b -> a -> b"),
        "{msg}"
    );
    let msg = refused(&mut pm, PipelineSpec::default().job("a", "W", &["ghost"]));
    assert!(msg.contains("ghost"), "{msg}");
}

#[test]
fn retry_reruns_what_failed_and_keeps_what_succeeded() {
    let c = Cluster::start(1, 2);
    let mut pm = c.client();
    let mut spec = PipelineSpec::default()
        .job("a", "Step", &[])
        .job("flaky", "Flaky", &["a"])
        .job("after", "Echo", &["flaky"]);
    spec.jobs
        .get_mut("flaky")
        .unwrap()
        .data
        .insert("fail_attempts".into(), json!(1));
    let id = pm.start(&spec).unwrap();
    let first = pm.wait(id, WAIT).unwrap();
    assert!(!first.is_success());
    assert_eq!(first.status().jobs["after"].state, JobState::Skipped);
    let err = pm.retry(id, &["nope".to_string()]).unwrap_err().to_string();
    assert!(err.contains("no job \"nope\""), "{err}");
    pm.retry(id, &[]).unwrap();
    let second = pm.wait(id, WAIT).unwrap();
    assert!(second.is_success(), "{second:?}");
    let s = second.status();
    assert_eq!(
        s.jobs["a"].history,
        first.status().jobs["a"].history,
        "kept, not re-run"
    );
    assert_eq!(s.jobs["flaky"].attempts, 2);
    assert_eq!(s.jobs["after"].attempts, 1);
    // Named retry: the job and its descendants run again, its parent does not.
    pm.retry(id, &["flaky".to_string()]).unwrap();
    let third = pm.wait(id, WAIT).unwrap();
    assert!(third.is_success());
    assert_eq!(third.status().jobs["flaky"].attempts, 3);
    assert_eq!(third.status().jobs["after"].attempts, 2);
    assert_eq!(third.status().jobs["a"].attempts, 1);

    let brokers = pm.brokers().unwrap();
    assert_eq!(brokers.len(), 1);
    assert_eq!(brokers[0].slots, 2);
    assert!(brokers[0].workers.contains(&"Flaky".to_string()));
    let m = pm.metrics().unwrap();
    assert_eq!(m.pipelines.get("succeeded"), Some(&1));
    assert_eq!(m.brokers, 1);
    assert_eq!(m.pipeliners, 1);
    assert_eq!(m.job_duration["Flaky"].count, 3);
    assert!(m.request_latency.count > 0);
    assert_eq!(
        m.attempts_finished, 6,
        "a, flaky; flaky, after; flaky, after"
    );
}

/// Many short independent jobs on one broker: once its queue holds work beyond its
/// slots, its reports leave several to a message (`--report-linger-ms`), every one of
/// them reaches the router, and the router counts both in its metrics.
#[test]
fn a_busy_broker_batches_its_reports_and_every_job_is_reported() {
    const JOBS: usize = 400;
    let c = Cluster::start(1, 2);
    let mut pm = c.client();
    let mut spec = PipelineSpec::default().with_data("ms", json!(1));
    for k in 0..JOBS {
        spec = spec.job(&format!("s{k:03}"), "Sleep", &[]);
    }
    let id = pm.start(&spec).unwrap();
    let done = pm.wait(id, WAIT).unwrap();
    assert!(done.is_success(), "{done:?}");
    assert!(
        done.status().jobs.values().all(|j| j.attempts == 1),
        "no job ran twice"
    );
    let m = pm.metrics().unwrap();
    assert_eq!(m.attempts_finished, JOBS as u64);
    assert!(
        m.job_reports >= JOBS as u64,
        "every job reported: {} reports",
        m.job_reports
    );
    // Without lingering, at most the few that end while the broker's loop is busy
    // share a message; with it, a full queue sends about a report per 4 ms per slot.
    assert!(
        m.report_messages * 2 <= m.job_reports,
        "{} reports in {} messages",
        m.job_reports,
        m.report_messages
    );
}

/// `--report-linger-ms 0` sends every report at once, and nothing else changes.
#[test]
fn a_broker_told_not_to_linger_reports_as_before() {
    let c = Cluster::start_with(1, 2, &["--report-linger-ms", "0"]);
    let mut pm = c.client();
    let mut spec = PipelineSpec::default().with_data("ms", json!(1));
    for k in 0..100 {
        spec = spec.job(&format!("s{k:03}"), "Sleep", &[]);
    }
    let id = pm.start(&spec).unwrap();
    assert!(pm.wait(id, WAIT).unwrap().is_success());
    let m = pm.metrics().unwrap();
    assert_eq!(m.attempts_finished, 100);
    assert!(m.report_messages > 0 && m.job_reports >= 100);
}
