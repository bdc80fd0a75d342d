//! Tests of [`DiskStore`](super::DiskStore): what only the journal holds survives a
//! restart, checkpoints move records into the database and remove old journals, history
//! reads back from wherever it is, and a database sled wrote is copied in.

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
        jobs: 2,
        done: 0,
        job_states: Vec::new(),
        logs: true,
    }
}

/// Writes `n` pipelines of two jobs, one commit each, job `a` finished with output.
fn write(store: &mut DiskStore, n: u64) -> Vec<PipelineId> {
    write_seqs(store, 1..=n)
}

/// As [`write`], for the pipelines numbered `seqs`.
fn write_seqs(store: &mut DiskStore, seqs: std::ops::RangeInclusive<u64>) -> Vec<PipelineId> {
    seqs.map(|seq| {
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

fn check_outputs(store: &DiskStore, ids: &[PipelineId]) {
    for (k, id) in ids.iter().enumerate() {
        let out = store.get_output(*id, 0).unwrap().expect("output kept");
        assert_eq!(out["seq"], serde_json::json!(k as u64 + 1));
        assert!(store.get_output(*id, 1).unwrap().is_none());
    }
}

/// What a restarted router loads.
fn check(store: &DiskStore, ids: &[PipelineId]) {
    let loaded = store.load_open(&mut |_| {}).unwrap();
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
        let mut s = DiskStore::open(dir.path(), Durability::Flush).unwrap();
        write(&mut s, 20)
    };
    // Nothing reached the database: the journal alone carries the 20 pipelines.
    assert_eq!(journal::list(dir.path()).unwrap(), vec![1]);
    let s = DiskStore::open(dir.path(), Durability::Background).unwrap();
    check(&s, &ids);
    assert_eq!(
        journal::list(dir.path()).unwrap(),
        vec![2],
        "replayed, then removed"
    );
}

#[test]
fn checkpoints_move_records_to_the_database_and_remove_old_journals() {
    let dir = tempfile::tempdir().unwrap();
    let ids = {
        let mut s = DiskStore::open(dir.path(), Durability::Background)
            .unwrap()
            .checkpoint_after(1);
        let ids = write(&mut s, 50);
        // Readable whether a record sits in the journal, in a running checkpoint
        // or in the database.
        check_outputs(&s, &ids);
        s.reap_checkpoint(true).unwrap();
        assert!(db_has_outputs(&s), "a checkpoint wrote to the database");
        ids
    };
    let left = journal::list(dir.path()).unwrap();
    assert!(left.len() <= 2, "old journals removed: {left:?}");
    let s = DiskStore::open(dir.path(), Durability::Flush).unwrap();
    check(&s, &ids);
}

#[test]
fn a_checkpoint_starts_at_its_record_bound_however_small_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = DiskStore::open(dir.path(), Durability::Flush)
        .unwrap()
        .checkpoint_after_records(40);
    let ids = write(&mut s, 3);
    assert!(s.checkpoint.is_none(), "under the bound: no checkpoint");
    assert!(s.journal.len() < CHECKPOINT_BYTES);
    let ids: Vec<_> = ids.into_iter().chain(write_seqs(&mut s, 4..=53)).collect();
    assert!(
        s.checkpoint.is_some() || db_has_outputs(&s),
        "past the bound, a checkpoint started"
    );
    s.reap_checkpoint(true).unwrap();
    check_outputs(&s, &ids);
    drop(s);
    check(
        &DiskStore::open(dir.path(), Durability::Flush).unwrap(),
        &ids,
    );
}

/// Whether the database (not the journal) holds an output: a checkpoint wrote it.
fn db_has_outputs(s: &DiskStore) -> bool {
    !s.db
        .page(db::list_table(Table::Output), None, None, false, 1)
        .unwrap()
        .is_empty()
}

/// A job record (or output: `table`) as the database holds it, the journal aside.
fn db_job(s: &DiskStore, table: Table, id: PipelineId, job: u32) -> Option<Vec<u8>> {
    let k = job_key(id, job).to_vec();
    s.db.get_listed(table, &[k]).unwrap().pop().unwrap()
}

/// Waits for a running checkpoint, then checkpoints what was written since.
fn checkpoint_all(s: &mut DiskStore) {
    s.reap_checkpoint(true).unwrap();
    s.start_checkpoint().unwrap();
    s.reap_checkpoint(true).unwrap();
}

#[test]
fn a_checkpoint_writes_every_table_from_what_it_holds_deletions_included() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = DiskStore::open(dir.path(), Durability::Flush)
        .unwrap()
        .checkpoint_after(1);
    let pool = |name: &str, removed: bool| PoolRecord {
        name: name.into(),
        capacity: 3,
        removed,
    };
    s.put_pool(&pool("keep", false)).unwrap();
    s.put_pool(&pool("gone", false)).unwrap();
    assert!(s.needs_sync, "a turn that changed only pools is synced");
    let ids = write(&mut s, 3);
    checkpoint_all(&mut s);
    // The database has it all, and the journals it came from are gone.
    let pools: Vec<Vec<u8>> =
        s.db.all(db::table(Table::Pool))
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
    assert_eq!(pools, vec![b"gone".to_vec(), b"keep".to_vec()]);
    let seqs = s.db.all(db::table(Table::Seq)).unwrap();
    assert_eq!(seqs.len(), 3);
    assert_eq!(
        seqs[0].0,
        1u64.to_be_bytes().to_vec(),
        "seq keys are 8 bytes"
    );
    assert!(journal::list(dir.path()).unwrap().iter().all(|n| *n > 1));
    // A removal and a deletion go through the next checkpoint the same way.
    s.put_pool(&pool("gone", true)).unwrap();
    let rec = s.get_record(ids[0]).unwrap().unwrap();
    s.delete_pipeline(&rec, 2).unwrap();
    s.commit().unwrap();
    s.reap_checkpoint(true).unwrap();
    assert!(s
        .db
        .get(db::table(Table::Pipeline), ids[0].0.as_bytes())
        .unwrap()
        .is_none());
    assert_eq!(db_job(&s, Table::Job, ids[0], 0), None);
    assert!(s
        .db
        .get(db::table(Table::Pipeline), ids[1].0.as_bytes())
        .unwrap()
        .is_some());
    drop(s);
    let s = DiskStore::open(dir.path(), Durability::Flush).unwrap();
    let names: Vec<String> = s
        .load_pools()
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, vec!["keep".to_string()]);
    assert!(s.get_pipeline(ids[0]).unwrap().is_none());
    assert_eq!(
        s.get_output(ids[2], 0).unwrap().unwrap()["seq"],
        serde_json::json!(3)
    );
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
        let mut s = DiskStore::open(dir.path(), durability).unwrap();
        for seq in 1..=5 {
            s.put_log((id, 1, 2), &line(seq)).unwrap();
        }
        s.put_log((id, 1, 3), &line(1)).unwrap();
        let meta = LogMeta { dropped_bytes: 9 };
        s.trim_log((id, 1, 2), 2, &meta).unwrap();
        // The turn's commit: lines are in its journal frame.
        s.commit().unwrap();
    }
    let s = DiskStore::open(dir.path(), Durability::Flush).unwrap();
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
        let mut s = DiskStore::open(dir.path(), Durability::Flush).unwrap();
        s.put_pool(&pool("db", 4, false)).unwrap();
        s.put_pool(&pool("api", 2, false)).unwrap();
        s.commit().unwrap();
        s.put_pool(&pool("db", 6, false)).unwrap();
        s.put_pool(&pool("api", 0, true)).unwrap();
        s.commit().unwrap();
    }
    let s = DiskStore::open(dir.path(), Durability::Flush).unwrap();
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
            let mut s = DiskStore::open(dir.path(), Durability::Flush)
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
        let s = DiskStore::open(dir.path(), Durability::Flush).unwrap();
        assert_eq!(
            s.load_notifications().unwrap(),
            kept,
            "checkpoint after {checkpoint} bytes"
        );
    }
}

