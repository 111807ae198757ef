//! Decoder for `Transfer-Encoding: chunked` bodies (RFC 9112 section 7.1).

use super::parse::HttpError;
use super::Status;

/// More hex digits than this in a chunk size is an attack, not a body.
pub const MAX_CHUNK_SIZE_DIGITS: usize = 16;
/// Longest chunk-size line we accept (size + extensions).
pub const MAX_CHUNK_LINE: usize = 1024;
/// Total bytes of trailer fields we accept after the last chunk.
pub const MAX_TRAILER_BYTES: usize = 8 * 1024;

/// Decodes a complete chunked body from the start of `buf`.
///
/// Returns the body and the number of bytes consumed (through the final CRLF), `Partial` when
/// more bytes are needed, or an error for malformed framing or a body over `max_body` bytes.
pub fn decode(buf: &[u8], max_body: usize) -> Result<Status<Vec<u8>>, HttpError> {
    let mut body = Vec::new();
    let mut pos = 0;
    loop {
        let Some(line_end) = find_crlf(&buf[pos..], MAX_CHUNK_LINE)? else {
            return Ok(Status::Partial);
        };
        let line = &buf[pos..pos + line_end];
        let size = chunk_size(line)?;
        pos += line_end + 2;
        if size == 0 {
            return trailers(buf, pos).map(|s| match s {
                Status::Complete((), used) => Status::Complete(body, used),
                Status::Partial => Status::Partial,
            });
        }
        if body.len().saturating_add(size) > max_body {
            return Err(HttpError::BodyTooLarge);
        }
        // Only the size check above guards this addition against overflow.
        let need = pos + size + 2;
        if buf.len() < need {
            return Ok(Status::Partial);
        }
        if &buf[pos + size..need] != b"\r\n" {
            return Err(HttpError::BadRequest("chunk not followed by CRLF"));
        }
        body.extend_from_slice(&buf[pos..pos + size]);
        pos = need;
    }
}

/// Position of the first CRLF in `buf`, or None if not there yet; error if a line runs too long
/// or contains a bare LF.
fn find_crlf(buf: &[u8], max: usize) -> Result<Option<usize>, HttpError> {
    for (i, &b) in buf.iter().enumerate() {
        if b == b'\n' {
            return if i > 0 && buf[i - 1] == b'\r' {
                Ok(Some(i - 1))
            } else {
                Err(HttpError::BadRequest("bare LF in chunked framing"))
            };
        }
        if i >= max {
            return Err(HttpError::BadRequest("chunk line too long"));
        }
    }
    Ok(None)
}

fn chunk_size(line: &[u8]) -> Result<usize, HttpError> {
    // Chunk extensions (`;name=value`) carry nothing we use.
    let digits = match line.iter().position(|&b| b == b';') {
        Some(i) => &line[..i],
        None => line,
    };
    let digits = trim_ows(digits);
    if digits.is_empty() || digits.len() > MAX_CHUNK_SIZE_DIGITS {
        return Err(HttpError::BadRequest("bad chunk size"));
    }
    let mut n: usize = 0;
    for &d in digits {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            b'A'..=b'F' => d - b'A' + 10,
            _ => return Err(HttpError::BadRequest("bad chunk size")),
        };
        n = n
            .checked_mul(16)
            .and_then(|n| n.checked_add(usize::from(v)))
            .ok_or(HttpError::BodyTooLarge)?;
    }
    Ok(n)
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Skips trailer fields up to and including the empty line that ends the body.
fn trailers(buf: &[u8], mut pos: usize) -> Result<Status<()>, HttpError> {
    let start = pos;
    loop {
        let Some(end) = find_crlf(&buf[pos..], MAX_TRAILER_BYTES)? else {
            if buf.len() - start > MAX_TRAILER_BYTES {
                return Err(HttpError::HeadTooLarge);
            }
            return Ok(Status::Partial);
        };
        pos += end + 2;
        if end == 0 {
            return Ok(Status::Complete((), pos));
        }
        if pos - start > MAX_TRAILER_BYTES {
            return Err(HttpError::HeadTooLarge);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_body_with_extensions_and_trailers() {
        let input =
            b"4;x=y\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let Ok(Status::Complete(body, used)) = decode(input, 1000) else {
            panic!("not complete");
        };
        assert_eq!(body, b"Wikipedia in\r\n\r\nchunks.");
        assert_eq!(&input[used..], b"NEXT");
    }

    #[test]
    fn every_split_is_partial_then_complete() {
        let input = b"3\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n";
        for cut in 0..input.len() {
            assert_eq!(
                decode(&input[..cut], 100),
                Ok(Status::Partial),
                "cut at {cut}"
            );
        }
        assert_eq!(
            decode(input, 100),
            Ok(Status::Complete(
                b"abc0123456789abcdef".to_vec(),
                input.len()
            ))
        );
    }

    #[test]
    fn rejects_bad_framing() {
        for bad in [
            &b"g\r\n"[..],
            b"\r\n",
            b"3\r\nabcX\r\n",
            b"3\nabc\r\n",
            b"11111111111111111\r\n",
            b"ffffffffffffffff\r\n",
        ] {
            assert!(
                decode(bad, 1 << 20).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            decode(b"5\r\nhello\r\n0\r\n\r\n", 4),
            Err(HttpError::BodyTooLarge)
        );
    }
}
