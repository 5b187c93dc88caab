//! The session's reader: frames in, whole messages assembled (with a cap on
//! their total size), commands executed one at a time.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use fastwebsockets::{Frame, OpCode as WsOpCode, Payload, Role, WebSocketError};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::mpsc;

use super::frames::OpCode;
use super::writer::Control;
use super::{End, PROTOCOL_ERROR, SessionHandle, TOO_LARGE, commands};
use crate::node::NodeInner;

/// The read half of the socket, preceded by whatever the HTTP layer had
/// already read past the upgrade request.
pub(crate) struct Prefixed {
    prefix: Bytes,
    inner: OwnedReadHalf,
}

impl Prefixed {
    pub(crate) fn new(prefix: Bytes, inner: OwnedReadHalf) -> Self {
        Prefixed { prefix, inner }
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let head = self.prefix.split_to(n);
            buf.put_slice(&head);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

/// Reads until the client goes, the writer stops, or a frame breaks the rules.
pub(super) async fn run(
    node: Arc<NodeInner>,
    session: Arc<SessionHandle>,
    stream: Prefixed,
    control: mpsc::Sender<Control>,
) {
    let max = node.config.max_message_size;
    let (mut ws, _) =
        fastwebsockets::after_handshake_split(stream, tokio::io::sink(), Role::Server);
    // fastwebsockets refuses frames of `max_message_size` bytes or more; ours is inclusive.
    ws.set_max_message_size(max.saturating_add(1));
    ws.set_auto_pong(true);
    ws.set_auto_close(true);
    // A message split over several frames, while it is being assembled.
    let mut partial: Option<(bool, BytesMut)> = None;
    // Pongs and the close echo are owed by the protocol; the writer sends them.
    let mut owe = |frame: Frame<'_>| {
        let owed = Control {
            opcode: if frame.opcode == WsOpCode::Close {
                OpCode::Close
            } else {
                OpCode::Pong
            },
            payload: frame.payload.to_vec(),
        };
        let control = control.clone();
        async move {
            control
                .send(owed)
                .await
                .map_err(|_| "session writer has stopped")
        }
    };

    // Created once: a fresh `cancelled()` per frame would lock the token's waiter list each time.
    let stop = session.stop_reading.cancelled();
    tokio::pin!(stop);
    loop {
        let read = tokio::select! {
            biased;
            _ = &mut stop => return,
            frame = ws.read_frame(&mut owe) => frame,
        };
        let frame = match read {
            Ok(frame) => frame,
            Err(e) => {
                session.end_with(read_error(e));
                return;
            }
        };
        session.touch(node.uptime_ms());
        let fin = frame.fin;
        let message = match frame.opcode {
            WsOpCode::Text | WsOpCode::Binary => {
                if partial.is_some() {
                    session.end_with(End::Disconnect(PROTOCOL_ERROR));
                    return;
                }
                let text = frame.opcode == WsOpCode::Text;
                if fin {
                    Some((text, into_bytes(frame.payload)))
                } else {
                    partial = Some((text, BytesMut::from(&frame.payload[..])));
                    None
                }
            }
            WsOpCode::Continuation => {
                let Some((text, buf)) = partial.as_mut() else {
                    session.end_with(End::Disconnect(PROTOCOL_ERROR));
                    return;
                };
                if buf.len() + frame.payload.len() > max {
                    session.end_with(End::Disconnect(TOO_LARGE));
                    return;
                }
                buf.extend_from_slice(&frame.payload);
                if fin {
                    let text = *text;
                    partial.take().map(|(_, buf)| (text, buf.freeze()))
                } else {
                    None
                }
            }
            // The close echo went to the writer, which ends the session.
            WsOpCode::Close => return,
            WsOpCode::Ping | WsOpCode::Pong => None,
        };
        if let Some((text, data)) = message {
            commands::handle(&node, &session, text, data).await;
        }
    }
}

/// Maps a read failure to how the session ends.
fn read_error(e: WebSocketError) -> End {
    match e {
        WebSocketError::FrameTooLarge => End::Disconnect(TOO_LARGE),
        WebSocketError::UnexpectedEOF
        | WebSocketError::ConnectionClosed
        | WebSocketError::SendError(_) => End::ClientClosed,
        WebSocketError::IoError(_) => End::Io,
        other => {
            tracing::debug!(error = %other, "websocket protocol violation");
            End::Disconnect(PROTOCOL_ERROR)
        }
    }
}

fn into_bytes(payload: Payload<'_>) -> Bytes {
    match payload {
        Payload::Bytes(b) => b.freeze(),
        Payload::Owned(v) => Bytes::from(v),
        other => Bytes::copy_from_slice(&other),
    }
}
