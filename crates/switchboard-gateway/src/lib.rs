//! The Switchboard node: a WebSocket gateway whose nodes share a backplane.
//!
//! Where things are, by the path of one message from socket to socket:
//! - `http`: the listeners; `http::public` routes the public one and hands
//!   upgrades to sessions, `http::api` serves the server API, `http::internal`
//!   metrics and health.
//! - [`policy`]: every refusal: who may connect (`admission`), what a
//!   connection or API caller may do (`access`), channel names ([`policy::channel`]),
//!   tokens ([`policy::token`]), and the limits' counters and buckets.
//! - [`ws`]: the WebSocket layer: handshake checks, frame parser and writer,
//!   closing handshake.
//! - `session`: one connection's life: its task, commands, outbox,
//!   heartbeats, drain.
//! - [`protocol`]: commands, replies and pushes, their JSON and protobuf
//!   codecs, close reasons.
//! - `ops`: the operations (publish, history, presence, user send,
//!   disconnect), called by the command handler and the API alike.
//! - `fanout`: the workers that take envelopes from the backplane to the hub,
//!   and repair after a backplane reconnect.
//! - `hub`: which local sessions want which topic, and the delivery to them
//!   (with the recovery seam).
//! - [`node`]: the node's state, start-up and drain; [`config`]: its settings;
//!   [`namespace`]: per-namespace settings; [`metrics`]: the recorder and
//!   hot-path handles.
//!
//! docs/ARCHITECTURE.md has the map and the walk in full; docs/PROTOCOL.md is
//! the wire protocol.

pub mod config;
mod fanout;
mod http;
mod hub;
pub mod metrics;
pub mod namespace;
pub mod node;
mod ops;
pub mod policy;
pub mod protocol;
mod session;
pub mod ws;

pub use config::{AuthConfig, BackplaneConfig, Limits, NodeConfig, PusherApp, PusherLimits};
pub use namespace::{Namespace, Namespaces};
pub use node::{Node, NodeError};

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks a mutex whose data stays consistent even if a holder panicked
/// (every critical section here is a plain map or set edit).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
