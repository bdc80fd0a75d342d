//! The router's dashboard (`--http`): its JSON API, `/metrics` and the event stream over
//! plain HTTP, and the page itself in headless Chromium driven through chromedriver's
//! WebDriver API.
//!
//! The browser test needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs
//! them): without them it fails when `CI` is set and is skipped otherwise. With
//! `SAVE_SCREENSHOTS=1` it writes the README's screenshots to `docs/`.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use pypelinin_common::protocol::{PipelineId, ScheduleRequest};
use pypelinin_common::schedule::ScheduleSpec;
use pypelinin_common::{PipelineSpec, PipelineState};
use pypelinin_tests::Proc;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------
// A cluster whose router serves HTTP
// ---------------------------------------------------------------------------------

/// Router (with `--http 127.0.0.1:0`), one pipeliner, one broker of two slots.
struct DashCluster {
    api: String,
    broadcast: String,
    /// `http://127.0.0.1:PORT`.
    http: String,
    // Dropped in this order: the broker and pipeliner first, then the router.
    _broker: Proc,
    _pipeliner: Proc,
    _router: Proc,
    _router_stdout: BufReader<ChildStdout>,
    dir: tempfile::TempDir,
}

impl DashCluster {
    fn start() -> DashCluster {
        DashCluster::start_with(&[])
    }

    /// A cluster whose router also gets `router_args`.
    fn start_with(router_args: &[&str]) -> DashCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("cluster.json");
        std::fs::write(&config, r#"{"monitoring_interval_ms": 300}"#).unwrap();
        let db = dir.path().join("db");
        let mut router = Proc::spawn(
            "pypelinin-router",
            &[
                "--api",
                "tcp://127.0.0.1:0",
                "--broadcast",
                "tcp://127.0.0.1:0",
                "--db",
                db.to_str().unwrap(),
                "--config",
                config.to_str().unwrap(),
                "--http",
                "127.0.0.1:0",
            ]
            .into_iter()
            .chain(router_args.iter().copied())
            .collect::<Vec<_>>(),
            &dir.path().join("router.log"),
        );
        // Line 1: `router listening api=… broadcast=…`; line 2: `http listening on …`.
        let mut out = BufReader::new(router.child.stdout.take().expect("router stdout"));
        let mut first = String::new();
        let mut second = String::new();
        out.read_line(&mut first).unwrap();
        out.read_line(&mut second).unwrap();
        let log = || std::fs::read_to_string(dir.path().join("router.log")).unwrap_or_default();
        assert!(
            first.starts_with("router listening api="),
            "first line: {first:?}\n{}",
            log()
        );
        let field = |k: &str| {
            first
                .split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .unwrap_or_else(|| panic!("no {k} in {first:?}"))
                .to_string()
        };
        let (api, broadcast) = (field("api="), field("broadcast="));
        let http = second
            .trim()
            .strip_prefix("http listening on ")
            .unwrap_or_else(|| panic!("second line: {second:?}\n{}", log()))
            .to_string();
        assert!(http.starts_with("http://127.0.0.1:"), "{http}");
        let pipeliner = Proc::spawn(
            "pypelinin-pipeliner",
            &["--api", &api, "--broadcast", &broadcast],
            &dir.path().join("pipeliner.log"),
        );
        let broker = Proc::spawn(
            "example-broker",
            &["--api", &api, "--broadcast", &broadcast, "--workers", "2"],
            &dir.path().join("broker.log"),
        );
        DashCluster {
            api,
            broadcast,
            http,
            _broker: broker,
            _pipeliner: pipeliner,
            _router: router,
            _router_stdout: out,
            dir,
        }
    }

    fn client(&self) -> pypelinin_client::PipelineManager {
        pypelinin_client::PipelineManager::connect(&self.api, &self.broadcast).expect("client")
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.http)
    }
}

/// A flaky pipeline: `parse` fails on its first attempt and has no retries, so the
/// pipeline fails; a retry then succeeds.
fn flaky_pipeline() -> PipelineSpec {
    let mut spec = PipelineSpec::default()
        .job("fetch", "Noop", &[])
        .job("parse", "Flaky", &["fetch"])
        .job("index", "Noop", &["parse"])
        .job("stats", "Sleep", &["fetch"])
        .job("publish", "Noop", &["index", "stats"]);
    let data = |v: Value| v.as_object().unwrap().clone();
    spec.jobs.get_mut("parse").unwrap().data = data(json!({"fail_attempts": 1}));
    spec.jobs.get_mut("stats").unwrap().data = data(json!({"ms": 150}));
    spec
}

/// The README's pipeline.
fn document_pipeline() -> PipelineSpec {
    let mut spec = PipelineSpec::default()
        .with_data("document", json!("rivers.txt"))
        .job("read", "Reader", &[])
        .job("words", "WordCount", &["read"])
        .job("links", "Links", &["read"])
        .job("report", "Report", &["words", "links"]);
    spec.jobs.get_mut("report").unwrap().data = json!({"top": 10}).as_object().unwrap().clone();
    spec
}

// ---------------------------------------------------------------------------------
// Plain HTTP
// ---------------------------------------------------------------------------------

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// Status, content type and body of a request.
fn request(method: &str, url: &str, body: Option<&str>) -> (u16, String, String) {
    let a = agent();
    let result = match (method, body) {
        ("GET", _) => a.get(url).call(),
        ("POST", Some(b)) => a.post(url).content_type("application/json").send(b),
        ("POST", None) => a.post(url).send_empty(),
        ("DELETE", _) => a.delete(url).call(),
        _ => unreachable!("{method}"),
    };
    let mut response = result.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status().as_u16();
    let kind = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let text = response
        .body_mut()
        .read_to_string()
        .unwrap_or_else(|e| panic!("{method} {url}: body: {e}"));
    (status, kind, text)
}

fn get_json(url: &str) -> (u16, Value) {
    let (status, kind, text) = request("GET", url, None);
    assert!(kind.starts_with("application/json"), "{url}: {kind}");
    (status, serde_json::from_str(&text).expect("JSON body"))
}

fn post_json(url: &str, body: Option<&str>) -> (u16, Value) {
    let (status, kind, text) = request("POST", url, body);
    assert!(kind.starts_with("application/json"), "{url}: {kind}");
    (status, serde_json::from_str(&text).expect("JSON body"))
}

