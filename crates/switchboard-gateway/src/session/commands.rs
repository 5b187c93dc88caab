//! Executing client commands (PROTOCOL.md section 3).

use std::sync::Arc;

use bytes::Bytes;
use switchboard_backplane::envelope;

use super::guard::Refusal;
use super::{End, SessionHandle};
use crate::node::NodeInner;
use crate::protocol::{CommandKind, DecodeError, ErrorCode, Protocol, Reply, channel, json, proto};

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
    let command = match decoded {
        Ok(c) => c,
        Err(e) => return error(session, e.id, ErrorCode::BadRequest, &e.message),
    };
    let id = command.id;
    if let Err(refusal) = session.admit_command(node) {
        return refuse(session, id, refusal);
    }
    if let Some(name) = command.kind.channel()
        && let Err(why) = channel::validate(name)
    {
        return error(session, id, ErrorCode::BadRequest, &why);
    }
    match command.kind {
        CommandKind::Subscribe { channel, .. } => {
            if let Err(refusal) = session.may_subscribe(node, &channel) {
                return refuse(session, id, refusal);
            }
            let channel: Arc<str> = channel.into();
            if !crate::lock(&session.channels).insert(channel.clone()) {
                return error(
                    session,
                    id,
                    ErrorCode::BadRequest,
                    &format!("already subscribed to {channel}"),
                );
            }
            let subscribed = node
                .hub
                .subscribe(&channel, session, || {
                    session.reply(id, &Reply::Subscribed { channel: &channel })
                })
                .await;
            if let Err(e) = subscribed {
                crate::lock(&session.channels).remove(&channel);
                error(
                    session,
                    id,
                    ErrorCode::Unavailable,
                    &format!("could not subscribe: {e}"),
                );
            }
        }
        CommandKind::Unsubscribe { channel } => {
            if crate::lock(&session.channels).remove(channel.as_str()) {
                node.hub.unsubscribe(&channel, session.id).await;
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
            match node.backplane.publish(&envelope).await {
                Ok(()) => session.reply(id, &Reply::Published { channel: &channel }),
                Err(e) => error(
                    session,
                    id,
                    ErrorCode::Unavailable,
                    &format!("not published: {e}"),
                ),
            }
        }
        CommandKind::History { .. } => error(
            session,
            id,
            ErrorCode::Forbidden,
            "history is not kept for this channel's namespace",
        ),
        CommandKind::Presence { .. } => error(
            session,
            id,
            ErrorCode::Forbidden,
            "presence is not enabled for this channel's namespace",
        ),
        CommandKind::Ping => session.reply(id, &Reply::Pong),
    }
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
