//! Captured logs end to end: real router, pipeliner and brokers as processes. A
//! command's stdout and stderr (invalid UTF-8 included) read back with `pypelinin
//! logs`, seen while the job still runs, kept per attempt, bounded for a job that
//! prints 100 MiB, a Rust worker's `tracing` events, and all of it after the router
//! is killed with SIGKILL and restarted.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pypelinin_common::protocol::{LogLine, LogStream, MAX_LOG_BYTES_PER_ATTEMPT};
use pypelinin_common::PipelineSpec;
use pypelinin_tests::{bin, Cluster};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(120);

/// `talk` prints to both streams, bytes that are not UTF-8 included; `hold` prints,
/// then waits for the file `$FLAGS/go`; `again` fails its first attempt once
/// `$FLAGS/fail` exists; `twice` fails its first attempt; `pers` is a
/// persistent worker logging each job on stderr; `flood` prints 100 MiB on one line,
/// then a last line.
fn workers_toml(flags: &Path) -> String {
    format!(
        r#"
[workers.talk]
command = ["python3", "-c", """
import sys
print("hello stdout", flush=True)
print("hello stderr", file=sys.stderr, flush=True)
sys.stdout.buffer.write(b"bad \\xff\\xfe bytes\\n")
"""]

[workers.hold]
command = ["sh", "-c", "echo started; while [ ! -e \"$FLAGS/go\" ]; do sleep 0.05; done; echo finished"]
env = {{ FLAGS = "{0}" }}

[workers.again]
command = ["sh", "-c", "echo \"try $PYPELININ_ATTEMPT\"; [ \"$PYPELININ_ATTEMPT\" -gt 1 ] && exit 0; while [ ! -e \"$FLAGS/fail\" ]; do sleep 0.05; done; exit 1"]
env = {{ FLAGS = "{0}" }}

[workers.twice]
command = ["sh", "-c", "echo \"this is attempt $PYPELININ_ATTEMPT\"; [ \"$PYPELININ_ATTEMPT\" -gt 1 ]"]

[workers.pers]
mode = "persistent"
command = ["python3", "-c", """
import json, sys
for line in sys.stdin:
    req = json.loads(line)
    print("serving " + req["job"]["name"], file=sys.stderr, flush=True)
    print(json.dumps({{"id": req["id"], "output": {{}}}}), flush=True)
"""]

[workers.flood]
command = ["sh", "-c", "head -c 104857600 /dev/zero | tr '\\0' 'x'; echo; echo last line"]
"#,
        flags.display()
    )
}

fn cluster() -> (Cluster, std::path::PathBuf) {
    let mut c = Cluster::start(0, 2);
    let flags = c.dir.path().join("flags");
    std::fs::create_dir(&flags).unwrap();
    let toml = c.dir.path().join("workers.toml");
    std::fs::write(&toml, workers_toml(&flags)).unwrap();
    c.add_broker_bin(
        "pypelinin-broker",
        &["--workers", "2", toml.to_str().unwrap()],
    );
    (c, flags)
}

fn one_job(worker: &str) -> PipelineSpec {
    PipelineSpec::default().job("j", worker, &[])
}

fn texts(lines: &[LogLine]) -> Vec<String> {
    lines
        .iter()
        .map(|l| String::from_utf8_lossy(&l.bytes).into_owned())
        .collect()
}

