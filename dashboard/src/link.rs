//! The dashboard's narrow line to the router: the few requests it makes, over the
//! router's API socket, with the common protocol types.
//!
//! A [`Link`] is one blocking ZeroMQ connection ([`Requester`]); ZeroMQ sockets are
//! not thread-safe, so a link is used by one thread at a time. [`Links`] keeps a few of
//! them and lends one to a `tokio` blocking thread per call, so that the async handlers
//! never block the runtime and never share a socket.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pypelinin_common::curve::Security;
use pypelinin_common::protocol::{
    BrokerStatus, ClusterMetrics, LogPage, PipelineId, PipelineSummary, Reply, Request,
    ScheduleRequest,
};
use pypelinin_common::schedule::ScheduleStatus;
use pypelinin_common::transport::{Requester, TransportError};
use pypelinin_common::{Data, PipelineSpec, PipelineState, PipelineStatus};
use tokio::sync::Semaphore;

/// How long one attempt waits for the router: the router runs in the same process, so a
/// short patience keeps pages snappy when it is busy (an error beats a hung tab).
pub const PATIENCE: Duration = Duration::from_millis(2_500);
/// Attempts per request before the router is reported unreachable.
pub const ATTEMPTS: u32 = 2;
/// Connections to the router at most, hence requests to it at once.
pub const LINKS: usize = 4;

/// Why a request to the router gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The router did not answer, or refused.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The router answered with something the dashboard does not expect.
    #[error("unexpected reply from router: {0}")]
    Unexpected(String),
    /// The thread serving the request ended without an answer (the dashboard is
    /// stopping, or a bug panicked it).
    #[error("the request to the router was abandoned: {0}")]
    Abandoned(String),
}

/// One blocking connection to the router's API socket.
pub struct Link {
    requester: Requester,
}

/// `Ok(x)` when the reply is the expected variant, an [`LinkError::Unexpected`] otherwise.
macro_rules! expect_reply {
    ($reply:expr, $variant:path) => {
        match $reply {
            $variant(x) => Ok(x),
            other => Err(LinkError::Unexpected(format!("{other:?}"))),
        }
    };
}

impl Link {
    /// A link to the router at `api`; connects lazily.
    pub fn new(ctx: &zmq::Context, api: &str) -> Link {
        Link::with_security(ctx, api, Security::None)
    }

    /// A link whose socket uses `security` (the router's own key pair when the router
    /// runs CURVE: see [`Security::own_client`]).
    pub fn with_security(ctx: &zmq::Context, api: &str, security: Security) -> Link {
        let mut requester = Requester::with_security(ctx, api, security);
        requester.timeout = PATIENCE;
        requester.attempts = ATTEMPTS;
        Link { requester }
    }

    fn ask(&mut self, req: &Request) -> Result<Reply, LinkError> {
        Ok(self.requester.request(req)?)
    }

    /// The newest pipelines (in `state`, any with `None`), newest first.
    pub fn list(
        &mut self,
        limit: u32,
        state: Option<PipelineState>,
    ) -> Result<Vec<PipelineSummary>, LinkError> {
        self.list_page(limit, state, None)
    }

    /// [`Link::list`], only pipelines older than the one whose `seq` is `before`.
    pub fn list_page(
        &mut self,
        limit: u32,
        state: Option<PipelineState>,
        before: Option<u64>,
    ) -> Result<Vec<PipelineSummary>, LinkError> {
        expect_reply!(
            self.ask(&Request::List {
                limit,
                state,
                schedule: None,
                before,
            })?,
            Reply::List
        )
    }

    /// The newest runs of the schedule `name`, newest first.
    pub fn runs_of(&mut self, name: &str, limit: u32) -> Result<Vec<PipelineSummary>, LinkError> {
        expect_reply!(
            self.ask(&Request::List {
                limit,
                state: None,
                schedule: Some(name.to_string()),
                before: None,
            })?,
            Reply::List
        )
    }

    /// Lists, shows, pauses or resumes schedules: the schedules concerned.
    pub fn schedules(&mut self, req: ScheduleRequest) -> Result<Vec<ScheduleStatus>, LinkError> {
        expect_reply!(self.ask(&Request::Schedule(req))?, Reply::Schedules)
    }

    /// Makes a run of the schedule `name` now; its pipeline id.
    pub fn trigger(&mut self, name: &str) -> Result<PipelineId, LinkError> {
        let req = Request::Schedule(ScheduleRequest::Trigger {
            name: name.to_string(),
        });
        match self.ask(&req)? {
            Reply::Submitted { id } => Ok(id),
            other => Err(LinkError::Unexpected(format!("{other:?}"))),
        }
    }

    /// A pipeline's status.
    pub fn status(&mut self, id: PipelineId) -> Result<PipelineStatus, LinkError> {
        expect_reply!(self.ask(&Request::Status { id })?, Reply::Status)
    }

