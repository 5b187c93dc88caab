//! The `chaos` scenario: a bounded fault soak of a three-node cluster on one Redis, ending in
//! one line of accounting.
//!
//! The generator owns every process of the run: it starts `redis-server` (append-only file,
//! `appendfsync always`, in `--work-dir`) and `--nodes` Switchboard nodes on fixed free ports,
//! and kills, pauses and restarts them on a seeded schedule while publishers and recovering
//! subscribers run. Every child is started with `kill_on_drop`, its pid is appended to
//! `WORK/pids` (so a wrapper script can clean up even after a SIGKILL of the generator), and
//! everything is stopped before the report, on Ctrl-C and on SIGTERM.
//!
//! # Traffic
//!
//! - Channels: `h:0..` in a namespace with history, `p:0..` without.
//! - API publishers: `--publishers` tasks share `--rate`, each publishing through a random
//!   node's `POST /api/v1/publish`, waiting for each answer; a 200 is an acknowledgement.
//! - Client publishers: `--ws-publishers` WebSocket connections sending `publish` commands at
//!   `--ws-rate` each; a `published` reply is an acknowledgement. They reconnect round robin.
//! - Every payload is `{"seq":N,"p":PUBLISHER,...}`: (publisher, seq) names the message.
//! - Subscribers: `--subscribers` connections, subscriber `i` on channel `i % channels`, first
//!   on node `i % nodes`. When their connection ends they reconnect to the next node round
//!   robin (jittered exponential backoff) and subscribe again, on a history channel with
//!   `recover: {epoch, offset}` from the last message they saw, as `client.js` does.
//!
//! # Faults
//!
//! One at a time, seeded (`--seed`, printed first), each kind at least once before any
//! repeats: `redis-restart` (SIGKILL, down for a while, restart with its data),
//! `redis-wipe` (SIGKILL, restart empty), `redis-pause` (SIGSTOP, then SIGCONT),
//! `pubsub-kill` (`CLIENT KILL TYPE pubsub`: every node's pub/sub link drops),
//! `node-kill` (SIGKILL a node, restart it under the same id and ports) and `burst` (a few
//! hundred concurrent publishes).
//!
//! # Accounting
//!
//! Once the faults stop, the cluster is healed, every subscriber is subscribed again, and a
//! marker message is published on every channel; counting waits until every subscriber has
//! its channel's marker (or `--settle-timeout`). Then, for every subscriber S and every
//! acknowledged message M of S's channel whose publish started after S's first `subscribed`
//! reply (see [`account`]):
//!
//! - **delivered**: S received M live;
//! - **repaired**: S received M in the replay that follows a `subscribed` reply with
//!   `recovered: true` (offsets up to that reply's offset);
//! - **signalled**: S did not receive M, but was told it may have missed something: a signal
//!   happened between the start of M's publish and the moment S received the first message
//!   published after M was acknowledged (the end of the run if none). Signals: a `subscribed`
//!   reply with `recovered: false`, a message or reply with a new epoch, a
//!   `{"type":"missed","channel":C,"reason":R}` push, and, on channels without history only,
//!   a lost connection: from the moment S saw it drop until its next `subscribed` reply;
//! - **lost**: none of these.
//!
//! Duplicates (S received M twice) and order violations (S received M after a message whose
//! publish started after M was acknowledged; on history channels also an offset that is not
//! the last one plus one, unless a signal came in between) are failures too.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::{Mutex, mpsc};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::http::{ApiClient, ApiEndpoint};
use crate::payload::{self, BodyBuilder, Stamp};
use crate::recover::{Backoff, Rng, parse_duration};
use crate::setup::{self, Start};
use crate::subscriber::{self, Ws};

/// Options of `switchboard-bench chaos`.
#[derive(Debug, Clone, clap::Args)]
pub struct Opts {
    /// The node binary (a release build: `target/release/switchboard`).
    #[arg(long, value_name = "PATH")]
    pub switchboard_bin: PathBuf,
    /// The Redis server binary.
    #[arg(long, value_name = "PATH", default_value = "redis-server")]
    pub redis_server: PathBuf,
    /// An empty directory for Redis's data, the nodes' config and every log.
    #[arg(long, value_name = "DIR")]
    pub work_dir: PathBuf,
    /// Seconds of publishing under faults.
    #[arg(long, default_value_t = 180.0)]
    pub duration: f64,
    /// Seed of the fault schedule and of every random choice (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Fault kinds: `all`, `none`, or a comma list of redis-restart, redis-wipe,
    /// redis-pause, pubsub-kill, node-kill, burst.
    #[arg(long, default_value = "all")]
    pub faults: String,
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Number of subscribers.
    #[arg(long, default_value_t = 40)]
    pub subscribers: usize,
    /// Channels with history (`h:0..`).
    #[arg(long, default_value_t = 6)]
    pub history_channels: usize,
    /// Channels without history (`p:0..`).
    #[arg(long, default_value_t = 4)]
    pub plain_channels: usize,
    /// Server-API publishes per second, all API publishers together.
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// Server-API publisher tasks.
    #[arg(long, default_value_t = 4)]
    pub publishers: u32,
    /// WebSocket publishers (client `publish` commands).
    #[arg(long, default_value_t = 2)]
    pub ws_publishers: u32,
    /// Publishes per second of each WebSocket publisher.
    #[arg(long, default_value_t = 10.0)]
    pub ws_rate: f64,
    /// Size in bytes of each published `data` object.
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// `history_size` of the history namespace.
    #[arg(long, default_value_t = 1000)]
    pub history_size: u32,
    /// `history_ttl` (seconds) of the history namespace.
    #[arg(long, default_value_t = 600)]
    pub history_ttl: u32,
    /// Seconds of publishing before the first fault.
    #[arg(long, default_value_t = 3.0)]
    pub warmup: f64,
    /// Shortest pause between two faults.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub gap_min: Duration,
    /// Longest pause between two faults.
    #[arg(long, default_value = "6s", value_parser = parse_duration)]
    pub gap_max: Duration,
    /// Longest outage (a process down or paused); each one is uniform in 0.5 s to this.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub outage_max: Duration,
    /// Messages of one `burst` fault.
    #[arg(long, default_value_t = 200)]
    pub burst: u64,
    /// Time allowed for one publish to be answered.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub publish_timeout: Duration,
    /// Time allowed for the cluster to settle after the faults: for every subscriber to be
    /// subscribed again, and then for every subscriber to receive the final marker.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub settle_timeout: Duration,
    /// Lost messages (and other failures) described in detail.
    #[arg(long, default_value_t = 5)]
    pub details: usize,
    /// `--log-level` of the nodes.
    #[arg(long, default_value = "warn")]
    pub node_log_level: String,
    /// Print the result as one JSON object too (the last line of stdout).
    #[arg(long)]
    pub json: bool,
}

// ---------------------------------------------------------------------------------------
// Faults and their schedule

/// A kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    /// SIGKILL Redis, keep it down for the outage, restart it with its data (AOF).
    RedisRestart,
    /// SIGKILL Redis, keep it down for the outage, restart it without data.
    RedisWipe,
    /// SIGSTOP Redis for the outage, then SIGCONT.
    RedisPause,
    /// `CLIENT KILL TYPE pubsub`: every node's pub/sub connection is closed.
    PubsubKill,
    /// SIGKILL a node, keep it down for the outage, restart it with the same id and ports.
    NodeKill,
    /// `--burst` publishes, 8 at a time, as fast as the nodes answer.
    Burst,
}

impl FaultKind {
    /// Every kind, in a fixed order.
    pub const ALL: [FaultKind; 6] = [
        FaultKind::RedisRestart,
        FaultKind::RedisWipe,
        FaultKind::RedisPause,
        FaultKind::PubsubKill,
        FaultKind::NodeKill,
        FaultKind::Burst,
    ];

    /// The name used in `--faults` and in the report.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::RedisRestart => "redis-restart",
            FaultKind::RedisWipe => "redis-wipe",
            FaultKind::RedisPause => "redis-pause",
            FaultKind::PubsubKill => "pubsub-kill",
            FaultKind::NodeKill => "node-kill",
            FaultKind::Burst => "burst",
        }
    }
}

/// Parses `--faults`: `all`, `none`, or a comma list of kind names.
pub fn parse_faults(s: &str) -> anyhow::Result<Vec<FaultKind>> {
    match s.trim() {
        "all" => return Ok(FaultKind::ALL.to_vec()),
        "none" | "" => return Ok(Vec::new()),
        _ => {}
    }
    let mut kinds = Vec::new();
    for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let Some(k) = FaultKind::ALL.iter().find(|k| k.name() == name) else {
            bail!(
                "--faults: unknown fault {name:?} (known: all, none, {})",
                FaultKind::ALL.map(FaultKind::name).join(", ")
            );
        };
        if !kinds.contains(k) {
            kinds.push(*k);
        }
    }
    Ok(kinds)
}

/// One fault of the schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Planned {
    /// When it starts, from the start of publishing.
    pub at: Duration,
    /// Its kind.
    pub kind: FaultKind,
    /// How long the process stays down or paused (unused by `pubsub-kill` and `burst`).
    pub outage: Duration,
    /// Which node (`node-kill`).
    pub node: usize,
}

