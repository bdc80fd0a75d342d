//! `pypelinin logs`: a job's captured log (its stdout, stderr and `tracing` lines),
//! printed once or followed while the job runs.

use std::time::Duration;

use pypelinin_client::{render, PipelineManager};
use pypelinin_common::protocol::{LogLine, LogPage, PipelineId};

/// Longest a follower waits for a wake-up before it asks again anyway (a broadcast
/// can be lost).
const FOLLOW_POLL: Duration = Duration::from_millis(500);

/// One line as JSON: number, time (ms and RFC 3339), stream, text (lossy UTF-8), and
/// the bytes the broker dropped before it.
pub fn line_json(l: &LogLine) -> serde_json::Value {
    serde_json::json!({
        "seq": l.seq,
        "at_ms": l.at_ms,
        "time": render::rfc3339_ms(l.at_ms),
        "stream": l.stream.name(),
        "text": String::from_utf8_lossy(&l.bytes),
        "dropped": l.dropped,
    })
}

/// A whole page as JSON (the `log` field of `logs --json`).
pub fn page_json(p: &LogPage) -> serde_json::Value {
    serde_json::json!({
        "attempt": p.attempt,
        "attempts": p.attempts,
        "finished": p.finished,
        "dropped_bytes": p.dropped_bytes,
        "lines": p.lines.iter().map(line_json).collect::<Vec<_>>(),
    })
}

/// Prints attempt `attempt` (default: the latest) of the job's log; with `follow`,
/// goes on printing lines as they come until that attempt has ended (without
/// `--attempt`: until the job is final, through its retries). `json`: one JSON
/// object per line.
pub fn print(
    pm: &mut PipelineManager,
    id: PipelineId,
    job: &str,
    attempt: Option<u32>,
    follow: bool,
    json: bool,
) -> anyhow::Result<()> {
    let wakeups = if follow {
        Some(pm.subscribe_logs()?)
    } else {
        None
    };
    let mut asked = attempt;
    let mut after = 0;
    let mut shown: Option<u32> = None;
    loop {
        let page = pm.logs(id, job, asked, after)?;
        if shown != Some(page.attempt) && !json {
            shown = Some(page.attempt);
            if page.attempt == 0 {
                if follow {
                    println!("--- no attempt yet ---");
                }
            } else {
                let mut head = format!("--- log of attempt {} ---", page.attempt);
                if page.dropped_bytes > 0 {
                    head.push_str(&format!(
                        " (older {} dropped)",
                        render::bytes(page.dropped_bytes)
                    ));
                }
                println!("{head}");
            }
        }
        for l in &page.lines {
            if json {
                println!("{}", line_json(l));
            } else {
                println!("{}", render::log_line(l));
            }
        }
        if let Some(last) = page.lines.last() {
            after = last.seq;
        }
        let Some(wakeups) = &wakeups else {
            return Ok(());
        };
        if page.finished {
            if attempt.is_none() && page.attempts > page.attempt {
                // A retry started (and may have ended): its log from its first line.
                asked = Some(page.attempt + 1);
                after = 0;
                continue;
            }
            if attempt.is_some() || page.job_final {
                return Ok(());
            }
        } else if asked.is_none() && page.attempt > 0 {
            asked = Some(page.attempt);
        }
        if page.lines.is_empty() {
            wakeups.wait(id, FOLLOW_POLL);
        }
    }
}
