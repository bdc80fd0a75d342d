//! The broker's conversation with the router: its DEALER socket (owned and polled by
//! the event loop's thread only), request ids, the hello and welcome, heartbeats, and
//! reconnecting on a fresh socket when the router falls silent.

use std::time::{Duration, Instant};

use pypelinin_common::curve::Security;
use pypelinin_common::protocol::{
    decode, encode, BrokerHello, FromRouter, Request, HEARTBEAT_INTERVAL, PEER_LIVENESS,
    REQUEST_TIMEOUT,
};
use pypelinin_common::transport::dealer_with;
use tracing::warn;

use crate::config::BrokerError;

/// The link to the router.
pub(crate) struct RouterLink {
    ctx: zmq::Context,
    api: String,
    security: Security,
    socket: zmq::Socket,
    next_id: u64,
    last_heard: Instant,
    last_beat: Instant,
    /// The hello on its way, and when it left.
    hello: Option<(u64, Instant)>,
    welcomed: bool,
}

impl RouterLink {
    /// A socket connecting to the router's `api`.
    pub(crate) fn connect(
        ctx: &zmq::Context,
        api: &str,
        security: &Security,
    ) -> Result<Self, BrokerError> {
        Ok(RouterLink {
            socket: dealer_with(ctx, api, security)?,
            ctx: ctx.clone(),
            api: api.to_string(),
            security: security.clone(),
            next_id: 1,
            last_heard: Instant::now(),
            last_beat: Instant::now(),
            hello: None,
            welcomed: false,
        })
    }

    /// The socket to poll.
    pub(crate) fn socket(&self) -> &zmq::Socket {
        &self.socket
    }

    /// A frame from the router, if one is waiting.
    pub(crate) fn recv(&mut self) -> Option<Vec<u8>> {
        let bytes = self.socket.recv_bytes(zmq::DONTWAIT).ok()?;
        self.last_heard = Instant::now();
        Some(bytes)
    }

    /// A frame decoded; an undecodable one is logged and skipped.
    pub(crate) fn decode(bytes: &[u8]) -> Option<(u64, FromRouter)> {
        match decode::<FromRouter>(bytes) {
            Ok(m) => Some(m),
            Err(e) => {
                warn!(error = %e.error, "undecodable frame from router");
                None
            }
        }
    }

    /// Sends without blocking; `None` when there is no connection to the router (the
    /// loop tries again: nothing that matters is dropped for good).
    pub(crate) fn send(&mut self, req: &Request) -> Result<Option<u64>, BrokerError> {
        let id = self.next_id;
        self.next_id += 1;
        self.last_beat = Instant::now();
        match self.socket.send(encode(id, req), zmq::DONTWAIT) {
            Ok(()) => Ok(Some(id)),
            Err(zmq::Error::EAGAIN) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Says hello (again): not welcomed until the router answers it.
    pub(crate) fn hello(&mut self, hello: BrokerHello) -> Result<(), BrokerError> {
        self.welcomed = false;
        self.hello = self
            .send(&Request::BrokerHello(hello))?
            .map(|id| (id, Instant::now()));
        Ok(())
    }

    /// A hello is on its way and not overdue.
    pub(crate) fn hello_pending(&self) -> bool {
        self.hello
            .is_some_and(|(_, at)| at.elapsed() < REQUEST_TIMEOUT)
    }

    /// Whether the reply `id` welcomes us (it answers our hello): then we are.
    pub(crate) fn welcome(&mut self, id: u64) -> bool {
        if self.hello.is_some_and(|(h, _)| h == id) {
            self.hello = None;
            self.welcomed = true;
            return true;
        }
        false
    }

    /// The router does not know us (it restarted): a hello is due.
    pub(crate) fn forgotten(&mut self) {
        self.welcomed = false;
    }

    /// Whether the router welcomed our last hello.
    pub(crate) fn welcomed(&self) -> bool {
        self.welcomed
    }

    /// Whether the router has been silent for longer than its liveness allows.
    pub(crate) fn silent(&self) -> bool {
        self.last_heard.elapsed() > HEARTBEAT_INTERVAL * PEER_LIVENESS
    }

    /// A fresh socket to the router; a hello is due.
    pub(crate) fn reconnect(&mut self) -> Result<(), BrokerError> {
        self.socket = dealer_with(&self.ctx, &self.api, &self.security)?;
        self.last_heard = Instant::now();
        self.welcomed = false;
        Ok(())
    }

    /// How long to poll: until welcomed, look again soon, as the hello may not have
    /// left yet.
    pub(crate) fn poll_wait(&self) -> Duration {
        if self.welcomed {
            HEARTBEAT_INTERVAL / 2
        } else {
            Duration::from_millis(20)
        }
    }

    /// Sends a heartbeat if nothing was sent for a heartbeat interval.
    pub(crate) fn heartbeat(&mut self) -> Result<(), BrokerError> {
        if self.last_beat.elapsed() >= HEARTBEAT_INTERVAL {
            self.send(&Request::Heartbeat)?;
        }
        Ok(())
    }
}
