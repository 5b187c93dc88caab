//! The replies a RESP2 pub/sub connection receives, parsed from a read buffer.
//!
//! The node reads its pub/sub connection itself (see `subscriber.rs`) so that
//! it can stop reading when the fan-out falls behind: the backlog then waits
//! in the kernel and in Redis's output buffer for the connection, not in an
//! unbounded queue inside the node. Only the few reply shapes a subscribed
//! connection can get are understood; anything else is a protocol error that
//! ends the connection.
//!
//! A message's payload is a slice of the read buffer (`Bytes`), not a copy.

use bytes::{Bytes, BytesMut};

/// One reply of a pub/sub connection.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Reply {
    /// `message`: a publish to a subscribed channel.
    Message { channel: Bytes, payload: Bytes },
    /// The confirmation of one channel of a `SUBSCRIBE` or `UNSUBSCRIBE`, or
    /// the answer to a `PING` (`pong`), or `+OK` (to `AUTH`).
    Confirmation(Confirmation),
    /// An error reply (`-ERR ...`): it answers the oldest command in flight.
    Error(String),
}

/// What a confirmation confirms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Confirmation {
    Subscribe,
    Unsubscribe,
    Pong,
    Ok,
}

/// Why the stream could not be read.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Malformed(pub(super) String);

/// Longest bulk string accepted (Redis's own `proto-max-bulk-len` default).
const MAX_BULK: usize = 512 * 1024 * 1024;

/// Takes the next complete reply off the front of `buf`; `Ok(None)` when the
/// buffer does not hold a whole reply yet (nothing is consumed then).
pub(super) fn next(buf: &mut BytesMut) -> Result<Option<Reply>, Malformed> {
    let Some((len, shape)) = scan(buf)? else {
        return Ok(None);
    };
    let frame = buf.split_to(len).freeze();
    Ok(Some(match shape {
        Shape::Simple(range) => {
            let text = &frame[range];
            if text.eq_ignore_ascii_case(b"OK") {
                Reply::Confirmation(Confirmation::Ok)
            } else if text.eq_ignore_ascii_case(b"PONG") {
                Reply::Confirmation(Confirmation::Pong)
            } else {
                return Err(Malformed(format!(
                    "unexpected status reply {:?}",
                    String::from_utf8_lossy(text)
                )));
            }
        }
        Shape::Error(range) => Reply::Error(String::from_utf8_lossy(&frame[range]).into_owned()),
        Shape::Array(items) => {
            let kind = match items.first() {
                Some(Item::Bulk(r)) => &frame[r.clone()],
                _ => return Err(Malformed("push without a kind".into())),
            };
            let bulk = |i: usize| match items.get(i) {
                Some(Item::Bulk(r)) => Some(frame.slice(r.clone())),
                _ => None,
            };
            if kind.eq_ignore_ascii_case(b"message") {
                match (bulk(1), bulk(2)) {
                    (Some(channel), Some(payload)) => Reply::Message { channel, payload },
                    _ => return Err(Malformed("message push without channel or payload".into())),
                }
            } else if kind.eq_ignore_ascii_case(b"subscribe") {
                Reply::Confirmation(Confirmation::Subscribe)
            } else if kind.eq_ignore_ascii_case(b"unsubscribe") {
                Reply::Confirmation(Confirmation::Unsubscribe)
            } else if kind.eq_ignore_ascii_case(b"pong") {
                Reply::Confirmation(Confirmation::Pong)
            } else {
                return Err(Malformed(format!(
                    "unexpected push {:?}",
                    String::from_utf8_lossy(kind)
                )));
            }
        }
    }))
}

enum Shape {
    Simple(std::ops::Range<usize>),
    Error(std::ops::Range<usize>),
    Array(Vec<Item>),
}

enum Item {
    Bulk(std::ops::Range<usize>),
    Other,
}

