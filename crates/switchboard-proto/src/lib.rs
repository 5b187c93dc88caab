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
