//! `pypelinin backfill NAME --from T --to T …`: a schedule's pipeline over a range of
//! its ticks, as one tracked operation; and `backfill list|show|cancel` to follow it.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use pypelinin_client::{render, PipelineManager};
use pypelinin_common::protocol::ScheduleRequest;
use pypelinin_common::schedule::{
    format_in, parse_time, parse_zone, BackfillSpec, BackfillState, BackfillStatus, Reprocess, Tz,
};

/// `pypelinin backfill`: start one (NAME --from --to), or list, show or cancel them.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BackfillArgs {
    #[command(subcommand)]
    action: Option<BackfillAction>,
    /// The schedule whose pipeline runs.
    name: Option<String>,
    /// First tick (inclusive): RFC 3339, or a date meaning midnight in the
    /// schedule's zone.
    #[arg(long, value_name = "T")]
    from: Option<String>,
    /// Last tick (inclusive).
    #[arg(long, value_name = "T")]
    to: Option<String>,
    /// Dates that already have a run: none (leave them), failed (run again those
    /// whose latest run failed or was cancelled), all (run every date again).
    #[arg(long, default_value = "none", value_name = "MODE")]
    reprocess: Reprocess,
    /// Most of its runs going at once.
    #[arg(long, default_value_t = 1, value_name = "N")]
    max_active: u32,
    /// Newest date first.
    #[arg(long)]
    backwards: bool,
    /// Lists what would run, and creates nothing.
    #[arg(long)]
    dry_run: bool,
    /// Counts its runs against the schedule's own --max-running too.
    #[arg(long)]
    count_against_schedule: bool,
    /// With --reprocess all, still skip jobs whose target exists (by default they run).
    #[arg(long)]
    respect_targets: bool,
    /// Waits until every run ended (a progress bar on a terminal); exits 0 if all
    /// succeeded, 1 if not.
    #[arg(long)]
    wait: bool,
    /// With --wait: give up after this many seconds (exit 3).
    #[arg(long, default_value_t = 86_400)]
    timeout: u64,
    /// Prints JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum BackfillAction {
    /// Lists the backfills, newest first.
    List {
        /// Prints JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Shows a backfill: its dates, their runs and states.
    Show {
        /// The backfill's number.
        id: u64,
        /// Prints JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Cancels a backfill: no new runs; its running runs are cancelled.
    Cancel {
        /// The backfill's number.
        id: u64,
    },
    /// Follows a backfill until it ends, as `--wait` does.
    Watch {
        /// The backfill's number.
        id: u64,
        /// Give up after this many seconds (exit 3).
        #[arg(long, default_value_t = 86_400)]
        timeout: u64,
        /// Prints the final state as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs one `backfill` command.
pub fn run(pm: &mut PipelineManager, args: BackfillArgs) -> anyhow::Result<ExitCode> {
    match args.action {
        Some(BackfillAction::List { json }) => {
            let list = pm.backfills(ScheduleRequest::Backfills)?;
            if json {
                println!("{}", serde_json::to_string(&list)?);
            } else {
                print!("{}", table(&list));
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(BackfillAction::Show { id, json }) => {
            let b = one(pm.backfills(ScheduleRequest::BackfillShow { id })?)?;
            print_one(&b, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Some(BackfillAction::Cancel { id }) => {
            let b = one(pm.backfills(ScheduleRequest::BackfillCancel { id })?)?;
            println!("backfill {} {}", b.id, b.state.as_str());
            Ok(ExitCode::SUCCESS)
        }
        Some(BackfillAction::Watch { id, timeout, json }) => {
            follow(pm, id, Duration::from_secs(timeout), json)
        }
        None => start(pm, args),
    }
}

fn start(pm: &mut PipelineManager, args: BackfillArgs) -> anyhow::Result<ExitCode> {
    let (Some(name), Some(from), Some(to)) = (args.name, args.from, args.to) else {
        bail!("usage: pypelinin backfill NAME --from T --to T [options], or backfill list|show|cancel|watch");
    };
    // Plain dates mean midnight in the schedule's zone: ask the router for it.
    let schedule = pm
        .schedules(ScheduleRequest::Show { name: name.clone() })?
        .into_iter()
        .next()
        .context("no such schedule")?;
    let zone = parse_zone(schedule.spec.timezone.as_deref().unwrap_or("UTC"))?;
    let spec = BackfillSpec {
        schedule: name,
        from_ms: parse_time(&from, zone)?,
        to_ms: parse_time(&to, zone)?,
        reprocess: args.reprocess,
        max_active: args.max_active,
        backwards: args.backwards,
        dry_run: args.dry_run,
        count_against_schedule: args.count_against_schedule,
        respect_targets: args.respect_targets,
    };
    let b = one(pm.backfills(ScheduleRequest::Backfill(spec))?)?;
    if b.state == BackfillState::DryRun || !args.wait {
        print_one(&b, args.json)?;
        return Ok(ExitCode::SUCCESS);
    }
    if !args.json {
        eprintln!("backfill {}: {} date(s)", b.id, b.dates.len());
    }
    follow(pm, b.id, Duration::from_secs(args.timeout), args.json)
}

/// Polls backfill `id` until it ends: a progress bar on a terminal.
fn follow(
    pm: &mut PipelineManager,
    id: u64,
    timeout: Duration,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let deadline = Instant::now() + timeout;
    let tty = std::io::stderr().is_terminal();
    loop {
        let b = one(pm.backfills(ScheduleRequest::BackfillShow { id })?)?;
        if tty {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r{}", progress(&b, 30));
            let _ = err.flush();
        }
        if b.state.is_final() {
            if tty {
                eprintln!();
            }
            print_one(&b, json)?;
            return Ok(if b.state == BackfillState::Succeeded {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
        if Instant::now() >= deadline {
            if tty {
                eprintln!();
            }
            eprintln!("backfill {id} is still running after {timeout:?}");
            return Ok(ExitCode::from(3));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn one(mut list: Vec<BackfillStatus>) -> anyhow::Result<BackfillStatus> {
    list.pop().context("the router answered with no backfill")
}

fn zone_of(b: &BackfillStatus) -> Tz {
    parse_zone(b.timezone.as_deref().unwrap_or("UTC")).unwrap_or(Tz::UTC)
}

/// `running   [█████░░░░░] 5/10 runs · 1 failed`
fn progress(b: &BackfillStatus, width: usize) -> String {
    let (done, total) = b.progress();
    let failed = b
        .dates
        .iter()
        .filter(|d| {
            d.state
                .is_some_and(|s| s.is_final() && s != pypelinin_common::PipelineState::Succeeded)
        })
        .count();
    let filled = (done * width).checked_div(total).unwrap_or(width);
    let bar: String = (0..width)
        .map(|k| if k < filled { '█' } else { '░' })
        .collect();
    let mut line = format!("{:<9} [{bar}] {done}/{total} runs", b.state.as_str());
    if failed > 0 {
        line.push_str(&format!(" · {failed} failed"));
    }
    line
}

fn print_one(b: &BackfillStatus, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(b)?);
        return Ok(());
    }
    let zone = zone_of(b);
    let mut out = format!(
        "backfill {} of {}: {}\n{}\n",
        b.id,
        b.spec.schedule,
        b.state.as_str(),
        progress(b, 30)
    );
    let mut rows = vec![["LOGICAL DATE", "PIPELINE", "STATE"]
        .map(String::from)
        .to_vec()];
    for d in &b.dates {
        rows.push(vec![
            format_in(d.logical_date, zone),
            d.pipeline.map_or_else(|| "-".into(), |p| p.to_string()),
            match (&d.state, &d.note) {
                (Some(s), _) => s.as_str().to_string(),
                (None, Some(note)) => note.clone(),
                (None, None) if b.state == BackfillState::DryRun => "would run".into(),
                (None, None) => "waiting".into(),
            },
        ]);
    }
    out.push_str(&render::table(&rows));
    print!("{out}");
    Ok(())
}

fn table(list: &[BackfillStatus]) -> String {
    let mut rows = vec![[
        "BACKFILL",
        "SCHEDULE",
        "STATE",
        "RUNS",
        "FROM",
        "TO",
        "REPROCESS",
    ]
    .map(String::from)
    .to_vec()];
    for b in list {
        let (done, total) = b.progress();
        rows.push(vec![
            b.id.to_string(),
            b.spec.schedule.clone(),
            b.state.as_str().into(),
            format!("{done}/{total}"),
            format_in(b.spec.from_ms, zone_of(b)),
            format_in(b.spec.to_ms, zone_of(b)),
            b.spec.reprocess.to_string(),
        ]);
    }
    render::table(&rows)
}
