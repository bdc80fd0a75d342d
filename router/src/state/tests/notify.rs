//! Notifications as the state machine makes them: which events put what in the
//! outbox, late jobs, outcomes, and the outbox across a restart.

use super::*;
use crate::notify::{Channel, NotifyDefaults, Outcome, RetryPolicy};
use pypelinin_common::notify::{DeliveryState, NotificationStatus, NotifyEvent, NotifySpec};

const HOOK: &str = "http://127.0.0.1:9/hook";

fn notified(mut spec: PipelineSpec, events: Option<Vec<NotifyEvent>>) -> PipelineSpec {
    spec.notify = Some(Box::new(NotifySpec {
        webhook: vec![HOOK.into()],
        email: vec![],
        events,
    }));
    spec
}

fn log(r: &mut Rig) -> Vec<NotificationStatus> {
    match r.send(CLIENT, Request::Notifications { limit: 100 }) {
        Reply::Notifications(n) => n,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_failed_pipeline_puts_one_notification_per_channel_in_the_outbox() {
    let mut r = Rig::with_peers(1);
    r.state.set_notify(
        NotifyDefaults {
            webhook: vec!["https://ops.example.com/alerts".into(), HOOK.into()],
            email: vec!["ops@example.com".into()],
            events: vec![NotifyEvent::Failed],
        },
        RetryPolicy::default(),
    );
    let id = r.submit_planned(notified(single(), None));
    let a = r.assigned().remove(0);
    r.fail(a.job);
    assert!(log(&mut r).is_empty(), "nothing before the pipeline closes");
    r.advance(Advance {
        pipeline: id,
        finish: true,
        ..Advance::default()
    });
    let n = log(&mut r);
    // The pipeline's webhook and the same default one are one channel.
    assert_eq!(n.len(), 3, "{n:?}");
    assert!(n.iter().all(|x| x.event == NotifyEvent::Failed
        && x.pipeline == id
        && x.state == "failed"
        && x.delivery == DeliveryState::Pending));
    let mut channels: Vec<&str> = n.iter().map(|x| x.channel.as_str()).collect();
    channels.sort();
    assert_eq!(
        channels,
        [
            HOOK,
            "https://ops.example.com/alerts",
            "mailto:ops@example.com"
        ]
    );
    let due = r.state.take_due_notifications();
    assert_eq!(due.len(), 3);
    assert_eq!(due[0].message.error.as_deref(), Some("job a: boom"));
}

#[test]
fn succeeded_and_cancelled_are_told_only_to_channels_that_want_them() {
    let mut r = Rig::with_peers(2);
    let ok = r.submit_planned(notified(single(), Some(vec![NotifyEvent::Succeeded])));
    let a = r.assigned().remove(0);
    r.succeed(a.job);
    assert_eq!(r.pipeline_state(ok), PipelineState::Succeeded);
    let quiet = r.submit_planned(notified(single(), Some(vec![NotifyEvent::Failed])));
    r.send(CLIENT, Request::Cancel { id: quiet });
    let cancelled = r.submit_planned(notified(single(), None));
    r.send(CLIENT, Request::Cancel { id: cancelled });
    let n = log(&mut r);
    let events: Vec<(PipelineId, NotifyEvent)> = n.iter().map(|x| (x.pipeline, x.event)).collect();
    assert_eq!(
        events,
        [
            (cancelled, NotifyEvent::Cancelled),
            (ok, NotifyEvent::Succeeded)
        ],
        "newest first; the pipeline that only wants failures hears nothing"
    );
}

#[test]
fn a_retried_job_is_told_with_its_error() {
    let mut r = Rig::with_peers(1);
    let mut spec = notified(single(), Some(vec![NotifyEvent::Retrying]));
    spec.retries = Some(1);
    let id = r.submit_planned(spec);
    let a = r.assigned().remove(0);
    r.fail(a.job);
    let n = log(&mut r);
    assert_eq!(n.len(), 1);
    assert_eq!(
        (n[0].event, n[0].job.as_deref(), n[0].pipeline),
        (NotifyEvent::Retrying, Some("a"), id)
    );
    let d = r.state.take_due_notifications();
    assert_eq!(d[0].message.error.as_deref(), Some("boom"));
}

#[test]
fn a_job_past_its_warn_time_is_marked_late_once_and_keeps_running() {
    let mut r = Rig::with_peers(1);
    let mut spec = notified(single(), Some(vec![NotifyEvent::Late]));
    spec.jobs.get_mut("a").unwrap().warn_after_ms = Some(5_000);
    let id = r.submit_planned(spec);
    let a = r.assigned().remove(0);
    r.wait(Duration::from_secs(4));
    assert!(!r.status(id).jobs["a"].late);
    assert!(log(&mut r).is_empty());
    r.wait(Duration::from_secs(2));
    let s = r.status(id);
    assert!(s.jobs["a"].late);
    assert_eq!(s.jobs["a"].state, JobState::Running, "not stopped");
    r.wait(Duration::from_secs(10));
    let n = log(&mut r);
    assert_eq!(n.len(), 1, "once: {n:?}");
    assert_eq!(
        (n[0].event, n[0].job.as_deref()),
        (NotifyEvent::Late, Some("a"))
    );
    r.succeed(a.job);
    let s = r.status(id);
    assert_eq!(s.state, PipelineState::Succeeded);
    assert!(s.jobs["a"].late, "the record of the attempt keeps it");
}

#[test]
fn a_late_timer_is_rearmed_after_a_restart() {
    let mut r = Rig::with_peers(1);
    let mut spec = notified(single(), Some(vec![NotifyEvent::Late]));
    spec.jobs.get_mut("a").unwrap().warn_after_ms = Some(5_000);
    let id = r.submit_planned(spec);
    r.assigned();
    let mut r = r.restart();
    r.pipeliner();
    r.broker(BROKER, BROKER_NAME, 1, 0);
    r.clock.advance(Duration::from_secs(6));
    r.turn();
    assert!(r.status(id).jobs["a"].late);
    assert_eq!(log(&mut r).len(), 1);
}

#[test]
fn outcomes_are_kept_and_pending_ones_survive_a_restart() {
    let mut r = Rig::with_peers(2);
    r.state.set_notify(
        NotifyDefaults {
            webhook: vec![HOOK.into()],
            email: vec![],
            events: vec![NotifyEvent::Cancelled],
        },
        RetryPolicy {
            attempts: 2,
            backoff_ms: 1_000,
        },
    );
    let first = r.submit_planned(single());
    r.send(CLIENT, Request::Cancel { id: first });
    let second = r.submit_planned(single());
    r.send(CLIENT, Request::Cancel { id: second });
    let due = r.state.take_due_notifications();
    assert_eq!(due.len(), 2);
    assert!(matches!(&due[0].channel, Channel::Webhook(u) if u == HOOK));
    let delivered = due
        .iter()
        .find(|d| d.message.pipeline == first)
        .unwrap()
        .seq;
    r.state.notification_outcomes(vec![Outcome {
        seq: delivered,
        result: Ok(()),
    }]);
    r.turn();
    // Killed with the other try out: after the restart it is due again.
    let mut r = r.restart();
    let n = log(&mut r);
    let state_of = |id| n.iter().find(|x| x.pipeline == id).unwrap().delivery;
    assert_eq!(state_of(first), DeliveryState::Delivered);
    assert_eq!(state_of(second), DeliveryState::Pending);
    let again = r.state.take_due_notifications();
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].message.pipeline, again[0].attempt), (second, 1));
}

#[test]
fn a_schedule_s_runs_notify_the_channels_of_its_template() {
    use pypelinin_common::protocol::ScheduleRequest;
    use pypelinin_common::schedule::OverrunPolicy;
    let mut r = Rig::with_peers(1);
    let mut s = super::schedules::spec("nightly", OverrunPolicy::Skip, 1);
    s.pipeline = notified(single(), Some(vec![NotifyEvent::Cancelled]));
    r.add_schedule(s);
    let run = match r.schedule(ScheduleRequest::Trigger {
        name: "nightly".into(),
    }) {
        Reply::Submitted { id } => id,
        other => panic!("{other:?}"),
    };
    r.send(CLIENT, Request::Cancel { id: run });
    let n = log(&mut r);
    assert_eq!(n.len(), 1, "{n:?}");
    assert_eq!(
        (n[0].pipeline, n[0].event, n[0].channel.as_str()),
        (run, NotifyEvent::Cancelled, HOOK)
    );
}
