//! Whole frames to one client, through the outbox a session writes with.

use std::io;

use tokio::net::TcpStream;

use super::closing::{self, Closing};
use super::frames::{self, OpCode};
use super::parse::Parser;
use crate::metrics::HotMetrics;
use crate::session::Outbound;
use crate::session::outbox::{Flushed, Outbox, Pushed};
use crate::session::signal::Signal;

/// Writes frames to one client socket: straight to the socket when it takes
/// them, else queued (bounded) and written as it drains, in order.
pub struct Writer {
    outbox: Outbox,
    metrics: HotMetrics,
    /// Raised by the outbox when it starts queuing; [`Writer::send`] drains
    /// the queue itself, so nothing waits on it.
    queued: Signal,
}

impl Writer {
    /// A writer queuing at most `queue` frames behind a full socket.
    pub fn new(queue: usize) -> Self {
        Writer {
            outbox: Outbox::new(queue, OpCode::Binary),
            metrics: HotMetrics::new(),
            queued: Signal::default(),
        }
    }

    /// Sends one whole, unfragmented frame and waits until the socket took
    /// all of it. Control frames (ping, pong, close) carry at most 125 bytes.
    pub async fn send(&self, socket: &TcpStream, opcode: OpCode, payload: &[u8]) -> io::Result<()> {
        let frame = match opcode {
            OpCode::Text | OpCode::Binary => frames::whole(opcode, payload),
            OpCode::Close | OpCode::Ping | OpCode::Pong => frames::control(opcode, payload),
        };
        match self.outbox.push(
            socket,
            &Outbound::Control(frame),
            &self.metrics,
            &self.queued,
        ) {
            Pushed::Written => Ok(()),
            Pushed::Queued => self.drain(socket).await,
            Pushed::Full => Err(io::Error::other("outbound queue full")),
            Pushed::Sealed => Err(io::Error::other("the connection is closing")),
            Pushed::Failed => Err(io::Error::other("socket write failed")),
        }
    }

    /// Writes what is queued until the queue is empty.
    async fn drain(&self, socket: &TcpStream) -> io::Result<()> {
        loop {
            match self.outbox.flush(socket, &self.metrics)? {
                Flushed::Drained => return Ok(()),
                Flushed::Blocked { .. } => socket.writable().await?,
            }
        }
    }

    /// Closes the connection as a session does: sends a close frame with
    /// `code` (none when `None`, e.g. to echo an empty close), after what is
    /// queued, then completes the closing handshake as `closing` says (see
    /// [`Closing`]) and shuts the socket for writing. Nothing can be sent
    /// afterwards; drop the socket to close it.
    pub async fn close(
        &self,
        socket: &TcpStream,
        parser: &mut Parser,
        code: Option<u16>,
        reason: &str,
        closing: Closing,
    ) {
        let payload = code.map_or_else(Vec::new, |c| frames::close_payload(c, reason));
        self.outbox
            .close(None, frames::control(OpCode::Close, &payload), false);
        let written = tokio::time::timeout(closing::CLOSE_WAIT, self.drain(socket)).await;
        if matches!(written, Ok(Ok(()))) {
            closing::finish(socket, parser, closing).await;
        } else {
            // The close frame did not go out: there is no handshake to wait for.
            closing::shutdown(socket);
        }
    }
}
