//! The session's task: reads and parses client frames, runs commands one at a
//! time, writes what the outbox had to queue, keeps the heartbeat, and closes.

use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use tokio::time::Instant;

use super::outbox::Flushed;
use super::{End, Outbound, SessionHandle, commands};
use crate::node::NodeInner;
use crate::protocol::{CloseReason, Reply, encode_reply};
use crate::ws::closing::{self, Closing};
use crate::ws::frames::{self, OpCode};
use crate::ws::{Event, Parser, Violation};

/// How long a full socket may take no bytes before the client counts as gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the final `disconnect` and close frame may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Share of the drain timeout over which drain disconnects are spread.
const DRAIN_SPREAD: f64 = 0.8;
/// Bytes read per `read` call (on the stack, not kept per connection).
const READ_CHUNK: usize = 8192;

type Command<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// The moments the task's one timer stands for.
struct Deadlines {
    /// Next heartbeat ping (and silence check).
    ping: Instant,
    /// The token's expiry.
    expires: Option<Instant>,
    /// When this session leaves a draining node.
    drain: Option<Instant>,
    /// When a full socket that takes nothing counts as a slow consumer; set
    /// exactly while frames wait for the socket.
    stall: Option<Instant>,
}

impl Deadlines {
    fn next(&self) -> Instant {
        [self.expires, self.drain, self.stall]
            .into_iter()
            .flatten()
            .fold(self.ping, Instant::min)
    }
}

/// Runs the session until it ends, says goodbye, and returns why it ended.
pub(super) async fn run(
    node: &Arc<NodeInner>,
    session: &Arc<SessionHandle>,
    read_ahead: Bytes,
) -> End {
    let mut parser = Parser::new(node.config.max_message_size);
    parser.feed(&read_ahead);
    drop(read_ahead);
    let mut command: Option<Command<'_>> = None;
    let end = serve(node, session, &mut parser, &mut command).await;
    // Boxed: the closing handshake's state is needed once, at the end, and
    // must not enlarge the task every idle connection keeps.
    Box::pin(goodbye(session, &end, &mut parser)).await;
    drop(parser);
    // A command in progress always finishes (its reply goes nowhere now): a
    // subscription half made would leave the hub and the backplane disagreeing.
    if let Some(command) = command {
        command.await;
    }
    end
}

async fn serve<'a>(
    node: &'a Arc<NodeInner>,
    session: &'a Arc<SessionHandle>,
    parser: &mut Parser,
    command: &mut Option<Command<'a>>,
) -> End {
    let heartbeat = node.config.heartbeat;
    let mut at = Deadlines {
        ping: Instant::now() + heartbeat,
        expires: session
            .identity
            .expires_at
            .and_then(crate::policy::token::expiry_deadline),
        drain: None,
        stall: None,
    };
    let timer = tokio::time::sleep_until(at.next());
    tokio::pin!(timer);
    let attention = session.attention.taken();
    tokio::pin!(attention);

    loop {
        if let Some(end) = session.ended() {
            return end.clone();
        }
        // Act on what was read: control frames at once, messages one at a time.
        while command.is_none() {
            match parser.next() {
                Ok(Some(Event::Message { text, data })) => {
                    *command = Some(Box::pin(commands::handle(node, session, text, data)));
                }
                // Control frames cost the sender as commands do: a ping
                // flood is not answered beyond the command rate.
                Ok(Some(Event::Ping(payload))) => {
                    if crate::policy::access::admit_control(node, session) {
                        session.push(Outbound::Control(frames::control(OpCode::Pong, &payload)));
                    }
                }
                Ok(Some(Event::Pong)) => {
                    crate::policy::access::admit_control(node, session);
                }
                Ok(Some(Event::Close(code))) => {
                    let echo = code.map(u16::to_be_bytes);
                    let payload: &[u8] = echo.as_ref().map_or(&[], |c| c);
                    session
                        .outbox
                        .close(None, frames::control(OpCode::Close, payload), false);
                    return End::ClientClosed;
                }
                Ok(None) => break,
                Err(violation) => {
                    if let Violation::Protocol(what) = violation {
                        tracing::debug!(conn = %session.conn, what, "websocket protocol violation");
                    }
                    session.end_with(End::Closed(match violation {
                        Violation::TooLarge => CloseReason::TooLarge,
                        Violation::InvalidUtf8 => CloseReason::InvalidUtf8,
                        Violation::Protocol(_) => CloseReason::ProtocolError,
                    }));
                    break;
                }
            }
            if session.ended().is_some() {
                break;
            }
        }
        if let Some(end) = session.ended() {
            return end.clone();
        }
        if at.drain.is_none() && node.is_draining() {
            let window = node.config.drain_timeout.mul_f64(DRAIN_SPREAD);
            let delay = rand::rng().random_range(Duration::ZERO..=window);
            at.drain = Some(Instant::now() + delay);
            timer.as_mut().reset(at.next());
        }

        tokio::select! {
            biased;
            // The session must end, frames were queued, or the node drains:
            // the first two are handled here, the others at the top of the loop.
            () = &mut attention => {
                // While the socket is full, its readiness (below) drives the writing.
                if at.stall.is_none() {
                    if write_queued(session, &mut at.stall).is_err() {
                        return End::Io;
                    }
                    timer.as_mut().reset(at.next());
                }
            }
            () = &mut timer => {
                let now = Instant::now();
                if at.expires.is_some_and(|t| t <= now) {
                    session.end_with(End::Closed(CloseReason::TokenExpired));
                } else if at.stall.is_some_and(|t| t <= now) {
                    session.overflowed();
                } else if at.drain.is_some_and(|t| t <= now) {
                    session.end_with(End::Closed(CloseReason::Shutdown));
                } else if at.ping <= now {
                    let silent_ms = node.uptime_ms().saturating_sub(session.last_seen_ms());
                    if silent_ms > 2 * heartbeat.as_millis() as u64 {
                        session.end_with(End::Closed(CloseReason::HeartbeatTimeout));
                    } else {
                        session.push(Outbound::Control(frames::PING));
                        // Pusher clients answer the protocol's own ping
                        // (what their libraries count as activity).
                        if session.protocol == crate::protocol::Protocol::Pusher {
                            session.push(Outbound::Reply(crate::protocol::pusher::ping()));
                        }
                    }
                    at.ping = now + heartbeat;
                }
                timer.as_mut().reset(at.next());
            }
            () = poll_command(command), if command.is_some() => {
                *command = None;
            }
            // Readiness is polled, not awaited through a future: the socket
            // keeps the waker, and the task stores nothing for it.
            ready = poll_fn(|cx| session.socket.poll_write_ready(cx)), if at.stall.is_some() => {
                if ready.is_err() || write_queued(session, &mut at.stall).is_err() {
                    return End::Io;
                }
                timer.as_mut().reset(at.next());
            }
            ready = poll_fn(|cx| session.socket.poll_read_ready(cx)), if command.is_none() => {
                if ready.is_err() {
                    return End::Io;
                }
                match read(session, parser) {
                    Ok(Read::Data) => session.touch(node.uptime_ms()),
                    Ok(Read::Nothing) => {}
                    Ok(Read::Eof) => return End::ClientClosed,
                    Err(_) => return End::Io,
                }
            }
        }
    }
}

