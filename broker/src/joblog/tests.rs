//! Tests of the broker's log capture: numbering, batching, the bounds (the tail kept,
//! the loss counted), line cutting, and `tracing` events reaching their job's log.

use super::*;
use pypelinin_common::protocol::{PipelineId, LOG_BATCH_BYTES, LOG_LINE_OVERHEAD};

fn job(n: u32) -> JobRef {
    JobRef {
        pipeline: PipelineId(uuid::Uuid::nil()),
        job: n,
        attempt: 1,
    }
}

fn texts(chunks: &[LogChunk]) -> Vec<Vec<u8>> {
    chunks.iter().map(|c| c.line.bytes.clone()).collect()
}

#[test]
fn lines_are_numbered_per_attempt_and_taken_in_batches() {
    let sink = LogSink::default();
    for k in 0..100 {
        sink.push(job(1), LogStream::Stdout, format!("line {k}").as_bytes());
    }
    sink.push(job(2), LogStream::Stderr, b"other");
    let per = "line 10".len() + LOG_LINE_OVERHEAD;
    let first = sink.take(10 * per);
    assert!(first.iter().map(|c| c.line.cost()).sum::<usize>() <= 10 * per);
    assert!(!first.is_empty());
    let mut all = first;
    while sink.waiting() > 0 {
        let more = sink.take(LOG_BATCH_BYTES);
        assert!(!more.is_empty());
        all.extend(more);
    }
    let ones: Vec<&LogChunk> = all.iter().filter(|c| c.job == job(1)).collect();
    assert_eq!(ones.len(), 100);
    assert!(ones
        .iter()
        .enumerate()
        .all(|(k, c)| c.line.seq == k as u64 + 1));
    assert_eq!(ones[99].line.bytes, b"line 99");
    // Numbering goes on after a take.
    sink.push(job(1), LogStream::Stdout, b"later");
    assert_eq!(sink.take(LOG_BATCH_BYTES)[0].line.seq, 101);
}

#[test]
fn a_chatty_attempt_keeps_its_tail_within_the_bound_and_counts_the_loss() {
    let sink = LogSink::default();
    let line = vec![b'x'; 1000];
    let n = 3 * MAX_LOG_BYTES_PER_ATTEMPT / 1000;
    for k in 0..n {
        let mut l = line.clone();
        l.extend_from_slice(k.to_string().as_bytes());
        sink.push(job(1), LogStream::Stdout, &l);
    }
    assert!(sink.waiting() <= MAX_LOG_BYTES_PER_ATTEMPT);
    let mut all = Vec::new();
    while sink.waiting() > 0 {
        all.extend(sink.take(LOG_BATCH_BYTES));
    }
    let last = all.last().unwrap();
    assert!(last.line.bytes.ends_with((n - 1).to_string().as_bytes()));
    assert_eq!(last.line.seq, n as u64);
    let kept: u64 = all.iter().map(|c| c.line.bytes.len() as u64).sum();
    let sent: u64 = (0..n).map(|k| 1000 + k.to_string().len() as u64).sum();
    assert_eq!(all[0].line.dropped, sent - kept, "the loss is counted once");
    assert!(all[1..].iter().all(|c| c.line.dropped == 0));
}

#[test]
fn the_sink_holds_at_most_its_bound_across_attempts() {
    let sink = LogSink::default();
    let line = vec![0xffu8; 4000];
    for j in 0..8 {
        for _ in 0..(MAX_LOG_BYTES_PER_ATTEMPT / 4000) {
            sink.push(job(j), LogStream::Stderr, &line);
        }
    }
    assert!(sink.waiting() <= LOG_BUFFER_BYTES, "{}", sink.waiting());
}

#[test]
fn an_attempt_whose_only_line_was_dropped_says_so_with_its_next_line() {
    let sink = LogSink::default();
    let line = vec![b'z'; MAX_LOG_LINE_BYTES];
    let n = LOG_BUFFER_BYTES / MAX_LOG_LINE_BYTES + 10;
    for j in 0..n as u32 {
        sink.push(job(j), LogStream::Stdout, &line);
    }
    assert!(sink.waiting() <= LOG_BUFFER_BYTES);
    let kept: Vec<JobRef> = sink.take(usize::MAX).iter().map(|c| c.job).collect();
    let gone = (0..n as u32)
        .map(job)
        .find(|j| !kept.contains(j))
        .expect("some attempt lost its line");
    sink.push(gone, LogStream::Stdout, b"next");
    let next = sink.take(usize::MAX);
    assert_eq!(next[0].line.dropped, MAX_LOG_LINE_BYTES as u64);
    assert_eq!(next[0].line.seq, 2);
}

fn collect(target_sink: &Arc<LogSink>, feed: &[&[u8]]) -> Vec<Vec<u8>> {
    let log = JobLog {
        job: job(1),
        sink: target_sink.clone(),
    };
    let mut s = LineSplitter::new(LogStream::Stdout, LogTarget::Job(log));
    for f in feed {
        s.feed(f);
    }
    s.finish();
    let mut out = Vec::new();
    while target_sink.waiting() > 0 {
        out.extend(texts(&target_sink.take(usize::MAX)));
    }
    out
}

#[test]
fn pipes_are_cut_into_lines_and_long_or_binary_runs_into_pieces() {
    let sink = Arc::new(LogSink::default());
    let got = collect(&sink, &[b"one\ntw", b"o\n\n\xff\xfe\x00bin", b"ary"]);
    assert_eq!(got, [&b"one"[..], b"two", b"", b"\xff\xfe\x00binary"]);
    let long = vec![b'z'; 2 * MAX_LOG_LINE_BYTES + 5];
    let got = collect(&sink, &[&long, b"\nend\n"]);
    let sizes: Vec<usize> = got.iter().map(Vec::len).collect();
    assert_eq!(sizes, [MAX_LOG_LINE_BYTES, MAX_LOG_LINE_BYTES, 5, 3]);
}

#[test]
fn tracing_events_on_a_job_thread_go_to_its_log_and_others_do_not() {
    use tracing_subscriber::layer::SubscriberExt;
    let sink = Arc::new(LogSink::default());
    let log = JobLog {
        job: job(4),
        sink: sink.clone(),
    };
    let subscriber = tracing_subscriber::registry().with(JobLogLayer);
    tracing::subscriber::with_default(subscriber, || {
        tracing::info!("outside any job");
        with_log(Some(log), || {
            tracing::warn!(rows = 3, "parsed the input");
        });
        tracing::info!("after the job");
    });
    let got = sink.take(usize::MAX);
    assert_eq!(got.len(), 1, "{:?}", texts(&got));
    assert_eq!(got[0].job, job(4));
    assert_eq!(got[0].line.stream, LogStream::Log);
    let text = String::from_utf8(got[0].line.bytes.clone()).unwrap();
    assert!(
        text.starts_with("WARN ") && text.ends_with("parsed the input rows=3"),
        "{text}"
    );
}
