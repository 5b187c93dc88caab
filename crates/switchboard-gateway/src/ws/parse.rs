//! Reading client frames: a sans-I/O WebSocket frame parser (RFC 6455, server
//! side, no extensions).
//!
//! Why not fastwebsockets' reader: it gives every connection a fixed 8 KiB read
//! buffer, and its frame read cannot be raced against anything else in one
//! task. The session reads only when the socket is readable, into a buffer on
//! the stack, and keeps bytes here only while a frame is incomplete: an idle
//! connection holds no read buffer at all (see BENCHMARKS.md, memory per
//! connection).
//!
//! Frames are checked as they arrive: client frames must be masked, reserved
//! bits and opcodes are refused, control frames must be whole and at most 125
//! bytes, and a message (all of its fragments) may not exceed the size limit.
//! The length in a frame header is checked before its payload is buffered, so
//! a peer can never make the node hold more than one limit's worth. The UTF-8
//! of a text message is checked fragment by fragment (a character may be split
//! between fragments), so an invalid message fails at the first bad fragment,
//! not when its last one arrives.

use bytes::{Buf, Bytes, BytesMut};

/// What a client sent, one complete unit at a time.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A whole data message (its fragments joined), unmasked.
    Message { text: bool, data: Bytes },
    /// A ping; owed a pong with the same payload.
    Ping(Bytes),
    /// A pong (answers the node's heartbeat pings).
    Pong,
    /// A close frame: the code (if any) to echo.
    Close(Option<u16>),
}

/// Why the connection must be failed.
#[derive(Debug, PartialEq, Eq)]
pub enum Violation {
    /// A message over the size limit (close 1009).
    TooLarge,
    /// A text message that is not UTF-8 (close 1007, RFC 6455 8.1).
    InvalidUtf8,
    /// Anything else the RFC forbids (close 1002); the text is for the log.
    Protocol(&'static str),
}

impl Violation {
    /// The close code the connection is failed with: 1009, 1007 or 1002.
    pub fn close_code(&self) -> u16 {
        match self {
            Violation::TooLarge => 1009,
            Violation::InvalidUtf8 => 1007,
            Violation::Protocol(_) => 1002,
        }
    }
}

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Frame parser state of one connection.
#[derive(Debug)]
pub struct Parser {
    /// Received bytes not yet parsed: at most one incomplete frame after
    /// [`Parser::next`] returns `Ok(None)`. Empty (no allocation) when idle.
    buf: BytesMut,
    /// A fragmented message being assembled: its kind and the bytes so far.
    partial: Option<(bool, BytesMut)>,
    /// Bytes at the start of `partial` known to be whole, valid UTF-8 (text
    /// only); what follows is at most the start of one split character.
    checked: usize,
    /// Largest message accepted, in bytes (inclusive).
    max: usize,
}

impl Parser {
    /// A parser accepting messages of up to `max` bytes (inclusive).
    pub fn new(max: usize) -> Self {
        Parser {
            buf: BytesMut::new(),
            partial: None,
            checked: 0,
            max,
        }
    }

    /// Appends received bytes.
    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete event, `Ok(None)` when more bytes are needed. After
    /// an `Err` the connection must be failed: the parser is not usable.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Event>, Violation> {
        loop {
            let Some(frame) = self.frame()? else {
                self.release_idle();
                return Ok(None);
            };
            let Frame {
                fin,
                opcode,
                payload,
            } = frame;
            let event = match opcode {
                OP_TEXT | OP_BINARY => {
                    if self.partial.is_some() {
                        return Err(Violation::Protocol("new message inside a fragmented one"));
                    }
                    let text = opcode == OP_TEXT;
                    if fin {
                        message(text, payload)?
                    } else {
                        self.checked = if text { utf8_prefix(&payload, 0)? } else { 0 };
                        self.partial = Some((text, payload));
                        continue;
                    }
                }
                OP_CONTINUATION => {
                    let Some((text, assembled)) = self.partial.as_mut() else {
                        return Err(Violation::Protocol("continuation without a message"));
                    };
                    assembled.extend_from_slice(&payload);
                    if *text {
                        // Fail fast: check this fragment now, from where the
                        // last check stopped (inside a split character, maybe).
                        self.checked = utf8_prefix(assembled, self.checked)?;
                    }
                    if !fin {
                        continue;
                    }
                    let text = *text;
                    let (_, data) = self.partial.take().unwrap_or_default();
                    let whole = self.checked == data.len();
                    self.checked = 0;
                    if text && !whole {
                        return Err(Violation::InvalidUtf8);
                    }
                    Event::Message {
                        text,
                        data: data.freeze(),
                    }
                }
                OP_PING => Event::Ping(payload.freeze()),
                OP_PONG => Event::Pong,
                OP_CLOSE => Event::Close(close_code(&payload)?),
                _ => return Err(Violation::Protocol("reserved opcode")),
            };
            self.release_idle();
            return Ok(Some(event));
        }
    }

