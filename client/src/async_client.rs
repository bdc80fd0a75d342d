//! [`AsyncPipelineManager`]: the client for tokio applications.
//!
//! ZeroMQ sockets are blocking and not thread-safe, so they must not live in async
//! tasks: one dedicated I/O thread owns them and polls them, and async callers talk to
//! it through a `tokio::sync::mpsc` channel, each request carrying a
//! `tokio::sync::oneshot` for its answer. An in-process ZeroMQ socket wakes the thread
//! when a request is queued, so it sleeps in one `poll` over all its sockets.
//!
//! Every request gets its own id on one DEALER socket, so any number are in flight at
//! once: the router answers each by id whenever it is ready, and a long `Wait` held by
//! the router delays nobody else. Each request keeps the Lazy Pirate promise of
//! [`Requester`](pypelinin_common::transport::Requester): a request unanswered within
//! the patience is sent again on a fresh socket (with every other request in flight,
//! all idempotent), and after the last attempt fails as
//! [`TransportError::Unreachable`]. The frames, replies and their meaning are the
//! protocol's own types, mapped as [`PipelineManager`](crate::PipelineManager) maps them.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures_util::Stream;
use tokio::sync::{mpsc, oneshot};

use pypelinin_common::protocol::{
    decode, encode, Event, FromRouter, PipelineId, Reply, Request, REQUEST_ATTEMPTS,
    REQUEST_TIMEOUT, SOCKET_HWM,
};
use pypelinin_common::status::{JobState, PipelineState, PipelineStatus};
use pypelinin_common::transport::{poll, subscriber, TransportError};
use pypelinin_common::{Data, PipelineSpec};

use crate::{ClientError, Outcome, WAIT_CHUNK};

/// How often [`AsyncPipelineManager::events`] asks the router for a pipeline's status
/// when no broadcast says it finished: job changes are not broadcast, so polling is
/// what sees them; a broadcast that the pipeline finished cuts the pause short.
pub const EVENTS_POLL: Duration = Duration::from_millis(150);

/// Longest the I/O thread sleeps in `poll` with nothing due: a bound, not a heartbeat
/// (a queued request or a reply wakes it at once).
const IDLE_POLL: Duration = Duration::from_secs(1);

/// A job's change of state, as seen by [`AsyncPipelineManager::events`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobEvent {
    /// The pipeline.
    pub pipeline: PipelineId,
    /// The job's name.
    pub job: String,
    /// The state it left.
    pub from: JobState,
    /// The state it entered.
    pub to: JobState,
    /// The attempt this change belongs to (1 for the first; 0 before any started).
    pub attempt: u32,
    /// The job's error, when it entered a failed, skipped, cancelled or queued (retry)
    /// state with one.
    pub error: Option<String>,
    /// When the router recorded the change (ms since the epoch), when it says.
    pub at_ms: Option<u64>,
    /// The pipeline's state in the status this change was read from: the last event of
    /// a stream carries the pipeline's final state.
    pub pipeline_state: PipelineState,
}

/// What async callers ask of the I/O thread.
enum Command {
    /// Send a request; answer with its reply after at most `attempts` of `timeout` each.
    Call {
        req: Request,
        timeout: Duration,
        attempts: u32,
        reply: oneshot::Sender<Result<Reply, TransportError>>,
    },
    /// Answer after `after`, or as soon as a broadcast says pipeline `id` finished.
    Tick {
        id: PipelineId,
        after: Duration,
        done: oneshot::Sender<()>,
    },
    /// Close the sockets and end the thread.
    Stop,
}

/// The async side's handle on the I/O thread; dropping the last one stops the thread.
struct Link {
    commands: mpsc::UnboundedSender<Command>,
    /// PUSH end of the in-process wake-up pipe (a ZeroMQ socket is not `Sync`).
    wake: Mutex<zmq::Socket>,
    thread: Option<JoinHandle<()>>,
}

