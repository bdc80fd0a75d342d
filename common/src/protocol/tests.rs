//! Unit tests of the protocol: round trips, and typed refusals of garbage,
//! truncation, foreign versions, unknown commands and oversized or hostile frames.

use super::*;
use crate::pipeline::PipelineSpec;

#[test]
fn round_trips_requests_and_replies() {
    let spec = PipelineSpec::default().job("a", "Noop", &[]);
    let id = PipelineId::new();
    let bytes = encode(
        7,
        &Request::Submit {
            id,
            pipeline: spec.clone(),
        },
    );
    let (rid, req): (u64, Request) = decode(&bytes).unwrap();
    assert_eq!(rid, 7);
    match req {
        Request::Submit { id: got, pipeline } => {
            assert_eq!(got, id);
            assert_eq!(pipeline, spec);
        }
        other => panic!("{other:?}"),
    }
    let bytes = encode(
        0,
        &FromRouter::Reply(Reply::Error(ProtocolError::UnknownPeer)),
    );
    let (_, back): (u64, FromRouter) = decode(&bytes).unwrap();
    assert!(matches!(
        back,
        FromRouter::Reply(Reply::Error(ProtocolError::UnknownPeer))
    ));
}

#[test]
fn garbage_truncation_versions_and_unknown_commands_are_typed() {
    let e = decode::<Request>(b"\xc1\xff garbage").unwrap_err();
    assert!(matches!(e.error, ProtocolError::Malformed(_)) && e.id.is_none());

    let good = encode(9, &Request::Heartbeat);
    for cut in 0..good.len() {
        assert!(decode::<Request>(&good[..cut]).is_err());
    }

    #[derive(Serialize)]
    enum Future {
        Frobnicate { x: u32 },
    }
    let e = decode::<Request>(&encode(5, &Future::Frobnicate { x: 1 })).unwrap_err();
    assert_eq!(e.id, Some(5));
    assert!(
        matches!(e.error, ProtocolError::UnknownCommand(_)),
        "{:?}",
        e.error
    );

    let old = rmp_serde::to_vec_named(&Frame {
        v: 99,
        id: 3,
        body: Request::Heartbeat,
    })
    .unwrap();
    let e = decode::<Request>(&old).unwrap_err();
    assert_eq!(
        e.error,
        ProtocolError::Version {
            got: 99,
            want: PROTOCOL_VERSION
        }
    );

    // A newer peer's message we cannot read is refused for its version, not as garbage.
    let newer = rmp_serde::to_vec_named(&Frame {
        v: 99,
        id: 4,
        body: "Frobnicate",
    })
    .unwrap();
    let e = decode::<Request>(&newer).unwrap_err();
    assert_eq!(e.id, Some(4));
    assert_eq!(
        e.error,
        ProtocolError::Version {
            got: 99,
            want: PROTOCOL_VERSION
        }
    );

    let big = vec![0u8; MAX_FRAME_BYTES + 1];
    assert!(matches!(
        decode::<Request>(&big).unwrap_err().error,
        ProtocolError::TooLarge { .. }
    ));

    // Trailing bytes after a valid frame.
    let mut extra = encode(8, &Request::Heartbeat);
    extra.extend_from_slice(b"\xde\xad");
    let e = decode::<Request>(&extra).unwrap_err();
    assert_eq!(e.id, Some(8));
    assert!(matches!(&e.error, ProtocolError::Malformed(m) if m.contains("after the end")));

    // Millions of one-byte values: refused before any is built.
    let mut many = vec![0xdd, 0x00, 0x2d, 0xc6, 0xc0]; // array of 3,000,000
    many.extend(std::iter::repeat_n(0xc0u8, 3_000_000));
    let e = decode::<Request>(&many).unwrap_err();
    assert!(
        matches!(&e.error, ProtocolError::Malformed(m) if m.contains("values in one frame")),
        "{:?}",
        e.error
    );

    // A container announcing more values than there are bytes.
    let e = decode::<Request>(&[0xdd, 0xff, 0xff, 0xff, 0xff, 0xc0]).unwrap_err();
    assert!(matches!(&e.error, ProtocolError::Malformed(m) if m.contains("announces")));

    // 10k nested arrays: refused by the depth bound, not by a stack overflow.
    let mut deep = vec![0x91u8; 10_000];
    deep.push(0xc0);
    assert!(decode::<Request>(&deep).is_err());
}

