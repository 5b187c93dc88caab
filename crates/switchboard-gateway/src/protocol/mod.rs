//! The client protocol, independent of its encoding: what a client can ask
//! ([`Command`]), what the node answers ([`Reply`]), and the two codecs of
//! `switchboard.v1.json` ([`json`]) and `switchboard.v1.proto` ([`proto`]),
//! and the Pusher protocol's codec ([`pusher`]), the third encoding of the
//! same pushes.

pub mod close;
pub mod json;
pub mod payload;
pub mod proto;
pub mod pusher;

use bytes::Bytes;
use switchboard_backplane::envelope::{Kind, PayloadEncoding};
use switchboard_backplane::{Envelope, PresenceMember};
use switchboard_proto::backplane::envelope::Control;

pub use close::{CloseReason, Disconnect};

/// A negotiated subprotocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// `switchboard.v1.json`: text frames, one JSON object each.
    Json,
    /// `switchboard.v1.proto`: binary frames, one protobuf frame each.
    Proto,
    /// Pusher Channels protocol 7 (`/app/{key}`, docs/PUSHER.md): text frames.
    Pusher,
}

impl Protocol {
    /// The `Sec-WebSocket-Protocol` name of the JSON subprotocol.
    pub const JSON_NAME: &'static str = "switchboard.v1.json";
    /// The `Sec-WebSocket-Protocol` name of the protobuf subprotocol.
    pub const PROTO_NAME: &'static str = "switchboard.v1.proto";

    /// Its `Sec-WebSocket-Protocol` name (the Pusher protocol has none).
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Json => Self::JSON_NAME,
            Protocol::Proto => Self::PROTO_NAME,
            Protocol::Pusher => "",
        }
    }

    /// How many encodings a push can have: one per protocol.
    pub(crate) const COUNT: usize = 3;

    /// The `protocol` label of the metrics that count by protocol.
    pub fn label(self) -> &'static str {
        match self {
            Protocol::Json => "json",
            Protocol::Proto => "proto",
            Protocol::Pusher => "pusher",
        }
    }

    /// This protocol's place among the [`Protocol::COUNT`] encodings of a push.
    pub(crate) fn slot(self) -> usize {
        match self {
            Protocol::Json => 0,
            Protocol::Proto => 1,
            Protocol::Pusher => 2,
        }
    }

    /// Picks the first supported subprotocol of a `Sec-WebSocket-Protocol`
    /// header value. `Ok(None)` when the client offered none (JSON is then used
    /// without naming it in the response); `Err` when it offered only unknown ones.
    pub fn negotiate(offered: Option<&str>) -> Result<Option<Protocol>, String> {
        let Some(offered) = offered else {
            return Ok(None);
        };
        let mut names = offered
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .peekable();
        if names.peek().is_none() {
            return Ok(None);
        }
        for name in names {
            match name {
                Self::JSON_NAME => return Ok(Some(Protocol::Json)),
                Self::PROTO_NAME => return Ok(Some(Protocol::Proto)),
                _ => {}
            }
        }
        Err(format!(
            "unsupported subprotocol {offered:?}; this node speaks {} and {}",
            Self::JSON_NAME,
            Self::PROTO_NAME
        ))
    }
}

/// A position in a channel's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamPosition {
    /// The history epoch.
    pub epoch: String,
    /// The offset of the last message seen.
    pub offset: u64,
}

/// Application data as published: bytes and how to read them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payload {
    /// The data.
    pub bytes: Bytes,
    /// JSON text, or arbitrary bytes.
    pub encoding: PayloadEncoding,
}

impl Payload {
    /// Data that is valid JSON text, fit for JSON clients as it is (the caller
    /// has checked it; see [`Payload::json_checked`]).
    pub fn json(bytes: Bytes) -> Self {
        Payload {
            bytes,
            encoding: PayloadEncoding::Json,
        }
    }

    /// JSON data as a parser read it (a `data` field of a JSON command or API
    /// body): refused when it is nested too deep or escapes a lone surrogate
    /// ([`payload::check_json_text`]); copied once otherwise.
    pub fn json_checked(raw: &serde_json::value::RawValue) -> Result<Self, payload::Unfit> {
        payload::check_json_text(raw.get())?;
        Ok(Payload::json(Bytes::copy_from_slice(raw.get().as_bytes())))
    }

