//! The router's event loop: sockets in, [`RouterState`] in the middle, sockets out.
//!
//! One turn: wait for frames (bounded by the next timer), take every frame already
//! queued (up to [`MAX_BATCH`]), run timers, match work, send the hints that
//! acknowledge nothing (job changes for pipeliners), commit to storage once, and only
//! then send replies and the other pushes. Batching the commit is what lets a flushed,
//! durable router keep up with thousands of requests per second.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use pypelinin_common::curve::{CurveError, Security, ZapHandler};
use pypelinin_common::protocol::{self, ClusterConfig, Event, ProtocolError, Request, SOCKET_HWM};
use pypelinin_common::Shutdown;
use tracing::{debug, error, info, warn};

use crate::notify::deliver::{Deliverer, SmtpConfig};
use crate::notify::{NotifyDefaults, RetryPolicy};
use crate::state::{Outgoing, ReplyTo, RouterState};
use crate::store::{DiskStore, Durability, StoreError};

/// Most frames handled in one turn before committing and answering.
pub const MAX_BATCH: usize = 4096;
/// Longest poll when no timer is due, so that a shutdown is noticed promptly.
pub const IDLE_POLL: Duration = Duration::from_millis(100);

/// What a router needs to start.
#[derive(Clone, Debug)]
pub struct RouterConfig {
    /// API address to bind (`tcp://127.0.0.1:0` picks a free port).
    pub api: String,
    /// Broadcast address to bind.
    pub broadcast: String,
    /// Directory of the database (the journal, and redb behind it).
    pub db: PathBuf,
    /// Handed to brokers.
    pub cluster: ClusterConfig,
    /// When changes become durable.
    pub durability: Durability,
}

/// Who hears of what by default, how notifications are retried, and where e-mail
/// goes: the router's `--notify-*` and `--smtp-*` flags.
#[derive(Clone, Debug, Default)]
pub struct NotifyConfig {
    /// Router-wide channels and their events.
    pub defaults: NotifyDefaults,
    /// Tries and backoff.
    pub policy: RetryPolicy,
    /// The SMTP server; without one, e-mail notifications fail with a clear error.
    pub smtp: Option<SmtpConfig>,
}

/// Why the router stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// A socket could not be set up.
    #[error("zeromq on {endpoint}: {source}")]
    Zmq {
        /// The address concerned.
        endpoint: String,
        /// The error.
        source: zmq::Error,
    },
    /// Storage failed: the router stops rather than acknowledge what it cannot keep.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The notification threads could not start.
    #[error("starting the notification threads: {0}")]
    Notify(std::io::Error),
    /// The CURVE setup failed (the ZAP handler could not start).
    #[error(transparent)]
    Curve(#[from] CurveError),
}

/// A router whose sockets are bound and state loaded, ready to run.
pub struct BoundRouter {
    api: zmq::Socket,
    publisher: zmq::Socket,
    state: RouterState,
    /// The API address actually bound.
    pub api_endpoint: String,
    /// The broadcast address actually bound.
    pub broadcast_endpoint: String,
    smtp: Option<SmtpConfig>,
    /// Checks client keys while the router runs (CURVE only); dropped before the context.
    _zap: Option<ZapHandler>,
    _ctx: zmq::Context,
}

fn zerr(endpoint: &str) -> impl Fn(zmq::Error) -> RouterError + '_ {
    move |source| RouterError::Zmq {
        endpoint: endpoint.to_string(),
        source,
    }
}

/// ZeroMQ spells "any free port" `*`; accept the usual `:0` too.
fn bindable(endpoint: &str) -> String {
    match endpoint.strip_suffix(":0") {
        Some(head) if endpoint.starts_with("tcp://") => format!("{head}:*"),
        _ => endpoint.to_string(),
    }
}

impl BoundRouter {
    /// Opens the database and binds both sockets, in the clear.
    pub fn bind(config: RouterConfig) -> Result<Self, RouterError> {
        Self::bind_secured(config, &Security::None)
    }

