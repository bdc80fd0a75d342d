//! The web dashboard, its JSON API and the Prometheus metrics (`--http ADDR`).
//!
//! A few threads serve HTTP with `tiny_http`. They are plain clients of the router:
//! each one holds its own [`PipelineManager`] connected to the router's API socket and
//! asks it, like the command line does; nothing here touches the router's state.
//!
//! | method | path | answer |
//! |---|---|---|
//! | GET | `/` | the dashboard (HTML; its script and style under `/assets/`) |
//! | GET | `/api/pipelines?state=&limit=&q=` | `{"pipelines": [summary…], "now_ms"}`, newest first |
//! | GET | `/api/pipelines/{id}` | the status with each job's `after`, `edges`, `progress` |
//! | POST | `/api/pipelines/{id}/cancel` | the status after cancelling |
//! | POST | `/api/pipelines/{id}/retry` | the status after a retry; body `{"jobs": [...]}` optional |
//! | GET | `/api/pipelines/{id}/outputs` | job name → output |
//! | GET | `/api/pipelines/{id}/dot` | Graphviz DOT with job states |
//! | GET | `/api/brokers` | the brokers with their monitoring |
//! | GET | `/api/metrics` | cluster metrics (JSON) |
//! | GET | `/metrics` | the same in Prometheus text format |
//!
//! Errors are `{"error": "..."}` with 400 (bad request), 403 (a POST from another
//! site's page), 404 (unknown pipeline or path), 405 (wrong method), 409 (refused now,
//! e.g. retrying a running pipeline) or 503 (the router did not answer).

use std::fmt::Write as _;
use std::io::Read;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pypelinin_client::render::{self, Progress};
use pypelinin_client::{ClientError, PipelineManager};
use pypelinin_common::protocol::{ClusterMetrics, Histogram, PipelineId, ProtocolError};
use pypelinin_common::transport::TransportError;
use pypelinin_common::{now_ms, PipelineState};
use serde_json::{json, Value};
use tracing::{debug, info, info_span, warn};

const INDEX_HTML: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const APP_CSS: &str = include_str!("../assets/app.css");

/// Threads answering HTTP requests (each with its own connection to the router).
pub const HTTP_THREADS: usize = 4;
/// Largest request body read (retry bodies are tiny).
pub const MAX_BODY_BYTES: u64 = 1 << 20;
/// Pipelines listed when the request names no limit.
pub const DEFAULT_LIMIT: u32 = 100;
/// Most pipelines one list request returns.
pub const MAX_LIMIT: u32 = 1000;

/// Why the HTTP server could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The address could not be parsed or resolved.
    #[error("http address {addr:?}: {message}")]
    Address {
        /// The address given.
        addr: String,
        /// What is wrong.
        message: String,
    },
    /// Binding failed (in use, not permitted…).
    #[error("http on {addr}: {message}")]
    Bind {
        /// The address.
        addr: String,
        /// The error.
        message: String,
    },
}

/// A running dashboard server; stops its threads when dropped.
pub struct Dashboard {
    server: Arc<tiny_http::Server>,
    addr: SocketAddr,
    threads: Vec<JoinHandle<()>>,
}

