//! Every refusal a client or server-API caller can get, each with the
//! protocol's error code (docs/PROTOCOL.md, "Errors"):
//!
//! - `admission`: who may open a WebSocket (drain, handshake, origin,
//!   subprotocol, per-address rates, the connection cap, the token);
//! - `access`: what a connection or API caller may do with a channel (the
//!   token's claims, the namespace's features, the subscription count, the
//!   command rate, the API key);
//! - [`channel`]: channel and namespace names and lengths;
//! - [`token`]: verifying client tokens (JWT) into an identity;
//! - `limits`: the counters and token buckets the rules above consult.
//!
//! Message size is the WebSocket layer's (`ws`: close 1009) and the API's
//! body reader's (413); JSON data fit for JSON subscribers is
//! `protocol::payload`'s.

pub(crate) mod access;
pub(crate) mod admission;
pub mod channel;
pub(crate) mod limits;
pub mod token;

pub(crate) use access::Refusal;
