//! Writing server frames.
//!
//! Server frames are not masked, so an encoded message is the same bytes for
//! every recipient: a frame is a 2-10 byte header written here plus the shared
//! payload. The writer gathers the headers and payloads of every ready frame
//! into one vectored write, so a burst costs one syscall and no copy.

use std::io::IoSlice;

use tokio::io::{AsyncWrite, AsyncWriteExt};

/// WebSocket opcodes the server sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OpCode {
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

/// The longest header of an unmasked frame.
pub(crate) const MAX_HEADER: usize = 10;

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

/// Writes frames of one opcode with as few syscalls as the socket allows.
///
/// Not cancel-safe: a cancelled call may leave a partial frame on the wire, so
/// the connection must then be dropped.
pub(crate) async fn write_frames<W: AsyncWrite + Unpin>(
    w: &mut W,
    opcode: OpCode,
    payloads: &[&[u8]],
) -> std::io::Result<usize> {
    debug_assert!(payloads.len() <= MAX_BATCH);
    let mut headers = [[0u8; MAX_HEADER]; MAX_BATCH];
    let mut lens = [0usize; MAX_BATCH];
    let mut total = 0;
    for (i, p) in payloads.iter().enumerate() {
        lens[i] = header(opcode, p.len(), &mut headers[i]);
        total += lens[i] + p.len();
    }
    let mut slices: [IoSlice<'_>; 2 * MAX_BATCH] = [IoSlice::new(&[]); 2 * MAX_BATCH];
    for (i, p) in payloads.iter().enumerate() {
        slices[2 * i] = IoSlice::new(&headers[i][..lens[i]]);
        slices[2 * i + 1] = IoSlice::new(p);
    }
    let mut remaining = &mut slices[..2 * payloads.len()];
    // Skip empty slices so `write_vectored` returning 0 means a closed socket.
    IoSlice::advance_slices(&mut remaining, 0);
    while !remaining.is_empty() {
        let n = w.write_vectored(remaining).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut remaining, n);
    }
    Ok(total)
}

/// Writes one control frame (payload at most 125 bytes).
pub(crate) async fn write_control<W: AsyncWrite + Unpin>(
    w: &mut W,
    opcode: OpCode,
    payload: &[u8],
) -> std::io::Result<()> {
    let mut h = [0u8; MAX_HEADER];
    let payload = &payload[..payload.len().min(125)];
    let n = header(opcode, payload.len(), &mut h);
    let mut frame = Vec::with_capacity(n + payload.len());
    frame.extend_from_slice(&h[..n]);
    frame.extend_from_slice(payload);
    w.write_all(&frame).await
}

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
    }

    #[tokio::test]
    async fn a_batch_is_written_whole_and_in_order() {
        let mut out = Vec::new();
        let big = vec![7u8; 70_000];
        let n = write_frames(&mut out, OpCode::Text, &[b"ab", b"", &big])
            .await
            .unwrap();
        assert_eq!(n, out.len());
        assert_eq!(&out[..4], &[0x81, 2, b'a', b'b']);
        assert_eq!(&out[4..6], &[0x81, 0]);
        assert_eq!(&out[6..8], &[0x81, 127]);
        assert_eq!(out.len(), 4 + 2 + 10 + 70_000);
    }
}
