//! ZeroMQ helpers: socket setup with our bounds, and a Lazy Pirate requester.
//!
//! [`Requester`] is what clients use: a request that gets no reply within the timeout is
//! sent again on a fresh socket (a DEALER that lost its peer may hold stale messages), a
//! bounded number of times, and then reported as unreachable with the address and the
//! time waited. Requests are idempotent by design, so a resend is always safe.

use std::time::{Duration, Instant};

use crate::curve::Security;
use crate::protocol::{
    decode, encode, FromRouter, ProtocolError, Reply, Request, REQUEST_ATTEMPTS, REQUEST_TIMEOUT,
    SOCKET_HWM,
};

/// Why a request did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// No reply after every attempt.
    #[error("router at {endpoint} did not answer: {attempts} attempts over {waited:.1?}")]
    Unreachable {
        /// The address tried.
        endpoint: String,
        /// Attempts made.
        attempts: u32,
        /// Total time waited.
        waited: Duration,
    },
    /// The router answered with a typed refusal.
    #[error("{0}")]
    Refused(ProtocolError),
    /// The reply could not be decoded.
    #[error("bad reply from router: {0}")]
    BadReply(ProtocolError),
    /// ZeroMQ itself failed (bad endpoint syntax, for example).
    #[error("zeromq: {0}")]
    Zmq(#[from] zmq::Error),
}

/// `zmq::poll` that treats a signal's interruption (EINTR) as a wake-up with nothing
/// ready, so that SIGTERM reaches the caller's shutdown check instead of an error.
pub fn poll(items: &mut [zmq::PollItem], timeout_ms: i64) -> Result<i32, zmq::Error> {
    match zmq::poll(items, timeout_ms) {
        Err(zmq::Error::EINTR) => Ok(0),
        r => r,
    }
}

/// A DEALER connected to `endpoint`, with our HWMs and no linger, in the clear.
pub fn dealer(ctx: &zmq::Context, endpoint: &str) -> Result<zmq::Socket, zmq::Error> {
    dealer_with(ctx, endpoint, &Security::None)
}

/// [`dealer`] with CURVE set up as `security` says.
pub fn dealer_with(
    ctx: &zmq::Context,
    endpoint: &str,
    security: &Security,
) -> Result<zmq::Socket, zmq::Error> {
    let s = ctx.socket(zmq::DEALER)?;
    security.apply(&s)?;
    s.set_linger(0)?;
    s.set_sndhwm(SOCKET_HWM)?;
    s.set_rcvhwm(SOCKET_HWM)?;
    s.set_immediate(true)?;
    s.connect(endpoint)?;
    Ok(s)
}

/// A SUB socket connected to `endpoint`, subscribed to `topics` (all when empty), in
/// the clear.
pub fn subscriber(
    ctx: &zmq::Context,
    endpoint: &str,
    topics: &[&[u8]],
) -> Result<zmq::Socket, zmq::Error> {
    subscriber_with(ctx, endpoint, topics, &Security::None)
}

/// [`subscriber`] with CURVE set up as `security` says.
pub fn subscriber_with(
    ctx: &zmq::Context,
    endpoint: &str,
    topics: &[&[u8]],
    security: &Security,
) -> Result<zmq::Socket, zmq::Error> {
    let s = ctx.socket(zmq::SUB)?;
    security.apply(&s)?;
    s.set_linger(0)?;
    s.set_rcvhwm(SOCKET_HWM)?;
    if topics.is_empty() {
        s.set_subscribe(b"")?;
    }
    for t in topics {
        s.set_subscribe(t)?;
    }
    s.connect(endpoint)?;
    Ok(s)
}

/// A posted request's id and its answer.
pub type Answer = (u64, Result<Reply, ProtocolError>);

/// Lazy Pirate request/reply to the router.
pub struct Requester {
    ctx: zmq::Context,
    endpoint: String,
    security: Security,
    socket: Option<zmq::Socket>,
    next_id: u64,
    /// Posted requests not answered yet: id → frame (kept to resend).
    posted: std::collections::HashMap<u64, Vec<u8>>,
    /// Answers to posted requests that arrived while waiting for something else.
    stash: Vec<Answer>,
    /// Wait for one attempt's reply.
    pub timeout: Duration,
    /// Attempts before giving up.
    pub attempts: u32,
}

impl Requester {
    /// A requester for the router API at `endpoint`; connects lazily, in the clear.
    pub fn new(ctx: &zmq::Context, endpoint: &str) -> Self {
        Self::with_security(ctx, endpoint, Security::None)
    }

    /// A requester whose sockets use `security` (CURVE keys, or none).
    pub fn with_security(ctx: &zmq::Context, endpoint: &str, security: Security) -> Self {
        Requester {
            ctx: ctx.clone(),
            endpoint: endpoint.to_string(),
            security,
            socket: None,
            next_id: 1,
            posted: std::collections::HashMap::new(),
            stash: Vec::new(),
            timeout: REQUEST_TIMEOUT,
            attempts: REQUEST_ATTEMPTS,
        }
    }

