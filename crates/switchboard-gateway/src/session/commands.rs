//! Executing client commands (PROTOCOL.md section 3).

use std::sync::Arc;

use bytes::Bytes;
use switchboard_backplane::envelope::{self, Kind};
use switchboard_backplane::{HistoryPolicy, PresenceMember, Since, Target};
use switchboard_proto::backplane::envelope::Control;
use switchboard_proto::backplane::{Join, Leave};

use super::guard::Refusal;
use super::{End, Outbound, SessionHandle};
use crate::namespace::Namespace;
use crate::node::NodeInner;
use crate::policy::channel;
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
    let admitted = session.admit_command(node);
    let command = match (decoded, admitted) {
        (Ok(c), Ok(())) => c,
        (Ok(c), Err(refusal)) => return refuse(session, c.id, refusal),
        (Err(e), Err(refusal)) => return refuse(session, e.id, refusal),
        (Err(e), Ok(())) => return error(session, e.id, ErrorCode::BadRequest, &e.message),
    };
    let id = command.id;
    if let Some(name) = command.kind.channel()
        && let Err(why) = channel::validate(name)
    {
        return error(session, id, ErrorCode::BadRequest, &why);
    }
    match command.kind {
        CommandKind::Subscribe { channel, recover } => {
            if let Err(refusal) = session.may_subscribe(node, &channel) {
                return refuse(session, id, refusal);
            }
            subscribe(node, session, id, channel.into(), recover).await;
        }
        CommandKind::Unsubscribe { channel } => {
            let was = crate::lock(&session.channels).remove(channel.as_str());
            if was {
                leave(node, session, &channel).await;
            }
            session.reply(id, &Reply::Unsubscribed { channel: &channel });
        }
        CommandKind::Publish { channel, data } => {
            if let Err(refusal) = session.may_publish(node, &channel) {
                return refuse(session, id, refusal);
            }
            let mut envelope =
                envelope::for_channel(&node.config.node_id, &channel, data.bytes, data.encoding);
            envelope.publisher = session.user.to_string();
            let history = history_policy(node.config.namespaces.of(&channel));
            match node.backplane.publish(&envelope, history).await {
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
            let Some(policy) = history_policy(node.config.namespaces.of(&channel)) else {
                return error(
                    session,
                    id,
                    ErrorCode::Forbidden,
                    "history is not kept for this channel's namespace",
                );
            };
            if let Err(refusal) = session.may_read(node, &channel) {
                return refuse(session, id, refusal);
            }
            match read_history(node, &channel, policy, limit, since.as_ref()).await {
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
            if !node.config.namespaces.of(&channel).presence {
                return error(
                    session,
                    id,
                    ErrorCode::Forbidden,
                    "presence is not enabled for this channel's namespace",
                );
            }
            if let Err(refusal) = session.may_read(node, &channel) {
                return refuse(session, id, refusal);
            }
            match node.backplane.presence(&channel).await {
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

/// The history policy of a namespace, if it keeps history.
pub(crate) fn history_policy(namespace: &Namespace) -> Option<HistoryPolicy> {
    namespace.has_history().then_some(HistoryPolicy {
        size: namespace.history_size,
        ttl: namespace.history_ttl,
    })
}

/// Reads history for the `history` command and the API: without `since`, the
/// newest `limit`; with `since` in the current epoch, the oldest `limit` after
/// it; with `since` from another epoch, as without it.
pub(crate) async fn read_history(
    node: &NodeInner,
    channel: &str,
    policy: HistoryPolicy,
    limit: Option<u32>,
    since: Option<&StreamPosition>,
) -> Result<switchboard_backplane::HistoryPage, switchboard_backplane::BackplaneError> {
    let mut page = node
        .backplane
        .history(
            channel,
            policy,
            since.map_or(Since::All, |s| Since::After(s.offset)),
        )
        .await?;
    let same_epoch = since.is_some_and(|s| s.epoch == page.epoch);
    if since.is_some() && !same_epoch {
        page = node.backplane.history(channel, policy, Since::All).await?;
    }
    if let Some(limit) = limit.map(|l| l as usize)
        && page.messages.len() > limit
    {
        if same_epoch {
            page.messages.truncate(limit);
        } else {
            page.messages.drain(..page.messages.len() - limit);
        }
    }
    Ok(page)
}

async fn subscribe(
    node: &NodeInner,
    session: &Arc<SessionHandle>,
    id: Option<u64>,
    channel: Arc<str>,
    recover: Option<StreamPosition>,
) {
    if !crate::lock(&session.channels).insert(channel.clone()) {
        return error(
            session,
            id,
            ErrorCode::BadRequest,
            &format!("already subscribed to {channel}"),
        );
    }
    let namespace = node.config.namespaces.of(&channel);
    let history = history_policy(namespace);
    // Presence is written before the reply: a member who has been told
    // `subscribed` is in every presence list asked for after that.
    if namespace.presence {
        presence(node, session, &channel, true).await;
    }
    let subscribed = node
        .hub
        .subscribe(&channel, session, history.is_some(), || {
            if history.is_none() {
                session.reply(
                    id,
                    &Reply::Subscribed {
                        channel: &channel,
                        history: None,
                    },
                );
            }
        })
        .await;
    let subscription = match subscribed {
        Ok(s) => s,
        Err(e) => {
            crate::lock(&session.channels).remove(&channel);
            if namespace.presence {
                presence(node, session, &channel, false).await;
            }
            return error(
                session,
                id,
                ErrorCode::Unavailable,
                &format!("could not subscribe: {e}"),
            );
        }
    };
    if history.is_some()
        && let Err(e) = catch_up(node, session, id, &channel, &subscription, recover).await
    {
        crate::lock(&session.channels).remove(&channel);
        if namespace.presence {
            presence(node, session, &channel, false).await;
        }
        node.hub.unsubscribe(&channel, session.id).await;
        return error(
            session,
            id,
            ErrorCode::Unavailable,
            &format!("could not subscribe: {e}"),
        );
    }
    if namespace.join_leave {
        join_leave(node, session, &channel, true).await;
    }
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
    id: Option<u64>,
    channel: &str,
    subscription: &crate::hub::Subscription,
    recover: Option<StreamPosition>,
) -> Result<(), switchboard_backplane::BackplaneError> {
    let Some(room) = session.room().await else {
        return Ok(());
    };
    let since = recover
        .as_ref()
        .map_or(Since::Nothing, |r| Since::After(r.offset));
    let page = node.backplane.history_page(channel, since, room).await?;
    node.hub.note_start(channel, &page.epoch, page.offset);
    let recovered = recover
        .as_ref()
        .is_some_and(|r| page.can_recover(&r.epoch, r.offset));
    session.reply(
        id,
        &Reply::Subscribed {
            channel,
            history: Some((&page.epoch, page.offset, recovered)),
        },
    );
    let (mut epoch, mut newest) = (page.epoch.clone(), page.offset);
    // Everything up to `after` has been given to the session.
    let mut after = match (&recover, recovered) {
        (Some(r), true) => {
            push_history(session, channel, &page.messages);
            page.messages.last().map_or(r.offset, |m| m.offset)
        }
        _ => page.offset,
    };
    loop {
        if after >= newest && subscription.go_live(&epoch, after) {
            return Ok(());
        }
        let Some(room) = session.room().await else {
            return Ok(());
        };
        let page = match node
            .backplane
            .history_page(channel, Since::After(after), room)
            .await
        {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(channel, conn = %session.conn, error = %e, "history unreadable mid-recovery: ending the session");
                session.overflowed();
                return Ok(());
            }
        };
        // The history moved on under the recovery: say so, and go on from
        // what it still holds.
        if page.epoch != epoch {
            // Lost or expired: a new epoch, read from its start.
            missed(session, channel, MissedReason::History);
            (epoch, after, newest) = (page.epoch, 0, page.offset);
            continue;
        }
        if page.first > after.saturating_add(1) {
            // Trimmed past what was read.
            missed(session, channel, MissedReason::History);
        }
        newest = page.offset;
        push_history(session, channel, &page.messages);
        after = page.messages.last().map_or(page.offset, |m| m.offset);
    }
}

/// Queues messages read from history, in order.
fn push_history(
    session: &SessionHandle,
    channel: &str,
    messages: &[switchboard_backplane::Envelope],
) {
    for m in messages {
        session.push(Outbound::Message {
            frame: crate::protocol::encode_push_for(
                session.protocol,
                &Push::of_history(m, channel),
            ),
            published_us: m.published_us,
            offset: m.offset,
        });
    }
}

/// Tells one session that messages of a channel may have been missed.
fn missed(session: &SessionHandle, channel: &str, reason: MissedReason) {
    session.push(crate::hub::missed_push(
        session.protocol,
        MissedTopic::Channel(channel),
        reason,
        switchboard_backplane::envelope::now_us(),
    ));
    metrics::counter!("switchboard_missed_total", "reason" => reason.as_str()).increment(1);
}

/// Takes a session out of a channel: hub, presence, and a leave event.
pub(crate) async fn leave(node: &NodeInner, session: &SessionHandle, channel: &str) {
    node.hub.unsubscribe(channel, session.id).await;
    let namespace = node.config.namespaces.of(channel);
    if namespace.presence {
        presence(node, session, channel, false).await;
    }
    if namespace.join_leave {
        join_leave(node, session, channel, false).await;
    }
}

/// Records (or removes) the session in the channel's presence.
async fn presence(node: &NodeInner, session: &SessionHandle, channel: &str, present: bool) {
    let result = if present {
        let member = PresenceMember {
            conn: session.conn.to_string(),
            user: session.user.to_string(),
            node: node.config.node_id.clone(),
        };
        node.backplane.presence_add(channel, &member).await
    } else {
        node.backplane.presence_remove(channel, &session.conn).await
    };
    if let Err(e) = result {
        tracing::warn!(channel, conn = %session.conn, error = %e, "presence update failed");
    }
}

/// Publishes a join (or leave) event to the channel's subscribers.
async fn join_leave(node: &NodeInner, session: &SessionHandle, channel: &str, join: bool) {
    let (conn, user) = (session.conn.to_string(), session.user.to_string());
    let node_id = node.config.node_id.clone();
    let mut envelope = envelope::for_channel(
        &node.config.node_id,
        channel,
        Bytes::new(),
        Default::default(),
    );
    envelope.control = Some(if join {
        Control::Join(Join {
            conn,
            user,
            node: node_id,
        })
    } else {
        Control::Leave(Leave {
            conn,
            user,
            node: node_id,
        })
    });
    if let Err(e) = node.backplane.publish(&envelope, None).await {
        tracing::warn!(channel, error = %e, "join/leave event not published");
    }
}

/// A disconnect command for every connection of a user, or one connection.
pub(crate) fn disconnect_envelope(node_id: &str, target: Kind) -> switchboard_backplane::Envelope {
    let mut envelope = envelope::for_channel(node_id, "", Bytes::new(), Default::default());
    envelope.target = Some(Target { kind: Some(target) });
    envelope.control = Some(Control::Disconnect(
        switchboard_proto::backplane::Disconnect {
            code: u32::from(super::API_DISCONNECT.code),
            reason: super::API_DISCONNECT.reason.to_string(),
            reconnect: super::API_DISCONNECT.reconnect,
        },
    ));
    envelope
}

/// Answers a refused command, and ends the session when the refusal says so.
fn refuse(session: &SessionHandle, id: Option<u64>, refusal: Refusal) {
    error(session, id, refusal.code, &refusal.message);
    if let Some(d) = refusal.disconnect {
        session.end_with(End::Disconnect(d));
    }
}

fn error(session: &SessionHandle, id: Option<u64>, code: ErrorCode, message: &str) {
    session.reply(id, &Reply::Error { code, message });
}
