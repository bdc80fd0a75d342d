//! A slot child process's side: what it serves ([`child_main`]) and the frames the
//! broker and its slot children exchange over the child's stdin and stdout (a 4-byte
//! length, then MessagePack). The broker's side is [`crate::slot`].

use std::collections::HashMap;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::sync::{Arc, Mutex, PoisonError};

use pypelinin_common::protocol::{
    ClusterConfig, JobInfo, JobRef, LogChunk, LOG_BATCH_BYTES, LOG_BATCH_INTERVAL, MAX_FRAME_BYTES,
};
use pypelinin_common::Data;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::api::{StoreFactory, Worker};
use crate::job::run_job;
use crate::joblog::{with_log, JobLog, LogSink};

/// What the broker tells a slot child.
#[derive(Deserialize)]
pub(crate) enum ToSlot {
    Config(ClusterConfig),
    Run(Box<JobInfo>),
}

/// [`ToSlot`] as sent: the same encoding, without copying the job.
#[derive(Serialize)]
pub(crate) enum ToSlotRef<'a> {
    Config(&'a ClusterConfig),
    Run(&'a JobInfo),
}

/// What a slot child answers.
#[derive(Serialize, Deserialize)]
pub(crate) enum FromSlot {
    Ready(Result<(), String>),
    Done(Result<Data, String>),
    /// Lines the running job logged (its `tracing` events, its commands' output),
    /// sent every [`LOG_BATCH_INTERVAL`] and before its `Done`. The child does not know
    /// the job's index: the broker files them under the job it waits for.
    Log(Vec<LogChunk>),
}

/// Where a slot child writes its frames: the job's thread and the log flusher share it.
type Frames = Arc<Mutex<BufWriter<std::fs::File>>>;

/// Writes the waiting log lines as `Log` frames; false if the broker is gone.
fn send_logs(sink: &LogSink, out: &Frames) -> bool {
    loop {
        let batch = sink.take(LOG_BATCH_BYTES);
        if batch.is_empty() {
            return true;
        }
        let mut w = out.lock().unwrap_or_else(PoisonError::into_inner);
        if write_frame(&mut *w, &FromSlot::Log(batch)).is_err() {
            return false;
        }
    }
}

pub(crate) fn frame<T: Serialize>(v: &T) -> io::Result<Vec<u8>> {
    let body = rmp_serde::to_vec_named(v).map_err(io::Error::other)?;
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

pub(crate) fn write_frame<T: Serialize>(w: &mut impl Write, v: &T) -> io::Result<()> {
    w.write_all(&frame(v)?)?;
    w.flush()
}

pub(crate) fn read_frame<T: DeserializeOwned>(r: &mut impl Read) -> io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > 4 * MAX_FRAME_BYTES {
        return Err(io::Error::other(format!("slot frame of {len} bytes")));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf)?;
    rmp_serde::from_slice(&buf)
        .map(Some)
        .map_err(io::Error::other)
}

/// Serves one slot in a child process; never returns.
pub fn child_main(workers: &HashMap<String, Arc<dyn Worker>>, factory: &StoreFactory) -> ! {
    // Frames go to the original stdout; anything a worker prints goes to stderr.
    // SAFETY: plain descriptor calls on descriptors this process owns.
    let frames_fd = unsafe { libc::dup(1) };
    unsafe { libc::dup2(2, 1) };
    if frames_fd < 0 {
        std::process::exit(2);
    }
    // SAFETY: `frames_fd` was just returned by dup and is owned by nothing else.
    let file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(frames_fd) };
    let out: Frames = Arc::new(Mutex::new(BufWriter::new(file)));
    let sink = Arc::new(LogSink::default());
    {
        let (sink, out) = (sink.clone(), out.clone());
        let _ = std::thread::Builder::new()
            .name("slot-logs".into())
            .spawn(move || loop {
                std::thread::sleep(LOG_BATCH_INTERVAL);
                if !send_logs(&sink, &out) {
                    return;
                }
            });
    }
    let write = |msg: &FromSlot| {
        let mut w = out.lock().unwrap_or_else(PoisonError::into_inner);
        write_frame(&mut *w, msg)
    };
    let mut input = BufReader::new(io::stdin().lock());
    let config = match read_frame::<ToSlot>(&mut input) {
        Ok(Some(ToSlot::Config(c))) => c,
        _ => std::process::exit(2),
    };
    let store = match factory(&config) {
        Ok(s) => s,
        Err(e) => {
            let _ = write(&FromSlot::Ready(Err(e.to_string())));
            std::process::exit(2);
        }
    };
    if write(&FromSlot::Ready(Ok(()))).is_err() {
        std::process::exit(2);
    }
    loop {
        match read_frame::<ToSlot>(&mut input) {
            Ok(Some(ToSlot::Run(info))) => {
                // Numbered per pipeline and attempt here; the broker knows the job.
                let job = JobRef {
                    pipeline: info.pipeline,
                    job: 0,
                    attempt: info.attempt,
                };
                let log = JobLog {
                    job,
                    sink: sink.clone(),
                };
                let result = with_log(Some(log), || run_job(&*store, workers, &info))
                    .map_err(|e| e.to_string());
                // The job's last lines go before its end.
                if !send_logs(&sink, &out) || write(&FromSlot::Done(result)).is_err() {
                    std::process::exit(2);
                }
                sink.ended(job);
            }
            // The broker closed our stdin (it stops, or it died): leave.
            Ok(None) => std::process::exit(0),
            _ => std::process::exit(2),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_is_framed_for_the_child_as_the_child_reads_it() {
        let info = JobInfo {
            pipeline: Default::default(),
            name: "j".into(),
            worker: "W".into(),
            attempt: 2,
            data: Data::new(),
            parents: Default::default(),
            timeout_ms: Some(5),
            target: None,
            wait_for: None,
        };
        let bytes = frame(&ToSlotRef::Run(&info)).unwrap();
        match read_frame::<ToSlot>(&mut &bytes[..]).unwrap() {
            Some(ToSlot::Run(got)) => {
                assert_eq!((got.name.as_str(), got.attempt), ("j", 2));
                assert_eq!(got.timeout_ms, Some(5));
            }
            _ => panic!("not read back as the job"),
        }
    }
}
