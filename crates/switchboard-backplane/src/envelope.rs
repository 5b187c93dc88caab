//! Building and reading backplane envelopes.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
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

/// A new envelope for a client channel, stamped with a fresh id and the current time.
pub fn for_channel(
    origin: &str,
    channel: &str,
    payload: Bytes,
    encoding: PayloadEncoding,
) -> Envelope {
    Envelope {
        id: Bytes::copy_from_slice(&ulid::Ulid::new().to_bytes()),
        origin: origin.to_owned(),
        published_us: now_us(),
        target: Some(Target {
            kind: Some(Kind::Channel(channel.to_owned())),
        }),
        payload,
        encoding: encoding as i32,
        ..Default::default()
    }
}

/// The client channel an envelope is for, if it targets one.
pub fn channel_of(envelope: &Envelope) -> Option<&str> {
    match envelope.target.as_ref()?.kind.as_ref()? {
        Kind::Channel(c) => Some(c),
        _ => None,
    }
}
