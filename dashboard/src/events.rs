//! Live changes for the page: `GET /api/events`, a Server-Sent Events stream.
//!
//! The router broadcasts `pipeline.submitted` and `pipeline.finished` on its PUB socket,
//! but a broadcast can be lost and job changes are not broadcast at all; so broadcasts
//! only *wake* the dashboard, and the truth comes from the API. One refresher task, shared
//! by every connected browser, asks the router for the newest pipelines, the metrics and
//! the brokers when woken (a broadcast, a cancel or retry from the page, a new stream) or
//! every [`REFRESH_EVERY`] while someone listens, compares with what it pushed last, and
//! pushes what changed (see the crate documentation for the format). Nobody listening
//! means no requests.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use pypelinin_common::curve::Security;
use pypelinin_common::now_ms;
use pypelinin_common::protocol::{BrokerStatus, ClusterMetrics, PipelineSummary};
use pypelinin_common::transport::{poll, subscriber_with};
use serde_json::{json, Value};
use tokio::sync::{broadcast, watch, Notify};
use tracing::{debug, warn};

use crate::link::Links;
use crate::shapes::summary_json;

/// How often the refresher asks the router while a browser listens (job changes are
/// not broadcast, so this is what moves progress bars).
pub const REFRESH_EVERY: Duration = Duration::from_secs(1);
/// Shortest gap between two refreshes: a burst of broadcasts costs one refresh.
pub const MIN_GAP: Duration = Duration::from_millis(200);
/// `metrics` and `brokers` are pushed at least this often even when unchanged, so that
/// heartbeat ages and the throughput chart stay current.
pub const RESEND_EVERY: Duration = Duration::from_secs(5);
/// Pipelines the refresher watches: the newest ones, as the page lists them.
pub const WATCHED: u32 = 200;
/// Messages a slow stream may fall behind before it is sent a fresh snapshot instead.
const BACKLOG: usize = 64;

/// One pushed message: the SSE `event:` name and its JSON `data:`.
#[derive(Clone, Debug)]
pub struct Message {
    /// `pipelines`, `metrics`, `brokers` or `unreachable`.
    pub kind: &'static str,
    /// JSON text.
    pub data: Arc<str>,
}

impl Message {
    fn new(kind: &'static str, value: &Value) -> Message {
        Message {
            kind,
            data: value.to_string().into(),
        }
    }

    fn event(&self) -> Event {
        Event::default().event(self.kind).data(&*self.data)
    }
}

/// What was pushed last, to tell what changed and to greet a new stream.
#[derive(Default)]
struct Pushed {
    /// The watched pipelines, newest first, as summaries.
    pipelines: Vec<PipelineSummary>,
    /// The same, serialized, by id: what a change is measured against.
    seen: HashMap<String, Value>,
    metrics: Option<(Value, Value, Instant)>,
    brokers: Option<(Value, Value, Instant)>,
    /// Whether the last refresh failed (told once with `unreachable`).
    down: bool,
}

/// Shared by the refresher and every stream: the last pushed state and the channel.
pub struct Hub {
    tx: broadcast::Sender<Message>,
    pushed: Mutex<Option<Pushed>>,
    wake: Notify,
    stop: watch::Receiver<bool>,
}

impl Hub {
    /// A hub whose streams end when `stop` turns true.
    pub fn new(stop: watch::Receiver<bool>) -> Hub {
        Hub {
            tx: broadcast::channel(BACKLOG).0,
            pushed: Mutex::new(None),
            wake: Notify::new(),
            stop,
        }
    }

    /// Asks for a refresh soon (many calls before it runs cost one refresh).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    fn pushed(&self) -> std::sync::MutexGuard<'_, Option<Pushed>> {
        // Only whole values are stored under this lock: a poisoned one is consistent.
        self.pushed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A receiver of what comes next and the messages that bring a new stream up to
    /// date, taken together so that nothing falls between them.
    fn join(&self) -> (broadcast::Receiver<Message>, VecDeque<Message>) {
        let pushed = self.pushed();
        let rx = self.tx.subscribe();
        let greeting = pushed.as_ref().map(snapshot).unwrap_or_default();
        (rx, greeting)
    }

    /// Compares a refresh with what was pushed and pushes the differences.
    fn update(&self, list: &[PipelineSummary], metrics: &ClusterMetrics, brokers: &[BrokerStatus]) {
        let now = now_ms();
        let mut guard = self.pushed();
        let first = guard.is_none();
        let pushed = guard.get_or_insert_with(Pushed::default);
        let mut out = Vec::new();

        let mut seen = HashMap::with_capacity(list.len());
        let mut changed = Vec::new();
        for p in list {
            let key = p.id.to_string();
            let value = serde_json::to_value(p).unwrap_or_default();
            if pushed.seen.get(&key) != Some(&value) {
                changed.push(summary_json(p, now));
            }
            seen.insert(key, value);
        }
        if first || !changed.is_empty() || pushed.down {
            out.push(Message::new(
                "pipelines",
                &json!({ "changed": changed, "now_ms": now }),
            ));
        }
        pushed.pipelines = list.to_vec();
        pushed.seen = seen;

        let mut m = serde_json::to_value(metrics).unwrap_or_default();
        m["now_ms"] = now.into();
        // Request latency moves with every request (the dashboard's own too).
        let key = without(&m, |v| {
            if let Some(o) = v.as_object_mut() {
                o.remove("request_latency");
                o.remove("now_ms");
            }
        });
        if let Some(message) = changed_or_due(&mut pushed.metrics, m, key, "metrics") {
            out.push(message);
        }

        let b = serde_json::to_value(brokers).unwrap_or_default();
        // A heartbeat's age changes every time it is read.
        let key = without(&b, |v| {
            for broker in v.as_array_mut().into_iter().flatten() {
                if let Some(o) = broker.as_object_mut() {
                    o.remove("last_seen_ms_ago");
                }
            }
        });
        if let Some(message) = changed_or_due(&mut pushed.brokers, b, key, "brokers") {
            out.push(message);
        }
        pushed.down = false;
        for message in out {
            // No receiver is not an error: the next stream is greeted with a snapshot.
            let _ = self.tx.send(message);
        }
    }

