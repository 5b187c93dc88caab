//! One client connection: a reader task, a writer task, and the handle the
//! rest of the node uses to reach it.
//!
//! ```text
//!   socket --> reader (frames, commands) ----------------+
//!                 |  control frames (pong, close echo)   | replies
//!                 v                                       v
//!   socket <-- writer <-- bounded outbound queue <-- hub fan-out
//! ```
//!
//! fastwebsockets' frame read is not cancel-safe, so the reader is never raced
//! in a `select!`; the writer owns the write half and does all writing.

pub(crate) mod commands;
pub(crate) mod frames;
mod guard;
mod reader;
mod writer;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::Poll;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::auth::Identity;
use crate::node::NodeInner;
use crate::protocol::{Disconnect, Protocol, Reply, encode_reply};

/// What a session's writer sends, in order.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// A push (channel or user message, join, leave), shared by every
    /// recipient; `published_us` feeds the delivery-latency histogram and
    /// `offset` (0: none) the recovery seam.
    Message {
        frame: Bytes,
        published_us: u64,
        offset: u64,
    },
    /// A reply to this client's command.
    Reply(Bytes),
}

impl Outbound {
    /// The history offset of a channel message; 0 for everything else.
    pub(crate) fn offset(&self) -> u64 {
        match self {
            Outbound::Message { offset, .. } => *offset,
            Outbound::Reply(_) => 0,
        }
    }
}

/// Why a session ended; the label of `switchboard_disconnects_total`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// The client closed (close frame or end of stream).
    ClientClosed,
    /// A read or write failed.
    Io,
    /// The node closes it on purpose: `disconnect`, then a close frame.
    Disconnect(Disconnect),
}

impl End {
    /// The metric label.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            End::ClientClosed => "client_closed",
            End::Io => "io_error",
            End::Disconnect(d) => match d.code {
                4008 => "slow_consumer",
                1009 => "too_large",
                1002 => "protocol_error",
                4100 => "api",
                4001 => "token_expired",
                4029 => "rate_limit",
                1011 => "internal",
                _ if d.reason == HEARTBEAT_TIMEOUT.reason => "heartbeat_timeout",
                _ => "shutdown",
            },
        }
    }
}

pub(crate) const SLOW_CONSUMER: Disconnect =
    Disconnect::fixed(4008, "slow consumer: outbound queue overflowed", true);
pub(crate) const TOO_LARGE: Disconnect = Disconnect::fixed(1009, "message too large", false);
pub(crate) const PROTOCOL_ERROR: Disconnect =
    Disconnect::fixed(1002, "websocket protocol error", false);
pub(crate) const SHUTDOWN: Disconnect = Disconnect::fixed(1001, "node shutting down", true);
pub(crate) const API_DISCONNECT: Disconnect =
    Disconnect::fixed(4100, "disconnected by the server API", false);
pub(crate) const INTERNAL: Disconnect = Disconnect::fixed(1011, "internal error", true);
pub(crate) const HEARTBEAT_TIMEOUT: Disconnect = Disconnect::fixed(1001, "heartbeat timeout", true);
pub(crate) const TOKEN_EXPIRED: Disconnect = Disconnect::fixed(4001, "token expired", true);
pub(crate) const RATE_LIMITED: Disconnect = Disconnect::fixed(4029, "rate limit exceeded", true);

/// The part of a session the hub and the node hold.
pub(crate) struct SessionHandle {
    /// Node-local number, for removal from the hub.
    pub(crate) id: u64,
    /// `c_<ULID>`, as in the welcome.
    pub(crate) conn: Arc<str>,
    /// User id, "" when anonymous (the identity's user).
    pub(crate) user: Arc<str>,
    /// Who the client is and what its token allows.
    pub(crate) identity: Identity,
    pub(crate) protocol: Protocol,
    outbound: mpsc::Sender<Outbound>,
    end: OnceLock<End>,
    ending: EndSignal,
    /// Milliseconds since the node started, at the last frame from the client.
    last_seen_ms: AtomicU64,
    /// Channels this session is subscribed to (touched by commands only).
    pub(crate) channels: Mutex<HashSet<Arc<str>>>,
    /// Cancelled by the writer when it stops: the reader stops reading (a
    /// cancelled frame read is harmless once the socket is being dropped) but
    /// always finishes the command it is executing.
    stop_reading: CancellationToken,
    /// The command rate limit (`limits::CommandLimiter`).
    pub(crate) limiter: Mutex<crate::limits::CommandLimiter>,
}

