//! The async client against a real cluster on loopback: concurrent calls on one
//! manager, long waits that stall nobody, job events, cancel, and a dead router.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use pypelinin_client::{AsyncPipelineManager, ClientError, JobEvent};
use pypelinin_common::status::{JobState, PipelineState};
use pypelinin_common::PipelineSpec;
use pypelinin_tests::Cluster;
use serde_json::json;

/// Only a guard against hanging: nothing here is expected to come close.
const WAIT: Duration = Duration::from_secs(120);

fn client(c: &Cluster) -> AsyncPipelineManager {
    AsyncPipelineManager::connect(&c.api, &c.broadcast).expect("async client")
}

fn spec(json: serde_json::Value) -> PipelineSpec {
    serde_json::from_value(json).expect("pipeline spec")
}

fn chain() -> PipelineSpec {
    PipelineSpec::default()
        .with_data("i", json!(7))
        .job("a", "Step", &[])
        .job("b", "Step", &["a"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_and_wait_a_two_job_pipeline_then_read_its_outputs() {
    let c = Cluster::start(1, 2);
    let pm = client(&c);
    let id = pm.submit(&chain()).await.unwrap();
    let outcome = pm.wait(id, WAIT).await.unwrap();
    assert!(outcome.is_success(), "{outcome:?}");
    assert_eq!(outcome.status().jobs.len(), 2);
    let outputs = pm.outputs(id).await.unwrap();
    assert_eq!(outputs["b"]["n"], 2);
    assert_eq!(outputs["b"]["i"], 7);
    let status = pm.status(id).await.unwrap();
    assert_eq!(status.state, PipelineState::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_submits_and_waits_while_status_still_answers() {
    let c = Cluster::start(2, 4);
    let pm = client(&c);
    // A pipeline that stays running, so that every wait below is held by the router.
    let slow = spec(json!({"jobs": {"s": {"worker": "Sleep", "data": {"ms": 60000}}}}));
    let slow_id = pm.submit(&slow).await.unwrap();
    let mut waits = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let pm = pm.clone();
        waits.spawn(async move {
            let id = pm.submit(&chain()).await?;
            pm.wait(id, WAIT).await
        });
    }
    // A long wait on the slow pipeline is in flight the whole time.
    let held = {
        let pm = pm.clone();
        tokio::spawn(async move { pm.wait(slow_id, WAIT).await })
    };
    let status = pm.status(slow_id).await.unwrap();
    assert!(!status.state.is_final(), "{status:?}");
    let mut n = 0;
    while let Some(joined) = waits.join_next().await {
        let outcome = joined.expect("task").expect("submit and wait");
        assert!(outcome.is_success(), "{outcome:?}");
        n += 1;
    }
    assert_eq!(n, 50);
    // The held wait still runs, and other calls still answer beside it.
    assert!(!held.is_finished());
    let status = pm.status(slow_id).await.unwrap();
    assert!(!status.state.is_final(), "{status:?}");
    pm.cancel(slow_id).await.unwrap();
    let outcome = held.await.expect("task").expect("wait");
    assert_eq!(outcome.status().state, PipelineState::Cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_pipeline_yields_a_failed_outcome_with_the_job_error() {
    let c = Cluster::start(1, 2);
    let pm = client(&c);
    let failing = spec(json!({"jobs": {
        "a": {"worker": "Fail", "data": {"message": "nope"}},
        "b": {"worker": "Noop", "after": ["a"]}
    }}));
    let id = pm.submit(&failing).await.unwrap();
    match pm.wait(id, WAIT).await.unwrap() {
        pypelinin_client::Outcome::Failed { failures, status } => {
            assert_eq!(failures.len(), 1, "{failures:?}");
            assert_eq!(failures[0].job, "a");
            assert!(failures[0].error.contains("nope"), "{failures:?}");
            assert_eq!(status.state, PipelineState::Failed);
            assert_eq!(status.jobs["b"].state, JobState::Skipped);
        }
        other => panic!("expected a failure: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_mid_run_ends_cancelled() {
    let c = Cluster::start(1, 2);
    let pm = client(&c);
    let slow = spec(json!({"jobs": {
        "s": {"worker": "Sleep", "data": {"ms": 60000}},
        "t": {"worker": "Noop", "after": ["s"]}
    }}));
    let id = pm.submit(&slow).await.unwrap();
    let waiting = {
        let pm = pm.clone();
        tokio::spawn(async move { pm.wait(id, WAIT).await })
    };
    // Cancel once the sleep is running.
    let mut events = Box::pin(pm.events(id));
    loop {
        let e = events.next().await.expect("events until running").unwrap();
        if e.job == "s" && e.to == JobState::Running {
            break;
        }
    }
    let status = pm.cancel(id).await.unwrap();
    assert_eq!(status.state, PipelineState::Cancelled);
    let outcome = waiting.await.expect("task").expect("wait");
    assert!(!outcome.is_success());
    assert_eq!(outcome.status().state, PipelineState::Cancelled);
    // The stream reports the cancellation and ends.
    let rest: Vec<JobEvent> = events.map(|e| e.unwrap()).collect().await;
    let last = rest.last().expect("events after cancel");
    assert_eq!(last.pipeline_state, PipelineState::Cancelled);
    assert!(rest
        .iter()
        .any(|e| e.job == "s" && e.to == JobState::Cancelled));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_events_of_a_chain_come_in_order_and_end() {
    let c = Cluster::start(1, 2);
    let pm = client(&c);
    let three = PipelineSpec::default()
        .with_data("i", json!(1))
        .job("a", "Step", &[])
        .job("b", "Step", &["a"])
        .job("c", "Step", &["b"]);
    let id = pm.submit(&three).await.unwrap();
    let events: Vec<JobEvent> = tokio::time::timeout(WAIT, pm.events(id).collect::<Vec<_>>())
        .await
        .expect("the stream ends")
        .into_iter()
        .map(|e| e.unwrap())
        .collect();
    let seen: Vec<(&str, JobState, JobState)> = events
        .iter()
        .map(|e| (e.job.as_str(), e.from, e.to))
        .collect();
    use JobState::{Queued, Running, Succeeded};
    assert_eq!(
        seen,
        [
            ("a", Queued, Running),
            ("a", Running, Succeeded),
            ("b", Queued, Running),
            ("b", Running, Succeeded),
            ("c", Queued, Running),
            ("c", Running, Succeeded),
        ],
        "{events:#?}"
    );
    assert!(events.iter().all(|e| e.attempt == 1 && e.pipeline == id));
    assert_eq!(events[5].pipeline_state, PipelineState::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_router_fails_clearly_after_the_patience_without_hanging_the_runtime() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut pm = AsyncPipelineManager::connect(
        &format!("tcp://127.0.0.1:{port}"),
        &format!("tcp://127.0.0.1:{port}"),
    )
    .unwrap();
    pm.set_patience(Duration::from_millis(200), 2);
    let ticks = Arc::new(AtomicU64::new(0));
    let ticker = {
        let ticks = ticks.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                ticks.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let id = pypelinin_common::PipelineId::new();
    let pipeline = chain();
    let (status, submit) = tokio::time::timeout(WAIT, async {
        tokio::join!(pm.status(id), pm.submit(&pipeline))
    })
    .await
    .expect("the calls give up on their own");
    for err in [status.unwrap_err(), submit.unwrap_err()] {
        match &err {
            ClientError::Transport(pypelinin_common::transport::TransportError::Unreachable {
                endpoint,
                attempts,
                ..
            }) => {
                assert!(endpoint.contains(&port.to_string()), "{err}");
                assert_eq!(*attempts, 2);
            }
            other => panic!("expected unreachable, got {other:?}"),
        }
        assert!(err.to_string().contains("did not answer"), "{err}");
    }
    assert!(
        ticks.load(Ordering::Relaxed) > 0,
        "the runtime kept running"
    );
    ticker.abort();
}
