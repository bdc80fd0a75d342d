//! The router and the pipeliner must agree on which jobs are blocked for good: both
//! follow `pypelinin_common::dag`. The pipeliner's side is tested in its `walk`
//! module; this is the router's, over every combination of two parents' states.

use pypelinin_common::dag::{readiness, Readiness};
use pypelinin_common::TriggerRule;

use super::*;

/// The states a parent can be in.
const STATES: [JobState; 6] = [
    JobState::Queued,
    JobState::Running,
    JobState::Succeeded,
    JobState::Failed,
    JobState::Skipped,
    JobState::Cancelled,
];

/// What the common rule says: the job is blocked for good, so the pipeliner skips it.
fn pipeliner_skips(parents: &[JobState]) -> bool {
    matches!(
        readiness(TriggerRule::AllSuccess, parents.iter().copied()),
        Readiness::Blocked { .. }
    )
}

/// For every combination of two parents' states, a skip the pipeliner decides is one
/// the router accepts, and one it would not decide the router refuses.
#[test]
fn the_router_accepts_a_skip_exactly_when_the_pipeliner_decides_one() {
    let mut disagree = Vec::new();
    for p in STATES {
        for q in STATES {
            let mut r = Rig::with_peers(0);
            let spec = PipelineSpec::default()
                .job("p", "W", &[])
                .job("q", "W", &[])
                .job("x", "W", &["p", "q"]);
            let id = r.submit(spec);
            // The parents' states are set directly: some (cancelled, with a child
            // still open) are reached only through a retry of a cancelled pipeline.
            let e = r.state.pipelines.get_mut(&id).unwrap();
            e.jobs[0].state = p;
            e.jobs[1].state = q;
            r.advance(Advance {
                pipeline: id,
                skip: vec![2],
                ..Advance::default()
            });
            let skipped = r.job_state(id, "x") == JobState::Skipped;
            if skipped != pipeliner_skips(&[p, q]) {
                disagree.push(format!(
                    "parents {}+{}: pipeliner skips {}, router skips {}",
                    p.as_str(),
                    q.as_str(),
                    pipeliner_skips(&[p, q]),
                    skipped
                ));
            }
        }
    }
    assert!(disagree.is_empty(), "{}", disagree.join("\n"));
}

/// A retry of some jobs of a cancelled pipeline leaves their cancelled parents as they
/// were: the pipeliner skips the retried jobs, and the router must accept that, or the
/// pipeline stays open for ever (it did, before both followed one rule).
#[test]
fn a_retried_job_under_a_cancelled_parent_is_skipped_and_the_pipeline_closes() {
    let mut r = Rig::with_peers(1);
    let id = r.submit_planned(chain());
    let a = r.assigned().remove(0);
    r.send(CLIENT, Request::Cancel { id });
    r.revoked();
    let _ = a;
    let reply = r.send(
        CLIENT,
        Request::Retry {
            id,
            jobs: vec!["b".into()],
        },
    );
    assert!(matches!(reply, Reply::Status(_)), "{reply:?}");
    let snap = r.take(id);
    assert_eq!(
        snap.states,
        vec![JobState::Cancelled, JobState::Queued, JobState::Queued]
    );
    r.advance(Advance {
        pipeline: id,
        skip: vec![1, 2],
        finish: true,
        ..Advance::default()
    });
    let s = r.status(id);
    assert_eq!(s.jobs["b"].state, JobState::Skipped);
    assert_eq!(s.jobs["b"].error.as_deref(), Some("not run: a cancelled"));
    assert_eq!(s.state, PipelineState::Failed);
}