/// Calls `probe` until it returns something, for at most `timeout`.
fn eventually<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Value of one sample line of the Prometheus text, e.g. `pypelinin_queue_depth`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn json_api_and_prometheus_metrics() {
    let c = DashCluster::start();
    let mut pm = c.client();
    let ok = pm
        .start(
            &PipelineSpec::default()
                .job("a", "Noop", &[])
                .job("b", "Echo", &["a"]),
        )
        .unwrap();
    let bad = pm.start(&flaky_pipeline()).unwrap();
    let statuses = pm
        .wait_all(&[ok, bad], Duration::from_secs(60))
        .expect("both finish");
    assert_eq!(statuses[0].state, PipelineState::Succeeded);
    assert_eq!(statuses[1].state, PipelineState::Failed);

    // The list, filtered by state, searched, limited.
    let (code, v) = get_json(&c.url("/api/pipelines"));
    assert_eq!(code, 200);
    let rows = v["pipelines"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{v}");
    assert_eq!(rows[0]["id"], bad.to_string(), "newest first");
    assert!(rows
        .iter()
        .all(|r| r["duration_ms"].is_u64() && r["jobs"].is_u64()));
    let (_, v) = get_json(&c.url("/api/pipelines?state=failed"));
    let ids: Vec<&str> = v["pipelines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [bad.to_string()]);
    // Ids are UUIDv7: their first characters are the time, their last ones random.
    let ok_s = ok.to_string();
    let part = &ok_s[ok_s.len() - 8..];
    let (_, v) = get_json(&c.url(&format!("/api/pipelines?q={}", part.to_uppercase())));
    assert_eq!(v["pipelines"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["pipelines"][0]["id"], ok.to_string());
    let (_, v) = get_json(&c.url("/api/pipelines?limit=1"));
    assert_eq!(v["pipelines"].as_array().unwrap().len(), 1);
    // A trailing slash names the same route, query and all.
    // Pages by cursor: the newest one, then the one before it.
    let (_, v) = get_json(&c.url("/api/pipelines?limit=1"));
    assert_eq!(v["pipelines"][0]["id"], bad.to_string());
    let cursor = v["next_before"]
        .as_u64()
        .expect("a cursor after a full page");
    let (_, v) = get_json(&c.url(&format!("/api/pipelines?limit=1&before={cursor}")));
    assert_eq!(v["pipelines"][0]["id"], ok.to_string());
    let (code, v) = get_json(&c.url("/api/pipelines/?state=failed"));
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["pipelines"][0]["id"], bad.to_string(), "{v}");
    let (code, v) = get_json(&c.url("/api/pipelines?state=sleepy"));
    assert_eq!(code, 400);
    assert!(v["error"].as_str().unwrap().contains("sleepy"), "{v}");

    // One pipeline: the status contract plus the spec's edges and progress counts.
    let (code, v) = get_json(&c.url(&format!("/api/pipelines/{bad}")));
    assert_eq!(code, 200);
    assert_eq!(v["state"], "failed");
    assert_eq!(v["jobs"]["parse"]["state"], "failed");
    assert_eq!(v["jobs"]["parse"]["error"], "flaky failure on attempt 1");
    assert!(v["jobs"]["parse"]["history"][0]["broker"].is_string());
    assert_eq!(v["jobs"]["publish"]["after"], json!(["index", "stats"]));
    // Dispatch settings for the DAG view: downstream weights by default.
    assert_eq!(v["priority"], 0);
    assert_eq!(
        v["jobs"]["fetch"]["priority"], 5,
        "its own weight and its four descendants'"
    );
    assert_eq!(v["jobs"]["publish"]["priority"], 1);
    assert_eq!(v["jobs"]["fetch"]["trigger_rule"], "all_success");
    assert_eq!(v["jobs"]["fetch"]["weight_rule"], "downstream");
    assert!(v["jobs"]["fetch"].get("pool").is_none(), "{v}");
    let mut edges: Vec<Value> = v["edges"].as_array().unwrap().clone();
    edges.sort_by_key(|e| e.to_string());
    assert_eq!(
        Value::Array(edges),
        json!([
            ["fetch", "parse"],
            ["fetch", "stats"],
            ["index", "publish"],
            ["parse", "index"],
            ["stats", "publish"]
        ])
    );
    assert_eq!(v["progress"]["total"], 5);
    assert_eq!(v["progress"]["failed"], 1);
    assert_eq!(v["progress"]["skipped"], 2);

    let (code, v) = get_json(&c.url(&format!("/api/pipelines/{ok}/outputs")));
    assert_eq!(code, 200);
    assert!(v["b"].is_object() && v["a"].is_object(), "{v}");
    let (code, kind, dot) = request("GET", &c.url(&format!("/api/pipelines/{bad}/dot")), None);
    assert_eq!(code, 200);
    assert!(kind.starts_with("text/vnd.graphviz"), "{kind}");
    assert!(dot.contains("\"fetch\" -> \"parse\""), "{dot}");
    assert!(dot.contains("#fca5a5") && dot.contains("#fde68a"), "{dot}");

    // Errors: typed, JSON, with the right status codes.
    let unknown = PipelineId::new();
    let (code, v) = get_json(&c.url(&format!("/api/pipelines/{unknown}")));
    assert_eq!(code, 404);
    assert!(
        v["error"].as_str().unwrap().contains("unknown pipeline"),
        "{v}"
    );
    assert_eq!(get_json(&c.url("/api/pipelines/not-an-id")).0, 400);
    assert_eq!(
        get_json(&c.url(&format!("/api/pipelines/{bad}/retry"))).0,
        405
    );
    assert_eq!(get_json(&c.url("/api/nothing")).0, 404);
    assert_eq!(get_json(&c.url("/nothing")).0, 404);
    let (code, v) = post_json(
        &c.url(&format!("/api/pipelines/{bad}/retry")),
        Some(r#"{"jobs": ["nosuch"]}"#),
    );
    assert_eq!(code, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("nosuch"), "{v}");
    let (code, _) = post_json(
        &c.url(&format!("/api/pipelines/{bad}/retry")),
        Some("{not json"),
    );
    assert_eq!(code, 400);

    // Another site's page, open in the operator's browser, cannot change anything.
    let foreign = agent()
        .post(&c.url(&format!("/api/pipelines/{bad}/retry")))
        .header("Origin", "http://evil.example")
        .send_empty()
        .unwrap();
    assert_eq!(foreign.status().as_u16(), 403);
    assert_eq!(pm.status(bad).unwrap().state, PipelineState::Failed);

    // Retry (no body: the jobs that did not succeed) and cancel.
    let (code, v) = post_json(&c.url(&format!("/api/pipelines/{bad}/retry")), None);
    assert_eq!(code, 200, "{v}");
    let done = pm.wait(bad, Duration::from_secs(30)).unwrap();
    assert!(done.is_success(), "{:?}", done.status());
    assert_eq!(done.status().jobs["parse"].attempts, 2);
    assert_eq!(
        done.status().jobs["fetch"].attempts,
        1,
        "kept what succeeded"
    );
    let mut long = PipelineSpec::default().job("nap", "Sleep", &[]);
    long.jobs.get_mut("nap").unwrap().data = json!({"ms": 30_000}).as_object().unwrap().clone();
    let long = pm.start(&long).unwrap();
    let (code, v) = post_json(&c.url(&format!("/api/pipelines/{long}/retry")), None);
    assert_eq!(code, 409, "a running pipeline cannot be retried: {v}");
    let (code, v) = post_json(&c.url(&format!("/api/pipelines/{long}/cancel")), None);
    assert_eq!(code, 200);
    assert_eq!(v["state"], "cancelled", "{v}");

    // Brokers, with their monitoring once the first report came in.
    let brokers = eventually("a monitoring report", Duration::from_secs(10), || {
        let (_, v) = get_json(&c.url("/api/brokers"));
        v[0]["monitor"].is_object().then_some(v)
    });
    let b = &brokers[0];
    assert_eq!(b["slots"], 2);
    assert!(b["workers"].as_array().unwrap().contains(&json!("Flaky")));
    assert!(b["monitor"]["memory_total_bytes"].as_u64().unwrap() > 0);

    // Pools, as `pool list --json`.
    let (_, v) = get_json(&c.url("/api/pools"));
    assert_eq!(v, json!([]));
    pm.pools(pypelinin_common::protocol::PoolRequest::Set {
        name: "db".into(),
        slots: 3,
    })
    .unwrap();
    let (code, v) = get_json(&c.url("/api/pools"));
    assert_eq!(code, 200);
    assert_eq!(
        v,
        json!([{"name": "db", "capacity": 3, "used": 0, "queued": 0}])
    );

    let (code, m) = get_json(&c.url("/api/metrics"));
    assert_eq!(code, 200);
    assert_eq!(m["pipelines"]["succeeded"], 2, "{m}");
    assert_eq!(m["pipelines"]["cancelled"], 1, "{m}");
    assert_eq!(m["brokers"], 1);
    assert!(m["now_ms"].is_u64());
    assert!(m["throughput"].as_array().is_some_and(|t| !t.is_empty()));

    // Prometheus text.
    let (code, kind, text) = request("GET", &c.url("/metrics"), None);
    assert_eq!(code, 200);
    assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
    for line in [
        "# TYPE pypelinin_pipelines gauge",
        "# TYPE pypelinin_jobs gauge",
        "# TYPE pypelinin_job_duration_seconds histogram",
        "# TYPE pypelinin_queue_depth gauge",
        "# TYPE pypelinin_brokers_alive gauge",
        "# TYPE pypelinin_request_latency_seconds histogram",
        "# HELP pypelinin_queue_depth Jobs ready to run, waiting for a broker slot or a retry delay.",
    ] {
        assert!(text.lines().any(|l| l == line), "{line}\n{text}");
    }
    assert_eq!(
        sample(&text, "pypelinin_pipelines{state=\"succeeded\"}"),
        Some(2.0)
    );
    // Every finished attempt was reported, in at most as many messages.
    let reports = sample(&text, "pypelinin_job_reports_total").expect("reports counted");
    let messages = sample(&text, "pypelinin_report_messages_total").expect("messages counted");
    assert!(
        reports >= 7.0 && messages >= 1.0 && messages <= reports,
        "{text}"
    );
    assert_eq!(
        sample(&text, "pypelinin_pipelines{state=\"cancelled\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "pypelinin_pipelines{state=\"running\"}"),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, "pypelinin_jobs{state=\"succeeded\"}"),
        Some(7.0)
    );
    assert_eq!(sample(&text, "pypelinin_brokers_alive"), Some(1.0));
    assert!(sample(&text, "pypelinin_queue_depth").is_some());
    // Buckets are cumulative and end with +Inf = _count.
    let buckets: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("pypelinin_job_duration_seconds_bucket{worker=\"Noop\","))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert!(buckets.len() > 2, "{text}");
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    let count = sample(
        &text,
        "pypelinin_job_duration_seconds_count{worker=\"Noop\"}",
    )
    .unwrap();
    assert_eq!(*buckets.last().unwrap(), count);
    assert_eq!(
        count, 4.0,
        "a, fetch, and index and publish after the retry: {text}"
    );
    assert!(text.contains("pypelinin_job_duration_seconds_bucket{worker=\"Noop\",le=\"+Inf\"}"));
    assert!(sample(
        &text,
        "pypelinin_job_duration_seconds_sum{worker=\"Flaky\"}"
    )
    .is_some());
    assert!(sample(&text, "pypelinin_request_latency_seconds_count").unwrap() > 0.0);
    assert!(text.contains("pypelinin_request_latency_seconds_bucket{le=\"+Inf\"}"));

    // The page and its assets, served from the binary.
    let (code, kind, html) = request("GET", &c.url("/"), None);
    assert_eq!(code, 200);
    assert!(kind.starts_with("text/html"), "{kind}");
    assert!(html.contains("/assets/app.js") && html.contains("/assets/app.css"));
    assert!(
        html.contains(&ok.to_string()) && html.contains("badge s-succeeded"),
        "the list is rendered on the server too"
    );
    assert!(!html.contains("{{"), "no placeholder left");
    for (path, kind) in [
        ("/assets/app.js", "text/javascript"),
        ("/assets/app.css", "text/css"),
    ] {
        let (code, got, body) = request("GET", &c.url(path), None);
        assert_eq!(code, 200, "{path}");
        assert!(got.starts_with(kind), "{path}: {got}");
        assert!(!body.is_empty());
    }
    assert!(
        !html.contains("src=\"http") && !html.contains("href=\"http"),
        "nothing is loaded from the network"
    );
}

// ---------------------------------------------------------------------------------
// The event stream (Server-Sent Events)
// ---------------------------------------------------------------------------------

/// An open `GET /api/events`, read one event at a time.
struct EventStream {
    lines: BufReader<ureq::BodyReader<'static>>,
}

impl EventStream {
    fn open(url: &str) -> EventStream {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .build()
            .into();
        let response = agent
            .get(url)
            .header("Accept", "text/event-stream")
            .call()
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert_eq!(response.status().as_u16(), 200, "{url}");
        let kind = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        assert!(kind.starts_with("text/event-stream"), "{url}: {kind}");
        EventStream {
            lines: BufReader::new(response.into_body().into_reader()),
        }
    }

    /// The next event: its name and its JSON data. Comments (keep-alives) are skipped.
    fn next(&mut self) -> (String, Value) {
        let (mut kind, mut data) = (String::new(), String::new());
        loop {
            let mut line = String::new();
            let n = self.lines.read_line(&mut line).expect("reading the stream");
            assert!(n > 0, "the event stream ended");
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                if !data.is_empty() {
                    let value = serde_json::from_str(&data)
                        .unwrap_or_else(|e| panic!("event {kind}: data {data:?}: {e}"));
                    return (kind, value);
                }
            } else if let Some(v) = line.strip_prefix("event:") {
                kind = v.trim_start().to_string();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.strip_prefix(' ').unwrap_or(v));
            }
        }
    }

    /// Reads events until one named `kind` satisfies `want`; `None` ends the wait with
    /// a failure after `timeout` (checked between events: keep-alives come every 15 s).
    fn until<T>(
        &mut self,
        kind: &str,
        timeout: Duration,
        mut want: impl FnMut(&Value) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            assert!(
                Instant::now() < deadline,
                "no {kind} event as expected; seen: {seen:?}"
            );
            let (k, v) = self.next();
            if k == kind {
                if let Some(found) = want(&v) {
                    return found;
                }
            }
            seen.push(k);
        }
    }
}

