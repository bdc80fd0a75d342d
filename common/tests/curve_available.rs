//! The libzmq this workspace links (vendor/zmq-sys) must have CURVE: without it every
//! `--curve-secret` would have to be refused, and the cluster could only run in the clear.

#[test]
fn libzmq_has_curve() {
    assert_eq!(zmq::has("curve"), Some(true));
    // A key pair can be made and survives a Z85 round trip.
    let pair = zmq::CurveKeyPair::new().expect("curve key pair");
    let text = zmq::z85_encode(&pair.public_key).unwrap();
    assert_eq!(text.len(), 40);
    assert_eq!(zmq::z85_decode(&text).unwrap(), pair.public_key.to_vec());
}