impl Dashboard {
    /// Binds `addr` (`HOST:PORT`; a bare `PORT` or `:PORT` means `127.0.0.1:PORT`; port 0
    /// picks a free one) and serves the dashboard for the router at `api`/`broadcast`.
    pub fn start(addr: &str, api: &str, broadcast: &str) -> Result<Dashboard, HttpError> {
        let target = socket_addr(addr)?;
        let server = tiny_http::Server::http(target).map_err(|e| HttpError::Bind {
            addr: target.to_string(),
            message: e.to_string(),
        })?;
        let addr = server.server_addr().to_ip().unwrap_or(target);
        let server = Arc::new(server);
        let mut threads = Vec::with_capacity(HTTP_THREADS);
        for k in 0..HTTP_THREADS {
            let server = Arc::clone(&server);
            let (api, broadcast) = (api.to_string(), broadcast.to_string());
            let t = std::thread::Builder::new()
                .name(format!("http-{k}"))
                .spawn(move || serve(&server, &api, &broadcast))
                .map_err(|e| HttpError::Bind {
                    addr: addr.to_string(),
                    message: e.to_string(),
                })?;
            threads.push(t);
        }
        info!(%addr, "dashboard serving");
        Ok(Dashboard {
            server,
            addr,
            threads,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://HOST:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Dashboard {
    /// Stops taking requests and waits for the threads to finish the ones they serve.
    pub fn stop(mut self) {
        self.unblock();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }

    fn unblock(&self) {
        for _ in &self.threads {
            self.server.unblock();
        }
    }
}

impl Drop for Dashboard {
    /// Stops taking requests without waiting: a thread busy with a request finishes it
    /// (at most the client's patience when the router is gone), then ends.
    fn drop(&mut self) {
        self.unblock();
    }
}

/// `8080`, `:8080` → `127.0.0.1:8080`; anything else is resolved as given.
fn socket_addr(addr: &str) -> Result<SocketAddr, HttpError> {
    let bad = |message: String| HttpError::Address {
        addr: addr.to_string(),
        message,
    };
    let spelled = match addr.strip_prefix(':').unwrap_or(addr) {
        port if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            format!("127.0.0.1:{port}")
        }
        _ => addr.to_string(),
    };
    spelled
        .to_socket_addrs()
        .map_err(|e| bad(e.to_string()))?
        .next()
        .ok_or_else(|| bad("resolves to no address".into()))
}

fn serve(server: &tiny_http::Server, api: &str, broadcast: &str) {
    let mut pm = match PipelineManager::connect(api, broadcast) {
        Ok(pm) => pm,
        Err(e) => {
            warn!(error = %e, "dashboard thread cannot reach the router");
            return;
        }
    };
    // The router is in the same process: a short patience keeps pages snappy when it
    // is busy, and an error page is better than a hung browser tab.
    pm.set_patience(Duration::from_millis(2_500), 2);
    while let Ok(mut request) = server.recv() {
        let started = Instant::now();
        let method = request.method().as_str().to_ascii_uppercase();
        let url = request.url().to_string();
        let span = info_span!("http", %method, path = %url);
        let _enter = span.enter();
        let mut body = Vec::new();
        if method == "POST" {
            let _ = request
                .as_reader()
                .take(MAX_BODY_BYTES)
                .read_to_end(&mut body);
        }
        let header_value = |name: &'static str| {
            request
                .headers()
                .iter()
                .find(|h| h.field.equiv(name))
                .map(|h| h.value.as_str().to_string())
        };
        let answer = if method == "POST"
            && !same_origin(
                header_value("Origin").as_deref(),
                header_value("Host").as_deref(),
            ) {
            Answer::error(403, "cross-origin requests may not change pipelines")
        } else {
            handle(&mut pm, &method, &url, &body)
        };
        if answer.status >= 500 {
            warn!(status = answer.status, "request failed");
        } else {
            debug!(status = answer.status, took = ?started.elapsed(), "request");
        }
        let mut response = tiny_http::Response::from_data(answer.body)
            .with_status_code(answer.status)
            .with_header(header("Content-Type", answer.content_type))
            .with_header(header("Cache-Control", "no-store"))
            .with_header(header("X-Content-Type-Options", "nosniff"));
        if let Some(allow) = answer.allow {
            response.add_header(header("Allow", allow));
        }
        let _ = request.respond(response);
    }
}

/// Whether a request that changes something comes from the dashboard's own pages (or
/// from a client that is not a browser: no `Origin`). A page of another site, open in
/// the operator's browser, cannot cancel or retry pipelines through this loopback port.
pub fn same_origin(origin: Option<&str>, host: Option<&str>) -> bool {
    let Some(origin) = origin else {
        return true;
    };
    let Some(host) = host else {
        return false;
    };
    let origin = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    origin.is_some_and(|o| o.trim_end_matches('/').eq_ignore_ascii_case(host.trim()))
}

fn header(name: &str, value: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes())
        .expect("static header names and values are valid")
}

/// What to send back.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status code.
    pub status: u16,
    /// Content-Type.
    pub content_type: &'static str,
    /// The body.
    pub body: Vec<u8>,
    /// Allowed methods, for a 405.
    pub allow: Option<&'static str>,
}

impl Answer {
    fn json(status: u16, value: &Value) -> Answer {
        Answer {
            status,
            content_type: "application/json",
            body: serde_json::to_vec(value).unwrap_or_default(),
            allow: None,
        }
    }

    fn ok<T: serde::Serialize>(value: &T) -> Answer {
        match serde_json::to_value(value) {
            Ok(v) => Answer::json(200, &v),
            Err(e) => Answer::error(500, &format!("encoding the answer: {e}")),
        }
    }

    fn text(content_type: &'static str, body: impl Into<Vec<u8>>) -> Answer {
        Answer {
            status: 200,
            content_type,
            body: body.into(),
            allow: None,
        }
    }

