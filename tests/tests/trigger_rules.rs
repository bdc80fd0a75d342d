//! Trigger rules over real processes (router, pipeliner, broker): a cleanup job under
//! `all_done` runs after a failure, and the pipeline's final state follows
//! `allow_failure`.

use std::time::Duration;

use pypelinin_common::status::{JobState, PipelineState, PipelineStatus};
use pypelinin_common::{PipelineSpec, TriggerRule};
use pypelinin_tests::Cluster;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(120);

/// `start`; `bad` (fails) after `start`; `after_bad` after `bad`; `clean` (echoes its
/// input) after `start` and `bad` under `all_done`; `report` after `clean`.
fn spec(allow_failure: bool) -> PipelineSpec {
    let mut spec = PipelineSpec::default()
        .job("start", "Noop", &[])
        .job("bad", "Fail", &["start"])
        .job("after_bad", "Noop", &["bad"])
        .job("clean", "Echo", &["start", "bad"])
        .job("report", "Noop", &["clean"]);
    let bad = spec.jobs.get_mut("bad").unwrap();
    bad.data.insert("message".into(), json!("disk on fire"));
    bad.allow_failure = allow_failure;
    spec.jobs.get_mut("clean").unwrap().trigger_rule = TriggerRule::AllDone;
    spec
}

/// Runs `spec(allow_failure)` to its end; its status, after the checks both runs share.
fn run(c: &Cluster, allow_failure: bool) -> PipelineStatus {
    let mut pm = c.client();
    let id = pm.start(&spec(allow_failure)).unwrap();
    let outcome = pm.wait(id, WAIT).unwrap();
    let s = outcome.status().clone();
    let st = |j: &str| s.jobs[j].state;
    assert_eq!(st("start"), JobState::Succeeded);
    assert_eq!(st("bad"), JobState::Failed, "the failing job shows failed");
    assert_eq!(s.jobs["bad"].error.as_deref(), Some("disk on fire"));
    assert_eq!(st("after_bad"), JobState::Skipped);
    assert_eq!(s.jobs["after_bad"].attempts, 0);
    assert_eq!(st("clean"), JobState::Succeeded, "{}", c.log("router.log"));
    assert_eq!(st("report"), JobState::Succeeded);
    // The cleanup job started after the failure, and was handed what its parents left:
    // start's output, none from bad.
    let clean_started = s.jobs["clean"].history[0].started_ms;
    assert!(clean_started >= s.jobs["bad"].finished_ms.unwrap());
    let echoed = c.stored_output(id, "clean").expect("clean's output");
    let parents = echoed["parents"].as_object().unwrap();
    assert!(parents.contains_key("start"), "{echoed:?}");
    assert!(!parents.contains_key("bad"), "{echoed:?}");
    s
}

#[test]
fn a_cleanup_job_runs_after_a_failure_and_the_pipeline_fails() {
    let c = Cluster::start(1, 2);
    let s = run(&c, false);
    assert_eq!(s.state, PipelineState::Failed);
    assert_eq!(s.failed_jobs(), vec![("bad", "disk on fire")]);
}

#[test]
fn with_allow_failure_the_same_pipeline_succeeds() {
    let c = Cluster::start(1, 2);
    let s = run(&c, true);
    assert_eq!(s.state, PipelineState::Succeeded);
    assert!(s.finished_ms.is_some());
}