/// The fault schedule of a run: from `warmup` on, a fault every `gap_min..gap_max`, each
/// ending (by plan) before `duration`. The kinds are dealt from a shuffled deck of `kinds`,
/// reshuffled when empty, so every kind comes once before any comes twice.
pub fn schedule(
    seed: u64,
    kinds: &[FaultKind],
    duration: Duration,
    warmup: Duration,
    gap: (Duration, Duration),
    outage_max: Duration,
    nodes: usize,
) -> Vec<Planned> {
    let mut plan = Vec::new();
    if kinds.is_empty() {
        return plan;
    }
    let mut rng = Rng::new(seed ^ 0xC4A0_5EED);
    let outage_min = Duration::from_millis(500).min(outage_max);
    let mut deck: Vec<FaultKind> = Vec::new();
    let mut t = warmup;
    // Bounded: each step moves `t` forward by at least 100 ms.
    loop {
        let outage = outage_min + (outage_max - outage_min).mul_f64(rng.unit());
        if t + outage > duration {
            break;
        }
        if deck.is_empty() {
            deck = kinds.to_vec();
            // Fisher-Yates with the seeded generator.
            for i in (1..deck.len()).rev() {
                let j = ((rng.unit() * (i + 1) as f64) as usize).min(i);
                deck.swap(i, j);
            }
        }
        let kind = deck.pop().unwrap_or(FaultKind::Burst);
        let node = ((rng.unit() * nodes as f64) as usize).min(nodes.saturating_sub(1));
        plan.push(Planned {
            at: t,
            kind,
            outage,
            node,
        });
        let pause = gap.0 + gap.1.saturating_sub(gap.0).mul_f64(rng.unit());
        t += outage + pause.max(Duration::from_millis(100));
    }
    plan
}

/// A fault as it happened.
#[derive(Debug, Clone)]
pub struct FaultRecord {
    /// Its kind.
    pub kind: FaultKind,
    /// What it hit (`redis`, a node id, ...) and how it went.
    pub note: String,
    /// Start, µs since the start of the run.
    pub start_us: u64,
    /// End (the process is back, or the burst is over), µs since the start of the run.
    pub end_us: u64,
}

// ---------------------------------------------------------------------------------------
// Processes

/// Microseconds since the start of the run: the one clock of every record.
#[derive(Debug, Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn us(self) -> u64 {
        u64::try_from(self.0.elapsed().as_micros()).unwrap_or(u64::MAX)
    }
}

struct NodeSpec {
    id: String,
    ws: u16,
    api: u16,
}

/// Redis and the nodes, owned by the generator.
struct Cluster {
    work: PathBuf,
    node_bin: PathBuf,
    redis_bin: PathBuf,
    config: PathBuf,
    log_level: String,
    redis_port: u16,
    specs: Vec<NodeSpec>,
    redis: Option<Child>,
    redis_paused: bool,
    nodes: Vec<Option<Child>>,
    pids: std::fs::File,
}

/// A free TCP port on 127.0.0.1 (bound, read, released).
fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn append(path: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

/// Sends `args` to Redis as one RESP command and returns the first line of the reply.
async fn redis_command(port: u16, args: &[&str]) -> anyhow::Result<String> {
    let exchange = async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            let _ = write!(req, "${}\r\n{a}\r\n", a.len());
        }
        s.write_all(req.as_bytes()).await?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).await?;
        anyhow::Ok(line.trim_end().to_owned())
    };
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within 2 s")))
}

/// Sends signal `sig` (`KILL`, `STOP`, `CONT`) to `pid`.
async fn signal(pid: u32, sig: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .await
        .with_context(|| format!("running kill -{sig} {pid}"))?;
    ensure!(status.success(), "kill -{sig} {pid}: {status}");
    Ok(())
}

impl Cluster {
    fn new(opts: &Opts) -> anyhow::Result<Self> {
        let work = opts.work_dir.clone();
        std::fs::create_dir_all(work.join("redis-data"))
            .with_context(|| format!("creating {}", work.display()))?;
        let config = work.join("switchboard.toml");
        std::fs::write(
            &config,
            format!(
                "[namespaces.h]\nhistory_size = {}\nhistory_ttl = {}\n",
                opts.history_size, opts.history_ttl
            ),
        )
        .with_context(|| format!("writing {}", config.display()))?;
        let mut specs = Vec::new();
        for i in 0..opts.nodes {
            specs.push(NodeSpec {
                id: format!("chaos-{}", (b'a' + (i % 26) as u8) as char),
                ws: free_port()?,
                api: free_port()?,
            });
        }
        Ok(Self {
            pids: append(&work.join("pids"))?,
            node_bin: opts.switchboard_bin.clone(),
            redis_bin: opts.redis_server.clone(),
            log_level: opts.node_log_level.clone(),
            redis_port: free_port()?,
            nodes: specs.iter().map(|_| None).collect(),
            specs,
            config,
            work,
            redis: None,
            redis_paused: false,
        })
    }

    fn ws_urls(&self) -> Vec<Arc<str>> {
        self.specs
            .iter()
            .map(|s| Arc::from(format!("ws://127.0.0.1:{}/ws", s.ws)))
            .collect()
    }

    fn api_endpoints(&self) -> anyhow::Result<Vec<ApiEndpoint>> {
        self.specs
            .iter()
            .map(|s| ApiEndpoint::parse(&format!("http://127.0.0.1:{}", s.api), None))
            .collect()
    }

    fn note_pid(&mut self, child: &Child) {
        if let Some(pid) = child.id() {
            use std::io::Write as _;
            let _ = writeln!(self.pids, "{pid}");
        }
    }

    /// Starts Redis (emptying its data directory first when `wipe`) and waits for PONG.
    async fn start_redis(&mut self, wipe: bool) -> anyhow::Result<()> {
        let data = self.work.join("redis-data");
        if wipe {
            std::fs::remove_dir_all(&data).context("emptying Redis's data directory")?;
            std::fs::create_dir_all(&data)?;
        }
        let log = append(&self.work.join("redis.log"))?;
        let child = Command::new(&self.redis_bin)
            .args([
                "--port",
                &self.redis_port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.redis_bin.display()))?;
        self.note_pid(&child);
        self.redis = Some(child);
        self.redis_paused = false;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = redis_command(self.redis_port, &["PING"]).await
                && r == "+PONG"
            {
                return Ok(());
            }
            if let Some(c) = self.redis.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                bail!(
                    "redis-server exited ({status}): see {}/redis.log",
                    self.work.display()
                );
            }
            ensure!(
                Instant::now() < deadline,
                "redis-server did not answer PING within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn kill_redis(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.redis.take() {
            c.start_kill().context("SIGKILL redis-server")?;
            c.wait().await?;
        }
        self.redis_paused = false;
        Ok(())
    }

    fn redis_pid(&self) -> anyhow::Result<u32> {
        self.redis
            .as_ref()
            .and_then(Child::id)
            .context("redis-server is not running")
    }

    async fn pause_redis(&mut self) -> anyhow::Result<()> {
        signal(self.redis_pid()?, "STOP").await?;
        self.redis_paused = true;
        Ok(())
    }

    async fn resume_redis(&mut self) -> anyhow::Result<()> {
        if self.redis_paused {
            signal(self.redis_pid()?, "CONT").await?;
            self.redis_paused = false;
        }
        Ok(())
    }

    /// Starts node `i` and waits until its `/readyz` answers 200.
    async fn start_node(&mut self, i: usize) -> anyhow::Result<()> {
        let spec = &self.specs[i];
        let out = append(&self.work.join(format!("{}.out", spec.id)))?;
        let err = append(&self.work.join(format!("{}.log", spec.id)))?;
        let child = Command::new(&self.node_bin)
            .arg("--redis-url")
            .arg(format!("redis://127.0.0.1:{}", self.redis_port))
            .args(["--node-id", &spec.id])
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", spec.ws))
            .arg("--internal-listen")
            .arg(format!("127.0.0.1:{}", spec.api))
            .arg("--config")
            .arg(&self.config)
            .args(["--log-level", &self.log_level])
            // Every client connects from 127.0.0.1: the per-IP default (50/s) would refuse
            // the reconnects after a node dies.
            .args(["--ip-connect-rate", "100000"])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.node_bin.display()))?;
        let id = spec.id.clone();
        let endpoint = ApiEndpoint::parse(&format!("http://127.0.0.1:{}", spec.api), None)?;
        self.note_pid(&child);
        self.nodes[i] = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut c = ApiClient::new(endpoint.clone(), Duration::from_millis(500));
            if let Ok((status, _)) = c.get("/readyz").await
                && status.is_success()
            {
                return Ok(());
            }
            if let Some(c) = self.nodes[i].as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                self.nodes[i] = None;
                bail!(
                    "node {id} exited ({status}): see {}/{id}.log",
                    self.work.display()
                );
            }
            ensure!(
                Instant::now() < deadline,
                "node {id} not ready within 20 s: see {}/{id}.log",
                self.work.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn kill_node(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(mut c) = self.nodes[i].take() {
            c.start_kill().context("SIGKILL node")?;
            c.wait().await?;
        }
        Ok(())
    }

    /// Redis running and not paused, every node running; retried a few times.
    async fn heal(&mut self) -> anyhow::Result<()> {
        let mut last = None;
        for _ in 0..5 {
            match self.heal_once().await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    eprintln!("chaos: healing the cluster: {e:#}; retrying");
                    last = Some(e);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("heal failed")))
    }

    async fn heal_once(&mut self) -> anyhow::Result<()> {
        self.resume_redis().await?;
        if self.redis.is_none() {
            self.start_redis(false).await?;
        }
        for i in 0..self.nodes.len() {
            let exited = match self.nodes[i].as_mut() {
                Some(c) => c.try_wait().ok().flatten().is_some(),
                None => true,
            };
            if exited {
                self.nodes[i] = None;
                self.start_node(i).await?;
            }
        }
        Ok(())
    }

    /// Waits until every node's `/readyz` answers 200 (its backplane is connected), up to
    /// `timeout`; says which nodes were not ready.
    async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        for spec in &self.specs {
            let endpoint = ApiEndpoint::parse(&format!("http://127.0.0.1:{}", spec.api), None)?;
            loop {
                let mut c = ApiClient::new(endpoint.clone(), Duration::from_millis(500));
                match c.get("/readyz").await {
                    Ok((status, _)) if status.is_success() => break,
                    _ if Instant::now() >= deadline => {
                        bail!("node {} not ready after the faults", spec.id)
                    }
                    _ => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        }
        Ok(())
    }

    /// Stops everything (nodes first), waiting for each process.
    async fn shutdown(&mut self) {
        for i in 0..self.nodes.len() {
            let _ = self.kill_node(i).await;
        }
        let _ = self.kill_redis().await;
    }
}

