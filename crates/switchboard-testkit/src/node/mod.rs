//! A `switchboard` node as a child process, driven only through its listeners: its
//! process here, its HTTP API in `node/api.rs`, its metrics in `node/metrics.rs`.

mod api;
mod metrics;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

use crate::{RedisServer, TempDir};

/// How long a node may take to print its listening line and become ready.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The namespaces [`NodeBuilder::namespaces`] configures; channels outside them get
/// the defaults (no history, no presence, client publish allowed).
const NAMESPACES_TOML: &str = r#"
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

/// The binary under test. Cargo sets `CARGO_BIN_EXE_switchboard` for the `switchboard`
/// package's integration tests, when it builds them and when it runs them; nodes can
/// be started only from those tests.
fn binary() -> PathBuf {
    std::env::var_os("CARGO_BIN_EXE_switchboard")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            panic!(
                "CARGO_BIN_EXE_switchboard is not set: start nodes from the switchboard \
                 package's tests, under `cargo test -p switchboard`"
            )
        })
}

/// Builds a node's command line. By default: `--listen 127.0.0.1:0
/// --internal-listen 127.0.0.1:0 --node-id <id>`, no Redis (in-process backplane),
/// and [`NodeBuilder::start`] waits for `/readyz` 200.
#[derive(Debug)]
pub struct NodeBuilder {
    id: String,
    args: Vec<OsString>,
    envs: Vec<(String, String)>,
    node_id_flag: bool,
    listen_flags: bool,
    api_key: Option<String>,
    config: Option<String>,
}

/// A running node. SIGKILLed on drop; its stderr is printed if the test is failing.
#[derive(Debug)]
pub struct Node {
    id: String,
    child: Child,
    pid: u32,
    // Kept open so a late write to stdout never hits a closed pipe.
    _stdout: BufReader<ChildStdout>,
    public: SocketAddr,
    internal: SocketAddr,
    api_key: Option<String>,
    stderr_path: PathBuf,
    _dir: TempDir,
    exited: Option<ExitStatus>,
}

/// What a short-lived `switchboard` invocation (`--help`, bad config) produced.
#[derive(Debug)]
pub struct CliOutput {
    /// Exit status.
    pub status: ExitStatus,
    /// Everything written to stdout.
    pub stdout: String,
    /// Everything written to stderr.
    pub stderr: String,
}

impl NodeBuilder {
    /// Sets `--redis-url` to the given server.
    pub fn redis(self, redis: &RedisServer) -> NodeBuilder {
        self.args(["--redis-url".to_owned(), redis.url()])
    }

    /// Appends one argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> NodeBuilder {
        self.args.push(arg.into());
        self
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> NodeBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable of the child only.
    pub fn env(mut self, key: &str, value: &str) -> NodeBuilder {
        self.envs.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Do not pass `--node-id` (to test env/TOML precedence).
    pub fn without_node_id_flag(mut self) -> NodeBuilder {
        self.node_id_flag = false;
        self
    }

    /// Do not pass `--listen`/`--internal-listen` (the caller provides them another way).
    pub fn without_listen_flags(mut self) -> NodeBuilder {
        self.listen_flags = false;
        self
    }

    /// Passes `--api-key KEY`, and makes [`Node::api`] send it.
    pub fn api_key(mut self, key: &str) -> NodeBuilder {
        self.api_key = Some(key.to_owned());
        self.args(["--api-key", key])
    }

    /// Writes `toml` to `config.toml` in the node's temp dir and passes `--config` with
    /// its path (namespaces can only be configured this way).
    pub fn config_toml(mut self, toml: &str) -> NodeBuilder {
        self.config = Some(toml.to_owned());
        self
    }

    /// The kit's standard namespaces: `chat` (history, presence, join/leave),
    /// `hist` (a long history), `small` (a history of 5), `pres` (presence only) and
    /// `ro` (no client publish); other channels get the defaults.
    pub fn namespaces(self) -> NodeBuilder {
        self.config_toml(NAMESPACES_TOML)
    }

    /// Spawns the node, reads its listening line and waits until `/readyz` is 200.
    pub async fn start(self) -> Node {
        let dir = TempDir::new(&format!("node-{}", self.id));
        let stderr_path = dir.path().join("stderr.log");
        let stderr_file = std::fs::File::create(&stderr_path).expect("create stderr log");
        let mut cmd = base_command();
        if let Some(toml) = &self.config {
            let path = dir.path().join("config.toml");
            std::fs::write(&path, toml).expect("write config.toml");
            cmd.arg("--config").arg(path);
        }
        if self.listen_flags {
            cmd.args([
                "--listen",
                "127.0.0.1:0",
                "--internal-listen",
                "127.0.0.1:0",
            ]);
        }
        if self.node_id_flag {
            cmd.args(["--node-id", &self.id]);
        }
        cmd.args(&self.args);
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        cmd.stdout(Stdio::piped()).stderr(stderr_file);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", binary().display()));
        let pid = child.id().expect("child pid");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        let read = tokio::time::timeout(START_TIMEOUT, stdout.read_line(&mut line)).await;
        let stderr_text = || std::fs::read_to_string(&stderr_path).unwrap_or_default();
        match read {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => {
                let status = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                panic!(
                    "node {} closed stdout without a listening line (exit: {status:?}); args {:?}; stderr:\n{}",
                    self.id,
                    self.args,
                    stderr_text()
                );
            }
            Err(_) => {
                let _ = child.start_kill();
                panic!(
                    "node {} printed no listening line within {START_TIMEOUT:?}; stderr:\n{}",
                    self.id,
                    stderr_text()
                );
            }
        }
        let (public, internal) = parse_listening_line(&line).unwrap_or_else(|| {
            panic!(
                "unexpected stdout line {line:?}, want `switchboard listening public=ADDR internal=ADDR`"
            )
        });
        let node = Node {
            id: self.id,
            child,
            pid,
            _stdout: stdout,
            public,
            internal,
            api_key: self.api_key,
            stderr_path,
            _dir: dir,
            exited: None,
        };
        node.wait_ready().await;
        node
    }
}

impl Node {
    /// A builder for a node named `id`.
    pub fn builder(id: &str) -> NodeBuilder {
        NodeBuilder {
            id: id.to_owned(),
            args: Vec::new(),
            envs: Vec::new(),
            node_id_flag: true,
            listen_flags: true,
            api_key: None,
            config: None,
        }
    }

