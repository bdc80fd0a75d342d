//! The I/O thread of [`AsyncPipelineManager`](super::AsyncPipelineManager): it owns
//! every socket, and answers the async side's commands through their oneshots.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use pypelinin_common::curve::Security;
use pypelinin_common::protocol::{
    decode, encode, Event, FromRouter, PipelineId, Reply, Request, SOCKET_HWM,
};
use pypelinin_common::transport::{poll, TransportError};

use super::Command;

/// Longest the I/O thread sleeps in `poll` with nothing due: a bound, not a heartbeat
/// (a queued request or a reply wakes it at once).
const IDLE_POLL: Duration = Duration::from_secs(1);

/// A DEALER for the router API. Unlike the synchronous requester's, it queues
/// messages before the connection is up (no `immediate`): the I/O thread must never
/// block in a send, and a request lost with a dead connection is resent on a fresh
/// socket when its attempt times out.
pub(super) fn api_socket(
    ctx: &zmq::Context,
    endpoint: &str,
    security: &Security,
) -> Result<zmq::Socket, TransportError> {
    let s = ctx.socket(zmq::DEALER)?;
    security.apply(&s)?;
    s.set_linger(0)?;
    s.set_sndhwm(SOCKET_HWM)?;
    s.set_rcvhwm(SOCKET_HWM)?;
    s.connect(endpoint)?;
    Ok(s)
}

/// A request in flight.
struct Pending {
    frame: Vec<u8>,
    timeout: Duration,
    attempts: u32,
    tried: u32,
    started: Instant,
    deadline: Instant,
    reply: oneshot::Sender<Result<Reply, TransportError>>,
}

/// A pause of an events stream.
struct Tick {
    id: PipelineId,
    at: Instant,
    done: oneshot::Sender<()>,
}

/// The I/O thread: owns every socket.
pub(super) struct Io {
    ctx: zmq::Context,
    endpoint: String,
    security: Security,
    dealer: Option<zmq::Socket>,
    finished: zmq::Socket,
    wake: zmq::Socket,
    commands: mpsc::UnboundedReceiver<Command>,
    next_id: u64,
    pending: HashMap<u64, Pending>,
    ticks: Vec<Tick>,
}

impl Io {
    /// The thread's state: `dealer` talks to the router at `endpoint`, `finished`
    /// hears its broadcasts, `wake` is woken when `commands` has something.
    pub(super) fn new(
        ctx: zmq::Context,
        endpoint: &str,
        security: Security,
        dealer: zmq::Socket,
        finished: zmq::Socket,
        wake: zmq::Socket,
        commands: mpsc::UnboundedReceiver<Command>,
    ) -> Self {
        Io {
            ctx,
            endpoint: endpoint.to_string(),
            security,
            dealer: Some(dealer),
            finished,
            wake,
            commands,
            next_id: 1,
            pending: HashMap::new(),
            ticks: Vec::new(),
        }
    }

    /// Serves commands until told to stop or every handle is gone.
    pub(super) fn run(mut self) {
        loop {
            let now = Instant::now();
            let due = self
                .pending
                .values()
                .map(|p| p.deadline)
                .chain(self.ticks.iter().map(|t| t.at))
                .min()
                .map_or(IDLE_POLL, |d| d.saturating_duration_since(now))
                .min(IDLE_POLL);
            {
                let mut items = vec![
                    self.wake.as_poll_item(zmq::POLLIN),
                    self.finished.as_poll_item(zmq::POLLIN),
                ];
                if let Some(d) = &self.dealer {
                    items.push(d.as_poll_item(zmq::POLLIN));
                }
                // Round up so that a deadline a fraction of a millisecond away is met.
                let ms = (due.as_micros().div_ceil(1000)).min(i64::MAX as u128) as i64;
                if poll(&mut items, ms).is_err() {
                    // Only a closed context fails here; nothing more can be done.
                    self.fail_all();
                    return;
                }
            }
            while self.wake.recv_bytes(zmq::DONTWAIT).is_ok() {}
            loop {
                match self.commands.try_recv() {
                    Ok(Command::Call {
                        req,
                        timeout,
                        attempts,
                        reply,
                    }) => self.start(&req, timeout, attempts, reply),
                    Ok(Command::Tick { id, after, done }) => self.ticks.push(Tick {
                        id,
                        at: Instant::now() + after,
                        done,
                    }),
                    Ok(Command::Stop) | Err(mpsc::error::TryRecvError::Disconnected) => return,
                    Err(mpsc::error::TryRecvError::Empty) => break,
                }
            }
            self.read_replies();
            self.read_broadcasts();
            self.expire();
        }
    }

