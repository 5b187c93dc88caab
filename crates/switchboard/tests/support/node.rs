//! A `switchboard` node as a child process, driven only through its listeners.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

use super::http::{self, HttpResponse};
use super::redis::RedisServer;
use super::{TempDir, eventually};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

/// How long a node may take to print its listening line and become ready.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

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
    wait_ready: bool,
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

    /// Do not wait for `/readyz` 200 after the listening line.
    pub fn no_wait_ready(mut self) -> NodeBuilder {
        self.wait_ready = false;
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

    /// The kit's standard namespaces, [`super::NAMESPACES_TOML`].
    pub fn namespaces(self) -> NodeBuilder {
        self.config_toml(super::NAMESPACES_TOML)
    }

    /// Spawns the node, reads its listening line and (by default) waits until ready.
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
            .unwrap_or_else(|e| panic!("cannot spawn {BIN}: {e}"));
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
        if self.wait_ready {
            node.wait_ready().await;
        }
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
            wait_ready: true,
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

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.pid
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

    /// An HTTP request to the internal listener, with the node's API key if it has one.
    pub async fn api(&self, method: &str, path: &str, body: Option<&Value>) -> HttpResponse {
        let auth = self.api_key.as_ref().map(|k| format!("apikey {k}"));
        let mut headers = Vec::new();
        if let Some(auth) = &auth {
            headers.push(("Authorization", auth.as_str()));
        }
        let body = body.map(|b| serde_json::to_vec(b).expect("serialize body"));
        http::request(self.internal, method, path, &headers, body.as_deref()).await
    }

    /// A raw HTTP request to the internal listener (no automatic API key).
    pub async fn internal_raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> HttpResponse {
        http::request(self.internal, method, path, headers, body).await
    }

    /// A raw HTTP request to the public listener.
    pub async fn public_raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> HttpResponse {
        http::request(self.public, method, path, headers, body).await
    }

    /// `POST /api/v1/publish`, asserting 200; returns the body.
    pub async fn publish(&self, channel: &str, data: Value) -> Value {
        let body = serde_json::json!({ "channel": channel, "data": data });
        let response = self.api("POST", "/api/v1/publish", Some(&body)).await;
        assert_eq!(
            response.status,
            200,
            "POST /api/v1/publish {body} on node {}: {}",
            self.id,
            response.text()
        );
        response.json()
    }

    /// `POST /api/v1/publish` on a channel with history, asserting 200; returns the
    /// answer's `(offset, epoch)`.
    pub async fn publish_offset(&self, channel: &str, data: Value) -> (u64, String) {
        let answer = self.publish(channel, data).await;
        let offset = answer["offset"].as_u64().unwrap_or_else(|| {
            panic!(
                "publish to {channel} on node {}: answer without offset: {answer}",
                self.id
            )
        });
        let epoch = answer["epoch"].as_str().unwrap_or_else(|| {
            panic!(
                "publish to {channel} on node {}: answer without epoch: {answer}",
                self.id
            )
        });
        (offset, epoch.to_owned())
    }

    /// `GET /api/v1/channels/{channel}/history` with a query string (`""` or
    /// `"?limit=3"`...).
    pub async fn history_api(&self, channel: &str, query: &str) -> HttpResponse {
        self.api(
            "GET",
            &format!("/api/v1/channels/{channel}/history{query}"),
            None,
        )
        .await
    }

    /// `GET /api/v1/channels/{channel}/presence`.
    pub async fn presence_api(&self, channel: &str) -> HttpResponse {
        self.api("GET", &format!("/api/v1/channels/{channel}/presence"), None)
            .await
    }

    /// `POST /api/v1/send` `{"user":user,"data":data}`.
    pub async fn send_to_user(&self, user: &str, data: Value) -> HttpResponse {
        let body = serde_json::json!({ "user": user, "data": data });
        self.api("POST", "/api/v1/send", Some(&body)).await
    }

    /// `POST /api/v1/disconnect` with `body` (`{"user":U}` or `{"conn":ID}`).
    pub async fn disconnect_api(&self, body: Value) -> HttpResponse {
        self.api("POST", "/api/v1/disconnect", Some(&body)).await
    }

    /// `GET /api/v1/cluster` node ids, sorted.
    pub async fn cluster_ids(&self) -> Vec<String> {
        let response = self.api("GET", "/api/v1/cluster", None).await;
        assert_eq!(
            response.status,
            200,
            "GET /api/v1/cluster: {}",
            response.text()
        );
        let body = response.json();
        let mut ids: Vec<String> = body["nodes"]
            .as_array()
            .unwrap_or_else(|| panic!("cluster body without nodes array: {body}"))
            .iter()
            .map(|n| {
                n["id"]
                    .as_str()
                    .unwrap_or_else(|| panic!("node entry without id: {n}"))
                    .to_owned()
            })
            .collect();
        ids.sort();
        ids
    }

    /// The status of `GET /readyz`, or `None` if the listener does not answer.
    pub async fn readyz_status(&self) -> Option<u16> {
        match tokio::time::timeout(
            http::HTTP_TIMEOUT,
            http::try_request(self.internal, "GET", "/readyz", &[], None),
        )
        .await
        {
            Ok(Ok(response)) => Some(response.status),
            _ => None,
        }
    }

    /// Waits until `/readyz` answers `want`.
    pub async fn wait_readyz(&self, want: u16, timeout: Duration) {
        eventually(
            &format!("node {} /readyz == {want}", self.id),
            timeout,
            || async {
                match self.readyz_status().await {
                    Some(s) if s == want => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            },
        )
        .await
    }

    /// Waits until `/readyz` is 200.
    pub async fn wait_ready(&self) {
        self.wait_readyz(200, START_TIMEOUT).await
    }

    /// The Prometheus text of `GET /metrics`.
    pub async fn metrics_text(&self) -> String {
        let response = self.internal_raw("GET", "/metrics", &[], None).await;
        assert_eq!(response.status, 200, "GET /metrics: {}", response.text());
        response.text()
    }

    /// The sum of all samples of metric `name` (0 if it has none yet).
    pub async fn metric(&self, name: &str) -> f64 {
        sum_samples(&self.metrics_text().await, name, &[])
    }

    /// The sum of the samples of `name` whose labels include all of `labels`.
    pub async fn metric_with(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        sum_samples(&self.metrics_text().await, name, labels)
    }

    /// Whether metric `name` has at least one sample.
    pub async fn has_metric(&self, name: &str) -> bool {
        parse_samples(&self.metrics_text().await)
            .iter()
            .any(|s| s.name == name)
    }

    /// Waits until `check(value of metric name)` holds.
    pub async fn wait_metric(&self, name: &str, what: &str, check: impl Fn(f64) -> bool) -> f64 {
        self.wait_metric_with(name, &[], what, check).await
    }

    /// Waits until `check(value of metric name{labels})` holds.
    pub async fn wait_metric_with(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        what: &str,
        check: impl Fn(f64) -> bool,
    ) -> f64 {
        eventually(
            &format!("node {}: {name}{labels:?} {what}", self.id),
            Duration::from_secs(10),
            || async {
                let v = self.metric_with(name, labels).await;
                if check(v) { Ok(v) } else { Err(format!("{v}")) }
            },
        )
        .await
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

    /// Whether the process has exited (without blocking).
    pub fn has_exited(&mut self) -> bool {
        if self.exited.is_some() {
            return true;
        }
        match self.child.try_wait() {
            Ok(Some(status)) => {
                self.exited = Some(status);
                true
            }
            _ => false,
        }
    }

    /// Everything the node wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {} failed", self.pid);
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
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {BIN}: {e}"));
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
    let mut cmd = Command::new(BIN);
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

/// One sample of Prometheus text.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Metric name (with any `_bucket`/`_sum`/`_count` suffix).
    pub name: String,
    /// Label pairs.
    pub labels: Vec<(String, String)>,
    /// Value.
    pub value: f64,
}

/// Parses Prometheus text exposition into samples, skipping comments.
pub fn parse_samples(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, labels, rest) = match line.find(['{', ' ']) {
            Some(i) if line.as_bytes()[i] == b'{' => {
                let Some(close) = line.rfind('}') else {
                    continue;
                };
                (
                    &line[..i],
                    parse_labels(&line[i + 1..close]),
                    &line[close + 1..],
                )
            }
            Some(i) => (&line[..i], Vec::new(), &line[i..]),
            None => continue,
        };
        let Some(value) = rest.split_whitespace().next() else {
            continue;
        };
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => match v.parse() {
                Ok(v) => v,
                Err(_) => continue,
            },
        };
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    samples
}

fn sum_samples(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    parse_samples(text)
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
        })
        .map(|s| s.value)
        .sum()
}

fn parse_labels(text: &str) -> Vec<(String, String)> {
    let mut labels = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(',') | Some(' ')) {
            chars.next();
        }
        let mut key = String::new();
        for c in chars.by_ref() {
            if c == '=' {
                break;
            }
            key.push(c);
        }
        if key.is_empty() {
            return labels;
        }
        if chars.next() != Some('"') {
            return labels;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => break,
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.push((key.trim().to_owned(), value));
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

    /// The exit code, once the process has exited with one.
    pub fn exit_code(&mut self) -> Option<i32> {
        if self.has_exited() {
            self.exited.and_then(|s| s.code())
        } else {
            None
        }
    }
}
