//! `PersistentWorker` run directly with a real Python program speaking the protocol.

use super::*;
use serde_json::{json, Value};
use std::sync::Arc;

/// A persistent worker whose behaviour each job chooses with `input["do"]`.
const SCRIPT: &str = r#"
import json, os, subprocess, sys, time
for line in sys.stdin:
    req = json.loads(line)
    i, inp = req["id"], req["input"]
    do = inp.get("do")
    if do == "exit":
        sys.stderr.write("giving up\n"); sys.stderr.flush(); sys.exit(3)
    if do == "garbage":
        print("this is not json", flush=True); continue
    if do == "wrongid":
        print(json.dumps({"id": i + 1, "output": {}}), flush=True); continue
    if do == "notobject":
        print(json.dumps({"id": i, "output": [1, 2]}), flush=True); continue
    if do == "error":
        print(json.dumps({"id": i, "error": "bad input: " + inp["why"]}), flush=True); continue
    if do == "sleep":
        subprocess.Popen(["sleep", "1000"])
        sys.stderr.write("sleeping\n"); sys.stderr.flush()
        time.sleep(1000)
    out = {"pid": os.getpid(), "worker": os.environ.get("PYPELININ_WORKER"),
           "x": os.environ.get("X"), "input": inp, "job": req["job"]}
    print(json.dumps({"id": i, "output": out}), flush=True)
"#;

fn worker() -> PersistentWorker {
    PersistentWorker::new(vec!["python3".into(), "-c".into(), SCRIPT.into()]).env("X", "x1")
}

fn job(timeout_ms: Option<u64>) -> JobInfo {
    JobInfo {
        pipeline: Default::default(),
        name: "count".into(),
        worker: "Py".into(),
        attempt: 2,
        data: Data::new(),
        parents: Default::default(),
        timeout_ms,
        target: None,
        wait_for: None,
    }
}

fn run(w: &PersistentWorker, input: Value) -> Result<Data, PersistentError> {
    run_with(w, input, None, &CancelFlag::new())
}

fn run_with(
    w: &PersistentWorker,
    input: Value,
    timeout_ms: Option<u64>,
    cancel: &CancelFlag,
) -> Result<Data, PersistentError> {
    let Value::Object(input) = input else {
        panic!("not an object")
    };
    w.run(&job(timeout_ms), &input, cancel)
}

/// The pid a `{"do": "pid"}` job reports (the process's, its group's id).
fn pid(w: &PersistentWorker) -> libc::pid_t {
    let out = run(w, json!({"do": "pid"})).unwrap();
    out["pid"]
        .as_i64()
        .and_then(|p| libc::pid_t::try_from(p).ok())
        .unwrap()
}