/// Finds the extent of the reply at the front of `buf` without consuming it.
fn scan(buf: &[u8]) -> Result<Option<(usize, Shape)>, Malformed> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let Some(line_end) = line(buf, 1) else {
        return Ok(None);
    };
    let after_line = line_end + 2;
    match first {
        b'+' => Ok(Some((after_line, Shape::Simple(1..line_end)))),
        b'-' => Ok(Some((after_line, Shape::Error(1..line_end)))),
        b'*' => {
            let count = number(&buf[1..line_end])?;
            let count = usize::try_from(count)
                .map_err(|_| Malformed(format!("array of length {count}")))?;
            if count > 8 {
                return Err(Malformed(format!("array of {count} items")));
            }
            let mut at = after_line;
            let mut items = Vec::with_capacity(count);
            for _ in 0..count {
                let Some(&tag) = buf.get(at) else {
                    return Ok(None);
                };
                let Some(end) = line(buf, at + 1) else {
                    return Ok(None);
                };
                match tag {
                    b'$' => {
                        let len = number(&buf[at + 1..end])?;
                        let len = usize::try_from(len)
                            .ok()
                            .filter(|&l| l <= MAX_BULK)
                            .ok_or_else(|| Malformed(format!("bulk string of length {len}")))?;
                        let start = end + 2;
                        if buf.len() < start + len + 2 {
                            return Ok(None);
                        }
                        if &buf[start + len..start + len + 2] != b"\r\n" {
                            return Err(Malformed("bulk string not followed by CRLF".into()));
                        }
                        items.push(Item::Bulk(start..start + len));
                        at = start + len + 2;
                    }
                    b':' => {
                        number(&buf[at + 1..end])?;
                        items.push(Item::Other);
                        at = end + 2;
                    }
                    other => {
                        return Err(Malformed(format!(
                            "unexpected item type {:?} in a push",
                            other as char
                        )));
                    }
                }
            }
            Ok(Some((at, Shape::Array(items))))
        }
        other => Err(Malformed(format!(
            "unexpected reply type {:?}",
            other as char
        ))),
    }
}

/// The index of the `\r` that ends the line starting at `from`.
fn line(buf: &[u8], from: usize) -> Option<usize> {
    let rest = buf.get(from..)?;
    let cr = rest.windows(2).position(|w| w == b"\r\n")?;
    Some(from + cr)
}

fn number(digits: &[u8]) -> Result<i64, Malformed> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Malformed(format!("bad number {:?}", String::from_utf8_lossy(digits))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(buf: &mut BytesMut, bytes: &[u8]) {
        buf.extend_from_slice(bytes);
    }

    fn message(channel: &str, payload: &[u8]) -> Vec<u8> {
        let mut out = format!(
            "*3\r\n$7\r\nmessage\r\n${}\r\n{}\r\n${}\r\n",
            channel.len(),
            channel,
            payload.len()
        )
        .into_bytes();
        out.extend_from_slice(payload);
        out.extend_from_slice(b"\r\n");
        out
    }

    #[test]
    fn messages_confirmations_and_errors() {
        let mut buf = BytesMut::new();
        feed(&mut buf, b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n");
        feed(&mut buf, &message("a", b"\x00\r\n\xff"));
        feed(
            &mut buf,
            b"*2\r\n$4\r\npong\r\n$0\r\n\r\n+OK\r\n-ERR no\r\n",
        );
        feed(&mut buf, b"*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:0\r\n");
        assert_eq!(
            next(&mut buf).unwrap(),
            Some(Reply::Confirmation(Confirmation::Subscribe))
        );
        assert_eq!(
            next(&mut buf).unwrap(),
            Some(Reply::Message {
                channel: Bytes::from_static(b"a"),
                payload: Bytes::from_static(b"\x00\r\n\xff"),
            })
        );
        assert_eq!(
            next(&mut buf).unwrap(),
            Some(Reply::Confirmation(Confirmation::Pong))
        );
        assert_eq!(
            next(&mut buf).unwrap(),
            Some(Reply::Confirmation(Confirmation::Ok))
        );
        assert_eq!(next(&mut buf).unwrap(), Some(Reply::Error("ERR no".into())));
        assert_eq!(
            next(&mut buf).unwrap(),
            Some(Reply::Confirmation(Confirmation::Unsubscribe))
        );
        assert_eq!(next(&mut buf).unwrap(), None);
        assert!(buf.is_empty());
    }

    #[test]
    fn a_reply_split_anywhere_waits_for_the_rest() {
        let whole = message("chan", b"payload bytes");
        for cut in 0..whole.len() {
            let mut buf = BytesMut::new();
            feed(&mut buf, &whole[..cut]);
            assert_eq!(next(&mut buf).unwrap(), None, "cut at {cut}");
            assert_eq!(buf.len(), cut, "nothing consumed at {cut}");
            feed(&mut buf, &whole[cut..]);
            assert!(matches!(
                next(&mut buf).unwrap(),
                Some(Reply::Message { .. })
            ));
        }
    }

    #[test]
    fn garbage_is_refused() {
        for bad in [
            &b"?x\r\n"[..],
            b"*1\r\n$3\r\nfoo\r\n",
            b"*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$2\r\nxyz\r\n",
            b"*1\r\n$-5\r\n",
            b"*99\r\n",
            b"+WHAT\r\n",
        ] {
            let mut buf = BytesMut::from(bad);
            assert!(next(&mut buf).is_err(), "{bad:?}");
        }
    }
}
