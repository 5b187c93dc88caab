//! The receiving side of the Redis backplane: one pub/sub connection,
//! subscribed by interest, that comes back by itself after Redis goes away.
//!
//! The node speaks this connection itself (RESP2, parsed in `resp.rs`) rather
//! than through redis-rs's `PubSub`, whose reader queues every message without
//! bound. Here the reader hands each envelope to the fan-out lane of its
//! channel and, when that lane is full, waits before reading more: the backlog
//! stays in the socket and in Redis's output buffer for the connection. A
//! burst costs latency, never a dropped envelope; should the backlog pass
//! Redis's `client-output-buffer-limit pubsub`, Redis closes the connection and
//! the node treats it as any other outage.
//!
//! The link's states, and what each means for the rest of the node:
//!
//! | state | `is_up` | publishes |
//! |---|---|---|
//! | connecting, or resubscribing after a reconnect | false | refused (`unavailable`) |
//! | every subscription confirmed by Redis | true | accepted |
//! | broken (EOF, error, PING unanswered) | false | refused |
//!
//! Every new connection first puts a [`Resync`] marker in every fan-out lane,
//! before any of its messages, and opens it once every subscription is back:
//! the fan-out then repairs what its subscribers may have missed meanwhile.

use std::collections::{HashSet, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use prost::Message;
use rand::Rng;
use redis::ConnectionAddr;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Mutex, oneshot};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use super::resp::{self, Reply};
use super::{COMMAND_TIMEOUT, Keys};
use crate::envelope::now_us;
use crate::{BackplaneError, Envelope, Inbox, ResyncGate, lock};

/// Channels per SUBSCRIBE when resubscribing after a reconnect.
const RESUBSCRIBE_BATCH: usize = 500;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Read buffer of the pub/sub connection: grows to the largest message.
const READ_CHUNK: usize = 64 * 1024;
/// A wait for fan-out room longer than this is logged (once per wait).
const SLOW_LANE: Duration = Duration::from_millis(500);

type Reader = Pin<Box<dyn AsyncRead + Send>>;
type Writer = Pin<Box<dyn AsyncWrite + Send>>;

pub(super) struct Subscriber {
    client: redis::Client,
    keys: Keys,
    node_id: String,
    inbox: Inbox,
    up: AtomicBool,
    generation: AtomicU64,
    /// How long the connection may stay silent before it is checked with a PING.
    ping_interval: Duration,
    /// PINGs answered, over all connections.
    pings: AtomicU64,
    /// The live link (None while disconnected or resubscribing) and every
    /// client channel this node wants, as Redis names. One lock orders
    /// subscribes, unsubscribes and resubscription, so no interest is lost to
    /// a race with a reconnect.
    state: Mutex<State>,
}

struct State {
    link: Option<Arc<Link>>,
    channels: HashSet<String>,
}

/// The writing half of one connection and the replies it waits for.
///
/// Redis answers a connection's commands in order, so the commands in flight
/// are a queue: each confirmation or error answers the oldest.
struct Link {
    writer: Mutex<Writer>,
    pending: std::sync::Mutex<VecDeque<Pending>>,
    /// Cancelled when the connection is finished with (read or write failed).
    broken: CancellationToken,
}

struct Pending {
    /// Confirmations still to come (one per channel of a SUBSCRIBE).
    remaining: usize,
    /// Told the outcome; `None` when nobody waits (PING, a cleanup UNSUBSCRIBE).
    done: Option<oneshot::Sender<Result<(), String>>>,
    /// A PING: its answer counts as a pong.
    ping: bool,
}

impl Link {
    fn new(writer: Writer) -> Self {
        Link {
            writer: Mutex::new(writer),
            pending: std::sync::Mutex::new(VecDeque::new()),
            broken: CancellationToken::new(),
        }
    }

    /// Writes one command and registers the replies it expects. The write is
    /// bounded by the command timeout; a failed or late write breaks the link.
    async fn send(
        &self,
        command: &redis::Cmd,
        expect: usize,
        ping: bool,
    ) -> Result<Option<oneshot::Receiver<Result<(), String>>>, BackplaneError> {
        let bytes = command.get_packed_command();
        let mut writer = self.writer.lock().await;
        if self.broken.is_cancelled() {
            return Err(unavailable("redis pub/sub connection is down"));
        }
        let (tx, rx) = if ping {
            (None, None)
        } else {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        };
        lock(&self.pending).push_back(Pending {
            remaining: expect.max(1),
            done: tx,
            ping,
        });
        match timeout(COMMAND_TIMEOUT, writer.write_all(&bytes)).await {
            Ok(Ok(())) => Ok(rx),
            Ok(Err(e)) => {
                self.broken.cancel();
                Err(unavailable(format!("redis pub/sub write failed: {e}")))
            }
            Err(_) => {
                self.broken.cancel();
                Err(unavailable("redis pub/sub write timed out"))
            }
        }
    }