    fn error(status: u16, message: &str) -> Answer {
        Answer::json(status, &json!({ "error": message }))
    }

    fn method_not_allowed(allow: &'static str) -> Answer {
        Answer {
            allow: Some(allow),
            ..Answer::error(405, &format!("method not allowed; use {allow}"))
        }
    }
}

impl From<ClientError> for Answer {
    fn from(e: ClientError) -> Answer {
        let status = match &e {
            ClientError::Transport(TransportError::Refused(p)) => match p {
                ProtocolError::UnknownPipeline(_) => 404,
                ProtocolError::Refused(_) | ProtocolError::Conflict(_) => 409,
                ProtocolError::InvalidPipeline(_) => 400,
                _ => 502,
            },
            ClientError::Transport(TransportError::Unreachable { .. }) => 503,
            _ => 502,
        };
        Answer::error(status, &e.to_string())
    }
}

/// Answers one request: `method` is upper case, `url` the path with its query.
pub fn handle(pm: &mut PipelineManager, method: &str, url: &str, body: &[u8]) -> Answer {
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let get = method == "GET" || method == "HEAD";
    let post = method == "POST";
    match segments.as_slice() {
        [""] | ["index.html"] => match get {
            true => index_page(pm),
            false => Answer::method_not_allowed("GET"),
        },
        ["assets", "app.js"] if get => Answer::text("text/javascript; charset=utf-8", APP_JS),
        ["assets", "app.css"] if get => Answer::text("text/css; charset=utf-8", APP_CSS),
        ["metrics"] => match get {
            true => match pm.metrics() {
                Ok(m) => Answer::text("text/plain; version=0.0.4; charset=utf-8", prometheus(&m)),
                Err(e) => e.into(),
            },
            false => Answer::method_not_allowed("GET"),
        },
        ["api", rest @ ..] => api(pm, get, post, rest, query, body),
        _ => Answer::error(404, &format!("no page at {path}")),
    }
}

fn api(
    pm: &mut PipelineManager,
    get: bool,
    post: bool,
    rest: &[&str],
    query: &str,
    body: &[u8],
) -> Answer {
    match rest {
        ["pipelines"] if get => list(pm, query),
        ["brokers"] if get => match pm.brokers() {
            Ok(b) => Answer::ok(&b),
            Err(e) => e.into(),
        },
        ["metrics"] if get => match pm.metrics() {
            Ok(m) => {
                let mut v = serde_json::to_value(&m).unwrap_or_default();
                v["now_ms"] = now_ms().into();
                Answer::json(200, &v)
            }
            Err(e) => e.into(),
        },
        ["pipelines", id, action @ ..] => {
            let Ok(id) = id.parse::<PipelineId>() else {
                return Answer::error(400, &format!("{id:?} is not a pipeline id"));
            };
            let span = info_span!("pipeline", pipeline = %id);
            let _enter = span.enter();
            match (action, get, post) {
                ([], true, _) => pipeline(pm, id),
                (["outputs"], true, _) => match pm.outputs(id) {
                    Ok(o) => Answer::ok(&o),
                    Err(e) => e.into(),
                },
                (["dot"], true, _) => match pm.spec(id).and_then(|s| Ok((s, pm.status(id)?))) {
                    Ok((spec, status)) => match render::dot(&spec, &status) {
                        Ok(text) => Answer::text("text/vnd.graphviz; charset=utf-8", text),
                        Err(e) => Answer::error(500, &e.to_string()),
                    },
                    Err(e) => e.into(),
                },
                (["cancel"], _, true) => {
                    info!("cancel asked from the dashboard");
                    match pm.cancel(id) {
                        Ok(s) => Answer::ok(&s),
                        Err(e) => e.into(),
                    }
                }
                (["retry"], _, true) => retry(pm, id, body),
                ([] | ["outputs"] | ["dot"], false, _) => Answer::method_not_allowed("GET"),
                (["cancel"] | ["retry"], _, false) => Answer::method_not_allowed("POST"),
                _ => Answer::error(404, "no such API path"),
            }
        }
        ["pipelines"] | ["brokers"] | ["metrics"] => Answer::method_not_allowed("GET"),
        _ => Answer::error(404, "no such API path"),
    }
}

/// The query parameters of the pipeline list.
#[derive(Debug, Default, PartialEq)]
pub struct ListQuery {
    /// Only this state.
    pub state: Option<PipelineState>,
    /// At most this many.
    pub limit: u32,
    /// Case-insensitive text to find in the id or the state.
    pub q: String,
}