    /// The spec a pipeline was submitted with (for its edges).
    pub fn spec(&mut self, id: PipelineId) -> Result<PipelineSpec, LinkError> {
        expect_reply!(self.ask(&Request::Spec { id })?, Reply::Spec)
    }

    /// Outputs of the pipeline's succeeded jobs.
    pub fn outputs(&mut self, id: PipelineId) -> Result<BTreeMap<String, Data>, LinkError> {
        expect_reply!(self.ask(&Request::Outputs { id })?, Reply::Outputs)
    }

    /// Cancels a pipeline; its status after.
    pub fn cancel(&mut self, id: PipelineId) -> Result<PipelineStatus, LinkError> {
        expect_reply!(self.ask(&Request::Cancel { id })?, Reply::Status)
    }

    /// Runs again the named jobs (every one that did not succeed when empty).
    pub fn retry(&mut self, id: PipelineId, jobs: &[String]) -> Result<PipelineStatus, LinkError> {
        let req = Request::Retry {
            id,
            jobs: jobs.to_vec(),
        };
        expect_reply!(self.ask(&req)?, Reply::Status)
    }

    /// The brokers with their last monitoring report.
    pub fn brokers(&mut self) -> Result<Vec<BrokerStatus>, LinkError> {
        expect_reply!(self.ask(&Request::Brokers)?, Reply::Brokers)
    }

    /// Lines of one attempt of a job's captured log, after line `after`.
    pub fn logs(
        &mut self,
        id: PipelineId,
        job: &str,
        attempt: Option<u32>,
        after: u64,
    ) -> Result<LogPage, LinkError> {
        let req = Request::GetLogs {
            id,
            job: job.to_string(),
            attempt,
            after,
        };
        expect_reply!(self.ask(&req)?, Reply::Logs)
    }

    /// The latest notifications with their delivery, newest first.
    pub fn notifications(
        &mut self,
        limit: u32,
    ) -> Result<Vec<pypelinin_common::notify::NotificationStatus>, LinkError> {
        expect_reply!(
            self.ask(&Request::Notifications { limit })?,
            Reply::Notifications
        )
    }

    /// Every pool with its capacity, slots in use and jobs queued.
    pub fn pools(&mut self) -> Result<Vec<pypelinin_common::protocol::PoolStatus>, LinkError> {
        let req = Request::Pool(pypelinin_common::protocol::PoolRequest::List);
        expect_reply!(self.ask(&req)?, Reply::Pools)
    }

    /// Cluster metrics.
    pub fn metrics(&mut self) -> Result<ClusterMetrics, LinkError> {
        expect_reply!(self.ask(&Request::Metrics)?, Reply::Metrics)
    }
}

/// A few [`Link`]s shared by the async side: each call borrows one on a blocking thread.
#[derive(Clone)]
pub struct Links {
    ctx: zmq::Context,
    api: String,
    security: Security,
    idle: Arc<Mutex<Vec<Link>>>,
    permits: Arc<Semaphore>,
}

impl Links {
    /// Links to the router at `api`, at most [`LINKS`] of them, made as needed.
    pub fn new(ctx: &zmq::Context, api: &str) -> Links {
        Links::with_security(ctx, api, Security::None)
    }

    /// [`Links::new`] whose links use `security`.
    pub fn with_security(ctx: &zmq::Context, api: &str, security: Security) -> Links {
        Links {
            ctx: ctx.clone(),
            api: api.to_string(),
            security,
            idle: Arc::new(Mutex::new(Vec::new())),
            permits: Arc::new(Semaphore::new(LINKS)),
        }
    }

    /// Runs `call` with a link of its own on a blocking thread and returns its answer.
    pub async fn run<T, F>(&self, call: F) -> Result<T, LinkError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Link) -> Result<T, LinkError> + Send + 'static,
    {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| LinkError::Abandoned(e.to_string()))?;
        let idle = Arc::clone(&self.idle);
        let taken = lock(&idle).pop();
        let mut link = taken
            .unwrap_or_else(|| Link::with_security(&self.ctx, &self.api, self.security.clone()));
        let joined = tokio::task::spawn_blocking(move || {
            let answer = call(&mut link);
            // A link whose request failed keeps working: its requester starts a fresh
            // socket on the next attempt.
            lock(&idle).push(link);
            answer
        })
        .await;
        joined.map_err(|e| LinkError::Abandoned(e.to_string()))?
    }
}

/// The pool's lock; a panic elsewhere cannot leave the list of idle links inconsistent
/// (it is only pushed and popped), so a poisoned lock is used as is.
fn lock(idle: &Mutex<Vec<Link>>) -> std::sync::MutexGuard<'_, Vec<Link>> {
    idle.lock().unwrap_or_else(|p| p.into_inner())
}
