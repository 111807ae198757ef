//! Request parsing: the head through httparse, the body by Content-Length or chunked framing.

use super::{chunked, Status};
use std::fmt;

/// Limits a request must fit in.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Request line plus header fields, bytes.
    pub max_head: usize,
    /// Number of header fields.
    pub max_headers: usize,
    /// Decoded body, bytes.
    pub max_body: usize,
}

impl Limits {
    /// The request limits and the most a connection may buffer, from the settings.
    pub fn from_settings(l: &crate::config::Limits) -> (Limits, usize) {
        let limits = Limits {
            max_head: l.max_header_bytes,
            max_headers: l.max_headers,
            max_body: l.max_body_bytes,
        };
        (limits, l.max_header_bytes + l.max_body_bytes + 64 * 1024)
    }
}

/// Why a request was refused; each maps to one HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// Malformed syntax or framing (400).
    BadRequest(&'static str),
    /// Head over `max_head` bytes or too many fields (431).
    HeadTooLarge,
    /// Body over `max_body` bytes (413).
    BodyTooLarge,
    /// A transfer coding we do not implement (501).
    NotImplemented(&'static str),
    /// Not HTTP/1.x (505).
    Version,
}

impl HttpError {
    pub fn status(&self) -> u16 {
        match self {
            HttpError::BadRequest(_) => 400,
            HttpError::HeadTooLarge => 431,
            HttpError::BodyTooLarge => 413,
            HttpError::NotImplemented(_) => 501,
            HttpError::Version => 505,
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::BadRequest(why) => write!(f, "bad request: {why}"),
            HttpError::HeadTooLarge => write!(f, "request head too large"),
            HttpError::BodyTooLarge => write!(f, "request body too large"),
            HttpError::NotImplemented(what) => write!(f, "not implemented: {what}"),
            HttpError::Version => write!(f, "HTTP version not supported"),
        }
    }
}

/// One parsed request. Header names are lower-cased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// The query string without `?`, empty if none.
    pub query: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// The header fields in one buffer (two allocations per request instead of two per
    /// field): each name, lower-cased, followed by its trimmed value.
    fields: String,
    /// Where each field's name starts, where it ends (and its value starts) and where its
    /// value ends in `fields`, in order.
    spans: Vec<(u32, u32, u32)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The header fields, in order: (name in lower case, value trimmed).
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.spans.iter().map(|&span| self.field(span))
    }

    fn field(&self, (start, name_end, end): (u32, u32, u32)) -> (&str, &str) {
        let (s, n, e) = (start as usize, name_end as usize, end as usize);
        let name = self.fields.get(s..n).unwrap_or("");
        (name, self.fields.get(n..e).unwrap_or(""))
    }

    /// Whether the field at `span` is named `name` (in lower case). Lengths first: most
    /// fields are passed over without comparing a byte.
    fn named(&self, (s, n, _): (u32, u32, u32), name: &str) -> bool {
        (n - s) as usize == name.len()
            && self.fields.as_bytes().get(s as usize..n as usize) == Some(name.as_bytes())
    }

    /// The values of the fields named `name`, in order.
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        let spans = self.spans.iter().copied();
        spans
            .filter(move |&span| self.named(span, name))
            .map(|span| self.field(span).1)
    }

    /// The fields whose names start with `prefix` (in lower case): (the rest of the name,
    /// the value). Names are passed over by length and bytes, unsliced.
    pub fn headers_prefixed<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        let bytes = self.fields.as_bytes();
        self.spans
            .iter()
            .copied()
            .filter(move |&(s, n, _)| {
                (n - s) as usize > prefix.len()
                    && bytes
                        .get(s as usize..)
                        .is_some_and(|b| b.starts_with(prefix.as_bytes()))
            })
            .map(move |(s, n, e)| self.field((s + prefix.len() as u32, n, e)))
    }

    /// The first value of a header field (name in lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let span = self
            .spans
            .iter()
            .copied()
            .find(|&span| self.named(span, name))?;
        Some(self.field(span).1)
    }

    /// All values of a header field, comma lists split, trimmed.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.values(name)
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
    }

    /// Whether the connection stays open after this request (RFC 9112 section 9.3).
    pub fn keep_alive(&self) -> bool {
        let has = |tok: &str| {
            self.header_values("connection")
                .any(|v| v.eq_ignore_ascii_case(tok))
        };
        if self.minor_version == 0 {
            has("keep-alive")
        } else {
            !has("close")
        }
    }

    /// A query parameter's raw value.
    pub fn query_param(&self, key: &str) -> Option<&str> {
        self.query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == key).then_some(v)
        })
    }
}