/// The summary of `id` in a `pipelines` event, if it is among the changes.
#[test]
fn a_job_log_over_http() {
    let c = DashCluster::start();
    let mut pm = c.client();
    let bad = pm.start(&flaky_pipeline()).unwrap();
    pm.wait(bad, Duration::from_secs(60)).unwrap();
    let logs = |job: &str, query: &str| {
        get_json(&c.url(&format!("/api/pipelines/{bad}/jobs/{job}/logs{query}")))
    };
    // Flaky (a Rust worker, in a slot process) says which attempt it is through
    // `tracing`: the line is in its job's log, as text with its time and stream.
    let (code, v) = logs("parse", "");
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        (v["attempt"].as_u64(), v["attempts"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(
        (v["finished"].as_bool(), v["job_final"].as_bool()),
        (Some(true), Some(true))
    );
    let lines = v["lines"].as_array().unwrap();
    let line = lines
        .iter()
        .find(|l| l["stream"] == "log")
        .unwrap_or_else(|| panic!("no tracing line: {v}"));
    assert!(
        line["text"]
            .as_str()
            .unwrap()
            .contains("flaky worker starting"),
        "{line}"
    );
    assert!(line["time"].as_str().unwrap().ends_with('Z'), "{line}");
    let last = v["last_seq"].as_u64().unwrap();
    let (code, v) = logs("parse", &format!("?attempt=1&after={last}"));
    assert_eq!(code, 200);
    assert_eq!(v["lines"], json!([]), "nothing after the last line");
    // A job that never ran, and refusals.
    let (code, v) = logs("index", "");
    assert_eq!((code, v["attempt"].as_u64()), (200, Some(0)), "{v}");
    assert_eq!(logs("parse", "?attempt=7").0, 409);
    assert_eq!(logs("parse", "?after=soon").0, 400);
    assert_eq!(logs("nope", "").0, 404);
    let (code, _) = get_json(&c.url("/api/pipelines/not-an-id/jobs/parse/logs"));
    assert_eq!(code, 400);
    let (code, _, _) = request(
        "POST",
        &c.url(&format!("/api/pipelines/{bad}/jobs/parse/logs")),
        Some(""),
    );
    assert_eq!(code, 405);
}

fn changed_summary(event: &Value, id: PipelineId) -> Option<Value> {
    event["changed"]
        .as_array()?
        .iter()
        .find(|p| p["id"] == id.to_string())
        .cloned()
}

#[test]
fn event_stream_pushes_submissions_and_ends() {
    let c = DashCluster::start();
    let mut stream = EventStream::open(&c.url("/api/events"));
    // The greeting: what the dashboard knows, here no pipeline, then the metrics.
    let greeting = stream.until("pipelines", Duration::from_secs(30), |v| Some(v.clone()));
    assert_eq!(greeting["changed"], json!([]), "{greeting}");
    assert!(greeting["now_ms"].is_u64());
    let metrics = stream.until("metrics", Duration::from_secs(30), |v| Some(v.clone()));
    assert!(
        metrics["pipelines"].is_object() && metrics["now_ms"].is_u64(),
        "{metrics}"
    );

    // A pipeline submitted by another client is pushed, with its progress, until it ends.
    let mut pm = c.client();
    let mut spec = PipelineSpec::default()
        .job("nap", "Sleep", &[])
        .job("after", "Noop", &["nap"]);
    spec.jobs.get_mut("nap").unwrap().data = json!({"ms": 300}).as_object().unwrap().clone();
    let id = pm.start(&spec).unwrap();
    let last = stream.until("pipelines", Duration::from_secs(60), |v| {
        let p = changed_summary(v, id)?;
        (p["state"] == "succeeded").then_some(p)
    });
    assert_eq!(last["jobs"], 2, "{last}");
    assert_eq!(last["done"], 2, "{last}");
    assert!(
        last["finished_ms"].is_u64() && last["duration_ms"].is_u64(),
        "{last}"
    );
    stream.until("metrics", Duration::from_secs(30), |m| {
        (m["pipelines"]["succeeded"] == 1).then_some(())
    });

    // A second stream is greeted with the state so far; the first one is still served.
    let mut second = EventStream::open(&c.url("/api/events"));
    let greeting = second.until("pipelines", Duration::from_secs(30), |v| Some(v.clone()));
    let known = changed_summary(&greeting, id).expect("the pipeline in the greeting");
    assert_eq!(known["state"], "succeeded");
    // Both are pushed the next pipeline, and only what changed: never the ended one again.
    let failing = pm.start(&flaky_pipeline()).unwrap();
    for s in [&mut stream, &mut second] {
        s.until("pipelines", Duration::from_secs(60), |v| {
            assert!(
                changed_summary(v, id).is_none(),
                "an unchanged pipeline is pushed again: {v}"
            );
            (changed_summary(v, failing)?["state"] == "failed").then_some(())
        });
    }
    assert_eq!(pm.status(failing).unwrap().state, PipelineState::Failed);
}

// ---------------------------------------------------------------------------------
// Schedules over HTTP
// ---------------------------------------------------------------------------------

/// Adds an every-second schedule of a pipeline whose `parse` fails on its first attempt
/// (so every run fails, and a clear makes it succeed).
fn add_flaky_schedule(c: &DashCluster, name: &str) {
    let mut spec: ScheduleSpec = serde_json::from_value(json!({
        "name": name,
        "cron": "* * * * * *",
        "pipeline": PipelineSpec::default()
            .job("fetch", "Noop", &[])
            .job("parse", "Flaky", &["fetch"])
            .job("index", "Noop", &["parse"]),
    }))
    .unwrap();
    spec.pipeline.jobs.get_mut("parse").unwrap().data =
        json!({"fail_attempts": 1}).as_object().unwrap().clone();
    c.client()
        .schedules(ScheduleRequest::Add(spec))
        .expect("schedule added");
}

/// The grid rows of a schedule, as the API sends them.
fn grid_rows(c: &DashCluster, name: &str) -> Vec<Value> {
    let (status, v) = get_json(&c.url(&format!("/api/schedules/{name}")));
    assert_eq!(status, 200, "{v}");
    v["grid"]["rows"].as_array().cloned().unwrap_or_default()
}

#[test]
fn schedules_list_grid_and_actions_over_http() {
    let c = DashCluster::start();
    add_flaky_schedule(&c, "nightly");

    // It ticks: a failed run shows up in the grid with its logical date and job states.
    let failed_row = eventually("a failed run in the grid", Duration::from_secs(60), || {
        grid_rows(&c, "nightly")
            .into_iter()
            .find(|r| r["state"] == "failed")
    });
    assert!(
        failed_row["logical_date"]
            .as_str()
            .is_some_and(|d| d.len() >= 19),
        "{failed_row}"
    );
    assert_eq!(failed_row["kind"], "scheduled");
    assert_eq!(
        failed_row["jobs"],
        json!({"fetch": "succeeded", "parse": "failed", "index": "skipped"})
    );
    let (_, one) = get_json(&c.url("/api/schedules/nightly?limit=1"));
    assert_eq!(one["grid"]["columns"], json!(["fetch", "index", "parse"]));
    assert_eq!(one["grid"]["rows"].as_array().unwrap().len(), 1, "{one}");
    let failed: PipelineId = serde_json::from_value(failed_row["pipeline"].clone()).unwrap();

    // The list: state, settings, next tick, last runs.
    let (status, list) = get_json(&c.url("/api/schedules"));
    assert_eq!(status, 200);
    let s = &list["schedules"][0];
    assert_eq!(s["name"], "nightly");
    assert_eq!(s["state"], "active");
    assert_eq!(s["cron"], "* * * * * *");
    assert_eq!(s["timezone"], "UTC");
    assert_eq!(s["overrun"], "skip");
    assert_eq!(s["max_running"], 1);
    assert!(s["next_tick"].as_str().is_some(), "{s}");
    assert!(!s["last_runs"].as_array().unwrap().is_empty(), "{s}");

    // Pause: the schedule says so, in its answer and in the list.
    let (status, paused) = post_json(&c.url("/api/schedules/nightly/pause"), None);
    assert_eq!(status, 200, "{paused}");
    assert_eq!(paused["state"], "paused");
    let (_, list) = get_json(&c.url("/api/schedules"));
    assert_eq!(list["schedules"][0]["state"], "paused");

    // Trigger: a new run, in the grid as a manual one.
    let (status, made) = post_json(&c.url("/api/schedules/nightly/trigger"), None);
    assert_eq!(status, 200, "{made}");
    let manual = made["pipeline"].as_str().expect("a run id").to_string();
    eventually(
        "the triggered run in the grid",
        Duration::from_secs(30),
        || {
            grid_rows(&c, "nightly")
                .into_iter()
                .find(|r| r["pipeline"] == manual.as_str() && r["kind"] == "manual")
        },
    );

    // Clear a failed date: its failed jobs run again, and the run succeeds.
    let body = json!({ "pipeline": failed }).to_string();
    let (status, cleared) = post_json(&c.url("/api/schedules/nightly/clear"), Some(&body));
    assert_eq!(status, 200, "{cleared}");
    let mut pm = c.client();
    eventually(
        "the cleared run to succeed",
        Duration::from_secs(30),
        || {
            let s = pm.status(failed).ok()?;
            (s.state == PipelineState::Succeeded).then_some(())
        },
    );
    assert_eq!(pm.status(failed).unwrap().jobs["parse"].attempts, 2);
    eventually("the grid to show it", Duration::from_secs(30), || {
        grid_rows(&c, "nightly").into_iter().find(|r| {
            r["pipeline"] == failed.to_string().as_str() && r["jobs"]["index"] == "succeeded"
        })
    });

    // Resume.
    let (status, resumed) = post_json(&c.url("/api/schedules/nightly/resume"), None);
    assert_eq!(status, 200, "{resumed}");
    assert_eq!(resumed["state"], "active");

    // Errors: an unknown schedule, a bad body, the wrong method.
    let (status, v) = get_json(&c.url("/api/schedules/nope"));
    assert_eq!(status, 404, "{v}");
    assert!(v["error"].as_str().unwrap().contains("nope"), "{v}");
    for action in ["pause", "resume", "trigger"] {
        let (status, v) = post_json(&c.url(&format!("/api/schedules/nope/{action}")), None);
        assert_eq!(status, 404, "{action}: {v}");
    }
    let (status, v) = post_json(&c.url("/api/schedules/nope/clear"), Some(&body));
    assert_eq!(status, 404, "{v}");
    let (status, v) = post_json(&c.url("/api/schedules/nightly/clear"), Some("{}"));
    assert_eq!(status, 400, "{v}");
    // Clearing names a run of that schedule; clearing a succeeded run changes nothing.
    let stranger = c
        .client()
        .start(&PipelineSpec::default().job("only", "Noop", &[]))
        .unwrap();
    let other = json!({ "pipeline": stranger }).to_string();
    let (status, v) = post_json(&c.url("/api/schedules/nightly/clear"), Some(&other));
    assert_eq!(status, 404, "{v}");
    let (status, v) = post_json(&c.url("/api/schedules/nightly/clear"), Some(&body));
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["state"], "succeeded",
        "a succeeded run has nothing to clear: {v}"
    );
    assert_eq!(v["jobs"]["parse"]["attempts"], 2, "{v}");
    // Another site's page may not pause it.
    let response = agent()
        .post(&c.url("/api/schedules/nightly/pause"))
        .header("Origin", "http://evil.example")
        .send_empty()
        .unwrap();
    assert_eq!(response.status().as_u16(), 403);
    let (status, v) = get_json(&c.url("/api/schedules/nightly/pause"));
    assert_eq!(status, 405, "{v}");
    let (status, v) = get_json(&c.url("/api/schedules/nightly?limit=many"));
    assert_eq!(status, 400, "{v}");
}

// ---------------------------------------------------------------------------------
// Headless Chromium through chromedriver (W3C WebDriver over HTTP)
// ---------------------------------------------------------------------------------

const CHROMIUM: &str = "/usr/bin/chromium";
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// A chromedriver process and one browser session; both end when dropped.
struct Browser {
    base: String,
    session: String,
    driver: Child,
}

impl Browser {
    fn start(chromedriver: &Path, dir: &Path) -> Browser {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let log = std::fs::File::create(dir.join("chromedriver.log")).unwrap();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start chromedriver");
        let mut browser = Browser {
            base: format!("http://127.0.0.1:{port}"),
            session: String::new(),
            driver,
        };
        let status_url = format!("{}/status", browser.base);
        eventually("chromedriver to be ready", Duration::from_secs(20), || {
            let mut r = agent().get(&status_url).call().ok()?;
            let v: Value = serde_json::from_str(&r.body_mut().read_to_string().ok()?).ok()?;
            (v["value"]["ready"] == true).then_some(())
        });
        let profile = dir.join("chromium-profile");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless", "--no-sandbox", "--disable-gpu",
                         "--disable-background-networking", "--disable-dev-shm-usage",
                         "--hide-scrollbars", "--window-size=1280,960",
                         format!("--user-data-dir={}", profile.display())],
            }
        }}});
        let v = browser.command("POST", "/session", Some(caps));
        browser.session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_string();
        browser
    }

    /// One WebDriver command; its `value`. A WebDriver error fails the test.
    fn command(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = if path == "/session" {
            format!("{}{path}", self.base)
        } else {
            format!("{}/session/{}{path}", self.base, self.session)
        };
        let body = match method {
            "POST" => Some(body.unwrap_or_else(|| json!({})).to_string()),
            _ => None,
        };
        let (status, _, text) = request(method, &url, body.as_deref());
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        assert!(status < 300, "WebDriver {method} {path}: {status} {text}");
        v["value"].clone()
    }

    fn goto(&self, url: &str) {
        self.command("POST", "/url", Some(json!({ "url": url })));
    }

    fn script(&self, js: &str) -> Value {
        self.command(
            "POST",
            "/execute/sync",
            Some(json!({"script": js, "args": []})),
        )
    }

    fn text(&self) -> String {
        self.script("return document.body.innerText;")
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn element(&self, css: &str) -> String {
        let v = self.command(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        );
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_string()
    }

    fn click(&self, css: &str) {
        let e = self.element(css);
        self.command("POST", &format!("/element/{e}/click"), Some(json!({})));
    }

    fn type_into(&self, css: &str, text: &str) {
        let e = self.element(css);
        self.command(
            "POST",
            &format!("/element/{e}/value"),
            Some(json!({ "text": text })),
        );
    }

    fn clear(&self, css: &str) {
        let e = self.element(css);
        self.command("POST", &format!("/element/{e}/clear"), Some(json!({})));
    }

    /// Waits until the page's text contains every one of `needles`.
    fn wait_text(&self, needles: &[&str], timeout: Duration) -> String {
        let mut last = String::new();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            last = self.text();
            if needles.iter().all(|n| last.contains(n)) {
                return last;
            }
            std::thread::sleep(Duration::from_millis(150));
        }
        panic!("the page never showed {needles:?}; it shows:\n{last}");
    }

    fn screenshot(&self, path: &Path) {
        let v = self.command("GET", "/screenshot", None);
        let png = base64_decode(v.as_str().expect("base64 PNG"));
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let url = format!("{}/session/{}", self.base, self.session);
            let _ = agent().delete(&url).call();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Standard base64 (with or without padding), as WebDriver sends screenshots.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for v in text.bytes().filter_map(value) {
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

// ---------------------------------------------------------------------------------
// The token
// ---------------------------------------------------------------------------------

const TOKEN: &str = "a-token-for-tests-0123456789";

/// A request with extra headers; status and body.
fn request_with(method: &str, url: &str, headers: &[(&str, &str)]) -> (u16, String, Vec<String>) {
    let a = agent();
    let mut response = if method == "GET" {
        let mut r = a.get(url);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.call()
    } else {
        let mut r = a.post(url);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.send_empty()
    }
    .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let cookies = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_string))
        .collect();
    let status = response.status().as_u16();
    (
        status,
        response.body_mut().read_to_string().unwrap_or_default(),
        cookies,
    )
}