    /// Sends a command and waits for all its confirmations.
    async fn call(&self, command: &redis::Cmd, expect: usize) -> Result<(), BackplaneError> {
        let Some(rx) = self.send(command, expect, false).await? else {
            return Ok(());
        };
        match timeout(COMMAND_TIMEOUT, rx).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(unavailable(format!("redis refused: {e}"))),
            Ok(Err(_)) => Err(unavailable("redis pub/sub connection lost")),
            Err(_) => Err(unavailable("redis pub/sub command timed out")),
        }
    }

    /// One confirmation arrived; returns whether it answered a PING.
    fn confirmed(&self) -> Result<bool, &'static str> {
        let mut pending = lock(&self.pending);
        let Some(front) = pending.front_mut() else {
            return Err("confirmation with no command in flight");
        };
        front.remaining -= 1;
        if front.remaining > 0 {
            return Ok(false);
        }
        let done = pending.pop_front().expect("front exists");
        if let Some(tx) = done.done {
            let _ = tx.send(Ok(()));
        }
        Ok(done.ping)
    }

    /// An error reply answers the oldest command in flight, all of it.
    fn failed(&self, error: String) -> Result<(), &'static str> {
        let Some(front) = lock(&self.pending).pop_front() else {
            return Err("error reply with no command in flight");
        };
        if let Some(tx) = front.done {
            let _ = tx.send(Err(error));
        }
        Ok(())
    }

    /// Ends the link: waiters are told it was lost.
    fn finish(&self) {
        self.broken.cancel();
        lock(&self.pending).clear();
    }
}

impl Subscriber {
    pub(super) fn new(
        client: redis::Client,
        keys: Keys,
        node_id: String,
        inbox: Inbox,
        ping_interval: Duration,
    ) -> Self {
        metrics::gauge!("switchboard_backplane_up").set(0.0);
        Subscriber {
            client,
            keys,
            node_id,
            inbox,
            up: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            ping_interval,
            pings: AtomicU64::new(0),
            state: Mutex::new(State {
                link: None,
                channels: HashSet::new(),
            }),
        }
    }

    pub(super) fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    pub(super) fn pings(&self) -> u64 {
        self.pings.load(Ordering::Relaxed)
    }

    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// SUBSCRIBEs to a Redis channel and records the interest; returns once
    /// Redis confirmed. Fails as unavailable (recording nothing) while
    /// disconnected or resubscribing.
    pub(super) async fn subscribe(&self, name: String) -> Result<(), BackplaneError> {
        let mut state = self.state.lock().await;
        let Some(link) = state.link.clone() else {
            return Err(unavailable("redis pub/sub connection is down"));
        };
        match link.call(redis::cmd("SUBSCRIBE").arg(&name), 1).await {
            Ok(()) => {
                state.channels.insert(name);
                Ok(())
            }
            Err(e) => {
                metrics::counter!("switchboard_backplane_errors_total", "op" => "subscribe")
                    .increment(1);
                // Redis may still carry it out: take it back, without waiting.
                let _ = link
                    .send(redis::cmd("UNSUBSCRIBE").arg(&name), 1, false)
                    .await;
                Err(e)
            }
        }
    }

    /// Forgets the interest and UNSUBSCRIBEs. The interest is gone even if the
    /// command fails: the channel is then not resubscribed after a reconnect.
    pub(super) async fn unsubscribe(&self, name: String) -> Result<(), BackplaneError> {
        let mut state = self.state.lock().await;
        state.channels.remove(&name);
        let Some(link) = state.link.clone() else {
            return Ok(());
        };
        let result = link.call(redis::cmd("UNSUBSCRIBE").arg(&name), 1).await;
        if result.is_err() {
            metrics::counter!("switchboard_backplane_errors_total", "op" => "unsubscribe")
                .increment(1);
        }
        result
    }