/// Parses one whole request (head and body) from the start of `buf`.
///
/// `Partial` means the request is not all there yet. The caller keeps the bytes after the
/// consumed count: they are the next pipelined request.
pub fn parse_request(buf: &[u8], limits: &Limits) -> Result<Status<Request>, HttpError> {
    // The usual limit fits on the stack: no allocation per parse.
    let mut stack = [httparse::EMPTY_HEADER; 64];
    let mut heap = Vec::new();
    let headers: &mut [httparse::Header<'_>] = if limits.max_headers <= stack.len() {
        &mut stack[..limits.max_headers]
    } else {
        heap.resize(limits.max_headers, httparse::EMPTY_HEADER);
        &mut heap
    };
    let mut req = httparse::Request::new(headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > limits.max_head {
                Err(HttpError::HeadTooLarge)
            } else {
                Ok(Status::Partial)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeadTooLarge),
        Err(httparse::Error::Version) => return Err(HttpError::Version),
        Err(_) => return Err(HttpError::BadRequest("malformed request head")),
    };
    if head_len > limits.max_head {
        return Err(HttpError::HeadTooLarge);
    }
    let method = req.method.unwrap_or_default().to_string();
    let target = req.path.unwrap_or_default();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target.to_string(), String::new()),
    };
    if !path.starts_with('/') && path != "*" {
        return Err(HttpError::BadRequest("request target must be a path"));
    }
    let minor_version = req.version.unwrap_or(1);
    let size = req.headers.iter().map(|h| h.name.len() + h.value.len());
    let mut fields = String::with_capacity(size.sum());
    let mut spans = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value)
            .map_err(|_| HttpError::BadRequest("header value is not UTF-8"))?;
        // The head is at most `max_head` bytes: the offsets fit.
        let start = fields.len();
        fields.push_str(h.name);
        fields[start..].make_ascii_lowercase();
        let name_end = fields.len() as u32;
        fields.push_str(value.trim());
        spans.push((start as u32, name_end, fields.len() as u32));
    }
    let parsed = Request {
        method,
        path,
        query,
        minor_version,
        fields,
        spans,
        body: Vec::new(),
    };

    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    for (name, value) in parsed.headers() {
        match name {
            "content-length" => {
                // A second Content-Length, even an equal one, is a smuggling shape: refuse it.
                if content_length.is_some() {
                    return Err(HttpError::BadRequest("duplicate Content-Length"));
                }
                if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(HttpError::BadRequest("bad Content-Length"));
                }
                let n: usize = value.parse().map_err(|_| HttpError::BodyTooLarge)?;
                content_length = Some(n);
            }
            "transfer-encoding" => {
                if chunked || !value.eq_ignore_ascii_case("chunked") {
                    return Err(HttpError::NotImplemented(
                        "transfer coding other than chunked",
                    ));
                }
                if minor_version == 0 {
                    return Err(HttpError::BadRequest("Transfer-Encoding in HTTP/1.0"));
                }
                chunked = true;
            }
            _ => {}
        }
    }
    if chunked && content_length.is_some() {
        return Err(HttpError::BadRequest(
            "both Content-Length and Transfer-Encoding",
        ));
    }

    let rest = &buf[head_len..];
    let (body, body_len) = if chunked {
        match chunked::decode(rest, limits.max_body)? {
            Status::Complete(body, used) => (body, used),
            Status::Partial => return Ok(Status::Partial),
        }
    } else {
        let n = content_length.unwrap_or(0);
        if n > limits.max_body {
            return Err(HttpError::BodyTooLarge);
        }
        if rest.len() < n {
            return Ok(Status::Partial);
        }
        (rest[..n].to_vec(), n)
    };
    Ok(Status::Complete(
        Request { body, ..parsed },
        head_len + body_len,
    ))
}

