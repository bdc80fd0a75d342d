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

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use pypelinin_common::curve::Security;
use pypelinin_common::protocol::{PipelineId, Reply, Request, REQUEST_ATTEMPTS, REQUEST_TIMEOUT};
use pypelinin_common::status::PipelineStatus;
use pypelinin_common::transport::{subscriber_with, TransportError};
use pypelinin_common::{Data, PipelineSpec};

use crate::{ClientError, Outcome, WAIT_CHUNK};

mod events;
mod io;

pub use events::{JobEvent, EVENTS_POLL};

/// What async callers ask of the I/O thread.
enum Command {
    /// Send a request; answer with its reply after at most `attempts` of `timeout` each.
    Call {
        /// Boxed: a submit carries a whole pipeline spec, far larger than the rest.
        req: Box<Request>,
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
        Self::connect_with(api, broadcast, &Security::None)
    }

    /// [`AsyncPipelineManager::connect`] with CURVE keys: every socket to the router
    /// authenticates and encrypts.
    pub fn connect_with(
        api: &str,
        broadcast: &str,
        security: &Security,
    ) -> Result<Self, ClientError> {
        let ctx = zmq::Context::new();
        let pipe = format!("inproc://pypelinin-async-client-{}", uuid::Uuid::new_v4());
        let wake_rx = ctx.socket(zmq::PULL).map_err(TransportError::from)?;
        wake_rx.set_linger(0).map_err(TransportError::from)?;
        wake_rx.bind(&pipe).map_err(TransportError::from)?;
        let wake_tx = ctx.socket(zmq::PUSH).map_err(TransportError::from)?;
        wake_tx.set_linger(0).map_err(TransportError::from)?;
        wake_tx.set_sndhwm(64).map_err(TransportError::from)?;
        wake_tx.connect(&pipe).map_err(TransportError::from)?;
        let finished = subscriber_with(&ctx, broadcast, &[b"pipeline.finished"], security)
            .map_err(TransportError::from)?;
        let dealer = io::api_socket(&ctx, api, security)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let io = io::Io::new(ctx, api, security.clone(), dealer, finished, wake_rx, rx);
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
            req: Box::new(req),
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
}

fn unexpected(reply: Reply) -> ClientError {
    ClientError::Unexpected(format!("{reply:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This process's threads named like the I/O thread (Linux names are cut at 15 bytes).
    fn io_threads() -> usize {
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return 0;
        };
        tasks
            .filter_map(|t| t.ok())
            .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
            .filter(|name| name.starts_with("pypelinin-clien"))
            .count()
    }

    #[test]
    fn a_malformed_address_fails_at_connect() {
        let err = AsyncPipelineManager::connect("no-such-transport", "tcp://127.0.0.1:1")
            .err()
            .expect("refused");
        assert!(
            matches!(err, ClientError::Transport(TransportError::Zmq(_))),
            "{err}"
        );
    }

    #[test]
    fn dropping_the_last_handle_stops_the_thread() {
        let before = io_threads();
        let pm = AsyncPipelineManager::connect("tcp://127.0.0.1:1", "tcp://127.0.0.1:1")
            .expect("connect is lazy");
        let clone = pm.clone();
        if cfg!(target_os = "linux") {
            // A new thread names itself once it runs: wait for that (bounded).
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while io_threads() < before + 1 && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            assert_eq!(io_threads(), before + 1);
        }
        drop(pm);
        if cfg!(target_os = "linux") {
            assert_eq!(io_threads(), before + 1, "a clone keeps it");
        }
        drop(clone);
        // The drop joins the thread; the kernel may list an exited thread a moment
        // longer, so wait (bounded) for it to go.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while io_threads() > before && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(io_threads(), before);
    }
}
