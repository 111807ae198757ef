//! A client connection: buffers, non-blocking reads and writes, and the response shapes
//! (whole, or a chunked SSE stream), including how the answers of one POST are gathered into
//! its reply. What a request *means* is decided by the front and the relay; only the loop
//! reads and writes the socket (`read`, `flush`); everything else here fills buffers.

use crate::client_stream::{ClientStream, Got};
use crate::http::{response, sse};
use serde_json::Value;
use std::time::{Duration, Instant};

/// An idle keep-alive connection with no request in progress is closed after this.
const IDLE_CONN_TIMEOUT: Duration = Duration::from_secs(300);
/// A GET stream gets a comment line after this much silence, so proxies keep it open.
const STREAM_KEEPALIVE: Duration = Duration::from_secs(15);

/// What the access log says of the request being answered (kept only when it is on).
#[derive(Debug)]
pub struct AccessEntry {
    pub method: String,
    pub path: String,
    pub start: Instant,
    pub session: String,
    pub mcp_method: String,
    pub target: String,
}

/// One POST in flight: the client requests it carried that still wait for an answer.
#[derive(Debug)]
pub struct Exchange {
    pub session: u64,
    /// Answers still to come.
    pub remaining: usize,
    /// The body was a JSON array: answer with an array (JSON mode).
    pub batch: bool,
    /// The response became an SSE stream (something had to be sent before the answer).
    pub streaming: bool,
    /// Answers gathered for a JSON-mode reply, each already serialized.
    pub collected: Vec<String>,
    /// `Mcp-Session-Id` to put on the reply (set by `initialize`).
    pub session_header: Option<String>,
    /// The request asked to close the connection afterwards.
    pub keep_alive: bool,
    /// A stateless (2026-07-28) request: an error answer picks the HTTP status.
    pub modern: bool,
}

#[derive(Debug)]
pub enum ConnState {
    /// Reading the next request.
    Idle,
    /// A POST waiting for upstream answers.
    Exchange(Exchange),
    /// The session's GET stream (server-to-client messages).
    Stream { session: u64 },
}

/// What `Conn::answer` did with one answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Answered {
    /// The connection has no exchange or stream: nothing done.
    Ignored,
    /// Queued; the POST waits for more answers.
    Pending,
    /// The POST's reply is complete; the connection reads its next request.
    Done,
    /// Sent on a legacy session's stream.
    Streamed,
}

/// What a read found.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadResult {
    Open,
    /// The buffer is full: stop reading until it drains.
    Full,
    Closed,
}

pub struct Conn {
    pub stream: ClientStream,
    pub bind: usize,
    pub rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    wpos: usize,
    pub state: ConnState,
    /// Close once the write buffer drains.
    pub closing: bool,
    /// Reading stopped because `rbuf` is full.
    pub paused: bool,
    /// The peer has closed its side.
    pub eof: bool,
    /// When the first byte of the request being read arrived (slow-client timeout).
    pub request_started: Option<Instant>,
    /// The response being streamed uses chunked framing (HTTP/1.1 peer).
    pub chunked: bool,
    /// The access-log entry of the request being answered.
    pub access: Option<AccessEntry>,
    /// Headers every response to the current request carries (CORS), added by `respond` and
    /// `start_sse`.
    pub extra: Vec<(&'static str, String)>,
    /// `100 Continue` was sent for the request being read.
    pub continued: bool,
    /// Last readiness event (idle keep-alive timeout).
    pub last_active: Instant,
    /// Last bytes queued on a GET stream (keep-alive comments).
    pub last_write: Instant,
}

impl Conn {
    pub fn new(stream: ClientStream, bind: usize) -> Conn {
        Conn {
            stream,
            bind,
            rbuf: Vec::new(),
            wbuf: Vec::new(),
            wpos: 0,
            state: ConnState::Idle,
            closing: false,
            paused: false,
            eof: false,
            request_started: None,
            chunked: true,
            continued: false,
            access: None,
            extra: Vec::new(),
            last_active: Instant::now(),
            last_write: Instant::now(),
        }
    }

