//! `pypelinin-pipeliner`: flags, tracing, then `pypelinin_pipeliner::run`.

use clap::Parser;
use pypelinin_common::Shutdown;
use pypelinin_pipeliner::{PipelinerConfig, DEFAULT_CAPACITY};

/// The pypelinin pipeliner: walks pipeline DAGs and schedules their jobs.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    endpoints: pypelinin_common::cli::Endpoints,
    /// Most pipelines walked at once.
    #[arg(long, default_value_t = DEFAULT_CAPACITY)]
    capacity: u32,
    #[command(flatten)]
    keys: pypelinin_common::cli::ClientKeys,
}

fn main() -> anyhow::Result<()> {
    pypelinin_common::init_tracing();
    let args = Args::parse();
    let security = args.keys.security()?;
    let shutdown = Shutdown::on_signals()?;
    pypelinin_pipeliner::run_secured(
        PipelinerConfig {
            api: args.endpoints.api,
            capacity: args.capacity,
        },
        &security,
        shutdown,
    )?;
    Ok(())
}
