//! Tests of [`SledStore`](super::SledStore): what only the journal holds survives a
//! restart, and checkpoints move records into sled and remove old journals.

use super::*;
use pypelinin_common::status::{JobState, PipelineState};

fn pipeline(seq: u64) -> PipelineRecord {
    let spec = PipelineSpec::default()
        .job("a", "Noop", &[])
        .job("b", "Noop", &["a"]);
    PipelineRecord {
        id: PipelineId::new(),
        spec,
        state: PipelineState::Running,
        seq,
        submitted_ms: 1,
        finished_ms: None,
        origin: None,
    }
}

/// Writes `n` pipelines of two jobs, one commit each, job `a` finished with output.
fn write(store: &mut SledStore, n: u64) -> Vec<PipelineId> {
    (1..=n)
        .map(|seq| {
            let rec = pipeline(seq);
            store.put_pipeline(&rec).unwrap();
            let mut done = JobRecord::new();
            done.state = JobState::Succeeded;
            store.put_job(rec.id, 0, &JobRecord::new()).unwrap();
            store.put_job(rec.id, 1, &JobRecord::new()).unwrap();
            store.put_job(rec.id, 0, &done).unwrap();
            let out: Data = [("seq".to_string(), serde_json::json!(seq))]
                .into_iter()
                .collect();
            store.put_output(rec.id, 0, &out).unwrap();
            store.commit().unwrap();
            rec.id
        })
        .collect()
}

fn check_outputs(store: &SledStore, ids: &[PipelineId]) {
    for (k, id) in ids.iter().enumerate() {
        let out = store.get_output(*id, 0).unwrap().expect("output kept");
        assert_eq!(out["seq"], serde_json::json!(k as u64 + 1));
        assert!(store.get_output(*id, 1).unwrap().is_none());
    }
}

/// What a restarted router loads.
fn check(store: &SledStore, ids: &[PipelineId]) {
    let loaded = store.load().unwrap();
    assert_eq!(loaded.len(), ids.len());
    for ((rec, jobs), id) in loaded.iter().zip(ids) {
        assert_eq!(rec.id, *id);
        assert_eq!(rec.spec.jobs.len(), 2);
        assert_eq!(jobs[0].state, JobState::Succeeded, "latest write wins");
        assert_eq!(jobs[1].state, JobState::Queued);
    }
    check_outputs(store, ids);
}

#[test]
fn what_only_the_journal_holds_is_there_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ids = {
        let mut s = SledStore::open(dir.path(), Durability::Flush).unwrap();
        write(&mut s, 20)
    };
    // Nothing reached sled: the journal alone carries the 20 pipelines.
    assert_eq!(journal::list(dir.path()).unwrap(), vec![1]);
    let s = SledStore::open(dir.path(), Durability::Background).unwrap();
    check(&s, &ids);
    assert_eq!(
        journal::list(dir.path()).unwrap(),
        vec![2],
        "replayed, then removed"
    );
}

#[test]
fn checkpoints_move_records_to_sled_and_remove_old_journals() {
    let dir = tempfile::tempdir().unwrap();
    let ids = {
        let mut s = SledStore::open(dir.path(), Durability::Background)
            .unwrap()
            .checkpoint_after(1);
        let ids = write(&mut s, 50);
        // Readable whether a record sits in the journal, in a running checkpoint
        // or in sled.
        check_outputs(&s, &ids);
        s.reap_checkpoint(true).unwrap();
        assert!(!s.trees.outputs.is_empty(), "a checkpoint wrote to sled");
        ids
    };
    let left = journal::list(dir.path()).unwrap();
    assert!(left.len() <= 2, "old journals removed: {left:?}");
    let s = SledStore::open(dir.path(), Durability::Flush).unwrap();
    check(&s, &ids);
}

#[test]
fn logs_are_kept_trimmed_and_read_back_after_a_reopen() {
    for durability in [Durability::Flush, Durability::Background] {
        logs_after_a_reopen(durability);
    }
}