impl Link {
    fn send(&self, command: Command) -> Result<(), ClientError> {
        self.commands
            .send(command)
            .map_err(|_| ClientError::Closed)?;
        self.nudge();
        Ok(())
    }

    fn nudge(&self) {
        if let Ok(wake) = self.wake.lock() {
            // Full (EAGAIN) means wake-ups are already waiting: the thread will look.
            let _ = wake.send(&b""[..], zmq::DONTWAIT);
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Stop);
        self.nudge();
        if let Some(thread) = self.thread.take() {
            // The thread never blocks outside `poll`, which the nudge ends: this is quick.
            let _ = thread.join();
        }
    }
}

/// Submits pipelines and follows them from async code, without blocking the runtime.
///
/// Cheap to clone: clones share one I/O thread and one connection, and every method
/// takes `&self`, so many calls may be awaited at once. The thread stops when the last
/// clone (and the last [`AsyncPipelineManager::events`] stream) is dropped.
#[derive(Clone)]
pub struct AsyncPipelineManager {
    link: Arc<Link>,
    timeout: Duration,
    attempts: u32,
}

impl AsyncPipelineManager {
    /// A manager for the router at `api` (request/reply) and `broadcast` (events): starts
    /// the I/O thread. Connecting is lazy, as ZeroMQ's is: an absent router shows up as
    /// [`TransportError::Unreachable`] on the first call; a malformed address fails here.
    /// Needs no tokio runtime (it spawns a plain thread), so it may be called anywhere.
    pub fn connect(api: &str, broadcast: &str) -> Result<Self, ClientError> {
        let ctx = zmq::Context::new();
        let pipe = format!("inproc://pypelinin-async-client-{}", uuid::Uuid::new_v4());
        let wake_rx = ctx.socket(zmq::PULL).map_err(TransportError::from)?;
        wake_rx.set_linger(0).map_err(TransportError::from)?;
        wake_rx.bind(&pipe).map_err(TransportError::from)?;
        let wake_tx = ctx.socket(zmq::PUSH).map_err(TransportError::from)?;
        wake_tx.set_linger(0).map_err(TransportError::from)?;
        wake_tx.set_sndhwm(64).map_err(TransportError::from)?;
        wake_tx.connect(&pipe).map_err(TransportError::from)?;
        let finished =
            subscriber(&ctx, broadcast, &[b"pipeline.finished"]).map_err(TransportError::from)?;
        let dealer = api_socket(&ctx, api)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let io = Io {
            ctx,
            endpoint: api.to_string(),
            dealer: Some(dealer),
            finished,
            wake: wake_rx,
            commands: rx,
            next_id: 1,
            pending: HashMap::new(),
            ticks: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("pypelinin-client-io".into())
            .spawn(move || io.run())
            .map_err(ClientError::Spawn)?;
        Ok(AsyncPipelineManager {
            link: Arc::new(Link {
                commands: tx,
                wake: Mutex::new(wake_tx),
                thread: Some(thread),
            }),
            timeout: REQUEST_TIMEOUT,
            attempts: REQUEST_ATTEMPTS,
        })
    }

    /// Sets how long one attempt waits for the router, and how many attempts are made,
    /// for the calls made through this handle (clones made afterwards inherit it).
    pub fn set_patience(&mut self, timeout: Duration, attempts: u32) {
        self.timeout = timeout;
        self.attempts = attempts.max(1);
    }

    /// Sends `req` through the I/O thread; `timeout` is one attempt's patience.
    async fn call(&self, req: Request, timeout: Duration) -> Result<Reply, ClientError> {
        let (reply, answer) = oneshot::channel();
        self.link.send(Command::Call {
            req,
            timeout,
            attempts: self.attempts,
            reply,
        })?;
        match answer.await {
            Ok(result) => Ok(result?),
            Err(_) => Err(ClientError::Closed),
        }
    }

    /// Submits a pipeline; returns once the router has made it durable. The id is
    /// chosen here, so a resent submit never runs the pipeline twice.
    pub async fn submit(&self, pipeline: &PipelineSpec) -> Result<PipelineId, ClientError> {
        let id = PipelineId::new();
        let req = Request::Submit {
            id,
            pipeline: pipeline.clone(),
        };
        match self.call(req, self.timeout).await? {
            Reply::Submitted { id } => Ok(id),
            other => Err(unexpected(other)),
        }
    }

    /// Waits until the pipeline is final, for at most `timeout`.
    ///
    /// A long poll held by the router in chunks of at most [`WAIT_CHUNK`] (so that a
    /// router restart costs at most one chunk); other calls proceed meanwhile.
    pub async fn wait(&self, id: PipelineId, timeout: Duration) -> Result<Outcome, ClientError> {
        let started = Instant::now();
        loop {
            let left = timeout.saturating_sub(started.elapsed());
            let chunk = left.min(WAIT_CHUNK);
            let req = Request::Wait {
                ids: vec![id],
                timeout_ms: chunk.as_millis() as u64,
            };
            let status = match self.call(req, chunk + self.timeout).await? {
                Reply::Statuses(mut s) if s.len() == 1 => s.remove(0),
                other => return Err(unexpected(other)),
            };
            if status.state.is_final() {
                return Ok(Outcome::from_status(status));
            }
            if left.is_zero() || started.elapsed() >= timeout {
                return Err(ClientError::Timeout {
                    id,
                    state: status.state.as_str(),
                    waited: started.elapsed(),
                });
            }
        }
    }

    /// The current status of a pipeline.
    pub async fn status(&self, id: PipelineId) -> Result<PipelineStatus, ClientError> {
        match self.call(Request::Status { id }, self.timeout).await? {
            Reply::Status(s) => Ok(s),
            other => Err(unexpected(other)),
        }
    }

    /// Cancels a pipeline: running jobs are stopped, no new ones start. Returns its
    /// status; cancelling a finished pipeline changes nothing.
    pub async fn cancel(&self, id: PipelineId) -> Result<PipelineStatus, ClientError> {
        match self.call(Request::Cancel { id }, self.timeout).await? {
            Reply::Status(s) => Ok(s),
            other => Err(unexpected(other)),
        }
    }

    /// Outputs of the pipeline's succeeded jobs, as kept by the router.
    pub async fn outputs(&self, id: PipelineId) -> Result<BTreeMap<String, Data>, ClientError> {
        match self.call(Request::Outputs { id }, self.timeout).await? {
            Reply::Outputs(o) => Ok(o),
            other => Err(unexpected(other)),
        }
    }

    /// Resolves after `after`, or as soon as a broadcast says `id` finished.
    async fn tick(&self, id: PipelineId, after: Duration) -> Result<(), ClientError> {
        let (done, fired) = oneshot::channel();
        self.link.send(Command::Tick { id, after, done })?;
        fired.await.map_err(|_| ClientError::Closed)
    }

    /// The job events of a pipeline, in order, ending once the pipeline is final.
    ///
    /// The router broadcasts only pipeline-level news, and a broadcast may be lost, so
    /// the events are derived from its status, read every [`EVENTS_POLL`] (at once when
    /// a broadcast says the pipeline finished) and compared with the last one read.
    /// Because the final status is always read and compared, every job's final state
    /// is always reported. A change too quick to be seen between two reads is filled
    /// in: a job seen queued and then finished, with a new attempt, gets its `running`
    /// event first. Events read together are ordered by the router's timestamps.
    ///
    /// An item is an error when the router stops answering (after the patience of
    /// [`AsyncPipelineManager::set_patience`]); the stream ends after it.
    pub fn events(&self, id: PipelineId) -> impl Stream<Item = Result<JobEvent, ClientError>> {
        let follow = Follow {
            pm: self.clone(),
            id,
            seen: BTreeMap::new(),
            queue: VecDeque::new(),
            first: true,
            done: false,
        };
        futures_util::stream::unfold(follow, |mut f| async move {
            loop {
                if let Some(event) = f.queue.pop_front() {
                    return Some((Ok(event), f));
                }
                if f.done {
                    return None;
                }
                if !f.first {
                    if let Err(e) = f.pm.tick(f.id, EVENTS_POLL).await {
                        f.done = true;
                        return Some((Err(e), f));
                    }
                }
                f.first = false;
                match f.pm.status(f.id).await {
                    Ok(status) => {
                        f.compare(&status);
                        f.done = status.state.is_final();
                    }
                    Err(e) => {
                        f.done = true;
                        return Some((Err(e), f));
                    }
                }
            }
        })
    }
}

/// The state of an [`AsyncPipelineManager::events`] stream.
struct Follow {
    pm: AsyncPipelineManager,
    id: PipelineId,
    /// Each job's state and attempts when last read.
    seen: BTreeMap<String, (JobState, u32)>,
    /// Events read but not yet yielded.
    queue: VecDeque<JobEvent>,
    first: bool,
    done: bool,
}

impl Follow {
    /// Queues the changes from the last status read to `status`.
    fn compare(&mut self, status: &PipelineStatus) {
        let mut batch = Vec::new();
        let pipeline = self.id;
        for (name, job) in &status.jobs {
            // Every job of a new pipeline starts queued, with no attempt.
            let (old, old_attempts) = self
                .seen
                .get(name)
                .copied()
                .unwrap_or((JobState::Queued, 0));
            let event = |from, to, at_ms, error| JobEvent {
                pipeline,
                job: name.clone(),
                from,
                to,
                attempt: job.attempts,
                error,
                at_ms,
                pipeline_state: status.state,
            };
            let mut from = old;
            let new_attempt = job.attempts > old_attempts;
            if new_attempt && job.state != JobState::Running {
                // The attempt started and ended between two reads.
                batch.push(event(from, JobState::Running, job.started_ms, None));
                from = JobState::Running;
            }
            if job.state != from || (job.state == JobState::Running && new_attempt) {
                let (at_ms, error) = match job.state {
                    JobState::Running => (job.started_ms, None),
                    JobState::Succeeded => (job.finished_ms, None),
                    _ => (job.finished_ms, job.error.clone()),
                };
                batch.push(event(from, job.state, at_ms, error));
            }
            self.seen.insert(name.clone(), (job.state, job.attempts));
        }
        // Stable: changes without a time stay after the timed ones, in name order.
        batch.sort_by_key(|e| e.at_ms.unwrap_or(u64::MAX));
        self.queue.extend(batch);
    }
}

fn unexpected(reply: Reply) -> ClientError {
    ClientError::Unexpected(format!("{reply:?}"))
}

/// A DEALER for the router API. Unlike the synchronous requester's, it queues
/// messages before the connection is up (no `immediate`): the I/O thread must never
/// block in a send, and a request lost with a dead connection is resent on a fresh
/// socket when its attempt times out.
fn api_socket(ctx: &zmq::Context, endpoint: &str) -> Result<zmq::Socket, TransportError> {
    let s = ctx.socket(zmq::DEALER)?;
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
struct Io {
    ctx: zmq::Context,
    endpoint: String,
    dealer: Option<zmq::Socket>,
    finished: zmq::Socket,
    wake: zmq::Socket,
    commands: mpsc::UnboundedReceiver<Command>,
    next_id: u64,
    pending: HashMap<u64, Pending>,
    ticks: Vec<Tick>,
}

impl Io {
    fn run(mut self) {
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
            self.dealer = api_socket(&self.ctx, &self.endpoint).ok();
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
        self.dealer = api_socket(&self.ctx, &self.endpoint).ok();
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
