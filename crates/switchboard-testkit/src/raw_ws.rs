//! A hand-rolled WebSocket client over a bare `TcpStream`, for peers that misbehave on
//! purpose: it never answers pings, reads only when told to, can shrink its receive
//! buffer, and can send arbitrary (fragmented, oversized) frames.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::RECV_TIMEOUT;

/// Opcodes of RFC 6455 (those the tests send or expect).
pub mod opcode {
    /// Continuation frame.
    pub const CONTINUATION: u8 = 0x0;
    /// Text frame.
    pub const TEXT: u8 = 0x1;
    /// Close frame.
    pub const CLOSE: u8 = 0x8;
    /// Ping frame.
    pub const PING: u8 = 0x9;
    /// Pong frame.
    pub const PONG: u8 = 0xA;
}

/// One frame as received.
#[derive(Debug, Clone)]
pub struct RawFrame {
    /// FIN bit.
    pub fin: bool,
    /// Opcode.
    pub opcode: u8,
    /// Unmasked payload.
    pub payload: Vec<u8>,
}

impl RawFrame {
    /// The close code of a close frame (1005 when it has none).
    pub fn close_code(&self) -> u16 {
        if self.payload.len() >= 2 {
            u16::from_be_bytes([self.payload[0], self.payload[1]])
        } else {
            1005
        }
    }

    /// The payload of a text frame as JSON (panics otherwise).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.payload).unwrap_or_else(|e| {
            panic!(
                "frame is not JSON ({e}): opcode {} {:?}",
                self.opcode,
                String::from_utf8_lossy(&self.payload[..self.payload.len().min(200)])
            )
        })
    }
}

/// What a read saw.
#[derive(Debug)]
pub enum RawRead {
    /// A frame.
    Frame(RawFrame),
    /// The server closed the TCP connection (EOF).
    Eof,
    /// The connection was reset or failed.
    Error(std::io::Error),
}

/// A raw client connection after a successful handshake.
pub struct RawWs {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawWs {
    /// Connects to `/ws` with an optional subprotocol and handshakes; panics unless 101.
    pub async fn connect(addr: SocketAddr, protocol: Option<&str>) -> RawWs {
        RawWs::connect_with_recv_buffer(addr, protocol, None).await
    }

    /// As [`RawWs::connect`], with `SO_RCVBUF` set before connecting (a small buffer
    /// makes a non-reading client back-pressure the server sooner).
    pub async fn connect_with_recv_buffer(
        addr: SocketAddr,
        protocol: Option<&str>,
        recv_buffer: Option<u32>,
    ) -> RawWs {
        let socket = TcpSocket::new_v4().expect("socket");
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
        }
        let stream = tokio::time::timeout(RECV_TIMEOUT, socket.connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect");
        let mut ws = RawWs {
            stream,
            buf: Vec::new(),
        };
        let mut request = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        );
        if let Some(p) = protocol {
            request.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
        }
        request.push_str("\r\n");
        ws.stream
            .write_all(request.as_bytes())
            .await
            .expect("write handshake");
        let head = ws.read_head().await;
        assert!(
            head.starts_with("HTTP/1.1 101"),
            "expected 101 Switching Protocols, got:\n{head}"
        );
        assert!(
            head.to_ascii_lowercase()
                .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
            "bad Sec-WebSocket-Accept in:\n{head}"
        );
        ws
    }

