//! Configuration parsing on arbitrary UTF-8: no panic; a failure always says why.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcplex::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text) {
        Ok(cfg) => assert!(
            !cfg.binds.is_empty(),
            "a valid config with nothing to serve"
        ),
        Err(errors) => assert!(!errors.0.is_empty(), "an error without a reason"),
    }
});
