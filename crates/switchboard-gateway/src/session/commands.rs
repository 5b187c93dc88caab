//! Executing one client command: decode it, let `policy` refuse it, have
//! `ops` perform it, answer (docs/PROTOCOL.md, "Commands"). Subscribing lives
//! here in full, since it ties the connection to the hub: the reply, the
//! recovery from history, and the seam with the live stream.

use std::sync::Arc;

use bytes::Bytes;

use super::{End, Outbound, SessionHandle};
use crate::node::NodeInner;
use crate::ops;
use crate::policy::{self, Refusal};
use crate::protocol::{
    CommandKind, DecodeError, ErrorCode, MissedReason, MissedTopic, Protocol, Push, Reply,
    StreamPosition, json, proto,
};

/// Decodes and executes one client message, answering on the session's queue.
pub(super) async fn handle(
    node: &NodeInner,
    session: &Arc<SessionHandle>,
    text: bool,
    data: Bytes,
) {
    node.metrics.message_received(data.len());
    let decoded = match (session.protocol, text) {
        (Protocol::Pusher, _) => return super::pusher::handle(node, session, text, data).await,
        (Protocol::Json, true) => json::decode(&data),
        (Protocol::Proto, false) => proto::decode(data),
        (Protocol::Json, false) => Err(DecodeError::new(
            None,
            "binary frames are not accepted on switchboard.v1.json: send JSON in text frames",
        )),
        (Protocol::Proto, true) => Err(DecodeError::new(
            None,
            "text frames are not accepted on switchboard.v1.proto: send ClientFrame in binary frames",
        )),
    };
    // Every message counts against the rate limit, well-formed or not, so a
    // flood of garbage is limited like any other.
    let admitted = policy::access::admit_command(node, session);
    let command = match (decoded, admitted) {
        (Ok(c), Ok(())) => c,
        (Ok(c), Err(refusal)) => return refuse(session, c.id, refusal),
        (Err(e), Err(refusal)) => return refuse(session, e.id, refusal),
        (Err(e), Ok(())) => return error(session, e.id, ErrorCode::BadRequest, &e.message),
    };
    let id = command.id;
    if let Some(name) = command.kind.channel()
        && let Err(why) = policy::channel::validate(name)
    {
        return error(session, id, ErrorCode::BadRequest, &why);
    }
    match command.kind {
        CommandKind::Subscribe { channel, recover } => {
            if let Err(refusal) = policy::access::may_subscribe(node, session, &channel) {
                return refuse(session, id, refusal);
            }
            let channel: Arc<str> = channel.into();
            let announce = |history: Option<(&str, u64, bool)>| {
                session.reply(
                    id,
                    &Reply::Subscribed {
                        channel: &channel,
                        history,
                    },
                )
            };
            let joined = subscribe(node, session, &channel, recover, &announce).await;
            match joined {
                Ok(()) => {
                    if node.config.namespaces.of(&channel).join_leave {
                        ops::publish::join_leave(
                            node,
                            &channel,
                            &session.conn,
                            &session.user,
                            true,
                        )
                        .await;
                    }
                }
                Err(SubscribeError::Already) => error(
                    session,
                    id,
                    ErrorCode::BadRequest,
                    &format!("already subscribed to {channel}"),
                ),
                Err(SubscribeError::Backplane(e)) => error(
                    session,
                    id,
                    ErrorCode::Unavailable,
                    &format!("could not subscribe: {e}"),
                ),
            }
        }
        CommandKind::Unsubscribe { channel } => {
            let was = crate::lock(&session.channels).remove(channel.as_str());
            if was {
                leave(node, session, &channel).await;
            }
            session.reply(id, &Reply::Unsubscribed { channel: &channel });
        }
        CommandKind::Publish { channel, data } => {
            if let Err(refusal) = policy::access::may_publish(node, &session.identity, &channel) {
                return refuse(session, id, refusal);
            }
            match ops::publish::to_channel(node, &channel, data, &session.user).await {
                Ok(position) => session.reply(
                    id,
                    &Reply::Published {
                        channel: &channel,
                        offset: position.map(|p| p.offset),
                    },
                ),
                Err(e) => error(
                    session,
                    id,
                    ErrorCode::Unavailable,
                    &format!("not published: {e}"),
                ),
            }
        }
        CommandKind::History {
            channel,
            limit,
            since,
        } => {
            let allowed = policy::access::history_kept(node, &channel).and_then(|history| {
                policy::access::may_read(node, &session.identity, &channel).map(|()| history)
            });
            let history = match allowed {
                Ok(history) => history,
                Err(refusal) => return refuse(session, id, refusal),
            };
            match ops::history::read(node, &channel, history, limit, since.as_ref()).await {
                Ok(page) => session.reply(
                    id,
                    &Reply::History {
                        channel: &channel,
                        epoch: &page.epoch,
                        offset: page.offset,
                        messages: &page.messages,
                    },
                ),
                Err(e) => error(
                    session,
                    id,
                    ErrorCode::Unavailable,
                    &format!("history unavailable: {e}"),
                ),
            }
        }
        CommandKind::Presence { channel } => {
            if let Err(refusal) = policy::access::presence_enabled(node, &channel)
                .and_then(|()| policy::access::may_read(node, &session.identity, &channel))
            {
                return refuse(session, id, refusal);
            }
            match ops::presence::members(node, &channel).await {
                Ok(members) => session.reply(
                    id,
                    &Reply::Presence {
                        channel: &channel,
                        members: &members,
                    },
                ),
                Err(e) => error(
                    session,
                    id,
                    ErrorCode::Unavailable,
                    &format!("presence unavailable: {e}"),
                ),
            }
        }
        CommandKind::Ping => session.reply(id, &Reply::Pong),
    }
}

