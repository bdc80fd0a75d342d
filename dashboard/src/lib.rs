//! The pypelinin web dashboard: the page, its JSON API, live updates and Prometheus
//! `/metrics`, served by the router binary with `--http ADDR`.
//!
//! It is a client of the router like any other, through a narrow [`link`]: it asks over
//! the router's API socket with the common protocol types and never reaches into the
//! router's state. It depends on `pypelinin-common` only. HTTP is served by `axum` on a
//! `tokio` runtime of its own threads; each request to the router runs on a blocking
//! thread with one of a few ZeroMQ connections, so the router's own synchronous event
//! loop is untouched.
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
//! | GET | `/api/pools` | every pool: capacity, slots in use, jobs queued |
//! | GET | `/api/metrics` | cluster metrics (JSON) |
//! | GET | `/api/events` | live changes, as Server-Sent Events (below) |
//! | GET | `/metrics` | the same metrics in Prometheus text format |
//! | GET | `/api/session` | `{"required", "signed_in"}`: whether a token is needed and given |
//! | POST | `/api/session` | `{"token"}` opens a browser session (see [`auth`]) |
//! | POST | `/api/session/end` | closes it |
//!
//! Errors are `{"error": "..."}` with 400 (bad request), 401 (the token is needed and
//! was not proved), 403 (a POST from another site's page, or from a session without its
//! CSRF value), 404 (unknown pipeline or path), 405 (wrong method), 409 (refused now,
//! e.g. retrying a running pipeline) or 503 (the router did not answer).
//!
//! # The event stream
//!
//! `GET /api/events` answers `text/event-stream`. Each message is one SSE event with a
//! name and one line of JSON data:
//!
//! ```text
//! event: pipelines
//! data: {"changed": [{"id", "state", "submitted_ms", "finished_ms", "jobs", "done", "duration_ms"}…], "now_ms": N}
//!
//! event: metrics
//! data: {…the object of GET /api/metrics, with now_ms…}
//!
//! event: brokers
//! data: [{…each broker as in GET /api/brokers…}]
//!
//! event: unreachable
//! data: {"error": "router at … did not answer: …"}
//! ```
//!
//! A new stream first gets the state pushed so far (`pipelines` listing every watched
//! pipeline, then `metrics` and `brokers`); after that, `pipelines` lists only the
//! pipelines that are new or whose state, progress or end changed, among the newest
//! [`events::WATCHED`]; `metrics` and `brokers` come when they changed (request latency
//! and heartbeat ages aside) and at least every [`events::RESEND_EVERY`]; `unreachable`
//! comes once when the router stops answering, and the next `pipelines` says it is back.
//! The changes come from one refresh shared by every stream, run when the router
//! broadcasts a submission or an end (broadcasts only wake it: one can be lost), after a
//! cancel or retry from the page, and every [`events::REFRESH_EVERY`] while a stream is
//! open. Comments (`:`) keep idle connections alive. A client that reconnects is greeted
//! with the state again, so it misses nothing it needs.

#![warn(missing_docs)]

pub mod api;
pub mod auth;
pub mod events;
pub mod link;
pub mod prometheus;
pub mod shapes;

use pypelinin_common::curve::Security;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use axum::extract::Request;
use axum::ServiceExt;
use tokio::sync::watch;
use tower::util::MapRequestLayer;
use tower::Layer;
use tracing::{info, warn};

pub use api::{escape_html, same_origin, ListQuery};
pub use link::{Link, LinkError, Links};
pub use prometheus::prometheus;

/// Threads of the dashboard's runtime (HTTP and streams; router requests run on
/// blocking threads beside them).
pub const RUNTIME_THREADS: usize = 2;

/// Why the dashboard could not start.
#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
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
    /// Asked to listen beyond loopback without a token.
    #[error(
        "the dashboard would listen on {addr}, which is not a loopback address, without a token: \
         anyone who reaches that port could read every pipeline and cancel or retry them. \
         Give it one with --http-token or --http-token-file, or bind 127.0.0.1"
    )]
    TokenRequired {
        /// The address asked for.
        addr: String,
    },
    /// The token given is not usable.
    #[error("{0}")]
    Token(#[from] auth::TokenError),
    /// The runtime or a thread could not be started.
    #[error("starting the dashboard: {0}")]
    Start(std::io::Error),
}

/// A running dashboard; stops serving when dropped.
pub struct Dashboard {
    runtime: Option<tokio::runtime::Runtime>,
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    watching: Arc<AtomicBool>,
    watcher: Option<JoinHandle<()>>,
}

