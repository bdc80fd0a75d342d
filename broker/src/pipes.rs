//! Draining a worker process's pipes, shared by command and persistent workers: the
//! bounded [`Tail`] of stderr quoted in errors, and [`drain`], which reads a pipe to
//! its end into that tail and into the job's captured log (module `joblog`).

use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Mutex, PoisonError};

use crate::command::STDERR_TAIL_BYTES;
use crate::joblog::LineSplitter;

/// The last bytes of a stream: at most `2 * STDERR_TAIL_BYTES` held while reading.
/// Shared with the persistent workers, whose stderr is drained the same way.
#[derive(Default)]
pub(crate) struct Tail {
    bytes: Vec<u8>,
    cut: bool,
}

impl Tail {
    pub(crate) fn push(&mut self, chunk: &[u8]) {
        self.bytes.extend_from_slice(chunk);
        if self.bytes.len() > 2 * STDERR_TAIL_BYTES {
            let extra = self.bytes.len() - STDERR_TAIL_BYTES;
            self.bytes.drain(..extra);
            self.cut = true;
        }
    }

    /// The kept bytes as text: at most `STDERR_TAIL_BYTES`, from a line start if cut.
    pub(crate) fn text(&self) -> String {
        let start = self.bytes.len().saturating_sub(STDERR_TAIL_BYTES);
        let mut kept = &self.bytes[start..];
        if self.cut || start > 0 {
            if let Some(nl) = kept.iter().position(|&b| b == b'\n') {
                kept = &kept[nl + 1..];
            }
        }
        String::from_utf8_lossy(kept).trim_end().to_string()
    }
}

/// Reads `r` to its end, keeping its tail in `tail` and its lines in `lines` if given.
pub(crate) fn drain(
    mut r: impl Read,
    tail: Option<&Mutex<Tail>>,
    mut lines: Option<&mut LineSplitter>,
) {
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            read => {
                if !handle(read, &buf, tail, lines.as_deref_mut()) {
                    return;
                }
            }
        }
    }
}

/// Like [`drain`], for a pipe whose bytes must be known handled at a given moment (a
/// persistent worker's stderr, whose lines belong to the job that just answered).
/// The thread waits for bytes without `gate` and reads and handles them while
/// holding it, so whoever holds `gate` and sees the pipe empty ([`pipe_empty`]) knows
/// that no byte is read and not yet in `tail` and `lines`.
pub(crate) fn drain_gated(
    mut r: impl Read + AsRawFd,
    gate: &Mutex<()>,
    tail: Option<&Mutex<Tail>>,
    mut lines: Option<&mut LineSplitter>,
) {
    let mut buf = [0u8; 8192];
    let fd = r.as_raw_fd();
    loop {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; the descriptor is `r`'s, open while we own it.
        if unsafe { libc::poll(&mut p, 1, -1) } < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            handle(Ok(0), &buf, tail, lines.as_deref_mut());
            return;
        }
        let _held = gate.lock().unwrap_or_else(PoisonError::into_inner);
        let read = loop {
            match r.read(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                read => break read,
            }
        };
        if !handle(read, &buf, tail, lines.as_deref_mut()) {
            return;
        }
    }
}

/// Whether no byte waits in the pipe `fd` (or it cannot be asked).
pub(crate) fn pipe_empty(fd: RawFd) -> bool {
    let mut waiting: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer, which is valid; a closed
    // or reused descriptor only gives a wrong answer, which the caller bounds in time.
    let r = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut waiting) };
    r != 0 || waiting <= 0
}

/// Hands one read's bytes to `tail` and `lines`; false at the end of the pipe.
fn handle(
    read: std::io::Result<usize>,
    buf: &[u8],
    tail: Option<&Mutex<Tail>>,
    lines: Option<&mut LineSplitter>,
) -> bool {
    match read {
        Ok(n) if n > 0 => {
            if let Some(l) = lines {
                l.feed(&buf[..n]);
            }
            if let Some(t) = tail {
                t.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(&buf[..n]);
            }
            true
        }
        _ => {
            if let Some(l) = lines {
                l.finish();
            }
            false
        }
    }
}
