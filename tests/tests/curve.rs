//! CURVE over real processes: a router with keys serves only authorized keys; members
//! with the right keys run pipelines; strangers, keyless clients and garbage get nothing
//! and do not disturb it; bad key files stop a daemon at start with a clear message.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use pypelinin_client::{ClientError, PipelineManager};
use pypelinin_common::curve::{encode_key, KeyPair, Security};
use pypelinin_common::transport::TransportError;
use pypelinin_common::PipelineSpec;
use pypelinin_tests::{assert_ran_once_in_order, Cluster, Proc};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(120);
/// How long a refused client waits for an answer that must not come.
const SHORT: Duration = Duration::from_millis(1_500);

fn unreachable(r: Result<impl std::fmt::Debug, ClientError>) -> bool {
    matches!(
        r,
        Err(ClientError::Transport(TransportError::Unreachable { .. }))
    )
}

fn stranger(c: &Cluster) -> (KeyPair, PipelineManager) {
    let keys = KeyPair::generate().unwrap();
    let security = Security::Client {
        keys: keys.clone(),
        server: c.curve.as_ref().unwrap().router_key(),
    };
    let mut pm = PipelineManager::connect_with(&c.api, &c.broadcast, &security).unwrap();
    pm.set_patience(SHORT, 2);
    (keys, pm)
}

fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(x) = f() {
            return x;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn authorized_broker_pipeliner_and_client_run_a_pipeline() {
    let c = Cluster::start_curve(1, 2);
    let mut pm = c.client();
    let spec = PipelineSpec::default()
        .with_data("i", json!(3))
        .job("a", "Step", &[])
        .job("b", "Step", &["a"]);
    let id = pm.start(&spec).unwrap();
    let outcome = pm.wait(id, WAIT).unwrap();
    assert!(outcome.is_success(), "{outcome:?}");
    assert_ran_once_in_order(outcome.status(), &spec);
    let m = pm.metrics().unwrap();
    assert_eq!((m.brokers, m.pipeliners), (1, 1));
    assert_eq!((m.refused_keys, m.refused_handshakes), (0, 0));
    // The command line with the member's keys (the harness passes them) works too.
    let (code, out, err) = c.cli(&["status", &id.to_string(), "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("succeeded"), "{out}");
}

#[test]
fn strangers_and_keyless_clients_get_nothing_while_members_are_served() {
    let mut c = Cluster::start_curve(0, 1);
    let (keys, mut outsider) = stranger(&c);
    assert!(unreachable(outsider.metrics()));

    // No key at all: the CURVE server refuses the NULL handshake.
    let mut keyless = PipelineManager::connect(&c.api, &c.broadcast).unwrap();
    keyless.set_patience(SHORT, 1);
    assert!(unreachable(keyless.metrics()));

    // An authorized key, but the wrong router key: the handshake cannot complete.
    let wrong_server = Security::Client {
        keys: KeyPair::load(&c.curve.as_ref().unwrap().member_secret).unwrap(),
        server: KeyPair::generate().unwrap().public,
    };
    let mut confused = PipelineManager::connect_with(&c.api, &c.broadcast, &wrong_server).unwrap();
    confused.set_patience(SHORT, 1);
    assert!(unreachable(confused.metrics()));

    // The member is served all along, and sees the refusals counted.
    let mut member = c.client();
    let m = wait_for("the refusal in metrics", || {
        let m = member.metrics().unwrap();
        (m.refused_keys >= 1).then_some(m)
    });
    // One stranger key, refused on each of its (at least two) handshakes, logged once.
    assert_eq!(m.refused_keys, 1);
    assert!(m.refused_handshakes >= 2, "{m:?}");
    let log = c.log("router.log");
    let z85 = encode_key(&keys.public);
    assert_eq!(log.matches(&z85).count(), 1, "{log}");
    assert!(c.router.alive(), "the router is still running");
}

#[test]
fn garbage_on_the_router_port_does_not_stop_it() {
    let mut c = Cluster::start_curve(0, 1);
    let addr = c.api.trim_start_matches("tcp://").to_string();
    // Junk, then a ZMTP greeting asking for NULL followed by junk, then a CURVE
    // greeting followed by a malformed HELLO.
    let greeting = |mech: &[u8]| {
        let mut g = vec![0xff, 0, 0, 0, 0, 0, 0, 0, 1, 0x7f, 3, 0];
        let mut m = mech.to_vec();
        m.resize(20, 0);
        g.extend(m);
        g.push(0);
        g.resize(64, 0);
        g
    };
    let payloads: Vec<Vec<u8>> = vec![
        (0..=255u8).cycle().take(4096).collect(),
        [
            greeting(b"NULL"),
            vec![0x04, 0x05, b'J', b'U', b'N', b'K', b'!'],
        ]
        .concat(),
        [
            greeting(b"CURVE"),
            vec![0x04, 0x30, 5, b'H', b'E', b'L', b'L', b'O'],
            vec![7; 40],
        ]
        .concat(),
    ];
    for p in payloads {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        let _ = s.write_all(&p);
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut member = c.client();
    member.metrics().expect("the router still serves members");
    assert!(c.router.alive(), "the router is still running");
}

/// Runs `bin` with `args` and expects it to stop at once with an error whose text
/// contains each of `needles`.
fn refused_at_start(dir: &Path, bin: &str, args: &[&str], needles: &[&str]) {
    let log = dir.join(format!("{bin}-refused.log"));
    let mut p = Proc::spawn(bin, args, &log);
    let status = p
        .wait_exit(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("{bin} kept running with {args:?}"));
    assert!(!status.success());
    let text = std::fs::read_to_string(&log).unwrap();
    for n in needles {
        assert!(
            text.contains(n),
            "{bin} {args:?}: expected {n:?} in:\n{text}"
        );
    }
}

#[test]
fn bad_key_files_are_refused_at_start_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pair = KeyPair::generate().unwrap();
    let secret = d.join("router.key");
    let public = pair.write(&secret).unwrap();
    let good_auth = d.join("authorized");
    std::fs::write(&good_auth, format!("{}\n", encode_key(&pair.public))).unwrap();
    let db = d.join("db");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let router = |secret: &Path, auth: &Path| {
        vec![
            "--api".to_string(),
            "tcp://127.0.0.1:0".into(),
            "--broadcast".into(),
            "tcp://127.0.0.1:0".into(),
            "--db".into(),
            s(&db),
            "--curve-secret".into(),
            s(secret),
            "--authorized-keys".into(),
            s(auth),
        ]
    };
    let run = |args: Vec<String>, needles: &[&str]| {
        let args: Vec<&str> = args.iter().map(|a| a.as_str()).collect();
        refused_at_start(d, "pypelinin-router", &args, needles);
    };
    // A public key where the secret belongs.
    run(
        router(&public, &good_auth),
        &["router.key.pub:2:", "public key file"],
    );
    // A truncated secret key file.
    let full = std::fs::read_to_string(&secret).unwrap();
    let truncated = d.join("truncated.key");
    std::fs::write(&truncated, &full[..full.len() - 12]).unwrap();
    run(
        router(&truncated, &good_auth),
        &["truncated.key:3:", "40 Z85 characters"],
    );
    // An authorized-keys file with a bad third line.
    let bad_auth = d.join("bad_authorized");
    std::fs::write(
        &bad_auth,
        format!("# ops\n{}\nnot a key\n", encode_key(&pair.public)),
    )
    .unwrap();
    run(router(&secret, &bad_auth), &["bad_authorized:3:"]);
    // A member with a secret key but no router key.
    refused_at_start(
        d,
        "pypelinin-pipeliner",
        &["--api", "tcp://127.0.0.1:9", "--curve-secret", &s(&secret)],
        &["--router-key"],
    );
    // A broker whose router key is neither a key nor a file.
    refused_at_start(
        d,
        "example-broker",
        &[
            "--api",
            "tcp://127.0.0.1:9",
            "--curve-secret",
            &s(&secret),
            "--router-key",
            "nope",
        ],
        &["router key \"nope\""],
    );
}

#[test]
fn keygen_writes_a_private_pair_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("me.key");
    let run = || {
        std::process::Command::new(pypelinin_tests::bin("pypelinin"))
            .arg("keygen")
            .arg(&path)
            .output()
            .unwrap()
    };
    let out = run();
    assert!(out.status.success(), "{out:?}");
    let printed = String::from_utf8(out.stdout).unwrap();
    let pair = KeyPair::load(&path).unwrap();
    assert_eq!(printed.trim(), encode_key(&pair.public));
    let public = pypelinin_common::curve::load_public(&dir.path().join("me.key.pub")).unwrap();
    assert_eq!(public, pair.public);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let again = run();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    assert_eq!(
        KeyPair::load(&path).unwrap(),
        pair,
        "the key file is untouched"
    );
}

#[test]
fn sighup_reloads_the_authorized_keys() {
    let mut c = Cluster::start_curve(0, 1);
    let (keys, mut newcomer) = stranger(&c);
    assert!(unreachable(newcomer.metrics()));
    let authorized = c.curve.as_ref().unwrap().authorized.clone();
    let mut text = std::fs::read_to_string(&authorized).unwrap();
    text.push_str(&format!("{}\n", encode_key(&keys.public)));
    std::fs::write(&authorized, text).unwrap();
    c.router.signal("HUP");
    wait_for("the newcomer to be let in", || newcomer.metrics().ok());
    assert!(c.router.alive(), "SIGHUP does not stop a CURVE router");
    assert!(c.log("router.log").contains("authorized keys reloaded"));
}

#[test]
fn a_router_without_keys_beyond_loopback_warns_loudly() {
    let dir = tempfile::tempdir().unwrap();
    let run = |host: &str, name: &str| {
        let log = dir.path().join(name);
        let api = format!("tcp://{host}:0");
        let db = dir.path().join(format!("{name}.db"));
        let mut p = Proc::spawn(
            "pypelinin-router",
            &[
                "--api",
                &api,
                "--broadcast",
                &api,
                "--db",
                db.to_str().unwrap(),
            ],
            &log,
        );
        let text = wait_for("the router to serve", || {
            let t = std::fs::read_to_string(&log).unwrap_or_default();
            t.contains("router serving").then_some(t)
        });
        p.signal("TERM");
        p.wait_exit(WAIT).expect("the router stops on SIGTERM");
        text
    };
    let open = run("0.0.0.0", "open.log");
    assert!(
        open.contains("LISTENING BEYOND LOOPBACK WITHOUT CURVE"),
        "{open}"
    );
    let local = run("127.0.0.1", "local.log");
    assert!(!local.contains("WITHOUT CURVE"), "{local}");
}

#[test]
fn the_dashboard_inside_a_curve_router_reaches_it_with_the_routers_own_key() {
    use std::io::{BufRead, BufReader, Read};
    let dir = tempfile::tempdir().unwrap();
    let keys = pypelinin_tests::CurveKeys::make(dir.path());
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let db = dir.path().join("db");
    let args = [
        "--api".to_string(),
        "tcp://127.0.0.1:0".into(),
        "--broadcast".into(),
        "tcp://127.0.0.1:0".into(),
        "--db".into(),
        s(&db),
        "--http".into(),
        "127.0.0.1:0".into(),
        "--curve-secret".into(),
        s(&keys.router_secret),
        "--authorized-keys".into(),
        s(&keys.authorized),
    ];
    let args: Vec<&str> = args.iter().map(|a| a.as_str()).collect();
    let mut router = Proc::spawn("pypelinin-router", &args, &dir.path().join("router.log"));
    let mut out = BufReader::new(router.child.stdout.take().unwrap());
    let (mut first, mut second) = (String::new(), String::new());
    out.read_line(&mut first).unwrap();
    out.read_line(&mut second).unwrap();
    let url = second
        .trim()
        .strip_prefix("http listening on ")
        .unwrap()
        .to_string();
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    // `/metrics` asks the router over its CURVE API socket: an answer proves the
    // dashboard's link got in with the router's own key.
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("pypelinin_refused_keys_total 0"), "{text}");
    assert!(router.alive());
}