    /// Reads until `WouldBlock`, EOF or `limit` buffered bytes.
    ///
    /// With `short_read_drains`, a read that returns less than asked for ends the loop: a TCP
    /// socket gave all it had, and edge-triggered readiness reports anything newer. This saves
    /// a `WouldBlock` read per event; the caller passes false when the event also reported the
    /// peer's close, which only a read of 0 bytes would surface.
    pub fn read(&mut self, limit: usize, short_read_drains: bool) -> ReadResult {
        let was_empty = self.rbuf.is_empty();
        let mut raw = 0;
        let got = (self.stream).read(&mut self.rbuf, limit, short_read_drains, &mut |n| raw += n);
        if raw > 0 {
            crate::metrics::with(|m| m.bytes_in += raw as u64);
            if was_empty && self.request_started.is_none() {
                self.request_started = Some(Instant::now());
            }
        }
        match got {
            Got::Drained => {
                self.paused = false;
                ReadResult::Open
            }
            Got::Full => {
                self.paused = true;
                ReadResult::Full
            }
            Got::Closed => {
                self.eof = true;
                ReadResult::Closed
            }
        }
    }

    /// Writes buffered bytes until done or `WouldBlock`. Err: the peer is gone.
    pub fn flush(&mut self) -> std::io::Result<()> {
        let wire = self.stream.write(&self.wbuf, &mut self.wpos)?;
        crate::metrics::with(|m| m.bytes_out += wire as u64);
        if self.wpos == self.wbuf.len() {
            self.wbuf.clear();
            self.wpos = 0;
        } else if self.wpos > 64 * 1024 {
            self.wbuf.drain(..self.wpos);
            self.wpos = 0;
        }
        Ok(())
    }

    /// Accounts for one answer (None: a request that gets none) of the POST being served, and
    /// queues the reply once it was the last: one JSON body (an array for a batch), 202 when no
    /// request is answered, or the end of the SSE stream the reply became.
    pub fn answer(&mut self, text: Option<String>) -> Answered {
        if let ConnState::Stream { .. } = self.state {
            // A legacy session: answers travel on its stream like everything else.
            let Some(m) = text else {
                return Answered::Ignored;
            };
            self.sse_json(&m);
            self.last_write = Instant::now();
            return Answered::Streamed;
        }
        let streaming = match &self.state {
            ConnState::Exchange(ex) => ex.streaming,
            _ => return Answered::Ignored,
        };
        if let Some(m) = text {
            if streaming {
                self.sse_json(&m);
            } else if let ConnState::Exchange(ex) = &mut self.state {
                ex.collected.push(m);
            }
        }
        if let ConnState::Exchange(ex) = &mut self.state {
            ex.remaining = ex.remaining.saturating_sub(1);
            if ex.remaining > 0 {
                return Answered::Pending;
            }
        }
        let ConnState::Exchange(ex) = std::mem::replace(&mut self.state, ConnState::Idle) else {
            return Answered::Ignored;
        };
        if ex.streaming {
            self.end_stream();
            if !ex.keep_alive {
                self.closing = true;
            }
        } else {
            let mut headers = Vec::new();
            if let Some(sid) = &ex.session_header {
                headers.push(("Mcp-Session-Id", sid.as_str()));
            }
            let mut collected = ex.collected;
            match (ex.batch, collected.len()) {
                (_, 0) => self.respond(202, &headers, b"", ex.keep_alive),
                (false, _) => {
                    let text = collected.swap_remove(0);
                    let status = match ex.modern {
                        true => crate::jsonrpc::modern_status(&text),
                        false => 200,
                    };
                    self.respond_json_text(status, &headers, &text, ex.keep_alive)
                }
                (true, _) => {
                    let array = format!("[{}]", collected.join(","));
                    self.respond_json_text(200, &headers, &array, ex.keep_alive)
                }
            }
        }
        Answered::Done
    }

    /// Queues a message for session `session`'s client: on the POST being served (its reply
    /// turns into an SSE stream, carrying what was gathered so far), or on the session's
    /// stream. False when this connection serves neither for that session.
    pub fn push(&mut self, session: u64, msg: &Value) -> bool {
        match &mut self.state {
            ConnState::Exchange(ex) if ex.session == session => {
                if !ex.streaming {
                    ex.streaming = true;
                    let collected = std::mem::take(&mut ex.collected);
                    let sid = ex.session_header.clone();
                    let headers: Vec<(&str, &str)> =
                        sid.iter().map(|v| ("Mcp-Session-Id", v.as_str())).collect();
                    let chunked = self.chunked;
                    self.start_sse(&headers, chunked);
                    for m in &collected {
                        self.sse_json(m);
                    }
                }
                self.sse_message(msg);
            }
            ConnState::Stream { session: s } if *s == session => {
                self.sse_message(msg);
                self.last_write = Instant::now();
            }
            _ => return false,
        }
        true
    }

