//! A small blocking HTTP/1.1 client: exactly what MCP over streamable HTTP and legacy HTTP+SSE
//! need, no more. Bodies are framed by Content-Length, chunked encoding or connection close, and
//! are decoded incrementally so that an SSE stream can be read event by event.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Longest status line, header line, chunk-size line or SSE line we accept: a peer that sends
/// more is broken, and we report it rather than buffer without bound.
const MAX_LINE: u64 = 1 << 20;
/// Largest JSON body we read into memory.
const MAX_BODY: u64 = 16 << 20;

/// A connection with its read buffer. Writes go straight to the socket (`get_mut`), which does
/// not disturb buffered input.
pub type Conn = BufReader<Stream>;

/// Plain TCP, or TLS for an https:// URL (trusting the PEM roots in `LOADGEN_CA_FILE`).
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// Headers every request carries, from `LOADGEN_HEADERS` ("Name: value" lines), such as
/// `Authorization: Bearer ...` for an authenticating gateway.
fn extra_headers() -> &'static [(String, String)] {
    static H: OnceLock<Vec<(String, String)>> = OnceLock::new();
    H.get_or_init(|| {
        let text = std::env::var("LOADGEN_HEADERS").unwrap_or_default();
        text.lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
            .collect()
    })
}

fn tls_config() -> io::Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    static C: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    let made = C.get_or_init(|| {
        let path = std::env::var("LOADGEN_CA_FILE")
            .map_err(|_| "https:// needs LOADGEN_CA_FILE".to_string())?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&path).map_err(|e| format!("{path}: {e}"))? {
            let cert = cert.map_err(|e| format!("{path}: {e}"))?;
            roots.add(cert).map_err(|e| format!("{path}: {e}"))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(cfg))
    });
    made.clone().map_err(io::Error::other)
}

#[derive(Clone, Debug)]
pub struct Url {
    pub https: bool,
    pub host: String,
    pub port: u16,
    /// Path plus query, always starting with `/`.
    pub path: String,
}

impl Url {
    pub fn parse(s: &str) -> Result<Url, String> {
        let (https, rest) = match (s.strip_prefix("http://"), s.strip_prefix("https://")) {
            (Some(r), _) => (false, r),
            (None, Some(r)) => (true, r),
            _ => return Err(format!("{s}: only http:// and https:// URLs are supported")),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().map_err(|_| format!("{s}: bad port"))?),
            None => (authority, if https { 443 } else { 80 }),
        };
        if host.is_empty() {
            return Err(format!("{s}: no host"));
        }
        Ok(Url {
            https,
            host: host.to_string(),
            port,
            path: path.to_string(),
        })
    }

    /// The same server with another path; `target` may also be an absolute http:// URL.
    pub fn join(&self, target: &str) -> Result<Url, String> {
        if target.starts_with("http://") || target.starts_with("https://") {
            return Url::parse(target);
        }
        if !target.starts_with('/') {
            return Err(format!(
                "endpoint {target:?} is neither absolute nor a path"
            ));
        }
        Ok(Url {
            path: target.to_string(),
            ..self.clone()
        })
    }

    pub fn authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

pub fn connect(url: &Url, timeout: Duration) -> io::Result<Conn> {
    let stream = TcpStream::connect(url.authority())?;
    // Requests are small single writes; Nagle would only add delay to the measured latency.
    stream.set_nodelay(true)?;
    // A hung peer becomes an error instead of a hung benchmark.
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let stream = match url.https {
        false => Stream::Plain(stream),
        true => {
            let name = rustls::pki_types::ServerName::try_from(url.host.clone())
                .map_err(|e| io::Error::other(e.to_string()))?;
            let conn =
                rustls::ClientConnection::new(tls_config()?, name).map_err(io::Error::other)?;
            Stream::Tls(Box::new(rustls::StreamOwned::new(conn, stream)))
        }
    };
    Ok(BufReader::with_capacity(16 * 1024, stream))
}