#[test]
fn log_lines_travel_as_bytes_whatever_they_hold() {
    let line = LogLine {
        seq: 3,
        at_ms: 1_700_000_000_000,
        stream: LogStream::Stderr,
        bytes: vec![b'o', b'k', 0xff, 0xfe, 0, b'\r'],
        dropped: 12,
    };
    let job = JobRef {
        pipeline: PipelineId::new(),
        job: 1,
        attempt: 2,
    };
    let req = Request::Logs(vec![LogChunk {
        job,
        line: line.clone(),
    }]);
    let (_, back): (u64, Request) = decode(&encode(1, &req)).unwrap();
    match back {
        Request::Logs(chunks) => assert_eq!(chunks[0].line, line),
        other => panic!("{other:?}"),
    }
    // A full line is one MessagePack `bin` value, not one value per byte: a page of a
    // whole attempt's log is far within the frame's element bound.
    let long = LogLine {
        bytes: vec![0x80; MAX_LOG_LINE_BYTES],
        ..line
    };
    let page = LogPage {
        attempt: 2,
        attempts: 2,
        lines: vec![long; MAX_LOG_BYTES_PER_ATTEMPT / MAX_LOG_LINE_BYTES],
        dropped_bytes: 5,
        finished: true,
        job_final: false,
    };
    let bytes = encode(4, &FromRouter::Reply(Reply::Logs(page.clone())));
    assert!(bytes.len() < MAX_FRAME_BYTES);
    let (_, back): (u64, FromRouter) = decode(&bytes).unwrap();
    assert!(matches!(back, FromRouter::Reply(Reply::Logs(p)) if p == page));
}

#[test]
fn pool_requests_and_replies_round_trip() {
    for req in [
        PoolRequest::Set {
            name: "db".into(),
            slots: 4,
        },
        PoolRequest::List,
        PoolRequest::Remove { name: "db".into() },
    ] {
        let bytes = encode(3, &Request::Pool(req.clone()));
        match decode::<Request>(&bytes).unwrap() {
            (3, Request::Pool(back)) => assert_eq!(back, req),
            other => panic!("{other:?}"),
        }
    }
    let pools = vec![PoolStatus {
        name: "db".into(),
        capacity: 4,
        used: 5,
        queued: 12,
    }];
    let bytes = encode(4, &FromRouter::Reply(Reply::Pools(pools.clone())));
    match decode::<FromRouter>(&bytes).unwrap() {
        (4, FromRouter::Reply(Reply::Pools(back))) => assert_eq!(back, pools),
        other => panic!("{other:?}"),
    }
    let bytes = encode(
        5,
        &FromRouter::Reply(Reply::Error(ProtocolError::UnknownPool("db".into()))),
    );
    let (_, back): (u64, FromRouter) = decode(&bytes).unwrap();
    assert!(matches!(
        back,
        FromRouter::Reply(Reply::Error(ProtocolError::UnknownPool(n))) if n == "db"
    ));
}

#[test]
fn a_cluster_config_reads_pools_and_a_schedule_reads_max_active() {
    let c: ClusterConfig = serde_json::from_str(r#"{"pools": {"db": 4}}"#).unwrap();
    assert_eq!(c.pools.get("db"), Some(&4));
    let none: ClusterConfig = serde_json::from_str("{}").unwrap();
    assert!(none.pools.is_empty());
    let s: crate::schedule::ScheduleSpec = serde_json::from_value(serde_json::json!({
        "name": "n", "cron": "* * * * *", "max_active": 3,
        "pipeline": PipelineSpec::default().job("a", "W", &[])
    }))
    .unwrap();
    assert_eq!(s.max_running, 3);
}
