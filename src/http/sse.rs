//! Server-Sent Events (text/event-stream) encoding and decoding.

use super::Status;

/// Longest event the decoder accepts, bytes (a whole JSON-RPC message in `data:` lines).
pub const MAX_EVENT_BYTES: usize = 8 * 1024 * 1024;

/// Appends one event. Multi-line data is split into one `data:` line per line, as the format
/// requires; any of CRLF, CR and LF counts as a line break.
pub fn encode(out: &mut Vec<u8>, event: Option<&str>, id: Option<&str>, data: &str) {
    if let Some(event) = event {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(event.as_bytes());
        out.push(b'\n');
    }
    if let Some(id) = id {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(id.as_bytes());
        out.push(b'\n');
    }
    for line in split_lines(data) {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
}

/// Appends a comment line (keeps idle streams alive through proxies).
pub fn encode_comment(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(b": ");
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(b"\n\n");
}

fn split_lines(s: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let s = rest?;
        match s.find(['\r', '\n']) {
            None => {
                rest = None;
                Some(s)
            }
            Some(i) => {
                let skip = if s[i..].starts_with("\r\n") { 2 } else { 1 };
                rest = Some(&s[i + skip..]);
                Some(&s[..i])
            }
        }
    })
}

/// One decoded event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Event {
    /// The `event:` field; empty means the default type, "message".
    pub event: String,
    pub id: Option<String>,
    pub data: String,
    pub retry: Option<u64>,
}

/// Error for an event over [`MAX_EVENT_BYTES`] or not UTF-8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseError {
    TooLarge,
    NotUtf8,
}

impl std::fmt::Display for SseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SseError::TooLarge => write!(f, "SSE event too large"),
            SseError::NotUtf8 => write!(f, "SSE event is not UTF-8"),
        }
    }
}

/// Decodes the next dispatched event from the start of `buf`.
///
/// Blocks of only comments or unknown fields are consumed and skipped. `Partial` means no
/// complete event yet (the caller keeps the bytes and appends more).
pub fn decode(buf: &[u8], max: usize) -> Result<Status<Event>, SseError> {
    let mut pos = 0;
    let mut ev = Event::default();
    let mut has_data = false;
    let mut any_field = false;
    loop {
        let Some(nl) = buf[pos..].iter().position(|&b| b == b'\n' || b == b'\r') else {
            return if buf.len() > max {
                Err(SseError::TooLarge)
            } else {
                Ok(Status::Partial)
            };
        };
        let line_end = pos + nl;
        // A CR at the very end may be the first half of CRLF: wait for the next byte.
        let mut next = line_end + 1;
        if buf[line_end] == b'\r' {
            match buf.get(line_end + 1) {
                None => return Ok(Status::Partial),
                Some(b'\n') => next += 1,
                Some(_) => {}
            }
        }
        let line = std::str::from_utf8(&buf[pos..line_end]).map_err(|_| SseError::NotUtf8)?;
        pos = next;
        if pos > max {
            return Err(SseError::TooLarge);
        }
        if line.is_empty() {
            if has_data {
                return Ok(Status::Complete(ev, pos));
            }
            // An empty block (or one without data) dispatches nothing; keep the id/event reset.
            if any_field {
                ev = Event::default();
                any_field = false;
            }
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        any_field = true;
        match field {
            "event" => ev.event = value.to_string(),
            "data" => {
                if has_data {
                    ev.data.push('\n');
                }
                ev.data.push_str(value);
                has_data = true;
            }
            "id" if !value.contains('\0') => ev.id = Some(value.to_string()),
            "retry" => ev.retry = value.parse().ok(),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_multiline_data() {
        let mut out = Vec::new();
        encode(&mut out, Some("message"), Some("7"), "a\nb\r\nc\rd");
        assert_eq!(
            out,
            b"event: message\nid: 7\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
        );
    }

    #[test]
    fn round_trip_every_split() {
        let mut out = Vec::new();
        encode_comment(&mut out, "keepalive");
        encode(&mut out, Some("endpoint"), None, "/sse?sessionId=1");
        encode(&mut out, None, Some("2"), "{\"x\":\n1}");
        let first = Event {
            event: "endpoint".into(),
            data: "/sse?sessionId=1".into(),
            ..Event::default()
        };
        let Ok(Status::Complete(e, n)) = decode(&out, 1000) else {
            panic!()
        };
        assert_eq!(e, first);
        let Ok(Status::Complete(e2, n2)) = decode(&out[n..], 1000) else {
            panic!()
        };
        assert_eq!(
            (e2.data.as_str(), e2.id.as_deref()),
            ("{\"x\":\n1}", Some("2"))
        );
        assert_eq!(n + n2, out.len());
        for cut in 0..n {
            assert_eq!(decode(&out[..cut], 1000), Ok(Status::Partial), "cut {cut}");
        }
    }

    #[test]
    fn crlf_and_limits() {
        let input = b"data: x\r\n\r\n";
        assert_eq!(
            decode(input, 100),
            Ok(Status::Complete(
                Event {
                    data: "x".into(),
                    ..Event::default()
                },
                input.len()
            ))
        );
        assert_eq!(decode(&[b'a'; 50], 10), Err(SseError::TooLarge));
    }
}
