//! The wire protocol of a pypelinin cluster.
//!
//! # Sockets
//! The router binds two sockets:
//! - **API** (ZeroMQ ROUTER). Every other process connects a DEALER socket and sends
//!   one-frame messages: a [`Frame`] whose body is a [`Request`]. The router answers each
//!   request with a [`Frame`] carrying the same `id` and a [`FromRouter::Reply`], and may
//!   also send unsolicited [`FromRouter::Push`] frames (with `id` 0) to brokers and
//!   pipeliners that said hello. REQ sockets work too for plain request/reply (the router
//!   keeps their empty delimiter frame).
//! - **Broadcast** (ZeroMQ PUB): two frames, a topic ([`Event::topic`]) and a [`Frame`]
//!   whose body is an [`Event`]. Broadcasts only wake peers up: they may be lost, so no
//!   peer takes one as the truth, which always comes from a request.
//!
//! Every frame is MessagePack (rmp-serde, structs as maps so that fields can be added),
//! at most [`MAX_FRAME_BYTES`], and starts with the protocol version [`PROTOCOL_VERSION`].
//!
//! # Conversations
//! | sender | request | reply | pushes it leads to |
//! |---|---|---|---|
//! | client | [`Request::Submit`] | `Submitted` (idempotent on the client-chosen id) | — |
//! | client | [`Request::Status`] | `Status` | — |
//! | client | [`Request::Wait`] | `Statuses`, once every id is final or the timeout passed | — |
//! | client | [`Request::Results`] | `Results`, once every id is final or the timeout passed | — |
//! | client | [`Request::Outputs`] | `Outputs` | — |
//! | client | [`Request::List`] | `List` | — |
//! | client | [`Request::Cancel`] | `Status` | `Revoke` to the brokers running its jobs |
//! | broker | [`Request::BrokerHello`] | `Welcome` (the cluster configuration) | `Assign` while it has free slots |
//! | broker | [`Request::JobDone`] | `Ok` (the result is durable) | more `Assign` |
//! | broker | [`Request::Monitor`] | `Ok` | — |
//! | broker | [`Request::Drain`] | `Ok`: no more `Assign` | — |
//! | pipeliner | [`Request::PipelinerHello`] | `Ok` | `Take` with whole pipelines, then `Changed` |
//! | pipeliner | [`Request::Advance`] | `Ok` | `Changed` as jobs end |
//! | any peer | [`Request::Heartbeat`] | `Ok`, or `Error(UnknownPeer)`: say hello again | — |
//! | any peer | [`Request::Bye`] | `Ok`: its jobs and pipelines go to others | — |
//! | broker | [`Request::Logs`] | `Ok` (lines of running attempts, batched) | PUB `job.logs` |
//! | client | [`Request::GetLogs`] | `Logs`: one attempt's lines after a number | — |
//! | client | [`Request::Notifications`] | `Notifications`: the latest, with their delivery | — |
//!
//! A job is named by a [`JobRef`]: pipeline id, job index (jobs are indexed in name
//! order, see [`crate::Pipeline`]) and attempt number. The attempt number fences late
//! reports: a report for an attempt that is no longer the current one is refused with
//! `Error(Stale)` and changes nothing.
//!
//! # Files
//! This is one module, `protocol`, split into files by kind; every item is public
//! here, at `pypelinin_common::protocol::X`, whichever file holds it:
//! - this file: the bounds and timing constants, the [`Frame`] envelope, [`encode`] and
//!   [`decode`] with their [`DecodeError`], the structural pre-scan that bounds what a
//!   frame may cost to decode, and the output size check ([`check_output_size`]);
//! - `messages.rs`: the messages themselves, [`Request`], [`FromRouter`] with its
//!   [`Reply`] and [`Push`], and the broadcast [`Event`];
//! - `types.rs`: the payloads those messages carry ([`JobReport`], [`Assignment`],
//!   [`PipelineSnapshot`], [`BrokerHello`], [`ClusterMetrics`], [`Histogram`],
//!   [`ClusterConfig`]…);
//! - `logs.rs`: captured logs, [`LogChunk`], [`LogLine`], [`LogPage`], and their bounds
//!   ([`MAX_LOG_BYTES_PER_ATTEMPT`]…);
//! - `error.rs`: [`ProtocolError`], the typed refusal sent instead of a reply;
//! - `tests.rs`: unit tests of encoding and decoding.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use crate::ids::{JobRef, PipelineId};
use crate::pipeline::Data;

mod error;
mod logs;
mod messages;
mod types;

pub use error::ProtocolError;
pub use logs::{
    LogChunk, LogLine, LogPage, LogStream, LOG_BATCH_BYTES, LOG_BATCH_INTERVAL, LOG_BUFFER_BYTES,
    LOG_LINE_OVERHEAD, MAX_LOG_BYTES_PER_ATTEMPT, MAX_LOG_LINE_BYTES,
};
pub use messages::{Event, FromRouter, PoolRequest, Push, Reply, Request, ScheduleRequest};
pub use types::{
    Advance, Assignment, BrokerHello, BrokerStatus, ClusterConfig, ClusterMetrics, Histogram,
    JobChange, JobInfo, JobReport, MonitoringReport, PipelineResult, PipelineSnapshot,
    PipelineSummary, PoolStatus, SlotJob,
};