    /// Tells the streams once that the router does not answer.
    fn unreachable(&self, error: &str) {
        let mut guard = self.pushed();
        let pushed = guard.get_or_insert_with(Pushed::default);
        if !pushed.down {
            pushed.down = true;
            let _ = self
                .tx
                .send(Message::new("unreachable", &json!({ "error": error })));
        }
    }
}

fn without(value: &Value, strip: impl FnOnce(&mut Value)) -> Value {
    let mut v = value.clone();
    strip(&mut v);
    v
}

/// A message when `key` differs from the last one pushed, or the last push is old.
fn changed_or_due(
    last: &mut Option<(Value, Value, Instant)>,
    value: Value,
    key: Value,
    kind: &'static str,
) -> Option<Message> {
    let due = match last {
        Some((_, k, at)) => *k != key || at.elapsed() >= RESEND_EVERY,
        None => true,
    };
    if !due {
        return None;
    }
    let message = Message::new(kind, &value);
    *last = Some((value, key, Instant::now()));
    Some(message)
}

/// Everything pushed so far, as messages: what a new (or lagging) stream starts from.
fn snapshot(pushed: &Pushed) -> VecDeque<Message> {
    let now = now_ms();
    let changed: Vec<Value> = pushed
        .pipelines
        .iter()
        .map(|p| summary_json(p, now))
        .collect();
    let mut out = VecDeque::new();
    out.push_back(Message::new(
        "pipelines",
        &json!({ "changed": changed, "now_ms": now }),
    ));
    if let Some((m, _, _)) = &pushed.metrics {
        out.push_back(Message::new("metrics", m));
    }
    if let Some((b, _, _)) = &pushed.brokers {
        out.push_back(Message::new("brokers", b));
    }
    out
}

/// The refresher: one per dashboard, whatever the number of streams.
pub async fn refresh(hub: Arc<Hub>, links: Links) {
    let mut stop = hub.stop.clone();
    loop {
        tokio::select! {
            _ = hub.wake.notified() => {}
            _ = tokio::time::sleep(REFRESH_EVERY) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if hub.tx.receiver_count() == 0 {
            continue;
        }
        let answer = links
            .run(|l| Ok((l.list(WATCHED, None)?, l.metrics()?, l.brokers()?)))
            .await;
        match answer {
            Ok((list, metrics, brokers)) => hub.update(&list, &metrics, &brokers),
            Err(e) => {
                debug!(error = %e, "refresh failed");
                hub.unreachable(&e.to_string());
            }
        }
        tokio::time::sleep(MIN_GAP).await;
    }
}

/// Wakes the refresher at each of the router's broadcasts, until `stop` is set. Runs on
/// a thread of its own: the SUB socket is blocking and stays on this one thread.
pub fn watch_broadcasts(
    ctx: &zmq::Context,
    endpoint: &str,
    security: &Security,
    hub: &Hub,
    stop: &AtomicBool,
) {
    let socket = match subscriber_with(ctx, endpoint, &[b"pipeline."], security) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, %endpoint, "dashboard cannot subscribe to broadcasts; it refreshes on its timer only");
            return;
        }
    };
    while !stop.load(Ordering::Relaxed) {
        let mut items = [socket.as_poll_item(zmq::POLLIN)];
        if poll(&mut items, 200).is_err() {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        if items[0].is_readable() {
            while socket.recv_multipart(zmq::DONTWAIT).is_ok() {}
            hub.wake();
        }
    }
}

/// `GET /api/events`: a snapshot of what was pushed so far, then every change.
pub fn stream(hub: Arc<Hub>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let (rx, greeting) = hub.join();
    // The first stream after a quiet time gets fresh news at once.
    hub.wake();
    let stop = hub.stop.clone();
    let state = (hub, rx, greeting, stop);
    let events =
        futures_util::stream::unfold(state, |(hub, mut rx, mut queue, mut stop)| async move {
            loop {
                if let Some(m) = queue.pop_front() {
                    return Some((Ok(m.event()), (hub, rx, queue, stop)));
                }
                if *stop.borrow() {
                    return None;
                }
                tokio::select! {
                    got = rx.recv() => match got {
                        Ok(m) => return Some((Ok(m.event()), (hub, rx, queue, stop))),
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            queue = hub.pushed().as_ref().map(snapshot).unwrap_or_default();
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    },
                    changed = stop.changed() => {
                        if changed.is_err() {
                            return None; // the dashboard is gone
                        }
                    }
                }
            }
        });
    Sse::new(events).keep_alive(KeepAlive::default())
}
