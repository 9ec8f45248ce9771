//! Tests of the socket protocol, with no socket: encoding, incremental decoding, and every way a
//! frame can be malformed. The byte-level layouts checked here are the ones `docs/PROTOCOL.md`
//! specifies.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::{BufMut, Bytes, BytesMut};
use postgres_types::{Field, Kind, Type};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::Config;

use super::*;

const MAX: usize = DEFAULT_MAX_FRAME;

// ---------------------------------------------------------------------------------------------
// Allocation tracking: the lying-count tests must show that the decoder never reserves memory
// for items that are not in the frame, not merely that it fails.
// ---------------------------------------------------------------------------------------------

/// Forwards to the system allocator and, while a test on the current thread asks for it, records
/// the largest single allocation.
struct TrackingAlloc;

thread_local! {
    static TRACKING: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note_alloc(size: usize) {
    let _ = TRACKING.try_with(|on| {
        if on.get() {
            let _ = LARGEST.try_with(|m| m.set(m.get().max(size)));
        }
    });
}

// SAFETY: every call is forwarded unchanged to `System`; the thread-locals touched are
// const-initialised `Cell`s, which neither allocate nor run destructors.
unsafe impl GlobalAlloc for TrackingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_alloc(layout.size());
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_alloc(layout.size());
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_alloc(new_size);
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOC: TrackingAlloc = TrackingAlloc;

/// Runs `f` and returns its result with the size of the largest allocation it made.
fn largest_alloc<R>(f: impl FnOnce() -> R) -> (R, usize) {
    LARGEST.with(|m| m.set(0));
    TRACKING.with(|t| t.set(true));
    let r = f();
    TRACKING.with(|t| t.set(false));
    (r, LARGEST.with(Cell::get))
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Requests and responses alike, so that tests can run over both directions.
trait Frame: Sized + PartialEq + std::fmt::Debug {
    fn enc(&self, buf: &mut BytesMut);
    fn dec(buf: &mut BytesMut, max_frame: usize) -> Result<Option<Self>, FrameError>;
}

impl Frame for Request {
    fn enc(&self, buf: &mut BytesMut) {
        self.encode(buf)
    }
    fn dec(buf: &mut BytesMut, max_frame: usize) -> Result<Option<Self>, FrameError> {
        Request::decode(buf, max_frame)
    }
}

impl Frame for Response {
    fn enc(&self, buf: &mut BytesMut) {
        self.encode(buf)
    }
    fn dec(buf: &mut BytesMut, max_frame: usize) -> Result<Option<Self>, FrameError> {
        Response::decode(buf, max_frame)
    }
}

fn encoded<F: Frame>(f: &F) -> BytesMut {
    let mut buf = BytesMut::new();
    f.enc(&mut buf);
    buf
}

/// Encodes, decodes, and checks that the value came back and the buffer is empty.
fn assert_round_trip<F: Frame>(f: &F) {
    let mut buf = encoded(f);
    let declared = u32::from_be_bytes(buf[1..5].try_into().unwrap()) as usize;
    assert_eq!(declared, buf.len() - HEADER_LEN, "length field of {f:?}");
    let got = F::dec(&mut buf, MAX)
        .unwrap_or_else(|e| panic!("{f:?} does not decode: {e}"))
        .unwrap_or_else(|| panic!("{f:?} decodes as incomplete"));
    assert_eq!(&got, f);
    assert!(buf.is_empty(), "{} bytes left after {f:?}", buf.len());
}

fn decode_one<F: Frame>(bytes: &[u8]) -> Result<Option<F>, FrameError> {
    F::dec(&mut BytesMut::from(bytes), MAX)
}

/// Decodes one frame and returns the largest allocation the decoder made.
fn decode_measured<F: Frame>(bytes: &[u8]) -> (Result<Option<F>, FrameError>, usize) {
    let mut buf = BytesMut::from(bytes);
    largest_alloc(|| F::dec(&mut buf, MAX))
}

/// Builds a frame body field by field, independently of the encoder under test.
#[derive(Default)]
struct Body(Vec<u8>);

impl Body {
    fn new() -> Body {
        Body::default()
    }
    fn u8(mut self, v: u8) -> Body {
        self.0.put_u8(v);
        self
    }
    fn u16(mut self, v: u16) -> Body {
        self.0.put_u16(v);
        self
    }
    fn u32(mut self, v: u32) -> Body {
        self.0.put_u32(v);
        self
    }
    fn i32(mut self, v: i32) -> Body {
        self.0.put_i32(v);
        self
    }
    fn u64(mut self, v: u64) -> Body {
        self.0.put_u64(v);
        self
    }
    fn raw(mut self, v: &[u8]) -> Body {
        self.0.put_slice(v);
        self
    }
    /// A string: `u32` length and the bytes.
    fn str(self, s: &[u8]) -> Body {
        self.u32(s.len() as u32).raw(s)
    }
    /// A built-in type descriptor.
    fn builtin(self, oid: u32) -> Body {
        self.u8(0).u32(oid)
    }
    /// The whole frame: tag, body length and body.
    fn frame(self, tag: u8) -> Vec<u8> {
        let mut f = vec![tag];
        f.put_u32(self.0.len() as u32);
        f.extend_from_slice(&self.0);
        f
    }
}

// ---------------------------------------------------------------------------------------------
// Sample values: every variant, with the awkward cases
// ---------------------------------------------------------------------------------------------

fn mood() -> Type {
    Type::new(
        "mood".into(),
        16_385,
        Kind::Enum(vec!["sad".into(), "ok".into(), "".into(), "😀".into()]),
        "public".into(),
    )
}

fn mood_array() -> Type {
    Type::new("_mood".into(), 16_384, Kind::Array(mood()), "public".into())
}

fn email() -> Type {
    Type::new(
        "email".into(),
        16_390,
        Kind::Domain(Type::TEXT),
        "app".into(),
    )
}

fn address() -> Type {
    Type::new(
        "address".into(),
        16_400,
        Kind::Composite(vec![
            Field::new("street".into(), Type::TEXT),
            Field::new("zip".into(), Type::INT4),
            Field::new("tags".into(), Type::TEXT_ARRAY),
            Field::new("mood".into(), mood()),
            Field::new("moods".into(), mood_array()),
            Field::new("contact".into(), email()),
        ]),
        "app".into(),
    )
}

fn custom_types() -> Vec<Type> {
    let floatrange = Type::new(
        "floatrange".into(),
        16_500,
        Kind::Range(Type::FLOAT8),
        "public".into(),
    );
    vec![
        mood(),
        mood_array(),
        email(),
        address(),
        Type::new(
            "_address".into(),
            16_401,
            Kind::Array(address()),
            "app".into(),
        ),
        Type::new(
            "empty_composite".into(),
            16_402,
            Kind::Composite(vec![]),
            "app".into(),
        ),
        Type::new("no_labels".into(), 16_403, Kind::Enum(vec![]), "".into()),
        floatrange.clone(),
        Type::new(
            "floatmultirange".into(),
            16_501,
            Kind::Multirange(floatrange),
            "public".into(),
        ),
        Type::new("citext".into(), 16_600, Kind::Simple, "ext".into()),
        Type::new("my_handler".into(), 16_700, Kind::Pseudo, "ext".into()),
        Type::new("max_oid".into(), u32::MAX, Kind::Simple, "public".into()),
    ]
}

fn builtin_types() -> Vec<Type> {
    vec![
        Type::BOOL,
        Type::INT4,
        Type::INT8,
        Type::TEXT,
        Type::BYTEA,
        Type::FLOAT8,
        Type::NUMERIC,
        Type::TIMESTAMPTZ,
        Type::UUID,
        Type::JSONB,
        Type::TEXT_ARRAY,
        Type::INT4_RANGE,
        Type::INT4MULTI_RANGE,
        Type::RECORD,
        Type::VOID,
        Type::ANY,
    ]
}

/// Every ErrorResponse field code PostgreSQL defines.
const ERROR_FIELD_CODES: &[u8] = b"SVCMDHPpqWstcdnFLR";

fn every_error_field() -> WireError {
    WireError {
        source: ErrorSource::Database,
        fields: ERROR_FIELD_CODES
            .iter()
            .map(|&c| (c, format!("value of {}", c as char)))
            .collect(),
    }
}

fn all_requests() -> Vec<Request> {
    vec![
        Request::Hello(Hello {
            version: PROTOCOL_VERSION,
            client: "warmpool-rs/0.1".into(),
        }),
        Request::Hello(Hello {
            version: u16::MAX,
            client: String::new(),
        }),
        Request::Prepare(Prepare {
            sql: "SELECT $1::int4, $2".into(),
            types: vec![23, 0],
        }),
        Request::Prepare(Prepare {
            sql: String::new(),
            types: vec![],
        }),
        Request::Execute(Execute {
            sql: "INSERT INTO t VALUES ($1, $2, $3, $4)".into(),
            types: vec![23, 25],
            params: vec![
                Param {
                    oid: 23,
                    value: Some(Bytes::copy_from_slice(&7i32.to_be_bytes())),
                },
                Param {
                    oid: 25,
                    value: None,
                },
                Param {
                    oid: 17,
                    value: Some(Bytes::new()),
                },
                Param {
                    oid: 16_385,
                    value: Some(Bytes::from_static(b"happy")),
                },
            ],
        }),
        Request::Execute(Execute {
            sql: "SELECT 1".into(),
            types: vec![],
            params: vec![],
        }),
        Request::Execute(Execute {
            sql: "SELECT $1".into(),
            types: vec![],
            params: vec![Param {
                oid: 0,
                value: None,
            }],
        }),
        Request::Batch("CREATE TABLE t (id int); INSERT INTO t VALUES (1);".into()),
        Request::Batch("SELECT 'ünïcödé ✓'".into()),
        Request::Begin(Begin::default()),
        Request::Begin(Begin {
            isolation: IsolationLevel::ReadCommitted,
            read_only: Some(false),
            deferrable: Some(false),
        }),
        Request::Begin(Begin {
            isolation: IsolationLevel::RepeatableRead,
            read_only: None,
            deferrable: Some(true),
        }),
        Request::Begin(Begin {
            isolation: IsolationLevel::Serializable,
            read_only: Some(true),
            deferrable: Some(true),
        }),
        Request::Commit,
        Request::Rollback,
        Request::Ping,
        Request::Terminate,
        Request::Invocation(Invocation::default()),
        Request::Invocation(Invocation {
            request_id: "8476a536-e9f4-11e8-9739-2dfe598c3fcd".into(),
            trace_id: "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
                .into(),
        }),
        Request::Stats,
    ]
}

fn all_responses() -> Vec<Response> {
    let mut extension_error = WireError::extension(sqlstate::TOO_MANY_CONNECTIONS, "pool timeout");
    extension_error.fields.push((b'D', String::new()));
    vec![
        Response::HelloOk(HelloOk {
            version: PROTOCOL_VERSION,
            server: "warmpool-extension/0.1".into(),
            max_frame: DEFAULT_MAX_FRAME as u32,
        }),
        Response::HelloOk(HelloOk {
            version: 0,
            server: String::new(),
            max_frame: u32::MAX,
        }),
        Response::PrepareOk(PrepareOk {
            params: vec![],
            columns: vec![],
        }),
        Response::PrepareOk(PrepareOk {
            params: builtin_types(),
            columns: builtin_types()
                .into_iter()
                .enumerate()
                .map(|(i, type_)| Column {
                    name: format!("c{i}"),
                    type_,
                })
                .collect(),
        }),
        Response::PrepareOk(PrepareOk {
            params: custom_types(),
            columns: custom_types()
                .into_iter()
                .map(|type_| Column {
                    name: type_.name().to_owned(),
                    type_,
                })
                .chain([Column {
                    name: String::new(),
                    type_: Type::INT8,
                }])
                .collect(),
        }),
        Response::Rows(vec![]),
        Response::Rows(vec![RawRow::default()]),
        Response::Rows(vec![
            RawRow {
                values: vec![Some(Bytes::copy_from_slice(&1i32.to_be_bytes())), None],
            },
            RawRow {
                values: vec![None, None],
            },
            RawRow {
                values: vec![Some(Bytes::new()), Some(Bytes::from_static(b"text"))],
            },
            RawRow { values: vec![] },
        ]),
        Response::Complete(0),
        Response::Complete(u64::MAX),
        Response::Ok,
        Response::Pong,
        Response::Error(every_error_field()),
        Response::Error(extension_error),
        Response::Error(WireError {
            source: ErrorSource::Extension,
            fields: vec![],
        }),
        Response::Notice(WireError {
            source: ErrorSource::Database,
            fields: vec![
                (b'S', "NOTICE".into()),
                (b'C', "00000".into()),
                (b'M', "got 1".into()),
            ],
        }),
        Response::Stats(Stats::default()),
        Response::Stats(Stats {
            request_id: "r-1".into(),
            queries: 3,
            rows: u64::MAX,
            database_time_us: 1,
            pool_wait_us: 2,
            connections_created: 4,
            connections_replaced: 5,
            cache_hits: 6,
            state_hits: 7,
            errors: vec![("08".into(), 1), ("23".into(), 2)],
            fleet_slots_taken: 8,
            fleet_waits: 9,
            fleet_wait_us: 10,
            fleet_refusals: 11,
        }),
    ]
}

fn tag_of(frame: &[u8]) -> u8 {
    frame[0]
}

// ---------------------------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------------------------

#[test]
fn every_request_round_trips() {
    let requests = all_requests();
    let mut tags: Vec<u8> = requests.iter().map(|r| tag_of(&encoded(r))).collect();
    tags.sort_unstable();
    tags.dedup();
    assert_eq!(
        tags, b"BCEHIPQRTXY",
        "a Request variant is missing from the samples"
    );
    for r in &requests {
        assert_round_trip(r);
    }
}

#[test]
fn every_response_round_trips() {
    let responses = all_responses();
    let mut tags: Vec<u8> = responses.iter().map(|r| tag_of(&encoded(r))).collect();
    tags.sort_unstable();
    tags.dedup();
    assert_eq!(
        tags, b"cdehikpty",
        "a Response variant is missing from the samples"
    );
    for r in &responses {
        assert_round_trip(r);
    }
}

#[test]
fn execute_keeps_null_apart_from_empty() {
    let null = Request::Execute(Execute {
        sql: "SELECT $1".into(),
        types: vec![17],
        params: vec![Param {
            oid: 17,
            value: None,
        }],
    });
    let empty = Request::Execute(Execute {
        sql: "SELECT $1".into(),
        types: vec![17],
        params: vec![Param {
            oid: 17,
            value: Some(Bytes::new()),
        }],
    });
    assert_ne!(encoded(&null), encoded(&empty));
    assert_round_trip(&null);
    assert_round_trip(&empty);
}

#[test]
fn custom_types_keep_their_kind_name_and_schema() {
    for ty in custom_types() {
        let resp = Response::PrepareOk(PrepareOk {
            params: vec![ty.clone()],
            columns: vec![],
        });
        let Some(Response::PrepareOk(got)) = decode_one::<Response>(&encoded(&resp)).unwrap()
        else {
            panic!("not a PrepareOk");
        };
        let got = &got.params[0];
        assert_eq!(got, &ty);
        assert_eq!(got.oid(), ty.oid());
        assert_eq!(got.name(), ty.name());
        assert_eq!(got.schema(), ty.schema());
        assert_eq!(got.kind(), ty.kind());
    }
    // The nested ones, spelled out.
    let Kind::Composite(fields) = address().kind().clone() else {
        unreachable!()
    };
    assert_eq!(fields[3].type_().kind(), mood().kind());
    let Kind::Array(elem) = mood_array().kind().clone() else {
        unreachable!()
    };
    assert_eq!(elem, mood());
}

#[test]
fn builtin_types_travel_as_their_oid_alone() {
    for ty in builtin_types() {
        let frame = encoded(&Response::PrepareOk(PrepareOk {
            params: vec![ty.clone()],
            columns: vec![],
        }));
        let expected = Body::new().u16(1).builtin(ty.oid()).u16(0).frame(b'p');
        assert_eq!(&frame[..], &expected[..], "{ty}");
        let Some(Response::PrepareOk(got)) = decode_one::<Response>(&frame).unwrap() else {
            panic!("not a PrepareOk");
        };
        // The very built-in `Type`, so `ToSql::accepts` matches on it as with tokio-postgres.
        assert_eq!(got.params[0], ty);
        assert_eq!(Type::from_oid(got.params[0].oid()), Some(ty));
    }
}

#[test]
fn builtin_oid_with_full_description_decodes_to_the_builtin() {
    // A peer with an older type table describes INT4 as a custom type; the OID decides.
    let frame = Body::new()
        .u16(1)
        .u8(1)
        .u32(23)
        .str(b"int4")
        .str(b"pg_catalog")
        .u16(0)
        .frame(b'p');
    let got = decode_one::<Response>(&frame).unwrap().unwrap();
    let Response::PrepareOk(p) = &got else {
        panic!("not a PrepareOk")
    };
    assert_eq!(p.params, vec![Type::INT4]);
    // So the value re-encodes canonically and decodes to itself.
    assert_round_trip(&got);
}

// ---------------------------------------------------------------------------------------------
// Byte layouts, pinned independently of the encoder (docs/PROTOCOL.md shows the same bytes)
// ---------------------------------------------------------------------------------------------

#[test]
fn request_layouts() {
    let hello = Request::Hello(Hello {
        version: 1,
        client: "rs".into(),
    });
    assert_eq!(
        &encoded(&hello)[..],
        &[b'H', 0, 0, 0, 8, 0, 1, 0, 0, 0, 2, b'r', b's']
    );

    let prepare = Request::Prepare(Prepare {
        sql: "q".into(),
        types: vec![23, 0],
    });
    assert_eq!(
        &encoded(&prepare)[..],
        &Body::new().str(b"q").u16(2).u32(23).u32(0).frame(b'P')[..]
    );

    let execute = Request::Execute(Execute {
        sql: "q".into(),
        types: vec![23],
        params: vec![
            Param {
                oid: 23,
                value: Some(Bytes::from_static(&[0, 0, 0, 7])),
            },
            Param {
                oid: 25,
                value: None,
            },
        ],
    });
    let expected = Body::new()
        .str(b"q")
        .u16(1)
        .u32(23)
        .u16(2)
        .u32(23)
        .i32(4)
        .raw(&[0, 0, 0, 7])
        .u32(25)
        .i32(-1)
        .frame(b'E');
    assert_eq!(&encoded(&execute)[..], &expected[..]);
    assert_eq!(expected.len(), HEADER_LEN + 33);

    assert_eq!(
        &encoded(&Request::Batch("x".into()))[..],
        &[b'Q', 0, 0, 0, 5, 0, 0, 0, 1, b'x']
    );
    let begin = Request::Begin(Begin {
        isolation: IsolationLevel::Serializable,
        read_only: Some(true),
        deferrable: None,
    });
    assert_eq!(&encoded(&begin)[..], &[b'B', 0, 0, 0, 3, 3, 2, 0]);
    let begin = Request::Begin(Begin {
        isolation: IsolationLevel::ReadCommitted,
        read_only: Some(false),
        deferrable: Some(true),
    });
    assert_eq!(&encoded(&begin)[..], &[b'B', 0, 0, 0, 3, 1, 1, 2]);
    for (r, tag) in [
        (Request::Commit, b'C'),
        (Request::Rollback, b'R'),
        (Request::Ping, b'Y'),
        (Request::Terminate, b'X'),
    ] {
        assert_eq!(&encoded(&r)[..], &[tag, 0, 0, 0, 0]);
    }
}

#[test]
fn response_layouts() {
    let hello_ok = Response::HelloOk(HelloOk {
        version: 1,
        server: "x".into(),
        max_frame: 0x0100_0000,
    });
    assert_eq!(
        &encoded(&hello_ok)[..],
        &[b'h', 0, 0, 0, 11, 0, 1, 0, 0, 0, 1, b'x', 1, 0, 0, 0]
    );

    let prepare_ok = Response::PrepareOk(PrepareOk {
        params: vec![Type::INT4, email()],
        columns: vec![Column {
            name: "m".into(),
            type_: mood_array(),
        }],
    });
    let expected = Body::new()
        .u16(2)
        .builtin(23)
        // domain: kind 7, oid, name, schema, then the base type
        .u8(7)
        .u32(16_390)
        .str(b"email")
        .str(b"app")
        .builtin(25)
        .u16(1)
        .str(b"m")
        // array: kind 4, oid, name, schema, then the element type
        .u8(4)
        .u32(16_384)
        .str(b"_mood")
        .str(b"public")
        // enum: kind 2, oid, name, schema, then the labels
        .u8(2)
        .u32(16_385)
        .str(b"mood")
        .str(b"public")
        .u16(4)
        .str(b"sad")
        .str(b"ok")
        .str(b"")
        .str("😀".as_bytes())
        .frame(b'p');
    assert_eq!(&encoded(&prepare_ok)[..], &expected[..]);

    let composite = Response::PrepareOk(PrepareOk {
        params: vec![Type::new(
            "pair".into(),
            20_000,
            Kind::Composite(vec![
                Field::new("a".into(), Type::INT4),
                Field::new("b".into(), Type::TEXT),
            ]),
            "s".into(),
        )],
        columns: vec![],
    });
    let expected = Body::new()
        .u16(1)
        .u8(8)
        .u32(20_000)
        .str(b"pair")
        .str(b"s")
        .u16(2)
        .str(b"a")
        .builtin(23)
        .str(b"b")
        .builtin(25)
        .u16(0)
        .frame(b'p');
    assert_eq!(&encoded(&composite)[..], &expected[..]);

    let simple_kinds = [
        (Kind::Simple, 1u8),
        (Kind::Pseudo, 3),
        (Kind::Range(Type::INT4), 5),
        (Kind::Multirange(Type::INT4), 6),
    ];
    for (kind, code) in simple_kinds {
        let inner = match &kind {
            Kind::Range(_) | Kind::Multirange(_) => Some(23),
            _ => None,
        };
        let frame = encoded(&Response::PrepareOk(PrepareOk {
            params: vec![Type::new("t".into(), 30_000, kind, "s".into())],
            columns: vec![],
        }));
        let mut body = Body::new().u16(1).u8(code).u32(30_000).str(b"t").str(b"s");
        if let Some(oid) = inner {
            body = body.builtin(oid);
        }
        assert_eq!(&frame[..], &body.u16(0).frame(b'p')[..], "kind {code}");
    }

    let rows = Response::Rows(vec![
        RawRow {
            values: vec![Some(Bytes::from_static(b"a")), None],
        },
        RawRow { values: vec![] },
    ]);
    let expected = Body::new()
        .u32(2)
        .u16(2)
        .i32(1)
        .raw(b"a")
        .i32(-1)
        .u16(0)
        .frame(b'd');
    assert_eq!(&encoded(&rows)[..], &expected[..]);

    assert_eq!(
        &encoded(&Response::Complete(5))[..],
        &Body::new().u64(5).frame(b'c')[..]
    );
    assert_eq!(&encoded(&Response::Ok)[..], &[b'k', 0, 0, 0, 0]);
    assert_eq!(&encoded(&Response::Pong)[..], &[b'y', 0, 0, 0, 0]);

    let error = Response::Error(WireError {
        source: ErrorSource::Extension,
        fields: vec![(b'C', "08P01".into())],
    });
    assert_eq!(
        &encoded(&error)[..],
        &Body::new()
            .u8(b'W')
            .u16(1)
            .u8(b'C')
            .str(b"08P01")
            .frame(b'e')[..]
    );
    let error = Response::Error(WireError {
        source: ErrorSource::Database,
        fields: vec![],
    });
    assert_eq!(&encoded(&error)[..], &[b'e', 0, 0, 0, 3, b'D', 0, 0]);
}

#[test]
fn rows_encoded_len_matches_the_wire() {
    let rows = vec![
        RawRow {
            values: vec![Some(Bytes::from_static(b"abc")), None, Some(Bytes::new())],
        },
        RawRow::default(),
    ];
    let frame = encoded(&Response::Rows(rows.clone()));
    let body = frame.len() - HEADER_LEN;
    assert_eq!(
        body,
        4 + rows.iter().map(RawRow::encoded_len).sum::<usize>()
    );
    assert_eq!(rows[0].encoded_len(), 2 + 4 + 3 + 4 + 4);
    assert_eq!(rows[1].encoded_len(), 2);
}

// ---------------------------------------------------------------------------------------------
// Incremental decoding
// ---------------------------------------------------------------------------------------------

/// Feeds the encoding of `frames` one byte at a time and checks each frame comes out exactly when
/// its last byte arrives, in order.
fn feed_byte_by_byte<F: Frame>(frames: &[F]) {
    let mut stream = Vec::new();
    let mut ends = Vec::new();
    for f in frames {
        stream.extend_from_slice(&encoded(f));
        ends.push(stream.len());
    }
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for (i, byte) in stream.iter().enumerate() {
        buf.put_u8(*byte);
        let fed = i + 1;
        let before = buf.len();
        match F::dec(&mut buf, MAX).unwrap() {
            Some(f) => {
                assert_eq!(Some(&fed), ends.get(out.len()), "frame out early or late");
                out.push(f);
                assert!(buf.is_empty());
            }
            None => {
                assert_ne!(
                    Some(&fed),
                    ends.get(out.len()),
                    "complete frame not decoded"
                );
                assert_eq!(buf.len(), before, "Ok(None) consumed bytes");
            }
        }
    }
    assert_eq!(out, frames);
    assert!(F::dec(&mut buf, MAX).unwrap().is_none());
}

#[test]
fn requests_decode_one_byte_at_a_time() {
    feed_byte_by_byte(&all_requests());
}

#[test]
fn responses_decode_one_byte_at_a_time() {
    feed_byte_by_byte(&all_responses());
}

fn back_to_back<F: Frame>(a: &F, b: &F) {
    let mut buf = encoded(a);
    b.enc(&mut buf);
    assert_eq!(F::dec(&mut buf, MAX).unwrap().as_ref(), Some(a));
    assert_eq!(F::dec(&mut buf, MAX).unwrap().as_ref(), Some(b));
    assert!(F::dec(&mut buf, MAX).unwrap().is_none());
    assert!(buf.is_empty());
}

#[test]
fn two_frames_in_one_buffer() {
    let requests = all_requests();
    for pair in requests.windows(2) {
        back_to_back(&pair[0], &pair[1]);
    }
    let responses = all_responses();
    for pair in responses.windows(2) {
        back_to_back(&pair[0], &pair[1]);
    }
    // A frame and the start of the next: the first comes out, the rest stays.
    let mut buf = encoded(&Response::Rows(vec![RawRow::default()]));
    let next = encoded(&Response::Complete(1));
    buf.extend_from_slice(&next[..7]);
    assert!(matches!(
        Response::decode(&mut buf, MAX),
        Ok(Some(Response::Rows(_)))
    ));
    assert_eq!(&buf[..], &next[..7]);
    assert_eq!(Response::decode(&mut buf, MAX), Ok(None));
    buf.extend_from_slice(&next[7..]);
    assert_eq!(
        Response::decode(&mut buf, MAX),
        Ok(Some(Response::Complete(1)))
    );
}

#[test]
fn incomplete_header_is_left_alone() {
    for n in 0..HEADER_LEN {
        let frame = encoded(&Request::Ping);
        let mut buf = BytesMut::from(&frame[..n]);
        assert_eq!(Request::decode(&mut buf, MAX), Ok(None));
        assert_eq!(&buf[..], &frame[..n]);
        let mut buf = BytesMut::from(&frame[..n]);
        assert_eq!(Response::decode(&mut buf, MAX), Ok(None));
        assert_eq!(buf.len(), n);
    }
}

#[test]
fn empty_bodies_fit_a_zero_limit() {
    for r in [
        Request::Commit,
        Request::Rollback,
        Request::Ping,
        Request::Terminate,
    ] {
        let mut buf = encoded(&r);
        assert_eq!(Request::decode(&mut buf, 0), Ok(Some(r)));
    }
    for r in [Response::Ok, Response::Pong] {
        let mut buf = encoded(&r);
        assert_eq!(Response::decode(&mut buf, 0), Ok(Some(r)));
    }
}

// ---------------------------------------------------------------------------------------------
// Oversized frames
// ---------------------------------------------------------------------------------------------

fn header(tag: u8, len: u32) -> BytesMut {
    let mut buf = BytesMut::with_capacity(HEADER_LEN);
    buf.put_u8(tag);
    buf.put_u32(len);
    buf
}

#[test]
fn oversized_frame_is_refused_from_its_header() {
    for declared in [MAX as u32 + 1, u32::MAX] {
        for tag in [b'E', b'd', b'?'] {
            let mut buf = header(tag, declared);
            let ((req, cap), largest) = largest_alloc(|| {
                let r = Request::decode(&mut buf, MAX);
                (r, buf.capacity())
            });
            let expected = FrameError::TooLarge {
                size: declared as usize,
                limit: MAX,
            };
            assert_eq!(req, Err(expected.clone()));
            assert_eq!(buf.len(), HEADER_LEN, "the header stays, nothing else");
            assert!(cap < 1024, "capacity grew to {cap}");
            assert!(largest < 1024, "decoder allocated {largest} bytes");

            let mut buf = header(tag, declared);
            assert_eq!(Response::decode(&mut buf, MAX), Err(expected));
            assert!(buf.capacity() < 1024);
        }
    }
}

#[test]
fn frame_limit_is_inclusive() {
    // A Batch of `n` bytes of SQL has a body of 4 + n bytes.
    let req = Request::Batch("x".repeat(12));
    let mut buf = encoded(&req);
    assert_eq!(Request::decode(&mut buf, 16), Ok(Some(req.clone())));
    let mut buf = encoded(&req);
    assert_eq!(
        Request::decode(&mut buf, 15),
        Err(FrameError::TooLarge {
            size: 16,
            limit: 15
        })
    );
    let resp = Response::Complete(9);
    assert_eq!(
        Response::decode(&mut encoded(&resp), 8),
        Ok(Some(resp.clone()))
    );
    assert!(matches!(
        Response::decode(&mut encoded(&resp), 7),
        Err(FrameError::TooLarge { size: 8, limit: 7 })
    ));
}

#[test]
fn a_partial_frame_within_the_limit_reserves_its_size_once() {
    let mut buf = header(b'Q', 1000);
    assert_eq!(Request::decode(&mut buf, MAX), Ok(None));
    assert_eq!(buf.len(), HEADER_LEN);
    assert!(buf.capacity() >= HEADER_LEN + 1000);
}

// ---------------------------------------------------------------------------------------------
// Malformed bodies
// ---------------------------------------------------------------------------------------------

#[test]
fn truncated_request_bodies() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (Body::new().frame(b'H'), "protocol version"),
        (Body::new().u8(0).frame(b'H'), "protocol version"),
        (Body::new().u16(1).frame(b'H'), "client name"),
        // The string claims 100 bytes; 3 are there.
        (
            Body::new().u16(1).u32(100).raw(b"abc").frame(b'H'),
            "client name",
        ),
        (Body::new().u32(u32::MAX).frame(b'P'), "sql"),
        (Body::new().str(b"q").frame(b'P'), "parameter types"),
        (
            Body::new().str(b"q").u16(2).u32(23).frame(b'P'),
            "parameter types",
        ),
        (Body::new().str(b"q").u16(0).frame(b'E'), "parameters"),
        // One parameter declared; it would take at least 8 bytes, 6 are there.
        (
            Body::new()
                .str(b"q")
                .u16(0)
                .u16(1)
                .u32(23)
                .u16(0)
                .frame(b'E'),
            "parameters",
        ),
        (
            Body::new()
                .str(b"q")
                .u16(0)
                .u16(1)
                .u32(23)
                .i32(8)
                .raw(&[0; 4])
                .frame(b'E'),
            "parameter value",
        ),
        (
            Body::new()
                .str(b"q")
                .u16(0)
                .u16(2)
                .u32(23)
                .i32(8)
                .raw(&[0; 8])
                .frame(b'E'),
            "parameter type",
        ),
        (Body::new().u32(10).raw(b"SELECT").frame(b'Q'), "sql"),
        (Body::new().frame(b'B'), "isolation level"),
        (Body::new().u8(0).frame(b'B'), "read only"),
        (Body::new().u8(0).u8(0).frame(b'B'), "deferrable"),
    ];
    for (frame, what) in cases {
        assert_eq!(
            decode_one::<Request>(&frame),
            Err(FrameError::Truncated(what)),
            "{frame:?}"
        );
    }
}