impl ListQuery {
    /// Parses `state=&limit=&q=`; unknown keys are ignored, bad values refused.
    pub fn parse(query: &str) -> Result<ListQuery, String> {
        let mut out = ListQuery {
            limit: DEFAULT_LIMIT,
            ..ListQuery::default()
        };
        for (key, value) in query_pairs(query) {
            match key.as_str() {
                "state" => {
                    out.state = match value.as_str() {
                        "" | "all" => None,
                        other => Some(
                            serde_json::from_value(Value::String(other.to_string()))
                                .map_err(|_| format!("unknown state {other:?}"))?,
                        ),
                    }
                }
                "limit" => {
                    let n: u32 = value
                        .parse()
                        .map_err(|_| format!("limit {value:?} is not a number"))?;
                    out.limit = n.clamp(1, MAX_LIMIT);
                }
                "q" => out.q = value.trim().to_lowercase(),
                _ => {}
            }
        }
        Ok(out)
    }
}

fn list(pm: &mut PipelineManager, query: &str) -> Answer {
    let q = match ListQuery::parse(query) {
        Ok(q) => q,
        Err(e) => return Answer::error(400, &e),
    };
    // A search looks further back than the page it returns.
    let fetch = if q.q.is_empty() { q.limit } else { MAX_LIMIT };
    let list = match pm.list_in(fetch, q.state) {
        Ok(l) => l,
        Err(e) => return e.into(),
    };
    let now = now_ms();
    let rows: Vec<Value> = list
        .iter()
        .filter(|p| {
            q.q.is_empty()
                || p.id.to_string().contains(&q.q)
                || p.state.as_str().contains(q.q.as_str())
        })
        .take(q.limit as usize)
        .map(|p| {
            let mut v = serde_json::to_value(p).unwrap_or_default();
            v["duration_ms"] = p
                .finished_ms
                .unwrap_or(now)
                .saturating_sub(p.submitted_ms)
                .into();
            v
        })
        .collect();
    Answer::json(200, &json!({ "pipelines": rows, "now_ms": now }))
}

/// The status, each job with its `after`, the `edges`, the `progress` counts.
fn pipeline(pm: &mut PipelineManager, id: PipelineId) -> Answer {
    let status = match pm.status(id) {
        Ok(s) => s,
        Err(e) => return e.into(),
    };
    let spec = match pm.spec(id) {
        Ok(s) => s,
        Err(e) => return e.into(),
    };
    let now = now_ms();
    let mut v = serde_json::to_value(&status).unwrap_or_default();
    for (name, job) in &spec.jobs {
        if let Some(j) = v["jobs"].get_mut(name) {
            j["after"] = json!(job.after);
        }
    }
    v["edges"] = json!(render::edges(&spec));
    v["progress"] = json!(Progress::of(&status));
    v["duration_ms"] = status
        .finished_ms
        .unwrap_or(now)
        .saturating_sub(status.submitted_ms)
        .into();
    v["now_ms"] = now.into();
    Answer::json(200, &v)
}

fn retry(pm: &mut PipelineManager, id: PipelineId, body: &[u8]) -> Answer {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct RetryBody {
        #[serde(default)]
        jobs: Vec<String>,
    }
    let jobs = if body.iter().all(u8::is_ascii_whitespace) {
        Vec::new()
    } else {
        match serde_json::from_slice::<RetryBody>(body) {
            Ok(b) => b.jobs,
            Err(e) => return Answer::error(400, &format!("body: {e}")),
        }
    };
    info!(?jobs, "retry asked from the dashboard");
    match pm.retry(id, &jobs) {
        Ok(s) => Answer::ok(&s),
        Err(e) => e.into(),
    }
}