fn group_alive(pgid: libc::pid_t) -> bool {
    // SAFETY: signal 0 only checks for existence.
    let r = unsafe { libc::kill(-pgid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Asserts group `pgid` is gone (allowing init a moment to reap reparented processes).
fn assert_group_gone(pgid: libc::pid_t) {
    let until = Instant::now() + Duration::from_secs(10);
    while group_alive(pgid) {
        assert!(
            Instant::now() < until,
            "process group {pgid} is still alive"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn several_jobs_are_served_by_one_process_with_the_request_as_specified() {
    let w = worker();
    let out = run(&w, json!({"do": "pid", "parents": {"up": {"n": 1}}})).unwrap();
    assert_eq!(out["worker"], "Py");
    assert_eq!(out["x"], "x1");
    assert_eq!(
        out["input"],
        json!({"do": "pid", "parents": {"up": {"n": 1}}})
    );
    assert_eq!(out["job"]["name"], "count");
    assert_eq!(out["job"]["worker"], "Py");
    assert_eq!(out["job"]["attempt"], 2);
    let first = out["pid"].clone();
    for _ in 0..5 {
        assert_eq!(run(&w, json!({"do": "pid"})).unwrap()["pid"], first);
    }
    assert_eq!(w.idle_processes(), 1);
}

#[test]
fn a_process_exiting_mid_job_fails_that_job_only() {
    let w = worker();
    let before = pid(&w);
    let e = run(&w, json!({"do": "exit"})).unwrap_err().to_string();
    assert!(e.contains("exited with status 3"), "{e}");
    assert!(e.contains("giving up"), "{e}");
    assert_eq!(w.idle_processes(), 0);
    let after = pid(&w);
    assert_ne!(before, after);
    assert_group_gone(before);
}

#[test]
fn garbage_on_stdout_fails_the_job_and_discards_the_process() {
    for (what, says) in [
        ("garbage", "not JSON"),
        ("wrongid", "expected"),
        ("notobject", "\"output\" is not a JSON object"),
    ] {
        let w = worker();
        let before = pid(&w);
        let e = run(&w, json!({"do": what})).unwrap_err().to_string();
        assert!(e.contains("broke the protocol"), "{what}: {e}");
        assert!(e.contains(says), "{what}: {e}");
        assert_group_gone(before);
        assert_ne!(pid(&w), before, "{what}");
    }
}

#[test]
fn an_error_response_fails_the_job_with_its_message_and_keeps_the_process() {
    let w = worker();
    let before = pid(&w);
    let e = run(&w, json!({"do": "error", "why": "no text"})).unwrap_err();
    assert!(matches!(e, PersistentError::Job(_)), "{e:?}");
    assert_eq!(e.to_string(), "bad input: no text");
    assert_eq!(pid(&w), before);
}

#[test]
fn a_timeout_kills_the_process_group_and_the_next_job_works() {
    let w = worker();
    let before = pid(&w);
    let e = run_with(&w, json!({"do": "sleep"}), Some(300), &CancelFlag::new())
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("timed out after 300 ms"), "{e}");
    assert_group_gone(before);
    assert_eq!(w.idle_processes(), 0);
    assert_ne!(pid(&w), before);
}

#[test]
fn a_raised_cancel_flag_kills_the_process_group_and_the_next_job_works() {
    let w = worker();
    let before = pid(&w);
    let flag = CancelFlag::new();
    let raiser = {
        let flag = flag.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            flag.cancel();
        })
    };
    let e = run_with(&w, json!({"do": "sleep"}), None, &flag).unwrap_err();
    raiser.join().unwrap();
    assert!(matches!(e, PersistentError::Cancelled { .. }), "{e:?}");
    assert_group_gone(before);
    assert_ne!(pid(&w), before);
}

#[test]
fn dropping_the_worker_kills_its_processes() {
    let w = Arc::new(worker());
    // Two jobs at once: two processes.
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let w = w.clone();
            std::thread::spawn(move || pid(&w))
        })
        .collect();
    let mut pids: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    pids.extend(
        w.idle_pids()
            .iter()
            .filter_map(|&p| libc::pid_t::try_from(p).ok()),
    );
    assert!(w.idle_processes() >= 1);
    drop(w);
    for p in pids {
        assert_group_gone(p);
    }
}

#[test]
fn a_program_that_does_not_exist_fails_clearly() {
    let w = PersistentWorker::new(vec!["pypelinin-no-such-program".into()]);
    let e = run(&w, json!({})).unwrap_err().to_string();
    assert_eq!(e, "command not found: pypelinin-no-such-program");
}

#[test]
fn an_endless_line_is_cut_at_the_bound() {
    let w = PersistentWorker::new(vec![
        "sh".into(),
        "-c".into(),
        "read line; exec yes x | tr -d '\\n'".into(),
    ]);
    let e = run(&w, json!({})).unwrap_err().to_string();
    assert!(e.contains("a response line longer than"), "{e}");
}

#[test]
fn each_job_stderr_lines_are_in_its_log_when_it_returns() {
    use crate::joblog::{with_log, JobLog, LogSink};
    use pypelinin_common::protocol::JobRef;
    // A long line takes several reads, so the last bytes are read while the rest is
    // already logged: the window in which a job used to end before its line did.
    let script = r#"
import json, sys
for line in sys.stdin:
    req = json.loads(line)
    n = req["input"]["n"]
    sys.stderr.write(("%d:" % n) + "x" * 16000 + "\n"); sys.stderr.flush()
    print(json.dumps({"id": req["id"], "output": {}}), flush=True)
"#;
    let w = PersistentWorker::new(vec!["python3".into(), "-c".into(), script.into()]);
    let sink = Arc::new(LogSink::default());
    for n in 0..200u32 {
        let log = JobLog {
            job: JobRef {
                pipeline: Default::default(),
                job: n,
                attempt: 1,
            },
            sink: sink.clone(),
        };
        with_log(Some(log), || run(&w, json!({"n": n}))).unwrap();
        let lines: Vec<_> = sink.take(usize::MAX);
        let mine: Vec<_> = lines.iter().filter(|c| c.job.job == n).collect();
        assert_eq!(mine.len(), 1, "job {n}: {} lines in all", lines.len());
        let text = String::from_utf8_lossy(&mine[0].line.bytes);
        assert!(text.starts_with(&format!("{n}:")), "job {n}");
        assert!(
            lines.iter().all(|c| c.job.job == n),
            "job {n}: a stray line"
        );
    }
}
