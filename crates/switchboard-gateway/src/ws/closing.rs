//! The end of a WebSocket connection, once the node's close frame is on the
//! wire (RFC 6455 7.1.1: the server closes the TCP connection first, and
//! only after the closing handshake).

use std::io;
use std::time::Duration;

use tokio::net::TcpStream;

use super::parse::{Event, Parser};

/// How long the node waits for the client's part of the closing handshake
/// (its close frame, or the end of its stream) before closing anyway.
pub const CLOSE_WAIT: Duration = Duration::from_secs(3);

/// Who started the close, which decides what the node waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closing {
    /// The client sent a close frame and the node echoed it: the handshake is
    /// complete, the node closes the TCP connection now.
    Echoed,
    /// The node closes (drain, token expiry, an API disconnect...): it waits up
    /// to [`CLOSE_WAIT`] for the client's close frame, ignoring any data that
    /// comes first, then closes the TCP connection.
    Awaiting,
    /// The client broke the protocol (close 1002, 1007, 1009): what it sends
    /// can no longer be parsed, so the node ends its side of the stream at
    /// once and discards what comes until the client closes its side (up to
    /// [`CLOSE_WAIT`]), so that the client reads the close frame rather than
    /// a reset.
    Failed,
}

/// How the client took part in the close.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Finished {
    /// Its close frame (or, for [`Closing::Failed`], the end of its stream) came.
    Clean,
    /// It closed its side without a close frame.
    Eof,
    /// Nothing within [`CLOSE_WAIT`] (counted in
    /// `switchboard_close_handshake_timeouts_total`).
    TimedOut,
    /// The socket failed.
    Error,
}

/// Completes the close after the node's close frame was written whole, and
/// leaves the socket shut for writing (the caller drops it, which closes it).
pub(crate) async fn finish(socket: &TcpStream, parser: &mut Parser, closing: Closing) -> Finished {
    let finished = match closing {
        Closing::Echoed => Finished::Clean,
        Closing::Awaiting => {
            match tokio::time::timeout(CLOSE_WAIT, client_close(socket, parser)).await {
                Ok(finished) => finished,
                Err(_) => Finished::TimedOut,
            }
        }
        Closing::Failed => {
            shutdown(socket);
            match tokio::time::timeout(CLOSE_WAIT, discard(socket)).await {
                Ok(finished) => finished,
                Err(_) => Finished::TimedOut,
            }
        }
    };
    if finished == Finished::TimedOut {
        metrics::counter!("switchboard_close_handshake_timeouts_total").increment(1);
        tracing::debug!(
            ?closing,
            "the client did not complete the closing handshake in time"
        );
    }
    if closing != Closing::Failed {
        shutdown(socket);
    }
    finished
}

/// Reads until the client's close frame; data frames are ignored (RFC 6455
/// 1.4: after sending a close frame, an endpoint processes no more data).
async fn client_close(socket: &TcpStream, parser: &mut Parser) -> Finished {
    loop {
        loop {
            match parser.next() {
                Ok(Some(Event::Close(_))) => return Finished::Clean,
                Ok(Some(_)) => {}
                Ok(None) => break,
                // Broken now: no close frame can be found in what follows.
                Err(_) => return Finished::Error,
            }
        }
        match read(socket, |data| parser.feed(data)).await {
            Ok(true) => {}
            Ok(false) => return Finished::Eof,
            Err(_) => return Finished::Error,
        }
    }
}

/// Reads and drops everything until the client ends its stream.
async fn discard(socket: &TcpStream) -> Finished {
    loop {
        match read(socket, |_| {}).await {
            Ok(true) => {}
            Ok(false) => return Finished::Clean,
            Err(_) => return Finished::Error,
        }
    }
}

/// Waits for bytes and hands them to `take`; false at the end of the stream.
async fn read(socket: &TcpStream, mut take: impl FnMut(&[u8])) -> io::Result<bool> {
    loop {
        socket.readable().await?;
        if let Some(more) = try_read(socket, &mut take)? {
            return Ok(more);
        }
    }
}

/// One non-blocking read; `None` when there was nothing after all. The buffer
/// is on this call's stack, never in the (per-connection) future of [`read`].
fn try_read(socket: &TcpStream, take: &mut impl FnMut(&[u8])) -> io::Result<Option<bool>> {
    let mut chunk = [0u8; 4096];
    match socket.try_read(&mut chunk) {
        Ok(0) => Ok(Some(false)),
        Ok(n) => {
            take(&chunk[..n]);
            Ok(Some(true))
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Ends the node's side of the stream (FIN). The peer may be gone already
/// (ENOTCONN): the connection is closing either way.
pub(crate) fn shutdown(socket: &TcpStream) {
    if let Err(e) = socket2::SockRef::from(socket).shutdown(std::net::Shutdown::Write) {
        tracing::debug!(error = %e, "socket shutdown failed");
    }
}
