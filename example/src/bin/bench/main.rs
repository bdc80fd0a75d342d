//! The benchmark: the peer harness's scenarios (S1–S5, see `../shared/peers/README.md`),
//! S6 (one-shot command workers running `true`), S7 (the same jobs on a persistent
//! Python worker), S8 (S1's pipelines from the Python package's client) and S9 (Python
//! workers run by the Python package's `Broker`), on a real cluster of separate
//! processes on loopback.
//!
//! `bench` starts itself again in three roles (router, pipeliner, broker), each its own
//! OS process calling the entry point its daemon's binary calls:
//! `pypelinin_router::BoundRouter::bind` then `run`, `pypelinin_pipeliner::run` and
//! `example::run_broker` (the `example-broker` binary). Nothing of a daemon is
//! re-implemented here: only the flags differ. The driver (this
//! process) is the client, timed from the first submit to the last result in hand,
//! exactly as the peers' drivers are.
//!
//! S8 and S9 are issue 11's "Python client" and "persistent Python workers" figures next
//! to the Rust ones: S8's driver is a Python program using `pypelinin.PipelineManager`
//! (`example/bench/python_client.py`, timed by itself), S9's broker is a Python program
//! using `pypelinin.Broker` (`example/bench/python_broker.py`) in place of the Rust
//! broker role. Both need an interpreter that can `import pypelinin` (`--python`); without
//! one they are skipped with a message, so that `--scenario all` runs anywhere.
//!
//! Two scenarios stand apart from `all` and report rows of their own: `scale` (brokers
//! added, `scale.rs`) and `soak` (one router over a long run, `soak.rs`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use clap::{Parser, ValueEnum};
use pypelinin_client::PipelineManager;
use pypelinin_common::protocol::{ClusterConfig, PipelineId, PipelineResult, PoolRequest};
use pypelinin_common::{PipelineSpec, PipelineState, Shutdown};
use serde_json::{json, Value};

mod cluster;
mod python;
mod scale;
mod soak;
use cluster::{BrokerKind, Cluster, CPU_PARTS};

/// The allocator of the `pypelinin-router` binary, whose role the bench's router plays.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Benchmarks the cluster on the peers' scenarios.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Which scenario to run.
    #[arg(long, value_enum, default_value_t = Scenario::All)]
    scenario: Scenario,
    /// The router syncs every change to disk before acknowledging it (the daemon's
    /// default). Default here: written before acknowledged, synced every 500 ms.
    #[arg(long)]
    durable: bool,
    /// Writes the figures as JSON (the shape of the peers' `summary` objects).
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Timed runs per scenario.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Where the two worker slots run jobs: supervised child processes, or threads.
    #[arg(long, value_enum, default_value_t = Iso::Process)]
    isolation: Iso,
    /// Most jobs the broker holds queued beyond its slots (default: the broker's
    /// default, 32 per slot).
    #[arg(long)]
    prefetch: Option<usize>,
    /// How long a broker's report may wait for others while its queue is full (default:
    /// the broker's default); 0 measures every report sent at once.
    #[arg(long)]
    report_linger_ms: Option<u64>,
    /// The Python interpreter of S8 and S9, which must be able to `import pypelinin`
    /// (default: $PYPELININ_PYTHON, else the workspace's target/py-venv/bin/python if
    /// present, else python3).
    #[arg(long)]
    python: Option<std::path::PathBuf>,
    /// Every connection with CURVE (authenticated, encrypted), keys made for the run, to
    /// measure what it costs. The Python scenarios (S8, S9) are skipped: their processes
    /// take no keys here.
    #[arg(long)]
    curve: bool,
    /// Scale: the broker counts to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16")]
    brokers: Vec<usize>,
    /// Scale: the job lengths to run, in ms, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10,1")]
    job_ms: Vec<u64>,
    /// Soak: how many three-job pipelines to run through the one router.
    #[arg(long, default_value_t = 1_000_000)]
    pipelines: usize,
    /// Soak: a row (router memory, throughput, disk) every this many pipelines finished.
    #[arg(long, default_value_t = 100_000)]
    every: usize,
    /// The router deletes finished history older than this (`30s`, `10m`, `1h`), as the
    /// daemon's `--retention` does (`BoundRouter::set_retention`); default: it keeps
    /// everything. Any scenario's
    /// router takes it; the soak scenario is the one that shows its effect on disk and
    /// memory.
    #[arg(long, value_parser = humantime::parse_duration)]
    retention: Option<Duration>,
    /// Internal: slots of a broker role.
    #[arg(long, hide = true)]
    slots: Option<usize>,
    /// Internal: run as one daemon of the benchmark cluster.
    #[arg(long, hide = true, value_enum)]
    role: Option<Role>,
    #[arg(long, hide = true, default_value = "tcp://127.0.0.1:0")]
    api: String,
    #[arg(long, hide = true, default_value = "tcp://127.0.0.1:0")]
    broadcast: String,
    #[arg(long, hide = true)]
    db: Option<std::path::PathBuf>,
    // The roles' keys (with --curve), as flags only: the driver's environment must not
    // give a role keys the others lack.
    #[arg(long, hide = true)]
    authorized_keys: Option<std::path::PathBuf>,
    #[arg(long, hide = true)]
    curve_secret: Option<std::path::PathBuf>,
    #[arg(long, hide = true)]
    router_key: Option<String>,
}

