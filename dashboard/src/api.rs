//! The routes: the page, its assets, the JSON API, `/metrics` and the event stream.
//!
//! Every handler asks the router through [`Links`] and turns the
//! answer (or the error) into an [`Answer`]; a middleware refuses POSTs from other sites'
//! pages, logs each request in an `http` span and marks every response uncacheable.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, Request, State};
use axum::http::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, HOST, ORIGIN};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use pypelinin_common::protocol::{PipelineId, PipelineSummary, ProtocolError};
use pypelinin_common::render::{self, Progress};
use pypelinin_common::transport::TransportError;
use pypelinin_common::{now_ms, PipelineSpec, PipelineState, PipelineStatus};
use serde_json::{json, Value};
use tracing::{debug, info, info_span, warn, Instrument};

use crate::events::{self, Hub};
use crate::link::{LinkError, Links};
use crate::prometheus::prometheus;

const INDEX_HTML: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const APP_CSS: &str = include_str!("../assets/app.css");

/// Largest request body accepted (retry bodies are tiny).
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// Pipelines listed when the request names no limit.
pub const DEFAULT_LIMIT: u32 = 100;
/// Most pipelines one list request returns.
pub const MAX_LIMIT: u32 = 1000;

/// What every handler shares: the links to the router and the event hub.
pub struct App {
    /// Requests to the router.
    pub links: Links,
    /// Live changes, for `/api/events`.
    pub hub: Arc<Hub>,
}

/// The same request with one trailing slash taken off its path (`/api/pipelines/` is
/// `/api/pipelines`); `/` stays. Applied before routing.
pub fn trim_trailing_slash(mut request: Request) -> Request {
    let uri = request.uri();
    let path = uri.path();
    if path.len() > 1 && path.ends_with('/') {
        let trimmed = &path[..path.len() - 1];
        let rebuilt = match uri.query() {
            Some(q) => format!("{trimmed}?{q}"),
            None => trimmed.to_string(),
        };
        if let Ok(pq) = rebuilt.parse::<axum::http::uri::PathAndQuery>() {
            let mut parts = uri.clone().into_parts();
            parts.path_and_query = Some(pq);
            if let Ok(new) = Uri::from_parts(parts) {
                *request.uri_mut() = new;
            }
        }
    }
    request
}

/// The routes, with the origin check, logging and no-cache headers around them.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(index).fallback(only_get))
        .route("/index.html", get(index).fallback(only_get))
        .route("/assets/app.js", get(app_js).fallback(no_page))
        .route("/assets/app.css", get(app_css).fallback(no_page))
        .route("/metrics", get(prometheus_text).fallback(only_get))
        .route("/api/pipelines", get(list).fallback(only_get))
        .route("/api/brokers", get(brokers).fallback(only_get))
        .route("/api/metrics", get(metrics).fallback(only_get))
        .route("/api/events", get(events::stream).fallback(only_get))
        .route(
            "/api/pipelines/{id}",
            get(pipeline).fallback(pipeline_only_get),
        )
        .route(
            "/api/pipelines/{id}/outputs",
            get(outputs).fallback(pipeline_only_get),
        )
        .route(
            "/api/pipelines/{id}/dot",
            get(dot).fallback(pipeline_only_get),
        )
        .route(
            "/api/pipelines/{id}/cancel",
            post(cancel).fallback(pipeline_only_post),
        )
        .route(
            "/api/pipelines/{id}/retry",
            post(retry).fallback(pipeline_only_post),
        )
        .fallback(no_page)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(guard))
        .with_state(app)
}

/// Around every request: the same-origin check on POSTs, an `http` span, the outcome
/// logged, and headers that keep browsers from caching or sniffing answers.
async fn guard(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let span = info_span!("http", %method, path = %request.uri());
    async move {
        let headers = request.headers();
        let mut response = if method == Method::POST
            && !same_origin(header(headers, ORIGIN), header(headers, HOST))
        {
            Answer::error(403, "cross-origin requests may not change pipelines").into_response()
        } else {
            next.run(request).await
        };
        let status = response.status().as_u16();
        if status >= 500 {
            warn!(status, "request failed");
        } else {
            debug!(status, took = ?started.elapsed(), "request");
        }
        let headers = response.headers_mut();
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(
            "x-content-type-options",
            HeaderValue::from_static("nosniff"),
        );
        response
    }
    .instrument(span)
    .await
}

