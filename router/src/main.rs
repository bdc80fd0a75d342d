//! `pypelinin-router`: flags, tracing, then the router library's `bind` and `run`; with
//! `--http`, the dashboard beside it.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use pypelinin_common::protocol::ClusterConfig;
use pypelinin_common::Shutdown;
use pypelinin_dashboard::Dashboard;
use pypelinin_router::notify::deliver::SmtpConfig;
use pypelinin_router::notify::{NotifyDefaults, RetryPolicy};
use pypelinin_router::{BoundRouter, Durability, NotifyConfig, RouterConfig};

/// mimalloc instead of glibc's allocator: the router allocates and frees small buffers
/// for every message and record, and glibc's malloc and free took about a quarter of its
/// CPU under load (perf, soak benchmark).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The pypelinin router: the central point of a cluster.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    endpoints: pypelinin_common::cli::Endpoints,
    /// Directory of the database (a journal in front of a redb file, history.redb) that keeps the
    /// cluster's state.
    #[arg(long, env = "PYPELININ_DB", default_value = "pypelinin-router.db")]
    db: PathBuf,
    /// Cluster configuration handed to brokers (JSON: {"store": {...}, "monitoring_interval_ms": N,
    /// "pools": {"NAME": SLOTS, ...}, "priority_aging_ms": N}). Its pools are created or
    /// resized at start, over what `pool set` stored.
    #[arg(long)]
    config: Option<PathBuf>,
    /// A job waiting for a slot gains one point of priority per this many ms, so that
    /// low priorities cannot starve; 0 turns aging off. Wins over the config file's
    /// `priority_aging_ms`. Default 60000 (one point a minute).
    #[arg(long, value_name = "MS")]
    priority_aging_ms: Option<u64>,
    /// Deletes finished pipelines (with their outputs and logs) this long after they
    /// ended: `30d`, `12h`, `90m`, `45s`. Without it, history is kept for ever. Open
    /// pipelines are never deleted, however old.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    retention: Option<std::time::Duration>,
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
    /// POST a JSON body to this URL (http or https) on the events of --notify-events,
    /// for every pipeline. Repeatable.
    #[arg(long, value_name = "URL")]
    notify_webhook: Vec<String>,
    /// E-mail this address (through --smtp-server) on the events of --notify-events,
    /// for every pipeline. Repeatable.
    #[arg(long, value_name = "ADDR")]
    notify_email: Vec<String>,
    /// The events the router-wide channels hear of, comma-separated, among failed,
    /// succeeded, cancelled, retrying and late.
    #[arg(
        long,
        value_name = "LIST",
        default_value = "failed,late",
        value_delimiter = ','
    )]
    notify_events: Vec<String>,
    /// Tries of one notification before it is recorded failed.
    #[arg(long, value_name = "N", default_value_t = pypelinin_router::notify::DEFAULT_ATTEMPTS,
          value_parser = clap::value_parser!(u32).range(1..))]
    notify_attempts: u32,
    /// Wait after a notification's first failed try, in ms; doubled after each further
    /// one (at most ten minutes).
    #[arg(long, value_name = "MS", default_value_t = pypelinin_router::notify::DEFAULT_BACKOFF_MS)]
    notify_backoff_ms: u64,
    /// The SMTP server that e-mail notifications go through (HOST:PORT, plain SMTP).
    #[arg(long, value_name = "HOST:PORT")]
    smtp_server: Option<String>,
    /// The sender of e-mail notifications.
    #[arg(long, value_name = "ADDR", default_value = pypelinin_router::notify::deliver::DEFAULT_FROM)]
    smtp_from: String,
    /// The router's secret key file (`pypelinin keygen PATH`): both sockets become CURVE
    /// servers (authenticated, encrypted). Needs --authorized-keys.
    #[arg(long, env = "PYPELININ_CURVE_SECRET", value_name = "PATH")]
    curve_secret: Option<PathBuf>,
    /// Client public keys allowed to connect: a file of Z85 keys one a line (`#`
    /// comments), or a directory of `.pub` files. Reloaded on SIGHUP.
    #[arg(long, env = "PYPELININ_AUTHORIZED_KEYS", value_name = "PATH")]
    authorized_keys: Option<PathBuf>,
}

/// The notification flags, checked: a bad URL, address or event stops the router at
/// start-up with an error naming it, rather than failing every delivery later.
fn notify_config(args: &Args) -> anyhow::Result<NotifyConfig> {
    use pypelinin_common::notify::{check_email, check_webhook, NotifyEvent};
    for url in &args.notify_webhook {
        check_webhook(url).map_err(|e| anyhow::anyhow!("--notify-webhook: {e}"))?;
    }
    for addr in args.notify_email.iter().chain([&args.smtp_from]) {
        check_email(addr).map_err(|e| anyhow::anyhow!("--notify-email/--smtp-from: {e}"))?;
    }
    let events = args
        .notify_events
        .iter()
        .map(|e| NotifyEvent::parse(e.trim()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("--notify-events: {e}"))?;
    let smtp = match &args.smtp_server {
        Some(s) => {
            let (host, port) = s
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
                .filter(|(h, _)| !h.is_empty())
                .ok_or_else(|| anyhow::anyhow!("--smtp-server {s:?}: expected HOST:PORT"))?;
            Some(SmtpConfig {
                host: host.to_string(),
                port,
                from: args.smtp_from.clone(),
            })
        }
        None => None,
    };
    Ok(NotifyConfig {
        defaults: NotifyDefaults {
            webhook: args.notify_webhook.clone(),
            email: args.notify_email.clone(),
            events,
        },
        policy: RetryPolicy {
            attempts: args.notify_attempts,
            backoff_ms: args.notify_backoff_ms,
        },
        smtp,
    })
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Mode {
    Flush,
    Background,
}

fn main() -> anyhow::Result<()> {
    pypelinin_common::init_tracing();
    let args = Args::parse();
    let mut cluster = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str::<ClusterConfig>(&text)
                .with_context(|| format!("parsing {}", path.display()))?
        }
        None => ClusterConfig::default(),
    };
    if let Some(path) = &args.config {
        for (name, slots) in &cluster.pools {
            pypelinin_router::state::check_pool(name, *slots)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("the pools of {}", path.display()))?;
        }
    }
    if let Some(ms) = args.priority_aging_ms {
        cluster.priority_aging_ms = Some(ms);
    }
    let notify = notify_config(&args)?;
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
    let mut router = BoundRouter::bind_secured(config, &security)?;
    router.set_notify(notify);
    router.set_retention(args.retention);
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
