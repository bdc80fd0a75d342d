//! `pypelinin-broker` end to end: a real router, pipeliner and the generic broker
//! running shell and Python command workers declared in a TOML file.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use pypelinin_common::status::{JobState, PipelineState};
use pypelinin_common::PipelineSpec;
use pypelinin_tests::{Cluster, Proc};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(120);

/// The workers file: Python counts words and doubles its parent's count, shell fails
/// with a reason on stderr or sleeps (writing its pid, the group id, first), and
/// `persist` is a persistent Python worker doing both jobs of a pipeline in one process
/// (`pslow`, persistent too, writes its pid to `$PIDS/p` and sleeps with a child).
fn workers_toml(pids: &Path) -> String {
    format!(
        r#"
[workers.count]
command = ["python3", "-c", """
import json, os, sys
d = json.load(sys.stdin)
out = {{"words": len(d["text"].split()), "job": os.environ["PYPELININ_JOB"],
        "attempt": int(os.environ["PYPELININ_ATTEMPT"]),
        "pipeline": os.environ["PYPELININ_PIPELINE_ID"]}}
json.dump(out, open(os.environ["PYPELININ_OUTPUT"], "w"))
"""]

[workers.double]
command = ["python3", "-c", """
import json, os, sys
d = json.load(sys.stdin)
json.dump({{"doubled": 2 * d["parents"]["count"]["words"]}}, open(os.environ["PYPELININ_OUTPUT"], "w"))
"""]

[workers.fail]
command = ["sh", "-c", "echo 'reading rows' >&2; echo 'bad row 7: no date' >&2; exit 4"]

[workers.ghost]
command = ["/nonexistent/pypelinin-ghost"]

[workers.persist]
mode = "persistent"
command = ["python3", "-c", """
import json, os, sys
for line in sys.stdin:
    req = json.loads(line)
    d, job = req["input"], req["job"]
    if job["name"] == "count":
        out = {{"words": len(d["text"].split())}}
    else:
        out = {{"doubled": 2 * d["parents"]["count"]["words"]}}
    out.update(pid=os.getpid(), worker=os.environ["PYPELININ_WORKER"], job=job["name"])
    print(json.dumps({{"id": req["id"], "output": out}}), flush=True)
"""]

[workers.pslow]
mode = "persistent"
command = ["python3", "-c", """
import os, subprocess, sys, time
for line in sys.stdin:
    subprocess.Popen(["sleep", "1000"])
    with open(os.path.join(os.environ["PIDS"], "p"), "w") as f:
        f.write(str(os.getpid()))
    time.sleep(1000)
"""]
env = {{ PIDS = "{0}" }}

[workers.slow]
command = ["sh", "-c", "echo $$ > \"$PIDS/$PYPELININ_JOB\"; sleep 1000 & sleep 1000"]
env = {{ PIDS = "{0}" }}
"#,
        pids.display()
    )
}

/// A cluster with one `pypelinin-broker` of 2 slots serving `workers_toml`.
fn cluster() -> (Cluster, std::path::PathBuf) {
    let mut c = Cluster::start(0, 2);
    let pids = c.dir.path().join("pids");
    std::fs::create_dir(&pids).unwrap();
    let toml = c.dir.path().join("workers.toml");
    std::fs::write(&toml, workers_toml(&pids)).unwrap();
    c.add_broker_bin(
        "pypelinin-broker",
        &["--workers", "2", toml.to_str().unwrap()],
    );
    (c, pids)
}

