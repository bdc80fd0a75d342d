//! Text renderings shared by the `pypelinin` command line and the web dashboard:
//! progress counts, tables of pipelines and brokers, DOT diagrams, times and sizes.
//!
//! They live here, beside the types they render, so that the dashboard and the client
//! show the same numbers the same way without one depending on the other.

use std::fmt::Write as _;

use crate::protocol::{BrokerStatus, PipelineSummary};
use crate::status::{JobState, PipelineStatus};
use crate::{Pipeline, PipelineError, PipelineSpec};
use serde::Serialize;

/// A pipeline's jobs counted by state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Progress {
    /// Jobs in all.
    pub total: u32,
    /// Jobs in a final state (succeeded, failed, skipped or cancelled).
    pub done: u32,
    /// Waiting for parents, a retry delay or a slot, or `waiting` for a condition.
    pub queued: u32,
    /// Running on a broker.
    pub running: u32,
    /// Succeeded, or not run because their target existed (`skipped_done`).
    pub succeeded: u32,
    /// Failed.
    pub failed: u32,
    /// Skipped because an ancestor failed.
    pub skipped: u32,
    /// Cancelled.
    pub cancelled: u32,
}

impl Progress {
    /// Counts the jobs of `status`.
    pub fn of(status: &PipelineStatus) -> Self {
        let mut p = Progress::default();
        for job in status.jobs.values() {
            p.total += 1;
            if job.state.is_final() {
                p.done += 1;
            }
            match job.state {
                JobState::Queued | JobState::Waiting => p.queued += 1,
                JobState::Running => p.running += 1,
                JobState::Succeeded | JobState::SkippedDone => p.succeeded += 1,
                JobState::Failed => p.failed += 1,
                JobState::Skipped => p.skipped += 1,
                JobState::Cancelled => p.cancelled += 1,
            }
        }
        p
    }
}

/// One line for a terminal: the pipeline's state, a bar of `width` cells, jobs
/// done / total, how many run and failed, and the time since submission.
///
/// `running   [███████░░░░░░░] 7/14 jobs · 2 running · 1 failed · 3.2 s`
pub fn progress_line(status: &PipelineStatus, width: usize, now_ms: u64) -> String {
    let p = Progress::of(status);
    let filled = if p.total == 0 {
        0
    } else {
        (p.done as usize * width) / p.total as usize
    };
    let mut line = String::with_capacity(width * 3 + 64);
    let _ = write!(line, "{:<9} [", status.state.as_str());
    for k in 0..width {
        line.push(if k < filled { '█' } else { '░' });
    }
    let _ = write!(line, "] {}/{} jobs", p.done, p.total);
    if p.running > 0 {
        let _ = write!(line, " · {} running", p.running);
    }
    if p.failed > 0 {
        let _ = write!(line, " · {} failed", p.failed);
    }
    let end = status.finished_ms.unwrap_or(now_ms);
    let _ = write!(
        line,
        " · {}",
        duration(end.saturating_sub(status.submitted_ms))
    );
    line
}

/// The pipeline list: id, state, jobs done/total, submission time (UTC), duration.
///
/// The first three columns keep the layout of earlier versions, so that scripts
/// cutting them out keep working.
///
/// When a listed pipeline was made by a schedule, two columns follow: the schedule and
/// the run's logical date (UTC).
pub fn pipeline_list(list: &[PipelineSummary], now_ms: u64) -> String {
    let runs = list.iter().any(|p| p.origin.is_some());
    let mut out = String::new();
    let _ = write!(
        out,
        "{:<36}  {:<9}  {:>9}  {:<19}  DURATION",
        "PIPELINE", "STATE", "DONE", "SUBMITTED (UTC)"
    );
    if runs {
        let _ = write!(out, "  {:<16}  LOGICAL DATE (UTC)", "SCHEDULE");
    }
    out.push('\n');
    for p in list {
        let end = p.finished_ms.unwrap_or(now_ms);
        let _ = write!(
            out,
            "{:<36}  {:<9}  {:>4}/{:<4}  {:<19}  {:<8}",
            p.id,
            p.state.as_str(),
            p.done,
            p.jobs,
            utc_time(p.submitted_ms),
            duration(end.saturating_sub(p.submitted_ms))
        );
        if let Some(o) = &p.origin {
            let _ = write!(out, "  {:<16}  {}", o.schedule, utc_time(o.logical_date));
        }
        let line_end = out.trim_end_matches(' ').len();
        out.truncate(line_end);
        out.push('\n');
    }
    out
}

