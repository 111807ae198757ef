//! The SSE decoder on arbitrary bytes (no panic, progress), and the encode/decode round trip for
//! data without CR (CR is a line break in SSE, so it cannot survive as data).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcplex::http::sse::{decode, encode, Event};
use mcplex::http::Status;

const MAX: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    if let Ok(Status::Complete(_, used)) = decode(data, MAX) {
        assert!(
            used > 0 && used <= data.len(),
            "consumed {used} of {} bytes",
            data.len()
        );
    }

    // Round trip: the text is split at the first two NULs into event name, id and data.
    let text = String::from_utf8_lossy(data).replace('\r', "");
    let mut parts = text.splitn(3, '\0');
    let (Some(event), Some(id), Some(payload)) = (parts.next(), parts.next(), parts.next()) else {
        return;
    };
    if event.contains('\n') || id.contains('\n') {
        return;
    }
    let mut wire = Vec::new();
    encode(&mut wire, Some(event), Some(id), payload);
    let want = Event {
        event: event.to_string(),
        id: Some(id.to_string()),
        data: payload.to_string(),
        retry: None,
    };
    assert_eq!(
        decode(&wire, wire.len().max(MAX)),
        Ok(Status::Complete(want, wire.len()))
    );
});
