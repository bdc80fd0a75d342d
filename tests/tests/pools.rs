//! Pools and priorities on a real cluster: a router, a pipeliner and brokers as
//! processes. What ran when is read from the attempts' histories (the router's
//! `started_ms` and the brokers' `finished_ms`): counts and order, never durations.

use std::time::{Duration, Instant};

use pypelinin_client::PipelineManager;
use pypelinin_common::protocol::{PipelineId, PoolRequest, PoolStatus};
use pypelinin_common::status::{Attempt, JobState, PipelineState};
use pypelinin_common::PipelineSpec;
use pypelinin_tests::Cluster;
use serde_json::{json, Value};

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A one-job pipeline: `Sleep` for `ms`, in `pool` if given, of priority `priority`.
fn sleeper(ms: u64, pool: Option<&str>, priority: i64) -> PipelineSpec {
    let mut s = PipelineSpec::default()
        .job("a", "Sleep", &[])
        .with_data("ms", json!(ms));
    s.priority = priority;
    s.jobs.get_mut("a").unwrap().pool = pool.map(String::from);
    s
}

fn set_pool(pm: &mut PipelineManager, name: &str, slots: u32) {
    let p = pm
        .pools(PoolRequest::Set {
            name: name.into(),
            slots,
        })
        .unwrap();
    assert_eq!(p[0].capacity, slots);
}

fn pool(pm: &mut PipelineManager, name: &str) -> PoolStatus {
    pm.pools(PoolRequest::List)
        .unwrap()
        .into_iter()
        .find(|p| p.name == name)
        .expect("the pool is listed")
}

/// Every attempt of job `a` of the pipelines `ids`.
fn attempts(pm: &mut PipelineManager, ids: &[PipelineId]) -> Vec<Attempt> {
    ids.iter()
        .flat_map(|&id| pm.status(id).unwrap().jobs["a"].history.clone())
        .collect()
}

/// Most attempts holding a slot at once: an attempt holds it from its start (when
/// the router assigned it) to its finish (a lost attempt's finish is when the router
/// gave it up). At an equal time an end comes before a start: the router assigns the
/// next job only after the report of the last.
fn most_at_once(list: &[Attempt]) -> usize {
    let mut events: Vec<(u64, i32)> = Vec::new();
    for a in list {
        let end = a.finished_ms.expect("every attempt has ended");
        events.push((a.started_ms, 1));
        events.push((end, -1));
    }
    events.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, d) in events {
        now += d;
        most = most.max(now);
    }
    most as usize
}

