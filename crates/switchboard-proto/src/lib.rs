//! Protobuf types of the Switchboard wire, generated from `proto/` at build time.
//!
//! - [`backplane`]: the [`backplane::Envelope`] nodes exchange over Redis.
//! - [`client`]: the [`client::ClientFrame`] / [`client::ServerFrame`] of the
//!   `switchboard.v1.proto` subprotocol.

/// The backplane envelope and its parts (`proto/switchboard/v1/backplane.proto`).
pub mod backplane {
    #![allow(missing_docs, clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/switchboard.backplane.v1.rs"));
}

/// The binary client frames (`proto/switchboard/v1/client.proto`).
pub mod client {
    #![allow(missing_docs, clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/switchboard.client.v1.rs"));
}

pub use prost::Message;

impl backplane::Envelope {
    /// Whom the envelope is for: a channel, a user or one connection.
    pub fn target_kind(&self) -> Option<&backplane::target::Kind> {
        self.target.as_ref()?.kind.as_ref()
    }

    /// The client channel the envelope is for, if it targets one.
    pub fn channel(&self) -> Option<&str> {
        match self.target_kind()? {
            backplane::target::Kind::Channel(c) => Some(c),
            _ => None,
        }
    }
}
