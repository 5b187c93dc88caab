//! One client connection: one task, and the handle the rest of the node uses
//! to reach it.
//!
//! ```text
//!   socket --> task: parse frames, run one command at a time ---+ replies
//!                                                                |
//!   hub fan-out --> Outbox::push --> socket (direct write) <-----+
//!                        | socket full
//!                        v
//!                  bounded queue --> task writes it as the socket drains
//! ```
//!
//! The task waits on the socket's readiness (polled, never inside a frame
//! read), one wake-up signal (the session must end, frames were queued, the
//! node drains) and one timer (heartbeat, token expiry, drain moment, write
//! stall). A command in progress is a boxed future polled beside these, so an
//! idle connection carries neither a command's state nor a read buffer, and
//! the task's whole state is a few hundred bytes.

pub(crate) mod commands;
mod conn;
pub(crate) use outbox::MAX_RUN;
pub(crate) mod outbox;
mod pusher;
pub(crate) mod signal;

pub(crate) use pusher::PusherConn;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use tokio::net::TcpStream;

use crate::metrics::HotMetrics;
use crate::node::NodeInner;
use crate::policy::token::Identity;
use crate::protocol::{CloseReason, Protocol, Reply, encode_reply};
use outbox::{Outbox, Pushed};
use signal::Signal;

/// What a session sends, in order.
#[derive(Clone, Debug)]
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
    /// A whole control frame, header included (ping, pong, close).
    Control(Bytes),
}

impl Outbound {
    /// The history offset of a channel message; 0 for everything else.
    pub(crate) fn offset(&self) -> u64 {
        match self {
            Outbound::Message { offset, .. } => *offset,
            Outbound::Reply(_) | Outbound::Control(_) => 0,
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
    Closed(CloseReason),
}

impl End {
    /// The metric label.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            End::ClientClosed => "client_closed",
            End::Io => "io_error",
            End::Closed(why) => why.label(),
        }
    }
}

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
    /// The client's socket: read by the session's task, written through `outbox`.
    socket: TcpStream,
    outbox: Outbox,
    metrics: Arc<HotMetrics>,
    end: OnceLock<End>,
    /// Wakes the session's task: the session must end, frames were queued
    /// behind a full socket, or the node started draining. The task looks at
    /// all three on every wake-up, so one waker per connection serves them.
    attention: Signal,
    /// Milliseconds since the node started, at the last bytes from the client.
    last_seen_ms: AtomicU64,
    /// Channels this session is subscribed to (touched by commands only).
    pub(crate) channels: Mutex<HashSet<Arc<str>>>,
    /// The command rate limit (`limits::CommandLimiter`).
    pub(crate) limiter: Mutex<crate::policy::limits::CommandLimiter>,
    /// A Pusher connection's own state (its app, signed-in user, presence
    /// memberships); `None` on the node's own protocol.
    pub(crate) pusher: Option<Box<PusherConn>>,
}

impl SessionHandle {
    /// Sends a frame without waiting: written now when the socket takes it,
    /// else queued. When the queue is full the session is ended as a slow
    /// consumer: its queue is not allowed to grow, and the publisher is never
    /// made to wait for it.
    pub(crate) fn push(&self, item: Outbound) {
        let pushed = self
            .outbox
            .push(&self.socket, &item, &self.metrics, &self.attention);
        self.pushed(pushed);
    }

    /// Sends a run of frames (consecutive messages of one channel) in one
    /// write when the socket takes them; otherwise as [`SessionHandle::push`].
    pub(crate) fn push_run(&self, items: &[Outbound]) {
        let pushed = self
            .outbox
            .push_run(&self.socket, items, &self.metrics, &self.attention);
        self.pushed(pushed);
    }

    /// Acts on how a push went.
    fn pushed(&self, pushed: Pushed) {
        match pushed {
            // Sealed: the session is closing, its last frames are already decided.
            Pushed::Written | Pushed::Queued | Pushed::Sealed => {}
            Pushed::Full => self.overflowed(),
            Pushed::Failed => {
                self.end_with(End::Io);
            }
        }
    }

    /// Ends the session as a slow consumer (its queue or a buffer overflowed).
    pub(crate) fn overflowed(&self) {
        if self.end_with(End::Closed(CloseReason::SlowConsumer)) {
            metrics::counter!("switchboard_slow_consumer_disconnects_total").increment(1);
            tracing::info!(conn = %self.conn, "slow consumer disconnected");
        }
    }

    /// Sends a reply to one of this client's commands.
    pub(crate) fn reply(&self, id: Option<u64>, reply: &Reply<'_>) {
        self.push(Outbound::Reply(encode_reply(self.protocol, id, reply)));
    }

    /// Asks the session's task to end the session; the first reason given
    /// wins. Returns whether this call set it.
    pub(crate) fn end_with(&self, end: End) -> bool {
        let first = self.end.set(end).is_ok();
        if first {
            self.attention.raise();
        }
        first
    }

