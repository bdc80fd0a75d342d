//! `CommandWorker` run directly with real `sh -c` commands.

use super::*;
use crate::cancel::with_flag;
use serde_json::json;

fn job(timeout_ms: Option<u64>) -> JobInfo {
    JobInfo {
        pipeline: Default::default(),
        name: "count".into(),
        worker: "W".into(),
        attempt: 2,
        data: Data::new(),
        parents: Default::default(),
        timeout_ms,
        target: None,
        wait_for: None,
    }
}

fn sh(script: &str) -> CommandWorker {
    CommandWorker::new(vec!["sh".into(), "-c".into(), script.into()])
}

fn input(v: serde_json::Value) -> Data {
    match v {
        serde_json::Value::Object(o) => o,
        _ => panic!("not an object"),
    }
}

fn run(w: &CommandWorker, timeout_ms: Option<u64>) -> Result<Data, CommandError> {
    w.run(&job(timeout_ms), &Data::new(), &CancelFlag::new())
}

/// The pid a script wrote to `file` (its shell: the group leader), once written.
fn pid_in(file: &Path) -> libc::pid_t {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(pid) = std::fs::read_to_string(file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return pid;
        }
        assert!(Instant::now() < until, "no pid in {}", file.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether any process of group `pgid` still exists.
fn group_alive(pgid: libc::pid_t) -> bool {
    // SAFETY: signal 0 only checks for existence.
    let r = unsafe { libc::kill(-pgid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Asserts group `pgid` is gone (allowing the init process a moment to reap the
/// killed processes that were reparented to it).
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
fn a_command_gets_its_input_and_environment_and_its_output_file_is_the_output() {
    let w = sh(r#"input=$(cat)
printf '{"input": %s, "job": "%s", "attempt": %s, "lang": "%s", "here": "%s"}' \
  "$input" "$PYPELININ_JOB" "$PYPELININ_ATTEMPT" "$LANG_X" "$(pwd)" > "$PYPELININ_OUTPUT""#)
    .env("LANG_X", "C.UTF-8")
    .cwd(Path::new("/"));
    let inp = input(json!({"text": "a b", "parents": {"up": {"n": 1}}}));
    let out = w.run(&job(None), &inp, &CancelFlag::new()).unwrap();
    assert_eq!(
        serde_json::Value::Object(out),
        json!({"input": {"text": "a b", "parents": {"up": {"n": 1}}},
               "job": "count", "attempt": 2, "lang": "C.UTF-8", "here": "/"})
    );
}

#[test]
fn no_output_file_is_an_empty_output() {
    assert_eq!(run(&sh("true"), None).unwrap(), Data::new());
}

#[test]
fn an_output_that_is_not_an_object_fails_the_job() {
    let e = run(&sh(r#"echo '[1, 2]' > "$PYPELININ_OUTPUT""#), None).unwrap_err();
    assert!(matches!(e, CommandError::BadOutput(_)), "{e}");
    assert!(
        e.to_string().contains("not a JSON object: found an array"),
        "{e}"
    );
    let e = run(&sh(r#"echo '{"a": ' > "$PYPELININ_OUTPUT""#), None).unwrap_err();
    assert!(e.to_string().contains("not a JSON object"), "{e}");
}

#[test]
fn an_output_file_too_large_is_refused_before_it_is_parsed() {
    let w = sh(r#"head -c 2000000 /dev/zero | tr '\0' ' ' > "$PYPELININ_OUTPUT""#);
    let e = run(&w, None).unwrap_err();
    assert!(matches!(e, CommandError::OutputTooLarge(_)), "{e}");
}

#[test]
fn a_non_zero_exit_fails_with_its_status_and_the_end_of_stderr() {
    let e = run(&sh("echo early >&2; echo 'bad input: x' >&2; exit 3"), None).unwrap_err();
    let msg = e.to_string();
    assert!(msg.starts_with("sh exited with status 3"), "{msg}");
    assert!(msg.ends_with("stderr:\nearly\nbad input: x"), "{msg}");
}

#[test]
fn a_command_killed_by_a_signal_fails_with_the_signal() {
    let e = run(&sh("kill -KILL $$"), None).unwrap_err();
    assert!(
        e.to_string().contains("was killed by signal 9 (SIGKILL)"),
        "{e}"
    );
}

#[test]
fn a_command_that_does_not_exist_fails_clearly() {
    let w = CommandWorker::new(vec!["/nonexistent/pypelinin-job".into()]);
    let e = run(&w, None).unwrap_err();
    assert_eq!(
        e.to_string(),
        "command not found: /nonexistent/pypelinin-job"
    );
    let e = run(&CommandWorker::new(vec![]), None).unwrap_err();
    assert!(matches!(e, CommandError::Empty));
    let e = run(&sh("true").cwd(Path::new("/nonexistent/dir")), None).unwrap_err();
    assert!(matches!(e, CommandError::NoCwd(_)), "{e}");
}

#[test]
fn a_command_that_never_reads_its_input_does_not_hang() {
    // Far more than a pipe holds: the writer would block if it were waited for.
    let big = input(json!({"text": "x".repeat(4 << 20)}));
    let out = sh("exit 0").run(&job(None), &big, &CancelFlag::new());
    assert_eq!(out.unwrap(), Data::new());
}

#[test]
fn a_command_printing_100_mib_is_drained_and_only_a_tail_of_stderr_kept() {
    let out = run(&sh("head -c 104857600 /dev/zero"), None);
    assert_eq!(out.unwrap(), Data::new());
    let e = run(
        &sh("head -c 104857600 /dev/zero | tr '\\0' 'x' >&2; echo >&2; echo last >&2; exit 1"),
        None,
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(msg.len() < 2 * STDERR_TAIL_BYTES, "{} bytes", msg.len());
    assert!(msg.ends_with("\nlast"), "{}", &msg[msg.len() - 40..]);
}

#[test]
fn a_background_child_does_not_outlive_its_job() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pid");
    let script = format!("echo $$ > {}; sleep 1000 & exit 0", pids.display());
    assert_eq!(run(&sh(&script), None).unwrap(), Data::new());
    assert_group_gone(pid_in(&pids));
}

#[test]
fn a_timeout_kills_the_whole_group() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pid");
    let script = format!("echo $$ > {}; sleep 1000 & sleep 1000", pids.display());
    let e = run(&sh(&script), Some(300)).unwrap_err();
    assert!(
        matches!(e, CommandError::TimedOut { limit_ms: 300, .. }),
        "{e}"
    );
    assert!(e.to_string().starts_with("timed out after 300 ms"), "{e}");
    assert_group_gone(pid_in(&pids));
}

#[test]
fn a_raised_cancel_flag_kills_the_whole_group() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pid");
    let script = format!("echo $$ > {}; sleep 1000 & sleep 1000", pids.display());
    let flag = CancelFlag::new();
    let raiser = {
        let (flag, pids) = (flag.clone(), pids.clone());
        std::thread::spawn(move || {
            pid_in(&pids);
            flag.cancel();
        })
    };
    // Through `Worker::process`, as a thread slot runs it: the flag is the thread's.
    let r = with_flag(flag, || sh(&script).process(&job(None), Data::new()));
    raiser.join().unwrap();
    let e = r.unwrap_err();
    assert!(e.to_string().starts_with("cancelled: sh"), "{e}");
    assert_group_gone(pid_in(&pids));
}

#[test]
fn a_stderr_tail_keeps_whole_last_lines() {
    let mut t = Tail::default();
    for i in 0..10_000 {
        t.push(format!("line {i}\n").as_bytes());
    }
    let text = t.text();
    assert!(text.len() <= STDERR_TAIL_BYTES);
    assert!(
        text.starts_with("line ") && text.ends_with("line 9999"),
        "{text}"
    );
}

#[test]
fn stdout_and_stderr_lines_go_to_the_job_log_and_the_error_keeps_its_stderr_tail() {
    use crate::joblog::{with_log, JobLog, LogSink};
    use pypelinin_common::protocol::{JobRef, LogStream};
    let sink = std::sync::Arc::new(LogSink::default());
    let log = JobLog {
        job: JobRef {
            pipeline: Default::default(),
            job: 3,
            attempt: 2,
        },
        sink: sink.clone(),
    };
    let w = sh("echo out1; printf 'err1\\n' >&2; printf '\\377\\376bin\\n'; printf 'no newline' >&2; exit 4");
    let e = with_log(Some(log), || run(&w, None)).unwrap_err();
    assert!(e.to_string().contains("err1\nno newline"), "{e}");
    let got: Vec<(LogStream, Vec<u8>)> = sink
        .take(usize::MAX)
        .into_iter()
        .map(|c| (c.line.stream, c.line.bytes))
        .collect();
    let of = |s: LogStream| -> Vec<Vec<u8>> {
        got.iter()
            .filter(|(k, _)| *k == s)
            .map(|(_, b)| b.clone())
            .collect()
    };
    assert_eq!(of(LogStream::Stdout), [&b"out1"[..], b"\xff\xfebin"]);
    assert_eq!(of(LogStream::Stderr), [&b"err1"[..], b"no newline"]);
}
