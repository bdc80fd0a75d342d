//! Captured logs: lines kept in order and once, read back after a number, held within
//! the per-attempt bound with the tail kept, each attempt apart, and all of it still
//! there for a restarted router.

use pypelinin_common::protocol::{
    LogChunk, LogLine, LogPage, LogStream, ProtocolError, LOG_LINE_OVERHEAD,
    MAX_LOG_BYTES_PER_ATTEMPT,
};

use super::*;

fn line(seq: u64, text: &[u8]) -> LogLine {
    LogLine {
        seq,
        at_ms: 1_000 + seq,
        stream: LogStream::Stdout,
        bytes: text.to_vec(),
        dropped: 0,
    }
}

fn send_lines(r: &mut Rig, job: JobRef, lines: Vec<LogLine>) {
    let chunks = lines
        .into_iter()
        .map(|line| LogChunk { job, line })
        .collect();
    assert!(matches!(r.send(BROKER, Request::Logs(chunks)), Reply::Ok));
}

fn page(r: &mut Rig, id: PipelineId, job: &str, attempt: Option<u32>, after: u64) -> LogPage {
    match r.send(
        CLIENT,
        Request::GetLogs {
            id,
            job: job.into(),
            attempt,
            after,
        },
    ) {
        Reply::Logs(p) => p,
        other => panic!("{other:?}"),
    }
}

fn texts(p: &LogPage) -> Vec<Vec<u8>> {
    p.lines.iter().map(|l| l.bytes.clone()).collect()
}

#[test]
fn lines_are_kept_once_in_order_and_read_after_a_number() {
    let mut r = Rig::with_peers(1);
    let id = r.submit_planned(single());
    let before = page(&mut r, id, "a", None, 0);
    assert_eq!((before.attempt, before.finished), (1, false), "{before:?}");
    let a = r.assigned().remove(0);
    send_lines(&mut r, a.job, vec![line(1, b"one"), line(2, b"\xff\xfe")]);
    // A batch sent again, with one new line.
    send_lines(&mut r, a.job, vec![line(2, b"\xff\xfe"), line(3, b"three")]);
    let p = page(&mut r, id, "a", None, 0);
    assert_eq!(texts(&p), [&b"one"[..], b"\xff\xfe", b"three"]);
    assert_eq!(
        (p.attempt, p.attempts, p.finished, p.job_final),
        (1, 1, false, false)
    );
    let p = page(&mut r, id, "a", Some(1), 2);
    assert_eq!(texts(&p), [b"three"]);
    // Lines of an attempt that never was are dropped.
    let ghost = JobRef {
        attempt: 9,
        ..a.job
    };
    send_lines(&mut r, ghost, vec![line(1, b"ghost")]);
    assert_eq!(page(&mut r, id, "a", None, 0).lines.len(), 3);
    r.succeed(a.job);
    let p = page(&mut r, id, "a", None, 3);
    assert!(p.lines.is_empty() && p.finished && p.job_final, "{p:?}");
}

#[test]
fn unknown_pipelines_jobs_and_attempts_are_refused() {
    let mut r = Rig::with_peers(1);
    let id = r.submit_planned(single());
    let other = PipelineId::new();
    let ask = |id, job: &str, attempt| Request::GetLogs {
        id,
        job: job.into(),
        attempt,
        after: 0,
    };
    assert!(matches!(
        r.send(CLIENT, ask(other, "a", None)),
        Reply::Error(ProtocolError::UnknownPipeline(_))
    ));
    assert!(matches!(
        r.send(CLIENT, ask(id, "nope", None)),
        Reply::Error(ProtocolError::UnknownJob { .. })
    ));
    assert!(matches!(
        r.send(CLIENT, ask(id, "a", Some(2))),
        Reply::Error(ProtocolError::Refused(_))
    ));
}

