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

/// Incremental decoder for a chunked body that arrives over time (an upstream's SSE stream):
/// feed it bytes as they come; it appends body data to `out` and says when the body ended.
#[derive(Debug, Default)]
pub struct Decoder {
    state: DecState,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum DecState {
    /// Expecting a chunk-size line.
    #[default]
    Size,
    /// Inside chunk data, this many bytes left.
    Data(usize),
    /// Expecting the CRLF after chunk data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers(usize),
    Done,
}

impl Decoder {
    /// Consumes what it can of `input`, appending decoded data to `out`. Returns the number of
    /// bytes consumed and whether the body is complete; unconsumed bytes must be fed again
    /// with more appended.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(usize, bool), HttpError> {
        let mut pos = 0;
        loop {
            let rest = &input[pos..];
            match self.state {
                DecState::Done => return Ok((pos, true)),
                DecState::Size => {
                    let Some(end) = find_crlf(rest, MAX_CHUNK_LINE)? else {
                        return Ok((pos, false));
                    };
                    let size = chunk_size(&rest[..end])?;
                    pos += end + 2;
                    self.state = if size == 0 {
                        DecState::Trailers(0)
                    } else {
                        DecState::Data(size)
                    };
                }
                DecState::Data(left) => {
                    if rest.is_empty() {
                        return Ok((pos, false));
                    }
                    let n = left.min(rest.len());
                    out.extend_from_slice(&rest[..n]);
                    pos += n;
                    self.state = if n == left {
                        DecState::DataEnd
                    } else {
                        DecState::Data(left - n)
                    };
                }
                DecState::DataEnd => {
                    if rest.len() < 2 {
                        return Ok((pos, false));
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err(HttpError::BadRequest("chunk not followed by CRLF"));
                    }
                    pos += 2;
                    self.state = DecState::Size;
                }
                DecState::Trailers(seen) => {
                    let Some(end) = find_crlf(rest, MAX_TRAILER_BYTES)? else {
                        return Ok((pos, false));
                    };
                    pos += end + 2;
                    if end == 0 {
                        self.state = DecState::Done;
                    } else if seen + end > MAX_TRAILER_BYTES {
                        return Err(HttpError::HeadTooLarge);
                    } else {
                        self.state = DecState::Trailers(seen + end + 2);
                    }
                }
            }
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
    fn incremental_decoder_matches_whole_decoder_at_every_split() {
        let input = b"4;x=y\r\nWiki\r\n5\r\npedia\r\n0\r\nT: 1\r\n\r\n";
        for cut in 0..input.len() {
            let mut d = Decoder::default();
            let mut out = Vec::new();
            let (n, done) = d.feed(&input[..cut], &mut out).expect("valid");
            assert!(!done, "cut {cut}");
            let mut rest = input[n..].to_vec();
            let (m, done) = d.feed(&rest, &mut out).expect("valid");
            rest.drain(..m);
            assert!(done && rest.is_empty(), "cut {cut}");
            assert_eq!(out, b"Wikipedia", "cut {cut}");
        }
        let mut d = Decoder::default();
        assert!(d.feed(b"3\r\nabcXY", &mut Vec::new()).is_err());
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