    /// The once-a-second check: a request still incomplete after `header_timeout` gets 408,
    /// an idle keep-alive connection times out, a quiet stream gets a keep-alive comment.
    /// True: close the connection now.
    pub fn sweep(&mut self, now: Instant, header_timeout: Duration) -> bool {
        match self.state {
            ConnState::Idle => {
                let slow = self
                    .request_started
                    .is_some_and(|t| now.duration_since(t) >= header_timeout);
                if slow {
                    self.respond_text(408, "request timeout\n", false);
                    let _ = self.flush();
                    return true;
                }
                self.rbuf.is_empty() && now.duration_since(self.last_active) >= IDLE_CONN_TIMEOUT
            }
            ConnState::Stream { .. } if now.duration_since(self.last_write) >= STREAM_KEEPALIVE => {
                self.sse_comment("keepalive");
                self.last_write = now;
                self.flush().is_err()
            }
            // A reply stream that stays open (a 2026-07-28 subscriptions/listen) is kept
            // alive the same way.
            ConnState::Exchange(ref ex)
                if ex.streaming && now.duration_since(self.last_write) >= STREAM_KEEPALIVE =>
            {
                self.sse_comment("keepalive");
                self.last_write = now;
                self.flush().is_err()
            }
            _ => false,
        }
    }

    /// Queues the interim response a client waits for after `Expect: 100-continue`.
    pub fn send_continue(&mut self) {
        self.wbuf
            .extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        self.continued = true;
    }

    /// Bytes accepted for writing but not yet written.
    pub fn unwritten(&self) -> usize {
        self.wbuf.len() - self.wpos
    }

    pub fn is_drained(&self) -> bool {
        self.wpos == self.wbuf.len() && !self.stream.tls_pending()
    }

    /// Queues a whole response.
    pub fn respond(
        &mut self,
        status: u16,
        headers: &[(&str, &str)],
        body: &[u8],
        keep_alive: bool,
    ) {
        let mut all = headers.to_vec();
        all.extend(self.extra.iter().map(|(n, v)| (*n, v.as_str())));
        response::write_full(&mut self.wbuf, status, &all, body, keep_alive);
        self.responded(status);
        if !keep_alive {
            self.closing = true;
        }
    }

    /// Queues a short plain-text error response.
    pub fn respond_text(&mut self, status: u16, text: &str, keep_alive: bool) {
        self.respond(
            status,
            &[("Content-Type", "text/plain; charset=utf-8")],
            text.as_bytes(),
            keep_alive,
        );
    }

    /// Queues a JSON response.
    pub fn respond_json(
        &mut self,
        status: u16,
        extra: &[(&str, &str)],
        body: &Value,
        keep_alive: bool,
    ) {
        let text = serde_json::to_string(body).unwrap_or_default();
        self.respond_json_text(status, extra, &text, keep_alive);
    }

    /// Queues a JSON response whose body is already serialized.
    pub fn respond_json_text(
        &mut self,
        status: u16,
        extra: &[(&str, &str)],
        text: &str,
        keep_alive: bool,
    ) {
        let mut headers = vec![("Content-Type", "application/json")];
        headers.extend_from_slice(extra);
        self.respond(status, &headers, text.as_bytes(), keep_alive);
    }

    /// Starts an SSE response (chunked for HTTP/1.1 peers, close-delimited for HTTP/1.0).
    pub fn start_sse(&mut self, extra: &[(&str, &str)], chunked: bool) {
        let mut headers = vec![
            ("Content-Type", "text/event-stream"),
            ("Cache-Control", "no-cache"),
        ];
        headers.extend_from_slice(extra);
        headers.extend(self.extra.iter().map(|(n, v)| (*n, v.as_str())));
        response::write_stream_head(&mut self.wbuf, 200, &headers, chunked);
        self.responded(200);
        self.chunked = chunked;
        if !chunked {
            self.closing = true;
        }
    }

    /// Counts the response and writes its access-log line.
    fn responded(&mut self, status: u16) {
        crate::metrics::with(|m| m.http_response(status));
        let Some(a) = self.access.take() else {
            return;
        };
        let ms = a.start.elapsed().as_secs_f64() * 1000.0;
        match crate::log::access_log() {
            crate::log::AccessLog::Off => {}
            crate::log::AccessLog::Text => eprintln!(
                "mcplex: access {} {} {status} {ms:.2}ms session={} mcp={} target={}",
                a.method,
                a.path,
                or_dash(&a.session),
                or_dash(&a.mcp_method),
                or_dash(&a.target)
            ),
            crate::log::AccessLog::Json => eprintln!(
                "{}",
                serde_json::json!({
                    "access": true, "method": a.method, "path": a.path, "status": status,
                    "durationMs": (ms * 100.0).round() / 100.0, "session": a.session,
                    "mcpMethod": a.mcp_method, "target": a.target,
                })
            ),
        }
    }

