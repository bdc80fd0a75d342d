//! Notifications: who is told when a pipeline ends, a job retries or a job runs late,
//! and how (a webhook, an e-mail).
//!
//! A pipeline (or a schedule, for each of its runs) names its channels in a `notify`
//! object; the router adds its own defaults (its `--notify-*` flags). The router keeps
//! every notification in a durable outbox and delivers it at least once; what it knows
//! of each delivery is a [`NotificationStatus`].

use serde::{Deserialize, Serialize};

use crate::ids::PipelineId;

/// Most channels (webhooks plus addresses) one `notify` object may name: every event
/// makes one delivery per channel, and the outbox must stay small.
pub const MAX_CHANNELS: usize = 16;
/// Longest webhook URL or e-mail address accepted, in bytes.
pub const MAX_CHANNEL_LEN: usize = 2048;
/// Most notifications one `Notifications` request returns.
pub const MAX_NOTIFICATIONS_SHOWN: u32 = 1000;

/// What happened, as a notification names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyEvent {
    /// A pipeline ended failed.
    Failed,
    /// A pipeline ended succeeded.
    Succeeded,
    /// A pipeline was cancelled.
    Cancelled,
    /// A job's attempt failed and the job will be tried again.
    Retrying,
    /// A job's attempt has run longer than its `warn_after_ms` (it keeps running).
    Late,
}

impl NotifyEvent {
    /// Every event, in the order the documentation lists them.
    pub const ALL: [NotifyEvent; 5] = [
        NotifyEvent::Failed,
        NotifyEvent::Succeeded,
        NotifyEvent::Cancelled,
        NotifyEvent::Retrying,
        NotifyEvent::Late,
    ];

    /// The name used in JSON, on the command line and in webhook bodies.
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyEvent::Failed => "failed",
            NotifyEvent::Succeeded => "succeeded",
            NotifyEvent::Cancelled => "cancelled",
            NotifyEvent::Retrying => "retrying",
            NotifyEvent::Late => "late",
        }
    }

    /// The event named `s` (as [`NotifyEvent::as_str`] spells it).
    pub fn parse(s: &str) -> Result<NotifyEvent, String> {
        NotifyEvent::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown event {s:?}: expected one of {}",
                    NotifyEvent::ALL.map(|e| e.as_str()).join(", ")
                )
            })
    }
}

impl std::fmt::Display for NotifyEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where and about what a pipeline's notifications go (its `notify` object).
///
/// These channels come on top of the router's own defaults (`--notify-webhook`,
/// `--notify-email`), which keep their own event list: an operator's alerting cannot
/// be switched off by a pipeline file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifySpec {
    /// URLs (http or https) that get a JSON POST per event.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhook: Vec<String>,
    /// Addresses that get an e-mail per event (through the router's `--smtp-server`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub email: Vec<String>,
    /// Which events these channels hear of; unset: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<NotifyEvent>>,
}

impl NotifySpec {
    /// Whether these channels hear of `event`.
    pub fn wants(&self, event: NotifyEvent) -> bool {
        match &self.events {
            None => true,
            Some(e) => e.contains(&event),
        }
    }

    /// Refuses a channel that could never be delivered to, naming it.
    pub fn check(&self) -> Result<(), String> {
        let n = self.webhook.len() + self.email.len();
        if n > MAX_CHANNELS {
            return Err(format!(
                "notify names {n} channels; at most {MAX_CHANNELS} are allowed"
            ));
        }
        for url in &self.webhook {
            check_webhook(url)?;
        }
        for addr in &self.email {
            check_email(addr)?;
        }
        Ok(())
    }
}

/// Refuses a webhook URL that is not `http://HOST...` or `https://HOST...`.
pub fn check_webhook(url: &str) -> Result<(), String> {
    if url.len() > MAX_CHANNEL_LEN {
        return Err(format!(
            "webhook URL has {} bytes; at most {MAX_CHANNEL_LEN} are allowed",
            url.len()
        ));
    }
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("webhook {url:?} must start with http:// or https://"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("webhook {url:?} is not a URL with a host"));
    }
    Ok(())
}

