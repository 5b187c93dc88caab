//! The operations a client or a server-API caller asks of the node — publish,
//! history, presence, user send, disconnect — each written once. The
//! WebSocket command handler (`session::commands`) and the HTTP API
//! (`http::api`) both call these, after `policy` has let the request through;
//! errors here are the backplane's (the caller answers `unavailable`).
//! `webhooks` delivers a Pusher app's webhooks.

pub(crate) mod history;
pub(crate) mod presence;
pub(crate) mod publish;
// Not called by the node until the Pusher endpoint is wired in (issue 12).
#[allow(dead_code)]
pub(crate) mod webhooks;
