//! Sensors, the broker's side: checking a job's `wait_for` condition (a file exists, a
//! command exits 0) before its worker runs. A check is short and bounded; a condition
//! not met is reported as [`NOT_YET_KEY`] and the attempt ends, so the slot is free
//! until the router's next poke.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pypelinin_common::protocol::NOT_YET_KEY;
use pypelinin_common::sensor::{Condition, WaitFor};
use pypelinin_common::Data;

use crate::job::{fill_target, JobError};

/// How often a running command check is looked at.
const POLL: Duration = Duration::from_millis(10);

/// Checks `wait`, placeholders filled from `data`: `None` if it holds, or the output to
/// report (`{NOT_YET_KEY: what was checked}`) if not. A condition that cannot be
/// checked (a missing placeholder, a program that cannot start) fails the attempt.
pub(crate) fn check(wait: &WaitFor, data: &Data) -> Result<Option<Data>, JobError> {
    let not_met = match wait.condition() {
        Condition::File(path) => {
            let path = fill(path, data)?;
            (!std::path::Path::new(&path).exists()).then(|| format!("file {path}"))
        }
        Condition::Command(argv) => {
            let argv = argv
                .iter()
                .map(|a| fill(a, data))
                .collect::<Result<Vec<_>, _>>()?;
            let bound = Duration::from_millis(wait.command_bound_ms());
            if run_bounded(&argv, bound)? {
                None
            } else {
                Some(format!("command {}", argv.join(" ")))
            }
        }
        // The router checks these itself and never sends them; were one sent, it
        // could not be met here.
        Condition::Schedule(s) => Some(format!("schedule {s} (checked by the router only)")),
    };
    Ok(not_met.map(|what| {
        let mut out = Data::new();
        out.insert(NOT_YET_KEY.into(), serde_json::Value::String(what));
        out
    }))
}

fn fill(text: &str, data: &Data) -> Result<String, JobError> {
    fill_target(text, data).map_err(|e| match e {
        JobError::TargetPlaceholder { target, key } => JobError::Wait(format!(
            "{target:?}: the job's data has no {key:?} to fill it"
        )),
        other => other,
    })
}

/// Runs `argv` in its own process group, no input, output discarded: whether it
/// exited 0 within `bound`. Past the bound the whole group is killed (not met).
fn run_bounded(argv: &[String], bound: Duration) -> Result<bool, JobError> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| JobError::Wait("the command is empty".into()))?;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| JobError::Wait(format!("could not run {program:?}: {e}")))?;
    let deadline = Instant::now() + bound;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status.success()),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL),
            _ => break,
        }
    }
    // SAFETY: kill(2) on the child's process group (its id is the child's pid, and the
    // child is not reaped yet, so the id is still ours); no memory is involved.
    unsafe {
        libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL);
    }
    let _ = child.wait();
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn data() -> Data {
        [("day".to_string(), json!("2026-12-01"))]
            .into_iter()
            .collect()
    }

    fn file(path: &str) -> WaitFor {
        WaitFor {
            file: Some(path.into()),
            ..WaitFor::default()
        }
    }

    fn command(argv: &[&str], poke_ms: u64) -> WaitFor {
        WaitFor {
            command: Some(argv.iter().map(|s| s.to_string()).collect()),
            poke_interval_ms: Some(poke_ms),
            ..WaitFor::default()
        }
    }

    #[test]
    fn a_file_condition_is_met_once_the_filled_path_exists() {
        let dir = tempfile::tempdir().unwrap();
        let w = file(&format!("{}/{{day}}.csv", dir.path().display()));
        let out = check(&w, &data()).unwrap().expect("not met yet");
        let want = format!("file {}/2026-12-01.csv", dir.path().display());
        assert_eq!(out[NOT_YET_KEY], json!(want));
        std::fs::write(dir.path().join("2026-12-01.csv"), "x").unwrap();
        assert_eq!(check(&w, &data()).unwrap(), None);
        let e = check(&file("/data/{nope}"), &data()).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
    }

    #[test]
    fn a_command_condition_is_met_when_it_exits_0() {
        assert_eq!(check(&command(&["true"], 5_000), &data()).unwrap(), None);
        let out = check(&command(&["test", "-e", "/nowhere/{day}"], 5_000), &data())
            .unwrap()
            .expect("not met");
        assert_eq!(
            out[NOT_YET_KEY],
            json!("command test -e /nowhere/2026-12-01")
        );
        let e = check(&command(&["/no/such/program"], 5_000), &data()).unwrap_err();
        assert!(e.to_string().contains("could not run"), "{e}");
    }

    #[test]
    fn a_command_that_hangs_is_killed_with_its_group_at_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        // The shell's child (in the same group) would outlive a kill of the shell alone.
        let script = format!("sleep 30 & echo $! > {}; wait", pid_file.display());
        let started = Instant::now();
        let out = check(&command(&["sh", "-c", &script], 300), &data()).unwrap();
        assert!(out.is_some(), "a command killed at its bound is not met");
        assert!(started.elapsed() < Duration::from_secs(20));
        let pid: libc::pid_t = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        // Gone, or a zombie nobody reaped yet (in a container, pid 1 may not reap).
        let alive = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.rsplit(") ").next().is_some_and(|r| !r.starts_with('Z')))
        };
        while alive() {
            assert!(Instant::now() < deadline, "the group's sleep survived");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