#[test]
fn truncated_response_bodies() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (Body::new().u16(1).frame(b'h'), "server name"),
        (Body::new().u16(1).str(b"x").u16(0).frame(b'h'), "max frame"),
        (Body::new().frame(b'p'), "parameter types"),
        // The second parameter type stops inside its OID.
        (
            Body::new()
                .u16(2)
                .u8(1)
                .u32(20_000)
                .str(b"")
                .str(b"")
                .u8(0)
                .u16(0)
                .frame(b'p'),
            "type oid",
        ),
        (Body::new().u16(0).frame(b'p'), "columns"),
        (
            Body::new()
                .u16(0)
                .u16(1)
                .str(b"cccc")
                .u8(0)
                .u16(0)
                .frame(b'p'),
            "type oid",
        ),
        (
            Body::new().u16(1).u8(2).u32(20_000).str(b"e").frame(b'p'),
            "type schema",
        ),
        (
            Body::new()
                .u16(1)
                .u8(2)
                .u32(20_000)
                .str(b"e")
                .str(b"s")
                .u16(2)
                .str(b"a")
                .u32(9)
                .u16(0)
                .frame(b'p'),
            "enum label",
        ),
        (
            Body::new()
                .u16(1)
                .u8(4)
                .u32(20_000)
                .str(b"a")
                .str(b"s")
                .frame(b'p'),
            "type kind",
        ),
        (Body::new().u16(1).frame(b'd'), "rows"),
        (Body::new().u32(1).frame(b'd'), "rows"),
        (Body::new().u32(1).u16(1).frame(b'd'), "row values"),
        (
            Body::new().u32(1).u16(1).i32(5).raw(b"abcd").frame(b'd'),
            "row value",
        ),
        (Body::new().u32(2).u16(0).u16(1).frame(b'd'), "row values"),
        (Body::new().u32(7).frame(b'c'), "rows affected"),
        (Body::new().frame(b'e'), "error source"),
        (Body::new().u8(b'D').frame(b'e'), "error fields"),
        (
            Body::new()
                .u8(b'D')
                .u16(1)
                .u8(b'M')
                .u32(50)
                .raw(b"oops")
                .frame(b'e'),
            "error field",
        ),
    ];
    for (frame, what) in cases {
        assert_eq!(
            decode_one::<Response>(&frame),
            Err(FrameError::Truncated(what)),
            "{frame:?}"
        );
    }
}