/// Version carried by every frame; a peer with another version gets `Error(Version)`.
pub const PROTOCOL_VERSION: u16 = 1;
/// Largest frame any peer accepts, in bytes. Larger frames are refused unread.
pub const MAX_FRAME_BYTES: usize = 16 << 20;
/// Largest message the router reads at all: a larger one closes the sender's
/// connection unread (ZeroMQ's `maxmsgsize`), bounding the memory a peer can make the
/// router spend. Frames between [`MAX_FRAME_BYTES`] and this get `Error(TooLarge)`.
pub const MAX_RECEIVE_BYTES: usize = 4 * MAX_FRAME_BYTES;
/// Most MessagePack values (maps, arrays, strings, numbers…) one frame may hold. A
/// decoded value takes far more memory than its encoded byte, so without this bound a
/// 16 MiB frame of tiny values could cost the decoder half a gigabyte.
pub const MAX_ELEMENTS: usize = 2_000_000;
/// Deepest nesting of maps and arrays a decoder follows (bounds stack use on garbage).
pub const MAX_DEPTH: usize = 128;
/// Largest job output the router keeps, encoded. Larger outputs belong in the user's store.
pub const MAX_OUTPUT_BYTES: usize = 1 << 20;
/// The one key of the output a broker reports for a job it did not run because its
/// target existed (the value: the target, placeholders filled). The router records the
/// job as `skipped_done` with an empty output. A report's output travels through slot
/// processes and the broker's ledger as any other, so this needs no second path.
pub const TARGET_DONE_KEY: &str = "pypelinin.target_done";
pub use crate::sensor::NOT_YET_KEY;

/// An output refused for its size: larger than [`MAX_OUTPUT_BYTES`] once encoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("output of {size} bytes exceeds the router's limit of {MAX_OUTPUT_BYTES}; keep large outputs in your own Store and return a reference")]
pub struct OutputTooLarge {
    /// Its encoded size in bytes (`usize::MAX` when it could not be encoded at all).
    pub size: usize,
}

/// The one check of an output's size, made by the broker before it saves the output
/// and by the router before it keeps it: both must refuse the same outputs. Counts the
/// encoded bytes without allocating them.
pub fn check_output_size(output: &Data) -> Result<(), OutputTooLarge> {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut n = Count(0);
    let size = match rmp_serde::encode::write(&mut n, output) {
        Ok(()) => n.0,
        Err(_) => usize::MAX,
    };
    if size > MAX_OUTPUT_BYTES {
        Err(OutputTooLarge { size })
    } else {
        Ok(())
    }
}
/// How often brokers and pipeliners say they are alive.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);
/// Heartbeats a peer may miss before the router gives its jobs and pipelines to others.
pub const PEER_LIVENESS: u32 = 6;
/// How long a request waits for its reply before it is sent again on a fresh socket.
pub const REQUEST_TIMEOUT: Duration = Duration::from_millis(2_500);
/// How many times a request is sent before the peer is declared unreachable.
pub const REQUEST_ATTEMPTS: u32 = 4;
/// Send and receive high-water marks: far above any burst we produce, so that ZeroMQ
/// never drops silently; a send that would block is treated as a dead peer.
pub const SOCKET_HWM: i32 = 1_000_000;
/// Longest a `Wait` request may be held by the router.
pub const MAX_WAIT_MS: u64 = 3_600_000;

/// Envelope of every frame: version, request id (0 for pushes and events), body.
#[derive(Debug, Serialize, Deserialize)]
pub struct Frame<T> {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub v: u16,
    /// Chosen by the requester; echoed in the reply.
    pub id: u64,
    /// The message.
    pub body: T,
}

#[derive(Serialize)]
struct FrameRef<'a, T> {
    v: u16,
    id: u64,
    body: &'a T,
}

#[derive(Deserialize)]
struct Header {
    v: u16,
    id: u64,
}
/// Why a frame could not be decoded; carries the request id when it was readable, so
/// that the error can be sent back to the right request.
#[derive(Debug)]
pub struct DecodeError {
    /// The request id, when the envelope was readable.
    pub id: Option<u64>,
    /// What is wrong.
    pub error: ProtocolError,
}

/// Encodes a frame.
pub fn encode<T: Serialize>(id: u64, body: &T) -> Vec<u8> {
    let frame = FrameRef {
        v: PROTOCOL_VERSION,
        id,
        body,
    };
    // Our message types are plain data: encoding into a Vec cannot fail. Sized ahead for
    // the common small message, so that encoding seldom reallocates.
    let mut buf = Vec::with_capacity(256);
    rmp_serde::encode::write_named(&mut buf, &frame).expect("protocol messages always encode");
    buf
}