    /// Classifies arbitrary bytes (a protobuf publish): JSON when JSON clients
    /// can take them verbatim ([`payload::json_fitness`]: UTF-8, one JSON value,
    /// not too deep, no lone surrogates), binary (`data_b64`) otherwise.
    pub fn classify(bytes: Bytes) -> Self {
        let encoding = payload::classify(&bytes);
        Payload { bytes, encoding }
    }
}

/// A client command, with the `id` to echo in its reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    /// Echoed in the reply.
    pub id: Option<u64>,
    /// What is asked.
    pub kind: CommandKind,
}

/// What a client can ask (docs/PROTOCOL.md, "Commands").
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandKind {
    /// Start receiving a channel's messages.
    Subscribe {
        /// The channel.
        channel: String,
        /// Where to resume from, on channels with history.
        recover: Option<StreamPosition>,
    },
    /// Stop receiving a channel's messages.
    Unsubscribe {
        /// The channel.
        channel: String,
    },
    /// Publish to a channel.
    Publish {
        /// The channel.
        channel: String,
        /// The data.
        data: Payload,
    },
    /// Read a channel's history.
    History {
        /// The channel.
        channel: String,
        /// At most this many messages.
        limit: Option<u32>,
        /// Only messages after this position.
        since: Option<StreamPosition>,
    },
    /// List a channel's subscribers.
    Presence {
        /// The channel.
        channel: String,
    },
    /// Liveness check.
    Ping,
}

impl CommandKind {
    /// The channel the command names, if any.
    pub fn channel(&self) -> Option<&str> {
        match self {
            CommandKind::Subscribe { channel, .. }
            | CommandKind::Unsubscribe { channel }
            | CommandKind::Publish { channel, .. }
            | CommandKind::History { channel, .. }
            | CommandKind::Presence { channel } => Some(channel),
            CommandKind::Ping => None,
        }
    }
}

/// A frame that could not be read as a command: answered `bad_request`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError {
    /// The command's id, when it could be read.
    pub id: Option<u64>,
    /// What is wrong, for the client.
    pub message: String,
}

impl DecodeError {
    pub(crate) fn new(id: Option<u64>, message: impl Into<String>) -> Self {
        DecodeError {
            id,
            message: message.into(),
        }
    }
}

/// The error codes (docs/PROTOCOL.md, "Errors").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// Malformed JSON, unknown type, missing field, bad channel name.
    BadRequest,
    /// Authentication needed.
    Unauthorized,
    /// Channel not allowed for this user or namespace.
    Forbidden,
    /// Payload too large.
    TooLarge,
    /// Too many commands.
    RateLimited,
    /// Too many subscriptions.
    LimitExceeded,
    /// The backplane is down: nothing was published.
    Unavailable,
    /// A bug or an unexpected failure.
    Internal,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