fn logs_after_a_reopen(durability: Durability) {
    use pypelinin_common::protocol::{LogLine, LogStream};
    let dir = tempfile::tempdir().unwrap();
    let id = PipelineId::new();
    let line = |seq: u64| LogLine {
        seq,
        at_ms: seq,
        stream: LogStream::Stderr,
        bytes: vec![0xff, seq as u8],
        dropped: 0,
    };
    {
        let mut s = SledStore::open(dir.path(), durability).unwrap();
        for seq in 1..=5 {
            s.put_log((id, 1, 2), &line(seq)).unwrap();
        }
        s.put_log((id, 1, 3), &line(1)).unwrap();
        let meta = LogMeta { dropped_bytes: 9 };
        s.trim_log((id, 1, 2), 2, &meta).unwrap();
        s.flush_logs().unwrap();
    }
    let s = SledStore::open(dir.path(), Durability::Flush).unwrap();
    let (meta, lines) = s.read_log((id, 1, 2), 0).unwrap();
    assert_eq!(meta.dropped_bytes, 9);
    assert_eq!(lines, vec![line(3), line(4), line(5)]);
    let (_, after) = s.read_log((id, 1, 2), 4).unwrap();
    assert_eq!(after, vec![line(5)]);
    let (meta, other) = s.read_log((id, 1, 3), 0).unwrap();
    assert_eq!((meta, other), (LogMeta::default(), vec![line(1)]));
    assert!(s.read_log((id, 0, 2), 0).unwrap().1.is_empty());
}

#[test]
fn pools_and_their_removal_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let pool = |name: &str, capacity, removed| PoolRecord {
        name: name.into(),
        capacity,
        removed,
    };
    {
        let mut s = SledStore::open(dir.path(), Durability::Flush).unwrap();
        s.put_pool(&pool("db", 4, false)).unwrap();
        s.put_pool(&pool("api", 2, false)).unwrap();
        s.commit().unwrap();
        s.put_pool(&pool("db", 6, false)).unwrap();
        s.put_pool(&pool("api", 0, true)).unwrap();
        s.commit().unwrap();
    }
    let s = SledStore::open(dir.path(), Durability::Flush).unwrap();
    assert_eq!(s.load_pools().unwrap(), vec![pool("db", 6, false)]);
}

fn notification(seq: u64) -> NotificationRecord {
    use crate::notify::{Channel, Message};
    use pypelinin_common::notify::{DeliveryState, NotifyEvent};
    NotificationRecord {
        seq,
        id: uuid::Uuid::new_v4(),
        message: Message {
            event: NotifyEvent::Failed,
            pipeline: PipelineId::new(),
            job: None,
            state: "failed".into(),
            error: None,
            at_ms: seq,
        },
        channel: Channel::Webhook("http://127.0.0.1:9/".into()),
        attempts: 0,
        next_try_ms: seq,
        delivery: DeliveryState::Pending,
        last_error: None,
    }
}

#[test]
fn notifications_are_kept_updated_and_removed_through_the_journal_and_checkpoints() {
    use pypelinin_common::notify::DeliveryState;
    let dir = tempfile::tempdir().unwrap();
    for checkpoint in [u64::MAX, 1] {
        let kept = {
            let mut s = SledStore::open(dir.path(), Durability::Flush)
                .unwrap()
                .checkpoint_after(checkpoint);
            for r in s.load_notifications().unwrap() {
                s.remove_notification(r.seq).unwrap();
            }
            let mut recs: Vec<NotificationRecord> = (1..=3).map(notification).collect();
            for r in &recs {
                s.put_notification(r).unwrap();
            }
            s.commit().unwrap();
            recs[1].delivery = DeliveryState::Delivered;
            recs[1].attempts = 1;
            s.put_notification(&recs[1]).unwrap();
            s.remove_notification(1).unwrap();
            s.commit().unwrap();
            s.reap_checkpoint(true).unwrap();
            recs.split_off(1)
        };
        let s = SledStore::open(dir.path(), Durability::Flush).unwrap();
        assert_eq!(
            s.load_notifications().unwrap(),
            kept,
            "checkpoint after {checkpoint} bytes"
        );
    }
}
