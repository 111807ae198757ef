//! One byte stream to an upstream, plain TCP or TLS, behind a single non-blocking API. I/O
//! errors are turned into [`Io`] here, once, so the upstream state machines see only outcomes.

use mio::net::TcpStream;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};
use std::io::{self, ErrorKind, Read, Write};
use std::sync::Arc;

/// What a read or flush came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Io {
    /// Did what it could; wait for the next readiness event.
    WouldBlock,
    /// Stopped at the byte limit with more possibly waiting: consume, then read again.
    More,
    /// The peer closed the stream.
    Closed,
    Error(String),
}

pub struct Transport {
    pub sock: TcpStream,
    tls: Option<Box<ClientConnection>>,
    connected: bool,
}

impl Transport {
    /// A connection attempt under way (mio's connect does not block).
    pub fn connect(addr: std::net::SocketAddr) -> io::Result<Transport> {
        let sock = TcpStream::connect(addr)?;
        Ok(Transport {
            sock,
            tls: None,
            connected: false,
        })
    }

    /// Wraps the stream in TLS; the handshake runs as the stream is read and flushed.
    pub fn start_tls(
        &mut self,
        cfg: Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> Result<(), String> {
        let conn = ClientConnection::new(cfg, name).map_err(|e| format!("TLS setup: {e}"))?;
        self.tls = Some(Box::new(conn));
        Ok(())
    }

    /// Whether the TCP connection is established: Ok(false) while connecting, Err if it failed.
    pub fn check_connected(&mut self) -> Result<bool, String> {
        if self.connected {
            return Ok(true);
        }
        if let Ok(Some(e)) | Err(e) = self.sock.take_error() {
            return Err(describe(&e));
        }
        match self.sock.peer_addr() {
            Ok(_) => {
                self.connected = true;
                let _ = self.sock.set_nodelay(true);
                Ok(true)
            }
            Err(e) if e.kind() == ErrorKind::NotConnected || e.raw_os_error() == Some(115) => {
                Ok(false)
            }
            Err(e) => Err(describe(&e)),
        }
    }

    /// Whether TLS has records of its own to send (handshake included), so the socket's
    /// writability matters even with no request bytes pending.
    pub fn tls_wants_write(&self) -> bool {
        self.tls
            .as_ref()
            .is_some_and(|t| t.wants_write() || t.is_handshaking())
    }

    /// Whether a TLS handshake is still in progress.
    pub fn handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.is_handshaking())
    }

    /// Reads available plaintext into `out` until `WouldBlock`, or until `out` holds `limit`
    /// bytes (then `Io::More`: the caller must consume and call again, since edge-triggered
    /// readiness will not repeat for bytes already waiting).
    ///
    /// With `short_read_drains`, a plain-TCP read that returns less than asked for counts as
    /// `WouldBlock`: the socket gave all it had, and edge-triggered readiness reports anything
    /// newer. The caller passes false when the event reported the peer's close, which only a
    /// read of 0 bytes surfaces.
    pub fn read(&mut self, out: &mut Vec<u8>, limit: usize, short_read_drains: bool) -> Io {
        crate::scratch::with(|buf| {
            match self.tls.as_mut() {
                None => loop {
                    if out.len() >= limit {
                        return Io::More;
                    }
                    match self.sock.read(buf) {
                        Ok(0) => return Io::Closed,
                        Ok(n) => {
                            out.extend_from_slice(&buf[..n]);
                            if short_read_drains && n < buf.len() && out.len() < limit {
                                return Io::WouldBlock;
                            }
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => return Io::WouldBlock,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(e) => return Io::Error(describe(&e)),
                    }
                },
                Some(tls) => loop {
                    let mut eof = false;
                    let mut drained = false;
                    match tls.read_tls(&mut self.sock) {
                        Ok(0) => eof = true,
                        Ok(_) => {}
                        Err(e) if e.kind() == ErrorKind::WouldBlock => drained = true,
                        Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                        Err(e) => return Io::Error(describe(&e)),
                    }
                    if let Err(e) = tls.process_new_packets() {
                        // Send the alert that explains the failure, then give up.
                        let _ = tls.write_tls(&mut self.sock);
                        return Io::Error(format!("TLS error: {e}"));
                    }
                    loop {
                        if out.len() >= limit {
                            return Io::More;
                        }
                        match tls.reader().read(buf) {
                            Ok(0) => return Io::Closed,
                            Ok(n) => out.extend_from_slice(&buf[..n]),
                            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Io::Closed,
                            Err(e) => return Io::Error(describe(&e)),
                        }
                    }
                    // Handshake messages may need an answer before more data comes.
                    while tls.wants_write() {
                        match tls.write_tls(&mut self.sock) {
                            Ok(_) => {}
                            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                            Err(e) if e.kind() == ErrorKind::Interrupted => {}
                            Err(e) => return Io::Error(describe(&e)),
                        }
                    }
                    if eof {
                        return Io::Closed;
                    }
                    if drained {
                        return Io::WouldBlock;
                    }
                },
            }
        })
    }

    /// Writes `pending[*pos..]` (advancing `pos`), plus any TLS records rustls holds.
    /// Returns `Io::WouldBlock` when the socket is full or everything is written.
    pub fn write(&mut self, pending: &[u8], pos: &mut usize) -> Io {
        match self.tls.as_mut() {
            None => {
                while *pos < pending.len() {
                    match self.sock.write(&pending[*pos..]) {
                        Ok(0) => return Io::Closed,
                        Ok(n) => *pos += n,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => return Io::WouldBlock,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(e) => return Io::Error(describe(&e)),
                    }
                }
                Io::WouldBlock
            }
            Some(tls) => {
                // Plaintext goes to rustls only after the handshake, so nothing is sent early.
                if !tls.is_handshaking() && *pos < pending.len() {
                    match tls.writer().write(&pending[*pos..]) {
                        Ok(n) => *pos += n,
                        Err(e) => return Io::Error(describe(&e)),
                    }
                }
                while tls.wants_write() {
                    match tls.write_tls(&mut self.sock) {
                        Ok(0) => return Io::Closed,
                        Ok(_) => {}
                        Err(e) if e.kind() == ErrorKind::WouldBlock => return Io::WouldBlock,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(e) => return Io::Error(describe(&e)),
                    }
                }
                Io::WouldBlock
            }
        }
    }
}

fn describe(e: &io::Error) -> String {
    match e.kind() {
        ErrorKind::ConnectionRefused => "connection refused".into(),
        ErrorKind::ConnectionReset => "connection reset".into(),
        ErrorKind::TimedOut => "connection timed out".into(),
        _ => e.to_string(),
    }
}
