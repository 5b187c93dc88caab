//! The Switchboard node.
//!
//! Where things are:
//! - [`node`]: configuration, start-up, the fan-out workers, drain.
//! - `http`: the public listener (WebSocket upgrade) and the internal one
//!   (metrics, health, the server API).
//! - `session`: one connection's reader, writer and command handling.
//! - `hub`: channels to local sessions, and the fan-out.
//! - [`protocol`]: commands and replies, the JSON and protobuf codecs.
//! - [`metrics`]: the Prometheus recorder and the hot-path handles.
//! - [`auth`]: identities and JWT verification; `limits`: rate limits and the
//!   connection cap.
//! - [`ws`]: the WebSocket layer (upgrade checks, frame parser and writer,
//!   closing handshake) that sessions run on.

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

pub use config::{AuthConfig, BackplaneConfig, Limits, NodeConfig};
pub use namespace::{Namespace, Namespaces};
pub use node::{Node, NodeError};

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks a mutex whose data stays consistent even if a holder panicked
/// (every critical section here is a plain map or set edit).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