impl Args {
    fn member_security(&self) -> anyhow::Result<pypelinin_common::curve::Security> {
        Ok(pypelinin_common::curve::Security::client_from(
            self.curve_secret.as_deref(),
            self.router_key.as_deref(),
        )?)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    S1,
    S2,
    S3,
    S4,
    S5,
    /// One-shot command jobs: 1,000 one-job pipelines whose worker runs `true`.
    S6,
    /// Persistent command jobs: 1,000 one-job pipelines on a long-lived Python process
    /// per slot (`Persist`), to compare a job's cost with S6's process per job.
    S7,
    /// The Python client: S1's one-job `Step` pipelines (1,000 of them), submitted and
    /// awaited by a Python program through `pypelinin.PipelineManager`.
    S8,
    /// Python workers: 1,000 one-job pipelines of the Python worker `PyStep`, run by
    /// `pypelinin.Broker` (one long-lived Python process per slot) in place of the Rust
    /// broker, submitted by the Rust client.
    S9,
    /// Pools and priorities: S1's one-job pipelines run twice on the same cluster, once
    /// plain and once spread over three pools with mixed pipeline priorities and job
    /// weights; reports both rates and the router's CPU per job of each, and their
    /// difference: the dispatch overhead of pools and priorities.
    S10,
    /// Scale-out (not part of `all`): one pipeline of independent `Sleep` jobs on 1, 2,
    /// 4, 8 and 16 brokers of 4 slots (`--brokers`, `--job-ms`), against the ideal rate
    /// brokers × 4 × 1000 / ms.
    Scale,
    /// Soak (issue 14; not part of `all`): `--pipelines` three-job `Noop` chains (a → b
    /// → c) through one router, a bounded window in flight; every `--every` pipelines
    /// finished, a row of the router's current memory, the interval's jobs/s and the
    /// router's disk use, to show whether the router stays flat over a long run.
    Soak,
    All,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Role {
    Router,
    Pipeliner,
    Broker,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Iso {
    Process,
    Thread,
}

/// Worker slots in the whole cluster, as the peers' two worker processes.
pub(crate) const SLOTS: usize = 2;

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
            let security = pypelinin_common::curve::Security::server_from(
                args.curve_secret.as_deref(),
                args.authorized_keys.as_deref(),
            )?;
            let config = pypelinin_router::RouterConfig {
                api: args.api.clone(),
                broadcast: args.broadcast.clone(),
                db: args.db.clone().context("--db")?,
                cluster: ClusterConfig::default(),
                durability: if args.durable {
                    pypelinin_router::Durability::Flush
                } else {
                    pypelinin_router::Durability::Background
                },
            };
            let mut router = pypelinin_router::BoundRouter::bind_secured(config, &security)?;
            if let Some(retention) = args.retention {
                router.set_retention(Some(retention));
            }
            println!(
                "router listening api={} broadcast={}",
                router.api_endpoint, router.broadcast_endpoint
            );
            router.run(shutdown)?;
        }
        Role::Pipeliner => pypelinin_pipeliner::run_secured(
            pypelinin_pipeliner::PipelinerConfig {
                api: args.api.clone(),
                capacity: pypelinin_pipeliner::DEFAULT_CAPACITY,
            },
            &args.member_security()?,
            shutdown,
        )?,
        Role::Broker => {
            let mut config = pypelinin_broker::BrokerConfig::new(&args.api);
            config.slots = args.slots.unwrap_or(SLOTS);
            config.drain_timeout = Duration::from_secs(2);
            config.prefetch = args.prefetch;
            if let Some(ms) = args.report_linger_ms {
                config.report_linger = Duration::from_millis(ms);
            }
            config.security = args.member_security()?;
            config.isolation = match args.isolation {
                Iso::Process => pypelinin_broker::Isolation::Process,
                Iso::Thread => pypelinin_broker::Isolation::Thread,
            };
            example::run_broker(config, shutdown)?;
        }
    }
    Ok(())
}

