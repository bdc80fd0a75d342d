//! Schedules on a real cluster: a router, a pipeliner and a broker as processes, the
//! `pypelinin schedule` command line, and catch-up after the router is killed with
//! SIGKILL and stays down across several ticks.

use std::time::{Duration, Instant};

use pypelinin_tests::Cluster;
use serde_json::Value;

fn write(c: &Cluster, name: &str, text: &str) -> String {
    let p = c.dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

const ONE_JOB: &str = r#"{"data": {"kind": "tick"}, "jobs": {"echo": {"worker": "Echo"}}}"#;

/// The schedule's runs as `list --schedule NAME --json` prints them, oldest first:
/// (logical date in ms, id, state).
fn runs(c: &Cluster, name: &str) -> Vec<(u64, String, String)> {
    let (code, out, err) = c.cli(&["list", "--schedule", name, "--limit", "1000", "--json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let list: Vec<Value> = serde_json::from_str(out.trim()).expect("a JSON list");
    let mut runs: Vec<_> = list
        .iter()
        .map(|p| {
            (
                p["origin"]["logical_date"]
                    .as_u64()
                    .expect("a run has its logical date"),
                p["id"].as_str().unwrap().to_string(),
                p["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    runs.sort();
    runs
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn an_every_second_schedule_runs_and_catches_up_every_missed_tick_after_kill_9() {
    let mut c = Cluster::start(1, 4);
    let file = write(&c, "tick.json", ONE_JOB);
    let (code, out, err) = c.cli(&[
        "schedule",
        "add",
        "tick",
        "--cron",
        "* * * * * *",
        "--pipeline",
        &file,
        "--catchup",
        "--overrun",
        "start_new",
        "--max-running",
        "4",
        "--json",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    let added: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(added["next_ticks"].as_array().unwrap().len(), 5);
    wait_for("two succeeded runs", Duration::from_secs(30), || {
        runs(&c, "tick")
            .iter()
            .filter(|r| r.2 == "succeeded")
            .count()
            >= 2
    });

    c.kill_router();
    let down = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    c.restart_router();
    let downtime = down.elapsed();

    // Every tick from the first to now has exactly one run, the missed ones included.
    wait_for(
        "the missed ticks to be caught up",
        Duration::from_secs(60),
        || {
            let r = runs(&c, "tick");
            let succeeded = r.iter().filter(|x| x.2 == "succeeded").count();
            succeeded >= 2 + downtime.as_secs() as usize
        },
    );
    let r = runs(&c, "tick");
    let dates: Vec<u64> = r.iter().map(|x| x.0).collect();
    for pair in dates.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            1_000,
            "one run per second, none twice, none missing: {dates:?}"
        );
    }
    // The run knows which slice of time it processes.
    let (logical, id, _) = &r[r.len() / 2];
    let (code, out, err) = c.cli(&["status", id, "--json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let spec = c.client().spec(id.parse().unwrap()).unwrap();
    let date = spec.data["logical_date"].as_str().unwrap();
    let parsed =
        pypelinin_common::schedule::parse_time(date, pypelinin_common::schedule::Tz::UTC).unwrap();
    assert_eq!(parsed, *logical);
    let start = spec.data["interval_start"].as_str().unwrap();
    assert_eq!(
        pypelinin_common::schedule::parse_time(start, pypelinin_common::schedule::Tz::UTC).unwrap(),
        logical - 1_000
    );
    assert_eq!(spec.data["interval_end"], spec.data["logical_date"]);
    assert_eq!(spec.data["kind"], "tick", "the template's data is kept");

    // The text list names the schedule and the logical date.
    let (code, out, _) = c.cli(&["list", "--schedule", "tick"]);
    assert_eq!(code, 0);
    assert!(
        out.lines().next().unwrap().contains("LOGICAL DATE"),
        "{out}"
    );
    assert!(out.lines().nth(1).unwrap().contains("tick"), "{out}");
    let (code, _, err) = c.cli(&["schedule", "remove", "tick"]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn the_schedule_command_line_adds_shows_pauses_triggers_and_refuses_bad_input() {
    let c = Cluster::start(1, 2);
    let file = write(&c, "tick.json", ONE_JOB);
    let add = |extra: &[&str]| {
        let mut args = vec!["schedule", "add", "nightly", "--pipeline", file.as_str()];
        args.extend(extra);
        c.cli(&args)
    };
    // Refusals name what is wrong, and exit 2.
    for (extra, says) in [
        (&["--cron", "61 * * * *"][..], "61 * * * *"),
        (
            &["--cron", "0 2 * * *", "--timezone", "Mars/Olympus"][..],
            "Mars/Olympus",
        ),
        (
            &[
                "--cron",
                "0 2 * * *",
                "--start",
                "2026-12-02",
                "--end",
                "2026-12-01",
            ][..],
            "before start",
        ),
        (
            &["--cron", "0 2 * * *", "--start", "someday"][..],
            "someday",
        ),
        (
            &["--cron", "0 2 * * *", "--overrun", "sometimes"][..],
            "sometimes",
        ),
    ] {
        let (code, out, err) = add(extra);
        assert_eq!(code, 2, "{extra:?}: {out}\n{err}");
        assert!(err.contains(says), "{extra:?}: {err}");
    }
    let (code, out, err) = add(&[
        "--cron",
        "30 2 * * *",
        "--timezone",
        "Europe/Paris",
        "--start",
        "2026-01-01",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("next ticks"), "{out}");
    assert!(
        out.contains("02:30:00+0"),
        "ticks shown in the schedule's zone: {out}"
    );
    let (code, _, err) = add(&["--cron", "30 2 * * *"]);
    assert_eq!(code, 2);
    assert!(err.contains("exists"), "{err}");

    let (code, out, _) = c.cli(&["schedule", "list"]);
    assert_eq!(code, 0);
    assert!(out.contains("nightly") && out.contains("active"), "{out}");
    let (code, out, _) = c.cli(&["schedule", "pause", "nightly"]);
    assert_eq!(code, 0, "{out}");
    let (_, out, _) = c.cli(&["schedule", "show", "nightly", "--json"]);
    let shown: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(shown["paused"], true);
    assert_eq!(shown["spec"]["timezone"], "Europe/Paris");
    assert_eq!(shown["next_ticks"].as_array().unwrap().len(), 5);

    // A manual run goes even while paused, and finishes.
    let (code, out, err) = c.cli(&["schedule", "trigger", "nightly"]);
    assert_eq!(code, 0, "{err}");
    let id = out.trim().to_string();
    let (code, out, err) = c.cli(&["watch", &id, "--json", "--timeout", "60"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let (_, out, _) = c.cli(&["list", "--schedule", "nightly", "--json"]);
    let list: Vec<Value> = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["origin"]["kind"], "manual");

    let (code, _, _) = c.cli(&["schedule", "resume", "nightly"]);
    assert_eq!(code, 0);
    let (code, _, _) = c.cli(&["schedule", "remove", "nightly"]);
    assert_eq!(code, 0);
    let (code, _, err) = c.cli(&["schedule", "show", "nightly"]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown schedule"), "{err}");
    // Its run stays.
    let (code, out, _) = c.cli(&["status", &id]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn a_backfill_runs_a_range_of_past_ticks_and_can_be_dry_run_listed_and_cancelled() {
    let c = Cluster::start(1, 4);
    let file = write(&c, "daily.json", ONE_JOB);
    let (code, out, err) = c.cli(&[
        "schedule",
        "add",
        "daily",
        "--cron",
        "0 0 * * *",
        "--timezone",
        "America/Sao_Paulo",
        "--pipeline",
        &file,
        "--start",
        "2026-01-01",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    // Plain dates are midnight in the schedule's zone (UTC-3): ten daily ticks.
    let range = ["--from", "2026-03-01", "--to", "2026-03-10"];
    let mut args = vec!["backfill", "daily"];
    args.extend(range);
    let (code, out, err) = c.cli(&[&args[..], &["--dry-run", "--json"]].concat());
    assert_eq!(code, 0, "{out}\n{err}");
    let dry: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(dry["state"], "dry_run");
    let dates = dry["dates"].as_array().unwrap();
    assert_eq!(dates.len(), 10);
    assert_eq!(
        dates[0]["logical_date"].as_u64().unwrap(),
        pypelinin_common::schedule::parse_time(
            "2026-03-01T03:00:00Z",
            pypelinin_common::schedule::Tz::UTC
        )
        .unwrap()
    );
    assert!(runs(&c, "daily").is_empty(), "a dry run creates nothing");

    let (code, out, err) = c.cli(&[&args[..], &["--max-active", "3", "--wait", "--json"]].concat());
    assert_eq!(code, 0, "{out}\n{err}");
    let done: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(done["state"], "succeeded");
    let r = runs(&c, "daily");
    assert_eq!(r.len(), 10);
    assert!(r.iter().all(|x| x.2 == "succeeded"));

    // Again with the default reprocess (none): every date has a run, nothing to do.
    let (code, out, err) = c.cli(&[&args[..], &["--dry-run"]].concat());
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(out.matches("reprocess none").count(), 10, "{out}");

    // A long one, cancelled: its running runs are cancelled and no more start.
    let sleepy = write(
        &c,
        "sleepy.json",
        r#"{"jobs": {"nap": {"worker": "Sleep", "data": {"ms": 60000}}}}"#,
    );
    let (code, out, err) = c.cli(&[
        "schedule",
        "add",
        "sleepy",
        "--cron",
        "0 0 * * *",
        "--pipeline",
        &sleepy,
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, out, err) = c.cli(&[
        "backfill",
        "sleepy",
        "--from",
        "2026-03-01",
        "--to",
        "2026-03-31",
        "--max-active",
        "2",
        "--json",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    let id = serde_json::from_str::<Value>(out.trim()).unwrap()["id"].to_string();
    let (code, out, _) = c.cli(&["backfill", "list"]);
    assert_eq!(code, 0);
    assert!(out.contains("sleepy") && out.contains("running"), "{out}");
    let (code, out, err) = c.cli(&["backfill", "cancel", &id]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("cancelled"), "{out}");
    let r = runs(&c, "sleepy");
    assert_eq!(r.len(), 2, "only the runs it had started: {r:?}");
    wait_for("its runs to be cancelled", Duration::from_secs(30), || {
        runs(&c, "sleepy").iter().all(|x| x.2 == "cancelled")
    });
    let (code, out, _) = c.cli(&["backfill", "watch", &id]);
    assert_eq!(code, 1, "a cancelled backfill did not succeed: {out}");
}

#[test]
fn a_job_whose_target_file_exists_is_skipped_done_and_its_child_runs() {
    let c = Cluster::start(1, 2);
    let out = c.dir.path().join("out-2026-12-01.csv");
    let pattern = c.dir.path().join("out-{day}.csv");
    let file = write(
        &c,
        "targets.json",
        &serde_json::json!({
            "data": {"day": "2026-12-01"},
            "jobs": {
                "make": {"worker": "Echo", "target": pattern.to_str().unwrap()},
                "use": {"worker": "Echo", "after": ["make"]}
            }
        })
        .to_string(),
    );
    let states = |c: &Cluster| {
        let (code, out, err) = c.cli(&["submit", &file, "--wait", "--json"]);
        assert_eq!(code, 0, "{out}\n{err}");
        let v: Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["state"], "succeeded", "{v}");
        (
            v["jobs"]["make"]["state"].as_str().unwrap().to_string(),
            v["jobs"]["use"]["state"].as_str().unwrap().to_string(),
        )
    };
    assert_eq!(
        states(&c),
        ("succeeded".into(), "succeeded".into()),
        "no target yet: it runs"
    );
    std::fs::write(&out, "made before").unwrap();
    assert_eq!(
        states(&c),
        ("skipped_done".into(), "succeeded".into()),
        "the target exists: not run, and its child runs"
    );
    let (code, out, _) = c.cli(&["list", "--limit", "1"]);
    assert_eq!(code, 0);
    assert!(out.contains("succeeded"), "{out}");
}

#[test]
fn without_catchup_a_router_down_across_ticks_makes_only_the_latest_missed_run() {
    let mut c = Cluster::start(1, 4);
    let file = write(&c, "tick.json", ONE_JOB);
    let (code, out, err) = c.cli(&[
        "schedule",
        "add",
        "tick",
        "--cron",
        "* * * * * *",
        "--pipeline",
        &file,
        "--overrun",
        "start_new",
        "--max-running",
        "4",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    wait_for("a first run", Duration::from_secs(30), || {
        !runs(&c, "tick").is_empty()
    });
    c.kill_router();
    std::thread::sleep(Duration::from_secs(4));
    c.restart_router();
    wait_for(
        "the runs after the restart",
        Duration::from_secs(30),
        || {
            runs(&c, "tick")
                .iter()
                .filter(|x| x.2 == "succeeded")
                .count()
                >= 4
        },
    );
    let dates: Vec<u64> = runs(&c, "tick").iter().map(|x| x.0).collect();
    let gaps: Vec<u64> = dates.windows(2).map(|w| w[1] - w[0]).collect();
    // Ticks a second apart before and after; one gap over the downtime, which
    // no run fills: only the latest missed tick was made, at the restart.
    let long: Vec<&u64> = gaps.iter().filter(|g| **g > 1_000).collect();
    assert_eq!(long.len(), 1, "one gap, the downtime: {dates:?}");
    assert!(
        *long[0] >= 3_000,
        "at least three ticks missed and not made: {dates:?}"
    );
    let unique: std::collections::BTreeSet<u64> = dates.iter().copied().collect();
    assert_eq!(unique.len(), dates.len(), "no tick twice: {dates:?}");
}