/// Marks the pipelines `ids` (written by [`write`]) finished, one commit each.
fn finish(store: &mut DiskStore, ids: &[PipelineId]) {
    for (k, id) in ids.iter().enumerate() {
        let (mut rec, _) = store.get_pipeline(*id).unwrap().expect("written");
        assert_eq!(rec.seq, k as u64 + 1);
        rec.state = PipelineState::Succeeded;
        rec.finished_ms = Some(2);
        store.put_pipeline(&rec).unwrap();
        store.commit().unwrap();
    }
}

fn seqs(store: &DiskStore, bound: u64, newest_first: bool, max: usize) -> Vec<u64> {
    store
        .records(bound, newest_first, max)
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect()
}

#[test]
fn history_is_read_back_from_the_journal_a_checkpoint_or_the_database_and_deleted_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let log = LogLine {
        seq: 1,
        at_ms: 1,
        stream: pypelinin_common::protocol::LogStream::Stdout,
        bytes: b"line".to_vec(),
        dropped: 0,
    };
    let ids = {
        let mut s = DiskStore::open(dir.path(), Durability::Background)
            .unwrap()
            .checkpoint_after(4096);
        let ids = write(&mut s, 60);
        finish(&mut s, &ids);
        for id in &ids {
            s.put_log((*id, 0, 1), &log).unwrap();
        }
        // Wherever each record is now (journal, checkpoint under way, database), it reads
        // back whole, and the order index pages both ways.
        for id in &ids {
            let (rec, jobs) = s.get_pipeline(*id).unwrap().expect("kept");
            assert_eq!(rec.state, PipelineState::Succeeded);
            assert_eq!(jobs[0].state, JobState::Succeeded);
            assert_eq!(s.get_record(*id).unwrap().unwrap().seq, rec.seq);
        }
        assert_eq!(seqs(&s, u64::MAX, true, 3), vec![60, 59, 58]);
        assert_eq!(seqs(&s, 58, true, 2), vec![57, 56]);
        assert_eq!(seqs(&s, 0, false, 3), vec![1, 2, 3]);
        assert_eq!(seqs(&s, 59, false, 5), vec![60]);
        // The first 30 go.
        for id in &ids[..30] {
            let rec = s.get_record(*id).unwrap().unwrap();
            s.delete_pipeline(&rec, 2).unwrap();
        }
        s.commit().unwrap();
        assert!(s.get_pipeline(ids[0]).unwrap().is_none());
        assert!(s.get_output(ids[0], 0).unwrap().is_none(), "outputs go too");
        assert!(
            s.read_log((ids[0], 0, 1), 0).unwrap().1.is_empty(),
            "and logs"
        );
        assert_eq!(s.read_log((ids[30], 0, 1), 0).unwrap().1.len(), 1);
        assert_eq!(seqs(&s, 0, false, 100).len(), 30);
        assert_eq!(seqs(&s, 0, false, 1), vec![31]);
        s.reap_checkpoint(true).unwrap();
        ids
    };
    // After a restart (journal replayed into the database), the deleted stay deleted and a
    // start loads no finished pipeline into memory.
    let s = DiskStore::open(dir.path(), Durability::Flush).unwrap();
    let mut finished = Vec::new();
    let open = s.load_open(&mut |rec| finished.push(rec.id)).unwrap();
    assert!(open.is_empty());
    assert_eq!(finished.len(), 30);
    assert!(finished.iter().all(|id| ids[30..].contains(id)));
    assert!(s.get_pipeline(ids[10]).unwrap().is_none());
    assert_eq!(seqs(&s, u64::MAX, true, 100).len(), 30);
    for t in [Table::Job, Table::Output] {
        assert_eq!(db_job(&s, t, ids[10], 0), None);
        assert!(s
            .db
            .get(db::list_table(t), ids[10].0.as_bytes())
            .unwrap()
            .is_none());
    }
}

