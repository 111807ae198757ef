//! The chunked decoder on arbitrary bytes (no panic, sane counts), and the encoder/decoder
//! round trip on arbitrary pieces.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcplex::http::chunked::decode;
use mcplex::http::response::{write_chunk, write_last_chunk};
use mcplex::http::Status;

const MAX_BODY: usize = 4096;

fuzz_target!(|data: &[u8]| {
    if let Ok(Status::Complete(body, used)) = decode(data, MAX_BODY) {
        assert!(
            used <= data.len(),
            "consumed {used} of {} bytes",
            data.len()
        );
        assert!(body.len() <= MAX_BODY);
        assert!(
            body.len() < used,
            "a body of {} from {used} bytes",
            body.len()
        );
    }

    // Round trip: the first byte picks the piece size, the rest is split into pieces.
    let Some((&size, rest)) = data.split_first() else {
        return;
    };
    let size = usize::from(size % 64) + 1;
    let mut wire = Vec::new();
    for piece in rest.chunks(size) {
        write_chunk(&mut wire, piece);
    }
    write_chunk(&mut wire, b""); // an empty piece must not end the body
    write_last_chunk(&mut wire);
    let n = wire.len();
    wire.extend_from_slice(b"POST /next HTTP/1.1\r\n"); // a pipelined request after it
    assert_eq!(
        decode(&wire, MAX_BODY.max(rest.len())),
        Ok(Status::Complete(rest.to_vec(), n))
    );
    for cut in [0, n / 2, n - 1] {
        assert_eq!(
            decode(&wire[..cut], MAX_BODY.max(rest.len())),
            Ok(Status::Partial),
            "cut {cut}"
        );
    }
});
