//! The session's writer: the only task that writes to the socket.

use std::time::Duration;

use rand::Rng;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

use super::frames::{self, MAX_BATCH, OpCode};
use super::{End, HEARTBEAT_TIMEOUT, Outbound, SHUTDOWN, SessionHandle, TOKEN_EXPIRED};
use crate::node::NodeInner;
use crate::protocol::{Protocol, Reply, encode_reply};

/// A control frame the reader owes the client (a pong, or the close echo).
#[derive(Debug)]
pub(crate) struct Control {
    pub(crate) opcode: OpCode,
    pub(crate) payload: Vec<u8>,
}

/// How long one write may block before the client counts as gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the final `disconnect` and close frame may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Share of the drain timeout over which drain disconnects are spread.
const DRAIN_SPREAD: f64 = 0.8;

/// Writes until the session ends, then says goodbye; returns why it ended.
pub(super) async fn run(
    node: &NodeInner,
    session: &SessionHandle,
    mut socket: OwnedWriteHalf,
    mut outbound: mpsc::Receiver<Outbound>,
    mut control: mpsc::Receiver<Control>,
) -> End {
    let opcode = match session.protocol {
        Protocol::Json => OpCode::Text,
        Protocol::Proto => OpCode::Binary,
    };
    let heartbeat = node.config.heartbeat;
    let mut ping = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch: Vec<Outbound> = Vec::with_capacity(MAX_BATCH);
    let mut drain_at: Option<Instant> = None;
    // The session ends when its token does (created once: re-arming a timer
    // on every loop turn would cost on the delivery path).
    let expires = session
        .identity
        .expires_at
        .and_then(crate::auth::expiry_deadline);
    let token_expiry = tokio::time::sleep_until(expires.unwrap_or_else(Instant::now));
    tokio::pin!(token_expiry);
    // Created once and polled by reference: a fresh `notified()`/`cancelled()`
    // per turn would register in a locked waiter list on every delivery (the
    // shutdown token is shared by every session of the node).
    let ending = session.ending.raised();
    tokio::pin!(ending);
    let shutdown = node.shutdown.cancelled();
    tokio::pin!(shutdown);
    let drain = tokio::time::sleep_until(Instant::now());
    tokio::pin!(drain);

    let end = loop {
        if let Some(end) = session.ended() {
            break end.clone();
        }
        tokio::select! {
            biased;
            _ = &mut ending => continue,
            // Before the data branch, so a busy stream cannot postpone it.
            _ = &mut token_expiry, if expires.is_some() => {
                session.end_with(End::Disconnect(TOKEN_EXPIRED));
            }
            Some(c) = control.recv() => {
                let close = c.opcode == OpCode::Close;
                if write_timed(frames::write_control(&mut socket, c.opcode, &c.payload)).await.is_err() {
                    break End::Io;
                }
                if close {
                    break End::ClientClosed;
                }
            }
            n = outbound.recv_many(&mut batch, MAX_BATCH) => {
                if n == 0 {
                    break End::Io;
                }
                let written = tokio::select! {
                    biased;
                    r = timeout(WRITE_TIMEOUT, write_batch(&mut socket, opcode, &batch)) => r,
                    // Ended while a write is blocked: the frame may be cut, so
                    // the connection is dropped without a goodbye.
                    _ = &mut ending => {
                        let end = session.ended().cloned().unwrap_or(End::Io);
                        let _ = timeout(CLOSE_TIMEOUT, socket.shutdown()).await;
                        return end;
                    }
                };
                match written {
                    Ok(Ok(bytes)) => node.metrics.record_written(&batch, bytes),
                    Ok(Err(_)) => break End::Io,
                    Err(_) => {
                        // The client stopped reading: treat as a slow consumer.
                        if session.end_with(End::Disconnect(super::SLOW_CONSUMER)) {
                            metrics::counter!("switchboard_slow_consumer_disconnects_total").increment(1);
                        }
                        let _ = timeout(CLOSE_TIMEOUT, socket.shutdown()).await;
                        return End::Disconnect(super::SLOW_CONSUMER);
                    }
                }
                batch.clear();
            }
            _ = ping.tick() => {
                let silent_ms = node.uptime_ms().saturating_sub(session.last_seen_ms());
                if silent_ms > 2 * heartbeat.as_millis() as u64 {
                    session.end_with(End::Disconnect(HEARTBEAT_TIMEOUT));
                    continue;
                }
                if write_timed(frames::write_control(&mut socket, OpCode::Ping, b"")).await.is_err() {
                    break End::Io;
                }
            }
            _ = &mut shutdown, if drain_at.is_none() => {
                let window = node.config.drain_timeout.mul_f64(DRAIN_SPREAD);
                let delay = rand::rng().random_range(Duration::ZERO..=window);
                let at = Instant::now() + delay;
                drain_at = Some(at);
                drain.as_mut().reset(at);
            }
            _ = &mut drain, if drain_at.is_some() => {
                session.end_with(End::Disconnect(SHUTDOWN));
            }
        }
    };

    if let End::Disconnect(d) = &end {
        let goodbye = encode_reply(session.protocol, None, &Reply::Disconnect(d));
        let close = frames::close_payload(d.code, &d.reason);
        let _ = timeout(CLOSE_TIMEOUT, async {
            // What was queued before the decision to close still goes out (the
            // last replies, the messages of a draining node), except to a slow
            // consumer, whose queue is the problem.
            if d.code != super::SLOW_CONSUMER.code {
                loop {
                    batch.clear();
                    while batch.len() < MAX_BATCH {
                        match outbound.try_recv() {
                            Ok(item) => batch.push(item),
                            Err(_) => break,
                        }
                    }
                    if batch.is_empty() {
                        break;
                    }
                    let bytes = write_batch(&mut socket, opcode, &batch).await?;
                    node.metrics.record_written(&batch, bytes);
                }
            }
            frames::write_frames(&mut socket, opcode, &[&goodbye]).await?;
            frames::write_control(&mut socket, OpCode::Close, &close).await
        })
        .await;
    }
    let _ = timeout(CLOSE_TIMEOUT, socket.shutdown()).await;
    end
}

/// Writes a batch of queued frames in one vectored write; returns the bytes written.
async fn write_batch(
    socket: &mut OwnedWriteHalf,
    opcode: OpCode,
    batch: &[Outbound],
) -> std::io::Result<usize> {
    let mut payloads: [&[u8]; MAX_BATCH] = [&[]; MAX_BATCH];
    for (slot, item) in payloads.iter_mut().zip(batch) {
        *slot = match item {
            Outbound::Message { frame, .. } | Outbound::Reply(frame) => frame,
        };
    }
    frames::write_frames(socket, opcode, &payloads[..batch.len()]).await
}

async fn write_timed<F: Future<Output = std::io::Result<()>>>(write: F) -> std::io::Result<()> {
    timeout(WRITE_TIMEOUT, write)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}
