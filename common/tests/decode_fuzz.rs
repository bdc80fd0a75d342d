//! Deterministic mutation fuzzing of the wire decoder, with std only.
//!
//! Every peer decodes frames it did not write: the router decodes [`Request`]s, brokers,
//! pipeliners and clients decode [`FromRouter`] frames, subscribers decode [`Event`]s.
//! These tests take valid frames of every message kind, mangle them (bit flips,
//! interesting bytes, huge declared lengths, truncation, splicing, duplicated ranges) and
//! check that [`decode`] never panics, refuses with a decoding [`ProtocolError`], is fast
//! and does not allocate much for any input, and that what it accepts encodes back to the
//! same message.
//!
//! Knobs (environment): `DECODE_FUZZ_ITERS` (default [`DEFAULT_ITERS`]),
//! `DECODE_FUZZ_SEED` (default [`DEFAULT_SEED`]). `PYPELININ_FUZZ_CORPUS=<dir>` makes
//! `write_seed_corpus` write the valid frames into `<dir>` (the cargo-fuzz seed corpus,
//! see `.ci/fuzz`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt::{Debug, Write as _};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use pypelinin_common::protocol::{
    decode, encode, Advance, Assignment, BrokerHello, ClusterConfig, DecodeError, Event,
    FromRouter, JobChange, JobInfo, JobReport, MonitoringReport, PipelineSnapshot, PipelineSummary,
    PoolRequest, PoolStatus, ProtocolError, Push, Reply, Request, ScheduleRequest, SlotJob,
    MAX_DEPTH, MAX_FRAME_BYTES, MAX_WAIT_MS, PROTOCOL_VERSION,
};
use pypelinin_common::protocol::{BrokerStatus, ClusterMetrics, Histogram, PipelineResult};
use pypelinin_common::protocol::{LogChunk, LogLine, LogPage, LogStream};
use pypelinin_common::schedule::{
    BackfillSpec, BackfillState, BackfillStatus, OverrunPolicy, Reprocess, RunKind, RunOrigin,
    ScheduleSpec, ScheduleStatus, TickRecord,
};
use pypelinin_common::status::Attempt;
use pypelinin_common::{
    Data, JobRef, JobSpec, JobState, JobStatus, PipelineId, PipelineSpec, PipelineState,
    PipelineStatus,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use uuid::Uuid;

/// Mutated inputs per run. Each is decoded as all three message types (and what decodes
/// is re-encoded and decoded again); about a second in a debug build.
const DEFAULT_ITERS: u64 = 20_000;
/// Seed of the mutation PRNG: a fixed default so that failures reproduce.
const DEFAULT_SEED: u64 = 0x5eed_f00d_cafe_d00d;
/// No single decode may take longer than this (checked again on a slow hit, best of 3).
const SLOW_DECODE: Duration = Duration::from_millis(50);
/// No single decode of a small input may have more than this allocated at once.
const ALLOC_LIMIT: usize = 16 << 20;
/// Mutated inputs are cut to this size.
const MAX_INPUT: usize = 64 << 10;

// ---------------------------------------------------------------------------------------
// Allocation accounting: per thread, so that tests running in parallel do not mix.

struct CountingAlloc;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn note_alloc(delta: isize) {
    // `try_with`: the thread's locals may already be gone while it exits.
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| {
            if now > peak.get() {
                peak.set(now);
            }
        });
    });
}

// SAFETY: every call is forwarded to the system allocator unchanged; we only count.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            note_alloc(layout.size() as isize);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            note_alloc(layout.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        note_alloc(-(layout.size() as isize));
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            note_alloc(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Runs `f` and returns its result with the most bytes this thread had allocated at
/// once during the call, above what it held before.
fn measure_alloc<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let r = f();
    let peak = PEAK.with(Cell::get);
    (r, (peak - base).max(0) as usize)
}

// ---------------------------------------------------------------------------------------
// A tiny PRNG (xorshift64*), so that every run mutates the same way.

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform-ish in `0..n` (0 when `n` is 0).
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => {
            let v = v.trim();
            let parsed = match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => v.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
        }
        Err(_) => default,
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

// ---------------------------------------------------------------------------------------
// The corpus: valid frames of every message kind, with realistic contents.

fn pid(n: u128) -> PipelineId {
    PipelineId(Uuid::from_u128(
        0x0123_4567_89ab_4def_8000_0000_0000_0000 | n,
    ))
}

