use clap::Parser;
use pipeliner::{PipelinerConfig, DEFAULT_CAPACITY};
use pypelinin_common::Shutdown;

/// The pypelinin pipeliner: walks pipeline DAGs and schedules their jobs.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Router API address.
    #[arg(long, env = "PYPELININ_API", default_value = "tcp://127.0.0.1:5555")]
    api: String,
    /// Router broadcast address.
    #[arg(
        long,
        env = "PYPELININ_BROADCAST",
        default_value = "tcp://127.0.0.1:5556"
    )]
    broadcast: String,
    /// Most pipelines walked at once.
    #[arg(long, default_value_t = DEFAULT_CAPACITY)]
    capacity: u32,
}

fn main() -> anyhow::Result<()> {
    pypelinin_common::init_tracing();
    let args = Args::parse();
    let shutdown = Shutdown::on_signals()?;
    pipeliner::run(
        PipelinerConfig {
            api: args.api,
            broadcast: args.broadcast,
            capacity: args.capacity,
        },
        shutdown,
    )?;
    Ok(())
}
