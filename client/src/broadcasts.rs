//! What the client hears on the router's broadcast socket: pipelines finishing
//! ([`Finished`]) and wake-ups for log followers ([`LogWakeups`]). Broadcasts only wake
//! a client up; the truth always comes from a request.

use std::time::{Duration, Instant};

use pypelinin_common::protocol::{decode, Event, PipelineId};

/// Pipelines finishing, as broadcast by the router.
pub struct Finished {
    pub(crate) socket: zmq::Socket,
}

impl Finished {
    /// The next finished pipeline, waiting at most `timeout`.
    pub fn next_timeout(
        &self,
        timeout: Duration,
    ) -> Option<(PipelineId, pypelinin_common::PipelineState)> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut items = [self.socket.as_poll_item(zmq::POLLIN)];
            pypelinin_common::transport::poll(&mut items, left.as_millis() as i64).ok()?;
            if !items[0].is_readable() {
                return None;
            }
            let parts = self.socket.recv_multipart(0).ok()?;
            if let Some(Ok((_, Event::PipelineFinished { id, state }))) =
                parts.get(1).map(|p| decode::<Event>(p))
            {
                return Some((id, state));
            }
        }
    }
}

/// Broadcasts that a pipeline logged lines or finished (see
/// [`PipelineManager::subscribe_logs`]).
pub struct LogWakeups {
    pub(crate) socket: zmq::Socket,
}

impl LogWakeups {
    /// Waits until pipeline `id` logs or finishes, or `timeout` passes.
    pub fn wait(&self, id: PipelineId, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut items = [self.socket.as_poll_item(zmq::POLLIN)];
            if pypelinin_common::transport::poll(&mut items, left.as_millis() as i64).is_err()
                || !items[0].is_readable()
            {
                return;
            }
            let Ok(parts) = self.socket.recv_multipart(0) else {
                return;
            };
            match parts.get(1).map(|p| decode::<Event>(p)) {
                Some(Ok((_, Event::JobLogs { id: got })))
                | Some(Ok((_, Event::PipelineFinished { id: got, .. })))
                    if got == id =>
                {
                    return
                }
                _ => {}
            }
        }
    }
}
