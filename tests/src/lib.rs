//! Test harness: a real cluster of separate processes on loopback.
//!
//! [`Cluster::start`] runs the real binaries (`pypelinin-router`, `pypelinin-pipeliner`,
//! `example-broker`, or `pypelinin-broker` through [`Cluster::add_broker_bin`]) on ephemeral ports with a temporary database and store, and stops
//! every process it started, by PID, when dropped.

#![warn(missing_docs)]

pub mod endpoints;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pypelinin_common::protocol::PipelineId;
use pypelinin_common::{Data, PipelineStatus};

/// Where cargo put the workspace's binaries, building them once if they are missing.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        // target/<profile>/deps/<test binary> → target/<profile>
        let exe = std::env::current_exe().expect("test binary path");
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target dir")
            .to_path_buf();
        // Always ask cargo (a no-op when up to date): `cargo test` does not build other
        // packages' binaries, and stale ones would test old code.
        {
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
            let mut cmd = Command::new(env!("CARGO"));
            cmd.current_dir(root).args(["build", "--bins"]);
            if dir.file_name().is_some_and(|n| n == "release") {
                cmd.arg("--release");
            }
            let status = cmd.status().expect("run cargo build");
            assert!(status.success(), "building the cluster binaries failed");
        }
        dir
    });
    dir.join(name)
}

/// A child process that is killed (by PID) and reaped when dropped.
pub struct Proc {
    /// The process.
    pub child: Child,
    /// What it is, for messages.
    pub name: String,
}

impl Proc {
    /// Starts `bin(name)` with `args`; stderr goes to `log`.
    pub fn spawn(name: &str, args: &[&str], log: &Path) -> Proc {
        let err = std::fs::File::create(log).expect("log file");
        let child = Command::new(bin(name))
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Proc {
            child,
            name: name.to_string(),
        }
    }

    /// The PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by PID (`libc` free: through `kill(1)`).
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status();
    }

    /// Waits up to `timeout` for the process to exit; its exit code, if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running cluster: router, pipeliners and brokers, each its own process.
pub struct Cluster {
    /// Router API address.
    pub api: String,
    /// Router broadcast address.
    pub broadcast: String,
    /// The router.
    pub router: Proc,
    /// Pipeliners.
    pub pipeliners: Vec<Proc>,
    /// Brokers.
    pub brokers: Vec<Proc>,
    /// Temporary directory: database, store, logs.
    pub dir: tempfile::TempDir,
    /// Extra arguments for every broker started from now on.
    pub broker_args: Vec<String>,
    /// The router's arguments after its addresses, used again at each restart (a test
    /// may change them between two).
    pub router_args: Vec<String>,
    restarts: usize,
    /// The keys when started with [`Cluster::start_curve`].
    pub curve: Option<CurveKeys>,
}

/// Key files of a cluster started with [`Cluster::start_curve`] (all under its temp dir).
pub struct CurveKeys {
    /// The router's secret key file.
    pub router_secret: PathBuf,
    /// The router's public key file (every member's `--router-key`).
    pub router_public: PathBuf,
    /// The router's `--authorized-keys` file: the member key only.
    pub authorized: PathBuf,
    /// The secret key file every pipeliner, broker and client of the cluster uses.
    pub member_secret: PathBuf,
}

impl CurveKeys {
    /// Makes a router pair and a member pair under `dir`, the member authorized.
    pub fn make(dir: &Path) -> CurveKeys {
        use pypelinin_common::curve::{encode_key, KeyPair};
        let keys = CurveKeys {
            router_secret: dir.join("router.key"),
            router_public: dir.join("router.key.pub"),
            authorized: dir.join("authorized_keys"),
            member_secret: dir.join("member.key"),
        };
        KeyPair::generate()
            .unwrap()
            .write(&keys.router_secret)
            .unwrap();
        let member = KeyPair::generate().unwrap();
        member.write(&keys.member_secret).unwrap();
        let text = format!("# the cluster's members\n{}\n", encode_key(&member.public));
        std::fs::write(&keys.authorized, text).unwrap();
        keys
    }

    /// The CURVE setting of a member.
    pub fn member(&self) -> pypelinin_common::curve::Security {
        pypelinin_common::curve::Security::client_from(
            Some(&self.member_secret),
            Some(self.router_public.to_str().unwrap()),
        )
        .unwrap()
    }