#[test]
fn a_corrupt_history_record_is_named_and_the_rest_is_still_served() {
    let dir = tempfile::tempdir().unwrap();
    let ids = {
        let mut s = DiskStore::open(dir.path(), Durability::Flush).unwrap();
        let ids = write(&mut s, 5);
        finish(&mut s, &ids);
        ids
    };
    {
        // Folded into the database at this open; then a record is overwritten with garbage.
        let s = DiskStore::open(dir.path(), Durability::Flush).unwrap();
        let mut garbage = Changes::new();
        garbage.insert(
            (Table::Pipeline, ids[2].0.as_bytes().to_vec()),
            b"\xc1garbage".to_vec(),
        );
        s.db.write(&garbage).unwrap();
    }
    let s = DiskStore::open(dir.path(), Durability::Flush).unwrap();
    let mut finished = 0;
    s.load_open(&mut |_| finished += 1).unwrap();
    assert_eq!(finished, 4, "the corrupt one is skipped, the others loaded");
    let e = s.get_pipeline(ids[2]).unwrap_err().to_string();
    assert!(e.contains(&ids[2].to_string()), "{e}");
    assert!(
        e.contains(&dir.path().display().to_string()),
        "names the database: {e}"
    );
    assert!(s.get_pipeline(ids[3]).unwrap().is_some());
    assert_eq!(seqs(&s, u64::MAX, true, 10), vec![5, 4, 2, 1]);
}

