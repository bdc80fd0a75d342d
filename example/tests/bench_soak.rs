//! The soak benchmark (`bench --scenario soak`) kept from rotting: short runs of the real
//! `bench` binary, a real cluster of separate processes on loopback, checked for the
//! rows its `--json` file promises. Figures are only checked for being there and
//! positive: timings and memory swing too much here to assert anything about them.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

/// Runs `bench` with `args`, failing the test with its output if it fails.
fn bench(args: &[&str], json: Option<&Path>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bench"));
    cmd.args(args);
    if let Some(json) = json {
        cmd.arg("--json").arg(json);
    }
    cmd.output().expect("bench starts")
}

fn rows(json: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(json).expect("the --json file is written");
    serde_json::from_str(&text).expect("the --json file is a JSON array of rows")
}

fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "bench failed: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The four fields and the four more, each a positive number.
fn assert_row_fields(row: &Value) {
    for key in [
        "rss_mib",
        "rss_peak_mib",
        "jobs_per_s",
        "disk_mib",
        "elapsed_s",
        "interval_s",
        "router_cpu_s",
    ] {
        let v = row[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} missing or not a number in {row}"));
        assert!(v > 0.0, "{key} = {v} in {row}");
    }
    let (now, peak) = (row["rss_mib"].as_f64(), row["rss_peak_mib"].as_f64());
    assert!(
        peak >= now,
        "the interval's peak under the RSS at its end: {row}"
    );
}

#[test]
fn soak_writes_one_row_per_interval_with_the_four_figures() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("soak.json");
    let out = bench(
        &[
            "--scenario",
            "soak",
            "--pipelines",
            "3000",
            "--every",
            "1000",
        ],
        Some(&json),
    );
    assert_ok(&out);
    let rows = rows(&json);
    let counts: Vec<u64> = rows
        .iter()
        .map(|r| r["pipelines"].as_u64().expect("pipelines is a count"))
        .collect();
    assert_eq!(counts, [1000, 2000, 3000]);
    for row in &rows {
        assert_row_fields(row);
    }
    let elapsed: Vec<f64> = rows
        .iter()
        .map(|r| r["elapsed_s"].as_f64().unwrap())
        .collect();
    assert!(
        elapsed.windows(2).all(|w| w[0] < w[1]),
        "elapsed grows: {elapsed:?}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.lines().any(|l| l.starts_with("goals: router RSS")),
        "the summary line is printed:\n{stdout}"
    );
}

#[test]
fn soak_with_retention_runs_and_its_last_row_covers_the_remainder() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("soak.json");
    // The router role parses the --retention the driver hands it, or the cluster never
    // starts. 1,500 pipelines in rows of 1,000: the last row covers the 500 left.
    let out = bench(
        &[
            "--scenario",
            "soak",
            "--pipelines",
            "1500",
            "--every",
            "1000",
            "--retention",
            "1h",
        ],
        Some(&json),
    );
    assert_ok(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("retention: 1h"), "{stdout}");
    let rows = rows(&json);
    let counts: Vec<u64> = rows
        .iter()
        .map(|r| r["pipelines"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, [1000, 1500]);
    for row in &rows {
        assert_row_fields(row);
    }
}

#[test]
fn a_retention_that_is_not_a_duration_is_refused_naming_the_flag() {
    let out = bench(
        &[
            "--scenario",
            "soak",
            "--pipelines",
            "10",
            "--retention",
            "soon",
        ],
        None,
    );
    assert!(!out.status.success(), "bench accepted --retention soon");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--retention"), "{stderr}");
}