// ---------------------------------------------------------------------------------------
// Publishers

/// One publish attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// Channel index.
    pub channel: u16,
    /// Node the publish went to.
    pub node: u8,
    /// Through a WebSocket `publish` command (else the server API).
    pub client: bool,
    /// When the publish was sent, µs since the start of the run.
    pub start_us: u64,
    /// When it was acknowledged; `None` if it was not (error, refusal, no answer).
    pub ack_us: Option<u64>,
    /// The offset the acknowledgement named, on a channel with history.
    pub offset: Option<u64>,
}

/// Everything one publisher sent: `sent[k]` is seq `k + 1`.
#[derive(Debug, Clone, Default)]
pub struct PubLog {
    /// Publisher id (`"p"` in the payload).
    pub id: u32,
    /// Every attempt, by seq.
    pub sent: Vec<Sent>,
    /// Refusals and failures by kind (`HTTP 503`, `transport`, `error unavailable`...).
    pub errors: BTreeMap<String, u64>,
}

/// A message's name: publisher id and seq in one number.
pub fn key(publisher: u32, seq: u64) -> u64 {
    (u64::from(publisher) << 40) | (seq & ((1 << 40) - 1))
}

/// The publisher and seq of a [`key`].
pub fn unkey(k: u64) -> (u32, u64) {
    ((k >> 40) as u32, k & ((1 << 40) - 1))
}

/// The publisher id of the final markers.
const MARKER_PUBLISHER: u32 = 9_999;
/// Burst publishers get ids from here on.
const BURST_PUBLISHERS: u32 = 1_000;
/// Client (WebSocket) publishers get ids from here on.
const WS_PUBLISHERS: u32 = 500;

/// What every publisher shares.
struct PubShared {
    clock: Clock,
    channels: Arc<Vec<Chan>>,
    bodies: Vec<BodyBuilder>,
    endpoints: Vec<ApiEndpoint>,
    timeout: Duration,
}

/// A channel of the run.
#[derive(Debug, Clone)]
pub struct Chan {
    /// Its name.
    pub name: String,
    /// Whether its namespace keeps history.
    pub history: bool,
}

/// Publishes through the server API: at `rate` per second (or back to back when `None`)
/// until `end` or `count` publishes, each to a random node, channels in turn.
async fn api_publisher(
    id: u32,
    rate: Option<f64>,
    count: Option<u64>,
    end: Instant,
    shared: Arc<PubShared>,
    seed: u64,
) -> PubLog {
    let mut log = PubLog {
        id,
        ..PubLog::default()
    };
    let mut clients: Vec<ApiClient> = shared
        .endpoints
        .iter()
        .map(|e| ApiClient::new(e.clone(), shared.timeout))
        .collect();
    let mut rng = Rng::new(seed ^ u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut tick = rate.map(|r| {
        let mut t = tokio::time::interval(Duration::from_secs_f64(1.0 / r));
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        t
    });
    let n = shared.channels.len();
    while Instant::now() < end && count.is_none_or(|c| (log.sent.len() as u64) < c) {
        if let Some(t) = tick.as_mut() {
            tokio::select! {
                _ = t.tick() => {},
                _ = tokio::time::sleep_until(end) => break,
            }
        }
        let seq = log.sent.len() as u64 + 1;
        let channel = ((seq + u64::from(id)) % n as u64) as usize;
        let node = ((rng.unit() * clients.len() as f64) as usize).min(clients.len() - 1);
        let (entry, error) = publish_once(&shared, &mut clients[node], id, seq, channel).await;
        log.sent.push(Sent {
            node: node as u8,
            ..entry
        });
        if let Some(e) = error {
            *log.errors.entry(e).or_default() += 1;
        }
    }
    log
}

/// One server-API publish of seq `seq` on `channel`; the record and, if not acknowledged,
/// why.
async fn publish_once(
    shared: &PubShared,
    client: &mut ApiClient,
    id: u32,
    seq: u64,
    channel: usize,
) -> (Sent, Option<String>) {
    let start_us = shared.clock.us();
    let stamp = Stamp {
        publisher: id,
        seq,
        sent_us: payload::now_us(),
    };
    let mut sent = Sent {
        channel: channel as u16,
        node: 0,
        client: false,
        start_us,
        ack_us: None,
        offset: None,
    };
    let error = match client
        .publish_with_reply(shared.bodies[channel].body(stamp))
        .await
    {
        Ok((status, reply)) if status.is_success() => {
            sent.ack_us = Some(shared.clock.us());
            let v: Value = serde_json::from_slice(&reply).unwrap_or_default();
            sent.offset = v["offset"].as_u64();
            None
        }
        Ok((status, _)) => Some(format!("HTTP {}", status.as_u16())),
        Err(_) => Some("no answer".to_owned()),
    };
    (sent, error)
}

/// Publishes with client `publish` commands over a WebSocket at `rate` until `end`,
/// reconnecting to the next node when the connection fails or a reply does not come.
async fn ws_publisher(
    id: u32,
    rate: f64,
    end: Instant,
    shared: Arc<PubShared>,
    urls: Vec<Arc<str>>,
) -> PubLog {
    let mut log = PubLog {
        id,
        ..PubLog::default()
    };
    let mut node = id as usize % urls.len();
    let mut ws: Option<Ws> = None;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let n = shared.channels.len();
    let config = WebSocketConfig::default().read_buffer_size(4096);
    while Instant::now() < end {
        tokio::select! {
            _ = tick.tick() => {},
            _ = tokio::time::sleep_until(end) => break,
        }
        let Some(conn) = ws.as_mut() else {
            match tokio::time::timeout(shared.timeout, subscriber::open(&urls[node], config)).await
            {
                Ok(Ok(c)) => ws = Some(c),
                _ => {
                    *log.errors.entry("connect failed".to_owned()).or_default() += 1;
                    node = (node + 1) % urls.len();
                }
            }
            continue;
        };
        let seq = log.sent.len() as u64 + 1;
        let channel = ((seq + u64::from(id)) % n as u64) as usize;
        let mut sent = Sent {
            channel: channel as u16,
            node: node as u8,
            client: true,
            start_us: shared.clock.us(),
            ack_us: None,
            offset: None,
        };
        let cmd = json!({
            "type": "publish", "id": seq, "channel": shared.channels[channel].name,
            "data": {"seq": seq, "p": id, "t": payload::now_us(), "pad": "x"},
        });
        let outcome = tokio::time::timeout(shared.timeout, async {
            conn.send(Message::text(cmd.to_string())).await?;
            loop {
                match conn.next().await {
                    Some(Ok(Message::Text(t))) => {
                        let v: Value = serde_json::from_str(&t).unwrap_or_default();
                        if v["id"].as_u64() != Some(seq) {
                            continue;
                        }
                        return anyhow::Ok(v);
                    }
                    Some(Ok(Message::Close(_))) | None => bail!("connection closed"),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e.into()),
                }
            }
        })
        .await;
        let error = match outcome {
            Ok(Ok(v)) if v["type"] == "published" => {
                sent.ack_us = Some(shared.clock.us());
                sent.offset = v["offset"].as_u64();
                None
            }
            Ok(Ok(v)) => Some(format!("error {}", v["code"].as_str().unwrap_or("?"))),
            Ok(Err(_)) | Err(_) => {
                ws = None;
                node = (node + 1) % urls.len();
                Some("no reply".to_owned())
            }
        };
        log.sent.push(sent);
        if let Some(e) = error {
            *log.errors.entry(e).or_default() += 1;
        }
    }
    if let Some(mut c) = ws {
        let _ = tokio::time::timeout(Duration::from_secs(1), c.close(None)).await;
    }
    log
}

// ---------------------------------------------------------------------------------------
// Subscribers

/// A message a subscriber received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recv {
    /// Its [`key`].
    pub key: u64,
    /// When, µs since the start of the run.
    pub at_us: u64,
    /// Whether it came in the replay after a `subscribed` reply with `recovered: true`.
    pub repaired: bool,
}

/// What told a subscriber it may have missed messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalKind {
    /// A `subscribed` reply with `recovered: false` on a resubscribe.
    NotRecovered,
    /// A message with an epoch other than the one the subscriber had.
    EpochChange,
    /// A `{"type":"missed"}` push for the channel.
    Missed,
    /// The connection was lost (channels without history only).
    Disconnected,
}

/// A signal, over a time span (a point for every kind but `Disconnected`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signal {
    /// Its kind.
    pub kind: SignalKind,
    /// Start, µs since the start of the run.
    pub from_us: u64,
    /// End, µs since the start of the run (`u64::MAX`: the end of the run).
    pub to_us: u64,
}

