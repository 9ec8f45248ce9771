//! Tests of the Savepoint, SimpleQuery and Columns frames: round trips, byte layouts as
//! `docs/PROTOCOL.md` gives them, refused bodies, and response tags that no two frames share.

use bytes::{BufMut, BytesMut};

use super::*;

fn frame(tag: u8, body: &[u8]) -> BytesMut {
    let mut f = BytesMut::new();
    f.put_u8(tag);
    f.put_u32(body.len() as u32);
    f.put_slice(body);
    f
}

fn round_trip_request(r: &Request) -> BytesMut {
    let mut buf = BytesMut::new();
    r.encode(&mut buf);
    let bytes = buf.clone();
    let got = Request::decode(&mut buf, DEFAULT_MAX_FRAME)
        .unwrap()
        .unwrap();
    assert_eq!(&got, r);
    assert!(buf.is_empty());
    bytes
}

fn round_trip_response(r: &Response) -> BytesMut {
    let mut buf = BytesMut::new();
    r.encode(&mut buf);
    let bytes = buf.clone();
    let got = Response::decode(&mut buf, DEFAULT_MAX_FRAME)
        .unwrap()
        .unwrap();
    assert_eq!(&got, r);
    assert!(buf.is_empty());
    bytes
}

#[test]
fn savepoint_frames_round_trip_with_the_documented_layout() {
    for (op, byte) in [
        (SavepointOp::Create, 0u8),
        (SavepointOp::Release, 1),
        (SavepointOp::RollbackTo, 2),
    ] {
        let request = Request::Savepoint(Savepoint {
            op,
            name: "sp_1".into(),
        });
        let bytes = round_trip_request(&request);
        let mut body = vec![byte];
        body.extend_from_slice(&4u32.to_be_bytes());
        body.extend_from_slice(b"sp_1");
        assert_eq!(bytes, frame(b'V', &body));
    }
}

#[test]
fn savepoint_names_are_refused_when_empty_with_nul_or_too_long() {
    for name in [
        String::new(),
        "a\0b".to_owned(),
        "x".repeat(MAX_SAVEPOINT_NAME + 1),
    ] {
        let mut body = vec![0u8];
        body.extend_from_slice(&(name.len() as u32).to_be_bytes());
        body.extend_from_slice(name.as_bytes());
        let err = Request::decode(&mut frame(b'V', &body), DEFAULT_MAX_FRAME).unwrap_err();
        assert!(matches!(err, FrameError::Invalid(_)), "{name:?}: {err}");
        assert!(Savepoint::check_name(&name).is_err());
    }
    let err =
        Request::decode(&mut frame(b'V', &[3, 0, 0, 0, 1, b'a']), DEFAULT_MAX_FRAME).unwrap_err();
    assert!(matches!(err, FrameError::Invalid(_)), "{err}");
    assert!(Savepoint::check_name(&"x".repeat(MAX_SAVEPOINT_NAME)).is_ok());
}

#[test]
fn savepoint_sql_quotes_the_name() {
    let sp = |op, name: &str| {
        Savepoint {
            op,
            name: name.into(),
        }
        .sql()
    };
    assert_eq!(sp(SavepointOp::Create, "sp_1"), r#"SAVEPOINT "sp_1""#);
    assert_eq!(
        sp(SavepointOp::Release, r#"a"; DROP TABLE t; --"#),
        r#"RELEASE SAVEPOINT "a""; DROP TABLE t; --""#
    );
    assert_eq!(
        sp(SavepointOp::RollbackTo, "Mixed Case"),
        r#"ROLLBACK TO SAVEPOINT "Mixed Case""#
    );
}

#[test]
fn simple_query_and_columns_round_trip_with_the_documented_layout() {
    let bytes = round_trip_request(&Request::SimpleQuery("SELECT 1; SELECT 2".into()));
    let mut body = 18u32.to_be_bytes().to_vec();
    body.extend_from_slice(b"SELECT 1; SELECT 2");
    assert_eq!(bytes, frame(b'U', &body));

    let bytes = round_trip_response(&Response::Columns(vec!["a".into(), "bc".into()]));
    assert_eq!(
        bytes,
        frame(b'r', &[0, 2, 0, 0, 0, 1, b'a', 0, 0, 0, 2, b'b', b'c'])
    );
    round_trip_response(&Response::Columns(Vec::new()));
    // A count of names larger than the body is refused before anything is reserved for it.
    let err = Response::decode(&mut frame(b'r', &[0xff, 0xff]), DEFAULT_MAX_FRAME).unwrap_err();
    assert!(matches!(err, FrameError::Truncated(_)), "{err}");
}

/// Each response frame has a tag of its own: two frames on one tag would make one of them
/// decode as the other.
#[test]
fn no_two_responses_share_a_tag() {
    let samples = [
        Response::Ok,
        Response::Pong,
        Response::NotRun,
        Response::Complete(0),
        Response::Rows(Vec::new()),
        Response::Columns(Vec::new()),
        Response::Stats(Stats::default()),
        Response::Error(WireError::extension("XX000", "x")),
        Response::Notice(WireError::extension("01000", "x")),
        Response::State(StateResponse::NotFound),
        Response::State(StateResponse::Value(bytes::Bytes::from_static(b"v"))),
        Response::State(StateResponse::Applied(true)),
    ];
    let mut tags = Vec::new();
    for r in &samples {
        let bytes = round_trip_response(r);
        assert!(
            !tags.contains(&bytes[0]),
            "{r:?} reuses tag {}",
            bytes[0] as char
        );
        tags.push(bytes[0]);
    }
}
