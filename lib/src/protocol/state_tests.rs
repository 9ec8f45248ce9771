//! Tests of the warm-state frames: round trips, the byte layouts `docs/PROTOCOL.md` gives, and
//! malformed bodies.

use bytes::{BufMut, Bytes, BytesMut};
use postgres_types::Type;
use proptest::prelude::*;

use super::*;

fn encode_req(r: &Request) -> BytesMut {
    let mut buf = BytesMut::new();
    r.encode(&mut buf);
    buf
}

fn encode_resp(r: &Response) -> BytesMut {
    let mut buf = BytesMut::new();
    r.encode(&mut buf);
    buf
}

fn frame(tag: u8, body: &[u8]) -> BytesMut {
    let mut f = BytesMut::new();
    f.put_u8(tag);
    f.put_u32(body.len() as u32);
    f.put_slice(body);
    f
}

fn execute() -> Execute {
    Execute {
        sql: "SELECT name FROM countries WHERE code = $1".into(),
        types: vec![25],
        params: vec![
            Param {
                oid: 25,
                value: Some(Bytes::from_static(b"FR")),
            },
            Param {
                oid: 23,
                value: None,
            },
        ],
    }
}

fn all_requests() -> Vec<Request> {
    vec![
        StateRequest::Get { key: "k".into() },
        StateRequest::Get { key: "".into() },
        StateRequest::Put(Put {
            key: "idem:42".into(),
            value: Bytes::from_static(b"\0\xffvalue"),
            ttl_ms: Some(60_000),
        }),
        StateRequest::Put(Put {
            key: "k".into(),
            value: Bytes::new(),
            ttl_ms: None,
        }),
        StateRequest::Delete { key: "k".into() },
        StateRequest::CompareAndSet(CompareAndSet {
            key: "counter".into(),
            expected: None,
            new: Some(Bytes::from_static(b"1")),
            ttl_ms: Some(1),
        }),
        StateRequest::CompareAndSet(CompareAndSet {
            key: "counter".into(),
            expected: Some(Bytes::new()),
            new: None,
            ttl_ms: None,
        }),
        StateRequest::Warm {
            name: "countries".into(),
        },
        StateRequest::CachedExecute(CachedExecute {
            ttl_ms: 5_000,
            swr_ms: 0,
            execute: execute(),
        }),
    ]
    .into_iter()
    .map(Request::State)
    .collect()
}

fn all_responses() -> Vec<Response> {
    vec![
        StateResponse::Value(Bytes::from_static(b"v")),
        StateResponse::Value(Bytes::new()),
        StateResponse::NotFound,
        StateResponse::Applied(true),
        StateResponse::Applied(false),
        StateResponse::WarmOk(WarmOk {
            columns: vec![
                Column {
                    name: "code".into(),
                    type_: Type::TEXT,
                },
                Column {
                    name: "population".into(),
                    type_: Type::INT8,
                },
            ],
            age_ms: 1234,
        }),
        StateResponse::WarmOk(WarmOk {
            columns: vec![],
            age_ms: 0,
        }),
        StateResponse::Cached(CacheOutcome::Hit),
        StateResponse::Cached(CacheOutcome::Stale),
        StateResponse::Cached(CacheOutcome::Miss),
    ]
    .into_iter()
    .map(Response::State)
    .collect()
}

#[test]
fn every_state_frame_round_trips() {
    for r in all_requests() {
        let mut buf = encode_req(&r);
        assert_eq!(
            Request::decode(&mut buf, DEFAULT_MAX_FRAME).unwrap(),
            Some(r)
        );
        assert!(buf.is_empty());
    }
    for r in all_responses() {
        let mut buf = encode_resp(&r);
        assert_eq!(
            Response::decode(&mut buf, DEFAULT_MAX_FRAME).unwrap(),
            Some(r)
        );
        assert!(buf.is_empty());
    }
}

