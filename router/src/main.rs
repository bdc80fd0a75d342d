//! `pypelinin-router`: flags, tracing, then the router library's `bind` and `run`; with
//! `--http`, the dashboard beside it.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use pypelinin_common::protocol::ClusterConfig;
use pypelinin_common::Shutdown;
use pypelinin_dashboard::Dashboard;
use pypelinin_router::{BoundRouter, Durability, RouterConfig};

/// The pypelinin router: the central point of a cluster.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    endpoints: pypelinin_common::cli::Endpoints,
    /// Directory of the database (sled, and the journal in front of it) that keeps the
    /// cluster's state.
    #[arg(long, env = "PYPELININ_DB", default_value = "pypelinin-router.db")]
    db: PathBuf,
    /// Cluster configuration handed to brokers (JSON: {"store": {...}, "monitoring_interval_ms": N}).
    #[arg(long)]
    config: Option<PathBuf>,
    /// flush: every acknowledged change is synced to disk first (default). background:
    /// written before acknowledged, synced every 500 ms; survives a router crash, can
    /// lose the last half second if the machine crashes.
    #[arg(long, value_enum, default_value_t = Mode::Flush)]
    durability: Mode,
    /// Serve the web dashboard, its JSON API and Prometheus `/metrics` on this address
    /// (HOST:PORT; a bare PORT binds 127.0.0.1; port 0 picks a free port). Off by default.
    #[arg(long, env = "PYPELININ_HTTP", value_name = "ADDR")]
    http: Option<String>,
    /// A token (16 characters or more) every dashboard API request must prove, as
    /// `Authorization: Bearer TOKEN` or through a session opened on the page. Required
    /// to serve the dashboard on anything but loopback. Prefer --http-token-file: a
    /// flag shows in the process list.
    #[arg(
        long,
        env = "PYPELININ_HTTP_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    http_token: Option<String>,
    /// A file whose first line is the dashboard token (see --http-token).
    #[arg(
        long,
        env = "PYPELININ_HTTP_TOKEN_FILE",
        value_name = "PATH",
        conflicts_with = "http_token"
    )]
    http_token_file: Option<PathBuf>,
    /// The router's secret key file (`pypelinin keygen PATH`): both sockets become CURVE
    /// servers (authenticated, encrypted). Needs --authorized-keys.
    #[arg(long, env = "PYPELININ_CURVE_SECRET", value_name = "PATH")]
    curve_secret: Option<PathBuf>,
    /// Client public keys allowed to connect: a file of Z85 keys one a line (`#`
    /// comments), or a directory of `.pub` files. Reloaded on SIGHUP.
    #[arg(long, env = "PYPELININ_AUTHORIZED_KEYS", value_name = "PATH")]
    authorized_keys: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Mode {
    Flush,
    Background,
}

fn main() -> anyhow::Result<()> {
    pypelinin_common::init_tracing();
    let args = Args::parse();
    let cluster = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str::<ClusterConfig>(&text)
                .with_context(|| format!("parsing {}", path.display()))?
        }
        None => ClusterConfig::default(),
    };
    let config = RouterConfig {
        api: args.endpoints.api,
        broadcast: args.endpoints.broadcast,
        db: args.db,
        cluster,
        durability: match args.durability {
            Mode::Flush => Durability::Flush,
            Mode::Background => Durability::Background,
        },
    };
    let shutdown = Shutdown::on_signals()?;
    let security = pypelinin_common::curve::Security::server_from(
        args.curve_secret.as_deref(),
        args.authorized_keys.as_deref(),
    )?;
    let router = BoundRouter::bind_secured(config, &security)?;
    // The dashboard is a client of the router's API socket, bound just above: its
    // requests wait in the socket until the router runs.
    let token = match &args.http_token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the dashboard token {}", path.display()))?;
            Some(text.lines().next().unwrap_or("").trim().to_string())
        }
        None => args.http_token.clone(),
    };
    let dashboard = match &args.http {
        Some(addr) => Some(
            Dashboard::start_secured(
                addr,
                &router.api_endpoint,
                &router.broadcast_endpoint,
                token.as_deref(),
                &security.own_client(),
            )
            .context("starting the dashboard")?,
        ),
        None => None,
    };
    // The bound addresses on stdout, the API first: scripts and tests read these lines.
    // A reader that stopped reading must not stop the router: write errors are ignored.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "router listening api={} broadcast={}",
        router.api_endpoint, router.broadcast_endpoint
    );
    if let Some(d) = &dashboard {
        let _ = writeln!(out, "http listening on {}", d.url());
    }
    let _ = out.flush();
    drop(out);
    let ran = router.run(shutdown);
    // Streams are ended so that open pages see the router go (and reconnect to the
    // next one); requests still in flight get at most two seconds.
    if let Some(d) = dashboard {
        d.stop();
    }
    ran?;
    Ok(())
}