#[test]
fn a_database_sled_wrote_is_copied_in_at_the_first_start() {
    let dir = tempfile::tempdir().unwrap();
    let id = PipelineId::new();
    let rec = PipelineRecord {
        state: PipelineState::Succeeded,
        finished_ms: Some(3),
        ..pipeline(7)
    };
    {
        // What a router of the previous release left: sled's trees, no order index.
        let sled = sled::open(dir.path()).unwrap();
        let mut rec = rec.clone();
        rec.id = id;
        // Encoded as that release did: fields by name.
        let named = |v: &dyn erased::Named| v.named();
        sled.open_tree("pipelines")
            .unwrap()
            .insert(id.0.as_bytes(), named(&rec))
            .unwrap();
        sled.open_tree("specs")
            .unwrap()
            .insert(id.0.as_bytes(), named(&rec.spec))
            .unwrap();
        let jobs = sled.open_tree("jobs").unwrap();
        for i in 0..2 {
            jobs.insert(job_key(id, i), named(&JobRecord::new()))
                .unwrap();
        }
        sled.flush().unwrap();
    }
    let s = DiskStore::open(dir.path(), Durability::Flush).unwrap();
    let (got, jobs) = s.get_pipeline(id).unwrap().expect("copied in");
    assert_eq!(
        (got.seq, got.state, jobs.len()),
        (7, PipelineState::Succeeded, 2)
    );
    assert_eq!(seqs(&s, u64::MAX, true, 10), vec![7], "indexed");
    assert!(dir.path().join("sled-migrated").join("conf").exists());
    assert!(!dir.path().join("conf").exists());
    drop(s);
    // Once: a second start finds no sled files and keeps what it has.
    let s = DiskStore::open(dir.path(), Durability::Flush).unwrap();
    assert!(s.get_pipeline(id).unwrap().is_some());
}

#[test]
fn a_database_mostly_deleted_is_compacted_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(FILE);
    let big: Data = [("blob".to_string(), serde_json::json!("x".repeat(8_000)))]
        .into_iter()
        .collect();
    let n = 2_000;
    let full = {
        let mut s = DiskStore::open(dir.path(), Durability::Background)
            .unwrap()
            .checkpoint_after(1 << 20);
        let ids = write(&mut s, n);
        for id in &ids {
            s.put_output(*id, 1, &big).unwrap();
        }
        s.commit().unwrap();
        finish(&mut s, &ids);
        s.reap_checkpoint(true).unwrap();
        s.start_checkpoint().unwrap();
        s.reap_checkpoint(true).unwrap();
        let full = std::fs::metadata(&file).unwrap().len();
        assert!(full > COMPACT_MIN_BYTES, "{full} bytes");
        // The retention deletes all but the last ten.
        for id in &ids[..ids.len() - 10] {
            let rec = s.get_record(*id).unwrap().unwrap();
            s.delete_pipeline(&rec, 2).unwrap();
        }
        s.commit().unwrap();
        s.start_checkpoint().unwrap();
        s.reap_checkpoint(true).unwrap();
        assert!(
            std::fs::metadata(&file).unwrap().len() >= full / 2,
            "a running database keeps its file's size (it reuses the pages)"
        );
        full
    };
    let s = DiskStore::open(dir.path(), Durability::Flush).unwrap();
    let after = std::fs::metadata(&file).unwrap().len();
    assert!(
        after * 4 < full,
        "compacted at the start: {full} -> {after} bytes"
    );
    assert_eq!(seqs(&s, u64::MAX, true, 100).len(), 10, "the rest kept");
    assert_eq!(
        s.get_output(s.records(u64::MAX, true, 1).unwrap()[0].id, 1)
            .unwrap()
            .unwrap(),
        big
    );
}

