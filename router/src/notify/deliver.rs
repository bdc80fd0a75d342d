//! The delivery threads: they make the tries the outbox hands out, off the event loop,
//! so that a dead or slow endpoint costs a thread's time, never the router's.
//!
//! [`Deliverer::start`] starts [`DELIVERY_THREADS`] threads that share one queue of
//! [`Delivery`]s. A webhook try is an HTTP POST of [`body`] with the header
//! `Idempotency-Key: <id>`, bounded by [`WEBHOOK_TIMEOUT`]; any 2xx answer delivers it.
//! An e-mail try is one SMTP conversation with the configured server, bounded by
//! [`SMTP_TIMEOUT`]. Each try's [`Outcome`] goes back on a channel that the event loop
//! drains on every turn.

use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::{Message as Email, SmtpTransport, Transport};
use tracing::{debug, info_span, warn};

use super::{Channel, Delivery, DeliveryError, Message, Outcome};

/// Threads making tries at once.
pub const DELIVERY_THREADS: usize = 4;
/// Longest a webhook try may take, connection included.
pub const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest an SMTP command may wait for the server.
pub const SMTP_TIMEOUT: Duration = Duration::from_secs(10);
/// The sender of e-mails when `--smtp-from` is not given.
pub const DEFAULT_FROM: &str = "pypelinin@localhost";

/// Where e-mail goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmtpConfig {
    /// The server's host.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// The `From:` address.
    pub from: String,
}

/// The delivery threads, fed through [`Deliverer::send`]; they end when it is dropped.
pub struct Deliverer {
    tx: Sender<Delivery>,
    outcomes: Receiver<Outcome>,
}

impl Deliverer {
    /// Starts the threads; `smtp` is where e-mails go (none: an e-mail fails at once).
    pub fn start(smtp: Option<SmtpConfig>) -> std::io::Result<Deliverer> {
        let (tx, rx) = crossbeam_channel::unbounded::<Delivery>();
        let (otx, outcomes) = crossbeam_channel::unbounded();
        for n in 0..DELIVERY_THREADS {
            let (rx, otx, smtp) = (rx.clone(), otx.clone(), smtp.clone());
            std::thread::Builder::new()
                .name(format!("notify-{n}"))
                .spawn(move || worker(rx, otx, smtp))?;
        }
        Ok(Deliverer { tx, outcomes })
    }

    /// Queues a try.
    pub fn send(&self, d: Delivery) {
        // The threads live as long as this sender, so the queue is always open.
        let _ = self.tx.send(d);
    }

    /// Outcomes reported since the last call.
    pub fn outcomes(&self) -> Vec<Outcome> {
        self.outcomes.try_iter().collect()
    }
}

fn worker(rx: Receiver<Delivery>, tx: Sender<Outcome>, smtp: Option<SmtpConfig>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(WEBHOOK_TIMEOUT))
        .http_status_as_error(false)
        .build()
        .into();
    for d in rx {
        let span = info_span!("notify", pipeline = %d.message.pipeline, event = %d.message.event, channel = %d.channel, attempt = d.attempt);
        let _g = span.enter();
        let result = match &d.channel {
            Channel::Webhook(url) => post(&agent, url, &d),
            Channel::Email(addr) => mail(smtp.as_ref(), addr, &d),
        };
        match &result {
            Ok(()) => debug!("notification delivered"),
            Err(e) => warn!(error = %e, permanent = e.permanent, "notification not delivered"),
        }
        if tx.send(Outcome { seq: d.seq, result }).is_err() {
            return;
        }
    }
}

/// The JSON a webhook receives.
pub fn body(d: &Delivery) -> serde_json::Value {
    let m = &d.message;
    let mut v = serde_json::json!({
        "id": d.id.to_string(),
        "event": m.event.as_str(),
        "pipeline": m.pipeline.to_string(),
        "state": m.state,
        "at": pypelinin_common::render::rfc3339_ms(m.at_ms),
        "at_ms": m.at_ms,
        "attempt": d.attempt,
    });
    if let Some(job) = &m.job {
        v["job"] = job.clone().into();
    }
    if let Some(e) = &m.error {
        v["error"] = e.clone().into();
    }
    v
}

