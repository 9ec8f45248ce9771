//! Any bytes, decoded as a stream of requests and as a stream of responses with a small frame
//! limit: decoding never panics, never consumes bytes without returning a frame, and whatever
//! decodes re-encodes to bytes that decode to the same value. Run with libFuzzer's
//! `-malloc_limit_mb` (see fuzz/README.md) to make any single allocation past a small multiple
//! of the frame limit a crash.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use warmpool::protocol::{FrameError, Request, Response, HEADER_LEN};

/// Small, so fuzzed lengths hit the limit often.
const MAX_FRAME: usize = 4096;

trait Frame: Sized + PartialEq + std::fmt::Debug {
    fn dec(buf: &mut BytesMut) -> Result<Option<Self>, FrameError>;
    fn enc(&self, buf: &mut BytesMut);
}

impl Frame for Request {
    fn dec(buf: &mut BytesMut) -> Result<Option<Self>, FrameError> {
        Request::decode(buf, MAX_FRAME)
    }
    fn enc(&self, buf: &mut BytesMut) {
        self.encode(buf)
    }
}

impl Frame for Response {
    fn dec(buf: &mut BytesMut) -> Result<Option<Self>, FrameError> {
        Response::decode(buf, MAX_FRAME)
    }
    fn enc(&self, buf: &mut BytesMut) {
        self.encode(buf)
    }
}

fn decode_all<F: Frame>(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.len();
        match F::dec(&mut buf) {
            Ok(Some(value)) => {
                assert!(before - buf.len() >= HEADER_LEN, "decoded without consuming");
                let mut again = BytesMut::new();
                value.enc(&mut again);
                let back = F::dec(&mut again).expect("a decoded frame re-encodes to a bad frame");
                assert_eq!(back.as_ref(), Some(&value));
                assert!(again.is_empty());
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "Ok(None) consumed bytes");
                return;
            }
            Err(e) => {
                let _ = e.sqlstate();
                return;
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    decode_all::<Request>(data);
    decode_all::<Response>(data);
});