/// Encoding by field name, as releases before the compact encoding stored records.
mod erased {
    pub(super) trait Named {
        fn named(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Named for T {
        fn named(&self) -> Vec<u8> {
            rmp_serde::to_vec_named(self).unwrap()
        }
    }
}

#[test]
fn pipeline_and_job_records_stored_by_position_read_back_whole_and_older_forms_still_decode() {
    use pypelinin_common::schedule::{RunKind, RunOrigin};
    use pypelinin_common::status::Attempt;
    let mut rec = pipeline(7);
    rec.state = PipelineState::Failed;
    rec.finished_ms = Some(9);
    rec.origin = Some(RunOrigin {
        schedule: "nightly".into(),
        logical_date: 5,
        kind: RunKind::Backfill,
        backfill: Some(2),
    });
    rec.done = 2;
    rec.job_states = vec![(JobState::Succeeded, 1), (JobState::Failed, 1)];
    rec.logs = false;
    let mut job = JobRecord::new();
    job.state = JobState::Failed;
    job.failures = 2;
    job.error = Some("boom".into());
    job.history = vec![Attempt {
        number: 1,
        broker: "b1".into(),
        started_ms: 3,
        finished_ms: Some(4),
        error: Some("boom".into()),
    }];
    job.pokes = 1;
    job.waiting_for = Some("file".into());
    job.late = true;
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = DiskStore::open(dir.path(), Durability::Flush).unwrap();
        s.put_pipeline(&rec).unwrap();
        s.put_job(rec.id, 0, &job).unwrap();
        s.put_job(rec.id, 1, &JobRecord::new()).unwrap();
        s.commit().unwrap();
        checkpoint_all(&mut s);
        let stored = db_job(&s, Table::Job, rec.id, 0).unwrap();
        assert!(
            stored.len() < enc(&job).unwrap().len(),
            "stored by position, smaller than by name"
        );
    }
    let s = DiskStore::open(dir.path(), Durability::Flush).unwrap();
    let (back, jobs) = s.get_pipeline(rec.id).unwrap().unwrap();
    assert_eq!(
        format!(
            "{:?}",
            (
                &back.state,
                back.finished_ms,
                &back.origin,
                back.done,
                &back.job_states,
                back.logs,
                back.spec.jobs.len()
            )
        ),
        format!(
            "{:?}",
            (
                &rec.state,
                rec.finished_ms,
                &rec.origin,
                rec.done,
                &rec.job_states,
                rec.logs,
                2
            )
        )
    );
    assert_eq!(format!("{:?}", jobs[0]), format!("{job:?}"));
    // A record written by name (earlier releases) decodes.
    let named: JobRecord = dec(b"k", &enc(&job).unwrap()).unwrap();
    assert_eq!(format!("{named:?}"), format!("{job:?}"));
    // A positional record from before the last fields existed gets their defaults.
    let older = rmp_serde::to_vec(&(
        JobState::Succeeded,
        false,
        0u32,
        0u64,
        None::<String>,
        Vec::<Attempt>::new(),
    ))
    .unwrap();
    let older: JobRecord = dec(b"k", &older).unwrap();
    assert_eq!(older.state, JobState::Succeeded);
    assert_eq!((older.pokes, older.late, older.wait_checks), (0, false, 0));
}

/// The overlay holds job records and outputs by pipeline and index: records written out
/// of order, rewritten, at an index past what it indexes, and deleted read back the
/// same before a checkpoint, from the database after it, and after a reopen.
#[test]
fn job_records_read_back_from_the_overlay_by_index_and_after_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = DiskStore::open(dir.path(), Durability::Flush).unwrap();
    let id = PipelineId::new();
    let far = db::MAX_LISTED_JOB + 7;
    let out = |n: u64| -> Data {
        [("n".to_string(), serde_json::json!(n))]
            .into_iter()
            .collect()
    };
    for i in [9u32, 2, far, 0] {
        s.put_output(id, i, &out(i as u64)).unwrap();
    }
    s.put_output(id, 2, &out(22)).unwrap();
    assert_eq!(
        s.recent.len(),
        4,
        "a rewrite replaces, it is not counted twice"
    );
    let other = PipelineId::new();
    s.put_output(other, 0, &out(100)).unwrap();
    s.commit().unwrap();
    let read = |s: &DiskStore, id, i| s.get_output(id, i).unwrap().map(|d| d["n"].clone());
    let check = |s: &DiskStore, when: &str| {
        for (i, want) in [
            (0, Some(0)),
            (2, Some(22)),
            (9, Some(9)),
            (far, Some(far as u64)),
        ] {
            assert_eq!(
                read(s, id, i),
                want.map(|n| serde_json::json!(n)),
                "{when}: {i}"
            );
        }
        for i in [1, 3, 10, db::MAX_LISTED_JOB] {
            assert_eq!(read(s, id, i), None, "{when}: never written: {i}");
        }
        assert_eq!(read(s, other, 0), Some(serde_json::json!(100)), "{when}");
    };
    check(&s, "in the overlay");
    checkpoint_all(&mut s);
    assert!(s.recent.len() == 0 && s.checkpoint.is_none());
    check(&s, "in the database");
    let mut s = {
        drop(s);
        DiskStore::open(dir.path(), Durability::Flush).unwrap()
    };
    check(&s, "after a reopen");
    // A deletion in the overlay hides the database's record.
    s.put(Table::Output, &job_key(id, 9), Vec::new());
    s.put(Table::Output, &job_key(id, far), Vec::new());
    assert_eq!(read(&s, id, 9), None);
    assert_eq!(read(&s, id, far), None);
    assert_eq!(read(&s, id, 2), Some(serde_json::json!(22)));
}