/// The broker table: name, host, busy/total slots, last heartbeat, CPU, memory,
/// load, whether it drains, and the workers it offers.
pub fn broker_table(brokers: &[BrokerStatus]) -> String {
    let mut rows: Vec<Vec<String>> = vec![[
        "BROKER",
        "HOST",
        "SLOTS",
        "HEARTBEAT",
        "CPU",
        "MEMORY",
        "LOAD",
        "STATE",
        "WORKERS",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()];
    for b in brokers {
        let (cpu, memory, load) = match &b.monitor {
            Some(m) => (
                format!("{:.0}%", m.cpu_percent),
                format!(
                    "{} / {}",
                    bytes(m.memory_used_bytes),
                    bytes(m.memory_total_bytes)
                ),
                format!("{:.2}", m.load[0]),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        rows.push(vec![
            b.name.clone(),
            b.host.clone(),
            format!("{}/{}", b.busy, b.slots),
            format!("{} ago", duration(b.last_seen_ms_ago)),
            cpu,
            memory,
            load,
            if b.draining { "draining" } else { "serving" }.into(),
            b.workers.join(","),
        ]);
    }
    let mut out = table(&rows);
    if brokers.is_empty() {
        out.push_str("(no broker has joined)\n");
    }
    out
}

/// Each broker's slots, one line each: the job a busy slot runs (worker, pipeline/job,
/// attempt, for how long) or `idle`, then the jobs it holds queued beyond its slots. The
/// router assigns jobs in order, so the oldest `slots` of them are the ones running.
pub fn broker_slots(brokers: &[BrokerStatus], now_ms: u64) -> String {
    let mut out = String::new();
    for b in brokers {
        let running = b.assigned.len().min(b.slots as usize);
        let _ = writeln!(
            out,
            "{}: {running}/{} slots busy{}{}",
            b.name,
            b.slots,
            match b.assigned.len() - running {
                0 => String::new(),
                n => format!(", {n} queued at the broker"),
            },
            if b.draining { " (draining)" } else { "" }
        );
        for k in 0..b.slots.max(b.assigned.len() as u32) as usize {
            let label = if k < b.slots as usize {
                format!("slot {}", k + 1)
            } else {
                "queued".to_string()
            };
            match b.assigned.get(k) {
                Some(j) => {
                    let _ = writeln!(
                        out,
                        "  {label:<8} {:<16} {}/{}  attempt {}  {} {}",
                        j.worker,
                        j.job.pipeline,
                        j.name,
                        j.job.attempt,
                        if k < b.slots as usize {
                            "for"
                        } else {
                            "waiting"
                        },
                        duration(now_ms.saturating_sub(j.started_ms))
                    );
                }
                None => {
                    let _ = writeln!(out, "  {label:<8} idle");
                }
            }
        }
    }
    out
}

/// The pipeline as Graphviz DOT, each job coloured by its state in `status`.
pub fn dot(spec: &PipelineSpec, status: &PipelineStatus) -> Result<String, PipelineError> {
    let pipeline = Pipeline::new(spec.clone())?;
    let states: Vec<JobState> = pipeline
        .names()
        .iter()
        .map(|n| {
            status
                .jobs
                .get(n)
                .map(|j| j.state)
                .unwrap_or(JobState::Queued)
        })
        .collect();
    Ok(pipeline.to_dot(Some(&states)))
}

/// Every edge of `spec` as (parent, child), in job name order.
pub fn edges(spec: &PipelineSpec) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (name, job) in &spec.jobs {
        for parent in &job.after {
            let edge = (parent.clone(), name.clone());
            if !out.contains(&edge) {
                out.push(edge);
            }
        }
    }
    out
}

/// A duration for people: `850 ms`, `4.2 s`, `3m 07s`, `2h 05m`.
pub fn duration(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms} ms"),
        1_000..=59_999 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..=3_599_999 => format!("{}m {:02}s", ms / 60_000, (ms / 1000) % 60),
        _ => format!("{}h {:02}m", ms / 3_600_000, (ms / 60_000) % 60),
    }
}

/// A size for people, in binary units: `512 B`, `3.4 MiB`, `15.6 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Milliseconds since the epoch as `YYYY-MM-DD HH:MM:SS`, in UTC.
pub fn utc_time(ms: u64) -> String {
    let secs = ms / 1000;
    let (y, m, d) = civil_date((secs / 86_400) as i64);
    let t = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        t / 3600,
        (t / 60) % 60,
        t % 60
    )
}

