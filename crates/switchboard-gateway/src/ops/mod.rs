//! The operations a client or a server-API caller asks of the node — publish,
//! history, presence, user send, disconnect, and the Pusher surface's
//! triggers, client events and memberships — each written once. The
//! WebSocket command handler (`session::commands`) and the HTTP API
//! (`http::api`) both call these, after `policy` has let the request through;
//! errors here are the backplane's (the caller answers `unavailable`).
//! `webhooks` delivers a Pusher app's webhooks.

pub(crate) mod history;
pub(crate) mod presence;
pub(crate) mod publish;
pub(crate) mod pusher;
pub(crate) mod webhooks;