/// Writes a whole request in one `write_all`, so it usually leaves in one segment.
pub fn write_request(
    conn: &mut Conn,
    method: &str,
    url: &Url,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<()> {
    let mut req = format!(
        "{method} {} HTTP/1.1\r\nHost: {}\r\n",
        url.path,
        url.authority()
    );
    let extra = extra_headers()
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()));
    for (name, value) in headers.iter().copied().chain(extra) {
        req.push_str(name);
        req.push_str(": ");
        req.push_str(value);
        req.push_str("\r\n");
    }
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    conn.get_mut().write_all(&bytes)
}

pub struct Head {
    pub status: u16,
    /// Names lower-cased.
    headers: Vec<(String, String)>,
    http10: bool,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .any(|(_, v)| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    }

    /// Whether the connection can carry another request after this response's body.
    pub fn keep_alive(&self) -> bool {
        if self.http10 {
            self.has_token("connection", "keep-alive")
        } else {
            !self.has_token("connection", "close")
        }
    }

    pub fn is_event_stream(&self) -> bool {
        self.header("content-type").is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("text/event-stream")
        })
    }

    pub fn framing(&self) -> Result<Framing, String> {
        if self.status == 204 || self.status == 304 {
            return Ok(Framing::Length(0));
        }
        if self.headers.iter().any(|(k, _)| k == "transfer-encoding") {
            if self.has_token("transfer-encoding", "chunked") {
                return Ok(Framing::Chunked);
            }
            return Ok(Framing::Close);
        }
        match self.header("content-length") {
            Some(v) => v
                .trim()
                .parse()
                .map(Framing::Length)
                .map_err(|_| format!("bad Content-Length {v:?}")),
            None => Ok(Framing::Close),
        }
    }
}

pub enum Framing {
    Length(u64),
    Chunked,
    Close,
}

/// One line without its line ending; an EOF before any byte is `UnexpectedEof`.
pub fn read_line<R: BufRead>(r: &mut R) -> io::Result<String> {
    match read_line_opt(r)? {
        Some(line) => Ok(line),
        None => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed",
        )),
    }
}

/// One line without its line ending, or `None` at a clean EOF.
pub fn read_line_opt<R: BufRead>(r: &mut R) -> io::Result<Option<String>> {
    let mut line = Vec::new();
    r.take(MAX_LINE).read_until(b'\n', &mut line)?;
    if line.is_empty() {
        return Ok(None);
    }
    if line.pop() != Some(b'\n') {
        let why = if line.len() as u64 + 1 >= MAX_LINE {
            "line too long"
        } else {
            "truncated line"
        };
        return Err(io::Error::new(io::ErrorKind::InvalidData, why));
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    String::from_utf8(line)
        .map(Some)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "line is not UTF-8"))
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Reads a response head, skipping interim 1xx responses.
pub fn read_head<R: BufRead>(r: &mut R) -> io::Result<Head> {
    loop {
        let status_line = read_line(r)?;
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or("");
        if !version.starts_with("HTTP/1.") {
            return Err(invalid(format!(
                "not an HTTP/1.x status line: {status_line:?}"
            )));
        }
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid(format!("bad status line {status_line:?}")))?;
        let mut headers = Vec::new();
        loop {
            let line = read_line(r)?;
            if line.is_empty() {
                break;
            }
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| invalid(format!("bad header line {line:?}")))?;
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
            if headers.len() > 200 {
                return Err(invalid("too many header fields"));
            }
        }
        if (100..200).contains(&status) {
            continue;
        }
        return Ok(Head {
            status,
            headers,
            http10: version == "HTTP/1.0",
        });
    }
}

enum BodyState {
    Length(u64),
    /// Inside a chunk with this many bytes left.
    ChunkData(u64),
    /// Expecting a chunk-size line.
    ChunkSize,
    Close,
    Done,
}