/// A time as RFC 3339 in UTC with milliseconds, e.g. `2024-05-01T12:00:03.250Z`.
pub fn rfc3339_ms(ms: u64) -> String {
    let (date_time, millis) = (utc_time(ms), ms % 1000);
    format!("{}.{millis:03}Z", date_time.replacen(' ', "T", 1))
}

/// One captured log line as the CLI prints it: its time, its stream, its text (bytes
/// that are not UTF-8 shown as `�`; a trailing carriage return dropped).
pub fn log_line(line: &crate::protocol::LogLine) -> String {
    let text = String::from_utf8_lossy(&line.bytes);
    let mut out = format!(
        "{} {:<6} {}",
        rfc3339_ms(line.at_ms),
        line.stream.name(),
        text.strip_suffix('\r').unwrap_or(&text)
    );
    if line.dropped > 0 {
        out.insert_str(0, &format!("[{} dropped]\n", bytes(line.dropped)));
    }
    out
}

/// Year, month and day of a count of days since 1970-01-01 (proleptic Gregorian).
fn civil_date(days: i64) -> (i64, u32, u32) {
    // Count from 0000-03-01 so that the leap day ends each 4/100/400-year cycle.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153; // 0 = March
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Columns padded to their widest cell, two spaces apart; the last one unpadded.
pub fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; columns];
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (k, c) in r.iter().enumerate() {
            if k + 1 == r.len() {
                line.push_str(c);
            } else {
                let w = widths[k];
                let _ = write!(line, "{c:<w$}  ");
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_times_durations_and_sizes_read_well() {
        assert_eq!(utc_time(0), "1970-01-01 00:00:00");
        assert_eq!(utc_time(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(utc_time(1_763_900_000_123), "2025-11-23 12:13:20");
        assert_eq!(utc_time(4_107_542_399_000), "2100-02-28 23:59:59");
        assert_eq!(duration(850), "850 ms");
        assert_eq!(duration(4_250), "4.2 s");
        assert_eq!(duration(187_000), "3m 07s");
        assert_eq!(duration(7_500_000), "2h 05m");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
        assert_eq!(rfc3339_ms(1_763_900_000_123), "2025-11-23T12:13:20.123Z");
    }

    #[test]
    fn log_lines_read_whatever_bytes_they_hold() {
        use crate::protocol::{LogLine, LogStream};
        let line = LogLine {
            seq: 1,
            at_ms: 5,
            stream: LogStream::Stderr,
            bytes: b"bad \xff\xfe end\r".to_vec(),
            dropped: 0,
        };
        assert_eq!(
            log_line(&line),
            "1970-01-01T00:00:00.005Z stderr bad \u{fffd}\u{fffd} end"
        );
        let cut = LogLine {
            dropped: 2048,
            ..line
        };
        assert!(log_line(&cut).starts_with("[2.0 KiB dropped]\n"));
    }

    #[test]
    fn tables_align_and_leave_the_last_column_free() {
        let rows = vec![
            vec!["A".to_string(), "BB".into(), "C".into()],
            vec!["long".to_string(), "x".into(), "tail text".into()],
        ];
        assert_eq!(table(&rows), "A     BB  C\nlong  x   tail text\n");
    }

    #[test]
    fn dot_colours_jobs_and_keeps_edges() {
        let spec = PipelineSpec::default()
            .job("a", "Noop", &[])
            .job("b", "Noop", &["a"]);
        let status: PipelineStatus = serde_json::from_value(serde_json::json!({
            "id": "00000000-0000-0000-0000-000000000001", "state": "failed",
            "submitted_ms": 1, "finished_ms": 2,
            "jobs": {"a": {"worker": "Noop", "state": "failed", "attempts": 1, "error": "x"},
                     "b": {"worker": "Noop", "state": "skipped", "attempts": 0, "error": null}}
        }))
        .unwrap();
        let text = dot(&spec, &status).unwrap();
        assert!(text.contains("\"a\" -> \"b\""), "{text}");
        assert!(text.contains(JobState::Failed.color()), "{text}");
        assert!(text.contains(JobState::Skipped.color()), "{text}");
        assert_eq!(edges(&spec), vec![("a".to_string(), "b".to_string())]);
        let p = Progress::of(&status);
        assert_eq!((p.total, p.done, p.failed, p.skipped), (2, 2, 1, 1));
        assert_eq!(
            progress_line(&status, 4, 10),
            "failed    [████] 2/2 jobs · 1 failed · 1 ms"
        );
    }
}
