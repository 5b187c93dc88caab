//! The publish payload and the subscriber's cheap parsers for it (as the node's own protocol
//! forwards it, an object; as the Pusher protocol does, a string holding it).
//!
//! Every published `data` is `{"seq":N,"p":P,"t":T,"pad":"xx.."}`: `p` names the publisher
//! task, `seq` is that publisher's own sequence (one sequence per publisher, so each
//! subscriber can check per-publisher order), `t` is the send time in microseconds since the
//! Unix epoch (for end-to-end latency) and `pad` brings `data` up to the requested size.
//!
//! Subscribers see hundreds of thousands of frames per second, and the generator must stay
//! cheap next to the node it measures, so they do not parse JSON: they find the three keys by
//! byte search. That is sound because no other key of a `message` frame (`type`, `channel`,
//! `data`, `offset`, `epoch`) can contain `"seq":`, `"p":` or `"t":` (channel names have no
//! quotes), and the padding is only `x`. Optional whitespace after the colon is accepted, in
//! case a node re-serialises `data`; key order does not matter.

use std::sync::LazyLock;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use memchr::memmem::{Finder, FinderRev};

/// What a subscriber reads out of one `message` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Publisher task id (`"p"`).
    pub publisher: u32,
    /// That publisher's sequence number (`"seq"`), starting at 1.
    pub seq: u64,
    /// Send time, microseconds since the Unix epoch (`"t"`).
    pub sent_us: u64,
}

/// Builds request bodies for `POST /api/v1/publish` on one channel.
///
/// Holds the constant parts so that a publish costs one small allocation.
#[derive(Debug, Clone)]
pub struct BodyBuilder {
    prefix: String,
    payload: usize,
}

