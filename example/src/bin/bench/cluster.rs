//! The benchmark's cluster: a router, a pipeliner and one broker, each this executable
//! started again in its role (or, for S9, the broker a Python program that runs
//! `pypelinin.Broker`), as separate processes on loopback; and what they cost in CPU,
//! read from `/proc`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use pypelinin_client::PipelineManager;
use pypelinin_common::curve::{encode_key, public_path, KeyPair, Security};
use pypelinin_common::PipelineSpec;
use serde_json::json;

use crate::{Args, SLOTS};

/// Which broker the cluster runs.
pub enum BrokerKind {
    /// The bench itself in its broker role: the example's Rust workers.
    Rust,
    /// `example/bench/python_broker.py` run by this Python interpreter: the package's
    /// `Broker` with the Python worker `PyStep` (S9). Its worker processes are its
    /// children, so [`Cluster::cpu_seconds`] counts them as it counts slot processes.
    Python(PathBuf),
}

/// A benchmark cluster: router, pipeliner and brokers (one with two slots, but for the
/// scale-out scenario).
pub struct Cluster {
    procs: Vec<Child>,
    api: String,
    broadcast: String,
    security: Security,
    /// Holds the router's database (`db`) and, with `--curve`, the run's keys; removed on drop.
    dir: tempfile::TempDir,
}

/// With `--curve`: a router pair and a member pair under `dir`, the member authorized;
/// the flags of the router and of a member.
fn curve_flags(dir: &Path) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let (router, member) = (dir.join("router.key"), dir.join("member.key"));
    KeyPair::generate()?.write(&router)?;
    let pair = KeyPair::generate()?;
    pair.write(&member)?;
    let authorized = dir.join("authorized_keys");
    std::fs::write(&authorized, encode_key(&pair.public))?;
    let s = |p: &Path| p.display().to_string();
    Ok((
        vec![
            "--curve-secret".into(),
            s(&router),
            "--authorized-keys".into(),
            s(&authorized),
        ],
        vec![
            "--curve-secret".into(),
            s(&member),
            "--router-key".into(),
            s(&public_path(&router)),
        ],
    ))
}

impl Cluster {
    pub fn start(args: &Args, broker: BrokerKind) -> anyhow::Result<Cluster> {
        Cluster::start_with(args, broker, 1, SLOTS)
    }

    /// A cluster of `brokers` brokers of `slots` slots each (Rust brokers only).
    pub fn start_with(
        args: &Args,
        broker: BrokerKind,
        brokers: usize,
        slots: usize,
    ) -> anyhow::Result<Cluster> {
        let dir = tempfile::tempdir()?;
        let exe = std::env::current_exe()?;
        let mut common: Vec<String> = vec![
            "--isolation".into(),
            format!("{:?}", args.isolation).to_lowercase(),
        ];
        if args.durable {
            common.push("--durable".into());
        }
        if let Some(n) = args.prefetch {
            common.extend(["--prefetch".into(), n.to_string()]);
        }
        if let Some(ms) = args.report_linger_ms {
            common.extend(["--report-linger-ms".into(), ms.to_string()]);
        }
        let (router_keys, member_keys) = match args.curve {
            true => curve_flags(dir.path())?,
            false => (vec![], vec![]),
        };
        let security = match args.curve {
            true => Security::client_from(
                Some(Path::new(&member_keys[1])),
                Some(member_keys[3].as_str()),
            )?,
            false => Security::None,
        };
        let mut router_only = router_keys;
        if let Some(d) = args.retention {
            router_only.extend([
                "--retention".into(),
                humantime::format_duration(d).to_string(),
            ]);
        }
        let router = Command::new(&exe)
            .args(["--role", "router", "--db"])
            .arg(dir.path().join("db"))
            .args(&common)
            .args(&router_only)
            .stdout(Stdio::piped())
            .spawn()?;
        // Each process is pushed as soon as it is spawned, so that Drop stops whatever
        // did start if anything later fails (the router's first line included).
        let mut c = Cluster {
            procs: vec![router],
            api: String::new(),
            broadcast: String::new(),
            security,
            dir,
        };
        let mut line = String::new();
        BufReader::new(c.procs[0].stdout.take().context("router stdout")?).read_line(&mut line)?;
        let field = |k: &str| -> anyhow::Result<String> {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .map(str::to_string)
                .with_context(|| format!("router said {line:?}"))
        };
        (c.api, c.broadcast) = (field("api=")?, field("broadcast=")?);
        let (api, broadcast) = (c.api.clone(), c.broadcast.clone());
        c.procs.push(
            Command::new(&exe)
                .args([
                    "--role",
                    "pipeliner",
                    "--api",
                    &api,
                    "--broadcast",
                    &broadcast,
                ])
                .args(&common)
                .args(&member_keys)
                .spawn()?,
        );
        let ready = match &broker {
            BrokerKind::Rust => {
                for _ in 0..brokers {
                    c.procs.push(
                        Command::new(&exe)
                            .args(["--role", "broker", "--api", &api, "--broadcast", &broadcast])
                            .args(["--slots", &slots.to_string()])
                            .args(&common)
                            .args(&member_keys)
                            .spawn()?,
                    );
                }
                PipelineSpec::default().job("a", "Noop", &[])
            }
            BrokerKind::Python(python) => {
                let dir = crate::python::scripts_dir();
                c.procs.push(
                    Command::new(python)
                        .arg(dir.join("python_broker.py"))
                        .args(["--api", &api, "--broadcast", &broadcast])
                        .args(["--workers", &SLOTS.to_string()])
                        .current_dir(&dir)
                        .stdin(Stdio::null())
                        .spawn()
                        .with_context(|| format!("starting {}", python.display()))?,
                );
                PipelineSpec::default()
                    .with_data("i", json!(0))
                    .job("a", "PyStep", &[])
            }
        };
        // Ready when a job goes through.
        let mut pm = c.client()?;
        let id = pm.start(&ready)?;
        ensure!(
            pm.wait(id, Duration::from_secs(30))?.is_success(),
            "warm-up job failed"
        );
        // ... and every broker has joined.
        let deadline = Instant::now() + Duration::from_secs(30);
        while pm.brokers()?.len() < brokers {
            ensure!(Instant::now() < deadline, "not every broker joined");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(c)
    }

    pub fn client(&self) -> anyhow::Result<PipelineManager> {
        Ok(PipelineManager::connect_with(
            &self.api,
            &self.broadcast,
            &self.security,
        )?)
    }

    /// The router's API and broadcast endpoints, for clients in other processes.
    pub fn endpoints(&self) -> (&str, &str) {
        (&self.api, &self.broadcast)
    }

    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(|c| c.id()).collect()
    }

