//! What Switchboard's integration tests start and drive.
//!
//! Every test starts its own processes (a `redis-server` on a free port, one or more
//! `switchboard` nodes on port 0) and talks to them only over the wire, so a test reads
//! as a story: start Redis, start nodes on it, connect clients, publish, assert what each
//! client saw.
//!
//! - [`RedisServer`]: a private `redis-server` that a test can kill, restart (with or
//!   without its data), pause, resume and flush. Used by the backplane's tests and the
//!   binary's.
//! - With the `node` feature, for the `switchboard` package's tests: `Node` (the
//!   binary as a child process) and the clients that talk to it: `WsClient` (a
//!   well-behaved WebSocket peer), `RawWs` (a misbehaving one), `http` (the internal
//!   API, probes, metrics) and `jwt` (tokens to log in with).
//!
//! Waiting is on an event (a frame, a status code, a metric value, a Redis answer),
//! polled against a deadline by [`eventually`] where there is nothing to block on.

mod redis;
mod redis_cluster;
mod signal;
mod temp_dir;
mod wait;

pub use self::redis::RedisServer;
pub use self::redis_cluster::{ClusterNode, RedisCluster, SLOTS};
pub use self::temp_dir::TempDir;
pub use self::wait::eventually;

#[cfg(feature = "node")]
pub mod http;
#[cfg(feature = "node")]
pub mod jwt;
#[cfg(feature = "node")]
mod messages;
#[cfg(feature = "node")]
pub mod node;
#[cfg(feature = "node")]
pub mod raw_ws;
#[cfg(feature = "node")]
pub mod ws;

#[cfg(feature = "node")]
pub use self::{
    http::HttpResponse,
    messages::{decode_base64, offsets},
    node::{CliOutput, Node, NodeBuilder, run_switchboard},
    raw_ws::RawWs,
    ws::WsClient,
};

/// How long a test waits for something that should happen "now" (a reply, a push).
pub const RECV_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A channel name unique within this test process, so tests never share Redis keys.
pub fn unique_channel(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}-{}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