/// The page, with the pipeline list rendered in (the script takes over and keeps it live).
fn index_page(pm: &mut PipelineManager) -> Answer {
    let now = now_ms();
    let rows = match pm.list(DEFAULT_LIMIT) {
        Ok(list) => {
            let mut rows = String::new();
            for p in &list {
                let pct = (p.done * 100).checked_div(p.jobs).unwrap_or(0);
                let _ = write!(
                    rows,
                    "<tr data-id=\"{id}\"><td><a class=\"mono\" href=\"#/pipeline/{id}\">{id}</a></td>\
                     <td><span class=\"badge s-{state}\">{state}</span></td>\
                     <td><div class=\"bar\"><span style=\"width:{pct}%\"></span></div> <small>{done}/{jobs}</small></td>\
                     <td>{started} UTC</td><td>{took}</td></tr>",
                    id = p.id,
                    state = p.state.as_str(),
                    done = p.done,
                    jobs = p.jobs,
                    started = render::utc_time(p.submitted_ms),
                    took = render::duration(p.finished_ms.unwrap_or(now).saturating_sub(p.submitted_ms)),
                );
            }
            if list.is_empty() {
                rows.push_str("<tr><td colspan=\"5\" class=\"empty\">No pipeline yet.</td></tr>");
            }
            rows
        }
        Err(e) => format!(
            "<tr><td colspan=\"5\" class=\"error\">{}</td></tr>",
            escape_html(&e.to_string())
        ),
    };
    Answer::text(
        "text/html; charset=utf-8",
        INDEX_HTML.replace("{{rows}}", &rows),
    )
}

/// Escapes text for HTML content and attribute values.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `a=1&b=x%20y` → `[("a", "1"), ("b", "x y")]`, percent and `+` decoded.
pub fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Every state, so that a series exists (at 0) before anything reaches it.
const PIPELINE_STATES: [&str; 5] = ["queued", "running", "succeeded", "failed", "cancelled"];
const JOB_STATES: [&str; 6] = [
    "queued",
    "running",
    "succeeded",
    "failed",
    "skipped",
    "cancelled",
];

/// The metrics in Prometheus' text exposition format (version 0.0.4).
pub fn prometheus(m: &ClusterMetrics) -> String {
    let mut out = String::new();
    section(
        &mut out,
        "pypelinin_pipelines",
        "gauge",
        "Pipelines the router knows, by state.",
    );
    out.push_str(&by_state(
        "pypelinin_pipelines",
        &PIPELINE_STATES,
        &m.pipelines,
    ));
    section(
        &mut out,
        "pypelinin_jobs",
        "gauge",
        "Jobs of every pipeline the router knows, by state.",
    );
    out.push_str(&by_state("pypelinin_jobs", &JOB_STATES, &m.jobs));
    section(
        &mut out,
        "pypelinin_job_duration_seconds",
        "histogram",
        "Duration of finished job attempts, by worker.",
    );
    for (worker, h) in &m.job_duration {
        histogram(
            &mut out,
            "pypelinin_job_duration_seconds",
            &format!("worker=\"{}\"", escape_label(worker)),
            h,
        );
    }
    section(
        &mut out,
        "pypelinin_queue_depth",
        "gauge",
        "Jobs ready to run, waiting for a broker slot or a retry delay.",
    );
    let _ = writeln!(out, "pypelinin_queue_depth {}", m.queue_depth);
    section(
        &mut out,
        "pypelinin_brokers_alive",
        "gauge",
        "Brokers connected to the router.",
    );
    let _ = writeln!(out, "pypelinin_brokers_alive {}", m.brokers);
    section(
        &mut out,
        "pypelinin_pipeliners_alive",
        "gauge",
        "Pipeliners connected to the router.",
    );
    let _ = writeln!(out, "pypelinin_pipeliners_alive {}", m.pipeliners);
    section(
        &mut out,
        "pypelinin_attempts_finished_total",
        "counter",
        "Job attempts finished since the router started.",
    );
    let _ = writeln!(
        out,
        "pypelinin_attempts_finished_total {}",
        m.attempts_finished
    );
    section(
        &mut out,
        "pypelinin_request_latency_seconds",
        "histogram",
        "Time from a request's arrival at the router to its reply leaving it.",
    );
    histogram(
        &mut out,
        "pypelinin_request_latency_seconds",
        "",
        &m.request_latency,
    );
    out
}

fn section(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn by_state(
    name: &str,
    states: &[&str],
    counts: &std::collections::BTreeMap<String, u64>,
) -> String {
    let mut out = String::new();
    for s in states {
        let n = counts.get(*s).copied().unwrap_or(0);
        let _ = writeln!(out, "{name}{{state=\"{s}\"}} {n}");
    }
    // States this dashboard does not know yet (a newer router) are still exported.
    for (s, n) in counts {
        if !states.contains(&s.as_str()) {
            let _ = writeln!(out, "{name}{{state=\"{}\"}} {n}", escape_label(s));
        }
    }
    out
}

/// `_bucket` lines (cumulative, `+Inf` last), `_sum` and `_count`.
fn histogram(out: &mut String, name: &str, labels: &str, h: &Histogram) {
    let sep = if labels.is_empty() { "" } else { "," };
    let mut cumulative = 0u64;
    for (k, bound) in h.bounds.iter().enumerate() {
        cumulative += h.counts.get(k).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"{}\"}} {cumulative}",
            float(*bound)
        );
    }
    let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", h.count);
    let braces = if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    };
    let _ = writeln!(out, "{name}_sum{braces} {}", float(h.sum));
    let _ = writeln!(out, "{name}_count{braces} {}", h.count);
}