/// Job `i`'s record in the state given, with output `{"job": i}` when it succeeded.
fn job_in(s: &mut DiskStore, id: PipelineId, i: u32, state: JobState) {
    let mut rec = JobRecord::new();
    rec.state = state;
    s.put_job(id, i, &rec).unwrap();
    if state == JobState::Succeeded {
        let out: Data = [("job".to_string(), serde_json::json!(i))]
            .into_iter()
            .collect();
        s.put_output(id, i, &out).unwrap();
    }
}

/// The states of a pipeline's jobs, and the `job` field of their outputs.
fn states_and_outputs(s: &DiskStore, id: PipelineId, n: u32) -> (Vec<JobState>, Vec<Option<u32>>) {
    let (_, jobs) = s.get_pipeline(id).unwrap().unwrap();
    let jobs_at: Vec<u32> = (0..n).collect();
    let outputs = s
        .get_outputs(id, &jobs_at)
        .unwrap()
        .into_iter()
        .map(|o| o.map(|o| o["job"].as_u64().unwrap() as u32))
        .collect();
    (jobs.iter().map(|j| j.state).collect(), outputs)
}

#[test]
fn a_pipelines_jobs_and_outputs_are_a_list_each_across_checkpoints_and_deletion() {
    use JobState::{Queued, Running, Succeeded};
    let dir = tempfile::tempdir().unwrap();
    let mut s = DiskStore::open(dir.path(), Durability::Flush).unwrap();
    let mut rec = pipeline(1);
    rec.spec = PipelineSpec::default()
        .job("a", "Noop", &[])
        .job("b", "Noop", &[])
        .job("c", "Noop", &[]);
    rec.jobs = 3;
    s.put_pipeline(&rec).unwrap();
    for i in 0..3 {
        job_in(&mut s, rec.id, i, Queued);
    }
    job_in(&mut s, rec.id, 2, Succeeded);
    s.commit().unwrap();
    checkpoint_all(&mut s);
    // One more checkpoint changes one slot of each list and leaves the others.
    job_in(&mut s, rec.id, 0, Running);
    job_in(&mut s, rec.id, 1, Succeeded);
    s.commit().unwrap();
    let want = (
        vec![Running, Succeeded, Succeeded],
        vec![None, Some(1), Some(2)],
    );
    assert_eq!(states_and_outputs(&s, rec.id, 3), want, "from the overlay");
    checkpoint_all(&mut s);
    assert_eq!(states_and_outputs(&s, rec.id, 3), want, "from the database");
    for t in [Table::Job, Table::Output] {
        assert_eq!(s.db.all(db::list_table(t)).unwrap().len(), 1, "one list");
        assert!(
            s.db.all(db::table(t)).unwrap().is_empty(),
            "no entry per job"
        );
    }
    drop(s);
    let mut s = DiskStore::open(dir.path(), Durability::Flush).unwrap();
    assert_eq!(states_and_outputs(&s, rec.id, 3), want, "after a reopen");
    // Deleting the pipeline empties every slot: the lists go.
    s.delete_pipeline(&rec, 3).unwrap();
    s.commit().unwrap();
    checkpoint_all(&mut s);
    assert!(s.get_pipeline(rec.id).unwrap().is_none());
    assert_eq!(s.get_outputs(rec.id, &[1, 2]).unwrap(), vec![None, None]);
    for t in [Table::Job, Table::Output] {
        assert!(
            s.db.all(db::list_table(t)).unwrap().is_empty(),
            "list removed"
        );
    }
}

