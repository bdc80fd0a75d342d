//! The soak scenario (issue 14): does one router stay flat over a long run? `--pipelines`
//! three-job chains of `Noop` (a → b → c) go through one router, pipeliner and broker;
//! every `--every` pipelines finished, a row tells the router's current memory, the
//! interval's jobs per second and the bytes under the router's `--db` directory. The
//! goals (memory at the end within twice the first row's, the last interval's rate
//! within 15 % of the first's, disk flat with `--retention`) are reported, never
//! asserted: this is a measurement.
//!
//! The driver keeps a bounded window in flight, so the router sees a steady load and
//! the driver's own memory does not grow with the run: batches of [`BATCH`] pipelines are
//! submitted as S1 submits (`start_async` each, one `confirm`), at most [`WINDOW`] of
//! them at once, and the oldest batch's results are awaited in one request before the
//! next batch goes in. Only the ids of the batches in flight are held. Rows are timed
//! from the moment the window is first full, and the window is kept full until the last
//! row is taken, so that every interval is measured under the same load: up to
//! `WINDOW - 1` batches beyond `--pipelines` run, and are awaited after the last row,
//! outside every figure.

use std::collections::VecDeque;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use pypelinin_client::ClientError;
use pypelinin_common::protocol::{PipelineId, ProtocolError};
use pypelinin_common::transport::TransportError;
use pypelinin_common::{PipelineSpec, PipelineState};
use serde_json::{json, Value};

use crate::cluster::{BrokerKind, Cluster};
use crate::Args;

/// Jobs in each soak pipeline.
const JOBS_PER_PIPELINE: usize = 3;
/// Pipelines submitted together: one `confirm` and one `results` request each.
const BATCH: usize = 1_000;
/// Batches in flight at once: enough that the cluster never waits for the driver
/// (a batch is submitted while the others run), few enough to hold a steady load.
const WINDOW: usize = 4;
/// How long the oldest batch may take to finish before the run is called stuck.
const BATCH_TIMEOUT: Duration = Duration::from_secs(600);

/// The soak pipeline: three `Noop` jobs in a chain, a → b → c.
fn three_noops() -> PipelineSpec {
    PipelineSpec::default()
        .job("a", "Noop", &[])
        .job("b", "Noop", &["a"])
        .job("c", "Noop", &["b"])
}

/// Bytes of every file under `dir`, recursively. Files that vanish while it walks (the
/// store removes segments and temporary files) count as nothing.
fn disk_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => disk_bytes(&e.path()),
            Ok(m) if m.is_file() => m.len(),
            _ => 0,
        })
        .sum()
}

/// The size of the batch after `submitted` pipelines: at most `batch`, and never across
/// a row's boundary (a multiple of `every`, or `total`), so that the rows, taken as whole
/// batches finish, fall on exact counts. Past `total`, whole batches: the tail that keeps
/// the load steady through the last interval.
fn next_batch(submitted: usize, total: usize, every: usize, batch: usize) -> usize {
    if submitted < total {
        let boundary = ((submitted / every + 1) * every).min(total);
        batch.min(boundary - submitted)
    } else {
        batch
    }
}

/// With `--retention`, a pipeline the router no longer knows finished and was deleted
/// before the driver asked for it (debug builds, a retention of seconds): said as such,
/// since a bare "unknown pipeline" would read as lost work.
fn deleted_early(e: ClientError, retention: Option<Duration>) -> anyhow::Error {
    match (&e, retention) {
        (
            ClientError::Transport(TransportError::Refused(ProtocolError::UnknownPipeline(id))),
            Some(d),
        ) => anyhow::anyhow!(
            "pipeline {id} was deleted by the router's retention before the driver asked for \
             its result: --retention {} is shorter than a pipeline waits to be awaited here \
             (about the time the window of pipelines in flight takes); give a longer one",
            humantime::format_duration(d)
        ),
        _ => e.into(),
    }
}

const MIB: f64 = 1024.0 * 1024.0;