/// Queues a protocol's success reply to a subscribe, given the history
/// position (epoch, newest offset, recovered) on channels with history.
pub(super) type Announce<'a> = dyn Fn(Option<(&str, u64, bool)>) + Sync + 'a;

/// Why a subscription was not made.
pub(super) enum SubscribeError {
    /// The session is subscribed to the channel already.
    Already,
    /// The backplane did not take the subscription, or the history could not be read.
    Backplane(switchboard_backplane::BackplaneError),
}

/// Subscribes a session to a channel: presence (when the namespace keeps it),
/// the hub, and on channels with history the catch-up from `recover` (see
/// [`catch_up`]). `announce` queues the protocol's success reply, given the
/// history position (epoch, newest offset, recovered) on channels with
/// history; it runs atomically with the session starting to receive, so the
/// reply precedes every message. Join events are the caller's (they differ by
/// protocol).
pub(super) async fn subscribe(
    node: &NodeInner,
    session: &Arc<SessionHandle>,
    channel: &Arc<str>,
    recover: Option<StreamPosition>,
    announce: &Announce<'_>,
) -> Result<(), SubscribeError> {
    let channel = channel.clone();
    if !crate::lock(&session.channels).insert(channel.clone()) {
        return Err(SubscribeError::Already);
    }
    let namespace = node.config.namespaces.of(&channel);
    let history = ops::history::policy(node, &channel);
    // A Pusher connection's presence is its own (`session::pusher`), with the
    // member's user info; the namespace's connection presence is the node's
    // own protocol's.
    let native_presence = namespace.presence && session.protocol != Protocol::Pusher;
    // Presence is written before the reply: a member who has been told
    // `subscribed` is in every presence list asked for after that.
    if native_presence {
        ops::presence::update(node, &channel, &session.conn, &session.user, true).await;
    }
    let subscribed = node
        .hub
        .subscribe(&channel, session, history.is_some(), || {
            if history.is_none() {
                announce(None);
            }
        })
        .await;
    let subscription = match subscribed {
        Ok(s) => s,
        Err(e) => {
            crate::lock(&session.channels).remove(&channel);
            if native_presence {
                ops::presence::update(node, &channel, &session.conn, &session.user, false).await;
            }
            return Err(SubscribeError::Backplane(e));
        }
    };
    if history.is_some()
        && let Err(e) = catch_up(node, session, announce, &channel, &subscription, recover).await
    {
        crate::lock(&session.channels).remove(&channel);
        if native_presence {
            ops::presence::update(node, &channel, &session.conn, &session.user, false).await;
        }
        node.hub.unsubscribe(&channel, session.id).await;
        return Err(SubscribeError::Backplane(e));
    }
    Ok(())
}

