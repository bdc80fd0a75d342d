//! `pypelinin schedule …`: add, list, show, pause, resume, remove and trigger the
//! router's schedules. Times on the command line are RFC 3339, or a plain date meaning
//! midnight in the schedule's zone; times printed are in the schedule's zone.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use pypelinin_client::{render, PipelineManager};
use pypelinin_common::protocol::ScheduleRequest;
use pypelinin_common::schedule::{
    format_in, parse_time, parse_zone, OverrunPolicy, ScheduleSpec, ScheduleStatus, Tz,
};

use crate::show::read_pipeline;

/// What `pypelinin schedule` does.
#[derive(Subcommand, Debug)]
pub enum ScheduleCommand {
    /// Adds a schedule: the pipeline in FILE, run at every tick of a cron expression.
    Add {
        /// Its name, unique in the cluster.
        name: String,
        /// Cron expression: five fields, or six with seconds first ("*/10 * * * * *").
        #[arg(long)]
        cron: String,
        /// IANA time zone the expression is read in (default UTC).
        #[arg(long)]
        timezone: Option<String>,
        /// The pipeline file (JSON), the template of every run.
        #[arg(long, value_name = "FILE")]
        pipeline: PathBuf,
        /// No tick before this time.
        #[arg(long, value_name = "T")]
        start: Option<String>,
        /// No tick after this time.
        #[arg(long, value_name = "T")]
        end: Option<String>,
        /// After downtime (or from a past --start), run every missed tick, oldest
        /// first, instead of only the latest.
        #[arg(long)]
        catchup: bool,
        /// What a tick does while --max-running runs still go: skip, start_new, delay,
        /// delay_until_success or abort_running.
        #[arg(long, default_value = "skip", value_name = "POLICY")]
        overrun: OverrunPolicy,
        /// Most runs going at once (also --max-active, as in pipeline files).
        #[arg(long, default_value_t = 1, value_name = "N", alias = "max-active")]
        max_running: u32,
        /// Prints JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Lists the schedules: state, cron, next tick, runs going and waiting.
    List {
        /// Prints JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Shows a schedule: its settings, next 5 ticks, recent runs and their states.
    Show {
        /// The schedule's name.
        name: String,
        /// Prints JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Stops a schedule ticking; its runs go on.
    Pause {
        /// The schedule's name.
        name: String,
    },
    /// Starts a paused schedule ticking again, from now (missed ticks are not run).
    Resume {
        /// The schedule's name.
        name: String,
    },
    /// Removes a schedule; its runs stay, as ordinary pipelines.
    Remove {
        /// The schedule's name.
        name: String,
    },
    /// Makes a run now, outside the recurrence; prints its pipeline id.
    Trigger {
        /// The schedule's name.
        name: String,
        /// Prints JSON instead of the id.
        #[arg(long)]
        json: bool,
    },
}

/// Runs one `schedule` command.
pub fn run(pm: &mut PipelineManager, command: ScheduleCommand) -> anyhow::Result<ExitCode> {
    let (request, json) = match command {
        ScheduleCommand::Add {
            name,
            cron,
            timezone,
            pipeline,
            start,
            end,
            catchup,
            overrun,
            max_running,
            json,
        } => {
            let zone = parse_zone(timezone.as_deref().unwrap_or("UTC"))?;
            let time = |t: Option<String>| t.map(|t| parse_time(&t, zone)).transpose();
            let spec = ScheduleSpec {
                name,
                cron,
                timezone,
                pipeline: read_pipeline(&pipeline)?,
                start_ms: time(start)?,
                end_ms: time(end)?,
                catchup,
                overrun,
                max_running,
            };
            // Refused here with the same message the router would give, without a
            // round trip.
            spec.check()?;
            (ScheduleRequest::Add(spec), json)
        }
        ScheduleCommand::List { json } => (ScheduleRequest::List, json),
        ScheduleCommand::Show { name, json } => (ScheduleRequest::Show { name }, json),
        ScheduleCommand::Pause { name } => (ScheduleRequest::Pause { name }, false),
        ScheduleCommand::Resume { name } => (ScheduleRequest::Resume { name }, false),
        ScheduleCommand::Remove { name } => (ScheduleRequest::Remove { name }, false),
        ScheduleCommand::Trigger { name, json } => {
            let id = pm.trigger(&name)?;
            if json {
                println!("{}", serde_json::json!({"id": id}));
            } else {
                println!("{id}");
            }
            return Ok(ExitCode::SUCCESS);
        }
    };
    let is_list = matches!(request, ScheduleRequest::List);
    let schedules = pm.schedules(request)?;
    if json {
        if is_list {
            println!("{}", serde_json::to_string(&schedules)?);
        } else if let Some(s) = schedules.first() {
            println!("{}", serde_json::to_string(s)?);
        }
    } else if is_list {
        print!("{}", table(&schedules));
    } else if let Some(s) = schedules.first() {
        print!("{}", details(s));
    }
    Ok(ExitCode::SUCCESS)
}

fn zone_of(s: &ScheduleStatus) -> Tz {
    parse_zone(s.spec.timezone.as_deref().unwrap_or("UTC")).unwrap_or(Tz::UTC)
}

fn state(s: &ScheduleStatus) -> &'static str {
    if s.paused {
        "paused"
    } else if s.next_ticks.is_empty() {
        "ended"
    } else {
        "active"
    }
}

/// One line per schedule.
fn table(list: &[ScheduleStatus]) -> String {
    let mut rows = vec![[
        "SCHEDULE",
        "STATE",
        "CRON",
        "ZONE",
        "OVERRUN",
        "RUNNING",
        "PENDING",
        "NEXT TICK",
    ]
    .map(String::from)
    .to_vec()];
    for s in list {
        let zone = zone_of(s);
        rows.push(vec![
            s.spec.name.clone(),
            state(s).into(),
            s.spec.cron.clone(),
            zone.name().into(),
            s.spec.overrun.to_string(),
            format!("{}/{}", s.running.len(), s.spec.max_running),
            s.pending.len().to_string(),
            s.next_ticks
                .first()
                .map_or_else(|| "-".into(), |t| format_in(*t, zone)),
        ]);
    }
    render::table(&rows)
}

/// Settings, next ticks and recent runs of one schedule.
fn details(s: &ScheduleStatus) -> String {
    let zone = zone_of(s);
    let t = |ms: u64| format_in(ms, zone);
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<13}{v}\n"));
    line("schedule", s.spec.name.clone());
    line("state", state(s).into());
    line("cron", format!("{} ({})", s.spec.cron, zone.name()));
    line("overrun", s.spec.overrun.to_string());
    line(
        "running",
        format!("{} of at most {}", s.running.len(), s.spec.max_running),
    );
    line("catchup", if s.spec.catchup { "on" } else { "off" }.into());
    if let Some(start) = s.spec.start_ms {
        line("start", t(start));
    }
    if let Some(end) = s.spec.end_ms {
        line("end", t(end));
    }
    if !s.pending.is_empty() {
        let first = s.pending.first().map(|x| t(*x)).unwrap_or_default();
        line(
            "waiting",
            format!(
                "{} tick(s), oldest {first}{}",
                s.pending.len(),
                s.waiting_for
                    .as_ref()
                    .map(|w| format!(": {w}"))
                    .unwrap_or_default()
            ),
        );
    }
    out.push_str("next ticks\n");
    if s.next_ticks.is_empty() {
        out.push_str("  none\n");
    }
    for tick in &s.next_ticks {
        out.push_str(&format!("  {}\n", t(*tick)));
    }
    out.push_str("recent runs\n");
    let mut rows = vec![["LOGICAL DATE", "PIPELINE", "STATE"]
        .map(String::from)
        .to_vec()];
    for r in &s.recent {
        rows.push(vec![
            t(r.logical_date),
            r.pipeline.map_or_else(|| "-".into(), |p| p.to_string()),
            match (&r.state, &r.note) {
                (Some(state), Some(note)) => format!("{} ({note})", state.as_str()),
                (Some(state), None) => state.as_str().into(),
                (None, Some(note)) => note.clone(),
                (None, None) => "-".into(),
            },
        ]);
    }
    for l in render::table(&rows).lines() {
        out.push_str(&format!("  {l}\n"));
    }
    out
}
