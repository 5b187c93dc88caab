//! The Pusher Channels protocol 7 codec (docs/PUSHER.md, "The WebSocket
//! protocol"): client events in, pushes and replies out, and the close codes
//! Pusher's client libraries act on.
//!
//! Every frame is a JSON object `{"event", "channel"?, "data"?}`. Where the
//! protocol carries `data` as a string holding JSON (channel events, the
//! connection and subscription events), it is written as such a string; a
//! message published through the Pusher surface holds its `data` string as a
//! JSON string literal already, so it is spliced in without re-escaping:
//! one encoding per message, shared by every Pusher subscriber.

use std::borrow::Cow;

use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;
use switchboard_backplane::PresenceMember;
use switchboard_backplane::envelope::PayloadEncoding;

use super::{CloseReason, Disconnect, MissedTopic, Push, Reply};

/// The only protocol version spoken.
pub const VERSION: u32 = 7;

/// The event name Pusher clients receive for messages published through the
/// node's own protocol or API (which carry no event name).
pub const DEFAULT_EVENT: &str = "message";

/// The channel event that tells a Pusher subscriber that messages may have
/// been missed (the node's `missed` push).
pub const MISSED_EVENT: &str = "switchboard:missed";

/// The Pusher channel name of a Switchboard channel `app:name`.
pub fn pusher_name(channel: &str) -> &str {
    channel.split_once(':').map_or(channel, |(_, name)| name)
}

/// What a Pusher client can send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `pusher:ping`: answered `pusher:pong`.
    Ping,
    /// `pusher:pong`: the answer to a server `pusher:ping` (a sign of life).
    Pong,
    /// `pusher:subscribe`.
    Subscribe {
        /// The Pusher channel name.
        channel: String,
        /// `<key>:<signature>`, for private and presence channels.
        auth: Option<String>,
        /// The member's JSON (`user_id`, `user_info`), for presence channels.
        channel_data: Option<String>,
    },
    /// `pusher:unsubscribe`.
    Unsubscribe {
        /// The Pusher channel name.
        channel: String,
    },
    /// `pusher:signin`: user authentication.
    Signin {
        /// `<key>:<signature>`.
        auth: String,
        /// The user's JSON (`id`, ...), as signed.
        user_data: String,
    },
    /// A `client-*` event, relayed to the channel's other subscribers.
    ClientEvent {
        /// The event name (starts with `client-`).
        event: String,
        /// The Pusher channel name.
        channel: String,
        /// The event's `data`, a JSON value as sent.
        data: Bytes,
    },
}

/// A frame that is not a command this node understands; answered with a
/// `pusher:error` whose message says why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError(pub String);

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct SubscribeData {
    channel: String,
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    channel_data: Option<String>,
}

#[derive(Deserialize)]
struct UnsubscribeData {
    channel: String,
}

#[derive(Deserialize)]
struct SigninData {
    auth: String,
    user_data: String,
}

/// Reads the `data` of a protocol event, given as an object or as a string
/// holding the object's JSON (clients do both).
fn data_object<T: serde::de::DeserializeOwned>(
    event: &str,
    data: Option<&RawValue>,
) -> Result<T, DecodeError> {
    let data = data.ok_or_else(|| DecodeError(format!("{event} needs a data object")))?;
    let text: Cow<'_, str> = if data.get().starts_with('"') {
        Cow::Owned(
            serde_json::from_str::<String>(data.get())
                .map_err(|e| DecodeError(format!("{event}: bad data string: {e}")))?,
        )
    } else {
        Cow::Borrowed(data.get())
    };
    serde_json::from_str(&text).map_err(|e| DecodeError(format!("{event}: bad data: {e}")))
}