#[test]
fn state_layouts() {
    let put = encode_req(&Request::State(StateRequest::Put(Put {
        key: "k".into(),
        value: Bytes::from_static(b"ab"),
        ttl_ms: Some(7),
    })));
    let mut body = vec![0, 0, 0, 1, b'k', 0, 0, 0, 2, b'a', b'b'];
    body.extend_from_slice(&7u64.to_be_bytes());
    assert_eq!(&put[..], &frame(b'S', &body)[..]);

    let cas = encode_req(&Request::State(StateRequest::CompareAndSet(
        CompareAndSet {
            key: "k".into(),
            expected: None,
            new: Some(Bytes::from_static(b"x")),
            ttl_ms: None,
        },
    )));
    let mut body = vec![0, 0, 0, 1, b'k', 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, b'x'];
    body.extend_from_slice(&0u64.to_be_bytes());
    assert_eq!(&cas[..], &frame(b'A', &body)[..]);

    assert_eq!(
        &encode_req(&Request::State(StateRequest::Get { key: "k".into() }))[..],
        &frame(b'G', &[0, 0, 0, 1, b'k'])[..]
    );
    assert_eq!(
        &encode_resp(&Response::State(StateResponse::NotFound))[..],
        &frame(b'n', &[])[..]
    );
    assert_eq!(
        &encode_resp(&Response::State(StateResponse::Applied(true)))[..],
        &frame(b'a', &[1])[..]
    );
    assert_eq!(
        &encode_resp(&Response::State(StateResponse::Cached(CacheOutcome::Miss)))[..],
        &frame(b'f', &[2])[..]
    );
    // The cached execute is two u64s and then exactly an Execute body.
    let mut plain = encode_req(&Request::Execute(execute()));
    let cached = encode_req(&Request::State(StateRequest::CachedExecute(
        CachedExecute {
            ttl_ms: 1,
            swr_ms: 2,
            execute: execute(),
        },
    )));
    assert_eq!(cached[0], b'K');
    assert_eq!(&cached[5..13], &1u64.to_be_bytes());
    assert_eq!(&cached[13..21], &2u64.to_be_bytes());
    assert_eq!(&cached[21..], &plain.split_off(5)[..]);
}

#[test]
fn malformed_state_frames_are_refused() {
    let cases: Vec<(BytesMut, bool)> = vec![
        // A NULL value in a Put.
        (
            frame(
                b'S',
                &[
                    0, 0, 0, 1, b'k', 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0,
                ],
            ),
            true,
        ),
        // A cached execute with no time to live.
        (
            {
                let mut f = encode_req(&Request::State(StateRequest::CachedExecute(
                    CachedExecute {
                        ttl_ms: 1,
                        swr_ms: 0,
                        execute: execute(),
                    },
                )));
                f[5..13].copy_from_slice(&0u64.to_be_bytes());
                f
            },
            true,
        ),
        // A truncated Get and a key that is not UTF-8.
        (frame(b'G', &[0, 0, 0, 4, b'k']), true),
        (frame(b'G', &[0, 0, 0, 1, 0xff]), true),
        // Trailing bytes after a Delete.
        (frame(b'D', &[0, 0, 0, 1, b'k', 0]), true),
        // Out-of-range flags.
        (frame(b'a', &[2]), false),
        (frame(b'f', &[3]), false),
        // A NULL value answered.
        (frame(b'v', &[0xff, 0xff, 0xff, 0xff]), false),
        // A WarmOk claiming more columns than it holds.
        (frame(b'w', &[0xff, 0xff]), false),
    ];
    for (bytes, is_request) in cases {
        let mut buf = bytes.clone();
        let result = if is_request {
            Request::decode(&mut buf, DEFAULT_MAX_FRAME).map(|_| ())
        } else {
            Response::decode(&mut buf, DEFAULT_MAX_FRAME).map(|_| ())
        };
        assert!(result.is_err(), "{bytes:?} decoded");
    }
    // Each direction's tags are unknown to the other.
    for tag in *b"GSDAWK" {
        assert_eq!(
            Response::decode(&mut frame(tag, &[]), DEFAULT_MAX_FRAME),
            Err(FrameError::UnknownTag(tag))
        );
    }
    for tag in *b"vnwaf" {
        assert_eq!(
            Request::decode(&mut frame(tag, &[]), DEFAULT_MAX_FRAME),
            Err(FrameError::UnknownTag(tag))
        );
    }
}

proptest! {
    #[test]
    fn arbitrary_puts_and_swaps_round_trip(
        key in ".{0,40}",
        value in proptest::collection::vec(any::<u8>(), 0..300),
        expected in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..50)),
        ttl in proptest::option::of(1u64..u64::MAX),
    ) {
        for r in [
            StateRequest::Put(Put { key: key.clone(), value: Bytes::from(value.clone()), ttl_ms: ttl }),
            StateRequest::CompareAndSet(CompareAndSet {
                key: key.clone(),
                expected: expected.clone().map(Bytes::from),
                new: Some(Bytes::from(value.clone())),
                ttl_ms: ttl,
            }),
        ] {
            let r = Request::State(r);
            let mut buf = encode_req(&r);
            prop_assert_eq!(Request::decode(&mut buf, DEFAULT_MAX_FRAME).unwrap(), Some(r));
        }
    }

    #[test]
    fn arbitrary_bytes_after_a_state_tag_never_panic(
        tag in proptest::sample::select(b"GSDAWKvnwaf".to_vec()),
        body in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let _ = Request::decode(&mut frame(tag, &body), DEFAULT_MAX_FRAME);
        let _ = Response::decode(&mut frame(tag, &body), DEFAULT_MAX_FRAME);
    }
}