#[test]
fn unknown_tags_in_both_directions() {
    let response_tags = b"hpdckye";
    let request_tags = b"HPEQBCRYX";
    for &tag in response_tags.iter().chain(b"\0\xffZz") {
        let frame = Body::new().frame(tag);
        assert_eq!(
            decode_one::<Request>(&frame),
            Err(FrameError::UnknownTag(tag)),
            "tag {}",
            tag as char
        );
    }
    for &tag in request_tags.iter().chain(b"\0\xffZz") {
        let frame = Body::new().frame(tag);
        assert_eq!(
            decode_one::<Response>(&frame),
            Err(FrameError::UnknownTag(tag)),
            "tag {}",
            tag as char
        );
    }
    // A real response, whole, sent the wrong way.
    let mut buf = encoded(&Response::Complete(3));
    assert_eq!(
        Request::decode(&mut buf, MAX),
        Err(FrameError::UnknownTag(b'c'))
    );
    let mut buf = encoded(&Request::Hello(Hello {
        version: 1,
        client: "c".into(),
    }));
    assert_eq!(
        Response::decode(&mut buf, MAX),
        Err(FrameError::UnknownTag(b'H'))
    );
}

/// Appends `extra` bytes to the body of `frame` and fixes its length.
fn with_trailing(frame: &[u8], extra: usize) -> Vec<u8> {
    let body_len = frame.len() - HEADER_LEN + extra;
    let mut out = frame.to_vec();
    out[1..HEADER_LEN].copy_from_slice(&(body_len as u32).to_be_bytes());
    out.extend(std::iter::repeat_n(0xAB, extra));
    out
}

