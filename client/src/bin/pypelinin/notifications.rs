//! `notifications`: the latest notifications the router made and what became of
//! their delivery, as a table or (`--json`) one JSON array.

use std::process::ExitCode;

use pypelinin_client::{render, PipelineManager};

/// Prints the latest `limit` notifications, newest first.
pub fn run(pm: &mut PipelineManager, limit: u32, json: bool) -> anyhow::Result<ExitCode> {
    let list = pm.notifications(limit)?;
    if json {
        println!("{}", serde_json::to_string(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    if list.is_empty() {
        println!("no notifications");
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows = vec![[
        "TIME",
        "EVENT",
        "PIPELINE",
        "JOB",
        "CHANNEL",
        "STATUS",
        "TRIES",
        "LAST ERROR",
    ]
    .map(String::from)
    .to_vec()];
    for n in &list {
        rows.push(vec![
            render::utc_time(n.created_ms),
            n.event.to_string(),
            n.pipeline.to_string(),
            n.job.clone().unwrap_or_else(|| "-".into()),
            n.channel.clone(),
            n.delivery.as_str().to_string(),
            n.attempts.to_string(),
            n.last_error.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    print!("{}", render::table(&rows));
    Ok(ExitCode::SUCCESS)
}
