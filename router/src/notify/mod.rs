//! The notification outbox: every notification the router owes, from the turn that
//! made it until an endpoint took it or every try failed.
//!
//! A notification is one event told to one channel (a webhook URL or an e-mail
//! address). It is made inside a turn of the event loop ([`crate::state`] calls
//! [`Outbox::add`] when a pipeline ends, a job will be retried or a job runs late) and
//! written to the store with everything else that turn changed, so it is durable
//! before anything about it leaves the router. Only then does [`Outbox::take_due`]
//! hand it to the delivery threads ([`deliver`]), which report back; each report is
//! applied with [`Outbox::outcome`] and made durable by the next commit. A router
//! killed at any point finds its pending notifications in the store and sends them
//! again: delivery is at least once, and the notification's id, sent as an
//! idempotency key, lets a receiver drop a second copy.
//!
//! A failed try is retried after [`RetryPolicy::backoff_ms`], doubled after each
//! further failure (at most [`MAX_BACKOFF_MS`]); after [`RetryPolicy::attempts`] tries,
//! or at once for an error that no retry can fix (an SMTP refusal, no SMTP server
//! configured), it is `failed` with its last error kept. The latest finished
//! notifications, at most [`RECENT_NOTIFICATIONS`], stay for `pypelinin
//! notifications` and the dashboard; older ones are removed from the store.

pub mod deliver;

use std::collections::{BTreeMap, BTreeSet, HashSet};

use pypelinin_common::notify::{DeliveryState, NotificationStatus, NotifyEvent};
use pypelinin_common::protocol::PipelineId;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Tries of one notification before it is `failed`, by default.
pub const DEFAULT_ATTEMPTS: u32 = 8;
/// Wait before the second try, by default; doubled after each further failure.
pub const DEFAULT_BACKOFF_MS: u64 = 1_000;
/// Longest wait between two tries.
pub const MAX_BACKOFF_MS: u64 = 10 * 60 * 1000;
/// Finished (delivered or failed) notifications kept for the log.
pub const RECENT_NOTIFICATIONS: usize = 1_000;
/// Most notifications handed to the delivery threads at once: the rest wait in the
/// outbox, so that a slow endpoint holds up a bounded amount of memory.
pub const MAX_IN_FLIGHT: usize = 64;

/// Where one notification goes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Channel {
    /// An HTTP(S) POST of a JSON body to this URL.
    Webhook(String),
    /// An e-mail to this address.
    Email(String),
}

impl std::fmt::Display for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Channel::Webhook(url) => f.write_str(url),
            Channel::Email(addr) => write!(f, "mailto:{addr}"),
        }
    }
}

/// How often a notification is tried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries before giving up (at least 1).
    pub attempts: u32,
    /// Wait after the first failed try.
    pub backoff_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: DEFAULT_ATTEMPTS,
            backoff_ms: DEFAULT_BACKOFF_MS,
        }
    }
}

impl RetryPolicy {
    /// The wait after `failures` failed tries (1 for the first).
    pub fn delay_ms(&self, failures: u32) -> u64 {
        let doublings = failures.saturating_sub(1).min(30);
        self.backoff_ms
            .saturating_mul(1u64 << doublings)
            .min(MAX_BACKOFF_MS)
    }
}

/// The router-wide channels, which hear of `events` of every pipeline besides the
/// channels a pipeline names itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotifyDefaults {
    /// `--notify-webhook`.
    pub webhook: Vec<String>,
    /// `--notify-email`.
    pub email: Vec<String>,
    /// `--notify-events`.
    pub events: Vec<NotifyEvent>,
}

/// The events router-wide channels hear of unless `--notify-events` says otherwise:
/// what needs an operator (a pipeline failed, a job is late), not the routine.
pub const DEFAULT_EVENTS: [NotifyEvent; 2] = [NotifyEvent::Failed, NotifyEvent::Late];