impl SessionHandle {
    /// Queues a channel message without waiting. On overflow the session is
    /// ended as a slow consumer: its queue is not allowed to grow, and the
    /// publisher is never made to wait for it.
    pub(crate) fn push(&self, item: Outbound) {
        match self.outbound.try_send(item) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => self.overflowed(),
            // The writer is gone; the session is being torn down.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Ends the session as a slow consumer (its queue or a buffer overflowed).
    pub(crate) fn overflowed(&self) {
        if self.end_with(End::Disconnect(SLOW_CONSUMER)) {
            metrics::counter!("switchboard_slow_consumer_disconnects_total").increment(1);
            tracing::info!(conn = %self.conn, "slow consumer disconnected");
        }
    }

    /// Queues a reply to one of this client's commands.
    pub(crate) fn reply(&self, id: Option<u64>, reply: &Reply<'_>) {
        self.push(Outbound::Reply(encode_reply(self.protocol, id, reply)));
    }

    /// Asks the writer to end the session; the first reason given wins.
    /// Returns whether this call set it.
    pub(crate) fn end_with(&self, end: End) -> bool {
        let first = self.end.set(end).is_ok();
        if first {
            self.ending.raise();
        }
        first
    }

    fn ended(&self) -> Option<&End> {
        self.end.get()
    }

    fn touch(&self, now_ms: u64) {
        self.last_seen_ms.store(now_ms, Ordering::Relaxed);
    }

    fn last_seen_ms(&self) -> u64 {
        self.last_seen_ms.load(Ordering::Relaxed)
    }
}

/// Wakes the writer when the session must end: raised once, never lowered.
///
/// Unlike `Notify`, polling it takes no lock, and the writer polls it on every
/// wake-up, that is, on every delivery.
#[derive(Default)]
struct EndSignal {
    raised: AtomicBool,
    waker: AtomicWaker,
}

impl EndSignal {
    fn raise(&self) {
        self.raised.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Resolves once raised (and again on every poll after). Cancel-safe.
    fn raised(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.raised.load(Ordering::Acquire) {
                return Poll::Ready(());
            }
            self.waker.register(cx.waker());
            if self.raised.load(Ordering::Acquire) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }
}

/// Runs a connection from the end of the handshake until it closes, then
/// removes it from every channel.
pub(crate) async fn run(
    node: Arc<NodeInner>,
    stream: TcpStream,
    read_ahead: Bytes,
    protocol: Protocol,
    identity: Identity,
) {
    let (read_half, write_half) = stream.into_split();
    let (outbound, outbound_rx) = mpsc::channel(node.config.outbound_queue);
    let (control, control_rx) = mpsc::channel(CONTROL_QUEUE);
    let session = Arc::new(SessionHandle {
        id: node.next_session_id(),
        conn: format!("c_{}", ulid::Ulid::new()).into(),
        user: identity.user.clone(),
        identity,
        protocol,
        outbound,
        end: OnceLock::new(),
        ending: EndSignal::default(),
        last_seen_ms: AtomicU64::new(node.uptime_ms()),
        channels: Mutex::new(HashSet::new()),
        stop_reading: CancellationToken::new(),
        limiter: Mutex::new(crate::limits::CommandLimiter::new(
            &node.config.limits,
            tokio::time::Instant::now(),
        )),
    });
    node.session_opened();
    session.reply(
        None,
        &Reply::Welcome {
            conn: &session.conn,
            node: &node.config.node_id,
            user: &session.user,
            heartbeat: node.config.heartbeat.as_secs_f64().ceil() as u32,
        },
    );

    node.register(&session);
    // A user's connections receive the messages sent to that user.
    let user_topic = (!session.user.is_empty()).then(|| crate::hub::user_key(&session.user));
    if let Some(key) = &user_topic
        && let Err(e) = node.hub.subscribe(key, &session, false, || {}).await
    {
        tracing::warn!(conn = %session.conn, error = %e, "cannot receive user messages: closing");
        session.end_with(End::Disconnect(INTERNAL));
    }

    let reader = tokio::spawn(reader::run(
        node.clone(),
        session.clone(),
        reader::Prefixed::new(read_ahead, read_half),
        control,
    ));
    let end = writer::run(&node, &session, write_half, outbound_rx, control_rx).await;
    session.stop_reading.cancel();
    if let Err(e) = reader.await {
        tracing::error!(conn = %session.conn, error = %e, "session reader failed");
    }

    let channels: Vec<Arc<str>> = crate::lock(&session.channels).drain().collect();
    for channel in channels {
        commands::leave(&node, &session, &channel).await;
    }
    if let Some(key) = &user_topic {
        node.hub.unsubscribe(key, session.id).await;
    }
    node.unregister(&session);
    if end == End::Disconnect(TOO_LARGE) {
        node.gate.rejections.message_size.increment(1);
    }
    node.session_closed(&end);
    tracing::debug!(conn = %session.conn, reason = end.label(), "session ended");
}

/// Control frames waiting for the writer (pongs, the close echo).
const CONTROL_QUEUE: usize = 4;