/// Decodes a frame, bounded in size and nesting.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<(u64, T), DecodeError> {
    if bytes.len() > MAX_FRAME_BYTES {
        return Err(DecodeError {
            id: None,
            error: ProtocolError::TooLarge {
                bytes: bytes.len(),
                max: MAX_FRAME_BYTES,
            },
        });
    }
    if let Err(why) = scan(bytes) {
        let id = from_slice::<Header>(bytes).ok().map(|h| h.id);
        return Err(DecodeError {
            id,
            error: ProtocolError::Malformed(why),
        });
    }
    // The frame is parsed once when it is good; the header alone (whose parse walks the
    // body too, to skip it) only to say what is wrong with a bad one.
    let version = |got: u16, id: u64| DecodeError {
        id: Some(id),
        error: ProtocolError::Version {
            got,
            want: PROTOCOL_VERSION,
        },
    };
    match from_slice::<Frame<T>>(bytes) {
        Ok(f) if f.v == PROTOCOL_VERSION => Ok((f.id, f.body)),
        Ok(f) => Err(version(f.v, f.id)),
        Err(e) => {
            let header: Option<Header> = from_slice(bytes).ok();
            if let Some(h) = header.as_ref().filter(|h| h.v != PROTOCOL_VERSION) {
                return Err(version(h.v, h.id));
            }
            let msg = e.to_string();
            let error = if header.is_some() && msg.contains("unknown variant") {
                ProtocolError::UnknownCommand(msg)
            } else {
                ProtocolError::Malformed(msg)
            };
            Err(DecodeError {
                id: header.map(|h| h.id),
                error,
            })
        }
    }
}

/// Walks the MessagePack structure of `bytes` without building anything: refuses more
/// than [`MAX_ELEMENTS`] values, containers that declare more elements than there are
/// bytes left, and bytes after the one top-level value. Truncation is left to the
/// decoder, which reports it.
fn scan(bytes: &[u8]) -> Result<(), String> {
    let mut pos = 0usize;
    let mut pending: u64 = 1;
    let mut elements = 0usize;
    let be = |at: usize, n: usize| -> Option<u64> {
        let b = bytes.get(at..at + n)?;
        Some(b.iter().fold(0u64, |acc, x| (acc << 8) | u64::from(*x)))
    };
    while pending > 0 {
        let Some(&m) = bytes.get(pos) else {
            return Ok(()); // truncated: the decoder says so
        };
        pos += 1;
        pending -= 1;
        elements += 1;
        if elements > MAX_ELEMENTS {
            return Err(format!("more than {MAX_ELEMENTS} values in one frame"));
        }
        // (bytes to skip, child values announced)
        let (skip, children): (u64, u64) = match m {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0),
            0x80..=0x8f => (0, 2 * u64::from(m & 0x0f)),
            0x90..=0x9f => (0, u64::from(m & 0x0f)),
            0xa0..=0xbf => (u64::from(m & 0x1f), 0),
            0xc4 | 0xd9 => (be(pos, 1).unwrap_or(0) + 1, 0),
            0xc5 | 0xda => (be(pos, 2).unwrap_or(0) + 2, 0),
            0xc6 | 0xdb => (be(pos, 4).unwrap_or(0) + 4, 0),
            0xc7 => (be(pos, 1).unwrap_or(0) + 2, 0),
            0xc8 => (be(pos, 2).unwrap_or(0) + 3, 0),
            0xc9 => (be(pos, 4).unwrap_or(0) + 5, 0),
            0xca | 0xce | 0xd2 => (4, 0),
            0xcb | 0xcf | 0xd3 => (8, 0),
            0xcc | 0xd0 => (1, 0),
            0xcd | 0xd1 => (2, 0),
            0xd4 => (2, 0),
            0xd5 => (3, 0),
            0xd6 => (5, 0),
            0xd7 => (9, 0),
            0xd8 => (17, 0),
            0xdc => (2, be(pos, 2).unwrap_or(0)),
            0xdd => (4, be(pos, 4).unwrap_or(0)),
            0xde => (2, 2 * be(pos, 2).unwrap_or(0)),
            0xdf => (4, 2 * be(pos, 4).unwrap_or(0)),
            0xc1 => return Err(format!("byte 0xc1 at {} is not MessagePack", pos - 1)),
        };
        pos = pos.saturating_add(skip as usize);
        // Every value takes at least a byte: more announced than bytes left is a lie.
        if pending + children > bytes.len().saturating_sub(pos) as u64 {
            return Err(format!(
                "a container at byte {} announces {children} values in {} bytes",
                pos - skip as usize - 1,
                bytes.len().saturating_sub(pos)
            ));
        }
        pending += children;
    }
    if pos < bytes.len() {
        return Err(format!(
            "{} bytes after the end of the frame",
            bytes.len() - pos
        ));
    }
    Ok(())
}

fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, rmp_serde::decode::Error> {
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
    de.set_max_depth(MAX_DEPTH);
    T::deserialize(&mut de)
}
#[cfg(test)]
mod tests;
