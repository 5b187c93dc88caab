//! The `switchboard.v1.json` codec.
//!
//! Commands are read field by field from borrowed raw values, so that a bad
//! field is named precisely and the `id` is echoed whenever it is readable.
//! Channel messages are written by hand around the published JSON, which is
//! spliced in verbatim (it was validated when it was published).

use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;
use serde::Serialize;
use serde_json::value::RawValue;
use switchboard_backplane::envelope::PayloadEncoding;

use super::{Command, CommandKind, DecodeError, MissedTopic, Payload, Push, Reply, StreamPosition};
use switchboard_backplane::PresenceMember;

/// Every field a command may carry, unparsed.
#[derive(Deserialize)]
struct RawCommand<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    channel: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    recover: Option<&'a RawValue>,
    #[serde(borrow, default)]
    limit: Option<&'a RawValue>,
    #[serde(borrow, default)]
    since: Option<&'a RawValue>,
}

/// A present field is `Some`, even when its value is `null`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// Reads one command from a text frame.
pub fn decode(text: &[u8]) -> Result<Command, DecodeError> {
    // serde would also read a struct from an array; a command is an object.
    if text.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(text) {
                Ok(_) => DecodeError::new(None, "a command must be a JSON object"),
                Err(e) => DecodeError::new(None, format!("malformed JSON: {e}")),
            },
        );
    }
    let raw: RawCommand<'_> = serde_json::from_slice(text).map_err(|e| {
        let what = if e.is_data() {
            "a command must be a JSON object".to_owned()
        } else {
            format!("malformed JSON: {e}")
        };
        DecodeError::new(None, what)
    })?;
    let id = match raw.id {
        None => None,
        Some(v) if v.get() == "null" => None,
        Some(v) => Some(
            serde_json::from_str::<u64>(v.get())
                .map_err(|_| DecodeError::new(None, "id must be a non-negative integer"))?,
        ),
    };
    let err = |message: String| DecodeError::new(id, message);
    let kind: String = match raw.kind {
        None => return Err(err("missing field: type".into())),
        Some(v) => {
            serde_json::from_str(v.get()).map_err(|_| err("type must be a string".into()))?
        }
    };
    let channel = || -> Result<String, DecodeError> {
        let v = raw
            .channel
            .ok_or_else(|| err(format!("missing field: channel (in {kind})")))?;
        serde_json::from_str(v.get()).map_err(|_| err("channel must be a string".into()))
    };
    let position =
        |name: &str, v: Option<&RawValue>| -> Result<Option<StreamPosition>, DecodeError> {
            #[derive(Deserialize)]
            struct Pos {
                epoch: String,
                offset: u64,
            }
            match v {
                None => Ok(None),
                Some(v) if v.get() == "null" => Ok(None),
                Some(v) => serde_json::from_str::<Pos>(v.get())
                    .map(|p| {
                        Some(StreamPosition {
                            epoch: p.epoch,
                            offset: p.offset,
                        })
                    })
                    .map_err(|_| {
                        err(format!(
                            "{name} must be {{\"epoch\":string,\"offset\":integer}}"
                        ))
                    }),
            }
        };
    let kind = match kind.as_str() {
        "subscribe" => CommandKind::Subscribe {
            channel: channel()?,
            recover: position("recover", raw.recover)?,
        },
        "unsubscribe" => CommandKind::Unsubscribe {
            channel: channel()?,
        },
        "publish" => {
            let channel = channel()?;
            let data = raw
                .data
                .ok_or_else(|| err("missing field: data (in publish)".into()))?;
            let data = Payload::json_checked(data).map_err(|why| {
                why.count_refusal();
                err(why.describe())
            })?;
            CommandKind::Publish { channel, data }
        }
        "history" => CommandKind::History {
            channel: channel()?,
            limit: match raw.limit {
                None => None,
                Some(v) if v.get() == "null" => None,
                Some(v) => Some(
                    serde_json::from_str::<u32>(v.get())
                        .map_err(|_| err("limit must be a non-negative integer".into()))?,
                ),
            },
            since: position("since", raw.since)?,
        },
        "presence" => CommandKind::Presence {
            channel: channel()?,
        },
        "ping" => CommandKind::Ping,
        other => return Err(err(format!("unknown command type {other:?}"))),
    };
    Ok(Command { id, kind })
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Out<'a> {
    Welcome {
        conn: &'a str,
        node: &'a str,
        user: &'a str,
        heartbeat: u32,
    },
    Subscribed {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        channel: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
    },
    Unsubscribed {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        channel: &'a str,
    },
    Published {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        channel: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
    },
    Presence {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        channel: &'a str,
        members: &'a [PresenceMember],
    },
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        code: &'a str,
        message: &'a str,
    },
    Disconnect {
        code: u16,
        reason: &'a str,
        reconnect: bool,
    },
}

