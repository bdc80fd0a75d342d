//! Operating a cluster from the `pypelinin` command line: list by state, watch, cancel,
//! retry, logs, brokers, metrics, dot by id, `--json` on every read command, and
//! errors that say what to do.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use pypelinin_tests::{bin, Cluster};
use serde_json::Value;

fn cli(c: &Cluster, args: &[&str]) -> (i32, String, String) {
    c.cli(args)
}

/// Runs the command and parses its stdout as one JSON value; it must exit `code`.
fn cli_json(c: &Cluster, args: &[&str], code: i32) -> Value {
    let (got, out, err) = cli(c, args);
    assert_eq!(got, code, "{args:?}\nstdout: {out}\nstderr: {err}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{args:?} prints JSON ({e}): {out}"))
}

fn write(c: &Cluster, name: &str, text: &str) -> String {
    let p = c.dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

/// Submits a file without waiting; its id.
fn submit(c: &Cluster, file: &str) -> String {
    let (code, out, err) = cli(c, &["submit", file]);
    assert_eq!(code, 0, "{err}");
    out.trim().to_string()
}

const CHAIN: &str = r#"{"jobs": {"a": {"worker": "Noop"},
    "b": {"worker": "Echo", "after": ["a"], "data": {"greeting": "hello"}}}}"#;
const FAILING: &str = r#"{"jobs": {"a": {"worker": "Fail", "data": {"message": "nope"}},
    "b": {"worker": "Noop", "after": ["a"]}}}"#;
/// `parse` fails on its first attempt only (no retries): the pipeline fails, a retry
/// succeeds. `stats` is on another branch.
const FLAKY: &str = r#"{"jobs": {"fetch": {"worker": "Noop"},
    "parse": {"worker": "Flaky", "after": ["fetch"], "data": {"fail_attempts": 1}},
    "index": {"worker": "Noop", "after": ["parse"]},
    "stats": {"worker": "Noop", "after": ["fetch"]}}}"#;