/// Something the node says to one client, other than a channel message.
#[derive(Clone, Debug)]
pub enum Reply<'a> {
    /// The first frame of every connection.
    Welcome {
        /// Connection id.
        conn: &'a str,
        /// Node id.
        node: &'a str,
        /// User id ("" when anonymous).
        user: &'a str,
        /// Seconds between server pings.
        heartbeat: u32,
    },
    /// `subscribe` succeeded.
    Subscribed {
        /// The channel.
        channel: &'a str,
        /// On channels with history: epoch, newest offset, and whether missed messages follow.
        history: Option<(&'a str, u64, bool)>,
    },
    /// `unsubscribe` succeeded.
    Unsubscribed {
        /// The channel.
        channel: &'a str,
    },
    /// `publish` was accepted by the backplane.
    Published {
        /// The channel.
        channel: &'a str,
        /// Its offset, on channels with history.
        offset: Option<u64>,
    },
    /// Answer to `history`.
    History {
        /// The channel.
        channel: &'a str,
        /// The history's epoch.
        epoch: &'a str,
        /// The newest offset.
        offset: u64,
        /// The messages, oldest first.
        messages: &'a [Envelope],
    },
    /// Answer to `presence`.
    Presence {
        /// The channel.
        channel: &'a str,
        /// Every connection subscribed to it.
        members: &'a [PresenceMember],
    },
    /// Answer to `ping`.
    Pong,
    /// A command failed.
    Error {
        /// The code.
        code: ErrorCode,
        /// What went wrong.
        message: &'a str,
    },
    /// The node is about to close the connection.
    Disconnect(&'a Disconnect),
}

/// Encodes a reply in the session's subprotocol.
pub fn encode_reply(protocol: Protocol, id: Option<u64>, reply: &Reply<'_>) -> Bytes {
    match protocol {
        Protocol::Json => json::encode_reply(id, reply),
        Protocol::Proto => proto::encode_reply(id, reply),
        Protocol::Pusher => pusher::encode_reply(reply),
    }
}

/// Encodes what an envelope pushes to a subscriber (a channel message, a user
/// message, a join or a leave), once per subprotocol; `None` for envelopes
/// that push nothing.
pub fn encode_push(protocol: Protocol, envelope: &Envelope) -> Option<Bytes> {
    let target = envelope.target_kind()?;
    let encoding = PayloadEncoding::try_from(envelope.encoding).unwrap_or(PayloadEncoding::Binary);
    let push = match (&envelope.control, target) {
        (None, Kind::Channel(channel)) => Push::Message {
            channel,
            payload: &envelope.payload,
            encoding,
            position: (envelope.offset != 0).then_some((envelope.offset, envelope.epoch.as_str())),
            event: &envelope.event,
            publisher: &envelope.publisher,
        },
        (None, Kind::User(user)) => Push::UserMessage {
            user,
            payload: &envelope.payload,
            encoding,
        },
        (Some(Control::Join(j)), Kind::Channel(channel)) => Push::Join {
            channel,
            conn: &j.conn,
            user: &j.user,
            info: &j.info,
            join: true,
        },
        (Some(Control::Leave(l)), Kind::Channel(channel)) => Push::Join {
            channel,
            conn: &l.conn,
            user: &l.user,
            info: "",
            join: false,
        },
        _ => return None,
    };
    encode_push_for(protocol, &push)
}

/// Encodes one push for one subprotocol (recovered messages, per session);
/// `None` when the protocol has no frame for it (a Pusher client is not told
/// of joins on channels other than presence channels).
pub(crate) fn encode_push_for(protocol: Protocol, push: &Push<'_>) -> Option<Bytes> {
    match protocol {
        Protocol::Json => Some(json::encode_push(push)),
        Protocol::Proto => Some(proto::encode_push(push)),
        Protocol::Pusher => pusher::encode_push(push),
    }
}

/// A server push, independent of its encoding.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Push<'a> {
    /// A channel message.
    Message {
        channel: &'a str,
        payload: &'a Bytes,
        encoding: PayloadEncoding,
        /// Offset and epoch, on channels with history.
        position: Option<(u64, &'a str)>,
        /// The event name, for messages published through the Pusher
        /// surface ("" otherwise).
        event: &'a str,
        /// The publishing client's user ("" for the server APIs).
        publisher: &'a str,
    },
    /// A message sent to a user.
    UserMessage {
        user: &'a str,
        payload: &'a Bytes,
        encoding: PayloadEncoding,
    },
    /// A connection joined (`join`) or left a channel (on a Pusher presence
    /// channel: a user's first connection joined, or its last one left).
    Join {
        channel: &'a str,
        conn: &'a str,
        user: &'a str,
        /// The member's user info (JSON text), on Pusher presence channels.
        info: &'a str,
        join: bool,
    },
    /// Messages of a channel or to a user may have been missed and could not
    /// be repaired (`missed`).
    Missed {
        topic: MissedTopic<'a>,
        reason: MissedReason,
    },
}

/// What a `missed` push is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MissedTopic<'a> {
    Channel(&'a str),
    User(&'a str),
}

/// Why messages may have been missed (the `reason` of a `missed` push).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MissedReason {
    /// The node's link to the backplane was interrupted, and the topic keeps
    /// no history to repair from.
    Backplane,
    /// The gap could not be repaired from history: trimmed, expired or lost.
    History,
}

impl MissedReason {
    /// As on the wire (and the `reason` label of `switchboard_missed_total`).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            MissedReason::Backplane => "backplane",
            MissedReason::History => "history",
        }
    }
}

impl<'a> Push<'a> {
    /// The push of a channel message held in history.
    pub(crate) fn of_history(envelope: &'a Envelope, channel: &'a str) -> Self {
        Push::Message {
            channel,
            payload: &envelope.payload,
            encoding: PayloadEncoding::try_from(envelope.encoding)
                .unwrap_or(PayloadEncoding::Binary),
            position: Some((envelope.offset, envelope.epoch.as_str())),
            event: &envelope.event,
            publisher: &envelope.publisher,
        }
    }
}
