//! Captured logs: what a broker sends the router about an attempt's output
//! ([`LogChunk`]), what a client reads back ([`LogPage`]), and the bounds that keep a
//! chatty job from costing memory or disk anywhere ([`MAX_LOG_BYTES_PER_ATTEMPT`] and
//! the others below). Part of the one `protocol` module.
//!
//! Bytes stay bytes: a worker may print binary or invalid UTF-8, so lines travel as
//! MessagePack `bin` and only readers (the CLI, the dashboard) decode them, lossily.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::JobRef;

/// The most log an attempt keeps, in bytes (each line costing its length plus
/// [`LOG_LINE_OVERHEAD`]): older lines are dropped first, so the end of a long log,
/// where its error usually is, survives. Bounds the router's disk per attempt and
/// the size of one [`LogPage`], which always fits a frame.
pub const MAX_LOG_BYTES_PER_ATTEMPT: usize = 1 << 20;
/// What one kept line costs beyond its bytes (its sequence number, time, stream and
/// key), counted against [`MAX_LOG_BYTES_PER_ATTEMPT`] so that a million empty lines
/// cannot outgrow the bound.
pub const LOG_LINE_OVERHEAD: usize = 32;
/// The longest line a broker sends as one: a longer line (or binary output with no
/// newline) is cut into pieces of this size, each with its own time.
pub const MAX_LOG_LINE_BYTES: usize = 16 << 10;
/// A broker sends its buffered log lines to the router at least this often…
pub const LOG_BATCH_INTERVAL: Duration = Duration::from_millis(200);
/// …or once this many bytes wait, at most this many per request, so that a chatty
/// job costs the router a few requests per second, not one per line.
pub const LOG_BATCH_BYTES: usize = 64 << 10;
/// The most log a broker holds waiting to be sent, all attempts together: past it the
/// oldest lines are dropped and the next line sent says how many bytes were lost.
/// Each attempt holds at most [`MAX_LOG_BYTES_PER_ATTEMPT`] of it.
pub const LOG_BUFFER_BYTES: usize = 4 << 20;

/// Where a log line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogStream {
    /// The worker's standard output (command workers).
    Stdout,
    /// The worker's standard error (command and persistent workers).
    Stderr,
    /// A `tracing` event the worker emitted while it ran (Rust workers).
    Log,
}

impl LogStream {
    /// Short lowercase name, as the CLI and the dashboard print it.
    pub fn name(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
            LogStream::Log => "log",
        }
    }
}

/// One line (or piece of a long line) of an attempt's output, as a broker sends it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogChunk {
    /// The attempt that printed it.
    pub job: JobRef,
    /// The line itself.
    pub line: LogLine,
}

/// One kept line of an attempt's log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Its number in the attempt's log, from 1, increasing (gaps where lines were
    /// dropped). The broker numbers lines, so a resent batch is recognised; a follower
    /// asks for lines `after` the last number it saw.
    pub seq: u64,
    /// When the broker read it, ms since the Unix epoch.
    pub at_ms: u64,
    /// Which stream.
    pub stream: LogStream,
    /// The bytes, without the newline; any bytes at all.
    #[serde(with = "bytes")]
    pub bytes: Vec<u8>,
    /// Bytes the broker dropped just before this line (its buffer was full).
    #[serde(default)]
    pub dropped: u64,
}

impl LogLine {
    /// What it costs against [`MAX_LOG_BYTES_PER_ATTEMPT`].
    pub fn cost(&self) -> usize {
        self.bytes.len() + LOG_LINE_OVERHEAD
    }
}

/// An attempt's log, or what follows a line a reader already has.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPage {
    /// The attempt these lines belong to (0: the job has not started).
    pub attempt: u32,
    /// How many attempts the job has had so far.
    pub attempts: u32,
    /// The lines numbered after the `after` asked for, oldest first.
    pub lines: Vec<LogLine>,
    /// Bytes dropped before the first line kept: by the router, to keep the log
    /// within [`MAX_LOG_BYTES_PER_ATTEMPT`], and by the broker before lines the router
    /// dropped since (what a broker dropped before a kept line, that line says).
    pub dropped_bytes: u64,
    /// The attempt has ended: no line will be added to it.
    pub finished: bool,
    /// The job is final: no attempt will follow.
    pub job_final: bool,
}

/// `Vec<u8>` as MessagePack `bin` (one value) rather than an array of numbers (one
/// value per byte, which the frame's element bound would refuse for long lines).
mod bytes {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Vec<u8>, E> {
                Ok(v.as_bytes().to_vec())
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_byte_buf(V)
    }
}
