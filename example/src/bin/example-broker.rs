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
    endpoints: pypelinin_common::cli::Endpoints,
    /// Concurrent worker slots (default: number of CPUs).
    #[arg(long)]
    workers: Option<usize>,
    /// On SIGINT/SIGTERM, seconds to let running jobs finish before giving them back.
    #[arg(long, default_value_t = 30)]
    drain_timeout: u64,
    /// process: each slot runs jobs in a supervised child process (crash isolation);
    /// thread: in the broker's threads (faster, no isolation).
    #[arg(long, value_enum, default_value_t = IsolationArg::Process)]
    isolation: IsolationArg,
    /// Memory limit of each slot process, in MiB (default: the host's memory / slots,
    /// at least 1024).
    #[arg(long)]
    slot_memory_mb: Option<u64>,
    /// Most jobs held queued beyond the slots, so that a freed slot starts the next one
    /// at once (default: 32 per slot); the router queues only short jobs. 0: none.
    #[arg(long)]
    prefetch: Option<usize>,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum IsolationArg {
    Process,
    Thread,
}

fn main() -> anyhow::Result<()> {
    pypelinin_common::init_tracing();
    let args = Args::parse();
    // `--broadcast` is accepted like every daemon's, and unused: see `Args`.
    let mut config = pypelinin_broker::BrokerConfig::new(&args.endpoints.api);
    if let Some(n) = args.workers {
        config.slots = n;
    }
    config.drain_timeout = std::time::Duration::from_secs(args.drain_timeout);
    config.isolation = match args.isolation {
        IsolationArg::Process => pypelinin_broker::Isolation::Process,
        IsolationArg::Thread => pypelinin_broker::Isolation::Thread,
    };
    config.slot_memory_bytes = args.slot_memory_mb.map(|mb| mb << 20);
    config.prefetch = args.prefetch;
    let shutdown = Shutdown::on_signals()?;
    example::run_broker(config, shutdown)?;
    Ok(())
}
