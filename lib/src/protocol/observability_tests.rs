//! Byte layouts and malformed input for the Invocation, Stats and Stats-answer frames.

use bytes::{BufMut, BytesMut};

use super::*;

const MAX: usize = DEFAULT_MAX_FRAME;

fn encode_request(r: &Request) -> BytesMut {
    let mut b = BytesMut::new();
    r.encode(&mut b);
    b
}

fn frame(tag: u8, body: &[u8]) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_u8(tag);
    b.put_u32(body.len() as u32);
    b.put_slice(body);
    b
}

#[test]
fn invocation_layout() {
    let r = Request::Invocation(Invocation {
        request_id: "ab".into(),
        trace_id: "c".into(),
    });
    assert_eq!(
        &encode_request(&r)[..],
        &[b'I', 0, 0, 0, 11, 0, 0, 0, 2, b'a', b'b', 0, 0, 0, 1, b'c']
    );
    assert_eq!(&encode_request(&Request::Stats)[..], &[b'T', 0, 0, 0, 0]);
}

#[test]
fn stats_layout_and_round_trip() {
    let s = Stats {
        request_id: "r".into(),
        queries: 1,
        rows: 2,
        database_time_us: 3,
        pool_wait_us: 4,
        connections_created: 5,
        connections_replaced: 6,
        cache_hits: 7,
        state_hits: 8,
        errors: vec![("23".into(), 9)],
        fleet_slots_taken: 10,
        fleet_waits: 11,
        fleet_wait_us: 12,
        fleet_refusals: 13,
    };
    let mut buf = BytesMut::new();
    Response::Stats(s.clone()).encode(&mut buf);
    let mut body = vec![0, 0, 0, 1, b'r'];
    for n in 1..=8u64 {
        body.extend_from_slice(&n.to_be_bytes());
    }
    body.extend_from_slice(&[0, 1, 0, 0, 0, 2, b'2', b'3']);
    body.extend_from_slice(&9u64.to_be_bytes());
    for n in 10..=13u64 {
        body.extend_from_slice(&n.to_be_bytes());
    }
    assert_eq!(&buf[..], &frame(b't', &body)[..]);
    assert_eq!(
        Response::decode(&mut buf, MAX),
        Ok(Some(Response::Stats(s.clone())))
    );
    assert_eq!(s.total_errors(), 9);
}

#[test]
fn truncated_invocation_is_rejected() {
    // A request id that claims more bytes than the body holds.
    let mut b = frame(b'I', &[0, 0, 0, 9, b'x']);
    assert!(Request::decode(&mut b, MAX).is_err());
    // Only the request id: the trace id is missing.
    let mut b = frame(b'I', &[0, 0, 0, 1, b'x']);
    assert!(Request::decode(&mut b, MAX).is_err());
}

#[test]
fn stats_request_with_a_body_is_rejected() {
    let mut b = frame(b'T', &[0]);
    assert!(matches!(
        Request::decode(&mut b, MAX),
        Err(FrameError::TrailingBytes { tag: b'T', .. })
    ));
}

#[test]
fn lying_error_class_count_is_rejected_before_allocating() {
    let mut body = vec![0, 0, 0, 0];
    body.extend_from_slice(&[0u8; 64]);
    // 65535 classes announced, none present.
    body.extend_from_slice(&[0xff, 0xff]);
    let mut b = frame(b't', &body);
    assert!(Response::decode(&mut b, MAX).is_err());
}

#[test]
fn truncated_stats_counters_are_rejected() {
    let mut body = vec![0, 0, 0, 0];
    body.extend_from_slice(&[0u8; 30]);
    let mut b = frame(b't', &body);
    assert!(Response::decode(&mut b, MAX).is_err());
}

#[test]
fn bounded_ids_are_cut_at_a_character_boundary() {
    let short = Invocation {
        request_id: "8f5e-request".into(),
        trace_id: "Root=1-abc".into(),
    };
    assert_eq!(short.clone().bounded(), short);
    // 'é' is two bytes: the cut falls inside one and moves back to its start.
    let long = Invocation {
        request_id: format!("a{}", "é".repeat(MAX_REQUEST_ID)),
        trace_id: "t".repeat(MAX_TRACE_ID + 1),
    }
    .bounded();
    assert_eq!(long.request_id.len(), MAX_REQUEST_ID - 1);
    assert!(long.request_id.starts_with("aé"));
    assert_eq!(long.trace_id.len(), MAX_TRACE_ID);
}
