//! `schedbench`: many schedules ticking every second on one router (issue 12's
//! measurement). It starts a real cluster of separate processes on loopback (this
//! binary again in the roles router, pipeliner and broker, each calling the entry point
//! its daemon's binary calls), adds `--schedules` every-second schedules of a one-job
//! pipeline, lets them tick for `--seconds`, and reports:
//!
//! - the router's CPU over the ticking window, as a share of one core;
//! - how late each run was made: its submission time minus its logical date (the tick
//!   it belongs to), p50, p99 and max;
//! - runs made against the ticks that fell in the window, and how many runs ended.
//!
//! Then, as the baseline, the same load without schedules on a fresh cluster: the
//! driver itself submits one pipeline per schedule at every whole second (`--baseline`
//! alone runs only that), so the router's CPU for ticking is read against its CPU for
//! the same pipelines submitted by a client, in the same sitting.
//!
//! Run it with `cargo run --release -p example --bin schedbench`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use clap::{Parser, ValueEnum};
use pypelinin_client::PipelineManager;
use pypelinin_common::protocol::{ClusterConfig, ScheduleRequest};
use pypelinin_common::schedule::{OverrunPolicy, ScheduleSpec};
use pypelinin_common::{PipelineSpec, Shutdown};

/// Many schedules ticking every second on one router.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Schedules to add, each ticking every second.
    #[arg(long, default_value_t = 1000)]
    schedules: usize,
    /// How long to let them tick.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Only the baseline: the driver submits the pipelines at each second itself.
    #[arg(long)]
    baseline: bool,
    /// Only the schedules, no baseline.
    #[arg(long, conflicts_with = "baseline")]
    no_baseline: bool,
    /// Worker slots of the one broker.
    #[arg(long, default_value_t = 2)]
    slots: usize,
    /// Internal: run as one daemon of the cluster.
    #[arg(long, hide = true, value_enum)]
    role: Option<Role>,
    #[arg(long, hide = true, default_value = "tcp://127.0.0.1:0")]
    api: String,
    #[arg(long, hide = true, default_value = "tcp://127.0.0.1:0")]
    broadcast: String,
    #[arg(long, hide = true)]
    db: Option<std::path::PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Role {
    Router,
    Pipeliner,
    Broker,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if std::env::var_os("RUST_LOG").is_none() {
        std::env::set_var("RUST_LOG", "error");
    }
    pypelinin_common::init_tracing();
    match args.role {
        Some(role) => run_role(role, &args),
        None => drive(&args),
    }
}

fn run_role(role: Role, args: &Args) -> anyhow::Result<()> {
    let shutdown = Shutdown::on_signals()?;
    match role {
        Role::Router => {
            let router = pypelinin_router::BoundRouter::bind(pypelinin_router::RouterConfig {
                api: args.api.clone(),
                broadcast: args.broadcast.clone(),
                db: args.db.clone().context("--db")?,
                cluster: ClusterConfig::default(),
                durability: pypelinin_router::Durability::Flush,
            })?;
            println!(
                "router listening api={} broadcast={}",
                router.api_endpoint, router.broadcast_endpoint
            );
            router.run(shutdown)?;
        }
        Role::Pipeliner => pypelinin_pipeliner::run(
            pypelinin_pipeliner::PipelinerConfig {
                api: args.api.clone(),
                capacity: pypelinin_pipeliner::DEFAULT_CAPACITY,
            },
            shutdown,
        )?,
        Role::Broker => {
            let mut config = pypelinin_broker::BrokerConfig::new(&args.api);
            config.slots = args.slots;
            config.isolation = pypelinin_broker::Isolation::Thread;
            example::run_broker(config, shutdown)?;
        }
    }
    Ok(())
}

/// The daemons, stopped by PID when dropped.
struct Daemons(Vec<Child>);

impl Drop for Daemons {
    fn drop(&mut self) {
        for c in self.0.iter_mut().rev() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces, so cut at its ')'):
    // utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let t = |k: usize| f.get(k).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let k = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[k]
}

fn drive(args: &Args) -> anyhow::Result<()> {
    let mut reports = Vec::new();
    if !args.baseline {
        reports.push(("schedules", measure(args, false)?));
    }
    if !args.no_baseline {
        reports.push(("baseline (client submits)", measure(args, true)?));
    }
    if let [(_, s), (_, b)] = &reports[..] {
        let share =
            |r: &serde_json::Value| r["router_cpu_share_of_one_core"].as_f64().unwrap_or(0.0);
        println!(
            "router CPU, schedules / client submitting the same pipelines: {:.2}",
            share(s) / share(b).max(1e-9)
        );
    }
    Ok(())
}

