//! One line per event on stderr: `mcplex: [session] message`. No framework: the gateway's log
//! volume is small and a plain `eprintln!` is enough.

/// Logs one line. The session id, where there is one, is shortened: full ids are bearer
/// credentials and must not land in logs.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {
        eprintln!("mcplex: {}", format_args!($($arg)*))
    };
}

/// The loggable form of a session id: its first 8 characters.
pub fn short_id(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}
