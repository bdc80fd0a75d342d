//! The routes: the router itself, its guard middleware, the method and unknown-path
//! fallbacks, and the cluster-wide handlers (`/api/brokers`, `/api/metrics`,
//! `/api/notifications`, `/metrics`).
//!
//! Every handler asks the router through [`Links`] and turns the
//! answer (or the error) into an [`Answer`]; a middleware refuses POSTs from other sites'
//! pages, logs each request in an `http` span and marks every response uncacheable.
//! The rest lives in submodules, re-exported here: `answer` (the [`Answer`] type and
//! the status of each error), `pipelines` (the `/api/pipelines` handlers and
//! [`ListQuery`]), `schedules` (the `/api/schedules` handlers: list, one schedule with
//! its grid, pause, resume, trigger, clear) and `pages` (the page, its assets and
//! [`escape_html`]).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::header::{AUTHORIZATION, CACHE_CONTROL, COOKIE, HOST, ORIGIN};
use axum::http::{HeaderMap, HeaderValue, Method, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use pypelinin_common::now_ms;
use tracing::{debug, info_span, warn, Instrument};

use crate::auth::{Auth, Proof, CSRF_HEADER};
use crate::events::{self, Hub};
use crate::link::Links;
use crate::prometheus::prometheus;

mod answer;
mod pages;
mod pipelines;
mod schedules;
mod session;

pub use crate::shapes::{pipeline_json, summary_json};
pub use answer::{error_status, Answer};
pub use pages::escape_html;
pub use pipelines::{log_page_json, query_pairs, ListQuery};
pub use schedules::{schedule_json, schedule_state, DEFAULT_GRID_ROWS, MAX_GRID_ROWS};

use pages::{app_css, app_js, index, schedules_js};
use pipelines::{cancel, dot, list, logs, outputs, parse_id, pipeline, retry};
use schedules::{clear, list_schedules, pause, resume, schedule, trigger};
use session::{session_state, sign_in, sign_out};

/// `GET /api/events`: the hub's stream (see [`events::stream`]).
async fn event_stream(State(app): State<Arc<App>>) -> impl IntoResponse {
    events::stream(Arc::clone(&app.hub))
}

/// Largest request body accepted (retry bodies are tiny).
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// Pipelines listed when the request names no limit.
pub const DEFAULT_LIMIT: u32 = 100;
/// Most pipelines one list request returns.
pub const MAX_LIMIT: u32 = 1000;

/// What every handler shares: the links to the router, the event hub and the token.
pub struct App {
    /// Requests to the router.
    pub links: Links,
    /// Live changes, for `/api/events`.
    pub hub: Arc<Hub>,
    /// The token every API request must prove, if one is configured.
    pub auth: Option<Arc<Auth>>,
}

/// Put on each request by the guard when a token is configured: whether the request
/// proved it (the page is served either way, with its data only when it did).
#[derive(Clone, Copy, Debug)]
pub struct Signed(pub bool);

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
        .route("/assets/schedules.js", get(schedules_js).fallback(no_page))
        .route("/assets/app.css", get(app_css).fallback(no_page))
        .route("/metrics", get(prometheus_text).fallback(only_get))
        .route("/api/pipelines", get(list).fallback(only_get))
        .route("/api/brokers", get(brokers).fallback(only_get))
        .route("/api/metrics", get(metrics).fallback(only_get))
        .route("/api/notifications", get(notifications).fallback(only_get))
        .route("/api/pools", get(pools).fallback(only_get))
        .route("/api/events", get(event_stream).fallback(only_get))
        .route(
            "/api/session",
            get(session_state).post(sign_in).fallback(no_method),
        )
        .route("/api/session/end", post(sign_out).fallback(only_post))
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
            "/api/pipelines/{id}/jobs/{job}/logs",
            get(logs).fallback(pipeline_logs_only_get),
        )
        .route(
            "/api/pipelines/{id}/cancel",
            post(cancel).fallback(pipeline_only_post),
        )
        .route(
            "/api/pipelines/{id}/retry",
            post(retry).fallback(pipeline_only_post),
        )
        .route("/api/schedules", get(list_schedules).fallback(only_get))
        .route("/api/schedules/{name}", get(schedule).fallback(only_get))
        .route(
            "/api/schedules/{name}/pause",
            post(pause).fallback(only_post),
        )
        .route(
            "/api/schedules/{name}/resume",
            post(resume).fallback(only_post),
        )
        .route(
            "/api/schedules/{name}/trigger",
            post(trigger).fallback(only_post),
        )
        .route(
            "/api/schedules/{name}/clear",
            post(clear).fallback(only_post),
        )
        .fallback(no_page)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&app),
            guard,
        ))
        .with_state(app)
}