fn data(v: Value) -> Data {
    match v {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

fn schedule_spec() -> ScheduleSpec {
    ScheduleSpec {
        name: "nightly".into(),
        cron: "0 30 2 * * *".into(),
        timezone: Some("Europe/Paris".into()),
        pipeline: spec(),
        start_ms: Some(1_700_000_000_000),
        end_ms: None,
        catchup: true,
        overrun: OverrunPolicy::DelayUntilSuccess,
        max_running: 2,
    }
}

fn backfill_spec() -> BackfillSpec {
    BackfillSpec {
        schedule: "nightly".into(),
        from_ms: 1_700_000_000_000,
        to_ms: 1_700_086_400_000,
        reprocess: Reprocess::Failed,
        max_active: 4,
        backwards: true,
        dry_run: false,
        count_against_schedule: true,
        respect_targets: true,
    }
}

fn spec() -> PipelineSpec {
    let mut spec = PipelineSpec::default()
        .job("read", "Reader", &[])
        .job("words", "WordCount", &["read"])
        .job("links", "Links", &["read"])
        .job("report", "Report", &["words", "links"])
        .with_data("document", json!("a.txt"))
        .with_data(
            "options",
            json!({"lang": "pt-BR", "depth": 3, "ratio": 0.25, "tags": ["x", "ý", null, true, -7]}),
        );
    spec.retries = Some(2);
    spec.retry_delay_ms = Some(250);
    spec.timeout_ms = Some(60_000);
    spec.jobs.insert(
        "archive".into(),
        JobSpec {
            worker: "Archiver".into(),
            after: vec!["report".into()],
            data: data(json!({"top": 10, "big": u64::MAX, "neg": i64::MIN, "f": 1e300})),
            retries: Some(0),
            retry_delay_ms: Some(10),
            timeout_ms: Some(5_000),
            target: Some("/archive/{document}.tar".into()),
            wait_for: Some(pypelinin_common::sensor::WaitFor {
                file: Some("/in/{document}".into()),
                poke_interval_ms: Some(250),
                timeout_ms: Some(60_000),
                ..Default::default()
            }),
            priority_weight: Some(7),
            weight_rule: pypelinin_common::WeightRule::Upstream,
            pool: Some("db".into()),
            pool_slots: Some(2),
            trigger_rule: pypelinin_common::TriggerRule::OneFailed,
            allow_failure: true,
            warn_after_ms: Some(30_000),
        },
    );
    spec.ignore_targets = true;
    spec.priority = -3;
    spec.max_active = Some(4);
    spec
}

fn job_ref(p: u128, job: u32, attempt: u32) -> JobRef {
    JobRef {
        pipeline: pid(p),
        job,
        attempt,
    }
}

fn status(p: u128, state: PipelineState) -> PipelineStatus {
    let mut jobs = BTreeMap::new();
    jobs.insert(
        "read".to_string(),
        JobStatus {
            worker: "Reader".into(),
            state: JobState::Succeeded,
            attempts: 1,
            error: None,
            started_ms: Some(1_700_000_000_000),
            finished_ms: Some(1_700_000_000_250),
            duration_ms: Some(250),
            history: vec![Attempt {
                number: 1,
                broker: "host-a-1234-x9".into(),
                started_ms: 1_700_000_000_000,
                finished_ms: Some(1_700_000_000_250),
                error: None,
            }],
            waiting_for: None,
            late: false,
        },
    );
    jobs.insert(
        "words".to_string(),
        JobStatus {
            worker: "WordCount".into(),
            state: JobState::Failed,
            attempts: 2,
            error: Some("worker panicked: index out of bounds".into()),
            started_ms: Some(1_700_000_001_000),
            finished_ms: Some(1_700_000_001_900),
            duration_ms: Some(900),
            history: vec![
                Attempt {
                    number: 1,
                    broker: "host-a-1234-x9".into(),
                    started_ms: 1_700_000_000_300,
                    finished_ms: Some(1_700_000_000_400),
                    error: Some("timeout".into()),
                },
                Attempt {
                    number: 2,
                    broker: "host-b-99-q1".into(),
                    started_ms: 1_700_000_001_000,
                    finished_ms: Some(1_700_000_001_900),
                    error: Some("worker panicked: index out of bounds".into()),
                },
            ],
            waiting_for: None,
            late: false,
        },
    );
    for (name, worker, state) in [
        ("links", "Links", JobState::Running),
        ("report", "Report", JobState::Skipped),
        ("archive", "Archiver", JobState::Queued),
        ("zip", "Zipper", JobState::Cancelled),
        ("sense", "Sensor", JobState::Waiting),
    ] {
        jobs.insert(
            name.to_string(),
            JobStatus {
                worker: worker.into(),
                state,
                attempts: 0,
                error: None,
                started_ms: None,
                finished_ms: None,
                duration_ms: None,
                history: Vec::new(),
                waiting_for: (state == JobState::Waiting)
                    .then(|| "file /in/a.txt (poke 3, next at 2023-11-14T22:13:25Z)".into()),
                late: state == JobState::Running,
            },
        );
    }
    PipelineStatus {
        id: pid(p),
        state,
        submitted_ms: 1_699_999_999_000,
        finished_ms: state.is_final().then_some(1_700_000_002_000),
        jobs,
    }
}

fn monitoring() -> MonitoringReport {
    MonitoringReport {
        broker: "host-a-1234-x9".into(),
        host: "host-a".into(),
        at_ms: 1_700_000_000_500,
        cpu_percent: 37.5,
        memory_used_bytes: 3 << 30,
        memory_total_bytes: 16 << 30,
        load: [0.5, 1.25, 2.0],
        slots: vec![
            Some(SlotJob {
                job: job_ref(1, 2, 1),
                name: "links".into(),
                worker: "Links".into(),
                started_ms: 1_700_000_000_400,
            }),
            None,
        ],
        jobs_done: 12_345,
    }
}

fn requests() -> Vec<(&'static str, Request)> {
    vec![
        (
            "submit",
            Request::Submit {
                id: pid(1),
                pipeline: spec(),
            },
        ),
        (
            "submit-minimal",
            Request::Submit {
                id: pid(2),
                pipeline: PipelineSpec::default().job("a", "Noop", &[]),
            },
        ),
        ("status", Request::Status { id: pid(1) }),
        (
            "wait",
            Request::Wait {
                ids: vec![pid(1), pid(2), pid(3)],
                timeout_ms: MAX_WAIT_MS,
            },
        ),
        (
            "results",
            Request::Results {
                ids: vec![pid(1), pid(4)],
                timeout_ms: 30_000,
            },
        ),
        ("outputs", Request::Outputs { id: pid(1) }),
        ("cancel", Request::Cancel { id: pid(2) }),
        (
            "list",
            Request::List {
                limit: 50,
                state: None,
                schedule: None,
                before: None,
            },
        ),
        (
            "list-state",
            Request::List {
                limit: u32::MAX,
                state: Some(PipelineState::Running),
                schedule: Some("nightly".into()),
                before: Some(1_234),
            },
        ),
        (
            "retry",
            Request::Retry {
                id: pid(1),
                jobs: vec!["words".into(), "links".into()],
            },
        ),
        (
            "retry-failed",
            Request::Retry {
                id: pid(1),
                jobs: Vec::new(),
            },
        ),
        ("brokers", Request::Brokers),
        ("spec", Request::Spec { id: pid(1) }),
        ("metrics", Request::Metrics),
        (
            "schedule-add",
            Request::Schedule(ScheduleRequest::Add(schedule_spec())),
        ),
        (
            "backfill",
            Request::Schedule(ScheduleRequest::Backfill(backfill_spec())),
        ),
        (
            "backfill-cancel",
            Request::Schedule(ScheduleRequest::BackfillCancel { id: 3 }),
        ),
        (
            "pool-set",
            Request::Pool(PoolRequest::Set {
                name: "db".into(),
                slots: 4,
            }),
        ),
        (
            "schedule-trigger",
            Request::Schedule(ScheduleRequest::Trigger {
                name: "nightly".into(),
            }),
        ),
        (
            "broker-hello",
            Request::BrokerHello(BrokerHello {
                name: "host-a-1234-x9".into(),
                host: "host-a".into(),
                workers: vec!["Reader".into(), "WordCount".into(), "Links".into()],
                slots: 8,
                running: vec![job_ref(1, 1, 2), job_ref(3, 0, 1)],
                unreported: vec![job_ref(1, 2, 1)],
                prefetch: 32,
            }),
        ),
        (
            "job-done",
            Request::JobDone(vec![
                JobReport {
                    job: job_ref(1, 0, 1),
                    started_ms: 1_700_000_000_000,
                    finished_ms: 1_700_000_000_250,
                    result: Ok(data(json!({
                        "text": "Olá, mundo",
                        "counts": {"a": 1, "b": [1, 2, {"c": null}]},
                        "score": -0.5,
                    }))),
                },
                JobReport {
                    job: job_ref(1, 1, 2),
                    started_ms: 1_700_000_001_000,
                    finished_ms: 1_700_000_001_900,
                    result: Err("worker panicked: index out of bounds".into()),
                },
            ]),
        ),
        ("monitor", Request::Monitor(monitoring())),
        ("drain", Request::Drain),
        (
            "pipeliner-hello",
            Request::PipelinerHello {
                pipeliner: Uuid::from_u128(0xfeed),
                capacity: 64,
            },
        ),
        (
            "advance",
            Request::Advance(vec![
                Advance {
                    pipeline: pid(1),
                    enqueue: vec![1, 2],
                    skip: vec![],
                    finish: false,
                    after: vec![3],
                    close_on_success: true,
                },
                Advance {
                    pipeline: pid(2),
                    enqueue: vec![],
                    skip: vec![3, 4],
                    finish: true,
                    after: vec![],
                    close_on_success: false,
                },
            ]),
        ),
        ("heartbeat", Request::Heartbeat),
        ("bye", Request::Bye),
        (
            "logs",
            Request::Logs(vec![
                LogChunk {
                    job: job_ref(1, 2, 1),
                    line: log_line(1, LogStream::Stdout, b"hello"),
                },
                LogChunk {
                    job: job_ref(1, 2, 1),
                    line: log_line(2, LogStream::Stderr, b"\xff\xfe not utf-8\0"),
                },
            ]),
        ),
        (
            "get-logs",
            Request::GetLogs {
                id: pid(1),
                job: "links".into(),
                attempt: Some(2),
                after: 17,
            },
        ),
        ("notifications", Request::Notifications { limit: 50 }),
    ]
}

fn log_line(seq: u64, stream: LogStream, bytes: &[u8]) -> LogLine {
    LogLine {
        seq,
        at_ms: 1_700_000_000_000 + seq,
        stream,
        bytes: bytes.to_vec(),
        dropped: 0,
    }
}

fn metrics() -> ClusterMetrics {
    let mut latency = Histogram::new(&[0.001, 0.01, 0.1, 1.0]);
    for s in [0.0004, 0.002, 0.002, 0.05, 3.5] {
        latency.observe(s);
    }
    let mut by_worker = BTreeMap::new();
    by_worker.insert("Reader".to_string(), latency.clone());
    by_worker.insert("Links".to_string(), Histogram::new(&[1.0, 10.0]));
    let counts = |pairs: &[(&str, u64)]| -> BTreeMap<String, u64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    };
    ClusterMetrics {
        pipelines: counts(&[("queued", 1), ("running", 2), ("succeeded", 40)]),
        jobs: counts(&[("queued", 3), ("running", 4), ("failed", 1), ("skipped", 2)]),
        queue_depth: 3,
        brokers: 2,
        pipeliners: 1,
        job_duration: by_worker,
        request_latency: latency,
        attempts_finished: 1_234,
        throughput: vec![(1_700_000_000, 12), (1_700_000_001, 0), (1_700_000_002, 7)],
        refused_keys: 2,
        refused_handshakes: 9,
        job_reports: 40,
        report_messages: 11,
    }
}

fn from_router() -> Vec<(&'static str, FromRouter)> {
    let mut outputs = BTreeMap::new();
    outputs.insert("read".to_string(), data(json!({"text": "hello", "n": 5})));
    outputs.insert(
        "words".to_string(),
        data(json!({"hello": 1, "list": [1, 2.5]})),
    );
    let parents = outputs.clone();
    let mut v = vec![
        ("reply-ok", FromRouter::Reply(Reply::Ok)),
        (
            "reply-submitted",
            FromRouter::Reply(Reply::Submitted { id: pid(1) }),
        ),
        (
            "reply-status",
            FromRouter::Reply(Reply::Status(status(1, PipelineState::Running))),
        ),
        (
            "reply-statuses",
            FromRouter::Reply(Reply::Statuses(vec![
                status(1, PipelineState::Failed),
                status(2, PipelineState::Succeeded),
            ])),
        ),
        (
            "reply-outputs",
            FromRouter::Reply(Reply::Outputs(outputs.clone())),
        ),
        (
            "reply-results",
            FromRouter::Reply(Reply::Results(vec![
                PipelineResult {
                    id: pid(1),
                    state: PipelineState::Failed,
                    outputs,
                    failed: vec![("links".into(), "HTTP 503 from example.org".into())],
                },
                PipelineResult {
                    id: pid(4),
                    state: PipelineState::Running,
                    outputs: BTreeMap::new(),
                    failed: Vec::new(),
                },
            ])),
        ),
        (
            "reply-brokers",
            FromRouter::Reply(Reply::Brokers(vec![
                BrokerStatus {
                    name: "host-a-1234-x9".into(),
                    host: "host-a".into(),
                    workers: vec!["Reader".into(), "Links".into()],
                    slots: 8,
                    busy: 1,
                    draining: false,
                    last_seen_ms_ago: 120,
                    monitor: Some(monitoring()),
                    assigned: vec![SlotJob {
                        job: job_ref(7, 2, 1),
                        name: "words".into(),
                        worker: "Reader".into(),
                        started_ms: 1_700_000_000_000,
                    }],
                },
                BrokerStatus {
                    name: "host-b-99-q1".into(),
                    host: "host-b".into(),
                    workers: vec!["Report".into()],
                    slots: 2,
                    busy: 0,
                    draining: true,
                    last_seen_ms_ago: 2_900,
                    monitor: None,
                    assigned: Vec::new(),
                },
            ])),
        ),
        ("reply-spec", FromRouter::Reply(Reply::Spec(spec()))),
        (
            "reply-backfills",
            FromRouter::Reply(Reply::Backfills(vec![BackfillStatus {
                id: 3,
                spec: backfill_spec(),
                timezone: Some("America/Sao_Paulo".into()),
                state: BackfillState::Running,
                created_ms: 1_700_100_000_000,
                finished_ms: None,
                dates: vec![TickRecord {
                    logical_date: 1_700_000_000_000,
                    pipeline: None,
                    state: None,
                    note: Some("has a run: succeeded (reprocess failed)".into()),
                }],
            }])),
        ),
        (
            "reply-pools",
            FromRouter::Reply(Reply::Pools(vec![PoolStatus {
                name: "db".into(),
                capacity: 4,
                used: 5,
                queued: 12,
            }])),
        ),
        (
            "reply-schedules",
            FromRouter::Reply(Reply::Schedules(vec![ScheduleStatus {
                spec: schedule_spec(),
                paused: false,
                created_ms: 1_700_000_000_000,
                next_ticks: vec![1_700_000_001_000, 1_700_000_002_000],
                running: vec![pid(4)],
                pending: vec![1_700_000_000_500],
                waiting_for: Some("schedule max_running 1 reached".into()),
                recent: vec![
                    TickRecord {
                        logical_date: 1_699_999_999_000,
                        pipeline: Some(pid(4)),
                        state: Some(PipelineState::Running),
                        note: None,
                    },
                    TickRecord {
                        logical_date: 1_699_999_998_000,
                        pipeline: None,
                        state: None,
                        note: Some("skipped: 1 run(s) still going".into()),
                    },
                ],
            }])),
        ),
        (
            "reply-metrics",
            FromRouter::Reply(Reply::Metrics(metrics())),
        ),
        (
            "reply-list",
            FromRouter::Reply(Reply::List(vec![
                PipelineSummary {
                    id: pid(2),
                    state: PipelineState::Queued,
                    submitted_ms: 1_700_000_000_000,
                    finished_ms: None,
                    jobs: 4,
                    done: 0,
                    origin: Some(RunOrigin {
                        schedule: "nightly".into(),
                        logical_date: 1_700_000_000_000,
                        kind: RunKind::Backfill,
                        backfill: Some(3),
                    }),
                    seq: 42,
                },
                PipelineSummary {
                    id: pid(1),
                    state: PipelineState::Succeeded,
                    submitted_ms: 1_699_999_999_000,
                    finished_ms: Some(1_700_000_000_000),
                    jobs: 5,
                    done: 5,
                    origin: None,
                    seq: 41,
                },
            ])),
        ),
        (
            "reply-welcome",
            FromRouter::Reply(Reply::Welcome(ClusterConfig {
                store: json!({"kind": "s3", "bucket": "b", "retries": 3, "opts": [1, {"x": null}]}),
                monitoring_interval_ms: 5_000,
                ..ClusterConfig::default()
            })),
        ),
        (
            "push-assign",
            FromRouter::Push(Push::Assign(vec![Assignment {
                job: job_ref(1, 3, 1),
                info: JobInfo {
                    pipeline: pid(1),
                    name: "report".into(),
                    worker: "Report".into(),
                    attempt: 1,
                    data: data(json!({"document": "a.txt", "top": 10})),
                    parents,
                    timeout_ms: Some(60_000),
                    target: Some("/data/{logical_date}.csv".into()),
                    wait_for: Some(pypelinin_common::sensor::WaitFor {
                        command: Some(vec!["test".into(), "-e".into(), "/x".into()]),
                        ..Default::default()
                    }),
                },
            }])),
        ),
        (
            "push-take",
            FromRouter::Push(Push::Take(vec![PipelineSnapshot {
                id: pid(1),
                spec: spec(),
                states: vec![
                    JobState::Succeeded,
                    JobState::Running,
                    JobState::Failed,
                    JobState::Skipped,
                    JobState::Queued,
                    JobState::Cancelled,
                ],
            }])),
        ),
        (
            "push-changed",
            FromRouter::Push(Push::Changed(vec![
                JobChange {
                    pipeline: pid(1),
                    job: 2,
                    state: JobState::Succeeded,
                },
                JobChange {
                    pipeline: pid(3),
                    job: 0,
                    state: JobState::Failed,
                },
                JobChange {
                    pipeline: pid(3),
                    job: 1,
                    state: JobState::SkippedDone,
                },
            ])),
        ),
        (
            "push-revoke",
            FromRouter::Push(Push::Revoke(vec![job_ref(2, 0, 1), job_ref(2, 3, 2)])),
        ),
        (
            "reply-logs",
            FromRouter::Reply(Reply::Logs(LogPage {
                attempt: 2,
                attempts: 2,
                lines: vec![
                    log_line(4, LogStream::Log, b"INFO worker: started"),
                    log_line(5, LogStream::Stdout, &[0x80, 0x81, b'\n']),
                ],
                dropped_bytes: 1024,
                finished: false,
                job_final: false,
            })),
        ),
        (
            "reply-notifications",
            FromRouter::Reply(Reply::Notifications(vec![
                pypelinin_common::notify::NotificationStatus {
                    id: "5a0c6f1e-8d2b-4c3a-9e7f-0b1d2c3e4f50".into(),
                    event: pypelinin_common::NotifyEvent::Late,
                    pipeline: pid(3),
                    job: Some("load".into()),
                    state: "running".into(),
                    channel: "https://hooks.example.com/etl".into(),
                    created_ms: 1_700_000_000_000,
                    attempts: 2,
                    delivery: pypelinin_common::notify::DeliveryState::Pending,
                    next_try_ms: Some(1_700_000_002_000),
                    last_error: Some(
                        "webhook https://hooks.example.com/etl answered HTTP 503".into(),
                    ),
                },
            ])),
        ),
    ];
    let errors = [
        ProtocolError::Malformed("invalid type: integer `7`, expected a string".into()),
        ProtocolError::UnknownCommand("unknown variant `Frobnicate`".into()),
        ProtocolError::Version {
            got: 2,
            want: PROTOCOL_VERSION,
        },
        ProtocolError::TooLarge {
            bytes: MAX_FRAME_BYTES + 1,
            max: MAX_FRAME_BYTES,
        },
        ProtocolError::InvalidPipeline("the pipeline has a cycle: a -> b -> a".into()),
        ProtocolError::UnknownPipeline(pid(9)),
        ProtocolError::InvalidSchedule("bad cron expression \"61 * * * *\"".into()),
        ProtocolError::UnknownSchedule("nightly".into()),
        ProtocolError::UnknownPool("db".into()),
        ProtocolError::UnknownBackfill(7),
        ProtocolError::Conflict("id taken by another pipeline".into()),
        ProtocolError::UnknownPeer,
        ProtocolError::Stale("attempt 1 of job 2 is not current".into()),
        ProtocolError::Refused("draining".into()),
        ProtocolError::Storage("flush failed: No space left on device".into()),
        ProtocolError::UnknownJob {
            pipeline: pid(1),
            job: "nope".into(),
        },
    ];
    let names = [
        "reply-error-malformed",
        "reply-error-unknown-command",
        "reply-error-version",
        "reply-error-too-large",
        "reply-error-invalid-pipeline",
        "reply-error-unknown-pipeline",
        "reply-error-invalid-schedule",
        "reply-error-unknown-schedule",
        "reply-error-unknown-pool",
        "reply-error-unknown-backfill",
        "reply-error-conflict",
        "reply-error-unknown-peer",
        "reply-error-stale",
        "reply-error-refused",
        "reply-error-storage",
        "reply-error-unknown-job",
    ];
    assert_eq!(names.len(), errors.len(), "one name per error");
    for (name, e) in names.into_iter().zip(errors) {
        v.push((name, FromRouter::Reply(Reply::Error(e))));
    }
    v
}

fn events() -> Vec<(&'static str, Event)> {
    vec![
        ("event-submitted", Event::PipelineSubmitted { id: pid(1) }),
        ("event-job-logs", Event::JobLogs { id: pid(3) }),
        (
            "event-finished",
            Event::PipelineFinished {
                id: pid(1),
                state: PipelineState::Failed,
            },
        ),
        (
            "event-finished-ok",
            Event::PipelineFinished {
                id: pid(2),
                state: PipelineState::Succeeded,
            },
        ),
        (
            "event-cancelled",
            Event::PipelineFinished {
                id: pid(3),
                state: PipelineState::Cancelled,
            },
        ),
    ]
}

/// Every corpus frame, named, with request ids that exercise the integer encodings.
fn corpus() -> Vec<(String, Vec<u8>)> {
    let ids = [1u64, 0x7f, 0x80, 0xffff, 0x1_0000_0000, u64::MAX];
    let mut out = Vec::new();
    for (i, (name, m)) in requests().into_iter().enumerate() {
        out.push((format!("request-{name}"), encode(ids[i % ids.len()], &m)));
    }
    for (i, (name, m)) in from_router().into_iter().enumerate() {
        let id = if name.starts_with("push") {
            0
        } else {
            ids[i % ids.len()]
        };
        out.push((format!("from-router-{name}"), encode(id, &m)));
    }
    for (name, m) in events() {
        out.push((name.to_string(), encode(0, &m)));
    }
    out
}

// ---------------------------------------------------------------------------------------
// Mutations.

const INTERESTING: &[u8] = &[
    0x00, 0xff, 0x7f, 0x80, 0xc1, 0xdc, 0xdd, 0xde, 0xdf, 0xc0, 0x90, 0x9f, 0x8f, 0xbf, 0xda, 0xdb,
    0xd9, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xd4, 0xd8, 0xca, 0xcb, 0xcf, 0xd3, 0xe0,
];

/// Markers followed by a declared length, with the width of that length.
fn length_width(marker: u8) -> Option<usize> {
    match marker {
        0xc4 | 0xc7 | 0xd9 => Some(1),
        0xc5 | 0xc8 | 0xda | 0xdc | 0xde => Some(2),
        0xc6 | 0xc9 | 0xdb | 0xdd | 0xdf => Some(4),
        _ => None,
    }
}

/// Prefixes that declare far more than any frame holds.
const HUGE: &[&[u8]] = &[
    &[0xdd, 0xff, 0xff, 0xff, 0xff],
    &[0xdf, 0xff, 0xff, 0xff, 0xff],
    &[0xdb, 0xff, 0xff, 0xff, 0xff],
    &[0xc6, 0xff, 0xff, 0xff, 0xff],
    &[0xc9, 0xff, 0xff, 0xff, 0xff, 0x01],
    &[0xdd, 0x7f, 0xff, 0xff, 0xff],
    &[0xdf, 0x80, 0x00, 0x00, 0x00],
    &[0xdd, 0x00, 0x10, 0x00, 0x00],
    &[0xdc, 0xff, 0xff],
    &[0xde, 0xff, 0xff],
    &[0xda, 0xff, 0xff],
    &[0xc5, 0xff, 0xff],
    &[0xc8, 0xff, 0xff, 0x05],
    &[0xd9, 0xff],
    &[0xc4, 0xff],
    &[0x9f],
    &[0x8f],
    &[0xbf],
];

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, corpus: &[(String, Vec<u8>)]) {
    let len = input.len();
    match rng.below(13) {
        // Flip a bit.
        0 => {
            if len > 0 {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
        }
        // An interesting byte; a length marker gets a big length.
        1 => {
            if len > 0 {
                let i = rng.below(len);
                let b = *rng.pick(INTERESTING);
                input[i] = b;
                if let Some(w) = length_width(b) {
                    if rng.below(2) == 0 {
                        for b in input.iter_mut().skip(i + 1).take(w) {
                            *b = 0xff;
                        }
                    }
                }
            }
        }
        // Insert a huge declared length.
        2 => {
            let i = rng.below(len + 1);
            let h = *rng.pick(HUGE);
            input.splice(i..i, h.iter().copied());
        }
        // Overwrite with a huge declared length.
        3 => {
            let h = *rng.pick(HUGE);
            let i = rng.below(len + 1);
            for (k, b) in h.iter().enumerate() {
                match input.get_mut(i + k) {
                    Some(slot) => *slot = *b,
                    None => input.push(*b),
                }
            }
        }
        // Truncate.
        4 => input.truncate(rng.below(len + 1)),
        // Splice: our head, another frame's tail.
        5 => {
            let other = &rng.pick(corpus).1;
            let cut = rng.below(len + 1);
            let from = rng.below(other.len() + 1);
            input.truncate(cut);
            input.extend_from_slice(&other[from..]);
        }
        // Duplicate a range somewhere.
        6 => {
            if len > 0 {
                let a = rng.below(len);
                let b = a + 1 + rng.below((len - a).min(256));
                let at = rng.below(len + 1);
                let copy = input[a..b].to_vec();
                input.splice(at..at, copy);
            }
        }
        // Delete a range.
        7 => {
            if len > 0 {
                let a = rng.below(len);
                let b = a + 1 + rng.below((len - a).min(64));
                input.drain(a..b);
            }
        }
        // A random byte.
        8 => {
            if len > 0 {
                let i = rng.below(len);
                input[i] = rng.byte();
            }
        }
        // Small arithmetic on a byte (lengths off by one, versions, enum tags).
        9 => {
            if len > 0 {
                let i = rng.below(len);
                let d = [1u8, 2, 0xff, 0xfe, 0x10, 0xf0][rng.below(6)];
                input[i] = input[i].wrapping_add(d);
            }
        }
        // Change the length of the next fixmap / fixarray / fixstr.
        10 => {
            let start = rng.below(len + 1);
            if let Some(i) = (start..len).find(|&i| (0x80..=0xbf).contains(&input[i])) {
                let b = input[i];
                input[i] = match b {
                    0x80..=0x8f => 0x80 | (rng.byte() & 0x0f),
                    0x90..=0x9f => 0x90 | (rng.byte() & 0x0f),
                    _ => 0xa0 | (rng.byte() & 0x1f),
                };
            }
        }
        // Give the next explicit length a big value.
        11 => {
            let start = rng.below(len + 1);
            if let Some(i) = (start..len).find(|&i| length_width(input[i]).is_some()) {
                let w = length_width(input[i]).unwrap_or(0);
                let fill = *rng.pick(&[0xffu8, 0x7f, 0x80, 0x10]);
                for b in input.iter_mut().skip(i + 1).take(w) {
                    *b = fill;
                }
            }
        }
        // Insert random bytes.
        _ => {
            let i = rng.below(len + 1);
            let n = 1 + rng.below(8);
            let bytes: Vec<u8> = (0..n).map(|_| rng.byte()).collect();
            input.splice(i..i, bytes);
        }
    }
    input.truncate(MAX_INPUT);
}

// ---------------------------------------------------------------------------------------
// Checking one decode.

#[derive(Default)]
struct Stats {
    inputs: u64,
    ok: u64,
    malformed: u64,
    unknown_command: u64,
    version: u64,
    too_large: u64,
    max_time: Duration,
    max_time_input: Vec<u8>,
    max_alloc: usize,
    max_alloc_input: Vec<u8>,
    findings: Vec<String>,
}

impl Stats {
    fn finding(&mut self, what: String) {
        if self.findings.len() < 20 {
            self.findings.push(what);
        }
    }
}

/// The error a decoder may give: anything else means `decode` mixed up its job.
fn check_error(e: &DecodeError, input: &[u8], stats: &mut Stats) -> Result<(), String> {
    match &e.error {
        ProtocolError::Malformed(m) | ProtocolError::UnknownCommand(m) if m.is_empty() => {
            Err("an error without a message".into())
        }
        ProtocolError::Malformed(_) => {
            stats.malformed += 1;
            Ok(())
        }
        ProtocolError::UnknownCommand(_) => {
            stats.unknown_command += 1;
            if e.id.is_none() {
                return Err("UnknownCommand without the request id".into());
            }
            Ok(())
        }
        ProtocolError::Version { got, want } => {
            stats.version += 1;
            if got == want || *want != PROTOCOL_VERSION || e.id.is_none() {
                return Err(format!("bad version error {:?} (id {:?})", e.error, e.id));
            }
            Ok(())
        }
        ProtocolError::TooLarge { bytes, max } => {
            stats.too_large += 1;
            if *bytes != input.len() || *max != MAX_FRAME_BYTES || input.len() <= MAX_FRAME_BYTES {
                return Err(format!("bad size error {:?}", e.error));
            }
            Ok(())
        }
        other => Err(format!("not a decoding error: {other:?}")),
    }
}

/// A decode's result (or panic), how long it took and the most it allocated at once.
type Timed<T> = (
    std::thread::Result<Result<(u64, T), DecodeError>>,
    Duration,
    usize,
);

fn timed_decode<T: DeserializeOwned>(input: &[u8]) -> Timed<T> {
    let start = Instant::now();
    let (r, peak) = measure_alloc(|| catch_unwind(AssertUnwindSafe(|| decode::<T>(input))));
    (r, start.elapsed(), peak)
}

/// Decodes `input` as a `T` and checks everything the decoder promises.
fn check_decode<T: DeserializeOwned + Serialize + Debug>(
    kind: &str,
    input: &[u8],
    stats: &mut Stats,
) {
    let (result, mut took, peak) = timed_decode::<T>(input);
    if took > SLOW_DECODE {
        // One slow run may be the machine; three are the decoder.
        for _ in 0..2 {
            took = took.min(timed_decode::<T>(input).1);
        }
        if took > SLOW_DECODE {
            stats.finding(format!("{kind}: slow decode ({took:?}) of {}", hex(input)));
        }
    }
    if took > stats.max_time {
        stats.max_time = took;
        stats.max_time_input = input.to_vec();
    }
    if peak > stats.max_alloc {
        stats.max_alloc = peak;
        stats.max_alloc_input = input.to_vec();
    }
    if peak > ALLOC_LIMIT {
        stats.finding(format!(
            "{kind}: decoding allocated {peak} bytes at once for {}",
            hex(input)
        ));
    }
    match result {
        Err(_) => stats.finding(format!("{kind}: decode panicked on {}", hex(input))),
        Ok(Err(e)) => {
            if let Err(why) = check_error(&e, input, stats) {
                stats.finding(format!("{kind}: {why} for {}", hex(input)));
            }
        }
        Ok(Ok((id, msg))) => {
            stats.ok += 1;
            if let Err(why) = round_trip(id, &msg) {
                stats.finding(format!("{kind}: {why}; input {}", hex(input)));
            }
        }
    }
}

/// `decode(encode(msg))` gives back the same id and message.
fn round_trip<T: DeserializeOwned + Serialize + Debug>(id: u64, msg: &T) -> Result<(), String> {
    let bytes = catch_unwind(AssertUnwindSafe(|| encode(id, msg)))
        .map_err(|_| format!("encode panicked on a decoded message {msg:?}"))?;
    match decode::<T>(&bytes) {
        Ok((id2, back)) => {
            let (a, b) = (format!("{msg:?}"), format!("{back:?}"));
            if id2 != id || a != b {
                return Err(format!(
                    "round trip changed the message: {id} {a} -> {id2} {b}"
                ));
            }
            Ok(())
        }
        Err(e) => Err(format!(
            "re-encoded message does not decode: {:?} ({msg:?}, {})",
            e.error,
            hex(&bytes)
        )),
    }
}

fn check_all(input: &[u8], stats: &mut Stats) {
    stats.inputs += 1;
    check_decode::<Request>("Request", input, stats);
    check_decode::<FromRouter>("FromRouter", input, stats);
    check_decode::<Event>("Event", input, stats);
}

// ---------------------------------------------------------------------------------------
// The tests.

#[test]
fn corpus_frames_decode_and_round_trip() {
    let mut n = 0;
    for (name, m) in requests() {
        let bytes = encode(42, &m);
        let (id, back) = decode::<Request>(&bytes).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(id, 42);
        assert_eq!(format!("{back:?}"), format!("{m:?}"), "{name}");
        round_trip(id, &back).unwrap();
        n += 1;
    }
    for (name, m) in from_router() {
        let bytes = encode(0, &m);
        let (_, back) = decode::<FromRouter>(&bytes).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(format!("{back:?}"), format!("{m:?}"), "{name}");
        n += 1;
    }
    for (name, m) in events() {
        let bytes = encode(0, &m);
        let (_, back) = decode::<Event>(&bytes).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(format!("{back:?}"), format!("{m:?}"), "{name}");
        n += 1;
    }
    assert!(n >= 50, "{n}");
}

/// The variants serde knows for enum `T`, from its "unknown variant" error.
fn variants_of<T: DeserializeOwned + Debug>() -> Vec<String> {
    let probe = rmp_serde::to_vec("\u{1}no such variant").expect("encode a string");
    let e = rmp_serde::from_slice::<T>(&probe).expect_err("the probe is not a variant");
    let msg = e.to_string();
    let expected = msg
        .split_once("expected")
        .unwrap_or_else(|| panic!("unexpected error {msg}"))
        .1;
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(String::from)
        .collect()
}

/// The variant name of an externally tagged enum value: MessagePack `"Name"` or
/// `{"Name": ...}`.
fn variant_name<T: Serialize>(v: &T) -> String {
    let bytes = rmp_serde::to_vec_named(v).expect("encode");
    let rest = match bytes.first() {
        Some(0x81) => &bytes[1..],
        _ => &bytes[..],
    };
    let (len, at) = match rest.first() {
        Some(&b @ 0xa0..=0xbf) => ((b & 0x1f) as usize, 1),
        Some(0xd9) => (rest[1] as usize, 2),
        _ => panic!("not an enum: {}", hex(&bytes)),
    };
    String::from_utf8(rest[at..at + len].to_vec()).expect("a variant name")
}

/// The corpus holds every message kind: a variant added to the protocol must be added
/// to `requests()`, `from_router()` or `events()` here, so that it is fuzzed too.
#[test]
fn corpus_covers_every_variant() {
    let mut have: Vec<String> = requests().iter().map(|(_, m)| variant_name(m)).collect();
    for (_, m) in from_router() {
        have.push(variant_name(&m));
        match &m {
            FromRouter::Reply(r) => {
                have.push(variant_name(r));
                if let Reply::Error(e) = r {
                    have.push(variant_name(e));
                }
            }
            FromRouter::Push(p) => have.push(variant_name(p)),
        }
    }
    have.extend(events().iter().map(|(_, m)| variant_name(m)));
    let mut missing = Vec::new();
    for (ty, names) in [
        ("Request", variants_of::<Request>()),
        ("FromRouter", variants_of::<FromRouter>()),
        ("Reply", variants_of::<Reply>()),
        ("Push", variants_of::<Push>()),
        ("ProtocolError", variants_of::<ProtocolError>()),
        ("Event", variants_of::<Event>()),
    ] {
        assert!(names.len() >= 2, "{ty}: {names:?}");
        missing.extend(
            names
                .into_iter()
                .filter(|n| !have.contains(n))
                .map(|n| format!("{ty}::{n}")),
        );
    }
    // States are plain strings on the wire: look for each one in the encoded corpus.
    let bytes: Vec<u8> = corpus().into_iter().flat_map(|(_, b)| b).collect();
    for (ty, names) in [
        ("JobState", variants_of::<JobState>()),
        ("PipelineState", variants_of::<PipelineState>()),
    ] {
        for n in names {
            let mut enc = vec![0xa0 | n.len() as u8];
            enc.extend_from_slice(n.as_bytes());
            if !bytes.windows(enc.len()).any(|w| w == enc) {
                missing.push(format!("{ty}::{n}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "not in the decode fuzz corpus (add them to common/tests/decode_fuzz.rs): {}",
        missing.join(", ")
    );
}

#[test]
fn every_truncation_of_every_frame_is_a_typed_error() {
    let mut stats = Stats::default();
    for (name, frame) in corpus() {
        for cut in 0..frame.len() {
            let part = &frame[..cut];
            // A strict prefix of one MessagePack value is never a whole value.
            for r in [
                decode::<Request>(part).err(),
                decode::<FromRouter>(part).err(),
                decode::<Event>(part).err(),
            ] {
                let e = r.unwrap_or_else(|| panic!("{name} cut at {cut} decoded"));
                check_error(&e, part, &mut stats)
                    .unwrap_or_else(|why| panic!("{name} cut at {cut}: {why}"));
            }
        }
    }
    assert!(stats.malformed > 0);
}

#[test]
fn mutated_frames_never_panic_stall_or_balloon() {
    let iters = env_u64("DECODE_FUZZ_ITERS", DEFAULT_ITERS);
    let seed = env_u64("DECODE_FUZZ_SEED", DEFAULT_SEED);
    let corpus = corpus();
    let mut rng = Rng::new(seed);
    let mut stats = Stats::default();
    let started = Instant::now();

    for (_, frame) in &corpus {
        check_all(frame, &mut stats);
    }
    let mut input = Vec::new();
    for _ in 0..iters {
        input.clear();
        input.extend_from_slice(&rng.pick(&corpus).1);
        for _ in 0..1 + rng.below(4) {
            mutate(&mut rng, &mut input, &corpus);
        }
        check_all(&input, &mut stats);
    }
    // Pure garbage too, of every small length.
    for len in 0..64 {
        let garbage: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
        check_all(&garbage, &mut stats);
    }

    println!(
        "decode fuzz: seed {seed:#x}, {} inputs x 3 types in {:?}; ok {}, malformed {}, \
         unknown command {}, version {}; slowest decode {:?}, most allocated {} bytes",
        stats.inputs,
        started.elapsed(),
        stats.ok,
        stats.malformed,
        stats.unknown_command,
        stats.version,
        stats.max_time,
        stats.max_alloc,
    );
    println!("slowest input: {}", hex(&stats.max_time_input));
    println!("most allocating input: {}", hex(&stats.max_alloc_input));
    assert!(
        stats.findings.is_empty(),
        "decode fuzz (seed {seed:#x}) found:\n{}",
        stats.findings.join("\n")
    );
    // The mutations reach both sides.
    assert!(stats.ok > 0 && stats.malformed > 0 && stats.unknown_command > 0);
}

/// Replays one input given in hex by `DECODE_FUZZ_INPUT` (say, a finding or a libFuzzer
/// artifact: `xxd -p -c0 file`), with timings; does nothing otherwise.
#[test]
fn replay_input() {
    let Ok(text) = std::env::var("DECODE_FUZZ_INPUT") else {
        return;
    };
    let text: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    let input: Vec<u8> = text
        .as_bytes()
        .chunks(2)
        .map(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .filter(|p| p.len() == 2)
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .expect("DECODE_FUZZ_INPUT is not hex")
        })
        .collect();
    fn show<T: DeserializeOwned + Debug>(input: &[u8]) {
        let mut best = Duration::MAX;
        for _ in 0..5 {
            best = best.min(timed_decode::<T>(input).1);
        }
        let (r, _, peak) = timed_decode::<T>(input);
        let r = r.map(|r| r.map_err(|e| e.error));
        println!(
            "{}: best of 5 {best:?}, {peak} bytes allocated at most: {r:?}",
            std::any::type_name::<T>()
        );
    }
    show::<Request>(&input);
    show::<FromRouter>(&input);
    show::<Event>(&input);
    let mut stats = Stats::default();
    check_all(&input, &mut stats);
    assert!(stats.findings.is_empty(), "{}", stats.findings.join("\n"));
}

/// A Submit frame whose pipeline `data` holds `nested` under the key "deep".
fn submit_with(nested: &[u8]) -> Vec<u8> {
    let pipeline = PipelineSpec::default()
        .job("a", "Noop", &[])
        .with_data("deep", Value::Null);
    let frame = encode(
        77,
        &Request::Submit {
            id: pid(5),
            pipeline,
        },
    );
    let marker = [0xa4, b'd', b'e', b'e', b'p', 0xc0];
    let at = frame
        .windows(marker.len())
        .position(|w| w == marker)
        .expect("the placeholder is in the frame")
        + marker.len()
        - 1;
    let mut out = frame[..at].to_vec();
    out.extend_from_slice(nested);
    out.extend_from_slice(&frame[at + 1..]);
    out
}

/// An Outputs reply whose output `data` holds `nested` under the key "deep".
fn outputs_with(nested: &[u8]) -> Vec<u8> {
    let mut outputs = BTreeMap::new();
    outputs.insert("a".to_string(), data(json!({"deep": null})));
    let frame = encode(78, &FromRouter::Reply(Reply::Outputs(outputs)));
    let marker = [0xa4, b'd', b'e', b'e', b'p', 0xc0];
    let at = frame
        .windows(marker.len())
        .position(|w| w == marker)
        .expect("the placeholder is in the frame")
        + marker.len()
        - 1;
    let mut out = frame[..at].to_vec();
    out.extend_from_slice(nested);
    out.extend_from_slice(&frame[at + 1..]);
    out
}

/// `levels` times `open`, then nil.
fn nest(open: &[u8], levels: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(open.len() * levels + 1);
    for _ in 0..levels {
        v.extend_from_slice(open);
    }
    v.push(0xc0);
    v
}

/// Runs `f` on a thread with a small stack: a decoder that recursed once per level of
/// nesting would overflow it (and abort the test binary) long before 100k levels.
fn on_small_stack(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(1 << 20)
        .spawn(f)
        .expect("spawn")
        .join()
        .expect("decoding on a 1 MiB stack");
}

#[test]
fn deep_nesting_is_refused_without_overflowing_the_stack() {
    on_small_stack(|| {
        let opens: [&[u8]; 5] = [
            &[0x91],                         // fixarray of 1
            &[0x81, 0xa1, b'k'],             // fixmap of 1: "k" => ...
            &[0xdd, 0x00, 0x00, 0x00, 0x01], // array32 of 1
            &[0xde, 0x00, 0x01, 0xa0],       // map16 of 1: "" => ...
            &[0x92, 0xc0],                   // fixarray of 2: nil, ...
        ];
        for open in opens {
            let deep = nest(open, 100_000);
            for frame in [submit_with(&deep), outputs_with(&deep), deep.clone()] {
                let started = Instant::now();
                let r = decode::<Request>(&frame);
                let f = decode::<FromRouter>(&frame);
                let e = decode::<Event>(&frame);
                assert!(started.elapsed() < Duration::from_secs(1));
                for err in [r.err(), f.err(), e.err()] {
                    let err = err.expect("100k levels of nesting decoded");
                    assert!(
                        matches!(
                            err.error,
                            ProtocolError::Malformed(_) | ProtocolError::UnknownCommand(_)
                        ),
                        "{:?}",
                        err.error
                    );
                }
            }
            // Where the nesting is free-form data, the depth bound is what refuses it.
            let e = decode::<Request>(&submit_with(&deep)).unwrap_err();
            assert!(format!("{}", e.error).contains("depth"), "{}", e.error);
            let e = decode::<FromRouter>(&outputs_with(&deep)).unwrap_err();
            assert!(format!("{}", e.error).contains("depth"), "{}", e.error);
        }
    });
}

#[test]
fn reasonable_nesting_is_accepted_and_the_bound_is_max_depth() {
    on_small_stack(|| {
        // The frame, the Submit, the spec and its data take 4 levels.
        let ok = nest(&[0x91], 100);
        let (_, back) = decode::<Request>(&submit_with(&ok)).expect("100 levels decode");
        round_trip(77, &back).unwrap();
        let too_deep = nest(&[0x91], MAX_DEPTH);
        assert!(decode::<Request>(&submit_with(&too_deep)).is_err());
    });
}

#[test]
fn oversized_frames_are_refused_unread() {
    let big = submit_with(&{
        // A valid Submit whose data holds a string just over the frame bound.
        let n = MAX_FRAME_BYTES;
        let mut s = vec![0xdb];
        s.extend_from_slice(&(n as u32).to_be_bytes());
        s.resize(5 + n, b'x');
        s
    });
    assert!(big.len() > MAX_FRAME_BYTES);
    let started = Instant::now();
    for e in [
        decode::<Request>(&big).err(),
        decode::<FromRouter>(&big).err(),
        decode::<Event>(&big).err(),
    ] {
        let e = e.expect("an oversized frame decoded");
        assert_eq!(
            e.id, None,
            "an oversized frame is not read, not even its id"
        );
        assert_eq!(
            e.error,
            ProtocolError::TooLarge {
                bytes: big.len(),
                max: MAX_FRAME_BYTES
            }
        );
    }
    assert!(started.elapsed() < Duration::from_millis(100));
}

#[test]
fn huge_declared_lengths_allocate_little() {
    // Every length marker, with the largest length it can declare, in every place the
    // Submit's data or a Vec of the message types can hold it.
    let mut stats = Stats::default();
    for prefix in HUGE {
        let mut inputs = vec![submit_with(prefix), outputs_with(prefix), prefix.to_vec()];
        for (_, frame) in corpus() {
            for at in (0..frame.len()).step_by(7) {
                let mut f = frame.clone();
                f.splice(at..at, prefix.iter().copied());
                inputs.push(f);
            }
        }
        for input in inputs {
            check_all(&input, &mut stats);
        }
    }
    assert!(
        stats.findings.is_empty(),
        "huge lengths:\n{}",
        stats.findings.join("\n")
    );
    println!(
        "huge lengths: {} inputs, most allocated {} bytes, slowest {:?}",
        stats.inputs, stats.max_alloc, stats.max_time
    );
}

/// Writes the corpus as the cargo-fuzz seed corpus when `PYPELININ_FUZZ_CORPUS` names a
/// directory (`.ci/fuzz` does); does nothing otherwise.
#[test]
fn write_seed_corpus() {
    let Ok(dir) = std::env::var("PYPELININ_FUZZ_CORPUS") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    std::fs::create_dir_all(&dir).expect("create the corpus directory");
    let mut frames = corpus();
    // A few edge frames too: another version, an unknown command, an empty frame.
    #[derive(Serialize)]
    struct Frame<T> {
        v: u16,
        id: u64,
        body: T,
    }
    frames.push((
        "edge-version-2".into(),
        rmp_serde::to_vec_named(&Frame {
            v: PROTOCOL_VERSION + 1,
            id: 3,
            body: Request::Heartbeat,
        })
        .expect("encode"),
    ));
    #[derive(Serialize)]
    enum Future {
        Frobnicate { x: u32 },
    }
    frames.push((
        "edge-unknown-command".into(),
        encode(5, &Future::Frobnicate { x: 1 }),
    ));
    frames.push(("edge-deep".into(), submit_with(&nest(&[0x91], 200))));
    for (name, bytes) in frames {
        std::fs::write(dir.join(name), bytes).expect("write a seed");
    }
}
