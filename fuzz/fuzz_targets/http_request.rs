//! The request parser on arbitrary bytes: no panic, a complete request never claims more bytes
//! than it was given, and one that arrives in pieces parses the same as one that arrives whole.
//! Every complete request then goes through the front's decisions (route, Host/Origin, CORS,
//! transport, body checks) on both kinds of listener: no panic there either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcplex::config::Config;
use mcplex::front;
use mcplex::http::parse::{parse_request, Limits};
use mcplex::http::Status;

// Small limits so the fuzzer reaches the limit checks with short inputs.
const LIMITS: Limits = Limits {
    max_head: 512,
    max_headers: 8,
    max_body: 256,
};

const CONFIG: &str = "binds:\n- port: 3000\n  listeners:\n  - hostname: localhost\n    routes:\n    - matches: [{path: {exact: /mcp}, headers: [{name: X-T, value: {exact: b}}]}, {path: {pathPrefix: /sse}, method: GET}]\n      policies:\n        cors: {allowOrigins: [\"https://a.example\"], allowHeaders: [\"*\"], maxAge: 5}\n      backends: [{mcp: {targets: [{name: d, stdio: {cmd: d}}]}}]\n  - routes:\n    - matches: [{query: [{name: k, value: {exact: v}}]}]\n      backends: [{mcp: {targets: [{name: e, stdio: {cmd: e}}]}}]\nconfig: {statsAddr: \"127.0.0.1:9100\", allowedHosts: [\"*.example\"]}\n";

thread_local! {
    static CFG: Option<Config> = Config::parse(CONFIG).ok();
}

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
    let Ok(Status::Complete(req, _)) = parse_request(data, &LIMITS) else {
        return;
    };
    CFG.with(|cfg| {
        let cfg = cfg.as_ref().expect("the fuzz config is valid");
        for bind in 0..=cfg.binds.len() {
            let _ = front::decide(cfg, bind, &req);
        }
        let _ = front::post_body(&req);
        let _ = front::check_post_accept(&req);
    });
});
