//! A private `redis-server` per test, on a free port, never the system one on 6379.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{TempDir, eventually};

/// A `redis-server` child process. Killed (SIGKILL) on drop.
///
/// The faults a test can cause: [`RedisServer::kill`] (gone), [`RedisServer::restart`]
/// (back, empty or with its data), [`RedisServer::pause`] / [`RedisServer::resume`]
/// (hung: connections open, nothing answered), [`RedisServer::flushall`] (data lost
/// while running).
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: TempDir,
    child: Option<Child>,
    persistent: bool,
    /// A Redis Cluster node (`--cluster-enabled yes`, its `nodes.conf` in `dir`).
    cluster: bool,
}

impl RedisServer {
    /// Starts `redis-server` on a free port and waits until it answers PING.
    ///
    /// Panics with the install command if `redis-server` is not on PATH.
    pub async fn start() -> RedisServer {
        RedisServer::start_with(false).await
    }

    /// Starts a `redis-server` that keeps its data across [`RedisServer::restart`]:
    /// `--appendonly yes --appendfsync always` in its temp dir, so even a SIGKILL loses
    /// nothing that was acknowledged.
    pub async fn start_persistent() -> RedisServer {
        RedisServer::start_with(true).await
    }

    /// Starts a Redis Cluster node (not yet part of a cluster: see
    /// `RedisCluster`), on a free port.
    pub(crate) async fn start_cluster_node() -> RedisServer {
        RedisServer::start_as(false, true).await
    }

    async fn start_with(persistent: bool) -> RedisServer {
        RedisServer::start_as(persistent, false).await
    }