    /// Lets go of the buffer once everything in it was parsed, so an idle
    /// connection holds none: even when empty, it may share the allocation of
    /// the message split off last (a fresh `BytesMut` allocates nothing).
    fn release_idle(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
    }

    /// Splits the next whole frame off the buffer, unmasked.
    fn frame(&mut self) -> Result<Option<Frame>, Violation> {
        let b = &self.buf[..];
        if b.len() < 2 {
            return Ok(None);
        }
        let fin = b[0] & 0x80 != 0;
        if b[0] & 0x70 != 0 {
            return Err(Violation::Protocol(
                "reserved bits set (no extension was agreed)",
            ));
        }
        let opcode = b[0] & 0x0F;
        if !matches!(
            opcode,
            OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG
        ) {
            return Err(Violation::Protocol("reserved opcode"));
        }
        if b[1] & 0x80 == 0 {
            return Err(Violation::Protocol("client frame not masked"));
        }
        let control = opcode >= OP_CLOSE;
        let (len, at) = match b[1] & 0x7F {
            126 if b.len() < 4 => return Ok(None),
            126 => (u64::from(u16::from_be_bytes([b[2], b[3]])), 4),
            127 if b.len() < 10 => return Ok(None),
            127 => {
                let len = u64::from_be_bytes(b[2..10].try_into().unwrap_or_default());
                if len >> 63 != 0 {
                    return Err(Violation::Protocol("frame length has its top bit set"));
                }
                (len, 10)
            }
            n => (u64::from(n), 2),
        };
        if control && (!fin || len > 125) {
            return Err(Violation::Protocol(
                "control frame fragmented or over 125 bytes",
            ));
        }
        // The size limit covers the whole message: what is assembled plus this frame.
        let so_far = match (&self.partial, opcode) {
            (Some((_, assembled)), OP_CONTINUATION) => assembled.len() as u64,
            _ => 0,
        };
        if !control && so_far.saturating_add(len) > self.max as u64 {
            return Err(Violation::TooLarge);
        }
        let len = len as usize;
        let header = at + 4;
        if b.len() < header {
            return Ok(None);
        }
        if b.len() < header + len {
            // The rest of the frame is coming: make room once rather than per read.
            self.buf.reserve(header + len - b.len());
            return Ok(None);
        }
        let mask: [u8; 4] = b[at..header].try_into().unwrap_or_default();
        self.buf.advance(header);
        let mut payload = self.buf.split_to(len);
        unmask(&mut payload, mask);
        Ok(Some(Frame {
            fin,
            opcode,
            payload,
        }))
    }
}

struct Frame {
    fin: bool,
    opcode: u8,
    payload: BytesMut,
}

/// A whole message; text must be UTF-8.
fn message(text: bool, data: BytesMut) -> Result<Event, Violation> {
    if text && std::str::from_utf8(&data).is_err() {
        return Err(Violation::InvalidUtf8);
    }
    Ok(Event::Message {
        text,
        data: data.freeze(),
    })
}

/// How far `data` is whole, valid UTF-8, given that its first `from` bytes
/// are: the rest is at most an incomplete character that more bytes may
/// finish. A byte that no continuation can make valid is an error at once.
fn utf8_prefix(data: &[u8], from: usize) -> Result<usize, Violation> {
    match std::str::from_utf8(&data[from..]) {
        Ok(_) => Ok(data.len()),
        Err(e) if e.error_len().is_none() => Ok(from + e.valid_up_to()),
        Err(_) => Err(Violation::InvalidUtf8),
    }
}

/// XORs the payload with the client's masking key.
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = payload.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let v = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) ^ word;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i];
    }
}