/// Decodes one text frame from a Pusher client.
pub fn decode(frame: &[u8]) -> Result<Command, DecodeError> {
    let frame: Frame<'_> = serde_json::from_slice(frame).map_err(|e| {
        DecodeError(format!(
            "not a Pusher event (a JSON object with an \"event\" name): {e}"
        ))
    })?;
    let event = frame.event.as_ref();
    match event {
        "pusher:ping" => Ok(Command::Ping),
        "pusher:pong" => Ok(Command::Pong),
        "pusher:subscribe" => {
            let d: SubscribeData = data_object(event, frame.data)?;
            Ok(Command::Subscribe {
                channel: d.channel,
                auth: d.auth,
                channel_data: d.channel_data,
            })
        }
        "pusher:unsubscribe" => {
            let d: UnsubscribeData = data_object(event, frame.data)?;
            Ok(Command::Unsubscribe { channel: d.channel })
        }
        "pusher:signin" => {
            let d: SigninData = data_object(event, frame.data)?;
            Ok(Command::Signin {
                auth: d.auth,
                user_data: d.user_data,
            })
        }
        e if e.starts_with("client-") => {
            let channel = frame
                .channel
                .ok_or_else(|| DecodeError(format!("client event {e} names no channel")))?;
            let data = frame.data.map_or(Bytes::from_static(b"{}"), |d| {
                Bytes::copy_from_slice(d.get().as_bytes())
            });
            Ok(Command::ClientEvent {
                event: e.to_owned(),
                channel,
                data,
            })
        }
        other => Err(DecodeError(format!(
            "unknown event {other:?}: clients send pusher:ping, pusher:pong, pusher:subscribe, pusher:unsubscribe, pusher:signin and client-* events"
        ))),
    }
}

/// Writes `s` as a JSON string.
fn put_str(out: &mut BytesMut, s: &str) {
    // Serialising a &str cannot fail.
    let _ = serde_json::to_writer(out.writer(), s);
}

/// Writes JSON text as a JSON string holding it (the protocol's `data`).
fn put_json_as_string(out: &mut BytesMut, json: &str) {
    put_str(out, json);
}

/// `{"event":E,"channel":C` (without the closing brace).
fn open(out: &mut BytesMut, event: &str, channel: Option<&str>) {
    out.put_slice(b"{\"event\":");
    put_str(out, event);
    if let Some(channel) = channel {
        out.put_slice(b",\"channel\":");
        put_str(out, channel);
    }
}

/// Writes a message's `data` as the string Pusher clients expect: a payload
/// that is a JSON string literal (what the Pusher surface publishes) is spliced
/// in as it is; other JSON text, and binary data that is UTF-8, become a
/// string holding it; other bytes are base64-encoded.
fn put_data(out: &mut BytesMut, payload: &[u8], encoding: PayloadEncoding) {
    out.put_slice(b",\"data\":");
    match std::str::from_utf8(payload) {
        Ok(text) if encoding == PayloadEncoding::Json && text.starts_with('"') => {
            out.put_slice(payload)
        }
        Ok(text) => put_str(out, text),
        Err(_) => put_str(
            out,
            &base64::engine::general_purpose::STANDARD.encode(payload),
        ),
    }
}