/// One measurement on a fresh cluster: the schedules tick (or, for the baseline, the
/// driver submits the same pipelines at each second); its report.
fn measure(args: &Args, baseline: bool) -> anyhow::Result<serde_json::Value> {
    let dir = tempfile::tempdir()?;
    let exe = std::env::current_exe()?;
    let mut router = Command::new(&exe)
        .args(["--role", "router", "--db"])
        .arg(dir.path().join("db"))
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(router.stdout.take().context("router stdout")?).read_line(&mut line)?;
    let field = |k: &str| -> anyhow::Result<String> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .map(str::to_string)
            .with_context(|| format!("router said {line:?}"))
    };
    let (api, broadcast) = (field("api=")?, field("broadcast=")?);
    let router_pid = router.id();
    let mut daemons = Daemons(vec![router]);
    for role in ["pipeliner", "broker"] {
        daemons.0.push(
            Command::new(&exe)
                .args(["--role", role, "--api", &api, "--broadcast", &broadcast])
                .args(["--slots", &args.slots.to_string()])
                .spawn()?,
        );
    }
    let mut pm = PipelineManager::connect(&api, &broadcast)?;
    let template = PipelineSpec::default().job("a", "Noop", &[]);
    let added = Instant::now();
    for k in 0..if baseline { 0 } else { args.schedules } {
        pm.schedules(ScheduleRequest::Add(ScheduleSpec {
            name: format!("s{k:05}"),
            cron: "* * * * * *".into(),
            timezone: None,
            pipeline: template.clone(),
            start_ms: None,
            end_ms: None,
            catchup: false,
            overrun: OverrunPolicy::Skip,
            max_running: 1,
        }))?;
    }
    if baseline {
        println!(
            "baseline: the client submits {} one-job pipelines at every second for {} s ({} broker slots)",
            args.schedules, args.seconds, args.slots
        );
    } else {
        println!(
            "schedules: {} every-second schedules added in {:.2} s; ticking for {} s ({} broker slots)",
            args.schedules,
            added.elapsed().as_secs_f64(),
            args.seconds,
            args.slots
        );
    }
    // The window starts at the next whole second, so it holds whole ticks.
    let now = pypelinin_common::now_ms();
    let window_start = now - now % 1000 + 1000;
    std::thread::sleep(Duration::from_millis(window_start - now));
    let cpu0 = cpu_seconds(router_pid);
    let t0 = Instant::now();
    let mut submitted: Vec<(pypelinin_common::PipelineId, u64)> = Vec::new();
    if baseline {
        for second in 0..args.seconds {
            let tick = window_start + second * 1000;
            let wait = tick.saturating_sub(pypelinin_common::now_ms());
            std::thread::sleep(Duration::from_millis(wait));
            for _ in 0..args.schedules {
                submitted.push((pm.start_async(&template)?, tick));
            }
            pm.confirm()?;
        }
        let end = window_start + args.seconds * 1000;
        std::thread::sleep(Duration::from_millis(
            end.saturating_sub(pypelinin_common::now_ms()),
        ));
    } else {
        std::thread::sleep(Duration::from_secs(args.seconds));
    }
    let cpu = cpu_seconds(router_pid) - cpu0;
    let wall = t0.elapsed().as_secs_f64();
    let window_end = window_start + args.seconds * 1000;
    for k in 0..if baseline { 0 } else { args.schedules } {
        pm.schedules(ScheduleRequest::Pause {
            name: format!("s{k:05}"),
        })?;
    }
    let list = pm.list_where(u32::MAX, None, None)?;
    let ticks_of: std::collections::HashMap<_, _> = submitted.into_iter().collect();
    let mut late: Vec<u64> = Vec::new();
    let mut ended = 0usize;
    for p in &list {
        let tick = match &p.origin {
            Some(o) => o.logical_date,
            None => match ticks_of.get(&p.id) {
                Some(t) => *t,
                None => continue,
            },
        };
        if tick < window_start || tick >= window_end {
            continue;
        }
        late.push(p.submitted_ms.saturating_sub(tick));
        if p.state.is_final() {
            ended += 1;
        }
    }
    late.sort_unstable();
    let ticks = args.schedules as u64 * args.seconds;
    ensure!(!late.is_empty(), "no run was made in the window");
    let report = serde_json::json!({
        "mode": if baseline { "baseline" } else { "schedules" },
        "schedules": args.schedules,
        "seconds": args.seconds,
        "ticks_in_window": ticks,
        "runs_made": late.len(),
        "runs_ended": ended,
        "router_cpu_share_of_one_core": cpu / wall,
        "lateness_ms": {
            "p50": percentile(&late, 0.50),
            "p99": percentile(&late, 0.99),
            "max": late.last().copied().unwrap_or(0),
        },
    });
    println!(
        "  runs made: {} of {} ticks ({} ended; a tick whose previous run still goes is skipped)",
        late.len(),
        ticks,
        ended
    );
    println!(
        "  router CPU: {:.1}% of one core over {:.1} s",
        100.0 * cpu / wall,
        wall
    );
    println!(
        "  lateness of the run after its tick: p50 {} ms, p99 {} ms, max {} ms",
        percentile(&late, 0.50),
        percentile(&late, 0.99),
        late.last().copied().unwrap_or(0)
    );
    println!("{report}");
    drop(daemons);
    Ok(report)
}