#[test]
fn trailing_bytes_are_refused() {
    for extra in [1, 2, 9] {
        for r in all_requests() {
            let frame = with_trailing(&encoded(&r), extra);
            assert_eq!(
                decode_one::<Request>(&frame),
                Err(FrameError::TrailingBytes {
                    tag: frame[0],
                    extra
                }),
                "{r:?}"
            );
        }
        for r in all_responses() {
            let frame = with_trailing(&encoded(&r), extra);
            assert_eq!(
                decode_one::<Response>(&frame),
                Err(FrameError::TrailingBytes {
                    tag: frame[0],
                    extra
                }),
                "{r:?}"
            );
        }
    }
}

#[test]
fn lying_counts_fail_without_reserving_memory() {
    // 4 billion rows declared in a 14-byte body.
    let frame = Body::new()
        .u32(4_000_000_000)
        .u16(1)
        .i32(4)
        .raw(b"abcd")
        .frame(b'd');
    let (r, largest) = decode_measured::<Response>(&frame);
    assert_eq!(r, Err(FrameError::Truncated("rows")));
    assert!(largest < 1024, "allocated {largest} bytes");

    // As many rows as the body could hold if each were empty, but the first row lies in turn:
    // the decoder must not reserve for all of them before finding out.
    let body_len = 64 * 1024;
    let rows = (body_len - 4) / 2;
    let mut body = Body::new().u32(rows as u32).u16(u16::MAX);
    body.0.resize(body_len, 0);
    let frame = body.frame(b'd');
    let (r, largest) = decode_measured::<Response>(&frame);
    assert_eq!(r, Err(FrameError::Truncated("row values")));
    assert!(
        largest <= frame.len(),
        "decoding a {}-byte frame allocated {largest} bytes at once",
        frame.len()
    );

    // u16 counts of every kind, each far beyond what the body holds.
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            Body::new().u16(u16::MAX).builtin(23).frame(b'p'),
            "parameter types",
        ),
        (Body::new().u16(0).u16(u16::MAX).frame(b'p'), "columns"),
        (
            Body::new()
                .u16(1)
                .u8(2)
                .u32(20_000)
                .str(b"e")
                .str(b"s")
                .u16(u16::MAX)
                .frame(b'p'),
            "enum labels",
        ),
        (
            Body::new()
                .u16(1)
                .u8(8)
                .u32(20_000)
                .str(b"c")
                .str(b"s")
                .u16(u16::MAX)
                .str(b"f")
                .builtin(23)
                .frame(b'p'),
            "composite fields",
        ),
        (Body::new().u32(1).u16(u16::MAX).frame(b'd'), "row values"),
        (
            Body::new().u8(b'D').u16(u16::MAX).frame(b'e'),
            "error fields",
        ),
    ];
    for (frame, what) in cases {
        let (r, largest) = decode_measured::<Response>(&frame);
        assert_eq!(r, Err(FrameError::Truncated(what)));
        assert!(largest < 1024, "{what}: allocated {largest} bytes");
    }
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            Body::new().str(b"q").u16(u16::MAX).frame(b'P'),
            "parameter types",
        ),
        (
            Body::new().str(b"q").u16(0).u16(u16::MAX).frame(b'E'),
            "parameters",
        ),
        (Body::new().u16(1).u32(u32::MAX).frame(b'H'), "client name"),
    ];
    for (frame, what) in cases {
        let (r, largest) = decode_measured::<Request>(&frame);
        assert_eq!(r, Err(FrameError::Truncated(what)));
        assert!(largest < 1024, "{what}: allocated {largest} bytes");
    }
}