    fn start(
        &mut self,
        req: &Request,
        timeout: Duration,
        attempts: u32,
        reply: oneshot::Sender<Result<Reply, TransportError>>,
    ) {
        let id = self.next_id;
        self.next_id += 1;
        let frame = encode(id, req);
        if self.dealer.is_none() {
            self.dealer = api_socket(&self.ctx, &self.endpoint, &self.security).ok();
        }
        if let Some(d) = &self.dealer {
            // Not sent now (it cannot happen with our bounds): resent when it times out.
            let _ = d.send(&frame[..], zmq::DONTWAIT);
        }
        let now = Instant::now();
        self.pending.insert(
            id,
            Pending {
                frame,
                timeout,
                attempts: attempts.max(1),
                tried: 0,
                started: now,
                deadline: now + timeout,
                reply,
            },
        );
    }

    fn read_replies(&mut self) {
        let Some(d) = &self.dealer else { return };
        let mut frames = Vec::new();
        while let Ok(bytes) = d.recv_bytes(zmq::DONTWAIT) {
            frames.push(bytes);
        }
        for bytes in frames {
            let (id, result) = match decode::<FromRouter>(&bytes) {
                Ok((id, FromRouter::Reply(Reply::Error(e)))) => {
                    (id, Err(TransportError::Refused(e)))
                }
                Ok((id, FromRouter::Reply(reply))) => (id, Ok(reply)),
                Ok((_, FromRouter::Push(_))) => continue,
                Err(e) => match e.id {
                    Some(id) => (id, Err(TransportError::BadReply(e.error))),
                    None => continue,
                },
            };
            // A reply to a request already answered (a resend's twin) is dropped.
            if let Some(p) = self.pending.remove(&id) {
                let _ = p.reply.send(result);
            }
        }
    }

    fn read_broadcasts(&mut self) {
        let now = Instant::now();
        while let Ok(parts) = self.finished.recv_multipart(zmq::DONTWAIT) {
            if let Some(Ok((_, Event::PipelineFinished { id, .. }))) =
                parts.get(1).map(|p| decode::<Event>(p))
            {
                for t in self.ticks.iter_mut().filter(|t| t.id == id) {
                    t.at = now;
                }
            }
        }
    }

    /// Fires due ticks, forgets requests whose caller gave up, and retries or fails
    /// requests whose attempt timed out.
    fn expire(&mut self) {
        let now = Instant::now();
        let (due, waiting): (Vec<Tick>, Vec<Tick>) = std::mem::take(&mut self.ticks)
            .into_iter()
            .partition(|t| t.at <= now);
        self.ticks = waiting;
        for t in due {
            let _ = t.done.send(());
        }
        self.ticks.retain(|t| !t.done.is_closed());
        self.pending.retain(|_, p| !p.reply.is_closed());
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        if expired.is_empty() {
            return;
        }
        for id in expired {
            let Some(p) = self.pending.get_mut(&id) else {
                continue;
            };
            p.tried += 1;
            if p.tried >= p.attempts {
                if let Some(p) = self.pending.remove(&id) {
                    let _ = p.reply.send(Err(TransportError::Unreachable {
                        endpoint: self.endpoint.clone(),
                        attempts: p.tried,
                        waited: p.started.elapsed(),
                    }));
                }
            }
        }
        // The connection may be wedged: start afresh and resend everything in flight
        // (requests are idempotent), each with a whole attempt's time again.
        self.dealer = None;
        if self.pending.is_empty() {
            return;
        }
        self.dealer = api_socket(&self.ctx, &self.endpoint, &self.security).ok();
        for p in self.pending.values_mut() {
            if let Some(d) = &self.dealer {
                let _ = d.send(&p.frame[..], zmq::DONTWAIT);
            }
            p.deadline = now + p.timeout;
        }
    }

    /// Answers every caller with an error: the thread cannot go on.
    fn fail_all(&mut self) {
        for (_, p) in self.pending.drain() {
            let _ = p.reply.send(Err(TransportError::Zmq(zmq::Error::ETERM)));
        }
    }
}
