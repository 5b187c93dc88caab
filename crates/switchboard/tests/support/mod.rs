//! Test kit for Switchboard's black-box integration tests.
//!
//! Every test starts its own processes (a `redis-server` on a free port, one or more
//! `switchboard` nodes on port 0) and talks to them only over the wire, so a test reads
//! as a story: start Redis, start nodes on it, connect clients, publish, assert what each
//! client saw.
//!
//! Waiting is always on an event (a frame, a status code, a metric value, a Redis
//! answer) polled against a deadline by [`eventually`]; never a bare sleep.

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code, unused_imports)]

pub mod http;
pub mod jwt;
pub mod node;
pub mod raw_ws;
pub mod redis;
pub mod ws;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use self::http::HttpResponse;
pub use self::node::{CliOutput, Node, NodeBuilder, run_switchboard};
pub use self::raw_ws::{RawFrame, RawWs};
pub use self::redis::RedisServer;
pub use self::ws::WsClient;

/// The namespaces most issue-3 tests run with ([`NodeBuilder::namespaces`]); channels
/// outside them get the defaults (no history, no presence, client publish allowed).
pub const NAMESPACES_TOML: &str = r#"
# Everything on.
[namespaces.chat]
history_size = 1000
history_ttl = 300
presence = true
join_leave = true

# History only: a big one, so recovery never falls out of it in a test.
[namespaces.hist]
history_size = 10000
history_ttl = 300

# A short history, to fall out of.
[namespaces.small]
history_size = 5

# Presence only: no history, no join/leave.
[namespaces.pres]
presence = true

# Clients may not publish here; the server API may.
[namespaces.ro]
client_publish = false
"#;

/// How long a test waits for something that should happen "now" (a reply, a push).
pub const RECV_TIMEOUT: Duration = Duration::from_secs(10);

/// How often [`eventually`] re-checks its condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// Polls `check` every [`POLL_INTERVAL`] until it returns `Some`, and returns that value.
///
/// Panics after `timeout` with a message naming `what` was awaited and the last
/// observation `check` reported through `last`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(last) => {
                if tokio::time::Instant::now() >= deadline {
                    panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}");
                }
            }
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// A directory under the system temp dir, removed on drop unless the test is failing
/// (so logs stay for a post-mortem).
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates a fresh, uniquely named directory.
    pub fn new(label: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "switchboard-test-{label}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create temp dir {}: {e}", path.display()));
        TempDir { path }
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("(test failed: kept {})", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A free TCP port on 127.0.0.1: bind port 0, read the port, close.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Decodes base64, accepting the standard and URL-safe alphabets, with or without
/// padding (PROTOCOL.md does not say which alphabet `data_b64` uses).
pub fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for c in text.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// A channel name unique within this test process, so tests never share Redis keys.
pub fn unique_channel(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}-{}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// The `offset` of each message, in order; panics on a message without one.
pub fn offsets(messages: &[serde_json::Value]) -> Vec<u64> {
    messages
        .iter()
        .map(|m| {
            m["offset"]
                .as_u64()
                .unwrap_or_else(|| panic!("message without an offset: {m}"))
        })
        .collect()
}
