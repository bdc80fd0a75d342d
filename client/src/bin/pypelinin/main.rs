//! `pypelinin`, the command line: flags and dispatch here; following a running
//! pipeline in [`follow`]; printing statuses, outputs and metrics in [`show`]; a job's
//! captured log in [`logs`].

mod backfill;
mod follow;
mod keygen;
mod logs;
mod notifications;
mod pool;
mod schedule;
mod show;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::{Parser, Subcommand, ValueEnum};
use pypelinin_client::{render, PipelineManager};
use pypelinin_common::protocol::PipelineId;
use pypelinin_common::status::PipelineState;
use pypelinin_common::{now_ms, Pipeline};

use follow::{wait_and_report, watch};
use show::{logs, print_status, read_pipeline};

/// Command line for a pypelinin cluster.
///
/// Read commands print a table by default and JSON with `--json`. Exit codes: 0 done
/// (or the pipeline succeeded), 1 the pipeline failed or was cancelled, 2 an error
/// (unreachable router, bad file, unknown pipeline), 3 a `--timeout` ran out.
#[derive(Parser, Debug)]
#[command(name = "pypelinin", version, about)]
struct Args {
    /// Router API address.
    #[arg(
        long,
        env = "PYPELININ_API",
        default_value = pypelinin_common::cli::DEFAULT_API,
        global = true
    )]
    api: String,
    /// Router broadcast address.
    #[arg(
        long,
        env = "PYPELININ_BROADCAST",
        default_value = pypelinin_common::cli::DEFAULT_BROADCAST,
        global = true
    )]
    broadcast: String,
    #[command(flatten)]
    keys: pypelinin_common::cli::ClientKeys,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Writes a CURVE key pair: the secret key to PATH (mode 0600), the public key to
    /// PATH.pub; prints the public key. Never overwrites.
    Keygen {
        /// Where the secret key goes.
        path: PathBuf,
    },
    /// Submits a pipeline file (JSON); prints its id.
    Submit {
        /// The pipeline file.
        file: PathBuf,
        /// Waits for the outcome (a live progress bar on a terminal); exits 0 if it
        /// succeeded, 1 if it failed.
        #[arg(long)]
        wait: bool,
        /// Prints JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// With --wait: give up after this many seconds (exit 3).
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
    /// Prints a pipeline's status.
    Status {
        /// The pipeline id.
        id: PipelineId,
        /// Prints JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Lists recent pipelines, newest first.
    List {
        /// Only pipelines in this state.
        #[arg(long, value_enum)]
        state: Option<StateArg>,
        /// Only the runs of this schedule (the list then shows their logical dates).
        #[arg(long, value_name = "NAME")]
        schedule: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Only pipelines older than the one with this `seq` (the last `seq` of the
        /// previous page, in `--json`): the next page.
        #[arg(long, value_name = "SEQ")]
        before: Option<u64>,
        /// Prints JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Follows a pipeline until it ends: a live table on a terminal, job changes on
    /// stderr otherwise; then its final table. Exits 0 if it succeeded, 1 if not.
    Watch {
        /// The pipeline id.
        id: PipelineId,
        /// Prints the final status as JSON.
        #[arg(long)]
        json: bool,
        /// Give up after this many seconds (exit 3).
        #[arg(long)]
        timeout: Option<u64>,
    },
    /// Cancels a pipeline: running jobs are stopped, no new ones start.
    Cancel {
        /// The pipeline id.
        id: PipelineId,
        /// Prints JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Runs a finished pipeline's jobs that did not succeed again, with the jobs after
    /// them (or the named jobs and their descendants), reusing every other result.
    Retry {
        /// The pipeline id.
        id: PipelineId,
        /// A job to run again with its descendants (repeat for several).
        #[arg(long = "job", value_name = "NAME")]
        jobs: Vec<String>,
        /// Waits for the new outcome, as `submit --wait` does.
        #[arg(long)]
        wait: bool,
        /// Prints JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// With --wait: give up after this many seconds (exit 3).
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
    /// Prints a job's attempts (broker, times, error), the log an attempt captured
    /// (its stdout, stderr and `tracing` lines, each with its time and stream; the
    /// last 1 MiB) and the output it reported.
    Logs {
        /// The pipeline id.
        id: PipelineId,
        /// The job's name.
        job: String,
        /// Prints JSON instead of text (with --follow: one object per log line).
        #[arg(long)]
        json: bool,
        /// The attempt whose log to print, from 1 (default: the latest).
        #[arg(long, value_name = "N")]
        attempt: Option<u32>,
        /// Prints the log's lines as they come until the attempt has ended (without
        /// --attempt: until the job is final, following its retries); exits 0.
        #[arg(long)]
        follow: bool,
    },
    /// Prints the outputs the router keeps for a pipeline's succeeded jobs: a JSON
    /// object of job name → output, indented for reading.
    Outputs {
        /// The pipeline id.
        id: PipelineId,
        /// Prints the same object on one line, as every `--json` does (for scripts
        /// and `jq`, one pipeline per line).
        #[arg(long)]
        json: bool,
    },
    /// Lists the brokers: host, busy/total slots, last heartbeat, CPU, memory, workers,
    /// then each slot: the job it runs and for how long, or idle.
    Brokers {
        /// Prints JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Prints the latest notifications (webhooks and e-mails for failed, succeeded and
    /// cancelled pipelines, retried and late jobs), newest first, with their delivery:
    /// time, event, pipeline, job, channel, status, tries and last error.
    Notifications {
        /// How many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Prints JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Prints cluster metrics: pipelines and jobs by state, queue depth, brokers.
    Metrics {
        /// Prints every metric (histograms included) as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Runs a schedule's pipeline over a range of its ticks (NAME --from T --to T), or
    /// lists, shows, watches or cancels backfills.
    Backfill(backfill::BackfillArgs),
    /// Adds, lists, shows, pauses, resumes, removes or triggers schedules: pipelines
    /// run at the ticks of a cron expression, in a time zone.
    Schedule {
        #[command(subcommand)]
        command: schedule::ScheduleCommand,
    },
    /// Sets, lists or removes pools: cluster-wide limits on how many slots the jobs
    /// naming a pool hold at once.
    Pool {
        #[command(subcommand)]
        command: pool::PoolCommand,
    },
    /// Prints a submitted pipeline (by id, jobs coloured by state) or a pipeline file
    /// as Graphviz DOT.
    Dot {
        /// A pipeline id or a pipeline file.
        #[arg(value_name = "PIPELINE_ID|FILE")]
        target: String,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum StateArg {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl From<StateArg> for PipelineState {
    fn from(s: StateArg) -> Self {
        match s {
            StateArg::Queued => PipelineState::Queued,
            StateArg::Running => PipelineState::Running,
            StateArg::Succeeded => PipelineState::Succeeded,
            StateArg::Failed => PipelineState::Failed,
            StateArg::Cancelled => PipelineState::Cancelled,
        }
    }
}

fn main() -> ExitCode {
    pypelinin_common::init_tracing();
    match run(Args::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
fn run(args: Args) -> anyhow::Result<ExitCode> {
    if let Command::Keygen { path } = &args.command {
        return keygen::run(path);
    }
    let security = args.keys.security()?;
    let mut pm = PipelineManager::connect_with(&args.api, &args.broadcast, &security)?;
    match args.command {
        Command::Keygen { .. } => unreachable!("handled above"),
        Command::Submit {
            file,
            wait,
            json,
            timeout,
        } => {
            let spec = read_pipeline(&file)?;
            let id = pm.start(&spec)?;
            tracing::debug!(pipeline = %id, "submitted");
            if !wait {
                if json {
                    println!("{}", serde_json::json!({"id": id}));
                } else {
                    println!("{id}");
                }
                return Ok(ExitCode::SUCCESS);
            }
            wait_and_report(&mut pm, id, json, Duration::from_secs(timeout))
        }
        Command::Status { id, json } => {
            let s = pm.status(id)?;
            print_status(&s, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::List {
            state,
            schedule,
            limit,
            before,
            json,
        } => {
            let list = pm.list_page(
                limit,
                state.map(PipelineState::from),
                schedule.as_deref(),
                before,
            )?;
            if json {
                println!("{}", serde_json::to_string(&list)?);
            } else {
                print!("{}", render::pipeline_list(&list, now_ms()));
                // A full page may have older ones: say how to get them (on stderr, so
                // that the table stays the only thing on stdout).
                if let (true, Some(last)) = (list.len() as u32 == limit, list.last()) {
                    eprintln!("older: pypelinin list --before {} …", last.seq);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Watch { id, json, timeout } => {
            let deadline = timeout.map(|t| Instant::now() + Duration::from_secs(t));
            watch(&mut pm, id, deadline, json)
        }
        Command::Cancel { id, json } => {
            let s = pm.cancel(id)?;
            print_status(&s, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Retry {
            id,
            jobs,
            wait,
            json,
            timeout,
        } => {
            let s = pm.retry(id, &jobs)?;
            if wait {
                return wait_and_report(&mut pm, id, json, Duration::from_secs(timeout));
            }
            print_status(&s, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Logs {
            id,
            job,
            json,
            attempt,
            follow,
        } => logs(&mut pm, id, &job, json, attempt, follow),
        Command::Outputs { id, json } => show::outputs(&mut pm, id, json),
        Command::Brokers { json } => {
            let brokers = pm.brokers()?;
            if json {
                println!("{}", serde_json::to_string(&brokers)?);
            } else {
                print!("{}", render::broker_table(&brokers));
                print!(
                    "{}",
                    render::broker_slots(&brokers, pypelinin_common::now_ms())
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Metrics { json } => show::metrics(&mut pm, json),
        Command::Notifications { limit, json } => notifications::run(&mut pm, limit, json),
        Command::Schedule { command } => schedule::run(&mut pm, command),
        Command::Pool { command } => pool::run(&mut pm, command),
        Command::Backfill(args) => backfill::run(&mut pm, args),
        Command::Dot { target } => {
            let path = Path::new(&target);
            if path.exists() {
                let spec = read_pipeline(path)?;
                print!("{}", Pipeline::new(spec)?.to_dot(None));
                return Ok(ExitCode::SUCCESS);
            }
            let Ok(id) = target.parse::<PipelineId>() else {
                bail!("{target:?} is neither a pipeline file nor a pipeline id");
            };
            let spec = pm.spec(id)?;
            let status = pm.status(id)?;
            print!("{}", render::dot(&spec, &status)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}
