//! The gateway's one read buffer.
//!
//! Every socket and pipe read lands here first and is then appended to its connection's own
//! buffer. One buffer for the whole (single-threaded) loop, zeroed once, instead of a fresh
//! 16 KiB stack array per read: zeroing that array was a measurable share of a relayed call.

use std::cell::RefCell;

/// Bytes asked for per `read` call.
pub const SIZE: usize = 16 * 1024;

thread_local! {
    static BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; SIZE].into_boxed_slice());
}

/// Runs `f` with the read buffer. A nested call (none exists today) gets a buffer of its own
/// rather than a panic.
pub fn with<R>(f: impl FnOnce(&mut [u8]) -> R) -> R {
    BUF.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => f(&mut buf),
        Err(_) => f(&mut vec![0; SIZE]),
    })
}
