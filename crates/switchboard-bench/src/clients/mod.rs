//! The clients a scenario drives, shared by every scenario: the WebSocket connection
//! ([`ws`]), the subscriber task ([`subscriber`]), the server-API publisher ([`publisher`]) and
//! its HTTP client ([`http`]), the payload they exchange ([`payload`]), the subscribers' wire
//! protocol ([`protocol`]: the node's own or Pusher's, whose connection is [`pusher`]), the reconnect backoff,
//! duration parser and random generator ([`backoff`]), and the fleet of tasks ([`fleet`]).

pub mod backoff;
pub mod fleet;
pub mod http;
pub mod payload;
pub mod protocol;
pub mod publisher;
pub mod pusher;
pub mod subscriber;
pub mod ws;
