//! The flags every broker binary takes (`pypelinin-broker`, `example-broker`, a user's
//! own), so that they read the same and build a [`BrokerConfig`] the same way.

use std::time::Duration;

use crate::BrokerConfig;

/// Where the router is, how many slots, how long to drain, how much to queue.
/// Flatten it into a binary's `clap` arguments and call [`BrokerFlags::config`].
#[derive(clap::Args, Debug, Clone)]
pub struct BrokerFlags {
    /// The router's endpoints; a broker needs only `--api`.
    #[command(flatten)]
    pub endpoints: pypelinin_common::cli::Endpoints,
    /// Concurrent worker slots (default: number of CPUs).
    #[arg(long)]
    pub workers: Option<usize>,
    /// On SIGINT/SIGTERM, seconds to let running jobs finish before giving them back.
    #[arg(long, default_value_t = 30)]
    pub drain_timeout: u64,
    /// Most jobs held queued beyond the slots, so that a freed slot starts the next one
    /// at once (default: 32 per slot); the router queues only short jobs. 0: none.
    #[arg(long)]
    pub prefetch: Option<usize>,
    /// While jobs are queued beyond the slots, how long (at most) a finished job's
    /// report waits for others to leave in the same message; never longer than a
    /// quarter of what the queue holds. 0: every report at once.
    #[arg(long, default_value_t = crate::REPORT_LINGER.as_millis() as u64)]
    pub report_linger_ms: u64,
    /// CURVE keys (`--curve-secret`, `--router-key`).
    #[command(flatten)]
    pub keys: pypelinin_common::cli::ClientKeys,
}

impl BrokerFlags {
    /// The configuration these flags describe (`--broadcast` is accepted and unused:
    /// the router pushes jobs to brokers directly). Fails on a bad key file: keys asked
    /// for are never dropped in favour of plaintext.
    pub fn config(&self) -> Result<BrokerConfig, pypelinin_common::curve::CurveError> {
        let mut config = BrokerConfig::new(&self.endpoints.api);
        if let Some(n) = self.workers {
            config.slots = n;
        }
        config.drain_timeout = Duration::from_secs(self.drain_timeout);
        config.prefetch = self.prefetch;
        config.report_linger = Duration::from_millis(self.report_linger_ms);
        config.security = self.keys.security()?;
        Ok(config)
    }
}