/// What one subscriber saw.
#[derive(Debug, Clone, Default)]
pub struct SubLog {
    /// Its index.
    pub index: usize,
    /// Its channel (index).
    pub channel: usize,
    /// When its first `subscribed` reply arrived; `None` if it never subscribed.
    pub first_sub_us: Option<u64>,
    /// Every message received, in order; duplicates are counted, not kept.
    pub received: Vec<Recv>,
    /// Every signal.
    pub signals: Vec<Signal>,
    /// Its connections: (subscribed at, lost at or `u64::MAX`, node).
    pub connections: Vec<(u64, u64, usize)>,
    /// Messages received a second time.
    pub duplicates: u64,
    /// History offsets that skipped ahead with no signal since the last message.
    pub gaps: u64,
    /// History offsets not above the last one (new messages, not duplicates).
    pub backwards: u64,
    /// The first gap or backward step, for the report.
    pub first_offset_error: Option<String>,
    /// Resubscribes answered `recovered: true` / `false`.
    pub recovered: (u64, u64),
    /// `missed` pushes.
    pub missed_pushes: u64,
    /// Messages with a new epoch.
    pub epoch_changes: u64,
    /// Connect attempts that failed.
    pub failed_attempts: u64,
    /// `disconnect` notices by code.
    pub disconnects: BTreeMap<String, u64>,
    /// Frames that were none of the above (errors, binary, unparsable).
    pub unexpected: u64,
    /// The first such frame.
    pub first_unexpected: Option<String>,
    /// Whether it received its channel's final marker.
    pub got_marker: bool,
}

/// Orders to a subscriber.
#[derive(Debug, Clone)]
enum SubControl {
    /// The final markers' keys, by channel: say so once yours has arrived.
    Drain(Arc<Vec<u64>>),
    /// Close and report.
    Stop,
}

struct SubShared {
    clock: Clock,
    channels: Arc<Vec<Chan>>,
    urls: Vec<Arc<str>>,
    backoff: Backoff,
    setup_timeout: Duration,
    seed: u64,
    /// Subscribers currently subscribed.
    connected: AtomicUsize,
    /// Subscribers that have their marker (or have ended).
    finished: AtomicUsize,
}

/// One subscriber's running state.
struct Sub {
    log: SubLog,
    shared: Arc<SubShared>,
    control: mpsc::Receiver<SubControl>,
    seen: HashSet<u64>,
    /// History: the epoch and the last offset.
    epoch: Option<String>,
    last: u64,
    /// A signal came since the last message (a gap is then not an error).
    signalled: bool,
    /// Offsets up to this one are the replay of a recovery.
    replay_until: Option<u64>,
    marker: Option<u64>,
    finished: bool,
}

enum Ended {
    Stop,
    Dropped,
}

impl Sub {
    fn history(&self) -> bool {
        self.shared.channels[self.log.channel].history
    }

    fn finish(&mut self) {
        if !self.finished {
            self.finished = true;
            self.shared.finished.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn unexpected(&mut self, what: impl FnOnce() -> String) {
        self.log.unexpected += 1;
        if self.log.first_unexpected.is_none() {
            self.log.first_unexpected = Some(what());
        }
    }

    /// Returns false on `Stop`.
    fn on_control(&mut self, cmd: Option<SubControl>) -> bool {
        match cmd {
            Some(SubControl::Drain(markers)) => {
                let m = markers[self.log.channel];
                self.marker = Some(m);
                if self.seen.contains(&m) {
                    self.log.got_marker = true;
                    self.finish();
                }
                true
            }
            Some(SubControl::Stop) | None => false,
        }
    }

    /// Connects and subscribes (recovering on a history channel once it has a position).
    async fn connect(&mut self, node: usize) -> anyhow::Result<(Ws, Value)> {
        let url = self.shared.urls[node].clone();
        let channel = self.shared.channels[self.log.channel].name.clone();
        let mut cmd = json!({"type": "subscribe", "id": 1, "channel": channel});
        if let Some(epoch) = &self.epoch {
            cmd["recover"] = json!({"epoch": epoch, "offset": self.last});
        }
        let ws = subscriber::open(&url, WebSocketConfig::default().read_buffer_size(4096)).await?;
        subscriber::subscribe(ws, cmd).await
    }

    /// Takes in a `subscribed` reply.
    fn subscribed(&mut self, reply: &Value, node: usize) {
        let now = self.shared.clock.us();
        let first = self.log.first_sub_us.is_none();
        self.log.first_sub_us.get_or_insert(now);
        self.log.connections.push((now, u64::MAX, node));
        // A lost connection on a channel without history is a signal until now.
        if let Some(s) = self.log.signals.last_mut()
            && s.kind == SignalKind::Disconnected
            && s.to_us == u64::MAX
        {
            s.to_us = now;
        }
        if !self.history() {
            return;
        }
        let (Some(epoch), Some(offset)) = (reply["epoch"].as_str(), reply["offset"].as_u64())
        else {
            self.unexpected(|| format!("subscribed without epoch/offset: {reply}"));
            return;
        };
        let recovered = reply["recovered"].as_bool().unwrap_or(false);
        if !first && recovered {
            self.log.recovered.0 += 1;
            self.replay_until = Some(offset).filter(|&n| n > self.last);
        } else if !first {
            self.log.recovered.1 += 1;
            self.signal(SignalKind::NotRecovered, now);
            if self.epoch.as_deref() != Some(epoch) {
                self.log.epoch_changes += 1;
            }
        }
        if first || !recovered {
            self.epoch = Some(epoch.to_owned());
            self.last = offset;
        }
    }

    fn signal(&mut self, kind: SignalKind, now: u64) {
        self.log.signals.push(Signal {
            kind,
            from_us: now,
            to_us: now,
        });
        self.signalled = true;
    }

    fn dropped(&mut self) {
        let now = self.shared.clock.us();
        if let Some(c) = self.log.connections.last_mut()
            && c.1 == u64::MAX
        {
            c.1 = now;
        }
        if !self.history() {
            self.log.signals.push(Signal {
                kind: SignalKind::Disconnected,
                from_us: now,
                to_us: u64::MAX,
            });
        }
        self.replay_until = None;
    }

    fn frame(&mut self, frame: &[u8]) {
        if frame.starts_with(br#"{"type":"message""#) {
            self.message(frame);
            return;
        }
        let Ok(v) = serde_json::from_slice::<Value>(frame) else {
            self.unexpected(|| String::from_utf8_lossy(frame).into_owned());
            return;
        };
        match v["type"].as_str() {
            Some("missed") if v["channel"] == self.shared.channels[self.log.channel].name => {
                self.log.missed_pushes += 1;
                self.signal(SignalKind::Missed, self.shared.clock.us());
            }
            Some("disconnect") => {
                *self
                    .log
                    .disconnects
                    .entry(v["code"].to_string())
                    .or_default() += 1;
            }
            _ => self.unexpected(|| v.to_string()),
        }
    }

    fn message(&mut self, frame: &[u8]) {
        let now = self.shared.clock.us();
        let Some(stamp) = payload::parse_stamp(frame) else {
            self.unexpected(|| String::from_utf8_lossy(frame).into_owned());
            return;
        };
        let k = key(stamp.publisher, stamp.seq);
        if !self.seen.insert(k) {
            self.log.duplicates += 1;
            return;
        }
        let mut repaired = false;
        if self.history() {
            let (Some(offset), Some(epoch)) =
                (payload::parse_offset(frame), payload::parse_epoch(frame))
            else {
                self.unexpected(|| String::from_utf8_lossy(frame).into_owned());
                return;
            };
            if self.epoch.as_deref().map(str::as_bytes) != Some(epoch) {
                self.log.epoch_changes += 1;
                self.signal(SignalKind::EpochChange, now);
                self.epoch = Some(String::from_utf8_lossy(epoch).into_owned());
                // A new epoch numbers from its own start: no gap or step back to check.
                self.last = offset;
            } else if offset > self.last + 1 && !self.signalled {
                self.log.gaps += 1;
                let last = self.last;
                self.log.first_offset_error.get_or_insert_with(|| {
                    format!("offset {offset} after {last} at {:.3} s", now as f64 / 1e6)
                });
            } else if offset <= self.last {
                self.log.backwards += 1;
                let last = self.last;
                self.log.first_offset_error.get_or_insert_with(|| {
                    format!("offset {offset} after {last} at {:.3} s", now as f64 / 1e6)
                });
            }
            if let Some(n) = self.replay_until {
                repaired = offset <= n;
                if offset >= n {
                    self.replay_until = None;
                }
            }
            self.last = self.last.max(offset);
        }
        self.signalled = false;
        self.log.received.push(Recv {
            key: k,
            at_us: now,
            repaired,
        });
        if self.marker == Some(k) {
            self.log.got_marker = true;
            self.finish();
        }
    }

    async fn read(&mut self, ws: &mut Ws) -> Ended {
        loop {
            tokio::select! {
                biased;
                cmd = self.control.recv() => if !self.on_control(cmd) {
                    return Ended::Stop;
                },
                item = ws.next() => match item {
                    Some(Ok(Message::Text(t))) => self.frame(t.as_bytes()),
                    Some(Ok(Message::Binary(_))) => self.unexpected(|| "binary frame".to_owned()),
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Ended::Dropped,
                    Some(Ok(_)) => {}
                },
            }
        }
    }
}

async fn run_subscriber(
    (index, setup, ready, control): Start<SubControl>,
    shared: Arc<SubShared>,
) -> SubLog {
    let nodes = shared.urls.len();
    let mut sub = Sub {
        log: SubLog {
            index,
            channel: index % shared.channels.len(),
            ..SubLog::default()
        },
        control,
        seen: HashSet::new(),
        epoch: None,
        last: 0,
        signalled: false,
        replay_until: None,
        marker: None,
        finished: false,
        shared: shared.clone(),
    };
    let mut rng = Rng::new(shared.seed ^ (index as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03));
    let mut node = index % nodes;
    let mut ready = Some(ready);
    let mut attempt = 0u32;
    loop {
        let result = {
            let _permit = if ready.is_some() {
                Some(setup.acquire().await)
            } else {
                None
            };
            tokio::time::timeout(shared.setup_timeout, sub.connect(node))
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")))
        };
        match result {
            Ok((mut ws, reply)) => {
                attempt = 0;
                sub.subscribed(&reply, node);
                if let Some(r) = ready.take() {
                    let _ = r.send(Ok(())).await;
                }
                shared.connected.fetch_add(1, Ordering::AcqRel);
                let ended = sub.read(&mut ws).await;
                shared.connected.fetch_sub(1, Ordering::AcqRel);
                if let Ended::Stop = ended {
                    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
                    return sub.log;
                }
                sub.dropped();
            }
            Err(e) => {
                sub.log.failed_attempts += 1;
                if let Some(r) = ready.take() {
                    // The first subscribe must work: the cluster was just started.
                    let _ = r.send(Err(format!("{}: {e:#}", shared.urls[node]))).await;
                    sub.finish();
                    break;
                }
            }
        }
        node = (node + 1) % nodes;
        let wake = Instant::now() + shared.backoff.delay(attempt, rng.unit());
        attempt = attempt.saturating_add(1);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => break,
                cmd = sub.control.recv() => if !sub.on_control(cmd) {
                    return sub.log;
                },
            }
        }
    }
    // Ended early (first subscribe failed): wait for Stop so every subscriber reports at once.
    while let Some(cmd) = sub.control.recv().await {
        if !sub.on_control(Some(cmd)) {
            break;
        }
    }
    sub.log
}