#[test]
fn a_command_log_is_printed_with_times_and_streams_and_survives_a_router_kill() {
    let (mut c, _) = cluster();
    let mut pm = c.client();
    let id = pm.start(&one_job("talk")).unwrap();
    assert!(pm.wait(id, WAIT).unwrap().is_success());
    let check = |c: &Cluster| {
        let (code, out, err) = c.cli(&["logs", &id.to_string(), "j"]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("--- log of attempt 1 ---"), "{out}");
        let find = |needle: &str| {
            out.lines()
                .find(|l| l.ends_with(needle))
                .unwrap_or_else(|| panic!("no line ending {needle:?} in:\n{out}"))
                .to_string()
        };
        let line = find("stdout hello stdout");
        // An RFC 3339 time in UTC with milliseconds first.
        assert_eq!(&line[4..5], "-", "{line}");
        assert_eq!(&line[10..11], "T", "{line}");
        assert_eq!(&line[23..25], "Z ", "{line}");
        find("stderr hello stderr");
        find("stdout bad \u{fffd}\u{fffd} bytes");
    };
    check(&c);
    let (code, out, _) = c.cli(&["logs", &id.to_string(), "j", "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let lines = v["log"]["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 3, "{v}");
    assert!(lines.iter().any(|l| l["stream"] == "stderr"));
    c.kill_and_restart_router();
    check(&c);
    let (code, _, err) = c.cli(&["logs", &id.to_string(), "nope"]);
    assert_eq!(code, 2);
    assert!(err.contains("no job \"nope\""), "{err}");
    let (code, _, err) = c.cli(&["logs", &id.to_string(), "j", "--attempt", "5"]);
    assert_eq!(code, 2);
    assert!(err.contains("no attempt 5"), "{err}");
}

#[test]
fn a_running_job_log_is_readable_and_followed_until_the_job_ends() {
    let (c, flags) = cluster();
    let mut pm = c.client();
    let id = pm.start(&one_job("hold")).unwrap();
    let follower = follow(&c, &id.to_string(), "j");
    // The first line is there while the job still waits for its flag.
    let until = Instant::now() + WAIT;
    let page = loop {
        let page = pm.logs(id, "j", None, 0).unwrap();
        if !page.lines.is_empty() {
            break page;
        }
        assert!(Instant::now() < until, "no line while running");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(texts(&page.lines), ["started"]);
    assert!(!page.finished, "{page:?}");
    assert_eq!(page.lines[0].stream, LogStream::Stdout);
    std::fs::write(flags.join("go"), "").unwrap();
    let out = followed(follower);
    let started = out.find("stdout started").expect(&out);
    let finished = out.find("stdout finished").expect(&out);
    assert!(started < finished, "{out}");
    let page = pm.logs(id, "j", None, page.lines[0].seq).unwrap();
    assert_eq!(texts(&page.lines), ["finished"]);
    assert!(page.finished && page.job_final);
}

/// `pypelinin logs ID JOB --follow` started now, with its stdout piped.
fn follow(c: &Cluster, id: &str, job: &str) -> pypelinin_tests::Proc {
    let child = Command::new(bin("pypelinin"))
        .args(["--api", &c.api, "--broadcast", &c.broadcast])
        .args(["logs", id, job, "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    pypelinin_tests::Proc {
        child,
        name: "pypelinin logs --follow".into(),
    }
}

/// What a follower printed, once it exited 0.
fn followed(mut p: pypelinin_tests::Proc) -> String {
    let status = p
        .wait_exit(WAIT)
        .expect("the follower exits once the job ended");
    let mut out = String::new();
    p.child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(status.success(), "{out}");
    out
}

#[test]
fn a_follower_goes_on_to_the_retry_and_ends_with_the_job() {
    let (c, flags) = cluster();
    let mut pm = c.client();
    let mut spec = one_job("again");
    spec.retries = Some(1);
    let id = pm.start(&spec).unwrap();
    let follower = follow(&c, &id.to_string(), "j");
    let until = Instant::now() + WAIT;
    while pm.logs(id, "j", None, 0).unwrap().lines.is_empty() {
        assert!(Instant::now() < until, "no line while running");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::write(flags.join("fail"), "").unwrap();
    let out = followed(follower);
    let at = |needle: &str| {
        out.find(needle)
            .unwrap_or_else(|| panic!("no {needle:?} in:\n{out}"))
    };
    assert!(at("--- log of attempt 1 ---") < at("stdout try 1"), "{out}");
    assert!(at("stdout try 1") < at("--- log of attempt 2 ---"), "{out}");
    assert!(at("--- log of attempt 2 ---") < at("stdout try 2"), "{out}");
    assert!(pm.wait(id, WAIT).unwrap().is_success());
}

#[test]
fn each_attempt_keeps_its_own_log() {
    let (c, _) = cluster();
    let mut pm = c.client();
    let mut spec = one_job("twice");
    spec.retries = Some(1);
    let id = pm.start(&spec).unwrap();
    assert!(pm.wait(id, WAIT).unwrap().is_success());
    let latest = pm.logs(id, "j", None, 0).unwrap();
    assert_eq!((latest.attempt, latest.attempts), (2, 2));
    assert_eq!(texts(&latest.lines), ["this is attempt 2"]);
    let (code, out, _) = c.cli(&["logs", &id.to_string(), "j", "--attempt", "1"]);
    assert_eq!(code, 0);
    assert!(out.contains("stdout this is attempt 1"), "{out}");
    assert!(!out.contains("this is attempt 2"), "{out}");
}

#[test]
fn a_persistent_worker_stderr_is_the_log_of_the_job_it_serves() {
    let (c, _) = cluster();
    let mut pm = c.client();
    let spec = PipelineSpec::default()
        .job("first", "pers", &[])
        .job("second", "pers", &["first"])
        .job("third", "pers", &["second"]);
    let id = pm.start(&spec).unwrap();
    assert!(pm.wait(id, WAIT).unwrap().is_success());
    for job in ["first", "second", "third"] {
        let page = pm.logs(id, job, None, 0).unwrap();
        assert_eq!(texts(&page.lines), [format!("serving {job}")], "{job}");
        assert_eq!(page.lines[0].stream, LogStream::Stderr);
    }
}

#[test]
fn a_job_printing_100_mib_keeps_the_last_mebibyte() {
    let (c, _) = cluster();
    let mut pm = c.client();
    let id = pm.start(&one_job("flood")).unwrap();
    assert!(pm.wait(id, WAIT).unwrap().is_success());
    let page = pm.logs(id, "j", None, 0).unwrap();
    let kept: usize = page.lines.iter().map(LogLine::cost).sum();
    assert!(kept <= MAX_LOG_BYTES_PER_ATTEMPT, "{kept}");
    assert!(kept > MAX_LOG_BYTES_PER_ATTEMPT / 2, "{kept}");
    assert_eq!(
        texts(&page.lines).last().map(String::as_str),
        Some("last line")
    );
    let dropped: u64 = page.dropped_bytes + page.lines.iter().map(|l| l.dropped).sum::<u64>();
    assert!(dropped >= 99 << 20, "{dropped}");
    // The broker never held much of it.
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", c.brokers[0].pid())).unwrap_or_default();
    if let Some(hwm) = status.lines().find(|l| l.starts_with("VmHWM:")) {
        let kib: u64 = hwm.split_whitespace().nth(1).unwrap().parse().unwrap();
        eprintln!("broker peak memory after 100 MiB of output: {kib} KiB");
        assert!(kib < 64 << 10, "broker peak memory {kib} KiB");
    }
}

#[test]
fn a_rust_worker_tracing_events_are_in_its_job_log() {
    for isolation in ["thread", "process"] {
        let c = Cluster::start_with(1, 1, &["--isolation", isolation]);
        let mut pm = c.client();
        let mut spec = PipelineSpec::default()
            .with_data("fail_attempts", json!(0))
            .job("j", "Flaky", &[]);
        spec.retries = Some(0);
        let id = pm.start(&spec).unwrap();
        assert!(pm.wait(id, WAIT).unwrap().is_success());
        let page = pm.logs(id, "j", None, 0).unwrap();
        let line = page
            .lines
            .iter()
            .find(|l| l.stream == LogStream::Log)
            .unwrap_or_else(|| panic!("{isolation}: no tracing line in {page:?}"));
        let text = String::from_utf8_lossy(&line.bytes);
        assert!(
            text.starts_with("INFO ") && text.contains("flaky worker starting"),
            "{isolation}: {text}"
        );
    }
}