/// One timed run's figures.
#[derive(Default, Clone)]
struct Run {
    metrics: BTreeMap<&'static str, f64>,
}

fn chain(len: usize, i: usize) -> PipelineSpec {
    let mut p = PipelineSpec::default().with_data("i", json!(i));
    for k in 0..len {
        let prev = format!("s{}", k.wrapping_sub(1));
        let after: Vec<&str> = if k == 0 { vec![] } else { vec![prev.as_str()] };
        p = p.job(&format!("s{k}"), "Step", &after);
    }
    p
}

fn diamond(i: usize) -> PipelineSpec {
    PipelineSpec::default()
        .with_data("i", json!(i))
        .job("a", "Step", &[])
        .job("b", "Step", &["a"])
        .job("c", "Step", &["a"])
        .job("d", "Join", &["b", "c"])
}

fn fan(width: usize, i: usize) -> PipelineSpec {
    let mut p = PipelineSpec::default()
        .with_data("i", json!(i))
        .job("root", "Step", &[]);
    let names: Vec<String> = (0..width).map(|k| format!("f{k:04}")).collect();
    for n in &names {
        p = p.job(n, "Step", &["root"]);
    }
    let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
    p.job("join", "Join", &refs)
}

/// S1's pipeline: one `Step` job, numbered `i`.
fn one_step(i: usize) -> PipelineSpec {
    PipelineSpec::default()
        .with_data("i", json!(i))
        .job("a", "Step", &[])
}

/// The pools of S10. Each is larger than all the jobs the cluster holds at once (its
/// slots and the brokers' prefetch queue, which hold pool slots too): they order and
/// count the work without capping it, so the figure is what the machinery costs, not
/// the wait for a full pool.
const S10_POOLS: [&str; 3] = ["db", "api", "cpu"];
/// Capacity of each S10 pool.
const S10_POOL_SLOTS: u32 = 1_000;

/// Checks a result's output like the peers do: count, `n`, `k`, and `i` not mixed up.
fn check(r: &PipelineResult, job: &str, i: usize, n: u64, k: Option<u64>) -> anyhow::Result<()> {
    ensure!(
        r.state == PipelineState::Succeeded,
        "pipeline {} {:?}: {:?}",
        r.id,
        r.state,
        r.failed
    );
    let out = r
        .outputs
        .get(job)
        .with_context(|| format!("no output for {job}"))?;
    ensure!(
        out.get("n") == Some(&Value::from(n)),
        "{job}: n = {:?}, want {n}",
        out.get("n")
    );
    ensure!(
        out.get("i") == Some(&Value::from(i)),
        "{job}: i = {:?}, want {i}",
        out.get("i")
    );
    if let Some(k) = k {
        ensure!(
            out.get("k") == Some(&Value::from(k)),
            "{job}: k = {:?}, want {k}",
            out.get("k")
        );
    }
    Ok(())
}

