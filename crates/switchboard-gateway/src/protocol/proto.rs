//! The `switchboard.v1.proto` codec: `ClientFrame` in, `ServerFrame` out.

use bytes::Bytes;
use prost::Message as _;
use switchboard_proto::client::{
    self as pb, ClientFrame, ServerFrame, client_frame::Command as PbCommand, server_frame::Frame,
};

use super::{Command, CommandKind, DecodeError, MissedTopic, Payload, Push, Reply, StreamPosition};

/// Reads one command from a binary frame.
pub fn decode(frame: Bytes) -> Result<Command, DecodeError> {
    let frame = ClientFrame::decode(frame)
        .map_err(|e| DecodeError::new(None, format!("undecodable ClientFrame: {e}")))?;
    let id = (frame.id != 0).then_some(frame.id);
    let position = |p: Option<pb::StreamPosition>| {
        p.map(|p| StreamPosition {
            epoch: p.epoch,
            offset: p.offset,
        })
    };
    let kind = match frame.command {
        None => return Err(DecodeError::new(id, "ClientFrame carries no command")),
        Some(PbCommand::Subscribe(s)) => CommandKind::Subscribe {
            channel: s.channel,
            recover: position(s.recover),
        },
        Some(PbCommand::Unsubscribe(u)) => CommandKind::Unsubscribe { channel: u.channel },
        Some(PbCommand::Publish(p)) => CommandKind::Publish {
            channel: p.channel,
            data: Payload::classify(p.data),
        },
        Some(PbCommand::History(h)) => CommandKind::History {
            channel: h.channel,
            limit: h.limit,
            since: position(h.since),
        },
        Some(PbCommand::Presence(p)) => CommandKind::Presence { channel: p.channel },
        Some(PbCommand::Ping(_)) => CommandKind::Ping,
    };
    Ok(Command { id, kind })
}

/// Encodes a reply as one `ServerFrame`.
pub fn encode_reply(id: Option<u64>, reply: &Reply<'_>) -> Bytes {
    let frame = match *reply {
        Reply::Welcome {
            conn,
            node,
            user,
            heartbeat,
        } => Frame::Welcome(pb::Welcome {
            conn: conn.into(),
            node: node.into(),
            user: user.into(),
            heartbeat,
        }),
        Reply::Subscribed { channel, history } => Frame::Subscribed(pb::Subscribed {
            channel: channel.into(),
            epoch: history.map(|h| h.0.to_owned()),
            offset: history.map(|h| h.1),
            recovered: history.map(|h| h.2),
        }),
        Reply::Unsubscribed { channel } => Frame::Unsubscribed(pb::Unsubscribed {
            channel: channel.into(),
        }),
        Reply::Published { channel, offset } => Frame::Published(pb::Published {
            channel: channel.into(),
            offset,
        }),
        Reply::History {
            channel,
            epoch,
            offset,
            messages,
        } => Frame::History(pb::HistoryReply {
            channel: channel.into(),
            epoch: epoch.into(),
            offset,
            messages: messages
                .iter()
                .map(|m| pb::Message {
                    channel: channel.into(),
                    data: m.payload.clone(),
                    offset: Some(m.offset),
                    epoch: Some(m.epoch.clone()),
                    user: String::new(),
                    event: String::new(),
                })
                .collect(),
        }),
        Reply::Presence { channel, members } => Frame::Presence(pb::PresenceReply {
            channel: channel.into(),
            members: members
                .iter()
                .map(|m| pb::PresenceMember {
                    conn: m.conn.clone(),
                    user: m.user.clone(),
                    node: m.node.clone(),
                })
                .collect(),
        }),
        Reply::Pong => Frame::Pong(pb::Pong {}),
        Reply::Error { code, message } => Frame::Error(pb::Error {
            code: code.as_str().into(),
            message: message.into(),
        }),
        Reply::Disconnect(d) => Frame::Disconnect(pb::Disconnect {
            code: u32::from(d.code),
            reason: d.reason.to_string(),
            reconnect: d.reconnect,
        }),
    };
    encode(id, frame)
}

/// Encodes a push once, for every protobuf subscriber.
pub(crate) fn encode_push(push: &Push<'_>) -> Bytes {
    let frame = match *push {
        Push::Message {
            channel,
            payload,
            position,
            ..
        } => Frame::Message(pb::Message {
            channel: channel.into(),
            data: payload.clone(),
            offset: position.map(|p| p.0),
            epoch: position.map(|p| p.1.to_owned()),
            user: String::new(),
            event: String::new(),
        }),
        Push::UserMessage { user, payload, .. } => Frame::Message(pb::Message {
            user: user.into(),
            data: payload.clone(),
            ..Default::default()
        }),
        Push::Join {
            channel,
            conn,
            user,
            join: true,
        } => Frame::Join(pb::Join {
            channel: channel.into(),
            conn: conn.into(),
            user: user.into(),
        }),
        Push::Join {
            channel,
            conn,
            user,
            join: false,
        } => Frame::Leave(pb::Leave {
            channel: channel.into(),
            conn: conn.into(),
            user: user.into(),
        }),
        Push::Missed { topic, reason } => Frame::Missed(pb::Missed {
            channel: match topic {
                MissedTopic::Channel(c) => c.into(),
                MissedTopic::User(_) => String::new(),
            },
            user: match topic {
                MissedTopic::User(u) => u.into(),
                MissedTopic::Channel(_) => String::new(),
            },
            reason: reason.as_str().into(),
        }),
    };
    encode(None, frame)
}

fn encode(id: Option<u64>, frame: Frame) -> Bytes {
    Bytes::from(
        ServerFrame {
            id: id.unwrap_or(0),
            frame: Some(frame),
        }
        .encode_to_vec(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_backplane::envelope::PayloadEncoding;

    #[test]
    fn round_trips_a_publish_and_classifies_its_data() {
        let frame = ClientFrame {
            id: 9,
            command: Some(PbCommand::Publish(pb::PublishRequest {
                channel: "a".into(),
                data: Bytes::from_static(b"\xff\x00"),
            })),
        };
        let c = decode(frame.encode_to_vec().into()).unwrap();
        assert_eq!(c.id, Some(9));
        let CommandKind::Publish { data, .. } = c.kind else {
            panic!()
        };
        assert_eq!(data.encoding, PayloadEncoding::Binary);
        assert_eq!(
            Payload::classify(Bytes::from_static(b"[1]")).encoding,
            PayloadEncoding::Json
        );
    }

    #[test]
    fn rejects_garbage_and_empty_frames() {
        assert!(decode(Bytes::from_static(b"\xff\xff\xff")).is_err());
        let e = decode(
            ClientFrame {
                id: 4,
                command: None,
            }
            .encode_to_vec()
            .into(),
        )
        .unwrap_err();
        assert_eq!(e.id, Some(4));
    }
}