/// Runs the soak and prints a row every `--every` pipelines finished (and one for a
/// last, shorter interval if `--pipelines` is not a multiple of it), then the goals'
/// figures; with `--json`, the rows so far are rewritten after each one, so that a run
/// stopped early still leaves its figures.
pub fn drive(args: &Args) -> anyhow::Result<()> {
    let (total, every) = (args.pipelines, args.every);
    ensure!(total > 0, "--pipelines must be at least 1");
    ensure!(every > 0, "--every must be at least 1");
    // Batches of BATCH, or of a row's pipelines if rows are smaller; the batches past
    // `total` are no larger than the run, so that a short run stays short.
    let batch = BATCH.min(every).min(total);
    let c = Cluster::start(args, BrokerKind::Rust).context("soak cluster")?;
    let db = c.router_db();
    println!(
        "pypelinin bench soak: {total} pipelines of {JOBS_PER_PIPELINE} Noop jobs (a → b → c), \
         a row every {every}, up to {} in flight, {:?} isolation, retention: {}",
        batch * WINDOW,
        args.isolation,
        match args.retention {
            Some(d) => humantime::format_duration(d).to_string(),
            None => "none (everything kept)".into(),
        }
    );
    println!(
        "\n{:>10} {:>9} {:>9} {:>10} {:>9} {:>10} {:>10} {:>12}",
        "pipelines",
        "rss MiB",
        "peak MiB",
        "jobs/s",
        "disk MiB",
        "elapsed s",
        "interval s",
        "router cpu s"
    );
    let spec = three_noops();
    let mut pm = c.client()?;
    let mut in_flight: VecDeque<Vec<PipelineId>> = VecDeque::with_capacity(WINDOW);
    let (mut submitted, mut finished, mut row_finished) = (0usize, 0usize, 0usize);
    let mut rows: Vec<Value> = Vec::new();
    let run_started = Instant::now();
    // Rows are timed from the moment the window is first full: the first interval then
    // submits about as many pipelines as it sees finish, as every later one does, and
    // is not charged with filling the window.
    let (mut clock, mut row_started): (Option<Instant>, Instant) = (None, run_started);
    while finished < total {
        // The window stays full until the last row is taken, past `total` if need be,
        // so that the last interval runs under the same load as the others.
        while in_flight.len() < WINDOW {
            let size = next_batch(submitted, total, every, batch);
            let ids = (0..size)
                .map(|_| pm.start_async(&spec))
                .collect::<Result<Vec<_>, _>>()?;
            pm.confirm()?;
            submitted += size;
            in_flight.push_back(ids);
        }
        let started = *clock.get_or_insert_with(|| {
            if !c.reset_router_peak_rss() {
                eprintln!(
                    "warning: the kernel refused to reset the router's peak RSS: \
                     `peak MiB` is its peak since it started"
                );
            }
            row_started = Instant::now();
            row_started
        });
        let ids = in_flight.pop_front().context("a batch in flight")?;
        let results = pm
            .results(&ids, BATCH_TIMEOUT)
            .map_err(|e| deleted_early(e, args.retention))
            .with_context(|| {
                format!(
                    "waiting for pipelines {}..{}",
                    finished,
                    finished + ids.len()
                )
            })?;
        for r in &results {
            ensure!(
                r.state == PipelineState::Succeeded,
                "pipeline {} {:?}: {:?}",
                r.id,
                r.state,
                r.failed
            );
        }
        finished += ids.len();
        if finished % every != 0 && finished < total {
            continue;
        }
        let now = Instant::now();
        let interval = now.duration_since(row_started).as_secs_f64();
        let jobs = (finished - row_finished) * JOBS_PER_PIPELINE;
        let row = json!({
            "pipelines": finished,
            "rss_mib": c.router_rss_kb() as f64 / 1024.0,
            "rss_peak_mib": c.router_peak_rss_kb() as f64 / 1024.0,
            "jobs_per_s": jobs as f64 / interval,
            "disk_mib": disk_bytes(&db) as f64 / MIB,
            "elapsed_s": now.duration_since(started).as_secs_f64(),
            "interval_s": interval,
            "router_cpu_s": c.router_cpu_seconds(),
        });
        let f = |k: &str| row[k].as_f64().unwrap_or(0.0);
        println!(
            "{finished:>10} {:>9.1} {:>9.1} {:>10.0} {:>9.1} {:>10.1} {:>10.1} {:>12.2}",
            f("rss_mib"),
            f("rss_peak_mib"),
            f("jobs_per_s"),
            f("disk_mib"),
            f("elapsed_s"),
            f("interval_s"),
            f("router_cpu_s"),
        );
        rows.push(row);
        if let Some(path) = &args.json {
            std::fs::write(path, serde_json::to_string_pretty(&rows)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        c.reset_router_peak_rss();
        (row_started, row_finished) = (now, finished);
    }
    let tail: usize = in_flight.iter().map(Vec::len).sum();
    for ids in in_flight {
        pm.results(&ids, BATCH_TIMEOUT)
            .map_err(|e| deleted_early(e, args.retention))
            .context("waiting for the pipelines past the last row")?;
    }
    let (first, last) = (&rows[0], &rows[rows.len() - 1]);
    let ratio = |k: &str| last[k].as_f64().unwrap_or(0.0) / first[k].as_f64().unwrap_or(0.0);
    println!(
        "goals: router RSS last/first row {:.2}, interval peaks {:.2} (goal ≤ 2); jobs/s last/first interval {:.2} \
         (goal 0.85–1.15); disk first → last row {:.1} → {:.1} MiB (goal with --retention: flat)",
        ratio("rss_mib"),
        ratio("rss_peak_mib"),
        ratio("jobs_per_s"),
        first["disk_mib"].as_f64().unwrap_or(0.0),
        last["disk_mib"].as_f64().unwrap_or(0.0),
    );
    println!(
        "total time: {:.1} s ({tail} more pipelines kept the load steady through the last \
         interval and were awaited after it, outside the rows)",
        run_started.elapsed().as_secs_f64()
    );
    if let Some(path) = &args.json {
        println!("wrote {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The batches' running totals up to `total`.
    fn cuts(total: usize, every: usize, batch: usize) -> Vec<usize> {
        let mut at = 0;
        let mut out = Vec::new();
        while at < total {
            at += next_batch(at, total, every, batch);
            out.push(at);
        }
        out
    }

    #[test]
    fn batches_end_on_every_row_boundary_and_on_the_total() {
        let got = cuts(3_000, 1_000, 1_000);
        assert_eq!(got, [1_000, 2_000, 3_000]);
        // Rows smaller than a batch: one batch per row.
        assert_eq!(cuts(1_000, 300, 1_000), [300, 600, 900, 1_000]);
        // Rows that are not a multiple of the batch: cut at each row.
        let got = cuts(5_000, 2_500, 1_000);
        assert_eq!(got, [1_000, 2_000, 2_500, 3_500, 4_500, 5_000]);
        // A total that is not a multiple of the rows: the last batch stops at it.
        assert_eq!(cuts(1_500, 1_000, 1_000), [1_000, 1_500]);
        for (total, every) in [(100_000, 7_000), (12_345, 1_000), (999, 1)] {
            let got = cuts(total, every, 1_000);
            assert_eq!(got.last(), Some(&total));
            for row in (every..=total).step_by(every) {
                assert!(got.contains(&row), "{total}/{every}: no cut at {row}");
            }
        }
    }

    #[test]
    fn past_the_total_batches_are_whole() {
        assert_eq!(next_batch(3_000, 3_000, 1_000, 1_000), 1_000);
        assert_eq!(next_batch(4_000, 3_000, 1_000, 500), 500);
    }

    #[test]
    fn an_unknown_pipeline_under_retention_is_said_to_be_deleted_early() {
        let unknown = || {
            ClientError::Transport(TransportError::Refused(ProtocolError::UnknownPipeline(
                PipelineId::new(),
            )))
        };
        let said = deleted_early(unknown(), Some(Duration::from_secs(2))).to_string();
        assert!(said.contains("deleted by the router's retention"), "{said}");
        assert!(said.contains("--retention 2s"), "{said}");
        // Without retention, nothing is deleted: unknown is unknown.
        let said = deleted_early(unknown(), None).to_string();
        assert!(said.starts_with("unknown pipeline"), "{said}");
        // Other errors pass through as they are.
        let said = deleted_early(ClientError::Closed, Some(Duration::from_secs(2))).to_string();
        assert_eq!(said, ClientError::Closed.to_string());
    }

    #[test]
    fn disk_bytes_counts_every_file_below_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(disk_bytes(dir.path()), 0);
        std::fs::write(dir.path().join("conf"), [0u8; 100]).unwrap();
        let deep = dir.path().join("blobs").join("a");
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::write(deep.join("1"), [0u8; 4096]).unwrap();
        std::fs::write(dir.path().join("blobs").join("2"), [0u8; 7]).unwrap();
        assert_eq!(disk_bytes(dir.path()), 100 + 4096 + 7);
        assert_eq!(disk_bytes(&dir.path().join("absent")), 0);
    }
}