#[test]
fn read_commands_print_tables_and_json() {
    let c = Cluster::start(1, 2);
    let chain = write(&c, "chain.json", CHAIN);
    let failing = write(&c, "failing.json", FAILING);
    let ok = cli_json(&c, &["submit", &chain, "--wait", "--json"], 0)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let bad = cli_json(&c, &["submit", &failing, "--wait", "--json"], 1)["id"]
        .as_str()
        .unwrap()
        .to_string();

    // list: by state, limited, as JSON and as a table.
    let all = cli_json(&c, &["list", "--json"], 0);
    assert_eq!(all.as_array().unwrap().len(), 2);
    assert_eq!(all[0]["id"], bad, "newest first");
    let failed = cli_json(&c, &["list", "--state", "failed", "--json"], 0);
    assert_eq!(failed.as_array().unwrap().len(), 1);
    assert_eq!(failed[0]["id"], bad);
    assert_eq!(failed[0]["done"], 2);
    let one = cli_json(&c, &["list", "--limit", "1", "--json"], 0);
    assert_eq!(one.as_array().unwrap().len(), 1);
    // The next page, by the cursor of the last row.
    let seq = one[0]["seq"].as_u64().unwrap().to_string();
    let next = cli_json(&c, &["list", "--limit", "1", "--before", &seq, "--json"], 0);
    assert_eq!(next.as_array().unwrap().len(), 1);
    assert_eq!(next[0]["id"], ok, "the older one");
    let (code, _, err) = cli(&c, &["list", "--limit", "1"]);
    assert_eq!(code, 0);
    assert!(err.contains(&format!("--before {seq}")), "{err}");
    let (code, out, _) = cli(&c, &["list", "--state", "succeeded"]);
    assert_eq!(code, 0);
    let mut lines = out.lines();
    let header = lines.next().unwrap();
    assert!(
        header.starts_with("PIPELINE") && header.contains("SUBMITTED (UTC)"),
        "{out}"
    );
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 1, "{out}");
    assert!(rows[0].starts_with(&ok) && rows[0].contains("succeeded") && rows[0].contains("2/2"));
    let (code, _, err) = cli(&c, &["list", "--state", "sleeping"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("sleeping") && err.contains("succeeded"),
        "{err}"
    );

    // status and outputs.
    let s = cli_json(&c, &["status", &bad, "--json"], 0);
    assert_eq!(s["jobs"]["a"]["error"], "nope");
    let o = cli_json(&c, &["outputs", &ok, "--json"], 0);
    assert_eq!(o["b"]["greeting"], "hello");
    // The same object both ways: indented by default, one line with --json.
    let (code, compact, _) = cli(&c, &["outputs", &ok, "--json"]);
    assert_eq!(code, 0);
    assert_eq!(compact.trim_end().lines().count(), 1, "{compact}");
    let (code, pretty, _) = cli(&c, &["outputs", &ok]);
    assert_eq!(code, 0);
    assert!(pretty.trim_end().lines().count() > 1, "{pretty}");
    let pretty: Value = serde_json::from_str(&pretty).unwrap();
    assert_eq!(pretty, o);

    // logs: every attempt with its broker and error; the output of a succeeded job.
    let (code, out, _) = cli(&c, &["logs", &bad, "a"]);
    assert_eq!(code, 0);
    assert!(out.contains("job a (Fail)  failed  1 attempt"), "{out}");
    assert!(
        out.contains("attempt 1  broker ") && out.contains("error: nope"),
        "{out}"
    );
    let l = cli_json(&c, &["logs", &bad, "a", "--json"], 0);
    assert_eq!(l["state"], "failed");
    assert_eq!(l["worker"], "Fail");
    assert_eq!(l["error"], "nope");
    assert_eq!(l["attempts"][0]["number"], 1);
    assert_eq!(l["attempts"][0]["error"], "nope");
    assert!(l["attempts"][0]["broker"].is_string());
    assert!(l["attempts"][0]["duration_ms"].is_u64());
    assert!(l["output"].is_null());
    let l = cli_json(&c, &["logs", &bad, "b", "--json"], 0);
    assert_eq!(l["state"], "skipped");
    assert_eq!(l["attempts"], serde_json::json!([]));
    let (_, out, _) = cli(&c, &["logs", &bad, "b"]);
    assert!(out.contains("never ran: not run: a failed"), "{out}");
    let l = cli_json(&c, &["logs", &ok, "b", "--json"], 0);
    assert_eq!(l["output"]["greeting"], "hello");
    let (_, out, _) = cli(&c, &["logs", &ok, "b"]);
    assert!(
        out.contains("output:") && out.contains("\"greeting\": \"hello\""),
        "{out}"
    );
    let (code, _, err) = cli(&c, &["logs", &ok, "zzz"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("no job \"zzz\"") && err.contains("a, b"),
        "{err}"
    );

    // brokers: the monitoring table and JSON.
    let brokers = cli_json(&c, &["brokers", "--json"], 0);
    let b = &brokers[0];
    assert_eq!(brokers.as_array().unwrap().len(), 1);
    assert_eq!(b["slots"], 2);
    assert!(b["workers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|w| w == "Flaky"));
    let name = b["name"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    let table = loop {
        let (code, out, _) = cli(&c, &["brokers"]);
        assert_eq!(code, 0);
        if out.contains('%') || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let header = table.lines().next().unwrap();
    for col in [
        "BROKER",
        "HOST",
        "SLOTS",
        "HEARTBEAT",
        "CPU",
        "MEMORY",
        "WORKERS",
    ] {
        assert!(header.contains(col), "{table}");
    }
    let row = table.lines().nth(1).unwrap();
    assert!(row.starts_with(&name), "{table}");
    assert!(
        row.contains("0/2") && row.contains(" ago") && row.contains("serving"),
        "{table}"
    );
    assert!(
        row.contains('%') && row.contains("iB / "),
        "CPU and memory: {table}"
    );
    assert!(row.contains("Reader"), "workers offered: {table}");

    // metrics.
    let m = cli_json(&c, &["metrics", "--json"], 0);
    assert_eq!(m["pipelines"]["failed"], 1);
    assert_eq!(m["pipelines"]["succeeded"], 1);
    assert_eq!(m["brokers"], 1);
    let (code, out, _) = cli(&c, &["metrics"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("failed 1, succeeded 1") && out.contains("queue depth"),
        "{out}"
    );

    // dot by id: the submitted pipeline's edges, each job coloured by its state.
    let (code, out, _) = cli(&c, &["dot", &bad]);
    assert_eq!(code, 0);
    assert!(out.contains("\"a\" -> \"b\""), "{out}");
    assert!(
        out.contains("Fail · failed") && out.contains("#fca5a5"),
        "{out}"
    );
    assert!(
        out.contains("Noop · skipped") && out.contains("#fde68a"),
        "{out}"
    );
    let (code, out, _) = cli(&c, &["dot", &ok]);
    assert_eq!(code, 0);
    assert!(
        out.contains("\"a\" -> \"b\"") && out.contains("#86efac"),
        "{out}"
    );
    // dot of a file still works, and a name that is neither is refused clearly.
    let (code, out, _) = cli(&c, &["dot", &chain]);
    assert_eq!(code, 0);
    assert!(
        out.contains("\"a\" -> \"b\"") && out.contains("fillcolor=\"white\""),
        "{out}"
    );
    let (code, _, err) = cli(&c, &["dot", "no-such-thing"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("neither a pipeline file nor a pipeline id"),
        "{err}"
    );
    let (code, _, err) = cli(&c, &["dot", "00000000-0000-0000-0000-000000000000"]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown pipeline"), "{err}");
}

#[test]
fn watch_follows_a_pipeline_to_its_end() {
    let c = Cluster::start(1, 2);
    let steps = write(
        &c,
        "steps.json",
        r#"{"jobs": {"one": {"worker": "Sleep", "data": {"ms": 300}},
                     "two": {"worker": "Sleep", "after": ["one"], "data": {"ms": 300}},
                     "three": {"worker": "Noop", "after": ["two"]}}}"#,
    );
    // Not a terminal: job changes go to stderr as they happen, the final table to stdout.
    let id = submit(&c, &steps);
    let started = Instant::now();
    let (code, out, err) = cli(&c, &["watch", &id]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "it waited for the end"
    );
    assert!(
        out.starts_with(&format!("pipeline {id}  succeeded")),
        "{out}"
    );
    assert_eq!(out.matches("succeeded").count(), 4, "{out}");
    assert!(
        err.contains("one: running") || err.contains("two: running"),
        "{err}"
    );
    assert!(err.contains("three: succeeded (attempt 1)"), "{err}");

    // A failed pipeline: exit 1; --json prints the status object.
    let failing = write(&c, "failing.json", FAILING);
    let id = submit(&c, &failing);
    let (code, out, _) = cli(&c, &["watch", &id]);
    assert_eq!(code, 1);
    assert!(out.contains("failed") && out.contains("nope"), "{out}");
    let v = cli_json(&c, &["watch", &id, "--json"], 1);
    assert_eq!(v["state"], "failed");
    assert_eq!(v["jobs"]["b"]["state"], "skipped");

    // --timeout gives up with exit 3, saying where the pipeline is.
    let slow = write(
        &c,
        "slow.json",
        r#"{"jobs": {"nap": {"worker": "Sleep", "data": {"ms": 30000}}}}"#,
    );
    let id = submit(&c, &slow);
    let (code, _, err) = cli(&c, &["watch", &id, "--timeout", "1"]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("still") && err.contains("0/1 jobs done"),
        "{err}"
    );
    cli(&c, &["cancel", &id]);
}

/// Runs `pypelinin` under a pseudo-terminal (util-linux `script`), so that it draws.
fn in_terminal(c: &Cluster, args: &[&str]) -> Option<(i32, String)> {
    if !Path::new("/usr/bin/script").exists() {
        eprintln!("no `script` here: the terminal drawing is not checked");
        return None;
    }
    let mut line = format!(
        "{} --api {} --broadcast {}",
        bin("pypelinin").display(),
        c.api,
        c.broadcast
    );
    for a in args {
        line.push(' ');
        line.push_str(a);
    }
    let out = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .env("TERM", "xterm")
        .output()
        .expect("run script");
    Some((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

#[test]
fn on_a_terminal_submit_wait_draws_a_progress_bar_and_watch_redraws() {
    let c = Cluster::start(1, 2);
    let steps = write(
        &c,
        "steps.json",
        r#"{"jobs": {"one": {"worker": "Sleep", "data": {"ms": 400}},
                     "two": {"worker": "Sleep", "after": ["one"], "data": {"ms": 400}}}}"#,
    );
    let Some((code, out)) = in_terminal(&c, &["submit", &steps, "--wait"]) else {
        return;
    };
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\r\x1b[2K"), "redrawn in place: {out:?}");
    assert!(
        out.contains("running   [") && out.contains("0/2 jobs"),
        "{out:?}"
    );
    assert!(out.contains('█') && out.contains('░'), "{out:?}");
    // Then the summary table.
    let table = out.rsplit("\x1b[2K").next().unwrap();
    assert!(
        table.contains("succeeded") && table.contains("two"),
        "{out:?}"
    );

    let id = submit(&c, &steps);
    let (code, out) = in_terminal(&c, &["watch", &id]).unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\x1b[J"), "the screen is redrawn: {out:?}");
    assert!(out.contains("(watching: Ctrl-C to stop)"), "{out:?}");
    assert!(out.contains("JOB") && out.contains("ATTEMPTS"), "{out:?}");
}

#[test]
fn cancel_and_retry_from_the_command_line() {
    let c = Cluster::start(1, 2);
    // Cancel a running pipeline; watch then exits 1.
    let slow = write(
        &c,
        "slow.json",
        r#"{"jobs": {"nap": {"worker": "Sleep", "data": {"ms": 1500}},
                     "after": {"worker": "Noop", "after": ["nap"]}}}"#,
    );
    let id = submit(&c, &slow);
    let deadline = Instant::now() + Duration::from_secs(20);
    while cli_json(&c, &["status", &id, "--json"], 0)["jobs"]["nap"]["state"] != "running" {
        assert!(Instant::now() < deadline, "nap never ran");
        std::thread::sleep(Duration::from_millis(50));
    }
    let v = cli_json(&c, &["cancel", &id, "--json"], 0);
    assert_eq!(v["state"], "cancelled");
    let (code, out, _) = cli(&c, &["watch", &id]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("cancelled"), "{out}");
    // A cancelled pipeline can be run again.
    let v = cli_json(&c, &["retry", &id, "--wait", "--json"], 0);
    assert_eq!(v["state"], "succeeded");
    assert_eq!(v["jobs"]["nap"]["attempts"], 2);

    // A failed pipeline: retry re-runs only what did not succeed.
    let flaky = write(&c, "flaky.json", FLAKY);
    let id = cli_json(&c, &["submit", &flaky, "--wait", "--json"], 1)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, out, _) = cli(&c, &["retry", &id]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with(&format!("pipeline {id}")),
        "prints the status: {out}"
    );
    let v = cli_json(&c, &["watch", &id, "--json"], 0);
    assert_eq!(v["state"], "succeeded");
    assert_eq!(v["jobs"]["parse"]["attempts"], 2);
    assert_eq!(
        v["jobs"]["fetch"]["attempts"], 1,
        "what succeeded is reused"
    );
    assert_eq!(v["jobs"]["stats"]["attempts"], 1);

    // --job: the named job and its descendants run again, nothing else.
    let v = cli_json(&c, &["retry", &id, "--job", "parse", "--wait", "--json"], 0);
    assert_eq!(v["state"], "succeeded");
    assert_eq!(v["jobs"]["parse"]["attempts"], 3);
    assert_eq!(v["jobs"]["index"]["attempts"], 2);
    assert_eq!(v["jobs"]["fetch"]["attempts"], 1);
    assert_eq!(v["jobs"]["stats"]["attempts"], 1);
    let v = cli_json(
        &c,
        &[
            "retry", &id, "--job", "fetch", "--job", "stats", "--wait", "--json",
        ],
        0,
    );
    for (job, attempts) in [("fetch", 2), ("stats", 2), ("parse", 4), ("index", 3)] {
        assert_eq!(v["jobs"][job]["attempts"], attempts, "{job}: {v}");
    }
    let l = cli_json(&c, &["logs", &id, "parse", "--json"], 0);
    let attempts = l["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 4);
    assert_eq!(attempts[0]["error"], "flaky failure on attempt 1");
    assert!(attempts[1..].iter().all(|a| a["error"].is_null()));

    // Refusals are explained.
    let (code, _, err) = cli(&c, &["retry", &id, "--job", "nosuch"]);
    assert_eq!(code, 2);
    assert!(err.contains("no job \"nosuch\""), "{err}");
    let nap = write(
        &c,
        "nap.json",
        r#"{"jobs": {"nap": {"worker": "Sleep", "data": {"ms": 30000}}}}"#,
    );
    let running = submit(&c, &nap);
    let (code, _, err) = cli(&c, &["retry", &running]);
    assert_eq!(code, 2);
    assert!(err.contains("retry it once it has finished"), "{err}");
    cli(&c, &["cancel", &running]);
}

#[test]
fn errors_name_the_address_tried_and_the_line_of_the_problem() {
    let c = Cluster::start(0, 1);
    // A pipeline file whose job runs after an unknown one: the file, the line, the job.
    let file = write(
        &c,
        "unknown.json",
        "{\"jobs\": {\n  \"a\": {\"worker\": \"Noop\"},\n  \"b\": {\"worker\": \"Noop\", \"after\": [\"x\"]}\n}}",
    );
    let (code, _, err) = cli(&c, &["submit", &file]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown.json, line 3"), "{err}");
    assert!(err.contains("\"b\" runs after \"x\""), "{err}");
    let (code, _, err) = cli(&c, &["status", "00000000-0000-0000-0000-000000000000"]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown pipeline"), "{err}");
    let (code, _, err) = cli(&c, &["status", "not-an-id"]);
    assert_eq!(code, 2);
    assert!(err.contains("not-an-id"), "{err}");

    // No router: the message names the address and how long it tried.
    let out = Command::new(bin("pypelinin"))
        .args([
            "--api",
            "tcp://127.0.0.1:9",
            "--broadcast",
            "tcp://127.0.0.1:10",
        ])
        .args(["list"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("router at tcp://127.0.0.1:9 did not answer") && err.contains("attempts over"),
        "{err}"
    );
}

/// `status` says why each queued job is not running (`waiting_for` with `--json`), and
/// `brokers` shows what each slot runs.
#[test]
fn queued_jobs_say_why_and_brokers_show_their_slots() {
    let c = Cluster::start(1, 1);
    let file = write(
        &c,
        "why.json",
        r#"{"jobs": {"long": {"worker": "Sleep", "data": {"ms": 60000}},
            "next": {"worker": "Noop", "after": ["long"]},
            "lost": {"worker": "Nobody"}}}"#,
    );
    let id = submit(&c, &file);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let s = cli_json(&c, &["status", &id, "--json"], 0);
        if s["jobs"]["long"]["state"] == "running" {
            break s;
        }
        assert!(Instant::now() < deadline, "long never ran: {s}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status["jobs"]["next"]["state"], "queued");
    assert_eq!(
        status["jobs"]["next"]["waiting_for"],
        "parents running: long"
    );
    assert_eq!(
        status["jobs"]["lost"]["waiting_for"],
        "no connected broker offers worker Nobody"
    );
    assert!(
        status["jobs"]["long"].get("waiting_for").is_none(),
        "{status}"
    );
    let (code, out, err) = cli(&c, &["status", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("queued: lost: no connected broker offers worker Nobody"),
        "{out}"
    );

    let brokers = cli_json(&c, &["brokers", "--json"], 0);
    let held = brokers[0]["assigned"].as_array().unwrap();
    assert_eq!(held.len(), 1, "{brokers}");
    assert_eq!(held[0]["name"], "long");
    assert_eq!(held[0]["worker"], "Sleep");
    let (code, out, err) = cli(&c, &["brokers"]);
    assert_eq!(code, 0, "{err}");
    let slot = out
        .lines()
        .find(|l| l.trim_start().starts_with("slot 1"))
        .unwrap_or_else(|| panic!("no slot line: {out}"));
    assert!(
        slot.contains("Sleep") && slot.contains(&format!("{id}/long")),
        "{out}"
    );
    assert!(out.contains("1/1 slots busy"), "{out}");

    let (code, _, err) = cli(&c, &["cancel", &id]);
    assert_eq!(code, 0, "{err}");
}