// ---------------------------------------------------------------------------------------
// Accounting

/// A lost message, for the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lost {
    /// Its [`key`].
    pub key: u64,
    /// Its publish.
    pub sent: Sent,
    /// The subscriber that did not get it.
    pub subscriber: usize,
    /// The node that subscriber was on when the publish started (`None`: not connected).
    pub node: Option<usize>,
}

/// The accounting of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accounting {
    /// Acknowledged publishes.
    pub acknowledged: u64,
    /// (subscriber, acknowledged message) pairs that were counted.
    pub expected: u64,
    /// Received live.
    pub delivered: u64,
    /// Received in a recovery's replay.
    pub repaired: u64,
    /// Not received, but signalled.
    pub signalled: u64,
    /// Not received, not signalled.
    pub lost: u64,
    /// Messages received twice by one subscriber.
    pub duplicates: u64,
    /// Received after a message published after it was acknowledged, plus history offsets
    /// that went back or skipped ahead without a signal.
    pub order_violations: u64,
    /// Received messages that were never acknowledged (failed or unanswered publishes that
    /// went through anyway): neither counted nor errors.
    pub unacknowledged_received: u64,
    /// Received messages no publisher sent (a bug in the node or the generator).
    pub unknown_received: u64,
    /// The first few lost messages.
    pub lost_examples: Vec<Lost>,
}

/// Counts one run: see the module documentation. `channels` is the number of channels.
pub fn account(pubs: &[PubLog], subs: &[SubLog], channels: usize, examples: usize) -> Accounting {
    let mut a = Accounting::default();
    let mut index: HashMap<u64, Sent> = HashMap::new();
    let mut acked: Vec<Vec<(u64, Sent)>> = vec![Vec::new(); channels];
    for p in pubs {
        for (i, s) in p.sent.iter().enumerate() {
            let k = key(p.id, i as u64 + 1);
            index.insert(k, *s);
            if s.ack_us.is_some() {
                a.acknowledged += 1;
                if let Some(list) = acked.get_mut(usize::from(s.channel)) {
                    list.push((k, *s));
                }
            }
        }
    }
    for sub in subs {
        a.duplicates += sub.duplicates;
        a.order_violations += sub.gaps + sub.backwards;
        let Some(first) = sub.first_sub_us else {
            continue;
        };
        // What it received: how, and (start of publish, time received) to find, for any
        // message, the first one received that was published after it was acknowledged.
        let mut got: HashMap<u64, bool> = HashMap::with_capacity(sub.received.len());
        let mut later: Vec<(u64, u64)> = Vec::with_capacity(sub.received.len());
        let mut max_start = 0u64;
        for r in &sub.received {
            got.insert(r.key, r.repaired);
            let Some(s) = index.get(&r.key) else {
                a.unknown_received += 1;
                continue;
            };
            match s.ack_us {
                Some(ack) if max_start > ack => a.order_violations += 1,
                Some(_) => {}
                None => a.unacknowledged_received += 1,
            }
            max_start = max_start.max(s.start_us);
            later.push((s.start_us, r.at_us));
        }
        later.sort_unstable();
        // suffix[i]: the earliest receipt among later[i..].
        let mut suffix = vec![u64::MAX; later.len() + 1];
        for i in (0..later.len()).rev() {
            suffix[i] = suffix[i + 1].min(later[i].1);
        }
        for &(k, s) in acked.get(sub.channel).map_or(&[][..], Vec::as_slice) {
            if s.start_us < first {
                continue;
            }
            a.expected += 1;
            match got.get(&k) {
                Some(false) => a.delivered += 1,
                Some(true) => a.repaired += 1,
                None => {
                    let ack = s.ack_us.unwrap_or(s.start_us);
                    let next = suffix[later.partition_point(|&(start, _)| start <= ack)];
                    let covered = sub
                        .signals
                        .iter()
                        .any(|g| g.from_us <= next && g.to_us >= s.start_us);
                    if covered {
                        a.signalled += 1;
                    } else {
                        a.lost += 1;
                        if a.lost_examples.len() < examples {
                            let node = sub
                                .connections
                                .iter()
                                .find(|c| c.0 <= s.start_us && s.start_us < c.1)
                                .map(|c| c.2);
                            a.lost_examples.push(Lost {
                                key: k,
                                sent: s,
                                subscriber: sub.index,
                                node,
                            });
                        }
                    }
                }
            }
        }
    }
    a
}

// ---------------------------------------------------------------------------------------
// The run

/// Everything a chaos run found.
#[derive(Debug, Default)]
pub struct ChaosReport {
    seed: u64,
    duration: f64,
    kinds: Vec<FaultKind>,
    faults: Vec<FaultRecord>,
    fault_errors: Vec<String>,
    accounting: Accounting,
    channels: Vec<Chan>,
    node_ids: Vec<String>,
    subscribers: usize,
    never_subscribed: usize,
    missing_marker: Vec<usize>,
    /// For the first few of those: where each was and what it last received.
    missing_marker_details: Vec<String>,
    settle_secs: f64,
    settled: bool,
    api_attempted: u64,
    client_attempted: u64,
    client_acknowledged: u64,
    publish_errors: BTreeMap<String, u64>,
    reconnects: u64,
    failed_attempts: u64,
    recovered: (u64, u64),
    missed_pushes: u64,
    epoch_changes: u64,
    disconnects: BTreeMap<String, u64>,
    unexpected: u64,
    first_unexpected: Option<String>,
    first_offset_error: Option<String>,
    work_dir: String,
}

/// Runs the soak; `Err` only when it could not be set up (or was interrupted).
pub async fn run(opts: &Opts) -> anyhow::Result<ChaosReport> {
    validate(opts)?;
    let kinds = parse_faults(&opts.faults)?;
    let seed = opts.seed.unwrap_or_else(payload::now_us);
    eprintln!(
        "chaos: seed={seed} duration={}s faults={} (replay with --seed {seed})",
        opts.duration,
        if kinds.is_empty() {
            "none".to_owned()
        } else {
            kinds.iter().map(|k| k.name()).collect::<Vec<_>>().join(",")
        }
    );
    let mut cluster = Cluster::new(opts)?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let result = tokio::select! {
        r = soak(opts, seed, kinds, &mut cluster) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted (SIGINT)")),
        _ = term.recv() => Err(anyhow::anyhow!("interrupted (SIGTERM)")),
    };
    cluster.shutdown().await;
    result
}

fn validate(opts: &Opts) -> anyhow::Result<()> {
    ensure!((1..=26).contains(&opts.nodes), "--nodes must be 1 to 26");
    ensure!(opts.subscribers > 0, "--subscribers must be at least 1");
    ensure!(
        opts.history_channels + opts.plain_channels > 0,
        "at least one channel is needed"
    );
    ensure!(opts.publishers > 0, "--publishers must be at least 1");
    ensure!(
        opts.ws_publishers < 100,
        "--ws-publishers must be below 100"
    );
    setup::check_positive(&[
        ("--duration", opts.duration),
        ("--rate", opts.rate),
        ("--ws-rate", opts.ws_rate),
    ])?;
    ensure!(
        opts.warmup >= 0.0 && opts.warmup.is_finite(),
        "--warmup must be >= 0"
    );
    ensure!(
        opts.gap_max >= opts.gap_min,
        "--gap-max must be at least --gap-min"
    );
    ensure!(
        opts.publish_timeout > Duration::ZERO && opts.settle_timeout > Duration::ZERO,
        "timeouts must be above zero"
    );
    ensure!(opts.burst <= 100_000, "--burst must be at most 100000");
    setup::check_open_files(opts.subscribers, 64, "subscribers")
}