fn header(headers: &HeaderMap, name: axum::http::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
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

    /// `{"error": message}` with `status`.
    pub fn error(status: u16, message: &str) -> Answer {
        Answer::json(status, &json!({ "error": message }))
    }

    fn method_not_allowed(allow: &'static str) -> Answer {
        Answer {
            allow: Some(allow),
            ..Answer::error(405, &format!("method not allowed; use {allow}"))
        }
    }

    fn of<T: serde::Serialize>(result: Result<T, LinkError>) -> Answer {
        match result {
            Ok(v) => Answer::ok(&v),
            Err(e) => e.into(),
        }
    }
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (
            status,
            [(CONTENT_TYPE, HeaderValue::from_static(self.content_type))],
            self.body,
        )
            .into_response();
        if let Some(allow) = self.allow {
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static(allow));
        }
        response
    }
}

impl From<LinkError> for Answer {
    fn from(e: LinkError) -> Answer {
        Answer::error(error_status(&e), &e.to_string())
    }
}

/// The HTTP status that tells what went wrong asking the router.
pub fn error_status(e: &LinkError) -> u16 {
    match e {
        LinkError::Transport(TransportError::Refused(p)) => match p {
            ProtocolError::UnknownPipeline(_) => 404,
            ProtocolError::Refused(_) | ProtocolError::Conflict(_) => 409,
            ProtocolError::InvalidPipeline(_) => 400,
            _ => 502,
        },
        LinkError::Transport(TransportError::Unreachable { .. }) | LinkError::Abandoned(_) => 503,
        _ => 502,
    }
}

fn parse_id(id: &str) -> Result<PipelineId, Answer> {
    id.parse::<PipelineId>()
        .map_err(|_| Answer::error(400, &format!("{id:?} is not a pipeline id")))
}

async fn only_get() -> Answer {
    Answer::method_not_allowed("GET")
}

/// A pipeline path asked with the wrong method: a bad id is still told first.
async fn pipeline_only_get(Path(id): Path<String>) -> Answer {
    parse_id(&id).map_or_else(|e| e, |_| Answer::method_not_allowed("GET"))
}

async fn pipeline_only_post(Path(id): Path<String>) -> Answer {
    parse_id(&id).map_or_else(|e| e, |_| Answer::method_not_allowed("POST"))
}

/// Anything else: under `/api/`, a bad pipeline id is told before the unknown path.
async fn no_page(uri: Uri) -> Answer {
    let path = uri.path();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["api", "pipelines", id, ..] => match parse_id(id) {
            Err(bad) => bad,
            Ok(_) => Answer::error(404, "no such API path"),
        },
        ["api", ..] => Answer::error(404, "no such API path"),
        _ => Answer::error(404, &format!("no page at {path}")),
    }
}

async fn app_js() -> Answer {
    Answer::text("text/javascript; charset=utf-8", APP_JS)
}

async fn app_css() -> Answer {
    Answer::text("text/css; charset=utf-8", APP_CSS)
}

async fn prometheus_text(State(app): State<Arc<App>>) -> Answer {
    match app.links.run(|l| l.metrics()).await {
        Ok(m) => Answer::text("text/plain; version=0.0.4; charset=utf-8", prometheus(&m)),
        Err(e) => e.into(),
    }
}

async fn brokers(State(app): State<Arc<App>>) -> Answer {
    Answer::of(app.links.run(|l| l.brokers()).await)
}

async fn metrics(State(app): State<Arc<App>>) -> Answer {
    match app.links.run(|l| l.metrics()).await {
        Ok(m) => {
            let mut v = serde_json::to_value(&m).unwrap_or_default();
            v["now_ms"] = now_ms().into();
            Answer::json(200, &v)
        }
        Err(e) => e.into(),
    }
}

