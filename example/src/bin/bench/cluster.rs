//! The benchmark's cluster: a router, a pipeliner and one broker, each this executable
//! started again in its role, as separate processes on loopback; and what they cost in
//! CPU, read from `/proc`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use pypelinin_client::PipelineManager;
use pypelinin_common::PipelineSpec;

use crate::Args;

/// A benchmark cluster: router, pipeliner and one broker with two slots.
pub struct Cluster {
    procs: Vec<Child>,
    api: String,
    broadcast: String,
    _dir: tempfile::TempDir,
}

impl Cluster {
    pub fn start(args: &Args) -> anyhow::Result<Cluster> {
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
        let mut router = Command::new(&exe)
            .args(["--role", "router", "--db"])
            .arg(dir.path().join("db"))
            .args(&common)
            .stdout(Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        BufReader::new(router.stdout.take().unwrap()).read_line(&mut line)?;
        let field = |k: &str| -> anyhow::Result<String> {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .map(str::to_string)
                .with_context(|| format!("router said {line:?}"))
        };
        let (api, broadcast) = (field("api=")?, field("broadcast=")?);
        let mut procs = vec![router];
        for role in ["pipeliner", "broker"] {
            procs.push(
                Command::new(&exe)
                    .args(["--role", role, "--api", &api, "--broadcast", &broadcast])
                    .args(&common)
                    .spawn()?,
            );
        }
        let c = Cluster {
            procs,
            api,
            broadcast,
            _dir: dir,
        };
        // Ready when a job goes through.
        let mut pm = c.client()?;
        let id = pm.start(&PipelineSpec::default().job("a", "Noop", &[]))?;
        ensure!(
            pm.wait(id, Duration::from_secs(30))?.is_success(),
            "warm-up job failed"
        );
        Ok(c)
    }

    pub fn client(&self) -> anyhow::Result<PipelineManager> {
        Ok(PipelineManager::connect(&self.api, &self.broadcast)?)
    }

    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(|c| c.id()).collect()
    }

    /// CPU seconds used so far by each part of the cluster: the router, the pipeliner,
    /// the broker with its slot processes, and this driver (the client).
    pub fn cpu_seconds(&self) -> [f64; 4] {
        let p = self.pids();
        // The broker, its slot processes, and theirs that still run: the long-lived
        // processes of persistent workers (S7); commands that ended are counted in
        // their parent's cutime.
        let slots = children_of(&p[2..3]);
        let broker: f64 = children_of(&slots)
            .into_iter()
            .chain(slots)
            .chain([p[2]])
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
        std::fs::read_to_string(format!("/proc/{}/status", self.procs[0].id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmHWM:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
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
    let ticks = 100.0; // USER_HZ on Linux
    proc_stat(pid)
        .map(|f| {
            // utime and stime are fields 14 and 15 of stat, 11 and 12 after the name;
            // cutime and cstime (13, 14) count children it has reaped, such as the
            // commands of command workers. Nothing of the cluster reaps its daemons
            // during a run, so nothing is counted twice.
            let t = |k: usize| f.get(k).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            (t(11) + t(12) + t(13) + t(14)) / ticks
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
