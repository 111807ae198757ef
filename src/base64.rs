//! Base64 decoding, standard and URL-safe alphabets, padding optional (header values, PEM,
//! JWT segments and JWK members all come through here).

/// Which alphabet: standard (`+/`) or URL-safe (`-_`, JWT and JWK).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alphabet {
    Standard,
    Url,
}

/// Decodes `s` (trailing `=` padding optional). None: a character outside the alphabet, or a
/// length no encoding produces.
pub fn decode(s: &str, alphabet: Alphabet) -> Option<Vec<u8>> {
    let (c62, c63) = match alphabet {
        Alphabet::Standard => (b'+', b'/'),
        Alphabet::Url => (b'-', b'_'),
    };
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            c if c == c62 => 62,
            c if c == c63 => 63,
            _ => return None,
        } as u32)
    };
    let bytes = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let take = match chunk.len() {
            4 => 3,
            3 => 2,
            2 => 1,
            _ => return None,
        };
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= val(c)? << (18 - 6 * i);
        }
        out.extend_from_slice(&n.to_be_bytes()[1..1 + take]);
    }
    Some(out)
}

/// URL-safe base64 without padding (JWT signing input in tests, cache keys).
pub fn encode_url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let mut n = 0u32;
        for (i, &b) in chunk.iter().enumerate() {
            n |= (b as u32) << (16 - 8 * i);
        }
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_alphabets_with_and_without_padding() {
        assert_eq!(
            decode("aGVsbG8=", Alphabet::Standard),
            Some(b"hello".to_vec())
        );
        assert_eq!(decode("aGk", Alphabet::Standard), Some(b"hi".to_vec()));
        assert_eq!(decode("aGk=", Alphabet::Standard), Some(b"hi".to_vec()));
        assert_eq!(decode("a$==", Alphabet::Standard), None);
        assert_eq!(decode("a", Alphabet::Standard), None);
        assert_eq!(decode("-_8", Alphabet::Url), Some(vec![0xfb, 0xff]));
        assert_eq!(decode("+/8", Alphabet::Url), None);
        for n in 0..20u8 {
            let bytes: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37)).collect();
            assert_eq!(decode(&encode_url(&bytes), Alphabet::Url), Some(bytes));
        }
    }
}