impl Default for NotifyDefaults {
    fn default() -> Self {
        NotifyDefaults {
            webhook: Vec::new(),
            email: Vec::new(),
            events: DEFAULT_EVENTS.to_vec(),
        }
    }
}

/// What is told: the same for every channel of one event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// What happened.
    pub event: NotifyEvent,
    /// The pipeline.
    pub pipeline: PipelineId,
    /// The job, for job events.
    pub job: Option<String>,
    /// The pipeline's state, or the job's for job events.
    pub state: String,
    /// The error that made it (a failed pipeline's first failed job, a retried
    /// attempt's error).
    pub error: Option<String>,
    /// When it happened, ms since the epoch.
    pub at_ms: u64,
}

/// One notification as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationRecord {
    /// Order of creation; the store's key.
    pub seq: u64,
    /// Sent as the idempotency key.
    pub id: Uuid,
    /// What is told.
    pub message: Message,
    /// To whom.
    pub channel: Channel,
    /// Tries so far.
    pub attempts: u32,
    /// Earliest next try, ms since the epoch.
    pub next_try_ms: u64,
    /// Where the delivery is.
    pub delivery: DeliveryState,
    /// Why the last try failed.
    pub last_error: Option<String>,
}

impl NotificationRecord {
    /// As `pypelinin notifications` shows it.
    pub fn status(&self) -> NotificationStatus {
        NotificationStatus {
            id: self.id.to_string(),
            event: self.message.event,
            pipeline: self.message.pipeline,
            job: self.message.job.clone(),
            state: self.message.state.clone(),
            channel: self.channel.to_string(),
            created_ms: self.message.at_ms,
            attempts: self.attempts,
            delivery: self.delivery,
            next_try_ms: (self.delivery == DeliveryState::Pending).then_some(self.next_try_ms),
            last_error: self.last_error.clone(),
        }
    }
}

/// One try to make, handed to the delivery threads.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The record's `seq`.
    pub seq: u64,
    /// The idempotency key.
    pub id: Uuid,
    /// Where to.
    pub channel: Channel,
    /// What.
    pub message: Message,
    /// Which try this is (from 1).
    pub attempt: u32,
}

/// What became of one try.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The record's `seq`.
    pub seq: u64,
    /// `Ok`, or why it failed.
    pub result: Result<(), DeliveryError>,
}

/// Why a try failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DeliveryError {
    /// What went wrong, naming the endpoint.
    pub message: String,
    /// No retry can fix it: the notification fails at once.
    pub permanent: bool,
}

/// The outbox: notifications not delivered yet and the latest finished ones.
#[derive(Debug, Default)]
pub struct Outbox {
    /// Every record kept, by `seq`.
    records: BTreeMap<u64, NotificationRecord>,
    /// Pending records not handed out, by (next try, seq).
    queue: BTreeSet<(u64, u64)>,
    /// Handed to the delivery threads, outcome not back yet.
    in_flight: HashSet<u64>,
    /// Finished records, oldest first (a subset of `records`).
    finished: BTreeSet<u64>,
    /// Changed since the last commit.
    dirty: BTreeSet<u64>,
    /// Dropped from the log since the last commit.
    removed: Vec<u64>,
    next_seq: u64,
    /// How often each notification is tried.
    pub policy: RetryPolicy,
}

impl Outbox {
    /// An outbox holding `records` (as loaded): pending ones are due again at their
    /// next try, however far they had got before a restart.
    pub fn load(records: Vec<NotificationRecord>, policy: RetryPolicy) -> Self {
        let mut o = Outbox {
            policy,
            next_seq: 1,
            ..Default::default()
        };
        for r in records {
            o.next_seq = o.next_seq.max(r.seq + 1);
            o.insert(r);
        }
        o.trim();
        o
    }

    fn insert(&mut self, r: NotificationRecord) {
        match r.delivery {
            DeliveryState::Pending => {
                self.queue.insert((r.next_try_ms, r.seq));
            }
            _ => {
                self.finished.insert(r.seq);
            }
        }
        self.records.insert(r.seq, r);
    }