/// Writes what the outbox queued, and keeps `stall` in step: none once the
/// queue is drained, renewed whenever the full socket took some bytes.
fn write_queued(session: &SessionHandle, stall: &mut Option<Instant>) -> io::Result<()> {
    match session.outbox.flush(&session.socket, &session.metrics)? {
        Flushed::Drained => *stall = None,
        Flushed::Blocked { progress } => {
            if progress || stall.is_none() {
                *stall = Some(Instant::now() + WRITE_TIMEOUT);
            }
        }
    }
    Ok(())
}

/// Polls the command in progress (never called without one).
fn poll_command<'c>(command: &'c mut Option<Command<'_>>) -> impl Future<Output = ()> + 'c {
    std::future::poll_fn(move |cx| match command.as_mut() {
        Some(c) => c.as_mut().poll(cx),
        None => Poll::Pending,
    })
}

enum Read {
    Data,
    Nothing,
    Eof,
}

/// Reads what the socket has (up to a few chunks) into the parser.
fn read(session: &SessionHandle, parser: &mut Parser) -> io::Result<Read> {
    let mut chunk = [0u8; READ_CHUNK];
    let mut got = Read::Nothing;
    // A few chunks at most per wake-up: a client streaming data cannot starve
    // the rest of the task (the parser is consulted between wake-ups).
    for _ in 0..4 {
        match session.socket.try_read(&mut chunk) {
            Ok(0) => return Ok(Read::Eof),
            Ok(n) => {
                parser.feed(&chunk[..n]);
                got = Read::Data;
                if n < chunk.len() {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Queues the goodbye (for a node-decided end), writes what is owed within
/// `CLOSE_TIMEOUT` (a slow consumer: only what its socket takes at once), and
/// completes the closing handshake (`ws::closing`): the socket is left shut
/// for writing, after the client's close frame when the node closed first.
async fn goodbye(session: &SessionHandle, end: &End, parser: &mut Parser) {
    // A slow consumer gets its goodbye only if its socket takes it now: waiting
    // on the client whose backlog is the problem would hold its memory longer.
    let wait = *end != End::Closed(CloseReason::SlowConsumer);
    let how = match end {
        End::Closed(why) => {
            let d = why.disconnect_in(session.protocol);
            // A peer that broke RFC 6455 gets the close frame alone (no
            // `disconnect` push): it is owed no more messages, and a text frame
            // before the close is what the RFC's fail-the-connection forbids.
            let broken = why.fails_connection();
            let last = why
                .tells_client()
                .then(|| encode_reply(session.protocol, None, &Reply::Disconnect(&d)));
            let close = frames::control(OpCode::Close, &frames::close_payload(d.code, &d.reason));
            // What was queued before the decision to close still goes out (the
            // last replies, the messages of a draining node), except to a slow
            // consumer, whose queue is the problem.
            session
                .outbox
                .close(last, close, *why == CloseReason::SlowConsumer);
            if broken {
                Closing::Failed
            } else {
                Closing::Awaiting
            }
        }
        // The close echo, if the client sent a close frame, is queued already.
        End::ClientClosed => {
            session.outbox.seal();
            Closing::Echoed
        }
        End::Io => {
            session.outbox.seal();
            return;
        }
    };
    let flushed = tokio::time::timeout(CLOSE_TIMEOUT, async {
        loop {
            match session.outbox.flush(&session.socket, &session.metrics) {
                Ok(Flushed::Drained) => return true,
                Err(_) => return false,
                Ok(Flushed::Blocked { .. }) => {
                    if !wait || session.socket.writable().await.is_err() {
                        return false;
                    }
                }
            }
        }
    })
    .await;
    match flushed {
        Ok(true) => {
            closing::finish(&session.socket, parser, how).await;
        }
        Ok(false) => closing::shutdown(&session.socket),
        Err(_) => {
            tracing::debug!(conn = %session.conn, "last frames not written within the close timeout");
            closing::shutdown(&session.socket);
        }
    }
}