#[test]
fn invalid_utf8_is_refused() {
    const BAD: &[u8] = b"ab\xff\xfe";
    let invalid = FrameError::Invalid("string is not UTF-8");
    let requests = [
        Body::new().u16(1).str(BAD).frame(b'H'),
        Body::new().str(BAD).u16(0).frame(b'P'),
        Body::new().str(BAD).u16(0).u16(0).frame(b'E'),
        Body::new().str(b"\xc3").frame(b'Q'), // a lone lead byte
        Body::new().str(b"\xed\xa0\x80").frame(b'Q'), // a UTF-16 surrogate
    ];
    for frame in requests {
        assert_eq!(
            decode_one::<Request>(&frame),
            Err(invalid.clone()),
            "{frame:?}"
        );
    }
    let responses = [
        Body::new().u16(1).str(BAD).u32(0).frame(b'h'),
        Body::new().u16(0).u16(1).str(BAD).builtin(23).frame(b'p'),
        Body::new()
            .u16(1)
            .u8(1)
            .u32(20_000)
            .str(BAD)
            .str(b"s")
            .u16(0)
            .frame(b'p'),
        Body::new()
            .u16(1)
            .u8(1)
            .u32(20_000)
            .str(b"t")
            .str(BAD)
            .u16(0)
            .frame(b'p'),
        Body::new()
            .u16(1)
            .u8(2)
            .u32(20_000)
            .str(b"t")
            .str(b"s")
            .u16(1)
            .str(BAD)
            .u16(0)
            .frame(b'p'),
        Body::new()
            .u16(1)
            .u8(8)
            .u32(20_000)
            .str(b"t")
            .str(b"s")
            .u16(1)
            .str(BAD)
            .builtin(23)
            .u16(0)
            .frame(b'p'),
        Body::new().u8(b'D').u16(1).u8(b'M').str(BAD).frame(b'e'),
    ];
    for frame in responses {
        assert_eq!(
            decode_one::<Response>(&frame),
            Err(invalid.clone()),
            "{frame:?}"
        );
    }
    // Row values and parameters are binary, never checked as text.
    let rows = Body::new().u32(1).u16(1).i32(4).raw(BAD).frame(b'd');
    assert!(decode_one::<Response>(&rows).unwrap().is_some());
}

