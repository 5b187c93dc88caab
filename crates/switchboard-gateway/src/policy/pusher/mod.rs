//! The Pusher protocol's rules (docs/PROTOCOL.md, section 8): [`sign`] checks
//! its signatures.

pub(crate) mod sign;