/// Encodes a reply as one JSON object.
pub fn encode_reply(id: Option<u64>, reply: &Reply<'_>) -> Bytes {
    let out = match *reply {
        Reply::Welcome {
            conn,
            node,
            user,
            heartbeat,
        } => Out::Welcome {
            conn,
            node,
            user,
            heartbeat,
        },
        Reply::Subscribed { channel, history } => Out::Subscribed {
            id,
            channel,
            epoch: history.map(|h| h.0),
            offset: history.map(|h| h.1),
            recovered: history.map(|h| h.2),
        },
        Reply::Unsubscribed { channel } => Out::Unsubscribed { id, channel },
        Reply::Published { channel, offset } => Out::Published {
            id,
            channel,
            offset,
        },
        Reply::Presence { channel, members } => Out::Presence {
            id,
            channel,
            members,
        },
        Reply::History {
            channel,
            epoch,
            offset,
            messages,
        } => return encode_history(id, channel, epoch, offset, messages),
        Reply::Pong => Out::Pong { id },
        Reply::Error { code, message } => Out::Error {
            id,
            code: code.as_str(),
            message,
        },
        Reply::Disconnect(d) => Out::Disconnect {
            code: d.code,
            reason: &d.reason,
            reconnect: d.reconnect,
        },
    };
    // Serialising these plain structs cannot fail.
    Bytes::from(serde_json::to_vec(&out).unwrap_or_default())
}

/// Encodes a push: `{"type":"message","channel":C,"data":D}` (with `offset`
/// and `epoch` on channels with history, `data_b64` for binary payloads),
/// `{"type":"message","user":U,"data":D}`, or a join/leave. Done once per
/// message and node, then shared by every JSON subscriber.
pub(crate) fn encode_push(push: &Push<'_>) -> Bytes {
    let mut out = BytesMut::with_capacity(128);
    put_push(&mut out, push);
    out.freeze()
}

/// Writes one push (see [`encode_push`]) at the end of `out`.
fn put_push(out: &mut BytesMut, push: &Push<'_>) {
    match *push {
        Push::Message {
            channel,
            payload,
            encoding,
            position,
            event,
            ..
        } => {
            out.reserve(channel.len() + payload.len() * 4 / 3);
            // Channel names are validated to a charset that needs no JSON escaping.
            out.put_slice(b"{\"type\":\"message\",\"channel\":\"");
            out.put_slice(channel.as_bytes());
            out.put_u8(b'"');
            if !event.is_empty() {
                out.put_slice(b",\"event\":");
                put_str(out, event);
            }
            put_data(out, payload, encoding);
            if let Some((offset, epoch)) = position {
                out.put_slice(b",\"offset\":");
                out.put_slice(offset.to_string().as_bytes());
                out.put_slice(b",\"epoch\":");
                put_str(out, epoch);
            }
        }
        Push::UserMessage {
            user,
            payload,
            encoding,
        } => {
            out.put_slice(b"{\"type\":\"message\",\"user\":");
            put_str(out, user);
            put_data(out, payload, encoding);
        }
        Push::Join {
            channel,
            conn,
            user,
            join,
            ..
        } => {
            out.put_slice(if join {
                b"{\"type\":\"join\",\"channel\":"
            } else {
                b"{\"type\":\"leave\",\"channel\":"
            });
            put_str(out, channel);
            out.put_slice(b",\"conn\":");
            put_str(out, conn);
            out.put_slice(b",\"user\":");
            put_str(out, user);
        }
        Push::Missed { topic, reason } => {
            out.put_slice(b"{\"type\":\"missed\",");
            match topic {
                MissedTopic::Channel(channel) => {
                    out.put_slice(b"\"channel\":");
                    put_str(out, channel);
                }
                MissedTopic::User(user) => {
                    out.put_slice(b"\"user\":");
                    put_str(out, user);
                }
            }
            out.put_slice(b",\"reason\":");
            put_str(out, reason.as_str());
        }
    }
    out.put_u8(b'}');
}