/// Refuses an e-mail address that is not `local@domain` (checked loosely: the SMTP
/// server has the last word).
pub fn check_email(addr: &str) -> Result<(), String> {
    if addr.len() > MAX_CHANNEL_LEN {
        return Err(format!(
            "e-mail address has {} bytes; at most {MAX_CHANNEL_LEN} are allowed",
            addr.len()
        ));
    }
    let ok = match addr.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && !addr
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>'))
        }
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "e-mail address {addr:?} is not of the form name@domain"
        ))
    }
}

/// Where a notification is in its delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Not delivered yet: being sent, or waiting for its next try.
    Pending,
    /// The endpoint accepted it.
    Delivered,
    /// Every try failed; `last_error` says why the last one did.
    Failed,
}

impl DeliveryState {
    /// The name used in JSON and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
        }
    }
}

/// One notification and what became of its delivery, as the router reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationStatus {
    /// Its id, also sent as the idempotency key: a receiver that sees it twice (the
    /// delivery is at-least-once) can drop the second.
    pub id: String,
    /// What happened.
    pub event: NotifyEvent,
    /// The pipeline concerned.
    pub pipeline: PipelineId,
    /// The job concerned (`retrying`, `late`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// The pipeline's state (`failed`, ...), or the job's (`queued`, `running`).
    pub state: String,
    /// Where it goes: a webhook URL or `mailto:ADDRESS`.
    pub channel: String,
    /// When the event happened, ms since the epoch.
    pub created_ms: u64,
    /// Tries so far.
    pub attempts: u32,
    /// Where the delivery is.
    pub delivery: DeliveryState,
    /// While pending: when the next try is due, ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_try_ms: Option<u64>,
    /// Why the last try failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_are_checked_with_clear_errors() {
        let ok = NotifySpec {
            webhook: vec![
                "https://example.com/hook".into(),
                "http://10.0.0.1:80".into(),
            ],
            email: vec!["ops@example.com".into()],
            events: Some(vec![NotifyEvent::Failed]),
        };
        assert_eq!(ok.check(), Ok(()));
        assert!(ok.wants(NotifyEvent::Failed) && !ok.wants(NotifyEvent::Late));
        let bad = |s: NotifySpec| s.check().unwrap_err();
        let e = bad(NotifySpec {
            webhook: vec!["ftp://x".into()],
            ..Default::default()
        });
        assert!(e.contains("ftp://x") && e.contains("http://"), "{e}");
        let e = bad(NotifySpec {
            webhook: vec!["http:///path".into()],
            ..Default::default()
        });
        assert!(e.contains("host"), "{e}");
        let e = bad(NotifySpec {
            email: vec!["nobody".into()],
            ..Default::default()
        });
        assert!(e.contains("nobody") && e.contains("name@domain"), "{e}");
        let e = bad(NotifySpec {
            email: vec!["a@example.com".into(); MAX_CHANNELS + 1],
            ..Default::default()
        });
        assert!(e.contains("at most"), "{e}");
    }

    #[test]
    fn unknown_fields_and_events_are_refused() {
        assert!(serde_json::from_str::<NotifySpec>(r#"{"webhooks": []}"#).is_err());
        assert!(serde_json::from_str::<NotifySpec>(r#"{"events": ["exploded"]}"#).is_err());
        let s: NotifySpec =
            serde_json::from_str(r#"{"email": ["a@b"], "events": ["late", "retrying"]}"#).unwrap();
        assert_eq!(
            s.events,
            Some(vec![NotifyEvent::Late, NotifyEvent::Retrying])
        );
        assert_eq!(NotifyEvent::parse("cancelled"), Ok(NotifyEvent::Cancelled));
        assert!(NotifyEvent::parse("nope").unwrap_err().contains("failed"));
    }
}