/// The status code of a close frame, checked as RFC 6455 7.4 asks.
fn close_code(payload: &[u8]) -> Result<Option<u16>, Violation> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(Violation::Protocol("close frame with a 1-byte payload")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            // RFC 6455 7.4 and the IANA registry: 1004-1006 and 1015 are never
            // sent on the wire, 1016-2999 are unassigned (reserved for this
            // protocol), 3000-4999 belong to libraries and applications.
            let valid = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !valid {
                return Err(Violation::Protocol("close frame with an invalid code"));
            }
            if std::str::from_utf8(&payload[2..]).is_err() {
                return Err(Violation::Protocol("close reason is not UTF-8"));
            }
            Ok(Some(code))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xFA, 0x21, 0x3D];
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len <= 0xFFFF {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn message(text: bool, data: &[u8]) -> Event {
        Event::Message {
            text,
            data: Bytes::copy_from_slice(data),
        }
    }

    #[test]
    fn frames_split_at_every_byte_parse_the_same() {
        let mut wire = frame(true, OP_TEXT, b"{\"type\":\"ping\"}");
        wire.extend(frame(true, OP_BINARY, &[7u8; 300]));
        wire.extend(frame(true, OP_PING, b"hb"));
        wire.extend(frame(true, OP_BINARY, &vec![9u8; 70_000]));
        for step in [1, 2, 3, 7, 64, wire.len()] {
            let mut p = Parser::new(100_000);
            let mut events = Vec::new();
            for chunk in wire.chunks(step) {
                p.feed(chunk);
                while let Some(e) = p.next().unwrap() {
                    events.push(e);
                }
            }
            assert_eq!(
                events,
                vec![
                    message(true, b"{\"type\":\"ping\"}"),
                    message(false, &[7u8; 300]),
                    Event::Ping(Bytes::from_static(b"hb")),
                    message(false, &vec![9u8; 70_000]),
                ],
                "step {step}"
            );
            assert_eq!(p.buf.capacity(), 0, "idle parser holds no buffer");
        }
    }

    #[test]
    fn fragments_are_joined_with_control_frames_between() {
        let mut p = Parser::new(1024);
        p.feed(&frame(false, OP_TEXT, b"ab"));
        p.feed(&frame(true, OP_PING, b""));
        p.feed(&frame(false, OP_CONTINUATION, b"cd"));
        p.feed(&frame(true, OP_CONTINUATION, b"ef"));
        assert_eq!(p.next(), Ok(Some(Event::Ping(Bytes::new()))));
        assert_eq!(p.next(), Ok(Some(message(true, b"abcdef"))));
        assert_eq!(p.next(), Ok(None));
    }

    #[test]
    fn the_size_limit_is_inclusive_and_covers_all_fragments() {
        let mut p = Parser::new(4);
        p.feed(&frame(true, OP_TEXT, b"abcd"));
        assert_eq!(p.next(), Ok(Some(message(true, b"abcd"))));
        p.feed(&frame(true, OP_TEXT, b"abcde"));
        assert_eq!(p.next(), Err(Violation::TooLarge));

        let mut p = Parser::new(4);
        p.feed(&frame(false, OP_BINARY, b"abc"));
        p.feed(&frame(true, OP_CONTINUATION, b"de"));
        assert_eq!(p.next(), Err(Violation::TooLarge));
    }

    #[test]
    fn an_oversized_header_is_refused_before_its_payload_arrives() {
        let mut p = Parser::new(1024);
        let wire = frame(true, OP_BINARY, &vec![0u8; 70_000]);
        p.feed(&wire[..14]);
        assert_eq!(p.next(), Err(Violation::TooLarge));
    }

    #[test]
    fn rule_breaking_frames_are_protocol_errors() {
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("unmasked", vec![0x81, 0x01, b'a']),
            ("rsv1", {
                let mut f = frame(true, OP_TEXT, b"a");
                f[0] |= 0x40;
                f
            }),
            ("reserved opcode 3", frame(true, 0x3, b"a")),
            ("reserved opcode 0xB", frame(true, 0xB, b"a")),
            ("fragmented ping", frame(false, OP_PING, b"a")),
            ("long ping", frame(true, OP_PING, &[0u8; 126])),
            ("orphan continuation", frame(true, OP_CONTINUATION, b"a")),
            ("interleaved", {
                let mut f = frame(false, OP_TEXT, b"a");
                f.extend(frame(true, OP_TEXT, b"b"));
                f
            }),
            ("top length bit", {
                let mut f = vec![0x82, 0x80 | 127];
                f.extend_from_slice(&(1u64 << 63).to_be_bytes());
                f.extend_from_slice(&[0; 4]);
                f
            }),
            ("close of 1 byte", frame(true, OP_CLOSE, &[3])),
            (
                "close code 1005",
                frame(true, OP_CLOSE, &1005u16.to_be_bytes()),
            ),
            (
                "close code 999",
                frame(true, OP_CLOSE, &999u16.to_be_bytes()),
            ),
            ("close reason not UTF-8", {
                let mut payload = 1000u16.to_be_bytes().to_vec();
                payload.extend_from_slice(&[0xFF, 0xFE]);
                frame(true, OP_CLOSE, &payload)
            }),
        ];
        for (what, wire) in cases {
            let mut p = Parser::new(1024);
            p.feed(&wire);
            let got = loop {
                match p.next() {
                    Ok(Some(_)) => continue,
                    other => break other,
                }
            };
            assert!(
                matches!(got, Err(Violation::Protocol(_))),
                "{what}: {got:?}"
            );
        }
    }

    #[test]
    fn text_must_be_utf8_even_across_fragments() {
        let mut p = Parser::new(1024);
        p.feed(&frame(true, OP_TEXT, b"ok \xff"));
        assert_eq!(p.next(), Err(Violation::InvalidUtf8));
        // A character split between fragments is fine; binary is not checked.
        let mut p = Parser::new(1024);
        let snowman = "\u{2603}".as_bytes();
        p.feed(&frame(false, OP_TEXT, &snowman[..1]));
        p.feed(&frame(true, OP_CONTINUATION, &snowman[1..]));
        p.feed(&frame(true, OP_BINARY, b"\xff"));
        assert_eq!(p.next(), Ok(Some(message(true, snowman))));
        assert_eq!(p.next(), Ok(Some(message(false, b"\xff"))));
    }

    #[test]
    fn invalid_utf8_fails_at_the_first_bad_fragment() {
        // Nothing after the bad fragment is needed to fail.
        for bad in [&b"ab\xed\xa0\x80"[..], b"\xf4\x90", b"\x80", b"ok\xc0"] {
            let mut p = Parser::new(1024);
            p.feed(&frame(false, OP_TEXT, bad));
            assert_eq!(p.next(), Err(Violation::InvalidUtf8), "{bad:?}");
        }
        let mut p = Parser::new(1024);
        p.feed(&frame(false, OP_TEXT, b"ok"));
        p.feed(&frame(false, OP_CONTINUATION, b"\xce"));
        assert_eq!(
            p.next(),
            Ok(None),
            "a split character may still be finished"
        );
        p.feed(&frame(false, OP_CONTINUATION, b"\xff"));
        assert_eq!(p.next(), Err(Violation::InvalidUtf8));
        // A message that ends inside a character is invalid.
        let mut p = Parser::new(1024);
        p.feed(&frame(false, OP_TEXT, b"ok"));
        p.feed(&frame(true, OP_CONTINUATION, b"\xe2\x98"));
        assert_eq!(p.next(), Err(Violation::InvalidUtf8));
        // A 4-byte character split over three fragments, then another message.
        let mut p = Parser::new(1024);
        let emoji = "\u{1F600}".as_bytes();
        p.feed(&frame(false, OP_TEXT, &emoji[..1]));
        p.feed(&frame(false, OP_CONTINUATION, &emoji[1..3]));
        p.feed(&frame(true, OP_CONTINUATION, &emoji[3..]));
        p.feed(&frame(true, OP_TEXT, b"next"));
        assert_eq!(p.next(), Ok(Some(message(true, emoji))));
        assert_eq!(p.next(), Ok(Some(message(true, b"next"))));
    }

    #[test]
    fn close_codes_follow_the_registry() {
        for code in [1000u16, 1003, 1007, 1011, 1012, 1013, 1014, 3000, 4999] {
            let mut p = Parser::new(1024);
            p.feed(&frame(true, OP_CLOSE, &code.to_be_bytes()));
            assert_eq!(p.next(), Ok(Some(Event::Close(Some(code)))), "{code}");
        }
        for code in [
            0u16,
            999,
            1004,
            1005,
            1006,
            1015,
            1016,
            2999,
            5000,
            u16::MAX,
        ] {
            let mut p = Parser::new(1024);
            p.feed(&frame(true, OP_CLOSE, &code.to_be_bytes()));
            assert!(matches!(p.next(), Err(Violation::Protocol(_))), "{code}");
        }
    }

    #[test]
    fn close_codes_are_echoed() {
        let mut p = Parser::new(1024);
        p.feed(&frame(true, OP_CLOSE, &[]));
        assert_eq!(p.next(), Ok(Some(Event::Close(None))));
        let mut payload = 4000u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye");
        p.feed(&frame(true, OP_CLOSE, &payload));
        assert_eq!(p.next(), Ok(Some(Event::Close(Some(4000)))));
        p.feed(&frame(true, OP_PONG, b"x"));
        assert_eq!(p.next(), Ok(Some(Event::Pong)));
    }

    #[test]
    fn unmasking_handles_every_tail_length() {
        for len in 0..12 {
            let data: Vec<u8> = (0..len as u8).collect();
            let mut p = Parser::new(1024);
            p.feed(&frame(true, OP_BINARY, &data));
            assert_eq!(p.next(), Ok(Some(message(false, &data))), "len {len}");
        }
    }
}
