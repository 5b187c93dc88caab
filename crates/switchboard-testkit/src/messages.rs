//! Reading what a node sent: the offsets of a run of messages, base64 payloads.

use serde_json::Value;

/// The `offset` of each message, in order; panics on a message without one.
pub fn offsets(messages: &[Value]) -> Vec<u64> {
    messages
        .iter()
        .map(|m| {
            m["offset"]
                .as_u64()
                .unwrap_or_else(|| panic!("message without an offset: {m}"))
        })
        .collect()
}

/// Decodes base64, accepting the standard and URL-safe alphabets, with or without
/// padding: these tests check content. The exact form the node sends (the standard
/// alphabet, padded: docs/PROTOCOL.md, "message") is pinned by the JSON codec's
/// unit tests.
pub fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for c in text.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::decode_base64;

    #[test]
    fn base64_accepts_both_alphabets() {
        assert_eq!(
            decode_base64("AJ+Slg==").as_deref(),
            Some(&[0, 0x9f, 0x92, 0x96][..])
        );
        assert_eq!(
            decode_base64("AJ-Slg").as_deref(),
            Some(&[0, 0x9f, 0x92, 0x96][..])
        );
        assert_eq!(decode_base64("aGVsbG8=").as_deref(), Some(&b"hello"[..]));
        assert_eq!(decode_base64("a b"), None);
    }
}
