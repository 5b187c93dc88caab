//! Every refusal a client or server-API caller can get, each with the
//! protocol's error code (docs/PROTOCOL.md, "Errors"):
//!
//! - `admission`: who may open a WebSocket (drain, handshake, origin,
//!   subprotocol, per-address rates, the connection cap, the token);
//! - `access`: what a connection or API caller may do (the token's claims,
//!   the namespace's features, the subscription count, the command rate,
//!   the API key, the size of an API body);
//! - [`channel`]: channel and namespace names and lengths;
//! - [`token`]: verifying client tokens (JWT) into an identity;
//! - `limits`: the counters and token buckets the rules above consult;
//! - `pusher`: the Pusher protocol's signatures and rules.
//!
//! Two refusals happen where the bytes are read, since they must stop the
//! reading: a client message over the size limit (the WebSocket parser,
//! close 1009) and JSON data unfit for JSON subscribers (`protocol::payload`,
//! `bad_request`).

pub(crate) mod access;
pub(crate) mod admission;
pub mod channel;
pub(crate) mod limits;
// Not called by the node until the Pusher endpoint is wired in (issue 12).
#[allow(dead_code)]
pub(crate) mod pusher;
pub mod token;

pub(crate) use access::Refusal;
