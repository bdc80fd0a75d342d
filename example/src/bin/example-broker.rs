//! The example broker: every example and diagnostic worker, with the store the router's
//! configuration names. A user's own broker binary looks just like this.

use clap::Parser;
use pypelinin_common::Shutdown;

/// A pypelinin broker offering the example workers (Reader, WordCount, Links, Report),
/// a command worker (InputBytes, a shell one-liner) and the diagnostic ones (Noop, Echo,
/// Sleep, Fail, Crash, Flaky, Step, Join).
#[derive(Parser, Debug)]
#[command(
    version,
    about,
    after_help = "A broker needs only --api: --broadcast is accepted, like every daemon's, \
                  but brokers don't use it (the router pushes their jobs to them directly)."
)]
struct Args {
    #[command(flatten)]
    broker: pypelinin_broker::cli::BrokerFlags,
    /// process: each slot runs jobs in a supervised child process (crash isolation);
    /// thread: in the broker's threads (faster, no isolation).
    #[arg(long, value_enum, default_value_t = IsolationArg::Process)]
    isolation: IsolationArg,
    /// Memory limit of each slot process, in MiB (default: the host's memory / slots,
    /// at least 1024).
    #[arg(long)]
    slot_memory_mb: Option<u64>,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum IsolationArg {
    Process,
    Thread,
}

fn main() -> anyhow::Result<()> {
    pypelinin_broker::init_tracing();
    let args = Args::parse();
    let mut config = args.broker.config()?;
    config.isolation = match args.isolation {
        IsolationArg::Process => pypelinin_broker::Isolation::Process,
        IsolationArg::Thread => pypelinin_broker::Isolation::Thread,
    };
    config.slot_memory_bytes = args.slot_memory_mb.map(|mb| mb << 20);
    let shutdown = Shutdown::on_signals()?;
    example::run_broker(config, shutdown)?;
    Ok(())
}