impl Dashboard {
    /// Binds `addr` (`HOST:PORT`; a bare `PORT` or `:PORT` means `127.0.0.1:PORT`; port 0
    /// picks a free one) and serves the dashboard for the router at `api`/`broadcast`.
    ///
    /// Requests to the router wait in its API socket until it runs, so the dashboard
    /// may start just after the router binds, before it runs.
    pub fn start(addr: &str, api: &str, broadcast: &str) -> Result<Dashboard, DashboardError> {
        Dashboard::start_with_token(addr, api, broadcast, None)
    }

    /// [`Dashboard::start`], every API request needing `token` when one is given (see
    /// [`auth`]). Refuses a non-loopback `addr` without a token, before binding it.
    pub fn start_with_token(
        addr: &str,
        api: &str,
        broadcast: &str,
        token: Option<&str>,
    ) -> Result<Dashboard, DashboardError> {
        Dashboard::start_secured(addr, api, broadcast, token, &Security::None)
    }

    /// [`Dashboard::start_with_token`] whose connections to the router use `security`
    /// (inside a CURVE router: its own key pair, [`Security::own_client`]).
    pub fn start_secured(
        addr: &str,
        api: &str,
        broadcast: &str,
        token: Option<&str>,
        security: &Security,
    ) -> Result<Dashboard, DashboardError> {
        let target = socket_addr(addr)?;
        let auth = token.map(auth::Auth::new).transpose()?.map(Arc::new);
        if auth.is_none() && !target.ip().is_loopback() {
            return Err(DashboardError::TokenRequired {
                addr: target.to_string(),
            });
        }
        let bind_error = |e: std::io::Error| DashboardError::Bind {
            addr: target.to_string(),
            message: e.to_string(),
        };
        let listener = std::net::TcpListener::bind(target).map_err(bind_error)?;
        listener.set_nonblocking(true).map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(RUNTIME_THREADS)
            .thread_name("dashboard")
            .enable_all()
            .build()
            .map_err(DashboardError::Start)?;
        let listener = {
            let _inside = runtime.enter();
            tokio::net::TcpListener::from_std(listener).map_err(bind_error)?
        };

        let ctx = zmq::Context::new();
        let links = Links::with_security(&ctx, api, security.clone());
        let (stop, stopped) = watch::channel(false);
        let hub = Arc::new(events::Hub::new(stopped.clone()));
        let app = Arc::new(api::App {
            links: links.clone(),
            hub: Arc::clone(&hub),
            auth,
        });
        runtime.spawn(events::refresh(Arc::clone(&hub), links));
        let mut until = stopped;
        runtime.spawn(async move {
            // A trailing slash names the same route (`/api/pipelines/`), as it always
            // has: the path is trimmed before routing.
            let routes = MapRequestLayer::new(api::trim_trailing_slash).layer(api::router(app));
            let served = axum::serve(listener, ServiceExt::<Request>::into_make_service(routes))
                .with_graceful_shutdown(async move {
                    let _ = until.wait_for(|s| *s).await;
                })
                .await;
            if let Err(e) = served {
                warn!(error = %e, "dashboard stopped serving");
            }
        });

        let watching = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&watching);
        let broadcast = broadcast.to_string();
        let security = security.clone();
        let watcher = std::thread::Builder::new()
            .name("dashboard-sub".into())
            .spawn(move || events::watch_broadcasts(&ctx, &broadcast, &security, &hub, &flag))
            .map_err(DashboardError::Start)?;
        info!(%addr, "dashboard serving");
        Ok(Dashboard {
            runtime: Some(runtime),
            addr,
            stop,
            watching,
            watcher: Some(watcher),
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

    /// Stops taking requests, ends the event streams, and waits (briefly) for the
    /// requests in flight.
    pub fn stop(mut self) {
        self.signal();
        if let Some(w) = self.watcher.take() {
            let _ = w.join();
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }

    fn signal(&self) {
        let _ = self.stop.send(true);
        self.watching.store(true, Ordering::Relaxed);
    }
}

impl Drop for Dashboard {
    /// Stops without waiting: a request to the router in flight ends on its own (at
    /// most the link's patience when the router is gone).
    fn drop(&mut self) {
        self.signal();
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// `8080`, `:8080` → `127.0.0.1:8080`; anything else is resolved as given.
fn socket_addr(addr: &str) -> Result<SocketAddr, DashboardError> {
    let bad = |message: String| DashboardError::Address {
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
    fn refuses_to_listen_beyond_loopback_without_a_token() {
        // Refused before anything is bound: no port is opened by this test.
        let err = Dashboard::start("0.0.0.0:0", "tcp://127.0.0.1:1", "tcp://127.0.0.1:2")
            .err()
            .expect("refused");
        assert!(matches!(err, DashboardError::TokenRequired { .. }), "{err}");
        assert!(err.to_string().contains("--http-token"), "{err}");
        let err = Dashboard::start_with_token("127.0.0.1:0", "", "", Some("short"))
            .err()
            .expect("refused");
        assert!(err.to_string().contains("at least 16"), "{err}");
    }
}
