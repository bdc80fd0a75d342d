//! What the read commands print: a pipeline's status, a job's attempts, outputs and
//! the cluster's metrics, as tables or (`--json`) JSON; and pipeline files read with
//! the line of the first problem.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context};
use pypelinin_client::{render, render_table, PipelineManager};
use pypelinin_common::now_ms;
use pypelinin_common::protocol::PipelineId;
use pypelinin_common::status::{JobState, PipelineState, PipelineStatus};
use pypelinin_common::{Pipeline, PipelineError, PipelineSpec};

/// Reads and checks a pipeline file; a problem is reported with the file, the line
/// (when it can be found) and what is wrong.
pub fn read_pipeline(file: &Path) -> anyhow::Result<PipelineSpec> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let spec = PipelineSpec::from_json(&text).with_context(|| format!("{}", file.display()))?;
    if let Err(e) = Pipeline::new(spec.clone()) {
        return Err(match line_of_problem(&text, &e) {
            Some(line) => anyhow::Error::new(e).context(format!("{}, line {line}", file.display())),
            None => anyhow::Error::new(e).context(format!("{}", file.display())),
        });
    }
    Ok(spec)
}

/// The line of the job a validation error is about: where its name is a key.
fn line_of_problem(text: &str, e: &PipelineError) -> Option<usize> {
    let job = match e {
        PipelineError::UnknownParent { job, .. } | PipelineError::BadName { job, .. } => job,
        PipelineError::Cycle { cycle } => cycle.first()?,
        _ => return None,
    };
    let key = serde_json::to_string(job).ok()?;
    let mut from = 0;
    while let Some(pos) = text[from..].find(&key) {
        let at = from + pos;
        let rest = text[at + key.len()..].trim_start();
        if rest.starts_with(':') {
            return Some(text[..at].matches('\n').count() + 1);
        }
        from = at + key.len();
    }
    None
}

/// `outputs ID`: job name → output as JSON, indented, or on one line with `--json`.
/// Outputs are JSON either way; a table could not show them without losing detail.
pub fn outputs(pm: &mut PipelineManager, id: PipelineId, json: bool) -> anyhow::Result<ExitCode> {
    let o = pm.outputs(id)?;
    let text = if json {
        serde_json::to_string(&o)?
    } else {
        serde_json::to_string_pretty(&o)?
    };
    println!("{text}");
    Ok(ExitCode::SUCCESS)
}

/// `metrics`: every metric as JSON, or the main ones as a table.
pub fn metrics(pm: &mut PipelineManager, json: bool) -> anyhow::Result<ExitCode> {
    let m = pm.metrics()?;
    if json {
        println!("{}", serde_json::to_string(&m)?);
        return Ok(ExitCode::SUCCESS);
    }
    let counts = |map: &std::collections::BTreeMap<String, u64>| {
        if map.is_empty() {
            return "none".to_string();
        }
        map.iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let recent: u64 = m
        .throughput
        .iter()
        .filter(|(s, _)| s + 60 >= now_ms() / 1000)
        .map(|(_, n)| u64::from(*n))
        .sum();
    let rows = vec![
        vec!["pipelines".to_string(), counts(&m.pipelines)],
        vec!["jobs".to_string(), counts(&m.jobs)],
        vec!["queue depth".to_string(), m.queue_depth.to_string()],
        vec!["brokers alive".to_string(), m.brokers.to_string()],
        vec!["pipeliners alive".to_string(), m.pipeliners.to_string()],
        vec![
            "attempts finished".to_string(),
            format!("{} ({recent} in the last minute)", m.attempts_finished),
        ],
    ];
    print!("{}", render::table(&rows));
    Ok(ExitCode::SUCCESS)
}

/// `logs ID JOB`: every attempt of the job with its broker, times and error, then
/// the output the router keeps for it.
pub fn logs(
    pm: &mut PipelineManager,
    id: PipelineId,
    name: &str,
    json: bool,
    attempt: Option<u32>,
    follow: bool,
) -> anyhow::Result<ExitCode> {
    let status = pm.status(id)?;
    let Some(job) = status.jobs.get(name) else {
        let names: Vec<&str> = status.jobs.keys().map(String::as_str).collect();
        bail!(
            "pipeline {id} has no job {name:?}; its jobs: {}",
            names.join(", ")
        );
    };
    let output = if job.state == JobState::Succeeded {
        pm.outputs(id)?.remove(name)
    } else {
        None
    };
    if json && follow {
        crate::logs::print(pm, id, name, attempt, true, true)?;
        return Ok(ExitCode::SUCCESS);
    }
    if json {
        let attempts: Vec<serde_json::Value> = job
            .history
            .iter()
            .map(|a| {
                let mut v = serde_json::to_value(a).unwrap_or_default();
                v["duration_ms"] = a.finished_ms.map(|f| f.saturating_sub(a.started_ms)).into();
                v
            })
            .collect();
        let v = serde_json::json!({
            "pipeline": id,
            "job": name,
            "worker": job.worker,
            "state": job.state,
            "error": job.error,
            "waiting_for": job.waiting_for,
            "attempts": attempts,
            "output": output,
            "log": crate::logs::page_json(&pm.logs(id, name, attempt, 0)?),
        });
        println!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "pipeline {id}  job {name} ({})  {}  {} attempt{}",
        job.worker,
        job.state.as_str(),
        job.attempts,
        if job.attempts == 1 { "" } else { "s" }
    );
    if let Some(w) = &job.waiting_for {
        println!("waiting for {w}");
    }
    for a in &job.history {
        let took = a
            .finished_ms
            .map(|f| render::duration(f.saturating_sub(a.started_ms)))
            .unwrap_or_else(|| "running".into());
        println!(
            "attempt {}  broker {}  started {} UTC  {}",
            a.number,
            a.broker,
            render::utc_time(a.started_ms),
            took
        );
        match (&a.error, a.finished_ms) {
            (Some(e), _) => println!("  error: {e}"),
            (None, Some(_)) => println!("  ok"),
            (None, None) => {}
        }
    }
    if job.history.is_empty() {
        match &job.error {
            Some(e) => println!("never ran: {e}"),
            None if job.waiting_for.is_some() => {}
            None => println!("not run yet"),
        }
    }
    crate::logs::print(pm, id, name, attempt, follow, false)?;
    if let Some(o) = output {
        println!("output:\n{}", serde_json::to_string_pretty(&o)?);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn print_status(s: &PipelineStatus, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(s)?);
    } else {
        print!("{}", render_table(s));
        for (job, j) in &s.jobs {
            match (&j.waiting_for, j.state) {
                (Some(w), JobState::Waiting) => println!("waiting: {job}: for {w}"),
                (Some(w), _) => println!("queued: {job}: {w}"),
                (None, _) => {}
            }
        }
        if s.state == PipelineState::Failed {
            for (job, err) in s.failed_jobs() {
                eprintln!("failed: {job}: {err}");
            }
        }
    }
    Ok(())
}