    async fn start_as(persistent: bool, cluster: bool) -> RedisServer {
        let mut server = RedisServer {
            port: 0,
            dir: TempDir::new("redis"),
            child: None,
            persistent,
            cluster,
        };
        // The port is free when picked but may be taken before redis binds it: retry.
        for _ in 0..5 {
            server.port = free_port();
            if server.spawn_and_wait().await {
                return server;
            }
        }
        panic!("redis-server did not come up on any of 5 free ports");
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`, for `--redis-url`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Whether the process runs (not killed, or restarted since).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILLs the server and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server (if running) and starts it again on the same port: empty, or,
    /// for a [`RedisServer::start_persistent`] one, with its data reloaded from the
    /// append-only file.
    pub async fn restart(&mut self) {
        self.kill();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        // The port may linger for a moment after the kill; retry until the new one answers.
        while !self.spawn_and_wait().await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server could not restart on port {} (log: {})",
                self.port,
                self.log_path().display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs one command on a fresh connection and returns its reply.
    pub async fn query<T: ::redis::FromRedisValue>(&self, cmd: &::redis::Cmd) -> T {
        let client = ::redis::Client::open(self.url()).expect("redis url");
        let mut con = tokio::time::timeout(
            Duration::from_secs(5),
            client.get_multiplexed_async_connection(),
        )
        .await
        .expect("timed out connecting to test redis")
        .expect("connect to test redis");
        tokio::time::timeout(Duration::from_secs(5), cmd.query_async::<T>(&mut con))
            .await
            .expect("timed out running a redis command")
            .unwrap_or_else(|e| panic!("redis command {cmd:?} failed: {e}"))
    }

    /// `DBSIZE`: how many keys the server holds.
    pub async fn dbsize(&self) -> i64 {
        self.query(&::redis::cmd("DBSIZE")).await
    }

    /// `PUBSUB NUMSUB switchboard:ch:{CHANNEL}`: how many Redis connections (one per node)
    /// are subscribed to a client channel.
    pub async fn numsub(&self, channel: &str) -> i64 {
        let key = format!("switchboard:ch:{{{channel}}}");
        let (_name, count): (String, i64) = self
            .query(::redis::cmd("PUBSUB").arg("NUMSUB").arg(&key))
            .await;
        count
    }

    /// Waits until `numsub(channel)` equals `want`.
    pub async fn wait_numsub(&self, channel: &str, want: i64) {
        eventually(
            &format!("PUBSUB NUMSUB switchboard:ch:{{{channel}}} == {want}"),
            Duration::from_secs(10),
            || async {
                let n = self.numsub(channel).await;
                if n == want {
                    Ok(())
                } else {
                    Err(format!("{n}"))
                }
            },
        )
        .await
    }

    /// `PUBSUB CHANNELS pattern`.
    pub async fn pubsub_channels(&self, pattern: &str) -> Vec<String> {
        let mut channels: Vec<String> = self
            .query(::redis::cmd("PUBSUB").arg("CHANNELS").arg(pattern))
            .await;
        channels.sort();
        channels
    }

    fn log_path(&self) -> std::path::PathBuf {
        self.dir.path().join("redis.log")
    }

    /// Spawns the server on `self.port`; true once it answers PING, false if it exited.
    async fn spawn_and_wait(&mut self) -> bool {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open redis log");
        let spawned = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(if self.persistent {
                &["--appendonly", "yes", "--appendfsync", "always"][..]
            } else {
                &["--appendonly", "no"][..]
            })
            .args(if self.cluster {
                // A failed master's replica is promoted about a second later.
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "1000",
                    // A replica takes over however long ago it last heard
                    // from its master (a fresh cluster's replica may not
                    // have synced yet when a test kills the master).
                    "--cluster-replica-validity-factor",
                    "0",
                ][..]
            } else {
                &[][..]
            })
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log fd"))
            .stderr(log)
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!("redis-server not found: apt-get install -y redis-server")
            }
            Err(e) => panic!("cannot spawn redis-server: {e}"),
        };
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(_status)) = child.try_wait()
            {
                self.child = None;
                return false;
            }
            if self.ping().await {
                return true;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server on port {} did not answer PING within 10 s (log: {})",
                self.port,
                self.log_path().display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn ping(&self) -> bool {
        let Ok(client) = ::redis::Client::open(self.url()) else {
            return false;
        };
        let attempt = async {
            let mut con = client.get_multiplexed_async_connection().await.ok()?;
            ::redis::cmd("PING")
                .query_async::<String>(&mut con)
                .await
                .ok()
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(1), attempt).await,
            Ok(Some(pong)) if pong == "PONG"
        )
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Faults that leave the process running: frozen (SIGSTOP), or emptied (FLUSHALL).
impl RedisServer {
    /// The server's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .expect("redis-server is not running")
            .id()
    }

    /// SIGSTOPs the server: connections stay open, nothing is answered.
    pub fn pause(&self) {
        crate::signal::send(self.pid(), "STOP");
    }

    /// SIGCONTs a paused server.
    pub fn resume(&self) {
        crate::signal::send(self.pid(), "CONT");
    }

    /// `FLUSHALL`: every key gone, as after a restart without data.
    pub async fn flushall(&self) {
        let _: String = self.query(&::redis::cmd("FLUSHALL")).await;
    }
}

/// A free TCP port on 127.0.0.1: bind port 0, read the port, close.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

#[cfg(test)]
mod tests {
    use super::RedisServer;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_server_starts_dies_and_restarts_on_the_same_port() {
        let mut redis = RedisServer::start().await;
        let port = redis.port();
        assert_ne!(port, 6379, "never the system Redis");
        let pong: String = redis.query(&::redis::cmd("PING")).await;
        assert_eq!(pong, "PONG");
        assert_eq!(redis.numsub("nobody").await, 0);

        redis.kill();
        let refused = tokio::net::TcpStream::connect(("127.0.0.1", port)).await;
        assert!(refused.is_err(), "killed redis still accepts connections");

        redis.restart().await;
        assert_eq!(redis.port(), port);
        let pong: String = redis.query(&::redis::cmd("PING")).await;
        assert_eq!(pong, "PONG");
    }
}