    /// Runs until cancelled: connect, resubscribe, read; on any break, back off and again.
    pub(super) async fn run(self: Arc<Self>, token: CancellationToken) {
        let mut attempt: u32 = 0;
        loop {
            match self.open().await {
                Ok((reader, writer)) => {
                    attempt = 0;
                    let reason = self.serve(reader, writer, &token).await;
                    self.set_up(false);
                    if token.is_cancelled() {
                        return;
                    }
                    metrics::counter!("switchboard_backplane_errors_total", "op" => "connection")
                        .increment(1);
                    tracing::error!(
                        reason,
                        "redis pub/sub connection lost; publishes are refused until it is back"
                    );
                }
                Err(e) => {
                    metrics::counter!("switchboard_backplane_errors_total", "op" => "connect")
                        .increment(1);
                    tracing::warn!(error = %e, attempt, "redis pub/sub connect failed");
                }
            }
            let delay = backoff(attempt);
            attempt = attempt.saturating_add(1);
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Release);
        metrics::gauge!("switchboard_backplane_up").set(if up { 1.0 } else { 0.0 });
    }

    /// Opens the TCP (or Unix) connection.
    async fn open(&self) -> Result<(Reader, Writer), BackplaneError> {
        let open = async {
            match self.client.get_connection_info().addr() {
                ConnectionAddr::Tcp(host, port) => {
                    let tcp = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                    tcp.set_nodelay(true)?;
                    let (r, w) = tcp.into_split();
                    Ok::<(Reader, Writer), std::io::Error>((Box::pin(r), Box::pin(w)))
                }
                ConnectionAddr::Unix(path) => {
                    let unix = tokio::net::UnixStream::connect(path).await?;
                    let (r, w) = unix.into_split();
                    Ok::<(Reader, Writer), std::io::Error>((Box::pin(r), Box::pin(w)))
                }
                other => Err(std::io::Error::other(format!(
                    "the pub/sub connection does not support {other:?}"
                ))),
            }
        };
        match timeout(COMMAND_TIMEOUT, open).await {
            Ok(Ok(halves)) => Ok(halves),
            Ok(Err(e)) => Err(unavailable(format!("redis connect failed: {e}"))),
            Err(_) => Err(unavailable("redis connect timed out")),
        }
    }

    /// One connection's life: the resync marker, then reading while the
    /// subscriptions are restored; returns why it ended.
    async fn serve(&self, reader: Reader, writer: Writer, token: &CancellationToken) -> String {
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        let link = Arc::new(Link::new(writer));
        // The marker goes first: every message of this connection follows it.
        let (gate, marker) = ResyncGate::new(generation);
        tokio::select! {
            _ = token.cancelled() => return "shutdown".into(),
            r = self.inbox.resync(&marker) => if r.is_err() { return "inbox closed".into() },
        }
        let read = self.read(&link, reader, token);
        tokio::pin!(read);
        let restored = tokio::select! {
            reason = &mut read => {
                link.finish();
                gate.open(false);
                return reason;
            }
            restored = self.restore(&link) => restored,
        };
        match restored {
            Ok(channels) => {
                self.set_up(true);
                gate.open(true);
                if generation > 1 {
                    metrics::counter!("switchboard_backplane_reconnects_total").increment(1);
                    tracing::warn!(
                        generation,
                        channels,
                        "redis pub/sub reconnected and resubscribed; repairing what subscribers missed"
                    );
                } else {
                    tracing::info!("redis pub/sub connected");
                }
            }
            Err(e) => {
                gate.open(false);
                link.finish();
                return format!("resubscribing failed: {e}");
            }
        }
        let reason = read.await;
        self.set_up(false);
        self.state.lock().await.link = None;
        link.finish();
        reason
    }

    /// Authenticates, subscribes the node's own channels and every client
    /// channel of interest, then publishes the link. Holds the state lock
    /// throughout, so no subscribe or unsubscribe slips in between.
    async fn restore(&self, link: &Arc<Link>) -> Result<usize, BackplaneError> {
        let settings = self.client.get_connection_info().redis_settings();
        if let Some(password) = settings.password() {
            let mut auth = redis::cmd("AUTH");
            if let Some(user) = settings.username() {
                auth.arg(user);
            }
            auth.arg(password);
            link.call(&auth, 1).await?;
        }
        let mut state = self.state.lock().await;
        let own = [self.keys.node(&self.node_id), self.keys.all().to_owned()];
        link.call(redis::cmd("SUBSCRIBE").arg(&own[..]), own.len())
            .await?;
        let channels: Vec<&String> = state.channels.iter().collect();
        for batch in channels.chunks(RESUBSCRIBE_BATCH) {
            link.call(redis::cmd("SUBSCRIBE").arg(batch), batch.len())
                .await?;
        }
        let count = state.channels.len();
        if count > 0 {
            metrics::counter!("switchboard_backplane_resubscribed_total").increment(count as u64);
        }
        state.link = Some(link.clone());
        Ok(count)
    }

