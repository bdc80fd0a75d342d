//! Bad input over a real socket: the router answers with typed errors and keeps serving.

use std::time::Duration;

use pypelinin_common::protocol::{
    decode, encode, FromRouter, PipelineId, ProtocolError, Reply, Request, MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
};
use pypelinin_common::PipelineSpec;
use pypelinin_tests::Cluster;

fn raw_dealer(api: &str) -> (zmq::Context, zmq::Socket) {
    let ctx = zmq::Context::new();
    let s = ctx.socket(zmq::DEALER).unwrap();
    s.set_linger(0).unwrap();
    s.set_rcvtimeo(5_000).unwrap();
    s.connect(api).unwrap();
    (ctx, s)
}

fn recv_reply(s: &zmq::Socket) -> (u64, Reply) {
    let bytes = s.recv_bytes(0).expect("router must answer");
    match decode::<FromRouter>(&bytes).expect("router replies decode") {
        (id, FromRouter::Reply(r)) => (id, r),
        (_, other) => panic!("expected a reply, got {other:?}"),
    }
}

fn expect_error(s: &zmq::Socket) -> (u64, ProtocolError) {
    match recv_reply(s) {
        (id, Reply::Error(e)) => (id, e),
        (_, other) => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn malformed_frames_and_unknown_commands_get_typed_errors_and_the_router_keeps_serving() {
    let c = Cluster::start(1, 1);
    let (_ctx, s) = raw_dealer(&c.api);

    s.send(&b"\xc1 this is not msgpack"[..], 0).unwrap();
    assert!(matches!(expect_error(&s), (0, ProtocolError::Malformed(_))));

    s.send(&b""[..], 0).unwrap();
    assert!(matches!(expect_error(&s), (0, ProtocolError::Malformed(_))));

    // Truncated: the envelope of a real request cut in half.
    let good = encode(
        41,
        &Request::Status {
            id: PipelineId::new(),
        },
    );
    s.send(&good[..good.len() / 2], 0).unwrap();
    assert!(matches!(expect_error(&s), (_, ProtocolError::Malformed(_))));

    // A well-formed envelope with a command this router does not know.
    #[derive(serde::Serialize)]
    enum Future {
        LaunchRockets { count: u32 },
    }
    s.send(encode(42, &Future::LaunchRockets { count: 3 }), 0)
        .unwrap();
    let (id, e) = expect_error(&s);
    assert_eq!(id, 42, "the error answers the request's id");
    assert!(
        matches!(&e, ProtocolError::UnknownCommand(m) if m.contains("LaunchRockets")),
        "{e:?}"
    );

    // Another protocol version.
    #[derive(serde::Serialize)]
    struct Old {
        v: u16,
        id: u64,
        body: Request,
    }
    let old = rmp_serde::to_vec_named(&Old {
        v: PROTOCOL_VERSION + 1,
        id: 43,
        body: Request::Heartbeat,
    })
    .unwrap();
    s.send(old, 0).unwrap();
    assert_eq!(
        expect_error(&s),
        (
            43,
            ProtocolError::Version {
                got: PROTOCOL_VERSION + 1,
                want: PROTOCOL_VERSION
            }
        )
    );

    // Two payload frames where one is expected.
    s.send_multipart([&b"one"[..], &b"two"[..]], 0).unwrap();
    assert!(matches!(expect_error(&s), (_, ProtocolError::Malformed(m)) if m.contains("frames")));

    // Oversized.
    s.send(vec![0x90u8; MAX_FRAME_BYTES + 10], 0).unwrap();
    assert!(matches!(
        expect_error(&s),
        (_, ProtocolError::TooLarge { .. })
    ));

    // Unknown ids and peers that never said hello.
    let ghost = PipelineId::new();
    s.send(encode(44, &Request::Status { id: ghost }), 0)
        .unwrap();
    assert_eq!(
        expect_error(&s),
        (44, ProtocolError::UnknownPipeline(ghost))
    );
    s.send(encode(45, &Request::Heartbeat), 0).unwrap();
    assert_eq!(expect_error(&s), (45, ProtocolError::UnknownPeer));
    s.send(encode(46, &Request::JobDone(vec![])), 0).unwrap();
    assert_eq!(expect_error(&s), (46, ProtocolError::UnknownPeer));
    s.send(encode(47, &Request::Advance(vec![])), 0).unwrap();
    assert_eq!(expect_error(&s), (47, ProtocolError::UnknownPeer));

    // After all that, the router still serves: a real pipeline runs to the end.
    let mut pm = c.client();
    let id = pm
        .start(
            &PipelineSpec::default()
                .job("a", "Noop", &[])
                .job("b", "Echo", &["a"]),
        )
        .unwrap();
    assert!(pm.wait(id, Duration::from_secs(60)).unwrap().is_success());
    assert!(c.router.child.id() > 0);
}

#[test]
fn a_req_socket_gets_plain_request_reply_and_resubmits_are_idempotent() {
    let c = Cluster::start(0, 1);
    let ctx = zmq::Context::new();
    let s = ctx.socket(zmq::REQ).unwrap();
    s.set_linger(0).unwrap();
    s.set_rcvtimeo(5_000).unwrap();
    s.connect(&c.api).unwrap();
    let id = PipelineId::new();
    let spec = PipelineSpec::default().job("a", "Noop", &[]);
    for _ in 0..2 {
        s.send(
            encode(
                1,
                &Request::Submit {
                    id,
                    pipeline: spec.clone(),
                },
            ),
            0,
        )
        .unwrap();
        assert!(matches!(recv_reply(&s), (1, Reply::Submitted { id: got }) if got == id));
    }
    let other = PipelineSpec::default().job("b", "Noop", &[]);
    s.send(
        encode(
            2,
            &Request::Submit {
                id,
                pipeline: other,
            },
        ),
        0,
    )
    .unwrap();
    assert!(matches!(
        recv_reply(&s),
        (2, Reply::Error(ProtocolError::Conflict(_)))
    ));
    let mut pm = c.client();
    assert_eq!(
        pm.list(10).unwrap().len(),
        1,
        "a resubmit must not create a second pipeline"
    );
}

#[test]
fn an_unreachable_router_is_reported_with_its_address() {
    let mut pm =
        pypelinin_client::PipelineManager::connect("tcp://127.0.0.1:9", "tcp://127.0.0.1:10")
            .unwrap();
    pm.set_patience(Duration::from_millis(200), 2);
    let err = pm.status(PipelineId::new()).unwrap_err().to_string();
    assert!(
        err.contains("tcp://127.0.0.1:9") && err.contains("2 attempts"),
        "{err}"
    );
}