/// A pipeline whose one job sleeps a minute, running.
fn start_long(c: &DashCluster) -> PipelineId {
    let mut pm = c.client();
    let mut spec = PipelineSpec::default().job("nap", "Sleep", &[]);
    spec.jobs.get_mut("nap").unwrap().data = json!({"ms": 60_000}).as_object().unwrap().clone();
    let id = pm.start(&spec).unwrap();
    eventually("the long job to run", Duration::from_secs(20), || {
        let s = pm.status(id).ok()?;
        (s.jobs["nap"].state == pypelinin_common::JobState::Running).then_some(())
    });
    id
}

#[test]
fn a_token_guards_the_api_and_its_actions() {
    let c = DashCluster::start_with(&["--http-token", TOKEN]);
    let id = start_long(&c);
    let list = c.url("/api/pipelines");

    // Without the token: nothing but the empty page, its assets and the session path.
    let (code, body, _) = request_with("GET", &list, &[]);
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("needs its token"), "{body}");
    assert_eq!(request_with("GET", &c.url("/metrics"), &[]).0, 401);
    let cancel = c.url(&format!("/api/pipelines/{id}/cancel"));
    assert_eq!(
        request_with("POST", &cancel, &[]).0,
        401,
        "a refused action"
    );
    let (code, page, _) = request_with("GET", &c.url("/"), &[]);
    assert_eq!(code, 200);
    assert!(
        !page.contains(&id.to_string()),
        "the page holds no data without the token"
    );
    assert_eq!(request_with("GET", &c.url("/assets/app.js"), &[]).0, 200);
    let (_, state) = get_json(&c.url("/api/session"));
    assert_eq!(state, json!({"required": true, "signed_in": false}));

    // The token as a bearer header (scripts, Prometheus).
    let bearer = format!("Bearer {TOKEN}");
    let (code, body, _) = request_with("GET", &list, &[("Authorization", &bearer)]);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(&id.to_string()), "{body}");
    let wrong = format!("Bearer {TOKEN}x");
    assert_eq!(
        request_with("GET", &list, &[("Authorization", &wrong)]).0,
        401
    );

    // A session from the page: a wrong token is refused, the right one opens it.
    let session = c.url("/api/session");
    let (code, _) = post_json(&session, Some(r#"{"token": "not-the-token-at-all"}"#));
    assert_eq!(code, 401);
    let mut response = agent()
        .post(&session)
        .content_type("application/json")
        .send(format!(r#"{{"token": "{TOKEN}"}}"#))
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let cookies: Vec<String> = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    let _ = response.body_mut().read_to_string();
    let value = |name: &str| {
        cookies
            .iter()
            .find_map(|c| c.strip_prefix(&format!("{name}=")))
            .map(|rest| rest.split(';').next().unwrap().to_string())
            .unwrap_or_else(|| panic!("no {name} cookie in {cookies:?}"))
    };
    let (sid, csrf) = (value("pypelinin_session"), value("pypelinin_csrf"));
    assert!(
        cookies.iter().any(|c| c.starts_with("pypelinin_session=")
            && c.contains("HttpOnly")
            && c.contains("SameSite=Strict")),
        "{cookies:?}"
    );
    let cookie = format!("pypelinin_session={sid}; pypelinin_csrf={csrf}");
    let (code, page, _) = request_with("GET", &c.url("/"), &[("Cookie", &cookie)]);
    assert_eq!(code, 200);
    assert!(
        page.contains(&id.to_string()),
        "signed in, the page lists it"
    );

    // A change made with the session must echo its CSRF value, from the same origin.
    let (code, body, _) = request_with("POST", &cancel, &[("Cookie", &cookie)]);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("X-CSRF-Token"), "{body}");
    let (code, _, _) = request_with(
        "POST",
        &cancel,
        &[
            ("Cookie", &cookie),
            ("X-CSRF-Token", &csrf),
            ("Origin", "http://evil.example"),
        ],
    );
    assert_eq!(code, 403, "another site's page");
    let (code, body, _) = request_with(
        "POST",
        &cancel,
        &[("Cookie", &cookie), ("X-CSRF-Token", &csrf)],
    );
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("cancelled"), "{body}");

    // Signing out ends the session.
    let end = c.url("/api/session/end");
    assert_eq!(
        request_with("POST", &end, &[("Cookie", &cookie)]).0,
        403,
        "no CSRF"
    );
    let (code, _, cleared) = request_with(
        "POST",
        &end,
        &[("Cookie", &cookie), ("X-CSRF-Token", &csrf)],
    );
    assert_eq!(code, 200);
    assert!(
        cleared.iter().any(|c| c.contains("Max-Age=0")),
        "{cleared:?}"
    );
    assert_eq!(request_with("GET", &list, &[("Cookie", &cookie)]).0, 401);
}

#[test]
fn a_router_refuses_a_dashboard_beyond_loopback_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("router.log");
    let db = dir.path().join("db");
    // The router with `http_args` must exit with an error; its log.
    let refused = |http_args: &[&str]| {
        let mut args = vec![
            "--api",
            "tcp://127.0.0.1:0",
            "--broadcast",
            "tcp://127.0.0.1:0",
            "--db",
            db.to_str().unwrap(),
        ];
        args.extend_from_slice(http_args);
        let mut router = Proc::spawn("pypelinin-router", &args, &log);
        let status = router
            .wait_exit(Duration::from_secs(30))
            .expect("the router exits");
        assert!(!status.success());
        std::fs::read_to_string(&log).unwrap()
    };
    // Refused before the HTTP port is bound: nothing listens beyond loopback.
    let text = refused(&["--http", "0.0.0.0:0"]);
    assert!(
        text.contains("not a loopback address") && text.contains("--http-token"),
        "{text}"
    );
    // A token too short is refused with the bound.
    let text = refused(&["--http", "127.0.0.1:0", "--http-token", "tiny"]);
    assert!(text.contains("at least 16"), "{text}");
}