static SEQ_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"seq\":"));
static P_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"p\":"));
static T_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"t\":"));
// The same keys inside a JSON string (Pusher's `data`), their quotes escaped.
static SEQ_KEY_ESCAPED: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(br#"\"seq\":"#));
static P_KEY_ESCAPED: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(br#"\"p\":"#));
static T_KEY_ESCAPED: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(br#"\"t\":"#));
// `offset` and `epoch` follow `data` in a node's frame: searching from the end finds the
// frame's own keys even if some other publisher's `data` contained the same words.
static OFFSET_KEY: LazyLock<FinderRev<'static>> = LazyLock::new(|| FinderRev::new(b"\"offset\":"));
static EPOCH_KEY: LazyLock<FinderRev<'static>> = LazyLock::new(|| FinderRev::new(b"\"epoch\":"));

impl BodyBuilder {
    /// A builder for `channel` (already validated: it needs no JSON escaping) whose `data`
    /// objects are padded to `payload` bytes (never less than the stamp itself, ~45 bytes).
    pub fn new(channel: &str, payload: usize) -> Self {
        Self {
            prefix: format!(r#"{{"channel":"{channel}","data":"#),
            payload,
        }
    }

    /// The whole request body for one publish.
    pub fn body(&self, stamp: Stamp) -> Bytes {
        let head = format!(
            r#"{{"seq":{},"p":{},"t":{},"pad":""#,
            stamp.seq, stamp.publisher, stamp.sent_us
        );
        // `"}` closes the pad string and `data`; the final `}` closes the body.
        let pad = self.payload.saturating_sub(head.len() + 2);
        let mut out = Vec::with_capacity(self.prefix.len() + head.len() + pad + 3);
        out.extend_from_slice(self.prefix.as_bytes());
        out.extend_from_slice(head.as_bytes());
        out.resize(out.len() + pad, b'x');
        out.extend_from_slice(b"\"}}");
        Bytes::from(out)
    }
}

/// Reads the stamp out of a server frame; `None` if the frame carries none (a control reply,
/// or a message that is not ours).
pub fn parse_stamp(frame: &[u8]) -> Option<Stamp> {
    let seq = number_after(frame, &SEQ_KEY)?;
    let publisher = u32::try_from(number_after(frame, &P_KEY)?).ok()?;
    let sent_us = number_after(frame, &T_KEY)?;
    Some(Stamp {
        publisher,
        seq,
        sent_us,
    })
}

/// Reads the stamp out of a Pusher frame, whose `data` is a string holding the published
/// JSON (`"data":"{\"seq\":1,...}"`); `None` if the frame carries none.
///
/// The same byte search as [`parse_stamp`], for the escaped keys: no other part of a Pusher
/// `message` frame (`event`, `channel`) can hold a backslash, so only `data` matches.
pub fn parse_string_stamp(frame: &[u8]) -> Option<Stamp> {
    let seq = number_after(frame, &SEQ_KEY_ESCAPED)?;
    let publisher = u32::try_from(number_after(frame, &P_KEY_ESCAPED)?).ok()?;
    let sent_us = number_after(frame, &T_KEY_ESCAPED)?;
    Some(Stamp {
        publisher,
        seq,
        sent_us,
    })
}

/// The channel offset of a `message` frame (`"offset":N`, present on channels with history);
/// `None` when the frame has none.
///
/// Searched from the end of the frame, where the node writes it, after `data`.
pub fn parse_offset(frame: &[u8]) -> Option<u64> {
    let start = OFFSET_KEY.rfind(frame)? + OFFSET_KEY.needle().len();
    leading_number(&frame[start..])
}

/// The epoch of a `message` frame (`"epoch":"E"`), without its quotes; `None` when the frame
/// has none. Epochs are short random strings without escapes.
pub fn parse_epoch(frame: &[u8]) -> Option<&[u8]> {
    let start = EPOCH_KEY.rfind(frame)? + EPOCH_KEY.needle().len();
    let rest = frame[start..].trim_ascii_start().strip_prefix(b"\"")?;
    let end = memchr::memchr(b'"', rest)?;
    Some(&rest[..end])
}

/// Microseconds since the Unix epoch, the clock shared by publishers and subscribers.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The unsigned integer that follows the first occurrence of `key`, skipping spaces.
fn number_after(hay: &[u8], key: &Finder<'_>) -> Option<u64> {
    let start = key.find(hay)? + key.needle().len();
    leading_number(&hay[start..])
}

/// The unsigned integer at the start of `hay`, after optional spaces.
fn leading_number(hay: &[u8]) -> Option<u64> {
    let rest = hay.trim_ascii_start();
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 19 {
        return None;
    }
    rest[..digits].iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp() -> Stamp {
        Stamp {
            publisher: 3,
            seq: 123_456,
            sent_us: 1_700_000_000_123_456,
        }
    }

    #[test]
    fn body_has_requested_data_size_and_is_json() {
        let body = BodyBuilder::new("bench:fan", 200).body(stamp());
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["channel"], "bench:fan");
        assert_eq!(v["data"]["seq"], 123_456);
        assert_eq!(v["data"]["p"], 3);
        assert_eq!(serde_json::to_string(&v["data"]).unwrap().len(), 200);
        // A payload smaller than the stamp still gives a valid body, just unpadded.
        let small = BodyBuilder::new("c", 1).body(stamp());
        assert!(serde_json::from_slice::<serde_json::Value>(&small).is_ok());
    }

    #[test]
    fn parses_the_stamp_as_a_node_forwards_it() {
        let body = BodyBuilder::new("c", 100).body(stamp());
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let frame = format!(
            r#"{{"type":"message","channel":"c","data":{},"offset":4,"epoch":"e"}}"#,
            v["data"]
        );
        assert_eq!(parse_stamp(frame.as_bytes()), Some(stamp()));
    }

    #[test]
    fn parses_reordered_and_spaced_keys() {
        let frame = br#"{"type": "message", "data": {"p": 3, "pad": "x", "seq": 123456, "t": 1700000000123456}}"#;
        assert_eq!(parse_stamp(frame), Some(stamp()));
    }

    #[test]
    fn parses_offset_and_epoch() {
        let frame = br#"{"type":"message","channel":"hist:b","data":{"seq":1,"p":0,"t":5,"pad":"xx"},"offset":43,"epoch":"f3a9c2d1"}"#;
        assert_eq!(parse_offset(frame), Some(43));
        assert_eq!(parse_epoch(frame), Some(&b"f3a9c2d1"[..]));
        // Data that mentions the same keys does not fool it: the frame's own keys come last.
        let frame = br#"{"type":"message","channel":"c","data":{"offset":7,"epoch":"no"},"offset": 8,"epoch": "yes"}"#;
        assert_eq!(parse_offset(frame), Some(8));
        assert_eq!(parse_epoch(frame), Some(&b"yes"[..]));
        // Channels without history: neither.
        let plain = br#"{"type":"message","channel":"c","data":{"seq":1,"p":0,"t":5}}"#;
        assert_eq!((parse_offset(plain), parse_epoch(plain)), (None, None));
        assert_eq!(parse_offset(br#"{"offset":-1}"#), None);
        assert_eq!(parse_epoch(br#"{"epoch":5}"#), None);
        assert_eq!(parse_epoch(br#"{"epoch":"unterminated"#), None);
    }

    #[test]
    fn parses_the_stamp_inside_a_pusher_data_string() {
        // As a node writes a native publish for Pusher subscribers: the data as a string.
        let body = BodyBuilder::new("bench:c", 100).body(stamp());
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let frame = serde_json::json!({
            "event": "message",
            "channel": "c",
            "data": v["data"].to_string(),
        })
        .to_string();
        assert!(frame.contains(r#"\"seq\":123456"#));
        assert_eq!(parse_string_stamp(frame.as_bytes()), Some(stamp()));
        // Key order and spaces do not matter; the unescaped keys are not these.
        let spaced = br#"{"event":"message","channel":"c","data":"{\"t\": 1700000000123456, \"pad\":\"x\", \"p\": 3, \"seq\": 123456}"}"#;
        assert_eq!(parse_string_stamp(spaced), Some(stamp()));
        assert_eq!(parse_string_stamp(br#"{"seq":1,"p":0,"t":5}"#), None);
        // Frames without a stamp.
        for frame in [
            &br#"{"event":"pusher_internal:subscription_succeeded","channel":"c","data":"{}"}"#[..],
            br#"{"event":"pusher:error","data":{"code":4100,"message":"slow"}}"#,
            br#"{"event":"message","channel":"c","data":"{\"seq\":1,\"p\":99999999999,\"t\":5}"}"#,
        ] {
            assert_eq!(parse_string_stamp(frame), None);
        }
    }

    #[test]
    fn rejects_frames_without_a_stamp() {
        assert_eq!(parse_stamp(br#"{"type":"subscribed","id":1}"#), None);
        assert_eq!(parse_stamp(br#"{"seq":1,"p":0}"#), None);
        assert_eq!(parse_stamp(br#"{"seq":-1,"p":0,"t":5}"#), None);
        assert_eq!(
            parse_stamp(br#"{"seq":99999999999999999999,"p":0,"t":5}"#),
            None
        );
        assert_eq!(parse_stamp(br#"{"seq":1,"p":99999999999,"t":5}"#), None);
    }
}