fn float(x: f64) -> String {
    if x.is_infinite() {
        if x > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else {
        format!("{x}")
    }
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_default_to_loopback() {
        assert_eq!(
            socket_addr("8080").unwrap(),
            "127.0.0.1:8080".parse().unwrap()
        );
        assert_eq!(socket_addr(":0").unwrap(), "127.0.0.1:0".parse().unwrap());
        assert_eq!(
            socket_addr("0.0.0.0:9000").unwrap(),
            "0.0.0.0:9000".parse().unwrap()
        );
        assert!(socket_addr("nonsense").is_err());
    }

    #[test]
    fn list_queries_parse_and_refuse_bad_values() {
        let q = ListQuery::parse("state=failed&limit=5&q=AB%20c+d").unwrap();
        assert_eq!(q.state, Some(PipelineState::Failed));
        assert_eq!(q.limit, 5);
        assert_eq!(q.q, "ab c d");
        assert_eq!(ListQuery::parse("").unwrap().limit, DEFAULT_LIMIT);
        assert_eq!(ListQuery::parse("state=all").unwrap().state, None);
        assert_eq!(ListQuery::parse("limit=999999").unwrap().limit, MAX_LIMIT);
        assert!(ListQuery::parse("state=sleeping").is_err());
        assert!(ListQuery::parse("limit=many").is_err());
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }

    #[test]
    fn only_same_origin_pages_may_post() {
        assert!(same_origin(None, Some("127.0.0.1:8080")), "curl, scripts");
        assert!(same_origin(
            Some("http://127.0.0.1:8080"),
            Some("127.0.0.1:8080")
        ));
        assert!(same_origin(
            Some("http://Router-Host:8080"),
            Some("router-host:8080")
        ));
        assert!(!same_origin(
            Some("http://evil.example"),
            Some("127.0.0.1:8080")
        ));
        assert!(!same_origin(Some("null"), Some("127.0.0.1:8080")));
        assert!(!same_origin(Some("http://127.0.0.1:8080"), None));
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            escape_html(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn prometheus_text_has_cumulative_buckets_and_every_state() {
        let mut m = ClusterMetrics::default();
        m.pipelines.insert("failed".into(), 2);
        m.jobs.insert("succeeded".into(), 7);
        let mut h = Histogram::new(&[0.01, 0.1, 1.0]);
        for s in [0.005, 0.05, 0.05, 5.0] {
            h.observe(s);
        }
        m.job_duration.insert("Wo\"rk".into(), h.clone());
        m.request_latency = h;
        m.queue_depth = 3;
        m.brokers = 2;
        let text = prometheus(&m);
        for line in [
            "# TYPE pypelinin_pipelines gauge",
            "pypelinin_pipelines{state=\"failed\"} 2",
            "pypelinin_pipelines{state=\"running\"} 0",
            "pypelinin_jobs{state=\"succeeded\"} 7",
            "# TYPE pypelinin_job_duration_seconds histogram",
            "pypelinin_job_duration_seconds_bucket{worker=\"Wo\\\"rk\",le=\"0.01\"} 1",
            "pypelinin_job_duration_seconds_bucket{worker=\"Wo\\\"rk\",le=\"0.1\"} 3",
            "pypelinin_job_duration_seconds_bucket{worker=\"Wo\\\"rk\",le=\"1\"} 3",
            "pypelinin_job_duration_seconds_bucket{worker=\"Wo\\\"rk\",le=\"+Inf\"} 4",
            "pypelinin_job_duration_seconds_count{worker=\"Wo\\\"rk\"} 4",
            "pypelinin_queue_depth 3",
            "pypelinin_brokers_alive 2",
            "pypelinin_request_latency_seconds_bucket{le=\"0.1\"} 3",
            "pypelinin_request_latency_seconds_bucket{le=\"+Inf\"} 4",
            "pypelinin_request_latency_seconds_count 4",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}\n---\n{text}");
        }
        assert!(text.contains("pypelinin_request_latency_seconds_sum 5.105"));
    }
}