/// Encodes a push for Pusher subscribers; `None` for what Pusher clients are
/// not told (joins and leaves outside presence channels).
pub(crate) fn encode_push(push: &Push<'_>) -> Option<Bytes> {
    let mut out = BytesMut::with_capacity(128);
    match *push {
        Push::Message {
            channel,
            payload,
            encoding,
            event,
            publisher,
            ..
        } => {
            let name = pusher_name(channel);
            out.reserve(name.len() + event.len() + payload.len() + 48);
            let event = if event.is_empty() {
                DEFAULT_EVENT
            } else {
                event
            };
            open(&mut out, event, Some(name));
            put_data(&mut out, payload, encoding);
            // Client events on presence channels name their sender.
            if event.starts_with("client-")
                && name.starts_with("presence-")
                && !publisher.is_empty()
            {
                out.put_slice(b",\"user_id\":");
                put_str(&mut out, publisher);
            }
        }
        Push::UserMessage {
            payload, encoding, ..
        } => {
            open(&mut out, DEFAULT_EVENT, None);
            put_data(&mut out, payload, encoding);
        }
        Push::Join {
            channel,
            user,
            info,
            join,
            ..
        } => {
            let name = pusher_name(channel);
            if !name.starts_with("presence-") {
                return None;
            }
            let mut member = BytesMut::new();
            member.put_slice(b"{\"user_id\":");
            put_str(&mut member, user);
            if join {
                member.put_slice(b",\"user_info\":");
                member.put_slice(if info.is_empty() {
                    b"null"
                } else {
                    info.as_bytes()
                });
            }
            member.put_u8(b'}');
            let event = if join {
                "pusher_internal:member_added"
            } else {
                "pusher_internal:member_removed"
            };
            open(&mut out, event, Some(name));
            out.put_slice(b",\"data\":");
            put_json_as_string(&mut out, std::str::from_utf8(&member).unwrap_or("{}"));
        }
        Push::Missed { topic, reason } => {
            let channel = match topic {
                MissedTopic::Channel(c) => Some(pusher_name(c)),
                MissedTopic::User(_) => None,
            };
            open(&mut out, MISSED_EVENT, channel);
            out.put_slice(b",\"data\":");
            put_json_as_string(&mut out, &format!("{{\"reason\":\"{}\"}}", reason.as_str()));
        }
    }
    out.put_u8(b'}');
    Some(out.freeze())
}

/// The user of a `pusher_internal:member_added` frame; `None` for any other frame.
pub(crate) fn member_added_user(frame: &[u8]) -> Option<String> {
    const EVENT: &[u8] = b"{\"event\":\"pusher_internal:member_added\"";
    if !frame.starts_with(EVENT) {
        return None;
    }
    #[derive(Deserialize)]
    struct Frame {
        data: String,
    }
    #[derive(Deserialize)]
    struct Data {
        user_id: String,
    }
    let frame: Frame = serde_json::from_slice(frame).ok()?;
    serde_json::from_str::<Data>(&frame.data)
        .ok()
        .map(|d| d.user_id)
}

/// `pusher:connection_established`, the first frame of every connection.
pub fn connection_established(socket_id: &str, activity_timeout: u32) -> Bytes {
    let mut out = BytesMut::with_capacity(128);
    open(&mut out, "pusher:connection_established", None);
    out.put_slice(b",\"data\":");
    let data = serde_json::json!({"socket_id": socket_id, "activity_timeout": activity_timeout});
    put_json_as_string(&mut out, &data.to_string());
    out.put_u8(b'}');
    out.freeze()
}

/// `pusher:pong`, the answer to `pusher:ping`.
pub fn pong() -> Bytes {
    Bytes::from_static(b"{\"event\":\"pusher:pong\",\"data\":\"{}\"}")
}

/// `pusher:ping`, the server's liveness check.
pub fn ping() -> Bytes {
    Bytes::from_static(b"{\"event\":\"pusher:ping\",\"data\":\"{}\"}")
}

/// `pusher:error` with a Pusher error code (`None`: no code).
pub fn error(code: Option<u16>, message: &str) -> Bytes {
    let data = serde_json::json!({"code": code, "message": message});
    Bytes::from(
        serde_json::json!({"event": "pusher:error", "data": data})
            .to_string()
            .into_bytes(),
    )
}

/// `pusher:subscription_error` for a channel: what the client libraries
/// surface as a failed subscription (`status` as an HTTP status would be).
pub fn subscription_error(channel: &str, kind: &str, message: &str, status: u16) -> Bytes {
    let frame = serde_json::json!({
        "event": "pusher:subscription_error",
        "channel": channel,
        "data": {"type": kind, "error": message, "status": status},
    });
    Bytes::from(frame.to_string().into_bytes())
}