/// `,"data":D` for JSON payloads (spliced verbatim), `,"data_b64":"..."` for the rest.
///
/// A payload labelled JSON is spliced only if it is valid UTF-8, so the frame is
/// valid text whatever the backplane carries (history written before publishes
/// were checked, a node of another version): one UTF-8 check per message and
/// node, not per subscriber. One that is not goes as `data_b64`, and is counted.
fn put_data(out: &mut BytesMut, payload: &[u8], encoding: PayloadEncoding) {
    let encoding = match encoding {
        PayloadEncoding::Json if std::str::from_utf8(payload).is_err() => {
            metrics::counter!("switchboard_invalid_payloads_total", "reason" => "not_utf8")
                .increment(1);
            PayloadEncoding::Binary
        }
        other => other,
    };
    match encoding {
        PayloadEncoding::Json => {
            out.put_slice(b",\"data\":");
            out.put_slice(payload);
        }
        PayloadEncoding::Binary => {
            out.put_slice(b",\"data_b64\":\"");
            let mut encoded = String::new();
            base64::engine::general_purpose::STANDARD.encode_string(payload, &mut encoded);
            out.put_slice(encoded.as_bytes());
            out.put_u8(b'"');
        }
    }
}

/// A JSON string, escaped.
fn put_str(out: &mut BytesMut, s: &str) {
    // Serialising a &str cannot fail.
    let _ = serde_json::to_writer(out.writer(), s);
}

fn encode_history(
    id: Option<u64>,
    channel: &str,
    epoch: &str,
    offset: u64,
    messages: &[switchboard_backplane::Envelope],
) -> Bytes {
    let mut out = history_buffer(messages);
    out.put_slice(b"{\"type\":\"history\"");
    if let Some(id) = id {
        out.put_slice(b",\"id\":");
        out.put_slice(id.to_string().as_bytes());
    }
    out.put_slice(b",\"channel\":");
    put_str(&mut out, channel);
    put_history_tail(&mut out, channel, epoch, offset, messages);
    out.freeze()
}

/// The server API's history answer, `{"channel","epoch","offset","messages"}`,
/// each message exactly as its `message` push (`data`, or `data_b64`), spliced
/// rather than parsed again, so no message depends on a parser's limits.
pub(crate) fn encode_history_answer(
    channel: &str,
    epoch: &str,
    offset: u64,
    messages: &[switchboard_backplane::Envelope],
) -> Bytes {
    let mut out = history_buffer(messages);
    out.put_slice(b"{\"channel\":");
    put_str(&mut out, channel);
    put_history_tail(&mut out, channel, epoch, offset, messages);
    out.freeze()
}

fn history_buffer(messages: &[switchboard_backplane::Envelope]) -> BytesMut {
    // Base64 makes binary payloads 4/3 as long.
    BytesMut::with_capacity(
        64 + messages
            .iter()
            .map(|m| m.payload.len() * 4 / 3 + m.epoch.len() + 96)
            .sum::<usize>(),
    )
}

/// `,"epoch":E,"offset":N,"messages":[...]}`.
fn put_history_tail(
    out: &mut BytesMut,
    channel: &str,
    epoch: &str,
    offset: u64,
    messages: &[switchboard_backplane::Envelope],
) {
    out.put_slice(b",\"epoch\":");
    put_str(out, epoch);
    out.put_slice(b",\"offset\":");
    out.put_slice(offset.to_string().as_bytes());
    out.put_slice(b",\"messages\":[");
    for (i, m) in messages.iter().enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        put_push(out, &Push::of_history(m, channel));
    }
    out.put_slice(b"]}");
}

#[cfg(test)]
mod tests;
