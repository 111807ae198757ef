//! Response encoding: whole responses with Content-Length, and chunked streams (for SSE).

use std::io::Write;

/// The reason phrase for the statuses we send.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Appends `n` in decimal.
fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

fn head(out: &mut Vec<u8>, status: u16, headers: &[(&str, &str)], keep_alive: bool) {
    // Plain appends: `write!` would run the formatting machinery for every header line.
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, status.into());
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    }
}

/// Appends a complete response with a Content-Length body.
pub fn write_full(
    out: &mut Vec<u8>,
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
    keep_alive: bool,
) {
    head(out, status, headers, keep_alive);
    out.extend_from_slice(b"Content-Length: ");
    push_decimal(out, body.len() as u64);
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);
}

/// Appends the head of a streamed response. With `chunked`, each later piece must go through
/// [`write_chunk`] and the stream ends with [`write_last_chunk`]; without it (HTTP/1.0 peers)
/// the body runs until the connection closes.
pub fn write_stream_head(out: &mut Vec<u8>, status: u16, headers: &[(&str, &str)], chunked: bool) {
    head(out, status, headers, chunked);
    if chunked {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends one chunk (nothing for empty data: an empty chunk would end the body).
pub fn write_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    let _ = write!(out, "{:x}\r\n", data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Appends the chunk that ends a chunked body.
pub fn write_last_chunk(out: &mut Vec<u8>) {
    out.extend_from_slice(b"0\r\n\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{chunked, Status};

    #[test]
    fn full_response() {
        let mut out = Vec::new();
        write_full(
            &mut out,
            404,
            &[("Content-Type", "text/plain")],
            b"no",
            false,
        );
        assert_eq!(
            out,
            b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: 2\r\n\r\nno"
        );
    }

    #[test]
    fn chunks_round_trip_through_the_decoder() {
        let mut out = Vec::new();
        for piece in [&b"event: message\n"[..], b"", b"data: {}\n\n"] {
            write_chunk(&mut out, piece);
        }
        write_last_chunk(&mut out);
        assert_eq!(
            chunked::decode(&out, 1000),
            Ok(Status::Complete(
                b"event: message\ndata: {}\n\n".to_vec(),
                out.len()
            ))
        );
    }
}
