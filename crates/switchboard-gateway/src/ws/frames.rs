//! Writing server frames.
//!
//! Server frames are not masked, so an encoded message is the same bytes for
//! every recipient: a frame is a 2-10 byte header built on the stack plus the
//! shared payload, written together by one vectored write (see `outbox`).

use bytes::Bytes;

/// WebSocket opcodes the server sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpCode {
    /// A text message (UTF-8).
    Text = 0x1,
    /// A binary message.
    Binary = 0x2,
    /// A close frame.
    Close = 0x8,
    /// A ping.
    Ping = 0x9,
    /// A pong.
    Pong = 0xA,
}

/// The longest header of an unmasked frame.
pub(crate) const MAX_HEADER: usize = 10;

/// The length of the header [`header`] writes for a payload of `len` bytes.
pub(crate) fn header_len(len: usize) -> usize {
    if len < 126 {
        2
    } else if len <= usize::from(u16::MAX) {
        4
    } else {
        10
    }
}

/// Writes the header of a final, unmasked frame into `out`; returns its length.
pub(crate) fn header(opcode: OpCode, len: usize, out: &mut [u8; MAX_HEADER]) -> usize {
    out[0] = 0x80 | opcode as u8;
    if len < 126 {
        out[1] = len as u8;
        2
    } else if len <= usize::from(u16::MAX) {
        out[1] = 126;
        out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

/// Frames written per vectored write at most (two slices each).
pub(crate) const MAX_BATCH: usize = 64;

/// A whole control frame (payload cut to the 125 bytes a control frame may carry).
pub(crate) fn control(opcode: OpCode, payload: &[u8]) -> Bytes {
    let payload = &payload[..payload.len().min(125)];
    let mut h = [0u8; MAX_HEADER];
    let n = header(opcode, payload.len(), &mut h);
    let mut frame = Vec::with_capacity(n + payload.len());
    frame.extend_from_slice(&h[..n]);
    frame.extend_from_slice(payload);
    Bytes::from(frame)
}

/// A whole frame of any size (header, then a copy of the payload): for
/// frames that go to one peer only, such as an echo.
pub(crate) fn whole(opcode: OpCode, payload: &[u8]) -> Bytes {
    let mut h = [0u8; MAX_HEADER];
    let n = header(opcode, payload.len(), &mut h);
    let mut frame = Vec::with_capacity(n + payload.len());
    frame.extend_from_slice(&h[..n]);
    frame.extend_from_slice(payload);
    Bytes::from(frame)
}

/// The heartbeat ping: an empty ping frame.
pub(crate) const PING: Bytes = Bytes::from_static(&[0x80 | OpCode::Ping as u8, 0]);

/// The payload of a close frame: the code, then the reason.
pub(crate) fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(2 + reason.len());
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(&reason.as_bytes()[..reason.len().min(123)]);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_use_the_shortest_length_form() {
        let mut h = [0u8; MAX_HEADER];
        assert_eq!(header(OpCode::Text, 5, &mut h), 2);
        assert_eq!(&h[..2], &[0x81, 5]);
        assert_eq!(header(OpCode::Binary, 126, &mut h), 4);
        assert_eq!(&h[..4], &[0x82, 126, 0, 126]);
        assert_eq!(header(OpCode::Binary, 65535, &mut h), 4);
        assert_eq!(header(OpCode::Binary, 65536, &mut h), 10);
        assert_eq!(&h[..10], &[0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
        for len in [0, 125, 126, 65535, 65536] {
            assert_eq!(
                header_len(len),
                header(OpCode::Text, len, &mut h),
                "len {len}"
            );
        }
    }

    #[test]
    fn control_frames_are_whole_and_capped() {
        assert_eq!(&control(OpCode::Pong, b"hb")[..], &[0x8A, 2, b'h', b'b']);
        assert_eq!(control(OpCode::Close, &[0u8; 200]).len(), 2 + 125);
        assert_eq!(&PING[..], &[0x89, 0]);
    }
}
