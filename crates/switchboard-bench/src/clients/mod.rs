//! The clients a scenario drives, shared by every scenario: the WebSocket connection
//! ([`ws`]), the subscriber task ([`subscriber`]), the server-API publisher ([`publisher`]) and
//! its HTTP client ([`http`]), the payload they exchange ([`payload`]), the reconnect backoff,
//! duration parser and random generator ([`backoff`]), and the fleet of tasks ([`fleet`]).

pub mod backoff;
pub mod fleet;
pub mod http;
pub mod payload;
pub mod publisher;
pub mod subscriber;
pub mod ws;
