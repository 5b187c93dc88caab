//! Every refusal a client or server-API caller can get, with the protocol's
//! error code for it (docs/PROTOCOL.md, "Errors").

pub mod channel;