    /// CPU seconds used so far by each part of the cluster: the router, the pipeliner,
    /// the broker with its slot processes, and this driver (the client).
    /// Every broker counts in the broker part.
    pub fn cpu_seconds(&self) -> [f64; 4] {
        let p = self.pids();
        // The broker, its slot processes, and theirs that still run: the long-lived
        // processes of persistent workers (S7); commands that ended are counted in
        // their parent's cutime. A Python broker (S9) has no slot processes: its
        // children are its worker processes.
        let slots = children_of(&p[2..]);
        let broker: f64 = children_of(&slots)
            .into_iter()
            .chain(slots)
            .chain(p[2..].iter().copied())
            .map(proc_cpu_seconds)
            .sum();
        [
            proc_cpu_seconds(p[0]),
            proc_cpu_seconds(p[1]),
            broker,
            proc_cpu_seconds(std::process::id()),
        ]
    }

    pub fn router_peak_rss_kb(&self) -> u64 {
        self.router_status_kb("VmHWM:")
    }

    /// Starts the router's peak resident memory (VmHWM) afresh from what it holds now
    /// (Linux's `clear_refs` 5), so that the next [`Cluster::router_peak_rss_kb`] is
    /// the peak since this call. False if the kernel refused.
    pub fn reset_router_peak_rss(&self) -> bool {
        std::fs::write(format!("/proc/{}/clear_refs", self.procs[0].id()), "5").is_ok()
    }

    /// The router's resident memory now (VmRSS), in KiB: unlike the peak, it falls when
    /// the router frees memory, which is what a soak run watches.
    pub fn router_rss_kb(&self) -> u64 {
        self.router_status_kb("VmRSS:")
    }

    /// A KiB figure of the router's /proc/PID/status (0 if unreadable).
    fn router_status_kb(&self, field: &str) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.procs[0].id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with(field))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
    }

    /// The router's CPU seconds so far (user and system), without the rest of the
    /// cluster's.
    pub fn router_cpu_seconds(&self) -> f64 {
        proc_cpu_seconds(self.procs[0].id())
    }

    /// The router's `--db` directory: what its disk use is measured over.
    pub fn router_db(&self) -> PathBuf {
        self.dir.path().join("db")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in self.procs.iter().rev() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for c in self.procs.iter_mut().rev() {
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn children_of(pids: &[u32]) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Some(ppid) =
            proc_stat(pid).and_then(|f| f.get(1).and_then(|p| p.parse::<u32>().ok()))
        {
            if pids.contains(&ppid) {
                out.push(pid);
            }
        }
    }
    out
}

/// Fields of /proc/PID/stat after the command name (state is field 0).
fn proc_stat(pid: u32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

fn proc_cpu_seconds(pid: u32) -> f64 {
    // utime and stime are fields 14 and 15 of stat, 11 and 12 after the name;
    // cutime and cstime (13, 14) count children it has reaped, such as the
    // commands of command workers. Nothing of the cluster reaps its daemons
    // during a run, so nothing is counted twice.
    stat_seconds(pid, &[11, 12, 13, 14])
}

/// CPU seconds of the children this driver has reaped (cutime + cstime): S8 takes the
/// Python client's out of the driver's figure and counts its own report instead, which
/// leaves out the interpreter's start-up.
pub fn reaped_children_cpu_seconds() -> f64 {
    stat_seconds(std::process::id(), &[13, 14])
}

fn stat_seconds(pid: u32, fields: &[usize]) -> f64 {
    let ticks = 100.0; // USER_HZ on Linux
    proc_stat(pid)
        .map(|f| {
            let t = |k: usize| f.get(k).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            fields.iter().map(|&k| t(k)).sum::<f64>() / ticks
        })
        .unwrap_or(0.0)
}

/// Per-job CPU of each part of the cluster, in the order of [`Cluster::cpu_seconds`].
pub const CPU_PARTS: [&str; 4] = [
    "cpu_ms_router",
    "cpu_ms_pipeliner",
    "cpu_ms_broker",
    "cpu_ms_client",
];
