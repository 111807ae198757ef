//! One line per event on stderr: `mcplex: [session] message`. No framework: the gateway's log
//! volume is small and a plain `eprintln!` is enough. The level and the access log are set
//! once from the configuration (and on reload).

use std::sync::atomic::{AtomicU8, Ordering};

/// 0 = error, 1 = warn, 2 = info (the default), 3 = debug.
static LEVEL: AtomicU8 = AtomicU8::new(2);
/// 0 = off, 1 = text, 2 = JSON.
static ACCESS: AtomicU8 = AtomicU8::new(0);

pub const ERROR: u8 = 0;
pub const WARN: u8 = 1;
pub const INFO: u8 = 2;
pub const DEBUG: u8 = 3;

pub fn set_level(level: u8) {
    LEVEL.store(level, Ordering::Relaxed);
}

pub fn enabled(level: u8) -> bool {
    level <= LEVEL.load(Ordering::Relaxed)
}

/// How the access log is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLog {
    Off,
    Text,
    Json,
}

pub fn set_access_log(mode: AccessLog) {
    ACCESS.store(mode as u8, Ordering::Relaxed);
}

pub fn access_log() -> AccessLog {
    match ACCESS.load(Ordering::Relaxed) {
        1 => AccessLog::Text,
        2 => AccessLog::Json,
        _ => AccessLog::Off,
    }
}

/// Logs one line at info level.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {
        if $crate::log::enabled($crate::log::INFO) {
            eprintln!("mcplex: {}", format_args!($($arg)*))
        }
    };
}

/// Logs one line at warn level (something failed).
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => {
        if $crate::log::enabled($crate::log::WARN) {
            eprintln!("mcplex: {}", format_args!($($arg)*))
        }
    };
}

/// The loggable form of a session id: its first 8 characters (after an instance prefix, so
/// the instance stays visible). Full ids are bearer credentials and must not land in logs.
pub fn short_id(id: &str) -> &str {
    let start = id.find('.').map_or(0, |i| i + 1);
    id.get(..start + 8).unwrap_or(id)
}
