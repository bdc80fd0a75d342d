//! Fuzzes the wire decoder with arbitrary bytes, as every peer gets them: the router
//! decodes `Request`s, brokers, pipeliners and clients `FromRouter` frames, subscribers
//! `Event`s. A crash is a panic, an abort (stack overflow, allocation failure), a
//! timeout or a memory blow-up (libFuzzer's `-rss_limit_mb`, `-malloc_limit_mb`).
//!
//! Beyond "does not crash" it checks that a refusal is a decoding error, and that what
//! decodes encodes back to the same message.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pypelinin_common::protocol::{
    decode, encode, DecodeError, Event, FromRouter, ProtocolError, Request, MAX_FRAME_BYTES,
};

/// A refusal must be one of the errors decoding gives.
fn check_error(e: DecodeError) {
    match e.error {
        ProtocolError::Malformed(m) => assert!(!m.is_empty()),
        ProtocolError::UnknownCommand(m) => assert!(!m.is_empty() && e.id.is_some()),
        ProtocolError::Version { got, want } => assert!(got != want && e.id.is_some()),
        ProtocolError::TooLarge { bytes, .. } => assert!(bytes > MAX_FRAME_BYTES),
        other => panic!("not a decoding error: {other:?}"),
    }
}

/// Decodes `data` as a `$t`; what decodes must encode back to the same id and message.
macro_rules! check {
    ($t:ty, $data:expr) => {
        match decode::<$t>($data) {
            Ok((id, msg)) => {
                let again = encode(id, &msg);
                let (id2, back) = decode::<$t>(&again).expect("a re-encoded message decodes");
                assert_eq!(id, id2);
                assert_eq!(format!("{msg:?}"), format!("{back:?}"));
            }
            Err(e) => check_error(e),
        }
    };
}

fuzz_target!(|data: &[u8]| {
    check!(Request, data);
    check!(FromRouter, data);
    check!(Event, data);
});