/// The history side of subscribing to a channel with history: the reply, then
/// (when recovering) the missed messages, read from history page by page at
/// the pace the client's socket drains, then the live stream, with nothing
/// missed or repeated at the seam.
///
/// Live messages are buffered meanwhile ([`crate::hub::Subscription`]); should
/// the buffer overflow during a long recovery, its channel messages are let go
/// and read from history instead, so the session never holds more than its
/// queue. An error means the history could not be read at first; once the
/// reply is out, a failure to read further ends the session (4008-style: it
/// reconnects and recovers).
async fn catch_up(
    node: &NodeInner,
    session: &Arc<SessionHandle>,
    announce: &Announce<'_>,
    channel: &str,
    subscription: &crate::hub::Subscription,
    recover: Option<StreamPosition>,
) -> Result<(), switchboard_backplane::BackplaneError> {
    let Some(room) = session.room().await else {
        return Ok(());
    };
    let ops::history::Start { page, recovered } =
        ops::history::start(node, channel, recover.as_ref(), room).await?;
    node.hub.note_start(channel, &page.epoch, page.offset);
    announce(Some((&page.epoch, page.offset, recovered)));
    // Everything up to `after` has been given to the session.
    let after = match (&recover, recovered) {
        (Some(r), true) => {
            push_history(session, channel, &page.messages);
            page.messages.last().map_or(r.offset, |m| m.offset)
        }
        _ => page.offset,
    };
    let mut reader = ops::history::Reader::new(node, channel, page.epoch, after, page.offset);
    loop {
        if reader.caught_up() {
            let (epoch, after) = reader.position();
            if subscription.go_live(epoch, after) {
                return Ok(());
            }
        }
        let Some(room) = session.room().await else {
            return Ok(());
        };
        match reader.next(room).await {
            Ok(step) => {
                // The history moved on under the recovery (trimmed, or lost
                // and begun again): say so, and go on from what it holds.
                if step.gap {
                    missed(session, channel, MissedReason::History);
                }
                push_history(session, channel, &step.messages);
            }
            Err(e) => {
                tracing::warn!(channel, conn = %session.conn, error = %e, "history unreadable mid-recovery: ending the session");
                session.overflowed();
                return Ok(());
            }
        }
    }
}

/// Queues messages read from history, in order.
fn push_history(
    session: &SessionHandle,
    channel: &str,
    messages: &[switchboard_backplane::Envelope],
) {
    for m in messages {
        let Some(frame) =
            crate::protocol::encode_push_for(session.protocol, &Push::of_history(m, channel))
        else {
            continue;
        };
        session.push(Outbound::Message {
            frame,
            published_us: m.published_us,
            offset: m.offset,
        });
    }
}

/// Tells one session that messages of a channel may have been missed.
fn missed(session: &SessionHandle, channel: &str, reason: MissedReason) {
    if let Some(push) = crate::hub::missed_push(
        session.protocol,
        MissedTopic::Channel(channel),
        reason,
        switchboard_backplane::envelope::now_us(),
    ) {
        session.push(push);
    }
    metrics::counter!("switchboard_missed_total", "reason" => reason.as_str()).increment(1);
}

/// Takes a session out of a channel: hub, presence, and a leave event.
pub(crate) async fn leave(node: &NodeInner, session: &SessionHandle, channel: &str) {
    if session.protocol == Protocol::Pusher {
        return super::pusher::leave(node, session, channel).await;
    }
    node.hub.unsubscribe(channel, session.id).await;
    let namespace = node.config.namespaces.of(channel);
    if namespace.presence {
        ops::presence::update(node, channel, &session.conn, &session.user, false).await;
    }
    if namespace.join_leave {
        ops::publish::join_leave(node, channel, &session.conn, &session.user, false).await;
    }
}

/// Answers a refused command, and ends the session when the refusal says so.
fn refuse(session: &SessionHandle, id: Option<u64>, refusal: Refusal) {
    error(session, id, refusal.code, &refusal.message);
    if let Some(why) = refusal.close {
        session.end_with(End::Closed(why));
    }
}

pub(super) fn error(session: &SessionHandle, id: Option<u64>, code: ErrorCode, message: &str) {
    session.reply(id, &Reply::Error { code, message });
}