    /// [`BoundRouter::bind`] with `security`: with [`Security::Server`], both sockets
    /// are CURVE servers and a ZAP handler admits only the authorized client keys.
    pub fn bind_secured(config: RouterConfig, security: &Security) -> Result<Self, RouterError> {
        let store = DiskStore::open(&config.db, config.durability)?;
        let state = RouterState::load(Box::new(store), config.cluster.clone())?;
        let ctx = zmq::Context::new();
        // The ZAP handler must be bound before a CURVE server socket accepts anyone, or
        // libzmq would let peers in unchecked.
        let zap = match security {
            Security::Server { keys, authorized } => {
                info!(
                    authorized_keys = authorized.len(),
                    "CURVE on: only authorized keys connect"
                );
                Some(ZapHandler::start(&ctx, authorized.clone(), keys.public)?)
            }
            _ => {
                for endpoint in [&config.api, &config.broadcast] {
                    if !is_loopback(endpoint) {
                        warn!(
                            %endpoint,
                            "LISTENING BEYOND LOOPBACK WITHOUT CURVE: anyone who reaches this \
                             port can submit and run jobs and read every message in the clear; \
                             use --curve-secret and --authorized-keys"
                        );
                    }
                }
                None
            }
        };
        let api = ctx.socket(zmq::ROUTER).map_err(zerr(&config.api))?;
        let e = zerr(&config.api);
        security.apply(&api).map_err(&e)?;
        api.set_router_mandatory(true).map_err(&e)?;
        api.set_sndhwm(SOCKET_HWM).map_err(&e)?;
        api.set_rcvhwm(SOCKET_HWM).map_err(&e)?;
        api.set_linger(1000).map_err(&e)?;
        api.set_maxmsgsize(protocol::MAX_RECEIVE_BYTES as i64)
            .map_err(&e)?;
        api.bind(&bindable(&config.api)).map_err(&e)?;
        let publisher = ctx.socket(zmq::PUB).map_err(zerr(&config.broadcast))?;
        let e = zerr(&config.broadcast);
        security.apply(&publisher).map_err(&e)?;
        publisher.set_sndhwm(SOCKET_HWM).map_err(&e)?;
        publisher.set_linger(0).map_err(&e)?;
        publisher.bind(&bindable(&config.broadcast)).map_err(&e)?;
        let api_endpoint = last_endpoint(&api);
        let broadcast_endpoint = last_endpoint(&publisher);
        Ok(BoundRouter {
            api,
            publisher,
            state,
            api_endpoint,
            broadcast_endpoint,
            smtp: None,
            _zap: zap,
            _ctx: ctx,
        })
    }

    /// Sets the router-wide notification channels, retries and SMTP server (before
    /// [`BoundRouter::run`]; without it, only pipelines' own webhooks are notified).
    pub fn set_notify(&mut self, config: NotifyConfig) {
        self.state.set_notify(config.defaults, config.policy);
        self.smtp = config.smtp;
    }

    /// Deletes finished history older than `retention` (the router's `--retention`);
    /// `None`, the default, keeps everything.
    pub fn set_retention(&mut self, retention: Option<Duration>) {
        self.state.set_retention(retention);
    }

    /// Serves until `shutdown` triggers.
    pub fn run(mut self, shutdown: Shutdown) -> Result<(), RouterError> {
        info!(api = %self.api_endpoint, broadcast = %self.broadcast_endpoint, "router serving");
        let result = self.serve(&shutdown);
        if let Err(e) = &result {
            error!(error = %e, "router stopped on error");
        }
        result
    }

    fn serve(&mut self, shutdown: &Shutdown) -> Result<(), RouterError> {
        let mut frames: Vec<zmq::Message> = Vec::with_capacity(4);
        let mut arrivals: Vec<Instant> = Vec::new();
        // Notifications are sent by threads of their own; the loop only hands them
        // out and, each turn, takes back what became of them.
        let deliverer = Deliverer::start(self.smtp.clone()).map_err(RouterError::Notify)?;
        while !shutdown.is_triggered() {
            let now = Instant::now();
            let wait = self
                .state
                .next_timer(now)
                .unwrap_or(IDLE_POLL)
                .min(IDLE_POLL);
            let mut items = [self.api.as_poll_item(zmq::POLLIN)];
            pypelinin_common::transport::poll(&mut items, wait.as_millis() as i64)
                .map_err(zerr(&self.api_endpoint))?;
            arrivals.clear();
            for _ in 0..MAX_BATCH {
                if !self.recv(&mut frames)? {
                    break;
                }
                arrivals.push(Instant::now());
                self.on_frames(&frames)?;
            }
            self.state.notification_outcomes(deliverer.outcomes());
            self.state.tick(Instant::now())?;
            self.state.dispatch()?;
            let hints = self.state.drain_hints();
            self.send_all(hints)?;
            self.state.commit()?;
            self.flush_outbox()?;
            for d in self.state.take_due_notifications() {
                deliverer.send(d);
            }
            let sent = Instant::now();
            for t in &arrivals {
                self.state.observe_latency(sent.duration_since(*t));
            }
        }
        info!(
            open_pipelines = self.state.open_pipelines(),
            "router stopping"
        );
        self.state.commit()?;
        Ok(())
    }