/// A presence channel's members as `pusher_internal:subscription_succeeded`
/// carries them: each user once.
pub struct Members<'a>(pub &'a [PresenceMember]);

/// `pusher_internal:subscription_succeeded`; with the members on presence channels.
pub fn subscription_succeeded(channel: &str, members: Option<Members<'_>>) -> Bytes {
    let data = match members {
        None => "{}".to_owned(),
        Some(Members(members)) => {
            let mut ids: Vec<&str> = Vec::with_capacity(members.len());
            let mut hash = serde_json::Map::new();
            for m in members {
                if hash.contains_key(&m.user) {
                    continue;
                }
                ids.push(&m.user);
                let info = if m.info.is_empty() {
                    serde_json::Value::Null
                } else {
                    serde_json::from_str(&m.info).unwrap_or(serde_json::Value::Null)
                };
                hash.insert(m.user.clone(), info);
            }
            serde_json::json!({"presence": {"count": ids.len(), "ids": ids, "hash": hash}})
                .to_string()
        }
    };
    let mut out = BytesMut::with_capacity(64 + channel.len() + data.len());
    open(
        &mut out,
        "pusher_internal:subscription_succeeded",
        Some(channel),
    );
    out.put_slice(b",\"data\":");
    put_json_as_string(&mut out, &data);
    out.put_u8(b'}');
    out.freeze()
}

/// `pusher:cache_miss`: a cache channel has no event to replay.
pub fn cache_miss(channel: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(48 + channel.len());
    open(&mut out, "pusher:cache_miss", Some(channel));
    out.put_slice(b",\"data\":\"{}\"}");
    out.freeze()
}

/// `pusher:signin_success`, with the user data as signed.
pub fn signin_success(user_data: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(64 + user_data.len());
    open(&mut out, "pusher:signin_success", None);
    out.put_slice(b",\"data\":");
    put_json_as_string(
        &mut out,
        &serde_json::json!({"user_data": user_data}).to_string(),
    );
    out.put_u8(b'}');
    out.freeze()
}

/// Encodes a reply of the node's shared code paths for a Pusher client: the
/// welcome, errors, and the goodbye. The Pusher session answers everything
/// else with the frames above.
pub(crate) fn encode_reply(reply: &Reply<'_>) -> Bytes {
    match *reply {
        Reply::Welcome { conn, .. } => connection_established(conn, ACTIVITY_TIMEOUT_SECS),
        Reply::Subscribed { channel, .. } => subscription_succeeded(pusher_name(channel), None),
        Reply::Pong => pong(),
        Reply::Error { code, message } => error(error_code(code), message),
        Reply::Disconnect(d) => error(Some(d.code), &d.reason),
        // Not sent to Pusher clients (no such replies in the protocol).
        Reply::Unsubscribed { .. }
        | Reply::Published { .. }
        | Reply::History { .. }
        | Reply::Presence { .. } => error(None, "no such reply in the Pusher protocol"),
    }
}

/// Seconds of silence after which a Pusher client pings the server
/// (`activity_timeout` of `pusher:connection_established`).
pub const ACTIVITY_TIMEOUT_SECS: u32 = 120;

/// The Pusher error code for a refusal of the node's own kind, where Pusher
/// has one.
fn error_code(code: super::ErrorCode) -> Option<u16> {
    match code {
        super::ErrorCode::RateLimited => Some(4301),
        _ => None,
    }
}

