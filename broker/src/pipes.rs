//! Draining a worker process's pipes, shared by command and persistent workers: the
//! bounded [`Tail`] of stderr quoted in errors, and [`drain`], which reads a pipe to
//! its end into that tail and into the job's captured log (module `joblog`).

use std::io::Read;
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
            Ok(0) => {
                if let Some(l) = lines.as_mut() {
                    l.finish();
                }
                return;
            }
            Ok(n) => {
                if let Some(l) = lines.as_mut() {
                    l.feed(&buf[..n]);
                }
                if let Some(t) = tail {
                    t.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(&buf[..n]);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => {
                if let Some(l) = lines.as_mut() {
                    l.finish();
                }
                return;
            }
        }
    }
}
