use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use pypelinin_client::render::{self, Progress};
use pypelinin_client::{render_table, ClientError, PipelineManager};
use pypelinin_common::protocol::PipelineId;
use pypelinin_common::status::{JobState, PipelineState, PipelineStatus};
use pypelinin_common::{now_ms, Pipeline, PipelineError, PipelineSpec};

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
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
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
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
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
    /// Runs a finished pipeline's failed jobs again (or the named jobs and their
    /// descendants), reusing what already succeeded.
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
    /// Prints a job's attempts (broker, times, error) and the output it reported.
    Logs {
        /// The pipeline id.
        id: PipelineId,
        /// The job's name.
        job: String,
        /// Prints JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Prints the outputs the router keeps for a pipeline's succeeded jobs (JSON).
    Outputs {
        /// The pipeline id.
        id: PipelineId,
        /// Accepted for consistency: outputs are always JSON.
        #[arg(long)]
        json: bool,
    },
    /// Lists the brokers: host, busy/total slots, last heartbeat, CPU, memory, workers.
    Brokers {
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

/// Reads and checks a pipeline file; a problem is reported with the file, the line
/// (when it can be found) and what is wrong.
fn read_pipeline(file: &Path) -> anyhow::Result<PipelineSpec> {
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

fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut pm = PipelineManager::connect(&args.api, &args.broadcast)?;
    match args.command {
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
        Command::List { state, limit, json } => {
            let list = pm.list_in(limit, state.map(PipelineState::from))?;
            if json {
                println!("{}", serde_json::to_string(&list)?);
            } else {
                print!("{}", render::pipeline_list(&list, now_ms()));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Watch { id, json, timeout } => {
            let view = if json {
                View::Lines
            } else if std::io::stdout().is_terminal() {
                View::Screen
            } else {
                View::Lines
            };
            let deadline = timeout.map(|t| Instant::now() + Duration::from_secs(t));
            finish(follow(&mut pm, id, deadline, view)?, json)
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
        Command::Logs { id, job, json } => logs(&mut pm, id, &job, json),
        Command::Outputs { id, json: _ } => {
            let o = pm.outputs(id)?;
            println!("{}", serde_json::to_string_pretty(&o)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Brokers { json } => {
            let brokers = pm.brokers()?;
            if json {
                println!("{}", serde_json::to_string(&brokers)?);
            } else {
                print!("{}", render::broker_table(&brokers));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Metrics { json } => {
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

/// Waits for a pipeline (with a progress bar when stdout is a terminal and the output
/// is a table), prints its status, and turns its state into the exit code.
fn wait_and_report(
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

/// `logs ID JOB`: every attempt of the job with its broker, times and error, then
/// the output the router keeps for it.
fn logs(
    pm: &mut PipelineManager,
    id: PipelineId,
    name: &str,
    json: bool,
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
            "attempts": attempts,
            "output": output,
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
            None => println!("not run yet"),
        }
    }
    if let Some(o) = output {
        println!("output:\n{}", serde_json::to_string_pretty(&o)?);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_status(s: &PipelineStatus, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(s)?);
    } else {
        print!("{}", render_table(s));
        if s.state == PipelineState::Failed {
            for (job, err) in s.failed_jobs() {
                eprintln!("failed: {job}: {err}");
            }
        }
    }
    Ok(())
}