    /// The router's public key.
    pub fn router_key(&self) -> pypelinin_common::curve::Key {
        pypelinin_common::curve::load_public(&self.router_public).unwrap()
    }
}

impl Cluster {
    /// Starts a router, one pipeliner and `brokers` brokers of `slots` slots each, with
    /// the JSON file store under the temp dir.
    pub fn start(brokers: usize, slots: usize) -> Cluster {
        Cluster::start_inner(brokers, slots, false, &[])
    }

    /// [`Cluster::start`], with `router_args` added to the router's arguments (kept
    /// for its restarts too).
    pub fn start_with_router(brokers: usize, slots: usize, router_args: &[&str]) -> Cluster {
        Cluster::start_inner(brokers, slots, false, router_args)
    }

    /// [`Cluster::start`] with CURVE: the router has a key pair and authorizes one member
    /// key, which every pipeliner, broker and [`Cluster::client`] uses.
    pub fn start_curve(brokers: usize, slots: usize) -> Cluster {
        Cluster::start_inner(brokers, slots, true, &[])
    }

    fn start_inner(brokers: usize, slots: usize, curve: bool, router_args: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let curve = curve.then(|| CurveKeys::make(dir.path()));
        let config = dir.path().join("cluster.json");
        let store = serde_json::json!({
            "store": {"kind": "json", "dir": dir.path().join("store")},
            "monitoring_interval_ms": 500
        });
        std::fs::write(&config, store.to_string()).unwrap();
        let db = dir.path().join("db");
        let mut router_args: Vec<String> = [
            "--db",
            db.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ]
        .iter()
        .chain(router_args)
        .map(|s| s.to_string())
        .collect();
        if let Some(k) = &curve {
            for (flag, path) in [
                ("--curve-secret", &k.router_secret),
                ("--authorized-keys", &k.authorized),
            ] {
                router_args.push(flag.into());
                router_args.push(path.to_str().unwrap().into());
            }
        }
        let mut args = vec![
            "--api",
            "tcp://127.0.0.1:0",
            "--broadcast",
            "tcp://127.0.0.1:0",
        ];
        args.extend(router_args.iter().map(|s| s.as_str()));
        let log = dir.path().join("router.log");
        let mut router = Proc::spawn("pypelinin-router", &args, &log);
        let (api, broadcast) = read_endpoints(&mut router, &log);
        let mut c = Cluster {
            api,
            broadcast,
            router,
            pipeliners: vec![],
            brokers: vec![],
            dir,
            broker_args: vec![],
            router_args,
            restarts: 0,
            curve,
        };
        c.add_pipeliner();
        for _ in 0..brokers {
            c.add_broker(slots);
        }
        c
    }

    /// Starts `brokers` brokers of `slots` slots each, with `broker_args` added.
    pub fn start_with(brokers: usize, slots: usize, broker_args: &[&str]) -> Cluster {
        let mut c = Cluster::start(0, slots);
        c.broker_args = broker_args.iter().map(|s| s.to_string()).collect();
        for _ in 0..brokers {
            c.add_broker(slots);
        }
        c
    }

    /// Kills the router with SIGKILL and starts it again on the same addresses and
    /// database.
    pub fn kill_and_restart_router(&mut self) {
        self.kill_router();
        self.restart_router();
    }

    /// Kills the router with SIGKILL and waits for it to die; [`Cluster::restart_router`]
    /// brings it back (a test may let time pass in between: downtime).
    pub fn kill_router(&mut self) {
        self.router.signal("KILL");
        self.router
            .wait_exit(Duration::from_secs(10))
            .expect("router dies on SIGKILL");
    }

    /// Starts the router again on the same addresses and database.
    pub fn restart_router(&mut self) {
        self.restarts += 1;
        let mut args = vec![
            "--api",
            self.api.as_str(),
            "--broadcast",
            self.broadcast.as_str(),
        ];
        args.extend(self.router_args.iter().map(|s| s.as_str()));
        let log = self
            .dir
            .path()
            .join(format!("router-{}.log", self.restarts));
        let mut router = Proc::spawn("pypelinin-router", &args, &log);
        let (api, _) = read_endpoints(&mut router, &log);
        assert_eq!(api, self.api);
        self.router = router;
    }

    /// Starts one more pipeliner.
    pub fn add_pipeliner(&mut self) {
        let log = self
            .dir
            .path()
            .join(format!("pipeliner-{}.log", self.pipeliners.len()));
        let keys = self.member_args();
        let mut args = vec!["--api", &self.api, "--broadcast", &self.broadcast];
        args.extend(keys.iter().map(|s| s.as_str()));
        let p = Proc::spawn("pypelinin-pipeliner", &args, &log);
        self.pipeliners.push(p);
    }

