//! The outbox state machine, one test per transition.

use super::*;

fn message(at_ms: u64) -> Message {
    Message {
        event: NotifyEvent::Failed,
        pipeline: PipelineId::new(),
        job: None,
        state: "failed".into(),
        error: Some("job a: boom".into()),
        at_ms,
    }
}

fn hook() -> Channel {
    Channel::Webhook("http://127.0.0.1:9/hook".into())
}

fn failure(seq: u64, permanent: bool) -> Outcome {
    Outcome {
        seq,
        result: Err(DeliveryError {
            message: "connection refused".into(),
            permanent,
        }),
    }
}

fn policy(attempts: u32) -> RetryPolicy {
    RetryPolicy {
        attempts,
        backoff_ms: 100,
    }
}

#[test]
fn a_new_notification_is_written_then_handed_out_then_delivered() {
    let mut o = Outbox::load(Vec::new(), policy(3));
    let seq = o.add(message(1_000), hook()).seq;
    let (changed, removed) = o.drain_changes();
    assert_eq!((changed.len(), removed.len()), (1, 0), "written at commit");
    assert_eq!(o.next_due(), Some(1_000));
    assert!(o.take_due(999).is_empty(), "not before it is due");
    let d = o.take_due(1_000);
    assert_eq!(d.len(), 1);
    assert_eq!((d[0].seq, d[0].attempt), (seq, 1));
    assert!(o.take_due(5_000).is_empty(), "handed out once");
    assert_eq!(o.next_due(), None);
    let r = o
        .outcome(
            Outcome {
                seq,
                result: Ok(()),
            },
            1_010,
        )
        .unwrap();
    assert_eq!((r.delivery, r.attempts), (DeliveryState::Delivered, 1));
    assert_eq!(o.drain_changes().0.len(), 1, "the outcome is written");
    assert_eq!(o.pending(), 0);
    let shown = o.latest(10);
    assert_eq!(shown.len(), 1);
    assert_eq!(shown[0].delivery, DeliveryState::Delivered);
    assert_eq!(shown[0].channel, "http://127.0.0.1:9/hook");
}

#[test]
fn a_failed_try_is_retried_after_a_doubling_backoff_then_delivered() {
    let mut o = Outbox::load(Vec::new(), policy(5));
    let seq = o.add(message(0), hook()).seq;
    o.take_due(0);
    let r = o.outcome(failure(seq, false), 10).unwrap();
    assert_eq!((r.delivery, r.attempts), (DeliveryState::Pending, 1));
    assert_eq!(r.next_try_ms, 110, "first backoff");
    assert_eq!(r.last_error.as_deref(), Some("connection refused"));
    assert!(o.take_due(109).is_empty());
    assert_eq!(o.take_due(110)[0].attempt, 2);
    let r = o.outcome(failure(seq, false), 200).unwrap();
    assert_eq!(r.next_try_ms, 400, "doubled");
    o.take_due(400);
    let r = o
        .outcome(
            Outcome {
                seq,
                result: Ok(()),
            },
            410,
        )
        .unwrap();
    assert_eq!((r.delivery, r.attempts), (DeliveryState::Delivered, 3));
    assert_eq!(r.last_error, None);
}

#[test]
fn it_fails_after_the_last_try_and_at_once_on_a_permanent_error() {
    let mut o = Outbox::load(Vec::new(), policy(2));
    let a = o.add(message(0), hook()).seq;
    let b = o
        .add(message(0), Channel::Email("ops@example.com".into()))
        .seq;
    assert_eq!(o.take_due(0).len(), 2);
    let r = o.outcome(failure(b, true), 1).unwrap();
    assert_eq!((r.delivery, r.attempts), (DeliveryState::Failed, 1));
    o.outcome(failure(a, false), 1);
    o.take_due(1_000);
    let r = o.outcome(failure(a, false), 1_001).unwrap();
    assert_eq!((r.delivery, r.attempts), (DeliveryState::Failed, 2));
    assert_eq!(r.last_error.as_deref(), Some("connection refused"));
    assert!(o.take_due(u64::MAX).is_empty(), "never tried again");
    assert_eq!(o.pending(), 0);
}

#[test]
fn an_outcome_of_a_try_not_handed_out_changes_nothing() {
    let mut o = Outbox::load(Vec::new(), policy(2));
    let seq = o.add(message(0), hook()).seq;
    o.drain_changes();
    assert!(o
        .outcome(
            Outcome {
                seq,
                result: Ok(())
            },
            1
        )
        .is_none());
    assert!(o.drain_changes().0.is_empty());
    assert_eq!(o.pending(), 1);
}

#[test]
fn pending_ones_are_handed_out_again_after_a_reload_and_sequence_goes_on() {
    let mut o = Outbox::load(Vec::new(), policy(3));
    let a = o.add(message(0), hook()).seq;
    let b = o.add(message(0), hook()).seq;
    o.take_due(0);
    o.outcome(
        Outcome {
            seq: b,
            result: Ok(()),
        },
        1,
    );
    // What the store holds: the last written value of each record. The try of `a`
    // was out when the router died.
    let stored: Vec<NotificationRecord> = o.drain_changes().0.into_iter().cloned().collect();
    let mut o = Outbox::load(stored, policy(3));
    assert_eq!(o.pending(), 1);
    let d = o.take_due(1);
    assert_eq!(d.len(), 1);
    assert_eq!((d[0].seq, d[0].attempt), (a, 1));
    let c = o.add(message(2), hook()).seq;
    assert!(c > b, "new records never reuse a number");
}

#[test]
fn the_log_keeps_the_latest_finished_ones_and_removes_older_ones() {
    let mut o = Outbox::load(Vec::new(), policy(1));
    for _ in 0..RECENT_NOTIFICATIONS + 3 {
        let seq = o.add(message(0), hook()).seq;
        o.take_due(0);
        o.outcome(
            Outcome {
                seq,
                result: Ok(()),
            },
            0,
        );
    }
    let (changed, removed) = o.drain_changes();
    assert_eq!(removed, vec![1, 2, 3]);
    assert_eq!(changed.len(), RECENT_NOTIFICATIONS);
    assert_eq!(o.latest(usize::MAX).len(), RECENT_NOTIFICATIONS);
}

#[test]
fn at_most_a_bounded_number_are_out_at_once() {
    let mut o = Outbox::load(Vec::new(), policy(3));
    for _ in 0..MAX_IN_FLIGHT + 5 {
        o.add(message(0), hook());
    }
    assert_eq!(o.take_due(0).len(), MAX_IN_FLIGHT);
    assert_eq!(o.next_due(), None, "full: nothing more until an outcome");
    o.outcome(
        Outcome {
            seq: 1,
            result: Ok(()),
        },
        0,
    );
    assert_eq!(o.take_due(0).len(), 1);
}

#[test]
fn the_backoff_doubles_up_to_its_bound() {
    let p = policy(100);
    assert_eq!(
        (p.delay_ms(1), p.delay_ms(2), p.delay_ms(3)),
        (100, 200, 400)
    );
    assert_eq!(p.delay_ms(60), MAX_BACKOFF_MS);
}