#[test]
fn out_of_range_values_are_refused() {
    let requests: Vec<(Vec<u8>, &str)> = vec![
        (
            Body::new().u8(4).u8(0).u8(0).frame(b'B'),
            "isolation level out of range",
        ),
        (
            Body::new().u8(0).u8(3).u8(0).frame(b'B'),
            "transaction option out of range",
        ),
        (
            Body::new().u8(0).u8(0).u8(0xff).frame(b'B'),
            "transaction option out of range",
        ),
        (
            Body::new()
                .str(b"q")
                .u16(0)
                .u16(1)
                .u32(23)
                .i32(-2)
                .frame(b'E'),
            "negative length",
        ),
        (
            Body::new()
                .str(b"q")
                .u16(0)
                .u16(1)
                .u32(23)
                .i32(i32::MIN)
                .frame(b'E'),
            "negative length",
        ),
    ];
    for (frame, what) in requests {
        assert_eq!(
            decode_one::<Request>(&frame),
            Err(FrameError::Invalid(what))
        );
    }
    let responses: Vec<(Vec<u8>, &str)> = vec![
        (
            Body::new().u32(1).u16(1).i32(-2).frame(b'd'),
            "negative length",
        ),
        (
            Body::new().u8(b'X').u16(0).frame(b'e'),
            "unknown error source",
        ),
        (Body::new().u8(0).u16(0).frame(b'e'), "unknown error source"),
        (
            Body::new()
                .u16(1)
                .u8(9)
                .u32(20_000)
                .str(b"t")
                .str(b"s")
                .u16(0)
                .frame(b'p'),
            "unknown type kind",
        ),
        (
            Body::new().u16(1).builtin(20_000).u16(0).frame(b'p'),
            "unknown built-in type oid",
        ),
        (
            Body::new().u16(1).builtin(0).u16(0).frame(b'p'),
            "unknown built-in type oid",
        ),
    ];
    for (frame, what) in responses {
        assert_eq!(
            decode_one::<Response>(&frame),
            Err(FrameError::Invalid(what))
        );
    }
}

/// `levels` types, each an array of the next, ending in `int4`.
fn nested_arrays(levels: usize) -> Type {
    let mut ty = Type::INT4;
    for i in 1..levels {
        ty = Type::new(
            format!("a{i}"),
            40_000 + i as u32,
            Kind::Array(ty),
            "s".into(),
        );
    }
    ty
}

fn prepare_ok_with(ty: Type) -> Response {
    Response::PrepareOk(PrepareOk {
        params: vec![],
        columns: vec![Column {
            name: "c".into(),
            type_: ty,
        }],
    })
}

#[test]
fn type_nesting_is_bounded() {
    // Nine descriptors in a chain (the outer type and eight levels below it) are allowed.
    assert_round_trip(&prepare_ok_with(nested_arrays(9)));
    let mut composite = Type::INT4;
    for i in 1..9 {
        composite = Type::new(
            format!("c{i}"),
            50_000 + i,
            Kind::Composite(vec![Field::new("f".into(), composite)]),
            "s".into(),
        );
    }
    assert_round_trip(&prepare_ok_with(composite.clone()));

    let too_deep = Err(FrameError::Invalid("type nesting too deep"));
    assert_eq!(
        decode_one::<Response>(&encoded(&prepare_ok_with(nested_arrays(10)))),
        too_deep.clone()
    );
    let deeper = Type::new(
        "c9".into(),
        50_009,
        Kind::Composite(vec![Field::new("f".into(), composite)]),
        "s".into(),
    );
    let deeper = Type::new("d".into(), 50_010, Kind::Domain(deeper), "s".into());
    assert_eq!(
        decode_one::<Response>(&encoded(&prepare_ok_with(deeper))),
        too_deep.clone()
    );

    // A hostile chain of 100 000 array headers is cut off without deep recursion.
    let mut body = Body::new().u16(1);
    for _ in 0..100_000 {
        body = body.u8(4).u32(20_000).str(b"").str(b"");
    }
    let frame = body.frame(b'p');
    assert_eq!(decode_one::<Response>(&frame), too_deep);
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

#[test]
fn frame_errors_map_to_sqlstates() {
    assert_eq!(
        FrameError::TooLarge { size: 10, limit: 5 }.sqlstate(),
        "54000"
    );
    for e in [
        FrameError::UnknownTag(b'?'),
        FrameError::Truncated("sql"),
        FrameError::TrailingBytes {
            tag: b'E',
            extra: 1,
        },
        FrameError::Invalid("string is not UTF-8"),
    ] {
        assert_eq!(e.sqlstate(), "08P01", "{e:?}");
    }
    assert_eq!(sqlstate::PROTOCOL_VIOLATION, "08P01");
    assert_eq!(sqlstate::PROGRAM_LIMIT_EXCEEDED, "54000");
    assert_eq!(sqlstate::TOO_MANY_CONNECTIONS, "53300");
    assert_eq!(sqlstate::ADMIN_SHUTDOWN, "57P01");
    assert_eq!(sqlstate::CONNECTION_FAILURE, "08006");
    assert_eq!(sqlstate::IN_FAILED_TRANSACTION, "25P02");
    assert_eq!(sqlstate::INVALID_TRANSACTION_STATE, "25000");
    assert_eq!(sqlstate::INVALID_PARAMETER_VALUE, "22023");
    assert_eq!(sqlstate::INTERNAL_ERROR, "XX000");
}

#[test]
fn frame_error_messages_name_the_problem() {
    let too_large = FrameError::TooLarge {
        size: 20,
        limit: 10,
    }
    .to_string();
    assert!(too_large.contains("20") && too_large.contains("10"));
    assert!(too_large.contains("WARMPOOL_MAX_FRAME_BYTES"));
    assert_eq!(
        FrameError::UnknownTag(b'z').to_string(),
        "unknown frame tag 0x7a"
    );
    assert!(FrameError::Truncated("sql").to_string().contains("sql"));
    assert!(FrameError::TrailingBytes {
        tag: b'E',
        extra: 3
    }
    .to_string()
    .contains('3'));
}

#[test]
fn every_error_field_survives_the_socket() {
    let e = every_error_field();
    assert_round_trip(&Response::Error(e.clone()));
    for &code in ERROR_FIELD_CODES {
        assert_eq!(
            e.field(code),
            Some(format!("value of {}", code as char).as_str())
        );
    }
    assert_eq!(e.code(), "value of C");
    assert_eq!(e.message(), "value of M");
    assert_eq!(e.field(b'Z'), None);
}

#[test]
fn extension_errors() {
    let e = WireError::extension(sqlstate::ADMIN_SHUTDOWN, "the extension is shutting down");
    assert_eq!(e.source, ErrorSource::Extension);
    assert_eq!(e.code(), "57P01");
    assert_eq!(e.message(), "the extension is shutting down");
    assert_eq!(e.field(b'S'), Some("ERROR"));
    assert_eq!(e.field(b'V'), Some("ERROR"));
    assert_eq!(
        e.to_string(),
        "ERROR: the extension is shutting down (57P01)"
    );
    assert_round_trip(&Response::Error(e));

    let bare = WireError {
        source: ErrorSource::Database,
        fields: vec![],
    };
    assert_eq!(bare.code(), "XX000");
    assert_eq!(bare.message(), "");
}

#[test]
fn begin_sql() {
    assert_eq!(Begin::default().sql(), "BEGIN");
    let b = Begin {
        isolation: IsolationLevel::Serializable,
        read_only: Some(true),
        deferrable: Some(true),
    };
    assert_eq!(
        b.sql(),
        "BEGIN ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE"
    );
    let b = Begin {
        isolation: IsolationLevel::ReadCommitted,
        read_only: Some(false),
        deferrable: Some(false),
    };
    assert_eq!(
        b.sql(),
        "BEGIN ISOLATION LEVEL READ COMMITTED, READ WRITE, NOT DEFERRABLE"
    );
    let b = Begin {
        isolation: IsolationLevel::RepeatableRead,
        ..Begin::default()
    };
    assert_eq!(b.sql(), "BEGIN ISOLATION LEVEL REPEATABLE READ");
    let b = Begin {
        read_only: Some(true),
        ..Begin::default()
    };
    assert_eq!(b.sql(), "BEGIN READ ONLY");
}

// ---------------------------------------------------------------------------------------------
// The specification's examples
// ---------------------------------------------------------------------------------------------

fn unhex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert!(digits.len() % 2 == 0, "odd hex: {s}");
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect()
}