/// A response body as a `Read` that stops exactly at the body's end, so the connection's next
/// response stays in `inner`. Wrapping it in a `BufReader` (for SSE lines) is therefore safe.
pub struct Body<R> {
    inner: R,
    state: BodyState,
}

impl<R: BufRead> Body<R> {
    pub fn new(inner: R, framing: Framing) -> Body<R> {
        let state = match framing {
            Framing::Length(0) => BodyState::Done,
            Framing::Length(n) => BodyState::Length(n),
            Framing::Chunked => BodyState::ChunkSize,
            Framing::Close => BodyState::Close,
        };
        Body { inner, state }
    }

    /// Reads a whole (JSON) body, bounded by `MAX_BODY`.
    pub fn read_all(mut self) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        (&mut self).take(MAX_BODY + 1).read_to_end(&mut out)?;
        if out.len() as u64 > MAX_BODY {
            return Err(invalid("response body too large"));
        }
        Ok(out)
    }

    /// Copies `n` bytes at most from the buffered input; EOF here means a truncated body.
    fn copy_some(&mut self, out: &mut [u8], n: u64) -> io::Result<usize> {
        let buf = self.inner.fill_buf()?;
        if buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "body truncated",
            ));
        }
        let k = buf
            .len()
            .min(out.len())
            .min(n.min(usize::MAX as u64) as usize);
        out[..k].copy_from_slice(&buf[..k]);
        self.inner.consume(k);
        Ok(k)
    }
}

impl<R: BufRead> Read for Body<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            match self.state {
                BodyState::Done => return Ok(0),
                BodyState::Close => {
                    let n = self.inner.read(out)?;
                    if n == 0 {
                        self.state = BodyState::Done;
                    }
                    return Ok(n);
                }
                BodyState::Length(left) => {
                    let k = self.copy_some(out, left)?;
                    let left = left - k as u64;
                    self.state = if left == 0 {
                        BodyState::Done
                    } else {
                        BodyState::Length(left)
                    };
                    return Ok(k);
                }
                BodyState::ChunkSize => {
                    let line = read_line(&mut self.inner)?;
                    let hex = line.split(';').next().unwrap_or("").trim();
                    let size = u64::from_str_radix(hex, 16)
                        .map_err(|_| invalid(format!("bad chunk-size line {line:?}")))?;
                    if size == 0 {
                        // Trailer fields, if any, end with an empty line.
                        while !read_line(&mut self.inner)?.is_empty() {}
                        self.state = BodyState::Done;
                    } else {
                        self.state = BodyState::ChunkData(size);
                    }
                }
                BodyState::ChunkData(left) => {
                    let k = self.copy_some(out, left)?;
                    let left = left - k as u64;
                    if left == 0 {
                        if !read_line(&mut self.inner)?.is_empty() {
                            return Err(invalid("chunk not followed by CRLF"));
                        }
                        self.state = BodyState::ChunkSize;
                    } else {
                        self.state = BodyState::ChunkData(left);
                    }
                    return Ok(k);
                }
            }
        }
    }
}

/// One server-sent event.
pub struct Event {
    pub event: String,
    pub data: String,
}

/// The next event of an SSE stream, or `None` when the stream ends.
pub fn next_event<R: BufRead>(r: &mut R) -> io::Result<Option<Event>> {
    let mut event = String::new();
    let mut data: Option<String> = None;
    loop {
        let Some(line) = read_line_opt(r)? else {
            // A stream that ends mid-event drops that event, as the SSE spec says.
            return Ok(None);
        };
        if line.is_empty() {
            if let Some(data) = data.take() {
                return Ok(Some(Event { event, data }));
            }
            event.clear();
            continue;
        }
        if line.starts_with(':') {
            continue; // comment / keep-alive
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line.as_str(), ""),
        };
        match field {
            "event" => event = value.to_string(),
            "data" => match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_string()),
            },
            _ => {}
        }
    }
}
