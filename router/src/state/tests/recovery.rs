//! A restarted router: what it loads, and what becomes of attempts that were running.

use super::*;

#[test]
fn an_attempt_its_broker_still_runs_after_a_restart_is_adopted() {
    let mut r = Rig::with_peers(1);
    let id = r.submit_planned(single());
    let a = r.assigned().remove(0);
    let mut r = r.restart();
    r.pipeliner();
    let hello = BrokerHello {
        name: BROKER_NAME.into(),
        host: "here".into(),
        workers: vec!["W".into()],
        slots: 1,
        running: vec![a.job],
        unreported: vec![],
        prefetch: 0,
    };
    assert!(matches!(
        r.send(BROKER, Request::BrokerHello(hello)),
        Reply::Welcome(_)
    ));
    r.submit_planned(single());
    assert!(
        r.assigned().is_empty(),
        "its slot is taken by the adopted attempt"
    );
    assert!(matches!(r.succeed(a.job), Reply::Ok));
    let s = r.status(id);
    assert_eq!(s.jobs["a"].state, JobState::Succeeded);
    assert_eq!(s.jobs["a"].attempts, 1);
}

#[test]
fn an_attempt_whose_broker_does_not_come_back_is_requeued_after_a_grace() {
    let mut r = Rig::with_peers(1);
    let id = r.submit_planned(single());
    r.assigned();
    let mut r = r.restart();
    r.pipeliner();
    r.broker(BROKER, "b2", 1, 0);
    let grace = super::super::peer_timeout() * 2;
    r.wait(grace - Duration::from_millis(1));
    assert!(r.assigned().is_empty(), "its broker may still say hello");
    r.wait(Duration::from_millis(1));
    let second = r.assigned().remove(0);
    assert_eq!(second.job.attempt, 2);
    let s = r.status(id);
    assert_eq!(
        s.jobs["a"].history[0].error.as_deref(),
        Some("lost: did not come back after the router restarted")
    );
}

#[test]
fn a_restarted_router_gives_open_pipelines_to_a_pipeliner_again() {
    let mut r = Rig::with_peers(2);
    let open = r.submit_planned(chain());
    let done = r.submit_planned(single());
    let mut assigned = r.assigned();
    assigned.retain(|a| a.job.pipeline == done);
    r.succeed(assigned[0].job);
    assert_eq!(r.pipeline_state(done), PipelineState::Succeeded);
    let mut r = r.restart();
    r.pipeliner();
    let snap = r.take(open);
    assert_eq!(snap.states[0], JobState::Running);
    let given: Vec<PipelineId> = r
        .pushes
        .iter()
        .filter_map(|(_, p)| match p {
            Push::Take(s) => Some(s.iter().map(|s| s.id).collect::<Vec<_>>()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(given, vec![open], "a finished pipeline is not walked again");
}