#[test]
fn protocol_md_example_session_decodes() {
    const DOC: &str = include_str!("../../../docs/PROTOCOL.md");
    let section = &DOC[DOC.find("## Example session").expect("example section")..];
    let block = &section[section.find("```text\n").expect("example block") + 8..];
    let block = &block[..block.find("```").expect("end of example block")];

    let mut requests = BytesMut::new();
    let mut responses = BytesMut::new();
    for line in block.lines() {
        let line = line.split('#').next().unwrap().trim();
        if let Some(hex) = line.strip_prefix('>') {
            requests.extend_from_slice(&unhex(hex));
        } else if let Some(hex) = line.strip_prefix('<') {
            responses.extend_from_slice(&unhex(hex));
        } else {
            assert!(line.is_empty(), "unexpected line in the example: {line}");
        }
    }

    let sql = "SELECT $1::int4 AS n".to_owned();
    let expected_requests = [
        Request::Hello(Hello {
            version: 1,
            client: "demo".into(),
        }),
        Request::Prepare(Prepare {
            sql: sql.clone(),
            types: vec![],
        }),
        Request::Execute(Execute {
            sql,
            types: vec![],
            params: vec![Param {
                oid: 23,
                value: Some(Bytes::copy_from_slice(&7i32.to_be_bytes())),
            }],
        }),
        Request::Terminate,
    ];
    let expected_responses = [
        Response::HelloOk(HelloOk {
            version: 1,
            server: "warmpool".into(),
            max_frame: DEFAULT_MAX_FRAME as u32,
        }),
        Response::PrepareOk(PrepareOk {
            params: vec![Type::INT4],
            columns: vec![Column {
                name: "n".into(),
                type_: Type::INT4,
            }],
        }),
        Response::Rows(vec![RawRow {
            values: vec![Some(Bytes::copy_from_slice(&7i32.to_be_bytes()))],
        }]),
        Response::Complete(1),
    ];
    // The bytes are exactly what the encoder writes, and decode to the values the comments name.
    let mut encoded_requests = BytesMut::new();
    for r in &expected_requests {
        r.encode(&mut encoded_requests);
    }
    assert_eq!(requests, encoded_requests);
    let mut encoded_responses = BytesMut::new();
    for r in &expected_responses {
        r.encode(&mut encoded_responses);
    }
    assert_eq!(responses, encoded_responses);
    for r in expected_requests {
        assert_eq!(Request::decode(&mut requests, MAX), Ok(Some(r)));
    }
    for r in expected_responses {
        assert_eq!(Response::decode(&mut responses, MAX), Ok(Some(r)));
    }
    assert!(requests.is_empty() && responses.is_empty());
}

#[test]
fn protocol_md_type_example_decodes() {
    // The `_mood` descriptor shown in the Types section, as the only parameter of a PrepareOk.
    let descriptor = unhex(
        "04 00004000 00000005 5f6d6f6f64 00000006 7075626c6963
         02 00004001 00000004 6d6f6f64 00000006 7075626c6963
         0002 00000003 736164 00000002 6f6b",
    );
    let frame = Body::new().u16(1).raw(&descriptor).u16(0).frame(b'p');
    let mood = Type::new(
        "mood".into(),
        16_385,
        Kind::Enum(vec!["sad".into(), "ok".into()]),
        "public".into(),
    );
    let mood_array = Type::new("_mood".into(), 16_384, Kind::Array(mood), "public".into());
    assert_eq!(
        decode_one::<Response>(&frame),
        Ok(Some(Response::PrepareOk(PrepareOk {
            params: vec![mood_array],
            columns: vec![],
        })))
    );
}

// ---------------------------------------------------------------------------------------------
// Property tests: arbitrary and mutated input never panics, and whatever decodes re-encodes to
// itself. 100 000 cases in all.
// ---------------------------------------------------------------------------------------------

/// A small frame limit, so that mutated lengths hit it often.
const FUZZ_MAX: usize = 512;

/// The decoded form of an item is bigger than its smallest encoding (a 4-byte NULL becomes an
/// `Option<Bytes>`, a 2-byte empty row a `Vec`), so a frame of the limit's size may decode into
/// allocations a few times that size; never more, whatever its lengths and counts declare.
const DECODE_ALLOC_FACTOR: usize = 16;
const DECODE_ALLOC_BOUND: usize = DECODE_ALLOC_FACTOR * (FUZZ_MAX + HEADER_LEN);

fn fuzz_config(cases: u32) -> Config {
    Config {
        cases,
        // A failure prints its minimal input; no regression file is written into the source tree.
        failure_persistence: None,
        max_shrink_iters: 10_000,
        ..Config::default()
    }
}

/// Decodes `bytes` with `F` until it stops, checking every decoded frame re-encodes to a frame
/// that decodes to the same value.
fn decode_all<F: Frame>(bytes: &[u8]) {
    let mut buf = BytesMut::from(bytes);
    loop {
        let before = buf.len();
        let (decoded, largest) = largest_alloc(|| F::dec(&mut buf, FUZZ_MAX));
        assert!(
            largest <= DECODE_ALLOC_BOUND,
            "decoding allocated {largest} bytes at once, over {DECODE_ALLOC_BOUND} \
             ({DECODE_ALLOC_FACTOR} x the {FUZZ_MAX}-byte frame limit)"
        );
        match decoded {
            Ok(Some(value)) => {
                assert!(
                    before - buf.len() >= HEADER_LEN,
                    "decoded without consuming"
                );
                let mut again = encoded(&value);
                let decoded = F::dec(&mut again, FUZZ_MAX)
                    .unwrap_or_else(|e| panic!("{value:?} re-encodes to a bad frame: {e}"));
                assert_eq!(decoded.as_ref(), Some(&value));
                assert!(again.is_empty());
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "Ok(None) consumed bytes");
                assert!(
                    buf.len() < HEADER_LEN
                        || HEADER_LEN + u32::from_be_bytes(buf[1..5].try_into().unwrap()) as usize
                            > buf.len(),
                    "a whole frame was left undecoded"
                );
                return;
            }
            Err(e) => {
                let _ = e.sqlstate();
                return;
            }
        }
    }
}

fn decode_both(bytes: &[u8]) {
    decode_all::<Request>(bytes);
    decode_all::<Response>(bytes);
}

fn arb_string() -> impl Strategy<Value = String> + Clone {
    prop::collection::vec(any::<char>(), 0..6).prop_map(|c| c.into_iter().collect())
}

fn arb_bytes() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..12).prop_map(Bytes::from)
}

fn arb_custom_oid() -> impl Strategy<Value = u32> + Clone {
    16_384u32..=u32::MAX
}

fn arb_type() -> impl Strategy<Value = Type> {
    let builtin = prop::sample::select(builtin_types());
    let leaf = prop_oneof![
        3 => builtin,
        1 => (arb_string(), arb_custom_oid(), arb_string())
            .prop_map(|(n, o, s)| Type::new(n, o, Kind::Simple, s)),
        1 => (arb_string(), arb_custom_oid(), arb_string())
            .prop_map(|(n, o, s)| Type::new(n, o, Kind::Pseudo, s)),
        1 => (arb_string(), arb_custom_oid(), arb_string(), prop::collection::vec(arb_string(), 0..4))
            .prop_map(|(n, o, s, l)| Type::new(n, o, Kind::Enum(l), s)),
    ];
    leaf.prop_recursive(3, 12, 3, |inner| {
        let head = (arb_string(), arb_custom_oid(), arb_string());
        prop_oneof![
            (head.clone(), inner.clone()).prop_map(|((n, o, s), t)| Type::new(
                n,
                o,
                Kind::Array(t),
                s
            )),
            (head.clone(), inner.clone()).prop_map(|((n, o, s), t)| Type::new(
                n,
                o,
                Kind::Range(t),
                s
            )),
            (head.clone(), inner.clone()).prop_map(|((n, o, s), t)| Type::new(
                n,
                o,
                Kind::Multirange(t),
                s
            )),
            (head.clone(), inner.clone()).prop_map(|((n, o, s), t)| Type::new(
                n,
                o,
                Kind::Domain(t),
                s
            )),
            (head, prop::collection::vec((arb_string(), inner), 0..3)).prop_map(
                |((n, o, s), f)| {
                    let fields = f.into_iter().map(|(name, t)| Field::new(name, t)).collect();
                    Type::new(n, o, Kind::Composite(fields), s)
                }
            ),
        ]
    })
}

fn arb_opt_bool() -> impl Strategy<Value = Option<bool>> {
    prop::option::of(any::<bool>())
}