/// What a Pusher client is told, and the close code, when the node ends its
/// connection: codes 4000-4099 make Pusher's clients give up, 4100-4199
/// reconnect after a back-off, 4200-4299 reconnect at once.
pub fn disconnect(reason: &CloseReason) -> Disconnect {
    match reason {
        // A draining node: come back at once (to another node).
        CloseReason::Shutdown => Disconnect::fixed(4200, "node shutting down: reconnect", true),
        CloseReason::HeartbeatTimeout => {
            Disconnect::fixed(4201, "pong reply not received: reconnect", true)
        }
        CloseReason::SlowConsumer => {
            Disconnect::fixed(4100, "over capacity: the client reads too slowly", true)
        }
        CloseReason::RateLimited => Disconnect::fixed(
            4100,
            "over capacity: too many events from this client",
            true,
        ),
        CloseReason::Internal => Disconnect::fixed(4200, "internal error: reconnect", true),
        CloseReason::TooLarge => Disconnect::fixed(4009, "message too large", false),
        // A token is never used on this endpoint; kept for completeness.
        CloseReason::TokenExpired => Disconnect::fixed(4009, "connection is unauthorized", false),
        // Frames the client could not get right: the WebSocket's own codes.
        CloseReason::ProtocolError | CloseReason::InvalidUtf8 => reason.disconnect(),
        CloseReason::ServerApi(d) | CloseReason::Refused(d) => d.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::MissedReason;

    fn text(b: &Bytes) -> &str {
        std::str::from_utf8(b).unwrap()
    }

    #[test]
    fn decodes_protocol_events_with_data_as_object_or_string() {
        let a =
            decode(br#"{"event":"pusher:subscribe","data":{"channel":"private-a","auth":"k:s"}}"#);
        let b = decode(
            br#"{"event":"pusher:subscribe","data":"{\"channel\":\"private-a\",\"auth\":\"k:s\"}"}"#,
        );
        let want = Command::Subscribe {
            channel: "private-a".into(),
            auth: Some("k:s".into()),
            channel_data: None,
        };
        assert_eq!(a, Ok(want.clone()));
        assert_eq!(b, Ok(want));
        assert_eq!(
            decode(br#"{"event":"pusher:ping","data":{}}"#),
            Ok(Command::Ping)
        );
        assert_eq!(
            decode(br#"{"event":"client-typing","channel":"private-a","data":{"x":1}}"#),
            Ok(Command::ClientEvent {
                event: "client-typing".into(),
                channel: "private-a".into(),
                data: Bytes::from_static(br#"{"x":1}"#),
            })
        );
    }

    #[test]
    fn refuses_what_is_not_a_command() {
        for bad in [
            &b"not json"[..],
            br#"{"data":{}}"#,
            br#"{"event":"pusher:subscribe"}"#,
            br#"{"event":"pusher:subscribe","data":{"auth":"x"}}"#,
            br#"{"event":"something"}"#,
            br#"{"event":"client-x","data":{}}"#,
            br#"[1,2]"#,
        ] {
            assert!(decode(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_pusher_published_string_is_spliced_and_other_data_becomes_a_string() {
        let literal = Bytes::from_static(br#""{\"a\":1}""#);
        let push = Push::Message {
            channel: "app1:my-channel",
            payload: &literal,
            encoding: PayloadEncoding::Json,
            position: None,
            event: "my-event",
            publisher: "",
        };
        assert_eq!(
            text(&encode_push(&push).unwrap()),
            r#"{"event":"my-event","channel":"my-channel","data":"{\"a\":1}"}"#
        );
        let native = Bytes::from_static(br#"{"a":1}"#);
        let push = Push::Message {
            channel: "app1:my-channel",
            payload: &native,
            encoding: PayloadEncoding::Json,
            position: Some((3, "e")),
            event: "",
            publisher: "",
        };
        assert_eq!(
            text(&encode_push(&push).unwrap()),
            r#"{"event":"message","channel":"my-channel","data":"{\"a\":1}"}"#
        );
        let binary = Bytes::from_static(&[0xff, 0x00]);
        let push = Push::Message {
            channel: "app1:c",
            payload: &binary,
            encoding: PayloadEncoding::Binary,
            position: None,
            event: "e",
            publisher: "",
        };
        assert_eq!(
            text(&encode_push(&push).unwrap()),
            r#"{"event":"e","channel":"c","data":"/wA="}"#
        );
    }

    #[test]
    fn client_events_on_presence_channels_name_their_sender() {
        let data = Bytes::from_static(br#"{"x":1}"#);
        let push = Push::Message {
            channel: "app1:presence-room",
            payload: &data,
            encoding: PayloadEncoding::Json,
            position: None,
            event: "client-typing",
            publisher: "u1",
        };
        assert_eq!(
            text(&encode_push(&push).unwrap()),
            r#"{"event":"client-typing","channel":"presence-room","data":"{\"x\":1}","user_id":"u1"}"#
        );
    }

    #[test]
    fn member_events_only_on_presence_channels() {
        let join = Push::Join {
            channel: "app1:presence-room",
            conn: "1.2",
            user: "u1",
            info: r#"{"name":"A"}"#,
            join: true,
        };
        assert_eq!(
            text(&encode_push(&join).unwrap()),
            r#"{"event":"pusher_internal:member_added","channel":"presence-room","data":"{\"user_id\":\"u1\",\"user_info\":{\"name\":\"A\"}}"}"#
        );
        let leave = Push::Join {
            channel: "app1:presence-room",
            conn: "1.2",
            user: "u1",
            info: "",
            join: false,
        };
        assert_eq!(
            text(&encode_push(&leave).unwrap()),
            r#"{"event":"pusher_internal:member_removed","channel":"presence-room","data":"{\"user_id\":\"u1\"}"}"#
        );
        let public = Push::Join {
            channel: "app1:room",
            conn: "1.2",
            user: "u1",
            info: "",
            join: true,
        };
        assert!(encode_push(&public).is_none());
    }

    #[test]
    fn member_added_frames_name_their_user() {
        let join = Push::Join {
            channel: "app1:presence-room",
            conn: "1.2",
            user: "u\"1",
            info: "",
            join: true,
        };
        let frame = encode_push(&join).unwrap();
        assert_eq!(member_added_user(&frame).as_deref(), Some("u\"1"));
        assert_eq!(member_added_user(&pong()), None);
    }

    #[test]
    fn missed_is_a_channel_event() {
        let push = Push::Missed {
            topic: MissedTopic::Channel("app1:room"),
            reason: MissedReason::Backplane,
        };
        assert_eq!(
            text(&encode_push(&push).unwrap()),
            r#"{"event":"switchboard:missed","channel":"room","data":"{\"reason\":\"backplane\"}"}"#
        );
    }

    #[test]
    fn presence_subscription_lists_each_user_once() {
        let m = |conn: &str, user: &str, info: &str| PresenceMember {
            conn: conn.into(),
            user: user.into(),
            node: "n".into(),
            info: info.into(),
        };
        let members = [
            m("1.1", "u1", r#"{"n":1}"#),
            m("1.2", "u1", r#"{"n":1}"#),
            m("2.1", "u2", ""),
        ];
        let frame = subscription_succeeded("presence-r", Some(Members(&members)));
        let v: serde_json::Value = serde_json::from_slice(&frame).unwrap();
        let data: serde_json::Value = serde_json::from_str(v["data"].as_str().unwrap()).unwrap();
        assert_eq!(
            data,
            serde_json::json!({"presence": {"count": 2, "ids": ["u1", "u2"], "hash": {"u1": {"n": 1}, "u2": null}}})
        );
    }

    #[test]
    fn a_draining_node_makes_clients_reconnect_at_once() {
        assert_eq!(disconnect(&CloseReason::Shutdown).code, 4200);
        assert_eq!(disconnect(&CloseReason::HeartbeatTimeout).code, 4201);
        assert!((4100..4200).contains(&disconnect(&CloseReason::SlowConsumer).code));
        let established = connection_established("1.2", 120);
        assert_eq!(
            text(&established),
            r#"{"event":"pusher:connection_established","data":"{\"activity_timeout\":120,\"socket_id\":\"1.2\"}"}"#
        );
    }
}