    /// Records a new notification of `message` to `channel`, due now.
    pub fn add(&mut self, message: Message, channel: Channel) -> &NotificationRecord {
        let seq = self.next_seq;
        self.next_seq += 1;
        let r = NotificationRecord {
            seq,
            id: Uuid::new_v4(),
            next_try_ms: message.at_ms,
            message,
            channel,
            attempts: 0,
            delivery: DeliveryState::Pending,
            last_error: None,
        };
        self.dirty.insert(seq);
        self.insert(r);
        &self.records[&seq]
    }

    /// The pending notifications due at `now_ms` (at most [`MAX_IN_FLIGHT`] out at
    /// once), marked as handed out. Called only after the commit that stored them.
    pub fn take_due(&mut self, now_ms: u64) -> Vec<Delivery> {
        let mut out = Vec::new();
        while self.in_flight.len() < MAX_IN_FLIGHT {
            let Some(&(at, seq)) = self.queue.first() else {
                break;
            };
            if at > now_ms {
                break;
            }
            self.queue.pop_first();
            let r = &self.records[&seq];
            self.in_flight.insert(seq);
            out.push(Delivery {
                seq,
                id: r.id,
                channel: r.channel.clone(),
                message: r.message.clone(),
                attempt: r.attempts + 1,
            });
        }
        out
    }

    /// Applies what became of a try made at `now_ms`; the record after it, if known.
    pub fn outcome(&mut self, o: Outcome, now_ms: u64) -> Option<&NotificationRecord> {
        if !self.in_flight.remove(&o.seq) {
            return None;
        }
        let policy = self.policy;
        let r = self.records.get_mut(&o.seq)?;
        r.attempts += 1;
        match o.result {
            Ok(()) => {
                r.delivery = DeliveryState::Delivered;
                r.last_error = None;
            }
            Err(e) => {
                r.last_error = Some(e.message);
                if e.permanent || r.attempts >= policy.attempts.max(1) {
                    r.delivery = DeliveryState::Failed;
                } else {
                    r.next_try_ms = now_ms.saturating_add(policy.delay_ms(r.attempts));
                    self.queue.insert((r.next_try_ms, r.seq));
                }
            }
        }
        if r.delivery != DeliveryState::Pending {
            self.finished.insert(o.seq);
        }
        self.dirty.insert(o.seq);
        self.trim();
        self.records.get(&o.seq)
    }

    /// Forgets the oldest finished records beyond [`RECENT_NOTIFICATIONS`].
    fn trim(&mut self) {
        while self.finished.len() > RECENT_NOTIFICATIONS {
            let Some(seq) = self.finished.pop_first() else {
                break;
            };
            self.records.remove(&seq);
            self.dirty.remove(&seq);
            self.removed.push(seq);
        }
    }

    /// When the next pending notification is due (none while the most are out).
    pub fn next_due(&self) -> Option<u64> {
        if self.in_flight.len() >= MAX_IN_FLIGHT {
            return None;
        }
        self.queue.first().map(|(at, _)| *at)
    }

    /// Records changed and records removed since the last call, to write.
    pub fn drain_changes(&mut self) -> (Vec<&NotificationRecord>, Vec<u64>) {
        let removed = std::mem::take(&mut self.removed);
        let dirty = std::mem::take(&mut self.dirty);
        let changed = dirty.iter().filter_map(|s| self.records.get(s)).collect();
        (changed, removed)
    }

    /// The latest `limit` notifications, newest first.
    pub fn latest(&self, limit: usize) -> Vec<NotificationStatus> {
        self.records
            .values()
            .rev()
            .take(limit)
            .map(|r| r.status())
            .collect()
    }

    /// Notifications not delivered yet.
    pub fn pending(&self) -> usize {
        self.records.len() - self.finished.len()
    }
}

#[cfg(test)]
mod tests;