    /// Waits until the outbound queue holds at most half its capacity (the
    /// socket has drained), so that a producer that can wait, such as a long
    /// recovery, goes at the client's pace instead of overflowing the queue;
    /// returns how many frames may be pushed now, or `None` once the session
    /// is ending. Polled: only such producers pay for it, not every idle
    /// connection.
    pub(crate) async fn room(&self) -> Option<usize> {
        let capacity = self.outbox.capacity();
        let half = capacity / 2;
        loop {
            if self.ended().is_some() {
                return None;
            }
            let queued = self.outbox.queued();
            if queued <= half {
                return Some((capacity - queued).min(half.max(1)));
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }

    /// Makes the session's task look at its state (the node is draining).
    pub(crate) fn wake(&self) {
        self.attention.raise();
    }

    /// Why the session is ending, if it is.
    pub(crate) fn ended(&self) -> Option<&End> {
        self.end.get()
    }

    fn touch(&self, now_ms: u64) {
        self.last_seen_ms.store(now_ms, Ordering::Relaxed);
    }

    fn last_seen_ms(&self) -> u64 {
        self.last_seen_ms.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
impl SessionHandle {
    /// A JSON session over `socket`, outside any node, with an outbound
    /// queue of `queue` frames: for tests of what reaches a client.
    pub(crate) fn for_test(id: u64, socket: TcpStream, queue: usize) -> Arc<SessionHandle> {
        let limits = crate::config::Limits {
            max_connections: 1,
            max_subscriptions: 1,
            client_rate: 1.0,
            client_burst: 1,
            ip_connect_rate: 1.0,
            max_channel_length: 255,
            max_pending_per_ip: 1,
        };
        Arc::new(SessionHandle {
            id,
            conn: format!("c_test{id}").into(),
            user: "".into(),
            identity: Identity::anonymous(),
            protocol: Protocol::Json,
            socket,
            outbox: Outbox::new(queue, crate::ws::OpCode::Text),
            metrics: Arc::new(HotMetrics::new()),
            end: OnceLock::new(),
            attention: Signal::default(),
            last_seen_ms: AtomicU64::new(0),
            channels: Mutex::new(HashSet::new()),
            limiter: Mutex::new(crate::policy::limits::CommandLimiter::new(
                &limits,
                tokio::time::Instant::now(),
            )),
            pusher: None,
        })
    }
}

/// How a connection on the Pusher endpoint starts: its app (an index into
/// the node's apps), or the refusal it is closed with at once (an unknown key
/// or protocol version: the Pusher libraries read close codes, not HTTP
/// statuses).
pub(crate) type PusherStart =
    Result<(usize, crate::policy::pusher::AppSlot), crate::protocol::Disconnect>;

/// Runs a connection from the end of the handshake until it closes, then
/// removes it from every channel.
pub(crate) async fn run(
    node: Arc<NodeInner>,
    stream: TcpStream,
    read_ahead: Bytes,
    protocol: Protocol,
    identity: Identity,
    pusher: Option<PusherStart>,
) {
    let data_opcode = match protocol {
        Protocol::Json | Protocol::Pusher => crate::ws::OpCode::Text,
        Protocol::Proto => crate::ws::OpCode::Binary,
    };
    let (pusher, refused) = match pusher {
        None => (None, None),
        Some(Ok((app, slot))) => (
            Some(Box::new(PusherConn::new(
                app,
                &node.config.pusher[app].limits,
                slot,
            ))),
            None,
        ),
        Some(Err(refusal)) => (None, Some(refusal)),
    };
    let conn: Arc<str> = if protocol == Protocol::Pusher {
        pusher::socket_id().into()
    } else {
        format!("c_{}", ulid::Ulid::new()).into()
    };
    let session = Arc::new(SessionHandle {
        id: node.next_session_id(),
        conn,
        user: identity.user.clone(),
        identity,
        protocol,
        socket: stream,
        outbox: Outbox::new(node.config.outbound_queue, data_opcode),
        metrics: node.metrics.clone(),
        end: OnceLock::new(),
        attention: Signal::default(),
        last_seen_ms: AtomicU64::new(node.uptime_ms()),
        channels: Mutex::new(HashSet::new()),
        limiter: Mutex::new(crate::policy::limits::CommandLimiter::new(
            &node.config.limits,
            tokio::time::Instant::now(),
        )),
        pusher,
    });
    node.session_opened(protocol);
    node.register(&session);
    let welcome = || {
        session.reply(
            None,
            &Reply::Welcome {
                conn: &session.conn,
                node: &node.config.node_id,
                user: &session.user,
                heartbeat: node.config.heartbeat.as_secs_f64().ceil() as u32,
            },
        )
    };
    // A user's connections receive the messages sent to that user. The
    // welcome is queued as that subscription starts (atomically with it), so
    // a message sent to the user once the client has seen its welcome reaches
    // it. Boxed, as is every rare, large future here: the task's own size is
    // paid by every idle connection.
    let user_topic = (!session.user.is_empty()).then(|| crate::hub::user_key(&session.user));
    match (&user_topic, refused) {
        // A refused Pusher connection gets its `pusher:error` and close only.
        (_, Some(refusal)) => {
            session.end_with(End::Closed(CloseReason::Refused(refusal)));
        }
        (None, None) => welcome(),
        (Some(key), None) => {
            if let Err(e) = Box::pin(node.hub.subscribe(key, &session, false, welcome)).await {
                tracing::warn!(conn = %session.conn, error = %e, "cannot receive user messages: closing");
                session.end_with(End::Closed(CloseReason::Internal));
            }
        }
    }

    let end = conn::run(&node, &session, read_ahead).await;

    Box::pin(async {
        let channels: Vec<Arc<str>> = crate::lock(&session.channels).drain().collect();
        for channel in channels {
            commands::leave(&node, &session, &channel).await;
        }
        if let Some(key) = &user_topic {
            node.hub.unsubscribe(key, session.id).await;
        }
    })
    .await;
    node.unregister(&session);
    if end == End::Closed(CloseReason::TooLarge) {
        node.gate.rejections.message_size.increment(1);
    }
    node.session_closed(protocol, &end);
    tracing::debug!(conn = %session.conn, reason = end.label(), "session ended");
}
