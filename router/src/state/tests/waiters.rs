//! Waits: answered when the pipelines finish, or at their deadline.

use super::*;

const WAITER: &[u8] = b"waiter";

#[test]
fn a_wait_is_answered_when_its_pipeline_finishes() {
    let mut r = Rig::with_peers(1);
    let id = r.submit_planned(single());
    let wait = Request::Wait {
        ids: vec![id],
        timeout_ms: 60_000,
    };
    let w = r.post(WAITER, wait);
    assert!(r.reply_to(WAITER, w).is_none(), "still running");
    let a = r.assigned().remove(0);
    r.succeed(a.job);
    match r.reply_to(WAITER, w) {
        Some(Reply::Statuses(s)) => assert_eq!(s[0].state, PipelineState::Succeeded),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_wait_for_results_carries_the_outputs_and_failures() {
    let mut r = Rig::with_peers(2);
    let ok = r.submit_planned(single());
    let bad = r.submit_planned(single());
    let w = r.post(
        WAITER,
        Request::Results {
            ids: vec![ok, bad],
            timeout_ms: 60_000,
        },
    );
    for a in r.assigned() {
        if a.job.pipeline == ok {
            r.succeed(a.job);
        } else {
            r.fail(a.job);
        }
    }
    assert!(
        r.reply_to(WAITER, w).is_none(),
        "the failed one is still open"
    );
    r.advance(Advance {
        pipeline: bad,
        finish: true,
        ..Advance::default()
    });
    match r.reply_to(WAITER, w) {
        Some(Reply::Results(res)) => {
            assert_eq!(res[0].outputs["a"], output(0));
            assert_eq!(res[1].state, PipelineState::Failed);
            assert_eq!(res[1].failed, vec![("a".to_string(), "boom".to_string())]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_wait_that_times_out_is_answered_with_the_states_then() {
    let mut r = Rig::with_peers(1);
    let id = r.submit_planned(single());
    let w = r.post(
        WAITER,
        Request::Wait {
            ids: vec![id],
            timeout_ms: 1_000,
        },
    );
    r.wait(Duration::from_millis(999));
    assert!(r.reply_to(WAITER, w).is_none());
    r.wait(Duration::from_millis(1));
    match r.reply_to(WAITER, w) {
        Some(Reply::Statuses(s)) => assert_eq!(s[0].state, PipelineState::Running),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_wait_for_an_unknown_pipeline_is_refused_at_once() {
    let mut r = Rig::new();
    let reply = r.send(
        WAITER,
        Request::Wait {
            ids: vec![PipelineId::new()],
            timeout_ms: 1_000,
        },
    );
    assert!(matches!(reply, Reply::Error(_)), "{reply:?}");
}

#[test]
fn a_listing_pages_back_by_cursor_and_new_pipelines_do_not_shift_it() {
    let mut r = Rig::with_peers(1);
    let ids: Vec<PipelineId> = (0..5).map(|_| r.submit(single())).collect();
    let page = |r: &mut Rig, before| match r.send(
        CLIENT,
        Request::List {
            limit: 2,
            state: None,
            schedule: None,
            before,
        },
    ) {
        Reply::List(l) => l,
        other => panic!("{other:?}"),
    };
    let first = page(&mut r, None);
    assert_eq!(
        first.iter().map(|p| p.id).collect::<Vec<_>>(),
        vec![ids[4], ids[3]],
        "newest first"
    );
    // A pipeline arriving between two pages does not move the next one.
    r.submit(single());
    let second = page(&mut r, Some(first[1].seq));
    assert_eq!(
        second.iter().map(|p| p.id).collect::<Vec<_>>(),
        vec![ids[2], ids[1]]
    );
    let third = page(&mut r, Some(second[1].seq));
    assert_eq!(third.iter().map(|p| p.id).collect::<Vec<_>>(), vec![ids[0]]);
    assert!(page(&mut r, Some(third[0].seq)).is_empty(), "the end");
}

/// A wait's answer is encoded from the router's records without copying them: byte for
/// byte what encoding the owned status gives, with a job waiting on its condition, one
/// late, one failed, one with two attempts and one never started.
#[test]
fn a_wait_s_statuses_encode_as_the_owned_status_does() {
    use crate::state::views::{FrameView, ReplyView, StatusView};
    use pypelinin_common::protocol::{encode, FromRouter, NOT_YET_KEY};
    use pypelinin_common::sensor::WaitFor;
    let mut r = Rig::with_peers(4);
    let mut spec = PipelineSpec::default()
        .job("a", "W", &[])
        .job("b", "W", &[])
        .job("c", "W", &[])
        .job("d", "W", &["c"]);
    spec.jobs.get_mut("a").unwrap().wait_for = Some(WaitFor {
        file: Some("/data/x.csv".into()),
        poke_interval_ms: Some(60_000),
        ..WaitFor::default()
    });
    spec.jobs.get_mut("b").unwrap().warn_after_ms = Some(1_000);
    spec.jobs.get_mut("c").unwrap().retries = Some(1);
    let id = r.submit_planned(spec);
    for a in r.assigned() {
        match a.info.name.as_str() {
            "a" => {
                let not_yet = [(
                    NOT_YET_KEY.to_string(),
                    serde_json::json!("file /data/x.csv"),
                )];
                r.report_from(BROKER, a.job, Ok(not_yet.into_iter().collect()));
            }
            "c" => {
                r.fail(a.job);
            }
            _ => {}
        }
    }
    r.wait(Duration::from_secs(2));
    for a in r.assigned() {
        if a.info.name == "c" {
            r.fail(a.job);
        }
    }
    let s = r.status(id);
    let states: Vec<JobState> = s.jobs.values().map(|j| j.state).collect();
    assert_eq!(
        states,
        [
            JobState::Waiting,
            JobState::Running,
            JobState::Failed,
            JobState::Queued
        ]
    );
    assert!(s.jobs["a"].waiting_for.is_some() && s.jobs["b"].late);
    assert_eq!(s.jobs["c"].history.len(), 2);
    let p = &r.state.pipelines[&id];
    let owned = encode(
        9,
        &FromRouter::Reply(Reply::Statuses(vec![p.status(), p.status()])),
    );
    let views = vec![StatusView::of(p), StatusView::of(p)];
    let borrowed = encode(9, &FrameView::Reply(ReplyView::Statuses(views)));
    assert_eq!(owned, borrowed);
    // And a wait answered now carries it (a status request adds why queued jobs wait).
    let s = p.status();
    let w = r.post(
        WAITER,
        Request::Wait {
            ids: vec![id],
            timeout_ms: 0,
        },
    );
    match r.reply_to(WAITER, w) {
        Some(Reply::Statuses(got)) => assert_eq!(got, vec![s]),
        other => panic!("{other:?}"),
    }
}
