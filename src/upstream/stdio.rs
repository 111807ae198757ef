//! A stdio target: a child process speaking newline-delimited JSON-RPC on stdin/stdout.
//!
//! This module owns the pipes and their buffers; the event loop registers the pipes with its
//! `Poll` and calls in here on readiness. Nothing here blocks: pipes are non-blocking and every
//! read and write stops at `WouldBlock`.

use crate::config::StdioTarget;
use mio::unix::pipe::{Receiver, Sender};
use std::io::{self, ErrorKind, Read, Write};
use std::process::{Child, Command, Stdio};

/// A child's stdin may hold this many unwritten bytes before the target counts as stuck.
pub const MAX_STDIN_BACKLOG: usize = 64 * 1024 * 1024;
/// Longest stderr line logged; the rest of the line is cut.
pub const MAX_STDERR_LINE: usize = 4096;

/// What a read of a child's output found.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    /// Drained to `WouldBlock`; the pipe is still open.
    Open,
    /// The child closed the pipe.
    Eof,
    /// A line exceeded the limit: the protocol is broken for this child.
    LineTooLong,
}

pub struct StdioChild {
    pub child: Child,
    pub stdin: Option<Sender>,
    pub stdout: Option<Receiver>,
    pub stderr: Option<Receiver>,
    /// Bytes queued for stdin, and how much of them is written.
    out: Vec<u8>,
    out_pos: usize,
    line: Vec<u8>,
    err_line: Vec<u8>,
}

impl StdioChild {
    /// Starts the child (`cmd` looked up in PATH) with `env` added to the inherited environment.
    /// fork/exec is a short blocking call; it happens once per session and target.
    pub fn spawn(t: &StdioTarget, principal: Option<&str>) -> io::Result<StdioChild> {
        let mut cmd = Command::new(&t.cmd);
        if t.clear_env {
            cmd.env_clear();
        }
        // A child serving one principal alone can keep its files apart by this.
        let own = |s: &str| match principal {
            Some(p) => s.replace("${MCPLEX_PRINCIPAL}", p),
            None => s.to_string(),
        };
        if let Some(p) = principal {
            cmd.env("MCPLEX_PRINCIPAL", p);
        }
        let mut child = cmd
            .args(t.args.iter().map(|a| own(a)))
            .envs(t.env.iter().map(|(k, v)| (k, own(v))))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let pipes = (child.stdin.take(), child.stdout.take(), child.stderr.take());
        let (Some(i), Some(o), Some(e)) = pipes else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::other("child pipes missing"));
        };
        let (stdin, stdout, stderr) = (Sender::from(i), Receiver::from(o), Receiver::from(e));
        // mio does not make these pipes non-blocking by itself.
        stdin.set_nonblocking(true)?;
        stdout.set_nonblocking(true)?;
        stderr.set_nonblocking(true)?;
        Ok(StdioChild {
            child,
            stdin: Some(stdin),
            stdout: Some(stdout),
            stderr: Some(stderr),
            out: Vec::new(),
            out_pos: 0,
            line: Vec::new(),
            err_line: Vec::new(),
        })
    }

    /// Queues one JSON-RPC message (serialized straight into the queue, a newline added) and
    /// writes what the pipe takes now. Errors when the child's stdin is closed or the backlog
    /// is over its limit.
    pub fn send_json(&mut self, msg: &serde_json::Value) -> io::Result<()> {
        if self.stdin.is_none() {
            return Err(io::Error::new(ErrorKind::BrokenPipe, "stdin closed"));
        }
        let before = self.out.len();
        serde_json::to_writer(&mut self.out, msg)?;
        if self.out.len() - self.out_pos > MAX_STDIN_BACKLOG {
            self.out.truncate(before);
            return Err(io::Error::other("child is not reading its stdin"));
        }
        self.out.push(b'\n');
        self.flush()
    }

    /// Writes queued bytes until done or `WouldBlock`.
    pub fn flush(&mut self) -> io::Result<()> {
        let Some(stdin) = self.stdin.as_mut() else {
            return Ok(());
        };
        while self.out_pos < self.out.len() {
            match stdin.write(&self.out[self.out_pos..]) {
                Ok(0) => return Err(io::Error::new(ErrorKind::WriteZero, "stdin closed")),
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        } else if self.out_pos > 64 * 1024 {
            self.out.drain(..self.out_pos);
            self.out_pos = 0;
        }
        Ok(())
    }

    /// Reads stdout until `WouldBlock`, handing each complete non-empty line to `on_line`.
    /// With `short_read_drains`, a short read ends the loop (see `Conn::read`).
    pub fn read_stdout(
        &mut self,
        max_line: usize,
        short_read_drains: bool,
        mut on_line: impl FnMut(&[u8]),
    ) -> ReadOutcome {
        let Some(pipe) = self.stdout.as_mut() else {
            return ReadOutcome::Eof;
        };
        read_lines(
            pipe,
            &mut self.line,
            max_line,
            false,
            short_read_drains,
            &mut on_line,
        )
    }

    /// Reads stderr until `WouldBlock`, handing each line (cut to a loggable length) to `on_line`.
    pub fn read_stderr(&mut self, mut on_line: impl FnMut(&[u8])) -> ReadOutcome {
        let Some(pipe) = self.stderr.as_mut() else {
            return ReadOutcome::Eof;
        };
        read_lines(
            pipe,
            &mut self.err_line,
            MAX_STDERR_LINE,
            true,
            false,
            &mut on_line,
        )
    }
}

/// Shared line splitter for stdout and stderr. With `truncate`, over-long lines are cut
/// instead of being an error.
fn read_lines(
    pipe: &mut Receiver,
    line: &mut Vec<u8>,
    max: usize,
    truncate: bool,
    short_read_drains: bool,
    on_line: &mut dyn FnMut(&[u8]),
) -> ReadOutcome {
    crate::scratch::with(|buf| loop {
        match pipe.read(buf) {
            Ok(0) => {
                if !line.is_empty() {
                    on_line(line);
                    line.clear();
                }
                return ReadOutcome::Eof;
            }
            Ok(n) => {
                let mut rest = &buf[..n];
                while let Some(i) = rest.iter().position(|&b| b == b'\n') {
                    if line.len() + i > max && !truncate {
                        return ReadOutcome::LineTooLong;
                    }
                    let take = i.min(max.saturating_sub(line.len()));
                    line.extend_from_slice(&rest[..take]);
                    let l = line.strip_suffix(b"\r").unwrap_or(line);
                    if !l.iter().all(u8::is_ascii_whitespace) {
                        on_line(l);
                    }
                    line.clear();
                    rest = &rest[i + 1..];
                }
                if line.len() + rest.len() > max {
                    if !truncate {
                        return ReadOutcome::LineTooLong;
                    }
                    let take = max.saturating_sub(line.len());
                    line.extend_from_slice(&rest[..take]);
                } else {
                    line.extend_from_slice(rest);
                }
                if short_read_drains && n < buf.len() {
                    return ReadOutcome::Open;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return ReadOutcome::Open,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return ReadOutcome::Eof,
        }
    })
}