    /// Starts a node named `id` with extra `args` and waits until it is ready.
    pub async fn start(id: &str, args: &[&str]) -> Node {
        Node::builder(id).args(args).start().await
    }

    /// Starts a node named `id` on `redis` with extra `args` and waits until ready.
    pub async fn start_on(redis: &RedisServer, id: &str, args: &[&str]) -> Node {
        Node::builder(id).redis(redis).args(args).start().await
    }

    /// The node id it was started with.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The public listener's address.
    pub fn public_addr(&self) -> SocketAddr {
        self.public
    }

    /// The internal listener's address.
    pub fn internal_addr(&self) -> SocketAddr {
        self.internal
    }

    /// `ws://PUBLIC/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.public)
    }

    /// Resident set size in KiB (`VmRSS` of `/proc/PID/status`).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .expect("read /proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS line")
    }

    /// SIGKILLs the node and reaps it.
    pub async fn kill(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.start_kill();
            if let Ok(status) = self.child.wait().await {
                self.exited = Some(status);
            }
        }
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    /// Sends SIGINT.
    pub fn sigint(&self) {
        self.signal("INT");
    }

    /// Waits for the process to exit; panics after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(status) = self.exited {
            return status;
        }
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(Ok(status)) => {
                self.exited = Some(status);
                status
            }
            Ok(Err(e)) => panic!("waiting for node {}: {e}", self.id),
            Err(_) => panic!(
                "node {} did not exit within {timeout:?}; stderr:\n{}",
                self.id,
                self.stderr()
            ),
        }
    }

    /// Everything the node wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    fn signal(&self, name: &str) {
        crate::signal::send(self.pid, name);
    }
}

/// Freezing a node (a process that stops heartbeating without dying).
impl Node {
    /// SIGSTOPs the node.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// SIGCONTs a paused node.
    pub fn resume(&self) {
        self.signal("CONT");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            match self.exited.or_else(|| self.child.try_wait().ok().flatten()) {
                Some(status) => eprintln!("---- node {} had exited: {status} ----", self.id),
                None => eprintln!("---- node {} was still running ----", self.id),
            }
        }
        if self.exited.is_none() {
            let _ = self.child.start_kill();
        }
        if std::thread::panicking() {
            let stderr = self.stderr();
            let tail: Vec<&str> = stderr.lines().rev().take(40).collect();
            eprintln!("---- stderr of node {} (last 40 lines) ----", self.id);
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// Runs the binary to completion with `args` and extra `envs` (10 s limit).
pub async fn run_switchboard(args: &[&str], envs: &[(&str, &str)]) -> CliOutput {
    let mut cmd = base_command();
    cmd.args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", binary().display()));
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let run = async {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let (a, b, status) = tokio::join!(
            stdout.read_to_end(&mut out),
            stderr.read_to_end(&mut err),
            child.wait()
        );
        a.expect("read stdout");
        b.expect("read stderr");
        (status.expect("wait"), out, err)
    };
    match tokio::time::timeout(Duration::from_secs(10), run).await {
        Ok((status, out, err)) => CliOutput {
            status,
            stdout: String::from_utf8_lossy(&out).into_owned(),
            stderr: String::from_utf8_lossy(&err).into_owned(),
        },
        Err(_) => panic!("`switchboard {args:?}` did not exit within 10 s"),
    }
}

/// The binary with a clean environment: no inherited `SWITCHBOARD_*` variable can leak
/// into a test.
fn base_command() -> Command {
    let mut cmd = Command::new(binary());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SWITCHBOARD_") {
            cmd.env_remove(key);
        }
    }
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    cmd
}

/// Parses `switchboard listening public=ADDR internal=ADDR`.
fn parse_listening_line(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let rest = line.trim().strip_prefix("switchboard listening ")?;
    let mut public = None;
    let mut internal = None;
    for part in rest.split_whitespace() {
        if let Some(v) = part.strip_prefix("public=") {
            public = v.parse().ok();
        } else if let Some(v) = part.strip_prefix("internal=") {
            internal = v.parse().ok();
        }
    }
    Some((public?, internal?))
}
