//! Building and reading backplane envelopes.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use switchboard_proto::backplane::envelope::Control;
use switchboard_proto::backplane::{Disconnect, Join, Leave};
pub use switchboard_proto::backplane::{Envelope, PayloadEncoding, Target, target::Kind};

/// Microseconds since the Unix epoch, the clock of `Envelope::published_us`.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    now_us() / 1000
}

/// A new envelope for `target`, stamped with a fresh id and the current time.
pub fn new(origin: &str, target: Kind, payload: Bytes, encoding: PayloadEncoding) -> Envelope {
    Envelope {
        id: Bytes::copy_from_slice(&ulid::Ulid::new().to_bytes()),
        origin: origin.to_owned(),
        published_us: now_us(),
        target: Some(Target { kind: Some(target) }),
        payload,
        encoding: encoding as i32,
        ..Default::default()
    }
}

/// A new message for a client channel.
pub fn for_channel(
    origin: &str,
    channel: &str,
    payload: Bytes,
    encoding: PayloadEncoding,
) -> Envelope {
    new(origin, Kind::Channel(channel.to_owned()), payload, encoding)
}

/// A new message for every connection of a user.
pub fn for_user(origin: &str, user: &str, payload: Bytes, encoding: PayloadEncoding) -> Envelope {
    new(origin, Kind::User(user.to_owned()), payload, encoding)
}

/// A join (or leave) event of one connection on a channel; `info` is the
/// member's user info (JSON text) on Pusher presence channels, "" otherwise.
pub fn join_leave(
    origin: &str,
    channel: &str,
    conn: &str,
    user: &str,
    info: &str,
    join: bool,
) -> Envelope {
    let mut envelope = for_channel(origin, channel, Bytes::new(), PayloadEncoding::default());
    let (conn, user, node) = (conn.to_owned(), user.to_owned(), origin.to_owned());
    envelope.control = Some(if join {
        Control::Join(Join {
            conn,
            user,
            node,
            info: info.to_owned(),
        })
    } else {
        Control::Leave(Leave { conn, user, node })
    });
    envelope
}

/// An order to close every connection of a user (`Kind::User`) or one
/// connection (`Kind::Conn`), with the close code and reason they get.
pub fn disconnect(origin: &str, target: Kind, order: Disconnect) -> Envelope {
    let mut envelope = new(origin, target, Bytes::new(), PayloadEncoding::default());
    envelope.control = Some(Control::Disconnect(order));
    envelope
}