    fn recv(&self, frames: &mut Vec<zmq::Message>) -> Result<bool, RouterError> {
        frames.clear();
        loop {
            let mut msg = zmq::Message::new();
            match self.api.recv(&mut msg, zmq::DONTWAIT) {
                Ok(()) => {}
                Err(zmq::Error::EAGAIN) => return Ok(!frames.is_empty()),
                Err(e) => return Err(zerr(&self.api_endpoint)(e)),
            }
            let more = msg.get_more();
            frames.push(msg);
            if !more {
                return Ok(true);
            }
        }
    }

    fn on_frames(&mut self, frames: &[zmq::Message]) -> Result<(), RouterError> {
        // [identity, payload] from a DEALER; [identity, "", payload] from a REQ.
        let (peer, req, payload) = match frames {
            [id, payload] => (id.to_vec(), false, &payload[..]),
            [id, empty, payload] if empty.is_empty() => (id.to_vec(), true, &payload[..]),
            [id, ..] => {
                warn!(
                    frames = frames.len(),
                    "frame with an unexpected number of parts"
                );
                let to = ReplyTo {
                    peer: id.to_vec(),
                    req: false,
                    id: 0,
                };
                self.state.reply_error(
                    &to,
                    ProtocolError::Malformed(format!(
                        "expected one payload frame, got {} frames",
                        frames.len() - 1
                    )),
                );
                return Ok(());
            }
            [] => return Ok(()),
        };
        match protocol::decode::<Request>(payload) {
            Ok((id, request)) => {
                let to = ReplyTo { peer, req, id };
                self.state.handle(to, request)?;
            }
            Err(e) => {
                warn!(error = %e.error, bytes = payload.len(), "undecodable frame");
                let to = ReplyTo {
                    peer,
                    req,
                    id: e.id.unwrap_or(0),
                };
                self.state.reply_error(&to, e.error);
            }
        }
        Ok(())
    }

    fn flush_outbox(&mut self) -> Result<(), RouterError> {
        let (out, events) = self.state.drain_outbox();
        self.send_all(out)?;
        for ev in events {
            self.publish(&ev);
        }
        Ok(())
    }

    fn send_all(&mut self, out: Vec<Outgoing>) -> Result<(), RouterError> {
        for o in out {
            let sent = self
                .api
                .send(&o.peer[..], zmq::SNDMORE | zmq::DONTWAIT)
                .and_then(|_| {
                    if o.req {
                        self.api.send(&b""[..], zmq::SNDMORE | zmq::DONTWAIT)?;
                    }
                    self.api.send(&o.payload[..], zmq::DONTWAIT)
                });
            match sent {
                Ok(()) => {}
                Err(zmq::Error::EHOSTUNREACH) | Err(zmq::Error::EAGAIN) => {
                    // Gone, or so far behind that its queue is full: treat it as dead;
                    // what it held goes to others (committed on the next turn).
                    debug!(peer = ?o.peer, "peer unreachable");
                    self.state.drop_peer(&o.peer, "became unreachable")?;
                }
                Err(e) => return Err(zerr(&self.api_endpoint)(e)),
            }
        }
        Ok(())
    }

    fn publish(&self, ev: &Event) {
        let payload = protocol::encode(0, ev);
        let r = self
            .publisher
            .send(ev.topic(), zmq::SNDMORE | zmq::DONTWAIT)
            .and_then(|_| self.publisher.send(&payload[..], zmq::DONTWAIT));
        if let Err(e) = r {
            debug!(error = %e, "broadcast dropped");
        }
    }
}

/// Whether only this machine can reach `endpoint` (loopback TCP, ipc, inproc).
fn is_loopback(endpoint: &str) -> bool {
    let Some(rest) = endpoint.strip_prefix("tcp://") else {
        return endpoint.starts_with("ipc://") || endpoint.starts_with("inproc://");
    };
    let host = rest.rsplit_once(':').map_or(rest, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn last_endpoint(s: &zmq::Socket) -> String {
    s.get_last_endpoint()
        .ok()
        .and_then(|r| r.ok())
        .unwrap_or_default()
}

/// Binds and serves until `shutdown` triggers.
pub fn run(config: RouterConfig, shutdown: Shutdown) -> Result<(), RouterError> {
    BoundRouter::bind(config)?.run(shutdown)
}

#[cfg(test)]
mod tests {
    use super::is_loopback;

    #[test]
    fn loopback_endpoints() {
        for e in [
            "tcp://127.0.0.1:5555",
            "tcp://localhost:1",
            "tcp://[::1]:5",
            "ipc:///tmp/x",
            "inproc://a",
        ] {
            assert!(is_loopback(e), "{e}");
        }
        for e in [
            "tcp://*:5555",
            "tcp://0.0.0.0:1",
            "tcp://10.0.0.2:5",
            "tcp://eth0:5",
        ] {
            assert!(!is_loopback(e), "{e}");
        }
    }
}
