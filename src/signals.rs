//! Signals as loop events: signal-hook sets a flag per signal and writes a byte to a socket
//! pair whose read end the `Poll` watches. The loop drains the socket, then reads the flags.

use mio::net::UnixStream;
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGTERM};
use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What the loop should do after a wake-up.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pending {
    pub shutdown: bool,
    pub child_exited: bool,
    pub reload: bool,
}

pub struct Signals {
    pub receiver: UnixStream,
    shutdown: Arc<AtomicBool>,
    child: Arc<AtomicBool>,
    reload: Arc<AtomicBool>,
}

impl Signals {
    pub fn install() -> io::Result<Signals> {
        let (rx, tx) = std::os::unix::net::UnixStream::pair()?;
        rx.set_nonblocking(true)?;
        tx.set_nonblocking(true)?;
        let shutdown = Arc::new(AtomicBool::new(false));
        let child = Arc::new(AtomicBool::new(false));
        let reload = Arc::new(AtomicBool::new(false));
        for (sig, flag) in [
            (SIGINT, &shutdown),
            (SIGTERM, &shutdown),
            (SIGCHLD, &child),
            (SIGHUP, &reload),
        ] {
            signal_hook::flag::register(sig, Arc::clone(flag))?;
            signal_hook::low_level::pipe::register(sig, tx.try_clone()?)?;
        }
        Ok(Signals {
            receiver: UnixStream::from_std(rx),
            shutdown,
            child,
            reload,
        })
    }

    /// Drains the wake-up socket and takes the flags that were set.
    pub fn take(&mut self) -> Pending {
        let mut buf = [0u8; 64];
        while let Ok(n) = self.receiver.read(&mut buf) {
            if n == 0 {
                break;
            }
        }
        Pending {
            shutdown: self.shutdown.swap(false, Ordering::SeqCst),
            child_exited: self.child.swap(false, Ordering::SeqCst),
            reload: self.reload.swap(false, Ordering::SeqCst),
        }
    }
}
