use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use client::{render_table, PipelineManager};
use pypelinin_common::protocol::PipelineId;
use pypelinin_common::status::PipelineState;
use pypelinin_common::{Pipeline, PipelineSpec};

/// Command line for a pypelinin cluster.
#[derive(Parser, Debug)]
#[command(name = "pypelinin", version, about)]
struct Args {
    /// Router API address.
    #[arg(
        long,
        env = "PYPELININ_API",
        default_value = "tcp://127.0.0.1:5555",
        global = true
    )]
    api: String,
    /// Router broadcast address.
    #[arg(
        long,
        env = "PYPELININ_BROADCAST",
        default_value = "tcp://127.0.0.1:5556",
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
        /// Waits for the outcome; exits 0 if it succeeded, 1 if it failed.
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
    /// Cancels a pipeline: running jobs are stopped, no new ones start.
    Cancel {
        /// The pipeline id.
        id: PipelineId,
        /// Prints JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Prints the outputs the router keeps for a pipeline's succeeded jobs (JSON).
    Outputs {
        /// The pipeline id.
        id: PipelineId,
    },
    /// Lists recent pipelines.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Prints JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Prints a pipeline file, or a submitted pipeline with its job states, as Graphviz DOT.
    Dot {
        /// A pipeline file.
        file: PathBuf,
    },
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

fn read_pipeline(file: &PathBuf) -> anyhow::Result<PipelineSpec> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let spec = PipelineSpec::from_json(&text).with_context(|| format!("{}", file.display()))?;
    Pipeline::new(spec.clone()).with_context(|| format!("{}", file.display()))?;
    Ok(spec)
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
            if !wait {
                if json {
                    println!("{}", serde_json::json!({"id": id}));
                } else {
                    println!("{id}");
                }
                return Ok(ExitCode::SUCCESS);
            }
            let outcome = match pm.wait(id, Duration::from_secs(timeout)) {
                Ok(o) => o,
                Err(e @ client::ClientError::Timeout { .. }) => {
                    eprintln!("error: {e}");
                    return Ok(ExitCode::from(3));
                }
                Err(e) => return Err(e.into()),
            };
            print_status(outcome.status(), json)?;
            Ok(if outcome.is_success() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Status { id, json } => {
            let s = pm.status(id)?;
            print_status(&s, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Cancel { id, json } => {
            let s = pm.cancel(id)?;
            print_status(&s, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Outputs { id } => {
            let o = pm.outputs(id)?;
            println!("{}", serde_json::to_string_pretty(&o)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::List { limit, json } => {
            let list = pm.list(limit)?;
            if json {
                println!("{}", serde_json::to_string(&list)?);
            } else {
                println!("{:<36}  {:<9}  {:>9}", "PIPELINE", "STATE", "DONE");
                for p in list {
                    println!(
                        "{:<36}  {:<9}  {:>4}/{:<4}",
                        p.id,
                        p.state.as_str(),
                        p.done,
                        p.jobs
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Dot { file } => {
            let spec = read_pipeline(&file)?;
            print!("{}", Pipeline::new(spec)?.to_dot(None));
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_status(s: &pypelinin_common::PipelineStatus, json: bool) -> anyhow::Result<()> {
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