    /// Starts one more broker with `slots` slots.
    pub fn add_broker(&mut self, slots: usize) {
        let slots = slots.to_string();
        let mut args = vec!["--workers", slots.as_str()];
        let extra = self.broker_args.clone();
        args.extend(extra.iter().map(|s| s.as_str()));
        self.add_broker_bin("example-broker", &args);
    }

    /// Starts one more broker: the binary `bin` (e.g. `pypelinin-broker`) with this
    /// cluster's addresses, then `args`; its log is `broker-N.log`.
    pub fn add_broker_bin(&mut self, bin: &str, args: &[&str]) {
        let log = self
            .dir
            .path()
            .join(format!("broker-{}.log", self.brokers.len()));
        let mut all = vec![
            "--api",
            self.api.as_str(),
            "--broadcast",
            self.broadcast.as_str(),
        ];
        let keys = self.member_args();
        all.extend(keys.iter().map(|s| s.as_str()));
        all.extend(args);
        let p = Proc::spawn(bin, &all, &log);
        self.brokers.push(p);
    }

    /// A client for this cluster.
    pub fn client(&self) -> pypelinin_client::PipelineManager {
        let security = self
            .curve
            .as_ref()
            .map(CurveKeys::member)
            .unwrap_or_default();
        pypelinin_client::PipelineManager::connect_with(&self.api, &self.broadcast, &security)
            .expect("client")
    }

    /// `--curve-secret` and `--router-key` of a member, when the cluster has keys.
    pub fn member_args(&self) -> Vec<String> {
        match &self.curve {
            Some(k) => vec![
                "--curve-secret".into(),
                k.member_secret.to_str().unwrap().into(),
                "--router-key".into(),
                k.router_public.to_str().unwrap().into(),
            ],
            None => vec![],
        }
    }

    /// The output the JSON store saved for `job`, if any.
    pub fn stored_output(&self, id: PipelineId, job: &str) -> Option<Data> {
        let path = self
            .dir
            .path()
            .join("store")
            .join(id.to_string())
            .join(format!("{job}.json"));
        let text = std::fs::read_to_string(path).ok()?;
        Some(serde_json::from_str(&text).expect("stored output is JSON"))
    }

    /// Runs `pypelinin ARGS` against this cluster: exit code, stdout, stderr.
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(bin("pypelinin"))
            .args(["--api", &self.api, "--broadcast", &self.broadcast])
            .args(self.member_args())
            .args(args)
            .output()
            .expect("run pypelinin");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// A log file's text, for failure messages.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }
}

/// Reads the router's `router listening api=… broadcast=…` line.
fn read_endpoints(router: &mut Proc, log: &Path) -> (String, String) {
    let out = router.child.stdout.take().expect("router stdout");
    let mut line = String::new();
    BufReader::new(out)
        .read_line(&mut line)
        .expect("router prints its endpoints");
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .unwrap_or_else(|| {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                panic!("no {k} in {line:?}; router log:\n{text}")
            })
            .to_string()
    };
    (field("api="), field("broadcast="))
}

/// A job of `worker` after `after`, with `data` (a JSON object).
pub fn job(worker: &str, after: &[&str], data: serde_json::Value) -> pypelinin_common::JobSpec {
    pypelinin_common::JobSpec {
        worker: worker.into(),
        after: after.iter().map(|s| s.to_string()).collect(),
        data: data.as_object().cloned().unwrap_or_default(),
        ..Default::default()
    }
}

/// Checks the invariants every finished, successful run must hold: every job ran
/// exactly once, and none started before all its parents had finished.
pub fn assert_ran_once_in_order(status: &PipelineStatus, spec: &pypelinin_common::PipelineSpec) {
    for (name, job) in &status.jobs {
        assert_eq!(job.attempts, 1, "job {name} ran {} times", job.attempts);
        assert_eq!(job.history.len(), 1, "job {name}: {:?}", job.history);
        let started = job.history[0].started_ms;
        for parent in &spec.jobs[name].after {
            let p = &status.jobs[parent];
            let finished = p.finished_ms.expect("parent finished");
            assert!(
                started >= finished,
                "job {name} started at {started} before its parent {parent} finished at {finished}"
            );
        }
    }
}
