//! One byte stream from a client, plain TCP or TLS (an HTTPS listener), behind the two calls
//! the downstream connection makes: read what arrived, write what is queued. The TLS
//! handshake runs inside those calls as readiness comes, like the upstream side's.

use crate::auth::Principal;
use crate::warn;
use mio::net::TcpStream;
use rustls::ServerConnection;
use std::io::{self, ErrorKind, Read, Write};
use std::rc::Rc;

/// What a read came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Got {
    /// Read until the socket had nothing more.
    Drained,
    /// `out` reached the limit; more may be waiting.
    Full,
    /// The peer closed (or the stream failed: the reason is logged here).
    Closed,
}

pub struct ClientStream {
    pub sock: TcpStream,
    tls: Option<Box<ServerConnection>>,
    /// Some byte arrived (a TLS port checks the first one for plaintext HTTP).
    seen: bool,
    /// The principal of the verified client certificate, read once the handshake is done.
    cert: Option<Option<Rc<Principal>>>,
}

/// The answer to plaintext HTTP on a TLS port, written outside TLS: the client can read it.
const PLAINTEXT_ON_TLS: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n\
Content-Length: 44\r\nConnection: close\r\n\r\nthis port speaks HTTPS; use an https:// URL\n";

impl ClientStream {
    pub fn new(sock: TcpStream, tls: Option<ServerConnection>) -> ClientStream {
        ClientStream {
            sock,
            tls: tls.map(Box::new),
            seen: false,
            cert: None,
        }
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The TLS session's own records (handshake, alerts) wait to be sent.
    pub fn tls_pending(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.wants_write())
    }

    /// The principal a verified client certificate names (mutual TLS): its subject CN, read
    /// from the certificate once per connection.
    pub fn cert_principal(&mut self) -> Option<&Rc<Principal>> {
        let tls = self.tls.as_ref()?;
        if self.cert.is_none() && !tls.is_handshaking() {
            let leaf = tls.peer_certificates().and_then(|c| c.first());
            let cn = leaf.and_then(|c| crate::tls::certificate_subject(c.as_ref()));
            self.cert = Some(cn.map(|cn| Rc::new(Principal::new("cert", cn, None, None))));
        }
        self.cert.as_ref()?.as_ref()
    }

    /// Reads into `out` until the socket has nothing more or `out` holds `limit` bytes.
    /// `raw` is told the count of every batch of bytes taken off the socket (handshake bytes
    /// count: a slow handshake is a slow request).
    ///
    /// With `short_read_drains`, a plain read returning less than asked ends the loop (the
    /// socket gave all it had; edge-triggered readiness reports anything newer).
    pub fn read(
        &mut self,
        out: &mut Vec<u8>,
        limit: usize,
        short_read_drains: bool,
        raw: &mut dyn FnMut(usize),
    ) -> Got {
        if self.tls.is_some() && !self.seen {
            match self.sniff_plaintext() {
                Some(true) => return Got::Closed,
                Some(false) => {}
                None => return Got::Drained,
            }
        }
        crate::scratch::with(|buf| match self.tls.as_mut() {
            None => loop {
                if out.len() >= limit {
                    return Got::Full;
                }
                let room = (limit - out.len()).min(buf.len());
                match self.sock.read(&mut buf[..room]) {
                    Ok(0) => return Got::Closed,
                    Ok(n) => {
                        self.seen = true;
                        raw(n);
                        out.extend_from_slice(&buf[..n]);
                        if short_read_drains && n < room {
                            return Got::Drained;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return Got::Drained,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => return Got::Closed,
                }
            },
            Some(tls) => {
                let mut eof = false;
                loop {
                    // Plaintext rustls already holds comes first (it may be left from a read
                    // that stopped at the limit).
                    loop {
                        if out.len() >= limit {
                            return Got::Full;
                        }
                        let room = (limit - out.len()).min(buf.len());
                        match tls.reader().read(&mut buf[..room]) {
                            // close_notify: the client is done.
                            Ok(0) => return Got::Closed,
                            Ok(n) => out.extend_from_slice(&buf[..n]),
                            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                            Err(_) => return Got::Closed,
                        }
                    }
                    if eof {
                        return Got::Closed;
                    }
                    match tls.read_tls(&mut self.sock) {
                        Ok(0) => eof = true,
                        Ok(n) => raw(n),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            let _ = send_records(tls, &mut self.sock);
                            return Got::Drained;
                        }
                        Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                        Err(_) => return Got::Closed,
                    }
                    if let Err(e) = tls.process_new_packets() {
                        warn!("TLS with a client failed: {e}");
                        // The alert that says why goes out before the close.
                        let _ = send_records(tls, &mut self.sock);
                        return Got::Closed;
                    }
                    // Handshake answers go out as soon as they exist.
                    if send_records(tls, &mut self.sock).is_err() {
                        return Got::Closed;
                    }
                }
            }
        })
    }

    /// Looks at the first byte on a TLS port without taking it: a TLS record starts with a
    /// handshake byte (22); plaintext HTTP starts with a letter and is answered with a plain
    /// 400. Some(true): it was plaintext (answered, close). None: nothing arrived yet.
    fn sniff_plaintext(&mut self) -> Option<bool> {
        let mut first = [0u8; 1];
        match self.sock.peek(&mut first) {
            Ok(0) => Some(true),
            Ok(_) => {
                self.seen = true;
                if first[0].is_ascii_alphabetic() {
                    warn!("plaintext HTTP on an HTTPS listener; answered 400");
                    let _ = self.sock.write(PLAINTEXT_ON_TLS);
                    return Some(true);
                }
                Some(false)
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => None,
            Err(_) => Some(true),
        }
    }

    /// Writes `pending[*pos..]`, advancing `pos`, until done or the socket is full; TLS
    /// records of the session's own go too. Returns the bytes put on the wire. Err: the
    /// peer is gone.
    pub fn write(&mut self, pending: &[u8], pos: &mut usize) -> io::Result<usize> {
        let mut wire = 0;
        match self.tls.as_mut() {
            None => {
                while *pos < pending.len() {
                    match self.sock.write(&pending[*pos..]) {
                        Ok(0) => return Err(ErrorKind::WriteZero.into()),
                        Ok(n) => {
                            *pos += n;
                            wire += n;
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            Some(tls) => loop {
                let mut moved = false;
                if *pos < pending.len() {
                    // rustls takes plaintext up to its buffer limit (and holds it while the
                    // handshake runs).
                    let n = tls.writer().write(&pending[*pos..])?;
                    *pos += n;
                    moved = n > 0;
                }
                if !tls.wants_write() {
                    if moved {
                        continue;
                    }
                    break;
                }
                match tls.write_tls(&mut self.sock) {
                    Ok(0) => return Err(ErrorKind::WriteZero.into()),
                    Ok(n) => wire += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            },
        }
        Ok(wire)
    }

    /// Ends TLS politely (close_notify), best effort: the connection is being closed.
    pub fn shutdown(&mut self) {
        if let Some(tls) = self.tls.as_mut() {
            tls.send_close_notify();
            let _ = send_records(tls, &mut self.sock);
        }
    }
}

/// Writes the records rustls holds until none are left or the socket is full.
fn send_records(tls: &mut ServerConnection, sock: &mut TcpStream) -> io::Result<()> {
    while tls.wants_write() {
        match tls.write_tls(sock) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
