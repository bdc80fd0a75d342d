//! [`JobLogLayer`]: the `tracing` events a Rust worker emits while it runs, as lines
//! of its job's log. Part of the `joblog` module.

use std::fmt::Write as _;

use pypelinin_common::protocol::LogStream;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

/// A `tracing` layer that copies each event emitted on a slot thread while a job runs
/// there into that job's captured log (stream `log`), as `LEVEL target: message
/// key=value…`. Events elsewhere (the broker's own threads) pass by untouched.
/// [`crate::init_tracing`] installs it; a broker binary that sets up `tracing` itself
/// adds it to its subscriber to capture its workers' events.
#[derive(Clone, Copy, Debug, Default)]
pub struct JobLogLayer;

impl<S: Subscriber> Layer<S> for JobLogLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let Some(log) = super::current() else {
            return;
        };
        let meta = event.metadata();
        let mut text = format!("{} {}:", meta.level(), meta.target());
        event.record(&mut Fields(&mut text));
        log.line(LogStream::Log, text.as_bytes());
    }
}

/// Writes an event's fields: the message first as is, the others as `key=value`.
struct Fields<'a>(&'a mut String);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            let _ = write!(self.0, " {value}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, " {value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}