    /// Queues one event of another type (the legacy transport's `endpoint`).
    pub fn sse_event(&mut self, event: &str, data: &str) {
        let mut ev = Vec::new();
        sse::encode(&mut ev, Some(event), None, data);
        self.stream_bytes(&ev);
    }

    /// Queues one `event: message` carrying a JSON-RPC message.
    pub fn sse_message(&mut self, msg: &Value) {
        self.sse_json(&serde_json::to_string(msg).unwrap_or_default());
    }

    /// Queues one already-serialized JSON-RPC message as an SSE `message` event.
    pub fn sse_json(&mut self, data: &str) {
        let mut ev = Vec::with_capacity(data.len() + 24);
        sse::encode(&mut ev, Some("message"), None, data);
        self.stream_bytes(&ev);
    }

    /// Queues an SSE comment (keep-alive).
    pub fn sse_comment(&mut self, text: &str) {
        let mut ev = Vec::new();
        sse::encode_comment(&mut ev, text);
        self.stream_bytes(&ev);
    }

    fn stream_bytes(&mut self, bytes: &[u8]) {
        if self.chunked {
            response::write_chunk(&mut self.wbuf, bytes);
        } else {
            self.wbuf.extend_from_slice(bytes);
        }
    }

    /// Ends a streamed response; a close-delimited one ends by closing.
    pub fn end_stream(&mut self) {
        if self.chunked {
            response::write_last_chunk(&mut self.wbuf);
        } else {
            self.closing = true;
        }
    }
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// A connection over a real loopback socket, and the client's end of it.
    fn pair() -> (Conn, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = std::net::TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (server, _) = l.accept().expect("accept");
        server.set_nonblocking(true).expect("nonblocking");
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        (
            Conn::new(
                ClientStream::new(mio::net::TcpStream::from_std(server), None),
                0,
            ),
            client,
        )
    }

    /// Flushes and reads what the client received so far.
    fn received(c: &mut Conn, client: &mut std::net::TcpStream) -> String {
        c.flush().expect("flush");
        let mut buf = vec![0u8; 64 * 1024];
        let n = client.read(&mut buf).expect("read");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    fn exchange(remaining: usize, batch: bool) -> ConnState {
        ConnState::Exchange(Exchange {
            session: 1,
            remaining,
            batch,
            streaming: false,
            collected: Vec::new(),
            session_header: Some("s-1".into()),
            keep_alive: true,
            modern: false,
        })
    }

    #[test]
    fn a_batch_gathers_its_answers_into_one_json_array() {
        let (mut c, mut client) = pair();
        c.state = exchange(3, true);
        assert_eq!(c.answer(Some(r#"{"id":1}"#.into())), Answered::Pending);
        assert_eq!(c.answer(None), Answered::Pending, "a cancelled request");
        assert_eq!(c.answer(Some(r#"{"id":3}"#.into())), Answered::Done);
        assert!(matches!(c.state, ConnState::Idle));
        let got = received(&mut c, &mut client);
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
        assert!(got.contains("Mcp-Session-Id: s-1\r\n"), "{got}");
        assert!(got.ends_with(r#"[{"id":1},{"id":3}]"#), "{got}");
    }

    #[test]
    fn a_push_turns_the_reply_into_an_sse_stream() {
        let (mut c, mut client) = pair();
        c.state = exchange(1, false);
        assert!(!c.push(2, &serde_json::json!({"other":"session"})));
        assert!(c.push(1, &serde_json::json!({"method":"notifications/progress"})));
        assert_eq!(c.answer(Some(r#"{"id":1}"#.into())), Answered::Done);
        let got = received(&mut c, &mut client);
        assert!(got.contains("Content-Type: text/event-stream\r\n"), "{got}");
        let progress = got.find("notifications/progress").unwrap_or(usize::MAX);
        let answer = got.find(r#"data: {"id":1}"#).unwrap_or(0);
        assert!(progress < answer, "progress first, then the answer: {got}");
        assert!(got.ends_with("0\r\n\r\n"), "the stream ends: {got}");
    }

    #[test]
    fn no_answer_at_all_is_202() {
        let (mut c, mut client) = pair();
        c.state = exchange(1, false);
        assert_eq!(c.answer(None), Answered::Done);
        let got = received(&mut c, &mut client);
        assert!(got.starts_with("HTTP/1.1 202"), "{got}");
        assert_eq!(
            c.answer(Some("{}".into())),
            Answered::Ignored,
            "nothing is waiting"
        );
    }
}
