//! The client side of the codec, for upstream HTTP targets: request encoding, response heads,
//! and an incremental body decoder (Content-Length, chunked, or until close).

use super::chunked;
use super::parse::HttpError;
use super::Status;
use std::io::Write;

/// Most header fields accepted in an upstream's response head.
pub const MAX_RESPONSE_HEADERS: usize = 64;

/// A parsed response head. Header names are lower-cased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub minor_version: u8,
    pub headers: Vec<(String, String)>,
}

impl ResponseHead {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the Content-Type is `want` (parameters ignored).
    pub fn content_type_is(&self, want: &str) -> bool {
        self.header("content-type")
            .and_then(|v| v.split(';').next())
            .is_some_and(|t| t.trim().eq_ignore_ascii_case(want))
    }

    /// Whether the connection may carry another request after this response.
    pub fn keep_alive(&self) -> bool {
        let close = self
            .header("connection")
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")));
        self.minor_version >= 1 && !close
    }
}

/// Parses a response head from the start of `buf`. 1xx interim responses are skipped.
pub fn parse_response_head(buf: &[u8], max_head: usize) -> Result<Status<ResponseHead>, HttpError> {
    let mut offset = 0;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        let n = match resp.parse(&buf[offset..]) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                return if buf.len() - offset > max_head {
                    Err(HttpError::HeadTooLarge)
                } else {
                    Ok(Status::Partial)
                };
            }
            Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeadTooLarge),
            Err(_) => return Err(HttpError::BadRequest("malformed response head")),
        };
        let status = resp.code.unwrap_or(0);
        if (100..200).contains(&status) && status != 101 {
            offset += n;
            continue;
        }
        let headers = resp
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).trim().to_string(),
                )
            })
            .collect();
        return Ok(Status::Complete(
            ResponseHead {
                status,
                minor_version: resp.version.unwrap_or(1),
                headers,
            },
            offset + n,
        ));
    }
}

/// How a response body is delimited.
#[derive(Debug)]
pub enum BodyDecoder {
    None,
    Length(usize),
    Chunked(chunked::Decoder),
    /// Runs until the server closes the connection.
    UntilClose,
}

impl BodyDecoder {
    /// The framing of the body that follows `head` (a response to `method`).
    pub fn for_response(head: &ResponseHead, method: &str) -> Result<BodyDecoder, HttpError> {
        if method == "HEAD" || head.status == 204 || head.status == 304 {
            return Ok(BodyDecoder::None);
        }
        if let Some(te) = head.header("transfer-encoding") {
            if te.eq_ignore_ascii_case("chunked") {
                return Ok(BodyDecoder::Chunked(chunked::Decoder::default()));
            }
            return Err(HttpError::NotImplemented(
                "transfer coding other than chunked",
            ));
        }
        match head.header("content-length") {
            Some(v) => v
                .parse::<usize>()
                .map(BodyDecoder::Length)
                .map_err(|_| HttpError::BadRequest("bad Content-Length in response")),
            None => Ok(BodyDecoder::UntilClose),
        }
    }

    /// Consumes what it can of `input`, appending body bytes to `out`; returns bytes consumed
    /// and whether the body is complete.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(usize, bool), HttpError> {
        match self {
            BodyDecoder::None => Ok((0, true)),
            BodyDecoder::Length(left) => {
                let n = (*left).min(input.len());
                out.extend_from_slice(&input[..n]);
                *left -= n;
                Ok((n, *left == 0))
            }
            BodyDecoder::Chunked(d) => d.feed(input, out),
            BodyDecoder::UntilClose => {
                out.extend_from_slice(input);
                Ok((input.len(), false))
            }
        }
    }

    /// Whether the connection closing now ends the body cleanly (not a truncation).
    pub fn complete_at_eof(&self) -> bool {
        matches!(
            self,
            BodyDecoder::UntilClose | BodyDecoder::None | BodyDecoder::Length(0)
        )
    }
}

/// Appends a request with a Content-Length body (or none, for GET/DELETE without one).
pub fn write_request(
    out: &mut Vec<u8>,
    method: &str,
    path: &str,
    host: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) {
    let _ = write!(out, "{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (n, v) in headers {
        let _ = write!(out, "{n}: {v}\r\n");
    }
    if !body.is_empty() || method == "POST" {
        let _ = write!(out, "Content-Length: {}\r\n", body.len());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_heads_and_skips_interim_responses() {
        let input = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nMcp-Session-Id: abc\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n";
        let Ok(Status::Complete(head, n)) = parse_response_head(input, 4096) else {
            panic!("incomplete")
        };
        assert_eq!(head.status, 200);
        assert!(head.content_type_is("text/event-stream") && head.keep_alive());
        assert_eq!(head.header("mcp-session-id"), Some("abc"));
        assert_eq!(&input[n..], b"5\r\n");
        for cut in 0..n {
            assert_eq!(
                parse_response_head(&input[..cut], 4096),
                Ok(Status::Partial),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn body_framing() {
        let head = |h: &str| match parse_response_head(
            format!("HTTP/1.1 200 OK\r\n{h}\r\n").as_bytes(),
            1024,
        ) {
            Ok(Status::Complete(h, _)) => h,
            other => panic!("{other:?}"),
        };
        let mut out = Vec::new();
        let mut d = BodyDecoder::for_response(&head("Content-Length: 3\r\n"), "POST").expect("ok");
        assert_eq!(d.feed(b"ab", &mut out), Ok((2, false)));
        assert_eq!(d.feed(b"cdef", &mut out), Ok((1, true)));
        assert_eq!(out, b"abc");
        let d = BodyDecoder::for_response(&head(""), "POST").expect("ok");
        assert!(d.complete_at_eof());
        assert!(BodyDecoder::for_response(&head("Transfer-Encoding: gzip\r\n"), "GET").is_err());
        assert!(BodyDecoder::for_response(&head("Content-Length: x\r\n"), "GET").is_err());
    }

    #[test]
    fn encodes_requests() {
        let mut out = Vec::new();
        write_request(&mut out, "POST", "/mcp", "h:1", &[("Accept", "a")], b"{}");
        assert_eq!(
            out,
            b"POST /mcp HTTP/1.1\r\nHost: h:1\r\nAccept: a\r\nContent-Length: 2\r\n\r\n{}"
        );
    }
}