/// Whether `buf` holds a complete HTTP/1.1 head that asks for `Expect: 100-continue`: the
/// client then waits for an interim `100 Continue` before it sends the body.
pub fn expects_continue(buf: &[u8], max_headers: usize) -> bool {
    if !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        return false;
    }
    let mut headers = vec![httparse::EMPTY_HEADER; max_headers];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(_)) if req.version == Some(1) => {
            req.headers.iter().any(|h| {
                h.name.eq_ignore_ascii_case("expect")
                    && h.value.eq_ignore_ascii_case(b"100-continue")
            })
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_head: 1024,
        max_headers: 16,
        max_body: 64,
    };

    fn complete(buf: &[u8]) -> (Request, usize) {
        match parse_request(buf, &LIMITS) {
            Ok(Status::Complete(r, n)) => (r, n),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn content_length_body_and_pipelining() {
        let input = b"POST /mcp?sessionId=abc&x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\n\r\n";
        let (r, n) = complete(input);
        assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/mcp"));
        assert_eq!(r.query_param("sessionId"), Some("abc"));
        assert_eq!(r.query_param("x"), Some(""));
        assert_eq!(r.header("host"), Some("h"));
        assert_eq!(r.body, b"hello");
        assert!(r.keep_alive());
        let (r2, n2) = complete(&input[n..]);
        assert_eq!((r2.method.as_str(), r2.body.len()), ("GET", 0));
        assert_eq!(n + n2, input.len());
    }

    #[test]
    fn fields_are_found_by_name_and_by_prefix() {
        let input = b"GET / HTTP/1.1\r\nMCP-Param-Region:  eu \r\nAccept: a\r\naccept: b, c\r\nMcp-Param-: x\r\nmcp-param-n: 7\r\n\r\n";
        let (r, _) = complete(input);
        assert_eq!(r.header("accept"), Some("a"));
        assert_eq!(
            r.header("Accept"),
            None,
            "names are looked up in lower case"
        );
        assert_eq!(
            r.header_values("accept").collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        let params: Vec<_> = r.headers_prefixed("mcp-param-").collect();
        assert_eq!(params, [("region", "eu"), ("n", "7")]);
        assert_eq!(r.headers().count(), 5);
        assert_eq!(r.headers().next(), Some(("mcp-param-region", "eu")));
    }

    #[test]
    fn every_split_is_partial() {
        let inputs: [&[u8]; 2] = [
            b"POST /mcp HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
            b"POST /mcp HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        ];
        for input in inputs {
            for cut in 0..input.len() {
                assert_eq!(
                    parse_request(&input[..cut], &LIMITS),
                    Ok(Status::Partial),
                    "cut {cut}"
                );
            }
            let (r, n) = complete(input);
            assert_eq!((r.body.as_slice(), n), (&b"abc"[..], input.len()));
        }
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        let cases: [(&[u8], u16); 7] = [
            (
                b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
                400,
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                400,
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                501,
            ),
            (b"POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\nabc", 400),
            (b"POST / HTTP/1.1\r\nX: a\r\n b\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nContent-Length: 65\r\n\r\n", 413),
            (b"GET http://x/ HTTP/1.1\r\n\r\n", 400),
        ];
        for (input, status) in cases {
            match parse_request(input, &LIMITS) {
                Err(e) => assert_eq!(e.status(), status, "{}", String::from_utf8_lossy(input)),
                Ok(s) => panic!("accepted {:?}: {s:?}", String::from_utf8_lossy(input)),
            }
        }
    }

    #[test]
    fn oversized_heads_are_431() {
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 2000));
        assert_eq!(parse_request(&big, &LIMITS), Err(HttpError::HeadTooLarge));
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..20 {
            many.extend(format!("H{i}: v\r\n").bytes());
        }
        many.extend(b"\r\n");
        assert_eq!(parse_request(&many, &LIMITS), Err(HttpError::HeadTooLarge));
    }

    #[test]
    fn expect_continue() {
        let head = b"POST / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n";
        assert!(expects_continue(head, 8));
        assert!(!expects_continue(&head[..head.len() - 1], 8));
        assert!(!expects_continue(
            b"POST / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n",
            8
        ));
    }

    #[test]
    fn keep_alive_rules() {
        assert!(!complete(b"GET / HTTP/1.0\r\n\r\n").0.keep_alive());
        assert!(
            complete(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                .0
                .keep_alive()
        );
        assert!(
            !complete(b"GET / HTTP/1.1\r\nConnection: foo, close\r\n\r\n")
                .0
                .keep_alive()
        );
    }
}