async fn soak(
    opts: &Opts,
    seed: u64,
    kinds: Vec<FaultKind>,
    cluster: &mut Cluster,
) -> anyhow::Result<ChaosReport> {
    let clock = Clock(Instant::now());
    let mut channels: Vec<Chan> = (0..opts.history_channels)
        .map(|i| Chan {
            name: format!("h:{i}"),
            history: true,
        })
        .collect();
    channels.extend((0..opts.plain_channels).map(|i| Chan {
        name: format!("p:{i}"),
        history: false,
    }));
    let channels = Arc::new(channels);

    cluster.start_redis(true).await?;
    for i in 0..cluster.nodes.len() {
        cluster.start_node(i).await?;
    }
    let urls = cluster.ws_urls();
    eprintln!(
        "chaos: redis on 127.0.0.1:{}, nodes {}; logs in {}",
        cluster.redis_port,
        urls.iter()
            .map(|u| u.as_ref())
            .collect::<Vec<_>>()
            .join(" "),
        cluster.work.display()
    );

    let sub_shared = Arc::new(SubShared {
        clock,
        channels: channels.clone(),
        urls: urls.clone(),
        backoff: Backoff {
            min: Duration::from_millis(50),
            max: Duration::from_secs(1),
        },
        setup_timeout: Duration::from_secs(5),
        seed,
        connected: AtomicUsize::new(0),
        finished: AtomicUsize::new(0),
    });
    let spawned = setup::spawn_all(opts.subscribers, 20, "subscribers", true, |start| {
        run_subscriber(start, sub_shared.clone())
    })
    .await?;
    let subscribers = spawned.handles;

    let pub_shared = Arc::new(PubShared {
        clock,
        bodies: channels
            .iter()
            .map(|c| BodyBuilder::new(&c.name, opts.payload))
            .collect(),
        channels: channels.clone(),
        endpoints: cluster.api_endpoints()?,
        timeout: opts.publish_timeout,
    });
    let started = Instant::now();
    let end = started + Duration::from_secs_f64(opts.duration);
    let mut publishers = Vec::new();
    for id in 0..opts.publishers {
        let rate = opts.rate / f64::from(opts.publishers);
        publishers.push(tokio::spawn(api_publisher(
            id,
            Some(rate),
            None,
            end,
            pub_shared.clone(),
            seed,
        )));
    }
    for i in 0..opts.ws_publishers {
        publishers.push(tokio::spawn(ws_publisher(
            WS_PUBLISHERS + i,
            opts.ws_rate,
            end,
            pub_shared.clone(),
            urls.clone(),
        )));
    }
    eprintln!(
        "chaos: {} subscribers on {} channels; publishing {:.0}/s through the API and {:.0}/s \
         as clients for {} s",
        opts.subscribers,
        channels.len(),
        opts.rate,
        opts.ws_rate * f64::from(opts.ws_publishers),
        opts.duration
    );

    // Faults, one at a time, until the end of publishing.
    let plan = schedule(
        seed,
        &kinds,
        Duration::from_secs_f64(opts.duration),
        Duration::from_secs_f64(opts.warmup),
        (opts.gap_min, opts.gap_max),
        opts.outage_max,
        cluster.nodes.len(),
    );
    let bursts: Arc<Mutex<Vec<PubLog>>> = Arc::default();
    let next_burst = AtomicU32::new(BURST_PUBLISHERS);
    let mut faults = Vec::new();
    let mut fault_errors = Vec::new();
    for p in &plan {
        let due = started + p.at;
        if due >= end {
            break;
        }
        tokio::time::sleep_until(due).await;
        let start_us = clock.us();
        let note = inject(cluster, p, opts, &pub_shared, &bursts, &next_burst, end).await;
        let record = FaultRecord {
            kind: p.kind,
            note: match &note {
                Ok(n) => n.clone(),
                Err(e) => format!("FAILED: {e:#}"),
            },
            start_us,
            end_us: clock.us(),
        };
        eprintln!(
            "chaos: {:>7.2} s {} {} ({:.2} s)",
            start_us as f64 / 1e6,
            p.kind.name(),
            record.note,
            (record.end_us - start_us) as f64 / 1e6
        );
        if let Err(e) = note {
            fault_errors.push(format!(
                "{} at {:.2} s: {e:#}",
                p.kind.name(),
                start_us as f64 / 1e6
            ));
            // Whatever it left broken, mend it before the next fault.
            cluster.heal().await?;
        }
        faults.push(record);
    }

    // Settle: everything up, every publisher done, every subscriber subscribed.
    cluster.heal().await?;
    let mut pubs = Vec::new();
    for p in publishers {
        pubs.push(p.await.context("publisher task panicked")?);
    }
    pubs.append(&mut *bursts.lock().await);
    let settle_started = Instant::now();
    let settle_deadline = settle_started + opts.settle_timeout;
    cluster.wait_ready(opts.settle_timeout).await?;
    eprintln!("chaos: publishing over; waiting for every subscriber to be subscribed");
    while sub_shared.connected.load(Ordering::Acquire) < opts.subscribers
        && Instant::now() < settle_deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The final markers: one acknowledged publish per channel.
    let mut marker_log = PubLog {
        id: MARKER_PUBLISHER,
        ..PubLog::default()
    };
    let mut markers = Vec::with_capacity(channels.len());
    let mut clients: Vec<ApiClient> = pub_shared
        .endpoints
        .iter()
        .map(|e| ApiClient::new(e.clone(), opts.publish_timeout))
        .collect();
    for c in 0..channels.len() {
        let mut attempt = 0usize;
        loop {
            let seq = marker_log.sent.len() as u64 + 1;
            let node = attempt % clients.len();
            let (sent, error) =
                publish_once(&pub_shared, &mut clients[node], MARKER_PUBLISHER, seq, c).await;
            marker_log.sent.push(Sent {
                node: node as u8,
                ..sent
            });
            if sent.ack_us.is_some() {
                markers.push(key(MARKER_PUBLISHER, seq));
                break;
            }
            *marker_log
                .errors
                .entry(error.unwrap_or_default())
                .or_default() += 1;
            attempt += 1;
            ensure!(
                Instant::now() < settle_deadline,
                "the final marker on {} was not acknowledged in time",
                channels[c].name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    pubs.push(marker_log);
    let markers = Arc::new(markers);
    for s in &subscribers {
        let _ = s.control.send(SubControl::Drain(markers.clone())).await;
    }
    let left = settle_deadline.saturating_duration_since(Instant::now());
    let (settled, _) = setup::wait_count(&sub_shared.finished, opts.subscribers, left).await;
    let settle_secs = settle_started.elapsed().as_secs_f64();
    eprintln!(
        "chaos: {} of {} subscribers have their marker after {settle_secs:.2} s of settling",
        sub_shared.finished.load(Ordering::Acquire),
        opts.subscribers
    );
    let subs = setup::stop_all(subscribers, SubControl::Stop).await?;

    let accounting = account(&pubs, &subs, channels.len(), opts.details);
    let mut r = ChaosReport {
        seed,
        duration: opts.duration,
        kinds,
        faults,
        fault_errors,
        accounting,
        channels: channels.to_vec(),
        node_ids: cluster.specs.iter().map(|s| s.id.clone()).collect(),
        subscribers: opts.subscribers,
        settle_secs,
        settled,
        work_dir: cluster.work.display().to_string(),
        ..ChaosReport::default()
    };
    for p in &pubs {
        for s in &p.sent {
            if s.client {
                r.client_attempted += 1;
                r.client_acknowledged += u64::from(s.ack_us.is_some());
            } else {
                r.api_attempted += 1;
            }
        }
        for (e, n) in &p.errors {
            *r.publish_errors.entry(e.clone()).or_default() += n;
        }
    }
    for s in &subs {
        if s.first_sub_us.is_none() {
            r.never_subscribed += 1;
        } else if !s.got_marker {
            r.missing_marker.push(s.index);
            if r.missing_marker_details.len() < opts.details {
                let node = |i: usize| r.node_ids.get(i).map_or("?", String::as_str);
                let conn = match s.connections.last() {
                    Some(&(from, u64::MAX, n)) => {
                        format!("on {} since {:.2} s", node(n), from as f64 / 1e6)
                    }
                    Some(&(_, to, n)) => format!("off {} since {:.2} s", node(n), to as f64 / 1e6),
                    None => "never connected".to_owned(),
                };
                let last = s.received.last().map_or("nothing".to_owned(), |m| {
                    format!("{:.2} s", m.at_us as f64 / 1e6)
                });
                let detail = format!(
                    "no marker: subscriber {} of {} {conn}, last message received at {last}, \
                     {} connections",
                    s.index,
                    r.channels[s.channel].name,
                    s.connections.len()
                );
                r.missing_marker_details.push(detail);
            }
        }
        r.reconnects += s.connections.len().saturating_sub(1) as u64;
        r.failed_attempts += s.failed_attempts;
        r.recovered.0 += s.recovered.0;
        r.recovered.1 += s.recovered.1;
        r.missed_pushes += s.missed_pushes;
        r.epoch_changes += s.epoch_changes;
        r.unexpected += s.unexpected;
        if r.first_unexpected.is_none() {
            r.first_unexpected.clone_from(&s.first_unexpected);
        }
        if r.first_offset_error.is_none()
            && let Some(e) = &s.first_offset_error
        {
            r.first_offset_error = Some(format!("subscriber {}: {e}", s.index));
        }
        for (code, n) in &s.disconnects {
            *r.disconnects.entry(code.clone()).or_default() += n;
        }
    }
    Ok(r)
}

/// Carries out one fault; says what it did.
async fn inject(
    cluster: &mut Cluster,
    p: &Planned,
    opts: &Opts,
    pub_shared: &Arc<PubShared>,
    bursts: &Arc<Mutex<Vec<PubLog>>>,
    next_burst: &AtomicU32,
    end: Instant,
) -> anyhow::Result<String> {
    let outage = format!("{:.2} s", p.outage.as_secs_f64());
    match p.kind {
        FaultKind::RedisRestart | FaultKind::RedisWipe => {
            let wipe = p.kind == FaultKind::RedisWipe;
            cluster.kill_redis().await?;
            tokio::time::sleep(p.outage).await;
            cluster.start_redis(wipe).await?;
            Ok(format!(
                "redis down {outage}, restarted {}",
                if wipe { "empty" } else { "with its data" }
            ))
        }
        FaultKind::RedisPause => {
            cluster.pause_redis().await?;
            tokio::time::sleep(p.outage).await;
            cluster.resume_redis().await?;
            Ok(format!("redis paused {outage}"))
        }
        FaultKind::PubsubKill => {
            let reply =
                redis_command(cluster.redis_port, &["CLIENT", "KILL", "TYPE", "pubsub"]).await?;
            ensure!(reply.starts_with(':'), "CLIENT KILL answered {reply:?}");
            Ok(format!("{} pub/sub connections killed", &reply[1..]))
        }
        FaultKind::NodeKill => {
            cluster.kill_node(p.node).await?;
            tokio::time::sleep(p.outage).await;
            cluster.start_node(p.node).await?;
            Ok(format!("{} down {outage}", cluster.specs[p.node].id))
        }
        FaultKind::Burst => {
            let tasks = 8u64;
            let mut handles = Vec::new();
            for t in 0..tasks {
                let count = opts.burst / tasks + u64::from(t < opts.burst % tasks);
                let id = next_burst.fetch_add(1, Ordering::Relaxed);
                handles.push(tokio::spawn(api_publisher(
                    id,
                    None,
                    Some(count),
                    end,
                    pub_shared.clone(),
                    id.into(),
                )));
            }
            let mut acked = 0;
            for h in handles {
                let log = h.await.context("burst task panicked")?;
                acked += log.sent.iter().filter(|s| s.ack_us.is_some()).count();
                bursts.lock().await.push(log);
            }
            Ok(format!("{acked} of {} acknowledged", opts.burst))
        }
    }
}

impl ChaosReport {
    fn fault_counts(&self) -> BTreeMap<&'static str, usize> {
        let mut m = BTreeMap::new();
        for f in &self.faults {
            *m.entry(f.kind.name()).or_default() += 1;
        }
        m
    }

    /// What went wrong, one line each; empty for a clean run.
    pub fn failures(&self) -> Vec<String> {
        let a = &self.accounting;
        let mut f = Vec::new();
        if a.lost > 0 {
            f.push(format!("{} messages lost", a.lost));
        }
        if a.duplicates > 0 {
            f.push(format!("{} duplicates", a.duplicates));
        }
        if a.order_violations > 0 {
            f.push(format!(
                "{} order violations (first offset error: {})",
                a.order_violations,
                self.first_offset_error.as_deref().unwrap_or("-")
            ));
        }
        if a.unknown_received > 0 {
            f.push(format!("{} messages nobody sent", a.unknown_received));
        }
        if self.never_subscribed > 0 {
            f.push(format!(
                "{} subscribers never subscribed",
                self.never_subscribed
            ));
        }
        if !self.missing_marker.is_empty() {
            f.push(format!(
                "{} subscribers did not receive the final marker within the settle timeout \
                 (first: {:?})",
                self.missing_marker.len(),
                &self.missing_marker[..self.missing_marker.len().min(5)]
            ));
        }
        if !self.fault_errors.is_empty() {
            f.push(format!(
                "faults that failed: {}",
                self.fault_errors.join("; ")
            ));
        }
        if a.acknowledged == 0 {
            f.push("nothing was acknowledged".to_owned());
        }
        f
    }

    fn describe(&self, l: &Lost) -> String {
        let (p, seq) = unkey(l.key);
        let s = &l.sent;
        let chan = self
            .channels
            .get(usize::from(s.channel))
            .map_or("?", |c| c.name.as_str());
        let node = |i: usize| self.node_ids.get(i).map_or("?", String::as_str);
        let t = |us: u64| us as f64 / 1e6;
        // Faults from 5 s before the publish to 1 s after it.
        let around: Vec<String> = self
            .faults
            .iter()
            .filter(|f| f.start_us <= s.start_us + 1_000_000 && f.end_us + 5_000_000 >= s.start_us)
            .map(|f| {
                format!(
                    "{} {:.2}-{:.2} s ({})",
                    f.kind.name(),
                    t(f.start_us),
                    t(f.end_us),
                    f.note
                )
            })
            .collect();
        format!(
            "lost: {chan} p{p}#{seq}{} published {:.3}-{:.3} s via {} ({}) -> subscriber {} {}; \
             faults around: {}",
            s.offset.map(|o| format!(" offset {o}")).unwrap_or_default(),
            t(s.start_us),
            t(s.ack_us.unwrap_or(s.start_us)),
            node(usize::from(s.node)),
            if s.client {
                "client publish"
            } else {
                "server API"
            },
            l.subscriber,
            l.node
                .map(|n| format!("on {}", node(n)))
                .unwrap_or_else(|| "(not connected then)".to_owned()),
            if around.is_empty() {
                "none".to_owned()
            } else {
                around.join(", ")
            }
        )
    }

    /// The one accounting line.
    pub fn line(&self) -> String {
        let a = &self.accounting;
        format!(
            "chaos: seed={} duration={}s faults={} acknowledged={} expected={} delivered={} \
             repaired={} signalled={} lost={} duplicates={} order_violations={}",
            self.seed,
            self.duration,
            self.faults.len(),
            a.acknowledged,
            a.expected,
            a.delivered,
            a.repaired,
            a.signalled,
            a.lost,
            a.duplicates,
            a.order_violations
        )
    }

    /// The report: details, then the accounting line last.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let counts: Vec<String> = self
            .fault_counts()
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let _ = writeln!(
            s,
            "faults:      {}",
            if counts.is_empty() {
                "none".to_owned()
            } else {
                counts.join(", ")
            }
        );
        let errors: Vec<String> = self
            .publish_errors
            .iter()
            .map(|(e, n)| format!("{e} {n}"))
            .collect();
        let _ = writeln!(
            s,
            "publishes:   {} through the API, {} as clients ({} acknowledged); not \
             acknowledged: {}",
            self.api_attempted,
            self.client_attempted,
            self.client_acknowledged,
            if errors.is_empty() {
                "none".to_owned()
            } else {
                errors.join(", ")
            }
        );
        let disconnects: Vec<String> = self
            .disconnects
            .iter()
            .map(|(c, n)| format!("{c}: {n}"))
            .collect();
        let _ = writeln!(
            s,
            "subscribers: {} ({} never subscribed); {} reconnects, {} failed attempts; \
             recovered:true {}, recovered:false {}; missed pushes {}; epoch changes {}; \
             disconnect notices {{{}}}; unacknowledged messages received {}; unexpected frames \
             {}{}",
            self.subscribers,
            self.never_subscribed,
            self.reconnects,
            self.failed_attempts,
            self.recovered.0,
            self.recovered.1,
            self.missed_pushes,
            self.epoch_changes,
            disconnects.join(", "),
            self.accounting.unacknowledged_received,
            self.unexpected,
            self.first_unexpected
                .as_ref()
                .map(|u| format!(" (first: {u})"))
                .unwrap_or_default()
        );
        let _ = writeln!(
            s,
            "settle:      {} in {:.2} s",
            if self.settled {
                "every subscriber has its channel's final marker"
            } else {
                "NOT every subscriber got its channel's final marker"
            },
            self.settle_secs
        );
        for l in &self.accounting.lost_examples {
            let _ = writeln!(s, "{}", self.describe(l));
        }
        for d in &self.missing_marker_details {
            let _ = writeln!(s, "{d}");
        }
        let failures = self.failures();
        if !failures.is_empty() {
            let _ = writeln!(s, "logs:        {}", self.work_dir);
        }
        crate::stats::write_result(&mut s, 13, &failures);
        let _ = writeln!(s, "{}", self.line());
        s
    }

    /// The report as one JSON object.
    pub fn json(&self) -> Value {
        let a = &self.accounting;
        json!({
            "scenario": "chaos",
            "seed": self.seed,
            "duration": self.duration,
            "fault_kinds": self.kinds.iter().map(|k| k.name()).collect::<Vec<_>>(),
            "faults": self.faults.len(),
            "fault_counts": self.fault_counts(),
            "acknowledged": a.acknowledged,
            "expected": a.expected,
            "delivered": a.delivered,
            "repaired": a.repaired,
            "signalled": a.signalled,
            "lost": a.lost,
            "duplicates": a.duplicates,
            "order_violations": a.order_violations,
            "unacknowledged_received": a.unacknowledged_received,
            "unknown_received": a.unknown_received,
            "lost_examples": a.lost_examples.iter().map(|l| self.describe(l)).collect::<Vec<_>>(),
            "subscribers": self.subscribers,
            "reconnects": self.reconnects,
            "recovered_true": self.recovered.0,
            "recovered_false": self.recovered.1,
            "missed_pushes": self.missed_pushes,
            "epoch_changes": self.epoch_changes,
            "settled": self.settled,
            "failures": self.failures(),
            "ok": self.failures().is_empty(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(channel: u16, start_us: u64, ack_us: Option<u64>) -> Sent {
        Sent {
            channel,
            node: 0,
            client: false,
            start_us,
            ack_us,
            offset: None,
        }
    }

    fn recv(publisher: u32, seq: u64, at_us: u64) -> Recv {
        Recv {
            key: key(publisher, seq),
            at_us,
            repaired: false,
        }
    }

    fn sub(received: Vec<Recv>, signals: Vec<Signal>) -> SubLog {
        SubLog {
            first_sub_us: Some(100),
            connections: vec![(100, u64::MAX, 0)],
            received,
            signals,
            ..SubLog::default()
        }
    }

    /// Publisher 0: seq 1..=4 on channel 0 at 1000, 2000, 3000, 4000 µs, each acknowledged
    /// 100 µs later; seq 5 before the subscriber subscribed; seq 6 never acknowledged.
    fn pubs() -> Vec<PubLog> {
        let mut sent_list: Vec<Sent> = (1..=4)
            .map(|i| sent(0, i * 1000, Some(i * 1000 + 100)))
            .collect();
        sent_list.push(sent(0, 50, Some(60)));
        sent_list.push(sent(0, 5000, None));
        vec![PubLog {
            id: 0,
            sent: sent_list,
            errors: BTreeMap::new(),
        }]
    }

    #[test]
    fn keys_round_trip() {
        assert_eq!(unkey(key(9_999, 123_456)), (9_999, 123_456));
        assert_ne!(key(1, 2), key(2, 1));
    }

    #[test]
    fn all_delivered_is_clean() {
        let s = sub(
            (1..=4).map(|i| recv(0, i, i * 1000 + 200)).collect(),
            vec![],
        );
        let a = account(&pubs(), &[s], 1, 5);
        assert_eq!(a.acknowledged, 5);
        // Seq 5 was published before the first subscribed reply: not counted.
        assert_eq!((a.expected, a.delivered, a.lost), (4, 4, 0));
        assert_eq!(a.order_violations, 0);
    }

    #[test]
    fn a_missing_message_without_a_signal_is_lost() {
        let s = sub(
            [1, 3, 4]
                .iter()
                .map(|&i| recv(0, i, i * 1000 + 200))
                .collect(),
            vec![],
        );
        let a = account(&pubs(), &[s], 1, 5);
        assert_eq!((a.delivered, a.lost, a.signalled), (3, 1, 0));
        assert_eq!(a.lost_examples[0].key, key(0, 2));
        assert_eq!(a.lost_examples[0].node, Some(0));
    }

    #[test]
    fn a_signal_between_publish_and_the_next_receipt_covers_it() {
        let received: Vec<Recv> = [1, 3, 4]
            .iter()
            .map(|&i| recv(0, i, i * 1000 + 200))
            .collect();
        let point = |at| Signal {
            kind: SignalKind::Missed,
            from_us: at,
            to_us: at,
        };
        // Between seq 2's publish (2000) and the receipt of seq 3 (3200): signalled.
        let a = account(&pubs(), &[sub(received.clone(), vec![point(2500)])], 1, 5);
        assert_eq!((a.signalled, a.lost), (1, 0));
        // Before seq 2 was published: does not cover it.
        let a = account(&pubs(), &[sub(received.clone(), vec![point(1500)])], 1, 5);
        assert_eq!((a.signalled, a.lost), (0, 1));
        // After the next message arrived: the client already went on as if nothing was
        // missing.
        let a = account(&pubs(), &[sub(received.clone(), vec![point(3300)])], 1, 5);
        assert_eq!((a.signalled, a.lost), (0, 1));
        // A disconnection that began before the publish and ended after it covers it.
        let gap = Signal {
            kind: SignalKind::Disconnected,
            from_us: 1500,
            to_us: 2050,
        };
        let a = account(&pubs(), &[sub(received, vec![gap])], 1, 5);
        assert_eq!((a.signalled, a.lost), (1, 0));
    }

    #[test]
    fn the_last_message_missing_is_lost_unless_signalled_before_the_end() {
        let received: Vec<Recv> = (1..=3).map(|i| recv(0, i, i * 1000 + 200)).collect();
        let a = account(&pubs(), &[sub(received.clone(), vec![])], 1, 5);
        assert_eq!(a.lost, 1);
        let late = Signal {
            kind: SignalKind::NotRecovered,
            from_us: 9_000,
            to_us: 9_000,
        };
        let a = account(&pubs(), &[sub(received, vec![late])], 1, 5);
        assert_eq!((a.signalled, a.lost), (1, 0));
    }

    #[test]
    fn repaired_duplicates_order_and_unacknowledged() {
        let mut received = vec![
            recv(0, 1, 1200),
            recv(0, 3, 3200),
            // Seq 2 after seq 3, which was published after seq 2 was acknowledged.
            recv(0, 2, 3300),
        ];
        received.push(Recv {
            repaired: true,
            ..recv(0, 4, 4200)
        });
        received.push(recv(0, 6, 5200));
        received.push(recv(7, 1, 6100));
        let mut s = sub(received, vec![]);
        s.duplicates = 2;
        s.gaps = 1;
        let a = account(&pubs(), &[s], 1, 5);
        assert_eq!((a.delivered, a.repaired, a.lost), (3, 1, 0));
        assert_eq!(a.duplicates, 2);
        assert_eq!(a.order_violations, 2);
        assert_eq!((a.unacknowledged_received, a.unknown_received), (1, 1));
    }

    #[test]
    fn subscribers_that_never_subscribed_count_nothing() {
        let mut s = sub(vec![], vec![]);
        s.first_sub_us = None;
        let a = account(&pubs(), &[s], 1, 5);
        assert_eq!((a.expected, a.lost), (0, 0));
    }

    fn history_sub(shared: &Arc<SubShared>) -> Sub {
        let (_tx, control) = mpsc::channel(1);
        let mut sub = Sub {
            log: SubLog::default(),
            shared: shared.clone(),
            control,
            seen: HashSet::new(),
            epoch: None,
            last: 0,
            signalled: false,
            replay_until: None,
            marker: None,
            finished: false,
        };
        sub.subscribed(
            &json!({"type":"subscribed","id":1,"channel":"h:0","epoch":"e1","offset":10}),
            0,
        );
        sub
    }

    fn sub_shared() -> Arc<SubShared> {
        Arc::new(SubShared {
            clock: Clock(Instant::now()),
            channels: Arc::new(vec![Chan {
                name: "h:0".into(),
                history: true,
            }]),
            urls: vec![Arc::from("ws://127.0.0.1:1/ws")],
            backoff: Backoff {
                min: Duration::from_millis(1),
                max: Duration::from_millis(2),
            },
            setup_timeout: Duration::from_secs(1),
            seed: 1,
            connected: AtomicUsize::new(0),
            finished: AtomicUsize::new(0),
        })
    }

    fn frame(seq: u64, offset: u64, epoch: &str) -> Vec<u8> {
        format!(
            r#"{{"type":"message","channel":"h:0","data":{{"seq":{seq},"p":0,"t":1}},"offset":{offset},"epoch":"{epoch}"}}"#
        )
        .into_bytes()
    }

    #[test]
    fn subscribers_check_offsets_across_epochs_recoveries_and_signals() {
        let shared = sub_shared();
        let mut sub = history_sub(&shared);
        for (seq, offset) in [(1, 11), (2, 12)] {
            sub.frame(&frame(seq, offset, "e1"));
        }
        // Redis lost the history: the new epoch starts again at 1.
        for (seq, offset) in [(3, 1), (4, 2)] {
            sub.frame(&frame(seq, offset, "e2"));
        }
        assert_eq!(
            (sub.log.gaps, sub.log.backwards, sub.log.epoch_changes),
            (0, 0, 1)
        );
        assert_eq!(sub.log.signals.len(), 1);
        // A gap with no signal is an error; after a `missed` push it is not.
        sub.frame(&frame(5, 4, "e2"));
        assert_eq!(sub.log.gaps, 1);
        sub.frame(br#"{"type":"missed","channel":"h:0","reason":"backplane"}"#);
        sub.frame(&frame(6, 9, "e2"));
        assert_eq!((sub.log.gaps, sub.log.missed_pushes), (1, 1));
        // A duplicate is counted once, not kept; a step back is an order error.
        sub.frame(&frame(6, 9, "e2"));
        sub.frame(&frame(7, 8, "e2"));
        assert_eq!((sub.log.duplicates, sub.log.backwards), (1, 1));
        // A recovery: the replay up to the reply's offset is `repaired`, then live again.
        sub.dropped();
        sub.subscribed(
            &json!({"type":"subscribed","id":1,"channel":"h:0","epoch":"e2","offset":11,"recovered":true}),
            0,
        );
        for (seq, offset) in [(8, 10), (9, 11), (10, 12)] {
            sub.frame(&frame(seq, offset, "e2"));
        }
        let repaired: Vec<bool> = sub.log.received.iter().map(|r| r.repaired).collect();
        assert_eq!(&repaired[repaired.len() - 3..], &[true, true, false]);
        assert_eq!(sub.log.recovered, (1, 0));
        // recovered:false is a signal, and the next offset follows the reply's.
        sub.dropped();
        sub.subscribed(
            &json!({"type":"subscribed","id":1,"channel":"h:0","epoch":"e3","offset":50,"recovered":false}),
            0,
        );
        sub.frame(&frame(11, 51, "e3"));
        assert_eq!(sub.log.recovered, (1, 1));
        assert_eq!((sub.log.gaps, sub.log.backwards), (1, 1));
        assert_eq!(sub.log.connections.len(), 3);
        assert!(
            sub.log
                .signals
                .iter()
                .any(|s| s.kind == SignalKind::NotRecovered)
        );
    }

    #[test]
    fn fault_lists() {
        assert_eq!(parse_faults("all").unwrap(), FaultKind::ALL.to_vec());
        assert!(parse_faults("none").unwrap().is_empty());
        assert_eq!(
            parse_faults("burst, node-kill,burst").unwrap(),
            vec![FaultKind::Burst, FaultKind::NodeKill]
        );
        assert!(parse_faults("meteor").is_err());
    }

    #[test]
    fn schedules_replay_and_deal_every_kind_first() {
        let s = |seed| {
            schedule(
                seed,
                &FaultKind::ALL,
                Duration::from_secs(60),
                Duration::from_secs(3),
                (Duration::from_secs(2), Duration::from_secs(4)),
                Duration::from_secs(2),
                3,
            )
        };
        let a = s(42);
        assert_eq!(a, s(42));
        assert_ne!(a, s(43));
        assert!(a.len() >= 6, "{a:?}");
        let mut first: Vec<FaultKind> = a[..6].iter().map(|p| p.kind).collect();
        first.sort();
        assert_eq!(first, FaultKind::ALL.to_vec());
        for w in a.windows(2) {
            assert!(w[1].at >= w[0].at + w[0].outage + Duration::from_secs(2));
        }
        let last = a.last().unwrap();
        assert!(last.at + last.outage <= Duration::from_secs(60));
        assert!(a.iter().all(|p| p.node < 3));
        assert!(
            schedule(
                1,
                &[],
                Duration::from_secs(60),
                Duration::ZERO,
                (Duration::ZERO, Duration::ZERO),
                Duration::ZERO,
                3
            )
            .is_empty()
        );
    }
}