fn arb_request() -> impl Strategy<Value = Request> {
    let isolation = prop::sample::select(vec![
        IsolationLevel::Default,
        IsolationLevel::ReadCommitted,
        IsolationLevel::RepeatableRead,
        IsolationLevel::Serializable,
    ]);
    let param =
        (any::<u32>(), prop::option::of(arb_bytes())).prop_map(|(oid, value)| Param { oid, value });
    prop_oneof![
        (any::<u16>(), arb_string())
            .prop_map(|(version, client)| Request::Hello(Hello { version, client })),
        (arb_string(), prop::collection::vec(any::<u32>(), 0..4))
            .prop_map(|(sql, types)| Request::Prepare(Prepare { sql, types })),
        (
            arb_string(),
            prop::collection::vec(any::<u32>(), 0..4),
            prop::collection::vec(param, 0..4)
        )
            .prop_map(|(sql, types, params)| Request::Execute(Execute {
                sql,
                types,
                params
            })),
        arb_string().prop_map(Request::Batch),
        (isolation, arb_opt_bool(), arb_opt_bool()).prop_map(
            |(isolation, read_only, deferrable)| {
                Request::Begin(Begin {
                    isolation,
                    read_only,
                    deferrable,
                })
            }
        ),
        Just(Request::Commit),
        Just(Request::Rollback),
        Just(Request::Ping),
        Just(Request::Terminate),
        (arb_string(), arb_string()).prop_map(|(request_id, trace_id)| {
            Request::Invocation(Invocation {
                request_id,
                trace_id,
            })
        }),
        Just(Request::Stats),
        prop::option::of(1u64..).prop_map(|unix_ms| Request::Deadline(Deadline { unix_ms })),
    ]
}

fn arb_response() -> impl Strategy<Value = Response> {
    let column = (arb_string(), arb_type()).prop_map(|(name, type_)| Column { name, type_ });
    let row = prop::collection::vec(prop::option::of(arb_bytes()), 0..4)
        .prop_map(|values| RawRow { values });
    let source = prop::sample::select(vec![ErrorSource::Database, ErrorSource::Extension]);
    let field = (
        prop::sample::select(ERROR_FIELD_CODES.to_vec()),
        arb_string(),
    );
    prop_oneof![
        (any::<u16>(), arb_string(), any::<u32>()).prop_map(|(version, server, max_frame)| {
            Response::HelloOk(HelloOk {
                version,
                server,
                max_frame,
            })
        }),
        (
            prop::collection::vec(arb_type(), 0..3),
            prop::collection::vec(column, 0..3)
        )
            .prop_map(|(params, columns)| Response::PrepareOk(PrepareOk { params, columns })),
        prop::collection::vec(row, 0..4).prop_map(Response::Rows),
        any::<u64>().prop_map(Response::Complete),
        Just(Response::Ok),
        Just(Response::Pong),
        (source, prop::collection::vec(field, 0..4))
            .prop_map(|(source, fields)| Response::Error(WireError { source, fields })),
        (
            arb_string(),
            prop::array::uniform8(any::<u64>()),
            prop::collection::vec((arb_string(), any::<u64>()), 0..3)
        )
            .prop_map(|(request_id, c, errors)| Response::Stats(Stats {
                request_id,
                queries: c[0],
                rows: c[1],
                database_time_us: c[2],
                pool_wait_us: c[3],
                connections_created: c[4],
                connections_replaced: c[5],
                cache_hits: c[6],
                state_hits: c[7],
                errors,
                fleet_slots_taken: c[0] ^ 1,
                fleet_waits: c[1] ^ 2,
                fleet_wait_us: c[2] ^ 3,
                fleet_refusals: c[3] ^ 4,
            })),
    ]
}

/// One edit to an encoded frame; positions are taken modulo the current length.
#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(Index, u8),
    SetByte(Index, u8),
    Insert(Index, u8),
    Remove(Index),
    Truncate(Index),
    /// Overwrites four bytes with a big-endian `u32`, to forge lengths and counts.
    SetU32(Index, u32),
    /// Overwrites two bytes with a big-endian `u16`.
    SetU16(Index, u16),
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    let big = prop_oneof![
        any::<u32>(),
        Just(u32::MAX),
        Just(0x7fff_ffff),
        Just(0x8000_0000),
        0u32..600,
    ];
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, v)| Mutation::SetByte(i, v)),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(i, v)| Mutation::Insert(i, v)),
        1 => any::<Index>().prop_map(Mutation::Remove),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        2 => (any::<Index>(), big).prop_map(|(i, v)| Mutation::SetU32(i, v)),
        1 => (any::<Index>(), any::<u16>()).prop_map(|(i, v)| Mutation::SetU16(i, v)),
    ]
}

fn overwrite(frame: &mut [u8], at: usize, bytes: &[u8]) {
    for (k, b) in bytes.iter().enumerate() {
        if let Some(slot) = frame.get_mut(at + k) {
            *slot = *b;
        }
    }
}

fn mutate(frame: &mut Vec<u8>, mutations: &[Mutation], fix_len: bool) {
    for m in mutations {
        let len = frame.len();
        match m {
            Mutation::Insert(i, v) => frame.insert(i.index(len + 1), *v),
            _ if len == 0 => {}
            Mutation::FlipBit(i, bit) => frame[i.index(len)] ^= 1 << bit,
            Mutation::SetByte(i, v) => frame[i.index(len)] = *v,
            Mutation::Remove(i) => {
                frame.remove(i.index(len));
            }
            Mutation::Truncate(i) => frame.truncate(i.index(len)),
            Mutation::SetU32(i, v) => overwrite(frame, i.index(len), &v.to_be_bytes()),
            Mutation::SetU16(i, v) => overwrite(frame, i.index(len), &v.to_be_bytes()),
        }
    }
    // Mostly keep the length field true to the body, so the mutation reaches the body parser
    // rather than only making the frame look incomplete.
    if fix_len && frame.len() >= HEADER_LEN {
        let body = (frame.len() - HEADER_LEN) as u32;
        frame[1..HEADER_LEN].copy_from_slice(&body.to_be_bytes());
    }
}

proptest! {
    #![proptest_config(fuzz_config(30_000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64), tag in any::<u8>(), frame_it in any::<bool>()) {
        if frame_it {
            // Also as the body of a frame with a true length, so the body parsers see it.
            let mut framed = vec![tag];
            framed.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
            framed.extend_from_slice(&bytes);
            decode_both(&framed);
        } else {
            decode_both(&bytes);
        }
    }
}

proptest! {
    #![proptest_config(fuzz_config(35_000))]

    #[test]
    fn mutated_requests_never_panic(
        req in arb_request(),
        mutations in prop::collection::vec(arb_mutation(), 1..4),
        fix_len in prop::bool::weighted(0.8),
    ) {
        assert_round_trip(&req);
        let mut frame = encoded(&req).to_vec();
        mutate(&mut frame, &mutations, fix_len);
        decode_both(&frame);
    }

    #[test]
    fn mutated_responses_never_panic(
        resp in arb_response(),
        mutations in prop::collection::vec(arb_mutation(), 1..4),
        fix_len in prop::bool::weighted(0.8),
    ) {
        assert_round_trip(&resp);
        let mut frame = encoded(&resp).to_vec();
        mutate(&mut frame, &mutations, fix_len);
        decode_both(&frame);
    }
}

#[test]
fn rows_encoded_in_place_match_the_rows_frame() {
    let rows = vec![
        RawRow {
            values: vec![Some(Bytes::from_static(b"ada")), None],
        },
        RawRow {
            values: vec![
                Some(Bytes::from_static(b"")),
                Some(Bytes::from_static(b"\x00\x01")),
            ],
        },
    ];
    let mut whole = BytesMut::new();
    Response::Rows(rows.clone()).encode(&mut whole);

    let mut buf = BytesMut::from(&b"queued before"[..]);
    let mut enc = RowsEncoder::begin(&mut buf);
    for row in &rows {
        let values = || row.values.iter().map(|v| v.as_deref());
        assert_eq!(RowsEncoder::row_len(values()), row.encoded_len());
        enc.push(&mut buf, values());
    }
    assert_eq!(enc.rows(), 2);
    enc.finish(&mut buf);
    assert_eq!(&buf[..13], b"queued before");
    assert_eq!(&buf[13..], &whole[..]);

    // Rows given as PostgreSQL's DataRow carries them encode the same.
    let mut raw = BytesMut::new();
    let mut enc = RowsEncoder::begin(&mut raw);
    for row in &rows {
        let mut values = BytesMut::new();
        for v in &row.values {
            match v {
                None => values.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(v) => {
                    values.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    values.extend_from_slice(v);
                }
            }
        }
        enc.push_raw(&mut raw, row.values.len() as u16, &values);
    }
    enc.finish(&mut raw);
    assert_eq!(&raw[..], &whole[..]);

    // Abandoned, the frame leaves nothing behind.
    let mut buf = BytesMut::from(&b"queued before"[..]);
    let mut enc = RowsEncoder::begin(&mut buf);
    enc.push(&mut buf, rows[0].values.iter().map(|v| v.as_deref()));
    enc.abandon(&mut buf);
    assert_eq!(&buf[..], b"queued before");
}