/// Submits every pipeline (one submit call each), then waits for all results.
fn submit_and_collect(
    pm: &mut PipelineManager,
    specs: &[PipelineSpec],
) -> anyhow::Result<(Vec<PipelineResult>, f64, f64)> {
    let t0 = Instant::now();
    let ids: Vec<PipelineId> = specs
        .iter()
        .map(|s| pm.start_async(s))
        .collect::<Result<_, _>>()?;
    pm.confirm()?;
    let submit = t0.elapsed().as_secs_f64();
    let results = pm.results(&ids, Duration::from_secs(120))?;
    Ok((results, t0.elapsed().as_secs_f64(), submit))
}

/// One run of `s` on `c`; `interp` is the Python interpreter of S8.
fn run_scenario(
    c: &Cluster,
    s: Scenario,
    warm: bool,
    interp: &std::path::Path,
) -> anyhow::Result<Run> {
    let mut pm = c.client()?;
    let cpu0 = c.cpu_seconds();
    // CPU seconds to add to the driver's part: S8's Python client, as it measured itself.
    let mut client_cpu = 0.0;
    let mut run = Run::default();
    let jobs: f64;
    match s {
        Scenario::S1 => {
            let n = if warm { 200 } else { 5000 };
            let specs: Vec<_> = (0..n).map(one_step).collect();
            let (results, wall, submit) = submit_and_collect(&mut pm, &specs)?;
            for (i, r) in results.iter().enumerate() {
                check(r, "a", i, 1, None)?;
            }
            jobs = n as f64;
            run.metrics.insert("jobs_per_s", jobs / wall);
            run.metrics.insert("submit_s", submit);
        }
        Scenario::S2 => {
            let n = if warm { 20 } else { 500 };
            let specs: Vec<_> = (0..n).map(|i| chain(3, i)).collect();
            let (results, wall, _) = submit_and_collect(&mut pm, &specs)?;
            for (i, r) in results.iter().enumerate() {
                check(r, "s2", i, 3, None)?;
            }
            jobs = 3.0 * n as f64;
            run.metrics.insert("pipelines_per_s", n as f64 / wall);
            run.metrics.insert("jobs_per_s", jobs / wall);
        }
        Scenario::S3 => {
            let n = if warm { 10 } else { 300 };
            let specs: Vec<_> = (0..n).map(diamond).collect();
            let (results, wall, _) = submit_and_collect(&mut pm, &specs)?;
            for (i, r) in results.iter().enumerate() {
                check(r, "d", i, 3, Some(2))?;
            }
            jobs = 4.0 * n as f64;
            run.metrics.insert("pipelines_per_s", n as f64 / wall);
            run.metrics.insert("jobs_per_s", jobs / wall);
        }
        Scenario::S4 => {
            let width = if warm { 20 } else { 500 };
            let (results, wall, _) = submit_and_collect(&mut pm, &[fan(width, 7)])?;
            check(&results[0], "join", 7, 3, Some(width as u64))?;
            ensure!(
                results[0].outputs.len() == width + 2,
                "every fan-out output present"
            );
            jobs = (width + 2) as f64;
            run.metrics.insert("total_s", wall);
            run.metrics.insert("jobs_per_s", jobs / wall);
        }
        Scenario::S5 => {
            let times = if warm { 3 } else { 20 };
            let mut ms = Vec::with_capacity(times);
            for i in 0..times {
                let t0 = Instant::now();
                let id = pm.start(&chain(10, i))?;
                let r = pm.results(&[id], Duration::from_secs(60))?;
                ms.push(t0.elapsed().as_secs_f64() * 1000.0);
                check(&r[0], "s9", i, 10, None)?;
            }
            ms.sort_by(f64::total_cmp);
            let median = (ms[times / 2 - 1] + ms[times / 2]) / 2.0;
            let p95 = ms[((times as f64 * 0.95).ceil() as usize).max(1) - 1];
            jobs = 10.0 * times as f64;
            run.metrics.insert("median_ms", median);
            run.metrics.insert("p95_ms", p95);
            run.metrics.insert("per_hop_ms", median / 10.0);
        }
        Scenario::S8 => {
            let n = if warm { 50 } else { 1000 };
            let (wall, submit, cpu) = python::s8(c, interp, n)?;
            client_cpu = cpu;
            jobs = n as f64;
            run.metrics.insert("jobs_per_s", jobs / wall);
            run.metrics.insert("submit_s", submit);
        }
        Scenario::S6 | Scenario::S7 | Scenario::S9 => {
            let worker = match s {
                Scenario::S6 => "True",
                Scenario::S7 => "Persist",
                _ => "PyStep",
            };
            let n = if warm { 50 } else { 1000 };
            let specs: Vec<_> = (0..n)
                .map(|i| {
                    PipelineSpec::default()
                        .with_data("i", json!(i))
                        .job("t", worker, &[])
                })
                .collect();
            let (results, wall, _) = submit_and_collect(&mut pm, &specs)?;
            for (i, r) in results.iter().enumerate() {
                if s == Scenario::S9 {
                    // PyStep answers like Step: its output is checked as S1's is.
                    check(r, "t", i, 1, None)?;
                }
                ensure!(
                    r.state == PipelineState::Succeeded,
                    "a command job did not succeed: {:?}",
                    r.failed
                );
            }
            jobs = n as f64;
            run.metrics.insert("jobs_per_s", jobs / wall);
        }
        Scenario::S10 => {
            let n = if warm { 200 } else { 5000 };
            for name in S10_POOLS {
                pm.pools(PoolRequest::Set {
                    name: name.into(),
                    slots: S10_POOL_SLOTS,
                })?;
            }
            let plain: Vec<_> = (0..n).map(one_step).collect();
            let pooled: Vec<_> = (0..n)
                .map(|i| {
                    let mut s = one_step(i);
                    s.priority = (i % 7) as i64 - 3;
                    if let Some(j) = s.jobs.get_mut("a") {
                        j.pool = Some(S10_POOLS[i % S10_POOLS.len()].into());
                        j.priority_weight = Some((i % 5) as i64);
                    }
                    s
                })
                .collect();
            let c0 = c.cpu_seconds();
            let (results, plain_wall, _) = submit_and_collect(&mut pm, &plain)?;
            for (i, r) in results.iter().enumerate() {
                check(r, "a", i, 1, None)?;
            }
            let c1 = c.cpu_seconds();
            let (results, wall, _) = submit_and_collect(&mut pm, &pooled)?;
            for (i, r) in results.iter().enumerate() {
                check(r, "a", i, 1, None)?;
            }
            let c2 = c.cpu_seconds();
            let router_us = |a: [f64; 4], b: [f64; 4]| (b[0] - a[0]) * 1e6 / n as f64;
            jobs = 2.0 * n as f64;
            run.metrics
                .insert("plain_jobs_per_s", n as f64 / plain_wall);
            run.metrics.insert("jobs_per_s", n as f64 / wall);
            run.metrics
                .insert("router_us_per_job_plain", router_us(c0, c1));
            run.metrics.insert("router_us_per_job", router_us(c1, c2));
            run.metrics.insert(
                "dispatch_overhead_us_per_job",
                router_us(c1, c2) - router_us(c0, c1),
            );
        }
        Scenario::Scale | Scenario::Soak | Scenario::All => bail!("not a single scenario"),
    }
    let mut cpu1 = c.cpu_seconds();
    cpu1[3] += client_cpu;
    let per_job = |k: usize| (cpu1[k] - cpu0[k]) * 1000.0 / jobs;
    run.metrics
        .insert("cpu_ms_per_job", (0..4).map(per_job).sum());
    for (k, key) in CPU_PARTS.iter().enumerate() {
        run.metrics.insert(key, per_job(k));
    }
    Ok(run)
}