async fn list(State(app): State<Arc<App>>, RawQuery(query): RawQuery) -> Answer {
    let q = match ListQuery::parse(query.as_deref().unwrap_or("")) {
        Ok(q) => q,
        Err(e) => return Answer::error(400, &e),
    };
    // A search looks further back than the page it returns.
    let fetch = if q.q.is_empty() { q.limit } else { MAX_LIMIT };
    let state = q.state;
    let list = match app.links.run(move |l| l.list(fetch, state)).await {
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
        .map(|p| summary_json(p, now))
        .collect();
    Answer::json(200, &json!({ "pipelines": rows, "now_ms": now }))
}

/// A line of the pipeline list as the API shows it: the summary plus `duration_ms`
/// (until now for a pipeline still going).
pub fn summary_json(p: &PipelineSummary, now: u64) -> Value {
    let mut v = serde_json::to_value(p).unwrap_or_default();
    v["duration_ms"] = p
        .finished_ms
        .unwrap_or(now)
        .saturating_sub(p.submitted_ms)
        .into();
    v
}

async fn pipeline(State(app): State<Arc<App>>, Path(id): Path<String>) -> Answer {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(bad) => return bad,
    };
    match app
        .links
        .run(move |l| Ok((l.status(id)?, l.spec(id)?)))
        .await
    {
        Ok((status, spec)) => Answer::json(200, &pipeline_json(&status, &spec, now_ms())),
        Err(e) => e.into(),
    }
}

/// The status, each job with its `after`, the `edges`, the `progress` counts, the
/// `duration_ms` so far and `now_ms`.
pub fn pipeline_json(status: &PipelineStatus, spec: &PipelineSpec, now: u64) -> Value {
    let mut v = serde_json::to_value(status).unwrap_or_default();
    for (name, job) in &spec.jobs {
        if let Some(j) = v["jobs"].get_mut(name) {
            j["after"] = json!(job.after);
        }
    }
    v["edges"] = json!(render::edges(spec));
    v["progress"] = json!(Progress::of(status));
    v["duration_ms"] = status
        .finished_ms
        .unwrap_or(now)
        .saturating_sub(status.submitted_ms)
        .into();
    v["now_ms"] = now.into();
    v
}

async fn outputs(State(app): State<Arc<App>>, Path(id): Path<String>) -> Answer {
    match parse_id(&id) {
        Ok(id) => Answer::of(app.links.run(move |l| l.outputs(id)).await),
        Err(bad) => bad,
    }
}

async fn dot(State(app): State<Arc<App>>, Path(id): Path<String>) -> Answer {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(bad) => return bad,
    };
    match app
        .links
        .run(move |l| Ok((l.spec(id)?, l.status(id)?)))
        .await
    {
        Ok((spec, status)) => match render::dot(&spec, &status) {
            Ok(text) => Answer::text("text/vnd.graphviz; charset=utf-8", text),
            Err(e) => Answer::error(500, &e.to_string()),
        },
        Err(e) => e.into(),
    }
}

async fn cancel(State(app): State<Arc<App>>, Path(id): Path<String>) -> Answer {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(bad) => return bad,
    };
    info!(pipeline = %id, "cancel asked from the dashboard");
    let answer = Answer::of(app.links.run(move |l| l.cancel(id)).await);
    app.hub.wake();
    answer
}

async fn retry(State(app): State<Arc<App>>, Path(id): Path<String>, body: Bytes) -> Answer {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct RetryBody {
        #[serde(default)]
        jobs: Vec<String>,
    }
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(bad) => return bad,
    };
    let jobs = if body.iter().all(u8::is_ascii_whitespace) {
        Vec::new()
    } else {
        match serde_json::from_slice::<RetryBody>(&body) {
            Ok(b) => b.jobs,
            Err(e) => return Answer::error(400, &format!("body: {e}")),
        }
    };
    info!(pipeline = %id, ?jobs, "retry asked from the dashboard");
    let answer = Answer::of(app.links.run(move |l| l.retry(id, &jobs)).await);
    app.hub.wake();
    answer
}

/// The page, with the pipeline list rendered in (the script takes over and keeps it live).
async fn index(State(app): State<Arc<App>>) -> Answer {
    let list = app.links.run(|l| l.list(DEFAULT_LIMIT, None)).await;
    Answer::text(
        "text/html; charset=utf-8",
        INDEX_HTML.replace("{{rows}}", &index_rows(list, now_ms())),
    )
}

fn index_rows(list: Result<Vec<PipelineSummary>, LinkError>, now: u64) -> String {
    let list = match list {
        Ok(list) => list,
        Err(e) => {
            return format!(
                "<tr><td colspan=\"5\" class=\"error\">{}</td></tr>",
                escape_html(&e.to_string())
            )
        }
    };
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