fn post(agent: &ureq::Agent, url: &str, d: &Delivery) -> Result<(), DeliveryError> {
    let sent = agent
        .post(url)
        .header("Content-Type", "application/json")
        .header("Idempotency-Key", d.id.to_string())
        .send(body(d).to_string());
    match sent {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => {
            let code = r.status().as_u16();
            Err(DeliveryError {
                message: format!("webhook {url} answered HTTP {code}"),
                // A request the endpoint refuses as such will be refused again; a
                // timeout, a rate limit or a server error may pass later.
                permanent: (400..500).contains(&code) && code != 408 && code != 429,
            })
        }
        Err(e) => {
            let https = url.starts_with("https:");
            let what = match &e {
                ureq::Error::Rustls(_) | ureq::Error::Tls(_) => "TLS error: ",
                // rustls reports a bad handshake as invalid data on the stream.
                ureq::Error::Io(io) if https && io.kind() == std::io::ErrorKind::InvalidData => {
                    "TLS error: "
                }
                ureq::Error::Io(io) if https && io.kind() == std::io::ErrorKind::UnexpectedEof => {
                    "connection closed during the TLS handshake or before an answer: "
                }
                _ => "",
            };
            Err(DeliveryError {
                message: format!("webhook {url}: {what}{e}"),
                permanent: false,
            })
        }
    }
}

/// The e-mail's subject: one line, whatever a job's name holds.
fn subject(m: &Message) -> String {
    let line = match &m.job {
        Some(job) => format!(
            "pypelinin: job {job} of pipeline {} {}",
            m.pipeline, m.event
        ),
        None => format!("pypelinin: pipeline {} {}", m.pipeline, m.event),
    };
    line.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn mail(smtp: Option<&SmtpConfig>, addr: &str, d: &Delivery) -> Result<(), DeliveryError> {
    let permanent = |message: String| DeliveryError {
        message,
        permanent: true,
    };
    let Some(smtp) = smtp else {
        return Err(permanent(format!(
            "e-mail to {addr}: the router has no SMTP server (start it with --smtp-server HOST:PORT)"
        )));
    };
    let from: Mailbox = smtp
        .from
        .parse()
        .map_err(|e| permanent(format!("sender address {:?}: {e}", smtp.from)))?;
    let to: Mailbox = addr
        .parse()
        .map_err(|e| permanent(format!("e-mail address {addr:?}: {e}")))?;
    let text = format!(
        "{}\n\n{}\n",
        subject(&d.message),
        serde_json::to_string_pretty(&body(d)).unwrap_or_default()
    );
    let email = Email::builder()
        .from(from)
        .to(to)
        .subject(subject(&d.message))
        .message_id(Some(format!("<{}@pypelinin>", d.id)))
        .header(ContentType::TEXT_PLAIN)
        .body(text)
        .map_err(|e| permanent(format!("building the e-mail to {addr}: {e}")))?;
    let transport = SmtpTransport::builder_dangerous(smtp.host.as_str())
        .port(smtp.port)
        .timeout(Some(SMTP_TIMEOUT))
        .build();
    transport
        .send(&email)
        .map(|_| ())
        .map_err(|e| DeliveryError {
            message: format!("e-mail to {addr} via {}:{}: {e}", smtp.host, smtp.port),
            permanent: e.is_permanent(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pypelinin_common::notify::NotifyEvent;
    use pypelinin_common::protocol::PipelineId;
    use uuid::Uuid;

    fn delivery(job: Option<&str>, error: Option<&str>) -> Delivery {
        Delivery {
            seq: 1,
            id: Uuid::new_v4(),
            channel: Channel::Webhook("http://127.0.0.1:9/".into()),
            message: Message {
                event: NotifyEvent::Retrying,
                pipeline: PipelineId::new(),
                job: job.map(String::from),
                state: "running".into(),
                error: error.map(String::from),
                at_ms: 1_700_000_000_250,
            },
            attempt: 3,
        }
    }

    #[test]
    fn the_body_names_the_event_pipeline_state_and_id() {
        let d = delivery(Some("load"), Some("boom"));
        let b = body(&d);
        assert_eq!(b["id"], d.id.to_string());
        assert_eq!(b["event"], "retrying");
        assert_eq!(b["pipeline"], d.message.pipeline.to_string());
        assert_eq!(b["state"], "running");
        assert_eq!(
            (b["job"].as_str(), b["error"].as_str()),
            (Some("load"), Some("boom"))
        );
        assert_eq!(b["at"], "2023-11-14T22:13:20.250Z");
        assert_eq!(b["attempt"], 3);
        let b = body(&delivery(None, None));
        assert!(b.get("job").is_none() && b.get("error").is_none(), "{b}");
    }

    #[test]
    fn a_subject_is_one_line() {
        let s = subject(&delivery(Some("a\r\nBcc: x@y"), None).message);
        assert!(!s.contains('\n') && !s.contains('\r'), "{s}");
        assert!(
            s.starts_with("pypelinin: job a  Bcc: x@y of pipeline "),
            "{s}"
        );
        assert!(s.ends_with(" retrying"), "{s}");
    }

    #[test]
    fn an_email_without_an_smtp_server_fails_at_once_saying_so() {
        let e = mail(None, "ops@example.com", &delivery(None, None)).unwrap_err();
        assert!(e.permanent);
        assert!(e.message.contains("--smtp-server"), "{}", e.message);
    }
}