    /// Sends one masked frame.
    pub async fn send_frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        let bytes = encode_frame(fin, opcode, payload);
        tokio::time::timeout(RECV_TIMEOUT, self.stream.write_all(&bytes))
            .await
            .expect("raw write timed out")
            .expect("raw write failed");
    }

    /// Sends one masked frame, returning the write error instead of panicking (the
    /// server may already have closed).
    pub async fn try_send_frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) -> bool {
        let bytes = encode_frame(fin, opcode, payload);
        matches!(
            tokio::time::timeout(RECV_TIMEOUT, self.stream.write_all(&bytes)).await,
            Ok(Ok(()))
        )
    }

    /// Writes bytes as they are (several frames at once, a frame cut anywhere, or
    /// a frame that breaks the rules), one `write` call per chunk of `chunk` bytes.
    pub async fn send_raw(&mut self, bytes: &[u8], chunk: usize) {
        for part in bytes.chunks(chunk.max(1)) {
            tokio::time::timeout(RECV_TIMEOUT, async {
                self.stream.write_all(part).await?;
                self.stream.flush().await
            })
            .await
            .expect("raw write timed out")
            .expect("raw write failed");
        }
    }

    /// Sends a complete text frame.
    pub async fn send_text(&mut self, text: &str) {
        self.send_frame(true, opcode::TEXT, text.as_bytes()).await;
    }

    /// Reads one frame; panics after `timeout`.
    pub async fn read(&mut self, timeout: Duration) -> RawRead {
        match tokio::time::timeout(timeout, self.read_inner()).await {
            Ok(r) => r,
            Err(_) => panic!("raw client: nothing from the server within {timeout:?}"),
        }
    }

    /// Reads frames until a text frame and returns it as JSON (skipping pings).
    pub async fn recv_json(&mut self) -> Value {
        loop {
            match self.read(RECV_TIMEOUT).await {
                RawRead::Frame(f) if f.opcode == opcode::TEXT => return f.json(),
                RawRead::Frame(f) if f.opcode == opcode::PING || f.opcode == opcode::PONG => {}
                other => panic!("raw client: expected a text frame, got {other:?}"),
            }
        }
    }

    /// Reads text frames until one whose `type` is `ty`.
    pub async fn recv_type(&mut self, ty: &str) -> Value {
        loop {
            let v = self.recv_json().await;
            if v["type"] == ty {
                return v;
            }
        }
    }

    async fn read_inner(&mut self) -> RawRead {
        loop {
            if let Some((frame, used)) = decode_frame(&self.buf) {
                self.buf.drain(..used);
                return RawRead::Frame(frame);
            }
            let mut chunk = [0u8; 64 * 1024];
            match self.stream.read(&mut chunk).await {
                Ok(0) => return RawRead::Eof,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => return RawRead::Error(e),
            }
        }
    }

    async fn read_head(&mut self) -> String {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..end + 4);
                return head;
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(RECV_TIMEOUT, self.stream.read(&mut chunk))
                .await
                .expect("handshake response timed out")
                .expect("read handshake response");
            assert!(
                n > 0,
                "server closed during the handshake; got {:?}",
                String::from_utf8_lossy(&self.buf)
            );
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// One masked client frame.
pub fn encode_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(if fin { 0x80 } else { 0 } | (opcode & 0x0f));
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= u16::MAX as usize {
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

fn decode_frame(buf: &[u8]) -> Option<(RawFrame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let fin = buf[0] & 0x80 != 0;
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let mut pos = 2;
    let len = match buf[1] & 0x7f {
        126 => {
            if buf.len() < 4 {
                return None;
            }
            pos = 4;
            u16::from_be_bytes([buf[2], buf[3]]) as usize
        }
        127 => {
            if buf.len() < 10 {
                return None;
            }
            pos = 10;
            u64::from_be_bytes(buf[2..10].try_into().ok()?) as usize
        }
        n => n as usize,
    };
    let mask = if masked {
        if buf.len() < pos + 4 {
            return None;
        }
        let m = [buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]];
        pos += 4;
        Some(m)
    } else {
        None
    };
    if buf.len() < pos + len {
        return None;
    }
    let mut payload = buf[pos..pos + len].to_vec();
    if let Some(m) = mask {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= m[i % 4];
        }
    }
    Some((
        RawFrame {
            fin,
            opcode,
            payload,
        },
        pos + len,
    ))
}