#[test]
fn an_entry_per_job_from_an_older_database_is_read_and_folded_into_the_list() {
    use JobState::{Queued, Succeeded};
    let dir = tempfile::tempdir().unwrap();
    let mut s = DiskStore::open(dir.path(), Durability::Flush).unwrap();
    let rec = pipeline(1);
    s.put_pipeline(&rec).unwrap();
    s.commit().unwrap();
    checkpoint_all(&mut s);
    // As a database written before lists holds them: an entry per job.
    let mut done = JobRecord::new();
    done.state = Succeeded;
    let out: Data = [("job".to_string(), serde_json::json!(0))]
        .into_iter()
        .collect();
    let (k0, k1) = (job_key(rec.id, 0), job_key(rec.id, 1));
    let jobs = [
        (&k0[..], &enc_compact(&done).unwrap()[..]),
        (&k1[..], &enc_compact(&JobRecord::new()).unwrap()[..]),
    ];
    s.db.insert_raw(db::table(Table::Job), jobs).unwrap();
    let outputs = [(&k0[..], &enc(&out).unwrap()[..])];
    s.db.insert_raw(db::table(Table::Output), outputs).unwrap();
    let before = (vec![Succeeded, Queued], vec![Some(0), None]);
    assert_eq!(
        states_and_outputs(&s, rec.id, 2),
        before,
        "read where they are"
    );
    // The pipeline's next change makes its lists, with the older entries in them.
    job_in(&mut s, rec.id, 1, Succeeded);
    s.commit().unwrap();
    checkpoint_all(&mut s);
    let after = (vec![Succeeded, Succeeded], vec![Some(0), Some(1)]);
    assert_eq!(states_and_outputs(&s, rec.id, 2), after);
    for t in [Table::Job, Table::Output] {
        assert!(
            s.db.all(db::table(t)).unwrap().is_empty(),
            "folded, removed"
        );
        assert_eq!(s.db.all(db::list_table(t)).unwrap().len(), 1);
    }
    drop(s);
    let s = DiskStore::open(dir.path(), Durability::Flush).unwrap();
    assert_eq!(states_and_outputs(&s, rec.id, 2), after, "after a reopen");
}

#[test]
fn a_job_list_that_does_not_read_is_named_and_the_other_pipelines_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let ids = {
        let mut s = DiskStore::open(dir.path(), Durability::Flush).unwrap();
        let ids = write(&mut s, 3);
        checkpoint_all(&mut s);
        // Its head reads, its slot's offsets run past the data.
        let mut bad =
            s.db.get(db::list_table(Table::Job), ids[1].0.as_bytes())
                .unwrap()
                .unwrap();
        bad[5..9].copy_from_slice(&u32::MAX.to_le_bytes());
        let id = ids[1].0.as_bytes();
        s.db.insert_raw(db::list_table(Table::Job), [(&id[..], &bad[..])])
            .unwrap();
        s.db.insert_raw(db::list_table(Table::Output), [(&id[..], &b"garbage"[..])])
            .unwrap();
        ids
    };
    let s = DiskStore::open(dir.path(), Durability::Flush).unwrap();
    for e in [
        s.get_pipeline(ids[1]).unwrap_err().to_string(),
        s.get_output(ids[1], 0).unwrap_err().to_string(),
    ] {
        assert!(e.contains(&ids[1].to_string()), "names the pipeline: {e}");
        assert!(
            e.contains(&dir.path().display().to_string()),
            "names the database: {e}"
        );
        assert!(e.contains("list"), "{e}");
    }
    for id in [ids[0], ids[2]] {
        assert!(s.get_pipeline(id).unwrap().is_some());
        assert!(s.get_output(id, 0).unwrap().is_some());
    }
}
