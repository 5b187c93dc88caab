//! The node's WebSocket layer (RFC 6455, server side, no extensions): the
//! upgrade checks, the sans-I/O frame parser, the frame writer and the closing
//! handshake. Sessions use it; so does the `autobahn_echo` example, which runs
//! this very code as an echo server under the Autobahn TestSuite (see
//! `.ci/steps/15-autobahn.sh`).
//!
//! The public part is only what that example needs:
//!
//! - [`handshake::check`]: whether an upgrade request may be answered 101,
//!   else the status (400, or 426 for a version other than 13) and why.
//! - [`Parser`]: bytes in, [`Event`]s out, or the [`Violation`] that fails
//!   the connection.
//! - [`Writer`]: whole frames out, through the same outbox a session writes
//!   with, and [`Writer::close`], the closing handshake a session ends with.

pub(crate) mod closing;
pub(crate) mod frames;
pub mod handshake;
mod parse;
mod writer;

pub use closing::{CLOSE_WAIT, Closing};
pub use frames::OpCode;
pub use parse::{Event, Parser, Violation};
pub use writer::Writer;
