//! Pipeline ('M') and NotRun ('m'): round trips, the exact layout, and malformed input.

use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;

use super::*;

const MAX: usize = DEFAULT_MAX_FRAME;

fn execute(sql: &str, params: Vec<Option<&'static [u8]>>) -> Execute {
    Execute {
        sql: sql.into(),
        types: vec![23],
        params: params
            .into_iter()
            .map(|v| Param {
                oid: 23,
                value: v.map(Bytes::from_static),
            })
            .collect(),
    }
}

fn samples() -> Vec<Pipeline> {
    vec![
        Pipeline {
            transaction: None,
            statements: vec![],
        },
        Pipeline {
            transaction: None,
            statements: vec![
                execute("SELECT $1", vec![Some(&[0, 0, 0, 1])]),
                execute("SELECT $1", vec![None]),
                execute("", vec![Some(&[])]),
            ],
        },
        Pipeline {
            transaction: Some(Begin::default()),
            statements: vec![execute(
                "INSERT INTO t VALUES ($1)",
                vec![Some(&[0, 0, 0, 7])],
            )],
        },
        Pipeline {
            transaction: Some(Begin {
                isolation: IsolationLevel::Serializable,
                read_only: Some(true),
                deferrable: Some(false),
            }),
            statements: vec![execute("SELECT 'ünïcödé ✓'", vec![])],
        },
    ]
}

fn round_trip_request(r: &Request) {
    let mut buf = BytesMut::new();
    r.encode(&mut buf);
    let declared = u32::from_be_bytes(buf[1..5].try_into().unwrap()) as usize;
    assert_eq!(declared, buf.len() - HEADER_LEN);
    assert_eq!(buf[0], b'M');
    assert_eq!(Request::decode(&mut buf, MAX).unwrap().as_ref(), Some(r));
    assert!(buf.is_empty());
}

fn decode(bytes: &[u8]) -> Result<Option<Request>, FrameError> {
    Request::decode(&mut BytesMut::from(bytes), MAX)
}

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&(body.len() as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

#[test]
fn pipelines_round_trip() {
    for p in samples() {
        round_trip_request(&Request::Pipeline(p));
    }
}

#[test]
fn not_run_round_trips_and_is_empty() {
    let mut buf = BytesMut::new();
    Response::NotRun.encode(&mut buf);
    assert_eq!(&buf[..], b"m\0\0\0\0");
    assert_eq!(Response::decode(&mut buf, MAX), Ok(Some(Response::NotRun)));
    assert!(buf.is_empty());
}

#[test]
fn pipeline_layout() {
    let p = Request::Pipeline(Pipeline {
        transaction: Some(Begin {
            isolation: IsolationLevel::RepeatableRead,
            read_only: Some(false),
            deferrable: None,
        }),
        statements: vec![execute("S", vec![Some(&[9]), None])],
    });
    let mut buf = BytesMut::new();
    p.encode(&mut buf);
    let mut body = vec![1u8, 2, 1, 0]; // transaction, REPEATABLE READ, READ WRITE, default
    body.extend_from_slice(&[0, 1]); // one statement
    body.extend_from_slice(&[0, 0, 0, 1, b'S']); // sql
    body.extend_from_slice(&[0, 1, 0, 0, 0, 23]); // one declared type
    body.extend_from_slice(&[0, 2]); // two parameters
    body.extend_from_slice(&[0, 0, 0, 23, 0, 0, 0, 1, 9]);
    body.extend_from_slice(&[0, 0, 0, 23, 0xff, 0xff, 0xff, 0xff]);
    assert_eq!(&buf[..], &frame(b'M', &body)[..]);
    let plain = frame(b'M', &[0, 0, 0]);
    assert_eq!(
        decode(&plain),
        Ok(Some(Request::Pipeline(Pipeline {
            transaction: None,
            statements: vec![]
        })))
    );
}

#[test]
fn malformed_pipelines_are_refused() {
    // Mode out of range.
    assert_eq!(
        decode(&frame(b'M', &[2, 0, 0])),
        Err(FrameError::Invalid("pipeline mode out of range"))
    );
    // Isolation level out of range inside the transaction options.
    assert_eq!(
        decode(&frame(b'M', &[1, 9, 0, 0, 0, 0])),
        Err(FrameError::Invalid("isolation level out of range"))
    );
    // A count of statements that the body cannot hold.
    assert_eq!(
        decode(&frame(b'M', &[0, 0xff, 0xff])),
        Err(FrameError::Truncated("pipeline statements"))
    );
    // A statement cut short.
    assert_eq!(
        decode(&frame(
            b'M',
            &[0, 0, 1, 0, 0, 0, 20, b'a', 0, 0, 0, 0, 0, 0, 0, 0, 0]
        )),
        Err(FrameError::Truncated("sql"))
    );
    // Bytes after the last statement.
    assert_eq!(
        decode(&frame(b'M', &[0, 0, 0, 7])),
        Err(FrameError::TrailingBytes {
            tag: b'M',
            extra: 1
        })
    );
    // The mode byte missing altogether.
    assert_eq!(
        decode(&frame(b'M', &[])),
        Err(FrameError::Truncated("pipeline mode"))
    );
    // NotRun has no body.
    assert_eq!(
        Response::decode(&mut BytesMut::from(&frame(b'm', &[0])[..]), MAX),
        Err(FrameError::TrailingBytes {
            tag: b'm',
            extra: 1
        })
    );
}

#[test]
fn a_pipeline_over_the_limit_is_refused_before_it_is_buffered() {
    let mut buf = BytesMut::new();
    buf.put_u8(b'M');
    buf.put_u32(MAX as u32 + 1);
    assert!(matches!(
        Request::decode(&mut buf, MAX),
        Err(FrameError::TooLarge { .. })
    ));
}

proptest! {
    #[test]
    fn arbitrary_pipelines_round_trip(
        tx in proptest::option::of((0u8..4, proptest::option::of(any::<bool>()), proptest::option::of(any::<bool>()))),
        statements in proptest::collection::vec(
            (".{0,20}", proptest::collection::vec(any::<u32>(), 0..3),
             proptest::collection::vec((any::<u32>(), proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16))), 0..4)),
            0..6),
    ) {
        let transaction = tx.map(|(iso, read_only, deferrable)| Begin {
            isolation: match iso {
                0 => IsolationLevel::Default,
                1 => IsolationLevel::ReadCommitted,
                2 => IsolationLevel::RepeatableRead,
                _ => IsolationLevel::Serializable,
            },
            read_only,
            deferrable,
        });
        let statements = statements
            .into_iter()
            .map(|(sql, types, params)| Execute {
                sql,
                types,
                params: params
                    .into_iter()
                    .map(|(oid, v)| Param { oid, value: v.map(Bytes::from) })
                    .collect(),
            })
            .collect();
        round_trip_request(&Request::Pipeline(Pipeline { transaction, statements }));
    }

    #[test]
    fn pipeline_bodies_of_garbage_never_panic(body in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = decode(&frame(b'M', &body));
    }
}
