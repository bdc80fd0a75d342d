//! The generic broker: offers command workers, in any language, declared in a TOML
//! file. Thin: flags, logs, then `pypelinin_broker::run_workers_file`.

use std::path::PathBuf;

use clap::Parser;
use pypelinin_common::Shutdown;

/// A pypelinin broker offering command workers (any program, one process per attempt)
/// declared in WORKERS.toml.
#[derive(Parser, Debug)]
#[command(
    version,
    after_help = "Isolation: each job runs its worker's command in a process of its own \
                  (in its own process group; with mode = \"persistent\", a long-lived one per \
                  slot, speaking newline-delimited JSON: see the README), so slots are threads of this broker \
                  (Isolation::Thread): there is no --isolation flag. A broker needs only --api: --broadcast is accepted, \
                  like every daemon's, but brokers don't use it.\n\n\
                  WORKERS.toml:\n  [workers.wordcount]\n  \
                  command = [\"python3\", \"wc.py\"]   # argv, no shell\n  \
                  mode = \"oneshot\"                  # the default; or \"persistent\"\n  \
                  env = { LANG = \"C.UTF-8\" }        # optional\n  \
                  cwd = \"/srv/jobs\"                 # optional"
)]
struct Args {
    #[command(flatten)]
    broker: pypelinin_broker::cli::BrokerFlags,
    /// The workers file (TOML): one [workers.NAME] table per worker.
    #[arg(value_name = "WORKERS.toml")]
    workers_file: PathBuf,
}

fn main() -> anyhow::Result<()> {
    pypelinin_broker::init_tracing();
    let args = Args::parse();
    let mut config = args.broker.config()?;
    config.isolation = pypelinin_broker::Isolation::Thread;
    let shutdown = Shutdown::on_signals()?;
    pypelinin_broker::run_workers_file(&args.workers_file, config, shutdown)?;
    Ok(())
}
