//! The scale-out scenario: what adding brokers buys. One pipeline of independent
//! `Sleep` jobs of `ms` milliseconds runs on clusters of 1, 2, 4, … brokers of
//! [`SCALE_SLOTS`] slots each; each cluster's rate is set against the ideal, every slot
//! busy all the time: brokers × slots × 1000 / ms jobs per second. The router's CPU per
//! job is reported beside it: once the brokers outrun the router, that is the ceiling.
//! The last column is the rate while the jobs ran, from the first one's start to the
//! last one's end: without the submission of the pipeline, its thousands of job records
//! and the reply with all their statuses, which are fixed costs of a pipeline this large
//! and not of adding brokers.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use pypelinin_common::PipelineSpec;
use serde_json::{json, Value};

use crate::cluster::{BrokerKind, Cluster};
use crate::{fmt, stats, Args};

/// Slots per broker, as the measurements had.
pub const SCALE_SLOTS: usize = 4;
/// Each run lasts about this long at the ideal rate.
const IDEAL_SECONDS: f64 = 2.5;
/// Bounds on the jobs of one run: enough to time, few enough for one status frame.
const MIN_JOBS: usize = 400;
const MAX_JOBS: usize = 20_000;

/// One pipeline of `n` independent jobs sleeping `ms` each.
fn sleeps(n: usize, ms: u64) -> PipelineSpec {
    let mut p = PipelineSpec::default().with_data("ms", json!(ms));
    for k in 0..n {
        p = p.job(&format!("t{k:05}"), "Sleep", &[]);
    }
    p
}

/// Runs every broker count against every job length, `args.runs` times each, and
/// prints (and with `--json`, writes) a row per pair.
pub fn drive(args: &Args) -> anyhow::Result<()> {
    let started = Instant::now();
    println!(
        "pypelinin bench scale: {} runs each, {SCALE_SLOTS} slots per broker, {:?} isolation",
        args.runs, args.isolation
    );
    let mut rows: Vec<Value> = Vec::new();
    println!(
        "\n{:>7} {:>6} {:>6} {:>10} {:>10} {:>9} {:>14} {:>14} {:>14}",
        "brokers",
        "job_ms",
        "jobs",
        "ideal/s",
        "jobs/s",
        "of ideal",
        "router µs/job",
        "running: ideal",
        "µs/job, mean"
    );
    for &ms in &args.job_ms {
        ensure!(ms > 0, "--job-ms must be at least 1");
        for &brokers in &args.brokers {
            ensure!(brokers > 0, "--brokers must be at least 1");
            let c = Cluster::start_with(args, BrokerKind::Rust, brokers, SCALE_SLOTS)
                .with_context(|| format!("{brokers} brokers"))?;
            let ideal = (brokers * SCALE_SLOTS) as f64 * 1000.0 / ms as f64;
            let n = ((ideal * IDEAL_SECONDS) as usize).clamp(MIN_JOBS, MAX_JOBS);
            let mut pm = c.client()?;
            // Warm-up: every slot once, and each broker's view of job lengths.
            let id = pm.start(&sleeps(brokers * SCALE_SLOTS * 4, ms))?;
            ensure!(
                pm.wait(id, Duration::from_secs(120))?.is_success(),
                "warm-up failed"
            );
            let (mut rates, mut router_us, mut spans) = (Vec::new(), Vec::new(), Vec::new());
            let (mut cpu_all, mut jobs_all) = (0.0, 0usize);
            for _ in 0..args.runs {
                let spec = sleeps(n, ms);
                let cpu0 = c.cpu_seconds();
                let t0 = Instant::now();
                let id = pm.start(&spec)?;
                let outcome = pm.wait(id, Duration::from_secs(600))?;
                let wall = t0.elapsed().as_secs_f64();
                ensure!(outcome.is_success(), "a scale run did not succeed");
                let cpu1 = c.cpu_seconds();
                rates.push(n as f64 / wall);
                // The brokers' part alone: from the first job's start to the last one's
                // end, without the submission and the reply of a pipeline this large.
                let jobs = outcome.status().jobs.values();
                let first = jobs.clone().filter_map(|j| j.started_ms).min();
                let last = jobs.filter_map(|j| j.finished_ms).max();
                if let (Some(a), Some(b)) = (first, last) {
                    spans.push(n as f64 * 1000.0 / (b.saturating_sub(a).max(1)) as f64);
                }
                router_us.push((cpu1[0] - cpu0[0]) * 1e6 / n as f64);
                cpu_all += cpu1[0] - cpu0[0];
                jobs_all += n;
            }
            // The median run leaves out work the router defers past a run: a checkpoint
            // writes the records of many runs at once, in whichever run it falls. The
            // mean over every run counts it in its share.
            let us_all = cpu_all * 1e6 / jobs_all.max(1) as f64;
            let (rmin, rate, rmax) = stats(&mut rates);
            let (_, us, _) = stats(&mut router_us);
            let pct = rate / ideal * 100.0;
            let (_, in_span, _) = if spans.is_empty() {
                (0.0, 0.0, 0.0)
            } else {
                stats(&mut spans)
            };
            let span_pct = in_span / ideal * 100.0;
            println!(
                "{brokers:>7} {ms:>6} {n:>6} {:>10} {:>10} {:>8.1}% {:>14} {:>13.1}% {:>14}",
                fmt(ideal),
                fmt(rate),
                pct,
                fmt(us),
                span_pct,
                fmt(us_all)
            );
            rows.push(json!({
                "brokers": brokers,
                "slots_per_broker": SCALE_SLOTS,
                "job_ms": ms,
                "jobs": n,
                "ideal_jobs_per_s": ideal,
                "jobs_per_s": {"min": rmin, "median": rate, "max": rmax},
                "percent_of_ideal": pct,
                "router_us_per_job": us,
                "router_us_per_job_mean": us_all,
                "running_jobs_per_s": in_span,
                "running_percent_of_ideal": span_pct,
            }));
        }
    }
    println!("total time: {:.1} s", started.elapsed().as_secs_f64());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&Value::Array(rows))?)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