#[test]
fn base64_decodes_what_webdriver_sends() {
    assert_eq!(base64_decode("aGVsbG8gd29ybGQ="), b"hello world");
    assert_eq!(base64_decode("iVBORw0KGgo"), b"\x89PNG\r\n\x1a\n");
}

/// chromedriver's path; `None` (the test is skipped) when Chromium or chromedriver is
/// missing and `CI` is not set. Under CI their absence fails the test.
fn chromedriver_for(test: &str) -> Option<PathBuf> {
    let chromedriver = find_in_path("chromedriver");
    if !Path::new(CHROMIUM).exists() || chromedriver.is_none() {
        let why = format!(
            "headless Chromium is needed: {CHROMIUM} {}, chromedriver {} (Debian: apt-get install chromium chromium-driver; .ci/run does it)",
            if Path::new(CHROMIUM).exists() { "found" } else { "missing" },
            if chromedriver.is_some() { "found" } else { "missing" },
        );
        if std::env::var_os("CI").is_some() {
            panic!("{why}");
        }
        eprintln!("SKIPPED {test}: {why}");
        return None;
    }
    chromedriver
}

#[test]
fn dashboard_signs_in_with_its_token_in_headless_chromium() {
    let Some(chromedriver) =
        chromedriver_for("dashboard_signs_in_with_its_token_in_headless_chromium")
    else {
        return;
    };
    let c = DashCluster::start_with(&["--http-token", TOKEN]);
    let id = start_long(&c);
    let browser = Browser::start(&chromedriver, c.dir.path());
    browser.goto(&c.url("/"));
    let text = browser.wait_text(&["Sign in", "needs its token"], Duration::from_secs(15));
    assert!(!text.contains(&id.to_string()), "{text}");
    // An action without the token, from the page itself: refused.
    let refused = browser.script(&format!(
        "return fetch('/api/pipelines/{id}/cancel', {{method: 'POST'}}).then(r => r.status);"
    ));
    assert_eq!(refused, 401);
    browser.type_into("#token", "not-the-token-at-all");
    browser.click("#signin button");
    browser.wait_text(&["Wrong token."], Duration::from_secs(15));
    browser.clear("#token");
    browser.type_into("#token", TOKEN);
    browser.click("#signin button");
    // Signed in, the page loads again with the list, and acts with its session.
    browser.wait_text(&[&id.to_string()], Duration::from_secs(15));
    browser.goto(&c.url(&format!("/#/pipeline/{id}")));
    browser.wait_text(&["nap", "Cancel"], Duration::from_secs(15));
    browser.click("#cancel");
    browser.wait_text(
        &["Cancelled: the pipeline is cancelled."],
        Duration::from_secs(15),
    );
    let mut pm = c.client();
    assert_eq!(pm.status(id).unwrap().state, PipelineState::Cancelled);
}