/// The pid `job` of the slow worker wrote, once written.
fn pid_of(pids: &Path, job: &str) -> u32 {
    let until = Instant::now() + WAIT;
    loop {
        if let Some(pid) = std::fs::read_to_string(pids.join(job))
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return pid;
        }
        assert!(Instant::now() < until, "job {job} never started");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (as a failure guard, generously) until no process of group `pgid` is left.
fn assert_group_gone(pgid: u32) {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let alive = Command::new("sh")
            .args(["-c", &format!("kill -0 -- -{pgid} 2>/dev/null")])
            .status()
            .unwrap()
            .success();
        if !alive {
            return;
        }
        assert!(Instant::now() < until, "process group {pgid} still alive");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_two_job_pipeline_passes_the_first_output_to_the_second_on_stdin() {
    let (c, _) = cluster();
    let mut pm = c.client();
    let spec = PipelineSpec::default()
        .with_data("text", json!("the quick brown fox jumps"))
        .job("count", "count", &[])
        .job("double", "double", &["count"]);
    let id = pm.start(&spec).unwrap();
    let outcome = pm.wait(id, WAIT).unwrap();
    assert!(
        outcome.is_success(),
        "{outcome:?}\n{}",
        c.log("broker-0.log")
    );
    let outputs = pm.outputs(id).unwrap();
    assert_eq!(outputs["count"]["words"], 5);
    assert_eq!(outputs["count"]["job"], "count");
    assert_eq!(outputs["count"]["attempt"], 1);
    assert_eq!(outputs["count"]["pipeline"], id.to_string());
    assert_eq!(outputs["double"]["doubled"], 10);
}

#[test]
fn a_persistent_worker_serves_a_two_job_pipeline_from_one_process() {
    let (c, _) = cluster();
    let mut pm = c.client();
    let spec = PipelineSpec::default()
        .with_data("text", json!("the quick brown fox"))
        .job("count", "persist", &[])
        .job("double", "persist", &["count"]);
    let id = pm.start(&spec).unwrap();
    let outcome = pm.wait(id, WAIT).unwrap();
    assert!(
        outcome.is_success(),
        "{outcome:?}\n{}",
        c.log("broker-0.log")
    );
    let outputs = pm.outputs(id).unwrap();
    assert_eq!(outputs["count"]["words"], 4);
    assert_eq!(outputs["double"]["doubled"], 8);
    assert_eq!(outputs["count"]["worker"], "persist");
    assert_eq!(outputs["double"]["job"], "double");
    // The second job ran after the first gave its process back: the same one.
    assert_eq!(outputs["count"]["pid"], outputs["double"]["pid"]);
}

#[test]
fn failing_and_missing_commands_fail_their_jobs_and_the_broker_goes_on() {
    let (c, _) = cluster();
    let mut pm = c.client();
    let id = pm
        .start(&PipelineSpec::default().job("f", "fail", &[]))
        .unwrap();
    let outcome = pm.wait(id, WAIT).unwrap();
    assert!(!outcome.is_success(), "{outcome:?}");
    let err = outcome.status().jobs["f"].error.clone().unwrap();
    assert!(err.starts_with("sh exited with status 4"), "{err}");
    assert!(err.ends_with("reading rows\nbad row 7: no date"), "{err}");

    let id = pm
        .start(&PipelineSpec::default().job("g", "ghost", &[]))
        .unwrap();
    let outcome = pm.wait(id, WAIT).unwrap();
    let err = outcome.status().jobs["g"].error.clone().unwrap();
    assert_eq!(err, "command not found: /nonexistent/pypelinin-ghost");

    let id = pm
        .start(
            &PipelineSpec::default()
                .with_data("text", json!("still here"))
                .job("count", "count", &[]),
        )
        .unwrap();
    assert!(pm.wait(id, WAIT).unwrap().is_success());
}

#[test]
fn a_worker_the_file_does_not_declare_is_never_run_by_it() {
    // The router keeps such jobs queued for a broker that offers the worker (as for
    // every broker); this one announced only its file's workers, so it never takes it.
    let (c, _) = cluster();
    let mut pm = c.client();
    let id = pm
        .start(&PipelineSpec::default().job("x", "undeclared", &[]))
        .unwrap();
    let err = pm.wait(id, Duration::from_millis(800)).unwrap_err();
    assert!(
        matches!(err, pypelinin_client::ClientError::Timeout { .. }),
        "{err}"
    );
    let s = pm.status(id).unwrap();
    assert_eq!(s.state, PipelineState::Running);
    assert_eq!(s.jobs["x"].state, JobState::Queued);
    let brokers = pm.brokers().unwrap();
    assert_eq!(brokers.len(), 1);
    assert_eq!(
        brokers[0].workers,
        ["count", "double", "fail", "ghost", "persist", "pslow", "slow"]
    );
}

#[test]
fn a_timeout_kills_the_command_and_everything_it_started() {
    let (c, pids) = cluster();
    let mut pm = c.client();
    let mut spec = PipelineSpec::default().job("s", "slow", &[]);
    spec.jobs.get_mut("s").unwrap().timeout_ms = Some(500);
    let id = pm.start(&spec).unwrap();
    let outcome = pm.wait(id, WAIT).unwrap();
    let err = outcome.status().jobs["s"].error.clone().unwrap();
    assert!(err.starts_with("timed out after 500 ms"), "{err}");
    assert_group_gone(pid_of(&pids, "s"));
}

#[test]
fn cancelling_a_pipeline_kills_its_running_command_group() {
    let (c, pids) = cluster();
    let mut pm = c.client();
    let id = pm
        .start(&PipelineSpec::default().job("s", "slow", &[]))
        .unwrap();
    let pgid = pid_of(&pids, "s");
    pm.cancel(id).unwrap();
    assert_group_gone(pgid);
    // The slot is free again.
    let id = pm
        .start(
            &PipelineSpec::default()
                .with_data("text", json!("a b"))
                .job("count", "count", &[]),
        )
        .unwrap();
    assert!(pm.wait(id, WAIT).unwrap().is_success());
}

#[test]
fn a_broker_stopping_past_its_drain_timeout_leaves_no_command_behind() {
    let (mut c, pids) = cluster();
    let toml = c.dir.path().join("workers.toml");
    c.add_broker_bin(
        "pypelinin-broker",
        &["--drain-timeout", "1", toml.to_str().unwrap()],
    );
    // Only the second broker runs jobs.
    c.brokers.remove(0);
    let mut pm = c.client();
    pm.start(&PipelineSpec::default().job("s", "slow", &[]))
        .unwrap();
    let pgid = pid_of(&pids, "s");
    let broker = &mut c.brokers[0];
    broker.signal("TERM");
    let st = broker.wait_exit(WAIT).expect("the broker stops");
    assert!(st.success(), "{st:?}\n{}", c.log("broker-1.log"));
    assert_group_gone(pgid);
}

#[test]
fn a_broker_stopping_past_its_drain_timeout_leaves_no_persistent_process_behind() {
    let (mut c, pids) = cluster();
    let toml = c.dir.path().join("workers.toml");
    c.add_broker_bin(
        "pypelinin-broker",
        &["--drain-timeout", "1", toml.to_str().unwrap()],
    );
    c.brokers.remove(0);
    let mut pm = c.client();
    pm.start(&PipelineSpec::default().job("p", "pslow", &[]))
        .unwrap();
    // The persistent process writes its pid (its group's id) once it has the job.
    let pgid = pid_of(&pids, "p");
    let broker = &mut c.brokers[0];
    broker.signal("TERM");
    let st = broker.wait_exit(WAIT).expect("the broker stops");
    assert!(st.success(), "{st:?}\n{}", c.log("broker-1.log"));
    assert_group_gone(pgid);
}

#[test]
fn a_bad_workers_file_is_refused_at_start_with_its_line() {
    let c = Cluster::start(0, 1);
    let toml = c.dir.path().join("bad.toml");
    std::fs::write(&toml, "[workers.a]\ncommand = [\"true\"]\nshell = true\n").unwrap();
    let log = c.dir.path().join("bad-broker.log");
    let mut p = Proc::spawn(
        "pypelinin-broker",
        &["--api", &c.api, toml.to_str().unwrap()],
        &log,
    );
    let st = p.wait_exit(WAIT).expect("a bad file stops the broker");
    assert!(!st.success());
    let err = std::fs::read_to_string(&log).unwrap();
    let at = format!("{}:3: ", toml.display());
    assert!(err.contains(&at) && err.contains("shell"), "{err}");
}