/// Paths served without the token: the page and its assets hold no data, and the
/// session path is how the token is given.
fn is_public(path: &str) -> bool {
    matches!(path, "/" | "/index.html" | "/api/session") || path.starts_with("/assets/")
}

/// Why a request is refused by the origin and token checks, if it is; on the way,
/// marks it [`Signed`] when a token is configured.
fn refusal(app: &App, request: &mut Request) -> Option<Answer> {
    let headers = request.headers();
    let post = request.method() == Method::POST;
    if post && !same_origin(header(headers, ORIGIN), header(headers, HOST)) {
        return Some(Answer::error(
            403,
            "cross-origin requests may not change pipelines",
        ));
    }
    let auth = app.auth.as_ref()?;
    let proof = auth.check(header(headers, AUTHORIZATION), header(headers, COOKIE));
    let public = is_public(request.uri().path());
    match &proof {
        None if !public => {
            return Some(Answer::error(
                401,
                "this dashboard needs its token: sign in on its page, or send \
                 `Authorization: Bearer TOKEN`",
            ))
        }
        Some(Proof::Session { csrf })
            if post && !public && header(headers, CSRF_HEADER) != Some(csrf.as_str()) =>
        {
            return Some(Answer::error(
                403,
                "a change made from a dashboard session must carry its X-CSRF-Token header",
            ))
        }
        _ => {}
    }
    request.extensions_mut().insert(Signed(proof.is_some()));
    None
}

/// Around every request: the same-origin check on POSTs, the token (when one is
/// configured), an `http` span, the outcome logged, and headers that keep browsers from
/// caching or sniffing answers.
async fn guard(State(app): State<Arc<App>>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let span = info_span!("http", %method, path = %request.uri());
    async move {
        let mut response = match refusal(&app, &mut request) {
            Some(answer) => {
                debug!(status = answer.status, "refused");
                answer.into_response()
            }
            None => next.run(request).await,
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

fn header<K: axum::http::header::AsHeaderName>(headers: &HeaderMap, name: K) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn only_get() -> Answer {
    Answer::method_not_allowed("GET")
}

async fn only_post() -> Answer {
    Answer::method_not_allowed("POST")
}

async fn no_method() -> Answer {
    Answer::method_not_allowed("GET, POST")
}

/// A pipeline path asked with the wrong method: a bad id is still told first.
async fn pipeline_only_get(Path(id): Path<String>) -> Answer {
    parse_id(&id).map_or_else(|e| e, |_| Answer::method_not_allowed("GET"))
}

async fn pipeline_logs_only_get(Path((id, _job)): Path<(String, String)>) -> Answer {
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

async fn prometheus_text(State(app): State<Arc<App>>) -> Answer {
    match app.links.run(|l| l.metrics()).await {
        Ok(m) => Answer::text("text/plain; version=0.0.4; charset=utf-8", prometheus(&m)),
        Err(e) => e.into(),
    }
}

async fn brokers(State(app): State<Arc<App>>) -> Answer {
    Answer::of(app.links.run(|l| l.brokers()).await)
}

/// `GET /api/pools`: every pool, as `pypelinin pool list --json`.
async fn pools(State(app): State<Arc<App>>) -> Answer {
    Answer::of(app.links.run(|l| l.pools()).await)
}

/// `GET /api/notifications?limit=N`: the latest notifications (default
/// [`DEFAULT_LIMIT`], at most [`MAX_LIMIT`]) with their delivery, newest first.
async fn notifications(
    State(app): State<Arc<App>>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Answer {
    let limit = match ListQuery::parse(query.as_deref().unwrap_or("")) {
        Ok(q) => q.limit,
        Err(e) => return Answer::error(400, &e),
    };
    Answer::of(app.links.run(move |l| l.notifications(limit)).await)
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
