//! Sensors on a real cluster: a job waiting for a file shows `waiting` (with what it
//! waits for) in `pypelinin status --json` while its broker's one slot runs other
//! work, and runs with its child once the file exists; a command sensor that never
//! holds fails its job at the wait's timeout. No timing is asserted: short poke
//! intervals, generous deadlines.

use std::time::{Duration, Instant};

use pypelinin_tests::Cluster;
use serde_json::{json, Value};

fn write(c: &Cluster, name: &str, v: &Value) -> String {
    let p = c.dir.path().join(name);
    std::fs::write(&p, v.to_string()).unwrap();
    p.to_str().unwrap().to_string()
}

fn status(c: &Cluster, id: &str) -> Value {
    let (code, out, err) = c.cli(&["status", id, "--json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    serde_json::from_str(out.trim()).expect("status as JSON")
}

fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_job_waiting_for_a_file_holds_no_slot_and_runs_with_its_child_once_it_exists() {
    let c = Cluster::start(1, 1);
    let pattern = c.dir.path().join("in-{day}.csv");
    let input = c.dir.path().join("in-2026-12-01.csv");
    let file = write(
        &c,
        "sensor.json",
        &json!({
            "data": {"day": "2026-12-01"},
            "jobs": {
                "sense": {"worker": "Echo", "wait_for": {
                    "file": pattern.to_str().unwrap(), "poke_interval_ms": 200
                }},
                "use": {"worker": "Echo", "after": ["sense"]}
            }
        }),
    );
    let (code, out, err) = c.cli(&["submit", &file]);
    assert_eq!(code, 0, "{out}\n{err}");
    let id = out.trim().to_string();
    until("the sensor to wait", || {
        status(&c, &id)["jobs"]["sense"]["state"] == "waiting"
    });
    let s = status(&c, &id);
    let waiting_for = s["jobs"]["sense"]["waiting_for"].as_str().unwrap();
    assert!(
        waiting_for.contains(&format!("file {}", input.display())),
        "{waiting_for}"
    );
    assert_eq!(s["jobs"]["use"]["state"], "queued");
    let (code, text, _) = c.cli(&["status", &id]);
    assert_eq!(code, 0);
    assert!(text.contains("waiting: sense: for file "), "{text}");
    let (code, text, _) = c.cli(&["logs", &id, "sense"]);
    assert_eq!(code, 0);
    assert!(text.contains("waiting for file "), "{text}");

    // The broker's one slot is free while the sensor waits: another pipeline runs.
    let other = write(
        &c,
        "other.json",
        &json!({"jobs": {"echo": {"worker": "Echo"}}}),
    );
    let (code, out, err) = c.cli(&["submit", &other, "--wait", "--json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["state"], "succeeded", "{v}");
    let s = status(&c, &id);
    assert_ne!(s["jobs"]["sense"]["state"], "succeeded", "{s}");
    assert_eq!(
        s["jobs"]["sense"]["error"],
        Value::Null,
        "pokes are no failures"
    );

    std::fs::write(&input, "here").unwrap();
    until("the pipeline to succeed", || {
        status(&c, &id)["state"] == "succeeded"
    });
    let s = status(&c, &id);
    assert_eq!(s["jobs"]["sense"]["state"], "succeeded", "{s}");
    assert_eq!(s["jobs"]["use"]["state"], "succeeded", "{s}");
    assert!(s["jobs"]["sense"].get("waiting_for").is_none(), "{s}");
}

#[test]
fn a_command_sensor_that_never_holds_fails_its_job_at_the_timeout() {
    let c = Cluster::start(1, 1);
    let file = write(
        &c,
        "never.json",
        &json!({"jobs": {"sense": {"worker": "Echo", "wait_for": {
            "command": ["false"], "poke_interval_ms": 100, "timeout_ms": 1000
        }}}}),
    );
    let (code, out, err) = c.cli(&["submit", &file, "--wait", "--json"]);
    assert_eq!(code, 1, "{out}\n{err}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["state"], "failed", "{v}");
    let e = v["jobs"]["sense"]["error"].as_str().unwrap();
    assert!(e.contains("for command false: timed out"), "{e}");
}
