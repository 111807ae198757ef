//! The request parser on arbitrary bytes: no panic, a complete request never claims more bytes
//! than it was given, and one that arrives in pieces parses the same as one that arrives whole.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcplex::http::parse::{parse_request, Limits};
use mcplex::http::Status;

// Small limits so the fuzzer reaches the limit checks with short inputs.
const LIMITS: Limits = Limits {
    max_head: 512,
    max_headers: 8,
    max_body: 256,
};

fuzz_target!(|data: &[u8]| {
    let Ok(Status::Complete(req, used)) = parse_request(data, &LIMITS) else {
        return;
    };
    assert!(
        used <= data.len(),
        "consumed {used} of {} bytes",
        data.len()
    );
    assert!(
        req.body.len() <= LIMITS.max_body,
        "body of {} bytes over the limit",
        req.body.len()
    );
    // The request is self-delimiting: the bytes it used are enough, and any shorter prefix
    // (a request still arriving) is Partial, never an error or a different request.
    assert_eq!(
        parse_request(&data[..used], &LIMITS),
        Ok(Status::Complete(req, used))
    );
    for cut in 0..used {
        let r = parse_request(&data[..cut], &LIMITS);
        assert!(
            matches!(r, Ok(Status::Partial)),
            "prefix of {cut}/{used} bytes gave {r:?}"
        );
    }
});