fn stats(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let med = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    (v[0], med, v[v.len() - 1])
}

fn fmt(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

fn drive(args: &Args) -> anyhow::Result<()> {
    let mut scenarios = match args.scenario {
        Scenario::All => vec![
            Scenario::S1,
            Scenario::S2,
            Scenario::S3,
            Scenario::S4,
            Scenario::S5,
            Scenario::S6,
            Scenario::S7,
            Scenario::S8,
            Scenario::S9,
            Scenario::S10,
        ],
        Scenario::Scale => return scale::drive(args),
        Scenario::Soak => return soak::drive(args),
        s => vec![s],
    };
    let python = python::interpreter(args.python.as_deref());
    if args.curve {
        let python = |s: &Scenario| matches!(s, Scenario::S8 | Scenario::S9);
        if scenarios.iter().any(python) {
            println!("S8 and S9 skipped: --curve");
            scenarios.retain(|s| !python(s));
        }
    }
    if scenarios
        .iter()
        .any(|s| matches!(s, Scenario::S8 | Scenario::S9))
    {
        if let Err(why) = python::check_pypelinin(&python) {
            let (skipped, kept) = scenarios
                .into_iter()
                .partition::<Vec<_>, _>(|s| matches!(s, Scenario::S8 | Scenario::S9));
            let names: Vec<String> = skipped.iter().map(|s| format!("{s:?}")).collect();
            println!("{} skipped: {why}", names.join(" and "));
            scenarios = kept;
        }
    }
    let started = Instant::now();
    println!(
        "pypelinin bench: {} runs per scenario, {} worker slots ({:?} isolation), router durability: {}",
        args.runs,
        SLOTS,
        args.isolation,
        if args.durable { "journal synced before every acknowledgement (--durable)" } else { "journal synced every 500 ms (default)" }
    );
    let mut summary = serde_json::Map::new();
    let mut table: Vec<(String, String, String)> = Vec::new();
    let mut peak_rss = 0;
    for s in scenarios {
        // A fresh cluster per scenario, as the peers get.
        let broker = if s == Scenario::S9 {
            BrokerKind::Python(python.clone())
        } else {
            BrokerKind::Rust
        };
        let c = Cluster::start(args, broker).with_context(|| format!("{s:?} cluster"))?;
        run_scenario(&c, s, true, &python).with_context(|| format!("{s:?} warm-up"))?;
        let mut runs = Vec::new();
        for _ in 0..args.runs {
            runs.push(run_scenario(&c, s, false, &python).with_context(|| format!("{s:?}"))?);
        }
        peak_rss = peak_rss.max(c.router_peak_rss_kb());
        let name = format!("{s:?}");
        let mut obj = serde_json::Map::new();
        for key in runs[0].metrics.keys() {
            let mut v: Vec<f64> = runs.iter().map(|r| r.metrics[key]).collect();
            let (min, med, max) = stats(&mut v);
            obj.insert(
                (*key).to_string(),
                json!({"min": min, "median": med, "max": max}),
            );
            table.push((
                name.clone(),
                key.to_string(),
                format!("{} / {} / {}", fmt(min), fmt(med), fmt(max)),
            ));
        }
        summary.insert(name, Value::Object(obj));
    }
    summary.insert("router_peak_rss_mb".into(), json!(peak_rss as f64 / 1024.0));
    summary.insert("durable".into(), json!(args.durable));
    summary.insert(
        "isolation".into(),
        json!(format!("{:?}", args.isolation).to_lowercase()),
    );
    println!("\n{:<9} {:<16} min / median / max", "scenario", "metric");
    for (s, k, v) in &table {
        println!("{s:<9} {k:<16} {v}");
    }
    println!("router peak memory: {:.1} MiB", peak_rss as f64 / 1024.0);
    println!("total time: {:.1} s", started.elapsed().as_secs_f64());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&Value::Object(summary))?)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