    /// Reads replies until the connection breaks or the node stops; says why it ended.
    ///
    /// A silent connection is checked with a PING after `ping_interval`; one
    /// that then stays silent for the command timeout is dead. Time spent
    /// waiting for fan-out room does not count: then the node is the slow side.
    async fn read(&self, link: &Link, mut reader: Reader, token: &CancellationToken) -> String {
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let mut ping_sent: Option<Instant> = None;
        loop {
            loop {
                let reply = match resp::next(&mut buf) {
                    Ok(Some(reply)) => reply,
                    Ok(None) => break,
                    Err(e) => {
                        metrics::counter!("switchboard_backplane_errors_total", "op" => "protocol")
                            .increment(1);
                        return format!("unreadable reply: {}", e.0);
                    }
                };
                match reply {
                    Reply::Message { channel, payload } => {
                        if let Some(reason) = self.receive(&channel, payload, token).await {
                            return reason.into();
                        }
                    }
                    Reply::Confirmation(c) => match link.confirmed() {
                        Ok(true) => {
                            ping_sent = None;
                            self.pings.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(false) => {}
                        Err(e) => return format!("{e} ({c:?})"),
                    },
                    Reply::Error(e) => {
                        tracing::warn!(error = %e, "redis pub/sub command refused");
                        if let Err(why) = link.failed(e) {
                            return why.into();
                        }
                    }
                }
            }
            if buf.capacity() - buf.len() < READ_CHUNK / 4 {
                buf.reserve(READ_CHUNK);
            }
            let wait = if ping_sent.is_some() {
                COMMAND_TIMEOUT
            } else {
                self.ping_interval
            };
            tokio::select! {
                _ = token.cancelled() => return "shutdown".into(),
                _ = link.broken.cancelled() => return "write failed".into(),
                read = timeout(wait, reader.read_buf(&mut buf)) => match read {
                    Ok(Ok(0)) => return "connection closed by redis".into(),
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return format!("read failed: {e}"),
                    Err(_) if ping_sent.is_some() => return "ping unanswered".into(),
                    Err(_) => {
                        // In subscribe mode Redis answers PING with ["pong", ""].
                        if let Err(e) = link.send(&redis::cmd("PING"), 1, true).await {
                            return format!("ping failed: {e}");
                        }
                        ping_sent = Some(Instant::now());
                    }
                },
            }
        }
    }

    /// Decodes one message and hands it to its fan-out lane, waiting for room;
    /// `Some(reason)` when reading must stop.
    async fn receive(
        &self,
        channel: &[u8],
        payload: bytes::Bytes,
        token: &CancellationToken,
    ) -> Option<&'static str> {
        metrics::counter!("switchboard_backplane_received_total").increment(1);
        let envelope = match Envelope::decode(payload) {
            Ok(e) => e,
            Err(e) => {
                metrics::counter!("switchboard_backplane_errors_total", "op" => "decode")
                    .increment(1);
                tracing::error!(channel = %String::from_utf8_lossy(channel), error = %e, "undecodable envelope dropped");
                return None;
            }
        };
        let lag = now_us().saturating_sub(envelope.published_us);
        metrics::histogram!("switchboard_backplane_lag_seconds").record(lag as f64 / 1e6);
        let started = Instant::now();
        let delivered = tokio::select! {
            _ = token.cancelled() => return Some("shutdown"),
            r = self.inbox.deliver(envelope) => r,
        };
        if delivered.is_err() {
            return Some("inbox closed");
        }
        // A full lane held the reader back: the backlog waited in Redis.
        let waited = started.elapsed();
        if waited >= Duration::from_millis(1) {
            metrics::histogram!("switchboard_backplane_lane_wait_seconds")
                .record(waited.as_secs_f64());
            if waited >= SLOW_LANE {
                tracing::warn!(
                    waited_ms = waited.as_millis() as u64,
                    "fan-out lane full: stopped reading redis until it had room"
                );
            }
        }
        None
    }
}

fn unavailable(message: impl Into<String>) -> BackplaneError {
    BackplaneError::Unavailable(message.into())
}

/// Exponential backoff with jitter: half the step fixed, half random.
fn backoff(attempt: u32) -> Duration {
    let step = BACKOFF_MIN
        .saturating_mul(1u32 << attempt.min(16))
        .min(BACKOFF_MAX);
    let half = step / 2;
    half + rand::rng().random_range(Duration::ZERO..=half)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        for attempt in 0..40 {
            let d = backoff(attempt);
            assert!(d <= BACKOFF_MAX, "{d:?}");
            assert!(d >= BACKOFF_MIN / 2, "{d:?}");
        }
        assert!(backoff(0) <= BACKOFF_MIN);
        assert!(backoff(20) >= BACKOFF_MAX / 2);
    }
}