#[test]
fn an_attempt_keeps_the_tail_of_its_log_within_the_bound_across_a_restart() {
    let mut r = Rig::with_peers(1);
    let id = r.submit_planned(single());
    let a = r.assigned().remove(0);
    let piece = vec![b'x'; 1000];
    let total = 3 * MAX_LOG_BYTES_PER_ATTEMPT / piece.len();
    let mut seq = 0;
    for _ in 0..total / 100 {
        let lines = (0..100)
            .map(|_| {
                seq += 1;
                let mut bytes = seq.to_string().into_bytes();
                bytes.extend_from_slice(&piece);
                line(seq, &bytes)
            })
            .collect();
        send_lines(&mut r, a.job, lines);
    }
    let check = |p: &LogPage, last: u64| {
        let kept: usize = p.lines.iter().map(LogLine::cost).sum();
        assert!(kept <= MAX_LOG_BYTES_PER_ATTEMPT, "{kept}");
        assert!(kept > MAX_LOG_BYTES_PER_ATTEMPT - 2 * (piece.len() + LOG_LINE_OVERHEAD));
        assert_eq!(
            p.lines.last().map(|l| l.seq),
            Some(last),
            "the tail is kept"
        );
        assert!(p.lines.windows(2).all(|w| w[1].seq == w[0].seq + 1));
        assert!(p.dropped_bytes > 0);
    };
    let p = page(&mut r, id, "a", None, 0);
    check(&p, seq);
    let dropped = p.dropped_bytes;
    let mut r = r.restart();
    let p = page(&mut r, id, "a", None, 0);
    check(&p, seq);
    assert_eq!(p.dropped_bytes, dropped);
    // The restarted router rebuilds what it keeps from the store and goes on.
    r.broker(BROKER, BROKER_NAME, 1, 0);
    let big = vec![b'y'; 5000];
    send_lines(
        &mut r,
        a.job,
        vec![line(seq, b"again"), line(seq + 1, &big)],
    );
    let p = page(&mut r, id, "a", None, 0);
    check(&p, seq + 1);
    assert!(p.dropped_bytes >= dropped);
    assert!(
        p.dropped_bytes > dropped,
        "older lines dropped for the new one"
    );
    assert_eq!(p.lines.last().map(|l| l.bytes.clone()), Some(big));
}

#[test]
fn each_attempt_has_its_own_log() {
    let mut r = Rig::with_peers(1);
    let mut spec = single();
    spec.jobs.get_mut("a").unwrap().retries = Some(1);
    let id = r.submit_planned(spec);
    let first = r.assigned().remove(0);
    send_lines(&mut r, first.job, vec![line(1, b"first try")]);
    r.fail(first.job);
    let p = page(&mut r, id, "a", Some(1), 0);
    assert!(p.finished && !p.job_final, "a retry follows: {p:?}");
    let second = r.assigned().remove(0);
    assert_eq!(second.job.attempt, 2);
    send_lines(&mut r, second.job, vec![line(1, b"second try")]);
    let p = page(&mut r, id, "a", None, 0);
    assert_eq!((p.attempt, p.attempts, p.finished), (2, 2, false));
    assert_eq!(texts(&p), [b"second try"]);
    let p = page(&mut r, id, "a", Some(1), 0);
    assert_eq!((p.attempt, p.finished), (1, true));
    assert_eq!(texts(&p), [b"first try"]);
}

#[test]
fn followers_are_woken_at_most_once_per_interval() {
    use pypelinin_common::protocol::{Event, LOG_BATCH_INTERVAL};
    let mut r = Rig::with_peers(1);
    let id = r.submit_planned(single());
    let a = r.assigned().remove(0);
    let wakeups = |r: &mut Rig, seq: u64| {
        let to = ReplyTo {
            peer: BROKER.to_vec(),
            req: false,
            id: 1_000 + seq,
        };
        let chunk = LogChunk {
            job: a.job,
            line: line(seq, b"x"),
        };
        r.state.handle(to, Request::Logs(vec![chunk])).unwrap();
        r.state.commit().unwrap();
        let (_, events) = r.state.drain_outbox();
        events
            .iter()
            .filter(|e| matches!(e, Event::JobLogs { id: got } if *got == id))
            .count()
    };
    assert_eq!(wakeups(&mut r, 1), 1);
    assert_eq!(wakeups(&mut r, 2), 0, "within the interval");
    r.clock.advance(LOG_BATCH_INTERVAL);
    assert_eq!(wakeups(&mut r, 3), 1);
}