    /// The router address.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Sends `req` and waits for its reply with the default timeout.
    pub fn request(&mut self, req: &Request) -> Result<Reply, TransportError> {
        self.request_with(req, self.timeout)
    }

    /// Sends `req` and waits up to `timeout` per attempt.
    pub fn request_with(
        &mut self,
        req: &Request,
        timeout: Duration,
    ) -> Result<Reply, TransportError> {
        let started = Instant::now();
        let id = self.next_id;
        self.next_id += 1;
        let frame = encode(id, req);
        for _ in 0..self.attempts.max(1) {
            let socket: &zmq::Socket = match &mut self.socket {
                Some(s) => s,
                empty => empty.insert(dealer_with(&self.ctx, &self.endpoint, &self.security)?),
            };
            // With `immediate`, a send blocks while nothing is connected: bound it.
            socket.set_sndtimeo(timeout.as_millis().min(i32::MAX as u128) as i32)?;
            if let Err(zmq::Error::EAGAIN) = socket.send(&frame[..], 0) {
                self.socket = None;
                continue;
            }
            let deadline = Instant::now() + timeout;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                let mut items = [socket.as_poll_item(zmq::POLLIN)];
                poll(&mut items, left.as_millis().max(1) as i64)?;
                if !items[0].is_readable() {
                    continue;
                }
                let bytes = socket.recv_bytes(0)?;
                match decode::<FromRouter>(&bytes) {
                    Ok((rid, FromRouter::Reply(reply))) if rid == id => {
                        return match reply {
                            Reply::Error(e) => Err(TransportError::Refused(e)),
                            r => Ok(r),
                        };
                    }
                    Ok((rid, FromRouter::Reply(reply))) if self.posted.contains_key(&rid) => {
                        self.posted.remove(&rid);
                        self.stash.push((rid, into_result(reply)));
                    }
                    Ok(_) => continue, // a late reply to an earlier attempt, or a push
                    Err(e) if e.id == Some(id) => return Err(TransportError::BadReply(e.error)),
                    Err(_) => continue,
                }
            }
            // No answer: the socket may be wedged on a dead connection; start afresh.
            self.socket = None;
        }
        Err(TransportError::Unreachable {
            endpoint: self.endpoint.clone(),
            attempts: self.attempts.max(1),
            waited: started.elapsed(),
        })
    }

    /// Sends `req` without waiting; its answer is collected by [`Requester::collect`].
    /// Many posted requests travel back to back: no round trip each.
    pub fn post(&mut self, req: &Request) -> Result<u64, TransportError> {
        let id = self.next_id;
        self.next_id += 1;
        let frame = encode(id, req);
        let socket: &zmq::Socket = match &mut self.socket {
            Some(s) => s,
            empty => {
                let s = dealer_with(&self.ctx, &self.endpoint, &self.security)?;
                // With `immediate`, the first send waits for the connection: bound it.
                s.set_sndtimeo(self.timeout.as_millis().min(i32::MAX as u128) as i32)?;
                empty.insert(s)
            }
        };
        // If it cannot leave now (no connection), `collect` resends it.
        let _ = socket.send(&frame[..], 0);
        self.posted.insert(id, frame);
        Ok(id)
    }

    /// Waits for the answers of every posted request, resending those unanswered after
    /// each timeout on a fresh socket (posted requests must be idempotent).
    pub fn collect(&mut self) -> Result<Vec<Answer>, TransportError> {
        let started = Instant::now();
        let mut out = std::mem::take(&mut self.stash);
        for attempt in 0..self.attempts.max(1) {
            if self.posted.is_empty() {
                return Ok(out);
            }
            let fresh = attempt > 0 || self.socket.is_none();
            let socket: &zmq::Socket = match &mut self.socket {
                Some(s) if !fresh => s,
                slot => {
                    let socket =
                        slot.insert(dealer_with(&self.ctx, &self.endpoint, &self.security)?);
                    socket.set_sndtimeo(self.timeout.as_millis().min(i32::MAX as u128) as i32)?;
                    for frame in self.posted.values() {
                        let _ = socket.send(&frame[..], 0);
                    }
                    socket
                }
            };
            let deadline = Instant::now() + self.timeout;
            while !self.posted.is_empty() {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                let mut items = [socket.as_poll_item(zmq::POLLIN)];
                poll(&mut items, left.as_millis().max(1) as i64)?;
                while let Ok(bytes) = socket.recv_bytes(zmq::DONTWAIT) {
                    if let Ok((rid, FromRouter::Reply(reply))) = decode::<FromRouter>(&bytes) {
                        if self.posted.remove(&rid).is_some() {
                            out.push((rid, into_result(reply)));
                        }
                    }
                }
            }
        }
        if self.posted.is_empty() {
            return Ok(out);
        }
        Err(TransportError::Unreachable {
            endpoint: self.endpoint.clone(),
            attempts: self.attempts.max(1),
            waited: started.elapsed(),
        })
    }
}

fn into_result(reply: Reply) -> Result<Reply, ProtocolError> {
    match reply {
        Reply::Error(e) => Err(e),
        r => Ok(r),
    }
}