fn all_succeed(pm: &mut PipelineManager, ids: &[PipelineId], c: &Cluster) {
    let done = pm
        .wait_all(ids, Duration::from_secs(120))
        .unwrap_or_else(|e| {
            panic!(
                "{e}\nrouter log:\n{}",
                c.log("router.log")
                    .lines()
                    .rev()
                    .take(30)
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        });
    for o in &done {
        assert_eq!(o.state, PipelineState::Succeeded, "{o:?}");
    }
}

#[test]
fn a_pool_of_two_never_runs_more_than_two_jobs_across_two_brokers() {
    let c = Cluster::start(2, 2);
    let mut pm = c.client();
    set_pool(&mut pm, "db", 2);
    let ids: Vec<PipelineId> = (0..6)
        .map(|_| pm.start(&sleeper(300, Some("db"), 0)).unwrap())
        .collect();
    all_succeed(&mut pm, &ids, &c);
    let list = attempts(&mut pm, &ids);
    assert_eq!(list.len(), 6, "each ran once");
    assert!(most_at_once(&list) <= 2, "{list:#?}");
    let p = pool(&mut pm, "db");
    assert_eq!((p.used, p.queued), (0, 0));
}

#[test]
fn a_killed_brokers_pool_slots_come_back_and_its_jobs_finish() {
    let mut c = Cluster::start(1, 2);
    let mut pm = c.client();
    set_pool(&mut pm, "db", 2);
    let ids: Vec<PipelineId> = (0..4)
        .map(|_| pm.start(&sleeper(3_000, Some("db"), 0)).unwrap())
        .collect();
    wait_for("two jobs to hold the pool", Duration::from_secs(30), || {
        pool(&mut pm, "db").used == 2
    });
    c.brokers[0].signal("KILL");
    c.add_broker(2);
    all_succeed(&mut pm, &ids, &c);
    let list = attempts(&mut pm, &ids);
    let lost = list
        .iter()
        .filter(|a| a.error.as_deref().is_some_and(|e| e.starts_with("lost")))
        .count();
    assert_eq!(
        lost, 2,
        "the killed broker's two attempts were lost: {list:#?}"
    );
    assert!(most_at_once(&list) <= 2, "{list:#?}");
    assert_eq!(pool(&mut pm, "db").used, 0, "no slot leaked");
}

#[test]
fn a_restarted_router_keeps_its_pools_and_their_limit() {
    let mut c = Cluster::start(1, 3);
    let mut pm = c.client();
    set_pool(&mut pm, "db", 1);
    c.kill_and_restart_router();
    let mut pm = c.client();
    let p = pool(&mut pm, "db");
    assert_eq!((p.capacity, p.used), (1, 0));
    let ids: Vec<PipelineId> = (0..3)
        .map(|_| pm.start(&sleeper(200, Some("db"), 0)).unwrap())
        .collect();
    all_succeed(&mut pm, &ids, &c);
    let list = attempts(&mut pm, &ids);
    assert_eq!(most_at_once(&list), 1, "{list:#?}");
}

#[test]
fn a_high_priority_pipeline_overtakes_many_queued_low_ones() {
    let c = Cluster::start(1, 1);
    let mut pm = c.client();
    let low: Vec<PipelineId> = (0..30)
        .map(|_| pm.start(&sleeper(100, None, 0)).unwrap())
        .collect();
    wait_for(
        "the first low job to start",
        Duration::from_secs(30),
        || pm.status(low[0]).unwrap().jobs["a"].state != JobState::Queued,
    );
    let submitted = pypelinin_common::now_ms();
    let high = pm.start(&sleeper(100, None, 10)).unwrap();
    let mut ids = low.clone();
    ids.push(high);
    all_succeed(&mut pm, &ids, &c);
    let high_start = pm.status(high).unwrap().jobs["a"].history[0].started_ms;
    let lows = attempts(&mut pm, &low);
    let before = lows
        .iter()
        .filter(|a| a.started_ms >= submitted && a.started_ms < high_start)
        .count();
    let after = lows.iter().filter(|a| a.started_ms > high_start).count();
    assert!(
        before <= 2,
        "{before} low jobs started between the high one's submission and its start"
    );
    assert!(
        after >= 20,
        "only {after} low jobs started after the high one"
    );
}

#[test]
fn an_unknown_pool_or_too_many_slots_is_refused_at_submit_naming_them() {
    let c = Cluster::start(1, 1);
    let mut pm = c.client();
    let e = pm.start(&sleeper(1, Some("nope"), 0)).unwrap_err();
    assert!(e.to_string().contains("\"nope\""), "{e}");
    set_pool(&mut pm, "db", 2);
    let mut big = sleeper(1, Some("db"), 0);
    big.jobs.get_mut("a").unwrap().pool_slots = Some(5);
    let e = pm.start(&big).unwrap_err().to_string();
    assert!(
        e.contains("5 slots") && e.contains("\"db\"") && e.contains("has 2"),
        "{e}"
    );
    // The router is still there and takes good work.
    let ok = pm.start(&sleeper(1, Some("db"), 0)).unwrap();
    all_succeed(&mut pm, &[ok], &c);
}

#[test]
fn the_pool_command_line_sets_lists_and_removes() {
    let c = Cluster::start(0, 1);
    let (code, out, err) = c.cli(&["pool", "set", "db", "3"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("db"), "{out}");
    let (code, out, err) = c.cli(&["pool", "list", "--json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let list: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        list,
        json!([{"name": "db", "capacity": 3, "used": 0, "queued": 0}])
    );
    let (code, out, _) = c.cli(&["pool", "list"]);
    assert_eq!(code, 0);
    let header: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["POOL", "USED", "QUEUED", "CAPACITY"]);
    let (code, out, err) = c.cli(&["pool", "remove", "db"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, out, _) = c.cli(&["pool", "list", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), "[]");
    let (code, _, err) = c.cli(&["pool", "remove", "db"]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown pool \"db\""), "{err}");
    let (code, _, err) = c.cli(&["pool", "set", "db", "0"]);
    assert_eq!(code, 2);
    assert!(err.contains("at least 1 slot"), "{err}");
}

#[test]
fn pools_of_the_config_file_are_applied_at_start_and_a_bad_one_stops_the_router() {
    let mut c = Cluster::start(1, 2);
    let mut pm = c.client();
    set_pool(&mut pm, "db", 1);
    let config = c.dir.path().join("cluster.json");
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    cfg["pools"] = json!({"db": 3, "api": 2});
    std::fs::write(&config, cfg.to_string()).unwrap();
    c.kill_and_restart_router();
    let mut pm = c.client();
    let caps: Vec<(String, u32)> = pm
        .pools(PoolRequest::List)
        .unwrap()
        .into_iter()
        .map(|p| (p.name, p.capacity))
        .collect();
    assert_eq!(caps, [("api".into(), 2), ("db".into(), 3)], "the file wins");

    // A pool of no slots in the file: the router refuses to start, naming it.
    let bad = c.dir.path().join("bad.json");
    std::fs::write(&bad, json!({"pools": {"db": 0}}).to_string()).unwrap();
    let db = c.dir.path().join("other-db");
    let log = c.dir.path().join("bad-router.log");
    let mut router = pypelinin_tests::Proc::spawn(
        "pypelinin-router",
        &[
            "--api",
            "tcp://127.0.0.1:0",
            "--broadcast",
            "tcp://127.0.0.1:0",
            "--db",
            db.to_str().unwrap(),
            "--config",
            bad.to_str().unwrap(),
        ],
        &log,
    );
    let status = router
        .wait_exit(Duration::from_secs(30))
        .expect("the router exits");
    assert!(!status.success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("bad.json") && text.contains("pool \"db\" must have at least 1 slot"),
        "{text}"
    );
}

#[test]
fn a_schedules_max_active_is_its_max_running_on_the_command_line_and_in_json() {
    let c = Cluster::start(0, 1);
    let file = c.dir.path().join("one.json");
    std::fs::write(&file, r#"{"jobs": {"a": {"worker": "Echo"}}}"#).unwrap();
    let (code, out, err) = c.cli(&[
        "schedule",
        "add",
        "hourly",
        "--cron",
        "0 0 * * * *",
        "--pipeline",
        file.to_str().unwrap(),
        "--max-active",
        "3",
        "--json",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    let s: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(s["spec"]["max_running"], json!(3), "{s}");
    let spec: pypelinin_common::schedule::ScheduleSpec = serde_json::from_value(json!({
        "name": "n", "cron": "* * * * *", "max_active": 2,
        "pipeline": {"jobs": {"a": {"worker": "Echo"}}}
    }))
    .unwrap();
    assert_eq!(spec.max_running, 2);
}