#[test]
fn dashboard_in_headless_chromium() {
    let Some(chromedriver) = chromedriver_for("dashboard_in_headless_chromium") else {
        return;
    };
    let started = Instant::now();
    let c = DashCluster::start();
    let shots = if std::env::var("SAVE_SCREENSHOTS").is_ok_and(|v| v == "1") {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
        std::fs::create_dir_all(&docs).unwrap();
        docs
    } else {
        c.dir.path().to_path_buf()
    };

    // A succeeding pipeline, a failing one (its Flaky job fails once), a running one.
    let mut pm = c.client();
    let ok = pm.start(&document_pipeline()).unwrap();
    let bad = pm.start(&flaky_pipeline()).unwrap();
    pm.wait_all(&[ok, bad], Duration::from_secs(60)).unwrap();
    let mut slow = PipelineSpec::default()
        .job("extract", "Noop", &[])
        .job("transform", "Sleep", &["extract"])
        .job("load", "Noop", &["transform"]);
    slow.jobs.get_mut("transform").unwrap().data =
        json!({"ms": 60_000}).as_object().unwrap().clone();
    let running = pm.start(&slow).unwrap();
    eventually("the slow pipeline to run", Duration::from_secs(20), || {
        let s = pm.status(running).ok()?;
        (s.jobs["transform"].state == pypelinin_common::JobState::Running).then_some(())
    });

    let browser = Browser::start(&chromedriver, c.dir.path());

    // The list: every pipeline with its state, live.
    browser.goto(&c.url("/"));
    let (ok_s, bad_s, running_s) = (ok.to_string(), bad.to_string(), running.to_string());
    let text = browser.wait_text(
        &[&ok_s, &bad_s, &running_s, "live"],
        Duration::from_secs(15),
    );
    assert!(text.contains("succeeded") && text.contains("failed") && text.contains("running"));
    assert!(
        text.contains("4/4 jobs") && text.contains("5/5 jobs"),
        "{text}"
    );
    assert!(
        text.contains("1/3 jobs"),
        "the running pipeline's progress: {text}"
    );
    browser.screenshot(&shots.join("dashboard-pipelines.png"));

    // A pipeline submitted elsewhere shows up by itself: the page does not poll, the
    // dashboard pushes the change over its event stream.
    let pushed = pm
        .start(&PipelineSpec::default().job("only", "Noop", &[]))
        .unwrap();
    pm.wait(pushed, Duration::from_secs(30)).unwrap();
    let pushed_s = pushed.to_string();
    browser.wait_text(&[&pushed_s, "1/1 jobs"], Duration::from_secs(20));
    let stream = browser.script(
        "const live = document.getElementById('live'); \
         return [live.className, live.dataset.stream, Number(live.dataset.events) > 0];",
    );
    assert_eq!(
        stream,
        json!(["live ok", "open", true]),
        "the page listens to the event stream, it is up, events came"
    );

    // Search narrows the list without a reload; clearing it brings everything back.
    browser.type_into("#search", &bad_s[bad_s.len() - 8..]);
    eventually("the search to apply", Duration::from_secs(10), || {
        let t = browser.text();
        (t.contains(&bad_s) && !t.contains(&ok_s)).then_some(())
    });
    browser.clear("#search");
    browser.script("document.getElementById('search').dispatchEvent(new Event('input'));");
    browser.wait_text(&[&ok_s, &bad_s], Duration::from_secs(10));

    // One pipeline: the failed job and its error, one SVG node per job.
    browser.click(&format!("tr[data-id='{bad}'] a"));
    let text = browser.wait_text(
        &[
            "flaky failure on attempt 1",
            "not run: parse failed",
            "Retry failed jobs",
        ],
        Duration::from_secs(15),
    );
    assert!(text.contains("fetch") && text.contains("publish"), "{text}");
    let nodes = browser.script(
        "return Array.from(document.querySelectorAll('#dag-svg .node')).map(n => \
         [n.dataset.job, n.querySelector('rect').getAttribute('fill')]);",
    );
    let mut nodes: Vec<(String, String)> = serde_json::from_value(nodes).unwrap();
    nodes.sort();
    assert_eq!(
        nodes,
        [
            ("fetch", "#86efac"),
            ("index", "#fde68a"),
            ("parse", "#fca5a5"),
            ("publish", "#fde68a"),
            ("stats", "#86efac"),
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    let edges = browser.script("return document.querySelectorAll('#dag-svg path.edge').length;");
    assert_eq!(edges, 5);
    // Each node's settings line: its effective priority (downstream weights).
    let rules = browser.script(
        "return Array.from(document.querySelectorAll('#dag-svg .node')).map(n => \
         [n.dataset.job, n.querySelector('text.rule').textContent]);",
    );
    let mut rules: Vec<(String, String)> = serde_json::from_value(rules).unwrap();
    rules.sort();
    assert_eq!(
        rules[0],
        ("fetch".to_string(), "p 5".to_string()),
        "{rules:?}"
    );
    assert_eq!(
        rules[3],
        ("publish".to_string(), "p 1".to_string()),
        "{rules:?}"
    );
    let buttons = browser.script(
        "return [document.getElementById('retry').disabled, document.getElementById('cancel').disabled];",
    );
    assert_eq!(
        buttons,
        json!([false, true]),
        "retry on, cancel off for a failed pipeline"
    );
    // A job's log at a click: the failed attempt's `tracing` line.
    browser.click("#jobs tr.job[data-job='parse']");
    browser.wait_text(
        &["of parse", "flaky worker starting"],
        Duration::from_secs(15),
    );
    browser.screenshot(&shots.join("dashboard-pipeline.png"));

    // Retry at a click: the pipeline runs again and succeeds, reusing what succeeded.
    browser.click("#retry");
    eventually(
        "the retried pipeline to succeed on the page",
        Duration::from_secs(20),
        || {
            let state =
                browser.script("return document.getElementById('pipeline-state').innerText;");
            (state == "succeeded").then_some(())
        },
    );
    let text = browser.wait_text(&["attempt 2", "Retry accepted"], Duration::from_secs(10));
    assert!(!text.contains("not run: parse failed"), "{text}");
    let s = pm.status(bad).unwrap();
    assert_eq!(s.state, PipelineState::Succeeded);
    assert_eq!(s.jobs["parse"].attempts, 2);
    assert_eq!(s.jobs["fetch"].attempts, 1);

    // Cancel at a click, on the running pipeline.
    browser.goto(&c.url(&format!("/#/pipeline/{running}")));
    browser.wait_text(&["transform", "running"], Duration::from_secs(10));
    browser.click("#cancel");
    eventually("the cancel to show", Duration::from_secs(15), || {
        let state = browser.script("return document.getElementById('pipeline-state').innerText;");
        (state == "cancelled").then_some(())
    });
    assert_eq!(pm.status(running).unwrap().state, PipelineState::Cancelled);

    // Brokers: the monitoring table, the throughput chart and the pools.
    pm.pools(pypelinin_common::protocol::PoolRequest::Set {
        name: "warehouse".into(),
        slots: 3,
    })
    .unwrap();
    browser.goto(&c.url("/#/brokers"));
    let brokers = pm.brokers().unwrap();
    let text = browser.wait_text(
        &[&brokers[0].name, "%", "GiB", "brokers alive", "warehouse"],
        Duration::from_secs(15),
    );
    let pool = browser.script(
        "return document.querySelector('#pools tr[data-pool=warehouse] small').textContent;",
    );
    assert_eq!(pool, "0/3", "slots in use / capacity");
    assert!(text.contains("Flaky"), "workers offered: {text}");
    let points = browser.script(
        "return document.querySelector('#throughput polyline').getAttribute('points').split(' ').length;",
    );
    assert_eq!(points, 300, "one point per second over five minutes");
    browser.screenshot(&shots.join("dashboard-brokers.png"));

    // Schedules: the list, one schedule's grid, pause, a cell opening the pipeline page
    // on its job, clear and trigger at a click.
    add_flaky_schedule(&c, "hourly-report");
    eventually("a failed scheduled run", Duration::from_secs(60), || {
        grid_rows(&c, "hourly-report")
            .into_iter()
            .find(|r| r["state"] == "failed")
    });
    browser.goto(&c.url("/#/schedules"));
    browser.wait_text(
        &["hourly-report", "active", "* * * * * *"],
        Duration::from_secs(15),
    );
    // The page redraws as runs come and go (every second here): what is clicked while
    // the schedule ticks is clicked in one step, once it is there.
    let click_now = |css: &str| {
        let js = format!(
            "const e = document.querySelector({}); if (e) e.click(); return !!e;",
            json!(css)
        );
        eventually(css, Duration::from_secs(15), || {
            (browser.script(&js) == json!(true)).then_some(())
        });
    };
    click_now("tr[data-name='hourly-report'] a");
    browser.wait_text(
        &["Logical date", "Next ticks", "Trigger"],
        Duration::from_secs(15),
    );
    click_now("#pause-resume");
    eventually(
        "the schedule to show paused",
        Duration::from_secs(15),
        || {
            let shown = browser.script(
                "return [document.getElementById('schedule-state').innerText, \
             document.getElementById('pause-resume').innerText];",
            );
            (shown == json!(["paused", "Resume"])).then_some(())
        },
    );
    // The newest failed run, shown in the grid.
    let run = grid_rows(&c, "hourly-report")
        .into_iter()
        .find(|r| r["state"] == "failed")
        .expect("a failed run")["pipeline"]
        .as_str()
        .unwrap()
        .to_string();
    let colours = format!(
        "return ['fetch', 'parse', 'index'].map(j => document.querySelector(\
         \"#schedule-grid tr[data-pipeline='{run}'] a.cell[data-job='\" + j + \"']\"))\
         .map(e => e && getComputedStyle(e).backgroundColor);"
    );
    eventually("the run's cells", Duration::from_secs(15), || {
        let shown = browser.script(&colours);
        (shown
            == json!([
                "rgb(134, 239, 172)",
                "rgb(252, 165, 165)",
                "rgb(253, 230, 138)"
            ]))
        .then_some(())
    });
    browser.screenshot(&shots.join("dashboard-schedule.png"));
    click_now(&format!(
        "#schedule-grid tr[data-pipeline='{run}'] a.cell[data-job='parse']"
    ));
    browser.wait_text(
        &["of parse", "flaky worker starting", &run],
        Duration::from_secs(15),
    );
    let focused = browser.script(
        "return [location.hash, document.querySelector('#jobs tr.job.focus').dataset.job];",
    );
    assert_eq!(
        focused,
        json!([format!("#/pipeline/{run}/job/parse"), "parse"])
    );
    browser.goto(&c.url("/#/schedules/hourly-report"));
    click_now(&format!("button.clear[data-pipeline='{run}']"));
    browser.wait_text(&["Cleared: run"], Duration::from_secs(15));
    let run_id: PipelineId = run.parse().unwrap();
    eventually(
        "the cleared run to succeed",
        Duration::from_secs(30),
        || (pm.status(run_id).ok()?.state == PipelineState::Succeeded).then_some(()),
    );
    click_now("#trigger");
    browser.wait_text(&["Triggered: run"], Duration::from_secs(15));

    // Past a page (200 rows) the list pages back by cursor, Older and Newest; the first
    // pipelines, finished long ago, are read back from the router's disk.
    let mut many = Vec::new();
    for _ in 0..200 {
        many.push(
            pm.start_async(&PipelineSpec::default().job("only", "Noop", &[]))
                .unwrap(),
        );
    }
    pm.confirm().unwrap();
    pm.wait_all(&many, Duration::from_secs(60)).unwrap();
    browser.goto(&c.url("/"));
    let newest = many.last().unwrap().to_string();
    browser.wait_text(&[&newest], Duration::from_secs(15));
    eventually("the Older button", Duration::from_secs(15), || {
        (browser.script("return !document.getElementById('older').hidden;") == json!(true))
            .then_some(())
    });
    assert!(
        !browser.text().contains(&ok_s),
        "the first pipeline is on a later page"
    );
    click_now("#older");
    browser.wait_text(&[&ok_s, &bad_s], Duration::from_secs(15));
    assert!(
        !browser.text().contains(&newest),
        "an older page holds older pipelines"
    );
    assert_eq!(
        browser.script("return document.getElementById('newer').hidden;"),
        json!(false)
    );
    click_now("#newer");
    browser.wait_text(&[&newest], Duration::from_secs(15));
    assert!(!browser.text().contains(&ok_s));

    eprintln!(
        "browser test took {:.1?}; screenshots in {}",
        started.elapsed(),
        shots.display()
    );
}
