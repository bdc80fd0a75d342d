//! Following a pipeline until it ends: a progress bar, a live table or a line per
//! job change, then the exit code its outcome means.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use pypelinin_client::render::{self, Progress};
use pypelinin_client::{render_table, ClientError, PipelineManager};
use pypelinin_common::now_ms;
use pypelinin_common::protocol::PipelineId;
use pypelinin_common::status::{JobState, PipelineState, PipelineStatus};

use crate::show::print_status;

/// Waits for a pipeline (with a progress bar when stdout is a terminal and the output
/// is a table), prints its status, and turns its state into the exit code.
pub fn wait_and_report(
    pm: &mut PipelineManager,
    id: PipelineId,
    json: bool,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    if !json && std::io::stdout().is_terminal() {
        let followed = follow(pm, id, Some(Instant::now() + timeout), View::Bar)?;
        return finish(followed, json);
    }
    let outcome = match pm.wait(id, timeout) {
        Ok(o) => o,
        Err(e @ ClientError::Timeout { .. }) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(3));
        }
        Err(e) => return Err(e.into()),
    };
    finish(Followed::Final(outcome.status().clone()), json)
}

/// `watch`: follows a pipeline until it ends or `deadline` passes (a live table on a
/// terminal, a line per job change on stderr otherwise), then prints its status.
pub fn watch(
    pm: &mut PipelineManager,
    id: PipelineId,
    deadline: Option<Instant>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let view = if !json && std::io::stdout().is_terminal() {
        View::Screen
    } else {
        View::Lines
    };
    finish(follow(pm, id, deadline, view)?, json)
}

/// How [`follow`] shows a pipeline while it runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum View {
    /// One progress line on stdout, redrawn in place.
    Bar,
    /// The progress line and the job table on stdout, redrawn in place.
    Screen,
    /// A line on stderr for each job that changes state.
    Lines,
}

/// How following a pipeline ended.
enum Followed {
    Final(PipelineStatus),
    TimedOut(PipelineStatus),
}

/// How often a followed pipeline's status is read.
const POLL: Duration = Duration::from_millis(200);
/// Width of the progress bar, in cells.
const BAR_WIDTH: usize = 30;

/// Polls a pipeline's status until it is final or `deadline` passes, showing it as
/// `view` says.
fn follow(
    pm: &mut PipelineManager,
    id: PipelineId,
    deadline: Option<Instant>,
    view: View,
) -> anyhow::Result<Followed> {
    let mut out = std::io::stdout().lock();
    let mut drawn_lines = 0usize;
    let mut last: Option<PipelineStatus> = None;
    loop {
        let s = pm.status(id)?;
        match view {
            View::Lines => {
                for (name, job) in &s.jobs {
                    let before = last
                        .as_ref()
                        .and_then(|l| l.jobs.get(name))
                        .map(|j| (j.state, j.attempts));
                    if before != Some((job.state, job.attempts)) {
                        let mut line = format!(
                            "{} {name}: {} (attempt {})",
                            render::utc_time(now_ms()),
                            job.state.as_str(),
                            job.attempts
                        );
                        if job.state == JobState::Failed {
                            if let Some(e) = &job.error {
                                line.push_str(": ");
                                line.push_str(e);
                            }
                        }
                        eprintln!("{line}");
                    }
                }
            }
            View::Bar => {
                let line = render::progress_line(&s, BAR_WIDTH, now_ms());
                let _ = write!(out, "\r\x1b[2K{line}");
                let _ = out.flush();
            }
            View::Screen => {
                let mut frame = format!(
                    "{}\n{}",
                    render::progress_line(&s, BAR_WIDTH, now_ms()),
                    render_table(&s)
                );
                if !s.state.is_final() {
                    frame.push_str("(watching: Ctrl-C to stop)\n");
                }
                if drawn_lines > 0 {
                    let _ = write!(out, "\x1b[{drawn_lines}A\r\x1b[J");
                }
                let _ = write!(out, "{frame}");
                let _ = out.flush();
                drawn_lines = frame.matches('\n').count();
            }
        }
        let done = s.state.is_final();
        let late = deadline.is_some_and(|d| Instant::now() >= d);
        if done || late {
            match view {
                View::Bar => {
                    let _ = write!(out, "\r\x1b[2K");
                }
                View::Screen if drawn_lines > 0 => {
                    // The final table is printed once more by the caller.
                    let _ = write!(out, "\x1b[{drawn_lines}A\r\x1b[J");
                }
                _ => {}
            }
            let _ = out.flush();
            return Ok(if done {
                Followed::Final(s)
            } else {
                Followed::TimedOut(s)
            });
        }
        last = Some(s);
        std::thread::sleep(POLL);
    }
}

/// Prints how a followed pipeline ended and picks the exit code.
fn finish(followed: Followed, json: bool) -> anyhow::Result<ExitCode> {
    match followed {
        Followed::Final(s) => {
            print_status(&s, json)?;
            Ok(if s.state == PipelineState::Succeeded {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Followed::TimedOut(s) => {
            let p = Progress::of(&s);
            eprintln!(
                "error: pipeline {} is still {} ({}/{} jobs done) after the timeout",
                s.id,
                s.state.as_str(),
                p.done,
                p.total
            );
            Ok(ExitCode::from(3))
        }
    }
}
