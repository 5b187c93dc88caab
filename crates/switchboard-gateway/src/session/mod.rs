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

mod commands;
pub(crate) mod frames;
mod guard;
mod reader;
mod writer;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::auth::Identity;
use crate::node::NodeInner;
use crate::protocol::{Disconnect, Protocol, Reply, encode_reply};

/// What a session's writer sends, in order.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// A channel message, shared by every recipient; `published_us` feeds the
    /// delivery-latency histogram.
    Message { frame: Bytes, published_us: u64 },
    /// A reply to this client's command.
    Reply(Bytes),
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
                1011 => "internal",
                _ if d.reason == HEARTBEAT_TIMEOUT.reason => "heartbeat_timeout",
                _ => "shutdown",
            },
        }
    }
}

pub(crate) const SLOW_CONSUMER: Disconnect = Disconnect {
    code: 4008,
    reason: "slow consumer: outbound queue overflowed",
    reconnect: true,
};
pub(crate) const TOO_LARGE: Disconnect = Disconnect {
    code: 1009,
    reason: "message too large",
    reconnect: false,
};
pub(crate) const PROTOCOL_ERROR: Disconnect = Disconnect {
    code: 1002,
    reason: "websocket protocol error",
    reconnect: false,
};
pub(crate) const SHUTDOWN: Disconnect = Disconnect {
    code: 1001,
    reason: "node shutting down",
    reconnect: true,
};
pub(crate) const HEARTBEAT_TIMEOUT: Disconnect = Disconnect {
    code: 1001,
    reason: "heartbeat timeout",
    reconnect: true,
};

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
    ending: Notify,
    /// Milliseconds since the node started, at the last frame from the client.
    last_seen_ms: AtomicU64,
    /// Channels this session is subscribed to (touched by commands only).
    pub(crate) channels: Mutex<HashSet<Arc<str>>>,
    /// Cancelled by the writer when it stops: the reader stops reading (a
    /// cancelled frame read is harmless once the socket is being dropped) but
    /// always finishes the command it is executing.
    stop_reading: CancellationToken,
}

impl SessionHandle {
    /// Queues a channel message without waiting. On overflow the session is
    /// ended as a slow consumer: its queue is not allowed to grow, and the
    /// publisher is never made to wait for it.
    pub(crate) fn push(&self, item: Outbound) {
        match self.outbound.try_send(item) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                if self.end_with(End::Disconnect(SLOW_CONSUMER)) {
                    metrics::counter!("switchboard_slow_consumer_disconnects_total").increment(1);
                    tracing::info!(conn = %self.conn, "slow consumer disconnected");
                }
            }
            // The writer is gone; the session is being torn down.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
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
            self.ending.notify_one();
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
        ending: Notify::new(),
        last_seen_ms: AtomicU64::new(node.uptime_ms()),
        channels: Mutex::new(HashSet::new()),
        stop_reading: CancellationToken::new(),
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
        node.hub.unsubscribe(&channel, session.id).await;
    }
    node.session_closed(&end);
    tracing::debug!(conn = %session.conn, reason = end.label(), "session ended");
}

/// Control frames waiting for the writer (pongs, the close echo).
const CONTROL_QUEUE: usize = 4;
