//! History on disk, over real processes: finished pipelines are served from the
//! router's database (across a kill -9), a restart loads only the open ones, the
//! retention deletes what is past it and keeps what is open, and a history record
//! corrupted on disk is named while the rest is served.

use std::time::{Duration, Instant};

use pypelinin_client::ClientError;
use pypelinin_common::protocol::ProtocolError;
use pypelinin_common::transport::TransportError;
use pypelinin_common::{PipelineId, PipelineSpec, PipelineState};
use pypelinin_tests::Cluster;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

fn chain(k: u64) -> PipelineSpec {
    PipelineSpec::default()
        .with_data("k", json!(k))
        .job("a", "Noop", &[])
        .job("b", "Echo", &["a"])
}

fn long() -> PipelineSpec {
    PipelineSpec::default()
        .with_data("ms", json!(600_000))
        .job("slow", "Sleep", &[])
}

/// Runs `n` chains to success; their ids, oldest first.
fn run(c: &Cluster, n: u64) -> Vec<PipelineId> {
    let mut pm = c.client();
    let ids: Vec<PipelineId> = (0..n).map(|k| pm.start(&chain(k)).unwrap()).collect();
    for id in &ids {
        assert!(pm.wait(*id, WAIT).unwrap().is_success());
    }
    ids
}

/// `text` without its terminal colours.
fn plain(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(ch) = chars.next() {
        if ch == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(ch);
        }
    }
    out
}

/// Waits until the slow job runs.
fn until_running(c: &Cluster, id: PipelineId) {
    let mut pm = c.client();
    let deadline = Instant::now() + WAIT;
    while pm.status(id).unwrap().state != PipelineState::Running {
        assert!(Instant::now() < deadline, "the long pipeline never ran");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn finished_pipelines_are_served_from_disk_and_a_restart_loads_only_open_ones() {
    let mut c = Cluster::start(1, 2);
    let mut pm = c.client();
    let open = pm.start(&long()).unwrap();
    until_running(&c, open);
    let done = run(&c, 30);
    c.kill_and_restart_router();
    let log = plain(&c.log("router-1.log"));
    assert!(
        log.contains("finished=30") && log.contains("open=1"),
        "a start reads 30 finished records and loads 1 open pipeline:\n{log}"
    );
    let mut pm = c.client();
    for (k, id) in done.iter().enumerate() {
        let s = pm.status(*id).unwrap();
        assert_eq!(s.state, PipelineState::Succeeded);
        assert_eq!(s.jobs["b"].attempts, 1);
        let out = pm.outputs(*id).unwrap();
        assert_eq!(out["b"]["k"], json!(k as u64), "{out:?}");
    }
    assert_eq!(pm.spec(done[3]).unwrap(), chain(3));
    let page = pm.list(100).unwrap();
    assert_eq!(page.len(), 31);
    assert_eq!(page.last().unwrap().id, open, "oldest last");
    assert_eq!((page[0].jobs, page[0].done), (2, 2));
    let m = pm.metrics().unwrap();
    assert_eq!(m.pipelines.get("succeeded"), Some(&30), "{m:?}");
    // A finished pipeline comes back into memory for a retry and runs again.
    pm.retry(done[0], &["a".to_string()]).unwrap();
    assert!(pm.wait(done[0], WAIT).unwrap().is_success());
    assert_eq!(pm.status(done[0]).unwrap().jobs["a"].attempts, 2);
    // The CLI reads history the same way.
    let (code, out, err) = c.cli(&["status", &done[5].to_string()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("succeeded"), "{out}");
    pm.cancel(open).unwrap();
}

#[test]
fn the_retention_deletes_finished_history_and_keeps_open_pipelines() {
    let mut c = Cluster::start_with_router(1, 2, &["--retention", "2s"]);
    let mut pm = c.client();
    let open = pm.start(&long()).unwrap();
    until_running(&c, open);
    let done = run(&c, 20);
    let deadline = Instant::now() + WAIT;
    loop {
        match pm.status(done[19]) {
            Err(ClientError::Transport(TransportError::Refused(
                ProtocolError::UnknownPipeline(_),
            ))) => break,
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
        assert!(
            Instant::now() < deadline,
            "never deleted:\n{}",
            c.log("router.log")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for id in &done {
        assert!(
            matches!(
                pm.outputs(*id),
                Err(ClientError::Transport(TransportError::Refused(
                    ProtocolError::UnknownPipeline(_)
                )))
            ),
            "its outputs are gone too"
        );
    }
    assert_eq!(
        pm.status(open).unwrap().state,
        PipelineState::Running,
        "open: kept, however old"
    );
    let page = pm.list(100).unwrap();
    assert_eq!(page.iter().map(|p| p.id).collect::<Vec<_>>(), vec![open]);
    assert!(c
        .log("router.log")
        .contains("retention: deleted finished pipelines"));
    // Deleted for good: a restart does not bring them back.
    c.kill_and_restart_router();
    let mut pm = c.client();
    assert_eq!(pm.list(100).unwrap().len(), 1);
    pm.cancel(open).unwrap();
}

#[test]
fn a_history_record_corrupted_on_disk_is_named_and_the_rest_is_served() {
    let mut c = Cluster::start(1, 2);
    let done = run(&c, 5);
    // The journal is folded into sled at a start; a clean stop leaves it there.
    c.kill_and_restart_router();
    c.router.signal("TERM");
    c.router
        .wait_exit(Duration::from_secs(20))
        .expect("the router stops on SIGTERM");
    let db = c.dir.path().join("db");
    {
        let file = db.join("history.redb");
        let redb = redb::Database::create(&file).unwrap();
        let def: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("pipelines");
        let tx = redb.begin_write().unwrap();
        {
            use redb::ReadableTable;
            let mut t = tx.open_table(def).unwrap();
            assert!(t.get(&done[2].0.as_bytes()[..]).unwrap().is_some());
            t.insert(&done[2].0.as_bytes()[..], &b"\xc1 not a record"[..])
                .unwrap();
        }
        tx.commit().unwrap();
    }
    c.restart_router();
    let mut pm = c.client();
    match pm.status(done[2]) {
        Err(ClientError::Transport(TransportError::Refused(ProtocolError::Storage(m)))) => {
            assert!(m.contains(&done[2].to_string()), "names the pipeline: {m}");
            assert!(m.contains(db.to_str().unwrap()), "names the database: {m}");
        }
        other => panic!("{other:?}"),
    }
    let (code, _, err) = c.cli(&["status", &done[2].to_string()]);
    assert_ne!(code, 0);
    assert!(err.contains(db.to_str().unwrap()), "{err}");
    for k in [0, 1, 3, 4] {
        assert_eq!(pm.status(done[k]).unwrap().state, PipelineState::Succeeded);
    }
    assert_eq!(pm.list(100).unwrap().len(), 4, "the rest is listed");
    assert!(
        c.log("router-2.log").contains("does not decode"),
        "logged at start"
    );
    // And the cluster goes on working.
    run(&c, 2);
}
