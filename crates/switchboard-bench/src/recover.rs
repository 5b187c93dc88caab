//! The `recover` scenario: how long N clients take to get back every message after their
//! node is killed.
//!
//! N clients connect to the first `--ws` node (node A) and subscribe to one channel with
//! history, keeping its epoch and their last offset. A publisher publishes steadily through
//! `--api` (a node that survives). After `--before` seconds the generator kills node A with
//! `kill -9 --kill-pid` (SIGKILL: no `disconnect` notice, no drain). Every client notices its
//! connection drop and reconnects, waiting before each attempt a jittered, exponentially
//! growing delay (`--backoff-min` to `--backoff-max`), to the next `--ws` node after the one it
//! lost, rotating over the list on each failed attempt, and subscribes with
//! `recover: {epoch, offset}`. Its recovery is complete once its `subscribed` reply says
//! `recovered: true` and every message up to the offset that reply named has arrived.
//!
//! Every client checks, over the whole run, that its offsets increase by exactly one (across
//! the kill and the recovery seam) and that the epoch never changes. Publishing goes on for
//! `--after` seconds once everyone has recovered; then the generator waits until every client
//! has the last published offset, so a message missed after the recovery is caught as well.
//!
//! Times are measured from the moment the generator starts `kill` (it takes about a
//! millisecond to run), with one monotonic clock for all clients.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::http::ApiClient;
use crate::offsets::OffsetCheck;
use crate::payload::{self, BodyBuilder, Stamp};
use crate::procstat;
use crate::setup::{self, Snapshot, Start, Window};
use crate::stats::{
    self, Latency, LatencySummary, MachineUsage, offset_failures, offsets_json, per_sec,
};
use crate::subscriber::{self, Ws};

/// Options of `switchboard-bench recover`.
#[derive(Debug, Clone, clap::Args)]
pub struct Opts {
    /// WebSocket URL of a node (repeat). Clients connect to the first one (the node that
    /// `--kill-pid` kills); on reconnect they try the next one in the list, and the one after
    /// that on each failed attempt, round and round.
    #[arg(long = "ws", required = true, value_name = "URL")]
    pub ws: Vec<String>,
    /// Internal listener of a node that survives (repeat for several); publishes go there,
    /// rotating over them.
    #[arg(long = "api", required = true, value_name = "URL")]
    pub api: Vec<String>,
    /// Pid of the first `--ws` node, killed with `kill -9` during the run.
    #[arg(long, value_name = "PID")]
    pub kill_pid: u32,
    /// Pid of a surviving node, to report the CPU time its part of the recovery cost
    /// (repeat for several).
    #[arg(long = "node-pid", value_name = "PID")]
    pub node_pids: Vec<u32>,
    /// Number of clients.
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// The channel; its namespace must keep history.
    #[arg(long, default_value = "hist:recover")]
    pub channel: String,
    /// Publishes per second.
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// Size in bytes of each published `data` object.
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Seconds of publishing before the kill.
    #[arg(long, default_value_t = 5.0)]
    pub before: f64,
    /// Seconds of publishing after every client has recovered.
    #[arg(long, default_value_t = 5.0)]
    pub after: f64,
    /// Smallest delay before a reconnect attempt (`50ms`, `0.05s`, `0.05`).
    #[arg(long, default_value = "50ms", value_parser = parse_duration)]
    pub backoff_min: Duration,
    /// Largest delay before a reconnect attempt. The delay before attempt k (from 0) is
    /// uniform between `--backoff-min` and min(`--backoff-max`, `--backoff-min` × 2^(k+1)).
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub backoff_max: Duration,
    /// How long after losing its connection a client keeps trying; also how long the
    /// generator waits for every client to recover.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub recover_timeout: Duration,
    /// Connections being set up at once, before the kill (reconnects are not limited).
    #[arg(long, default_value_t = 200)]
    pub connect_concurrency: usize,
    /// Seconds allowed for one connect + subscribe (before the kill, or one reconnect attempt).
    #[arg(long, default_value_t = 10.0)]
    pub setup_timeout: f64,
    /// Seconds to wait, after the last publish, for every client to receive it.
    #[arg(long, default_value_t = 5.0)]
    pub drain_timeout: f64,
    /// Seconds allowed for one publish to be answered.
    #[arg(long, default_value_t = 5.0)]
    pub publish_timeout: f64,
    /// API key for the server API (`Authorization: apikey <key>`).
    #[arg(long, env = "SWITCHBOARD_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Print the result as one JSON object too (the last line of stdout).
    #[arg(long)]
    pub json: bool,
}

/// Parses a duration: `250ms`, `1.5s`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, scale) = if let Some(ms) = s.strip_suffix("ms") {
        (ms, 1e-3)
    } else if let Some(secs) = s.strip_suffix('s') {
        (secs, 1.0)
    } else {
        (s, 1.0)
    };
    let n: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: expected a duration like 50ms, 0.5s or 2"))?;
    if !n.is_finite() || n < 0.0 || n * scale > 86_400.0 {
        return Err(format!("{s:?}: out of range (0 to one day)"));
    }
    Ok(Duration::from_secs_f64(n * scale))
}

/// Jittered exponential backoff.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Smallest delay.
    pub min: Duration,
    /// Largest delay.
    pub max: Duration,
}

impl Backoff {
    /// The delay before attempt `attempt` (0 for the first) given `unit` in `[0, 1)`: uniform
    /// between `min` and `min(max, min × 2^(attempt+1))`.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let ceiling = self
            .min
            .saturating_mul(1u32 << (attempt + 1).min(20))
            .min(self.max)
            .max(self.min);
        self.min + (ceiling - self.min).mul_f64(unit.clamp(0.0, 1.0))
    }
}

/// A small pseudo-random generator (SplitMix64): jitter needs no more, and no dependency.
/// Seeded, so the `chaos` scenario can replay its fault schedule.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator whose sequence is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// What a `subscribed` reply on a channel with history says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribed {
    /// The channel's epoch.
    pub epoch: String,
    /// The newest offset when the subscription began.
    pub offset: u64,
    /// Whether the node recovered the missed messages (`false` when not asked).
    pub recovered: bool,
}

/// Reads a `subscribed` reply; fails when it lacks the fields of a channel with history.
pub fn parse_subscribed(v: &Value) -> anyhow::Result<Subscribed> {
    ensure!(v["type"] == "subscribed", "not a subscribed reply: {v}");
    let epoch = v["epoch"]
        .as_str()
        .with_context(|| format!("no epoch in {v} (does the channel's namespace keep history?)"))?;
    let offset = v["offset"]
        .as_u64()
        .with_context(|| format!("no offset in {v}"))?;
    let recovered = match &v["recovered"] {
        Value::Bool(b) => *b,
        Value::Null => false,
        other => bail!("recovered is not a boolean: {other}"),
    };
    Ok(Subscribed {
        epoch: epoch.to_owned(),
        offset,
        recovered,
    })
}

/// The largest number of events in any window of `window` seconds, as a rate per second.
/// `times` are seconds, sorted.
pub fn peak_rate(times: &[f64], window: f64) -> f64 {
    if window <= 0.0 {
        return 0.0;
    }
    let mut best = 0;
    let mut lo = 0;
    for hi in 0..times.len() {
        while times[hi] - times[lo] >= window {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best as f64 / window
}

/// What every client shares with the coordinator.
struct Shared {
    channel: String,
    urls: Vec<Arc<str>>,
    ws_config: WebSocketConfig,
    setup_timeout: Duration,
    backoff: Backoff,
    recover_timeout: Duration,
    /// When the generator started `kill`.
    kill_at: OnceLock<Instant>,
    /// Clients whose recovery after the kill is over, one way or the other.
    settled: AtomicUsize,
    /// Clients that have, since the drain began, seen the last offset, or that have ended.
    finished: AtomicUsize,
}

/// Orders from the coordinator.
#[derive(Debug, Clone, Copy)]
enum Control {
    /// Publishing is over: this is the last accepted offset.
    Drain(u64),
    /// Stop reading, close the socket and report.
    Stop,
}

/// What one client saw.
#[derive(Debug, Default)]
struct ClientOutcome {
    /// Offsets over the whole run.
    check: OffsetCheck,
    /// Messages or `subscribed` replies with an epoch other than the first one.
    epoch_changes: u64,
    /// `error` replies, binary frames, frames that are not JSON.
    unexpected: u64,
    /// Connections lost before the kill.
    early_drops: u32,
    /// The first reason of such a drop.
    early_reason: Option<String>,
    /// Reconnect attempts, successful or not.
    attempts: u32,
    /// Failed reconnect attempts.
    failed_attempts: u32,
    /// The first failed attempt's error.
    first_failure: Option<String>,
    /// `subscribed` replies with `recovered: false` after a reconnect.
    not_recovered: u32,
    /// Offsets those replies left out (newest offset minus the client's last one).
    unrecovered_missed: u64,
    /// Kill to the first connection loss after it.
    dropped_after: Option<Duration>,
    /// Kill to the `subscribed` reply of the reconnection after it.
    resubscribed_after: Option<Duration>,
    /// Kill to the moment every missed message had arrived.
    recovered_after: Option<Duration>,
    /// The steps of the reconnection after the kill.
    phases: Option<Phases>,
    /// Messages the recovery replayed (offsets between the client's last and the reply's).
    replayed: u64,
    /// Index of the `--ws` node the client ended on.
    node: usize,
    /// Why the client stopped before `Stop`, if it did.
    ended: Option<String>,
}

/// How a connection's read loop ended.
enum Ended {
    Stop,
    Dropped(String),
}

/// One client's state.
struct Client {
    shared: Arc<Shared>,
    control: mpsc::Receiver<Control>,
    out: ClientOutcome,
    epoch: String,
    rng: Rng,
    /// The offset the current recovery must reach.
    recover_target: Option<u64>,
    /// Whether the client lost its connection after the kill and has not settled yet.
    recovering: bool,
    settled: bool,
    drain_target: Option<u64>,
    finished: bool,
}

/// A message frame of the JSON subprotocol starts so (the node writes `type` first).
const MESSAGE_PREFIX: &[u8] = br#"{"type":"message""#;

/// How long the steps of one successful connect + subscribe took.
#[derive(Debug, Clone, Copy, Default)]
struct Phases {
    /// TCP connect (a SYN the listener dropped shows here, as a ~1 s retransmit).
    tcp: Duration,
    /// WebSocket upgrade and `welcome`.
    upgrade: Duration,
    /// `subscribe` to `subscribed` (the history read, when recovering).
    subscribe: Duration,
}

/// Opens a connection and subscribes, with `recover` when given.
async fn handshake(
    shared: &Shared,
    url: &str,
    recover: Option<(&str, u64)>,
) -> anyhow::Result<(Ws, Subscribed, Phases)> {
    let started = Instant::now();
    let (ws, tcp) = subscriber::open_timed(url, shared.ws_config).await?;
    let opened = Instant::now();
    let mut cmd = json!({"type": "subscribe", "id": 1, "channel": shared.channel});
    if let Some((epoch, offset)) = recover {
        cmd["recover"] = json!({"epoch": epoch, "offset": offset});
    }
    let (ws, reply) = subscriber::subscribe(ws, cmd).await?;
    let phases = Phases {
        tcp,
        upgrade: (opened - started).saturating_sub(tcp),
        subscribe: opened.elapsed(),
    };
    Ok((ws, parse_subscribed(&reply)?, phases))
}

async fn run_client(
    (index, setup, ready, control): Start<Control>,
    shared: Arc<Shared>,
) -> ClientOutcome {
    let url = shared.urls[0].clone();
    let first = {
        let _permit = setup.acquire().await;
        tokio::time::timeout(shared.setup_timeout, handshake(&shared, &url, None))
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("setup timed out")))
    };
    let (mut ws, sub, _) = match first {
        Ok(x) => x,
        Err(e) => {
            let msg = format!("{url}: {e:#}");
            let _ = ready.send(Err(msg.clone())).await;
            return ClientOutcome {
                ended: Some(msg),
                ..ClientOutcome::default()
            };
        }
    };
    let _ = ready.send(Ok(())).await;
    let seed = payload::now_us() ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut client = Client {
        shared,
        control,
        out: ClientOutcome {
            check: OffsetCheck::after(sub.offset),
            ..ClientOutcome::default()
        },
        epoch: sub.epoch,
        rng: Rng::new(seed),
        recover_target: None,
        recovering: false,
        settled: false,
        drain_target: None,
        finished: false,
    };
    loop {
        match client.read(&mut ws).await {
            Ended::Stop => {
                let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
                return client.out;
            }
            Ended::Dropped(reason) => {
                client.dropped(reason);
                match client.reconnect().await {
                    Some(new) => ws = new,
                    None => break,
                }
            }
        }
    }
    // Gave up, or told to stop while reconnecting.
    client.finish();
    if client.out.ended.is_some() {
        while let Some(cmd) = client.control.recv().await {
            if matches!(cmd, Control::Stop) {
                break;
            }
        }
    }
    client.out
}

impl Client {
    fn since_kill(&self) -> Option<Duration> {
        self.shared.kill_at.get().map(|k| k.elapsed())
    }

    fn settle(&mut self) {
        if !self.settled {
            self.settled = true;
            self.recovering = false;
            self.shared.settled.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn finish(&mut self) {
        if !self.finished {
            self.finished = true;
            self.shared.finished.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Notes progress: the end of a recovery, the end of the drain.
    fn progress(&mut self) {
        if let Some(target) = self.recover_target
            && self.out.check.last >= target
        {
            self.recover_target = None;
            if self.recovering {
                self.out.recovered_after = self.since_kill();
                self.settle();
            }
        }
        if self.drain_target.is_some_and(|t| self.out.check.last >= t) {
            self.finish();
        }
    }

    fn on_control(&mut self, cmd: Option<Control>) -> bool {
        match cmd {
            Some(Control::Drain(t)) => {
                self.drain_target = Some(t);
                self.progress();
                true
            }
            Some(Control::Stop) | None => false,
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
                    Some(Ok(Message::Binary(_))) => self.out.unexpected += 1,
                    Some(Ok(Message::Close(frame))) => {
                        return Ended::Dropped(match frame {
                            Some(f) => format!("closed by server: {} {}", u16::from(f.code), f.reason),
                            None => "closed by server".to_owned(),
                        });
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Ended::Dropped(format!("read error: {e}")),
                    None => return Ended::Dropped("connection ended".to_owned()),
                },
            }
        }
    }

    fn frame(&mut self, frame: &[u8]) {
        if frame.starts_with(MESSAGE_PREFIX) {
            match payload::parse_offset(frame) {
                Some(offset) => {
                    let epoch = payload::parse_epoch(frame);
                    if self.epoch.is_empty() && offset == 1 {
                        // Subscribed before the channel had history (epoch ""): the
                        // first message names the epoch that began since.
                        if let Some(e) = epoch {
                            self.epoch = String::from_utf8_lossy(e).into_owned();
                        }
                    } else if epoch != Some(self.epoch.as_bytes()) {
                        self.out.epoch_changes += 1;
                    }
                    self.out.check.see(offset);
                    self.progress();
                }
                None => self.out.check.missing += 1,
            }
            return;
        }
        match serde_json::from_slice::<Value>(frame) {
            Ok(v) if v["type"] == "disconnect" => {
                self.out
                    .ended
                    .get_or_insert(format!("disconnect {} {}", v["code"], v["reason"]));
            }
            _ => self.out.unexpected += 1,
        }
    }

    fn dropped(&mut self, reason: String) {
        match self.since_kill() {
            Some(after) if !self.settled && !self.recovering => {
                self.out.dropped_after = Some(after);
                self.recovering = true;
            }
            Some(_) => {}
            None => {
                self.out.early_drops += 1;
                self.out.early_reason.get_or_insert(reason);
            }
        }
        // A `disconnect` notice before the drop is not the end of this client.
        self.out.ended = None;
    }

    /// Reconnects with backoff and subscribes with `recover`; `None` when told to stop or
    /// when it gave up.
    async fn reconnect(&mut self) -> Option<Ws> {
        let deadline = Instant::now() + self.shared.recover_timeout;
        let urls = self.shared.urls.clone();
        let mut attempt = 0u32;
        loop {
            let wake = Instant::now() + self.shared.backoff.delay(attempt, self.rng.unit());
            if wake > deadline {
                self.out.ended = Some(format!(
                    "gave up after {attempt} reconnect attempts; first error: {}",
                    self.out.first_failure.as_deref().unwrap_or("-")
                ));
                self.settle();
                return None;
            }
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(wake) => break,
                    cmd = self.control.recv() => if !self.on_control(cmd) {
                        return None;
                    },
                }
            }
            let node = (self.out.node + 1 + attempt as usize) % urls.len();
            attempt += 1;
            self.out.attempts += 1;
            let recover = Some((self.epoch.as_str(), self.out.check.last));
            let result = tokio::time::timeout(
                self.shared.setup_timeout,
                handshake(&self.shared, &urls[node], recover),
            )
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")));
            let (ws, sub, phases) = match result {
                Ok(x) => x,
                Err(e) => {
                    self.out.failed_attempts += 1;
                    self.out
                        .first_failure
                        .get_or_insert_with(|| format!("{}: {e:#}", urls[node]));
                    continue;
                }
            };
            self.out.node = node;
            if self.recovering && self.out.resubscribed_after.is_none() {
                self.out.resubscribed_after = self.since_kill();
                self.out.phases = Some(phases);
            }
            if self.epoch.is_empty() {
                // Subscribed before the channel had history: take the epoch that began since.
                self.epoch.clone_from(&sub.epoch);
            } else if sub.epoch != self.epoch {
                self.out.epoch_changes += 1;
            }
            let last = self.out.check.last;
            if sub.recovered {
                self.out.replayed += sub.offset.saturating_sub(last);
                self.recover_target = Some(sub.offset);
                self.progress();
            } else {
                // The missed messages will not come: the next offset shows as a gap too.
                self.out.not_recovered += 1;
                self.out.unrecovered_missed += sub.offset.saturating_sub(last);
                self.settle();
            }
            return Some(ws);
        }
    }
}

/// What the publisher did.
#[derive(Debug, Default)]
struct PubTally {
    attempted: u64,
    accepted: u64,
    errors: u64,
    first_error: Option<String>,
    epochs: BTreeSet<String>,
    last_offset: u64,
    secs: f64,
}

/// Publishes at `rate` until `stop`, through `clients` in turn; keeps the newest offset in
/// `last_offset`.
async fn publish(
    mut clients: Vec<ApiClient>,
    body: BodyBuilder,
    rate: f64,
    stop: Arc<AtomicBool>,
    last_offset: Arc<AtomicU64>,
) -> PubTally {
    let mut t = PubTally::default();
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while !stop.load(Ordering::Acquire) {
        tick.tick().await;
        t.attempted += 1;
        let stamp = Stamp {
            publisher: 0,
            seq: t.attempted,
            sent_us: payload::now_us(),
        };
        let n = clients.len();
        let client = &mut clients[t.attempted as usize % n];
        let error = match client.publish_with_reply(body.body(stamp)).await {
            Ok((status, reply)) if status.is_success() => {
                t.accepted += 1;
                let v: Value = serde_json::from_slice(&reply).unwrap_or_default();
                match (v["offset"].as_u64(), v["epoch"].as_str()) {
                    (Some(offset), Some(epoch)) => {
                        t.last_offset = t.last_offset.max(offset);
                        last_offset.store(t.last_offset, Ordering::Release);
                        if !t.epochs.contains(epoch) {
                            t.epochs.insert(epoch.to_owned());
                        }
                        None
                    }
                    _ => Some(format!(
                        "publish answer without offset/epoch (no history?): {}",
                        String::from_utf8_lossy(&reply)
                    )),
                }
            }
            Ok((status, reply)) => Some(format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&reply)
            )),
            Err(e) => Some(format!("{e:#}")),
        };
        if let Some(e) = error {
            t.errors += 1;
            t.first_error.get_or_insert(e);
        }
    }
    t.secs = started.elapsed().as_secs_f64();
    t
}

/// A TCP connect this slow on loopback means the listener dropped the SYN and the kernel
/// sent it again after its initial retransmission timeout (1 s).
const SLOW_CONNECT: Duration = Duration::from_millis(900);

/// A surviving node's CPU seconds and RSS (KiB), or why they could not be read.
type NodeUsage = Result<(f64, u64), String>;

/// Everything a recover run measured.
#[derive(Debug, Default)]
pub struct RecoverReport {
    clients: usize,
    ws: Vec<String>,
    api_nodes: usize,
    channel: String,
    target_rate: f64,
    backoff: (f64, f64),
    setup_secs: f64,
    kill_pid: u32,
    kill_cmd_ms: f64,
    offset_at_kill: u64,
    tally: PubTally,
    dropped: LatencySummary,
    resubscribed: LatencySummary,
    recovered: LatencySummary,
    tcp: LatencySummary,
    /// Successful reconnects whose TCP connect took [`SLOW_CONNECT`] or more.
    slow_connects: u64,
    upgrade: LatencySummary,
    subscribe: LatencySummary,
    recovered_clients: usize,
    all_recovered_secs: Option<f64>,
    reconnect_rate: f64,
    reconnect_peak_rate: f64,
    attempts: u64,
    failed_attempts: u64,
    first_failure: Option<String>,
    replayed: u64,
    replayed_max: u64,
    offsets: OffsetCheck,
    epoch_changes: u64,
    unexpected: u64,
    early_drops: u64,
    early_reason: Option<String>,
    not_recovered: u64,
    unrecovered_missed: u64,
    gave_up: u64,
    ended_reason: Option<String>,
    final_nodes: Vec<usize>,
    behind_at_end: usize,
    drain_secs: f64,
    drained: bool,
    /// Surviving nodes' CPU seconds from the kill until everyone recovered, and RSS.
    nodes: Vec<(u32, NodeUsage)>,
    generator_cpu_secs: Option<f64>,
    recovery_window_secs: f64,
    machine: Option<MachineUsage>,
}

/// Runs the scenario; `Err` only when it could not be set up.
pub async fn run(opts: &Opts) -> anyhow::Result<RecoverReport> {
    validate(opts)?;
    let (clk_tck, _) = procstat::clock_ticks_per_sec();
    setup::check_pids(std::iter::once(opts.kill_pid).chain(opts.node_pids.iter().copied()))?;
    let endpoints = setup::endpoints(&opts.api, opts.api_key.as_deref())?;
    let shared = Arc::new(Shared {
        channel: opts.channel.clone(),
        urls: opts.ws.iter().map(|u| Arc::from(u.as_str())).collect(),
        ws_config: WebSocketConfig::default().read_buffer_size(4096),
        setup_timeout: Duration::from_secs_f64(opts.setup_timeout),
        backoff: Backoff {
            min: opts.backoff_min,
            max: opts.backoff_max,
        },
        recover_timeout: opts.recover_timeout,
        kill_at: OnceLock::new(),
        settled: AtomicUsize::new(0),
        finished: AtomicUsize::new(0),
    });

    let setup_started = Instant::now();
    let clients = setup::spawn_all(
        opts.clients,
        opts.connect_concurrency,
        "clients",
        true,
        |start| run_client(start, shared.clone()),
    )
    .await?
    .handles;
    let setup_secs = setup_started.elapsed().as_secs_f64();
    eprintln!(
        "{} clients subscribed on {} in {setup_secs:.2} s",
        opts.clients, opts.ws[0]
    );

    let api_clients =
        setup::api_clients(&endpoints, Duration::from_secs_f64(opts.publish_timeout)).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let last_offset = Arc::new(AtomicU64::new(0));
    let publisher = tokio::spawn(publish(
        api_clients,
        BodyBuilder::new(&opts.channel, opts.payload),
        opts.rate,
        stop.clone(),
        last_offset.clone(),
    ));
    eprintln!(
        "publishing {:.1}/s; killing pid {} in {:.1} s",
        opts.rate, opts.kill_pid, opts.before
    );
    tokio::time::sleep(Duration::from_secs_f64(opts.before)).await;

    let before = Snapshot::take(&opts.node_pids);
    let offset_at_kill = last_offset.load(Ordering::Acquire);
    let kill_at = Instant::now();
    let _ = shared.kill_at.set(kill_at);
    let pid = opts.kill_pid;
    let status = tokio::task::spawn_blocking(move || {
        std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
    })
    .await
    .context("kill task panicked")?;
    let kill_cmd_ms = kill_at.elapsed().as_secs_f64() * 1e3;
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => bail!("kill -9 {pid} failed: {s}"),
        Err(e) => bail!("cannot run kill -9 {pid}: {e}"),
    }
    eprintln!("killed pid {pid} at offset {offset_at_kill}");

    // Wait until every client has recovered (or given up).
    let deadline = kill_at + opts.recover_timeout + Duration::from_secs(1);
    let mut next_progress = kill_at + Duration::from_secs(1);
    while shared.settled.load(Ordering::Acquire) < clients.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
        if Instant::now() >= next_progress {
            next_progress += Duration::from_secs(1);
            eprintln!(
                "recovered {}/{}",
                shared.settled.load(Ordering::Acquire),
                clients.len()
            );
        }
    }
    let recovery_window_secs = kill_at.elapsed().as_secs_f64();
    let window = Window::between(&before, &Snapshot::take(&opts.node_pids), clk_tck);
    eprintln!(
        "{}/{} settled {recovery_window_secs:.3} s after the kill; publishing {:.1} s more",
        shared.settled.load(Ordering::Acquire),
        clients.len(),
        opts.after
    );

    tokio::time::sleep(Duration::from_secs_f64(opts.after)).await;
    stop.store(true, Ordering::Release);
    let tally = publisher.await.context("publisher task panicked")?;

    for c in &clients {
        let _ = c.control.try_send(Control::Drain(tally.last_offset));
    }
    let (drained, drain_secs) = setup::wait_count(
        &shared.finished,
        clients.len(),
        Duration::from_secs_f64(opts.drain_timeout),
    )
    .await;
    let outcomes = setup::stop_all(clients, Control::Stop).await?;

    let mut report = RecoverReport {
        clients: opts.clients,
        ws: opts.ws.clone(),
        api_nodes: opts.api.len(),
        channel: opts.channel.clone(),
        target_rate: opts.rate,
        backoff: (
            opts.backoff_min.as_secs_f64() * 1e3,
            opts.backoff_max.as_secs_f64() * 1e3,
        ),
        setup_secs,
        kill_pid: opts.kill_pid,
        kill_cmd_ms,
        offset_at_kill,
        drain_secs,
        drained,
        recovery_window_secs,
        nodes: window
            .nodes
            .iter()
            .map(|(pid, u)| {
                (
                    *pid,
                    u.as_ref()
                        .map(|(cpu, s)| (cpu.total, s.rss_kb))
                        .map_err(Clone::clone),
                )
            })
            .collect(),
        generator_cpu_secs: window.my_cpu_secs(),
        machine: window.machine,
        final_nodes: vec![0; opts.ws.len()],
        tally,
        ..RecoverReport::default()
    };
    add_outcomes(&mut report, &outcomes);
    Ok(report)
}

fn validate(opts: &Opts) -> anyhow::Result<()> {
    ensure!(opts.clients > 0, "--clients must be at least 1");
    ensure!(
        opts.rate > 0.0 && opts.rate.is_finite(),
        "--rate must be positive"
    );
    ensure!(
        opts.connect_concurrency > 0,
        "--connect-concurrency must be at least 1"
    );
    ensure!(
        opts.backoff_min > Duration::ZERO && opts.backoff_max >= opts.backoff_min,
        "--backoff-min must be above zero and at most --backoff-max"
    );
    setup::check_positive(&[
        ("--before", opts.before),
        ("--after", opts.after),
        ("--setup-timeout", opts.setup_timeout),
        ("--drain-timeout", opts.drain_timeout),
        ("--publish-timeout", opts.publish_timeout),
    ])?;
    setup::check_open_files(opts.clients, opts.api.len(), "clients")
}

fn add_outcomes(r: &mut RecoverReport, outcomes: &[ClientOutcome]) {
    let mut dropped = Latency::new();
    let mut resubscribed = Latency::new();
    let mut recovered = Latency::new();
    let (mut tcp, mut upgrade, mut subscribe) = (Latency::new(), Latency::new(), Latency::new());
    let mut resub_times = Vec::new();
    let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    for o in outcomes {
        r.offsets.add(&o.check);
        r.epoch_changes += o.epoch_changes;
        r.unexpected += o.unexpected;
        r.early_drops += u64::from(o.early_drops);
        if r.early_reason.is_none() {
            r.early_reason.clone_from(&o.early_reason);
        }
        r.attempts += u64::from(o.attempts);
        r.failed_attempts += u64::from(o.failed_attempts);
        if r.first_failure.is_none() {
            r.first_failure.clone_from(&o.first_failure);
        }
        r.not_recovered += u64::from(o.not_recovered);
        r.unrecovered_missed += o.unrecovered_missed;
        r.replayed += o.replayed;
        r.replayed_max = r.replayed_max.max(o.replayed);
        if let Some(d) = o.dropped_after {
            dropped.record(us(d));
        }
        if let Some(d) = o.resubscribed_after {
            resubscribed.record(us(d));
            resub_times.push(d.as_secs_f64());
        }
        if let Some(p) = o.phases {
            tcp.record(us(p.tcp));
            r.slow_connects += u64::from(p.tcp >= SLOW_CONNECT);
            upgrade.record(us(p.upgrade));
            subscribe.record(us(p.subscribe));
        }
        if let Some(d) = o.recovered_after {
            recovered.record(us(d));
            r.recovered_clients += 1;
        }
        if let Some(e) = &o.ended {
            r.gave_up += 1;
            r.ended_reason.get_or_insert_with(|| e.clone());
        }
        if o.check.last < r.tally.last_offset {
            r.behind_at_end += 1;
        }
        if let Some(n) = r.final_nodes.get_mut(o.node) {
            *n += 1;
        }
    }
    r.dropped = dropped.summary();
    r.resubscribed = resubscribed.summary();
    r.recovered = recovered.summary();
    r.tcp = tcp.summary();
    r.upgrade = upgrade.summary();
    r.subscribe = subscribe.summary();
    if r.recovered_clients == outcomes.len() {
        r.all_recovered_secs = Some(r.recovered.max / 1e3);
    }
    resub_times.sort_by(f64::total_cmp);
    if let Some(&last) = resub_times.last()
        && last > 0.0
    {
        r.reconnect_rate = resub_times.len() as f64 / last;
    }
    r.reconnect_peak_rate = peak_rate(&resub_times, 0.1);
}

impl RecoverReport {
    /// What went wrong, one line each; empty for a clean run.
    pub fn failures(&self) -> Vec<String> {
        let mut f = offset_failures(&self.offsets);
        if self.epoch_changes > 0 {
            f.push(format!("{} epoch changes", self.epoch_changes));
        }
        if self.tally.epochs.len() > 1 {
            f.push(format!(
                "the channel's epoch changed during the run: {:?}",
                self.tally.epochs
            ));
        }
        if self.not_recovered > 0 {
            f.push(format!(
                "{} subscribe replies with recovered:false ({} offsets not recovered)",
                self.not_recovered, self.unrecovered_missed
            ));
        }
        if self.recovered_clients < self.clients {
            f.push(format!(
                "{} of {} clients did not complete a recovery",
                self.clients - self.recovered_clients,
                self.clients
            ));
        }
        if self.gave_up > 0 {
            f.push(format!(
                "{} clients stopped early (first: {})",
                self.gave_up,
                self.ended_reason.as_deref().unwrap_or("-")
            ));
        }
        if self.early_drops > 0 {
            f.push(format!(
                "{} connections dropped before the kill (first: {})",
                self.early_drops,
                self.early_reason.as_deref().unwrap_or("-")
            ));
        }
        if self.behind_at_end > 0 {
            f.push(format!(
                "{} clients did not receive every message up to offset {}",
                self.behind_at_end, self.tally.last_offset
            ));
        }
        if self.tally.errors > 0 {
            f.push(format!(
                "{} publish errors (first: {})",
                self.tally.errors,
                self.tally.first_error.as_deref().unwrap_or("-")
            ));
        }
        if self.tally.accepted == 0 {
            f.push("nothing was published".to_owned());
        }
        f
    }

    /// The human-readable report.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let q = |l: &LatencySummary| {
            format!(
                "p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1} ms (n={})",
                l.p50, l.p90, l.p99, l.max, l.count
            )
        };
        let _ = writeln!(
            s,
            "recover: {} clients on {}, channel {:?}, publishing {:.1}/s through {} API node(s), \
             backoff {:.0}-{:.0} ms",
            self.clients,
            self.ws.first().map_or("-", String::as_str),
            self.channel,
            self.target_rate,
            self.api_nodes,
            self.backoff.0,
            self.backoff.1
        );
        let _ = writeln!(
            s,
            "setup:        {} connected and subscribed in {:.2} s",
            self.clients, self.setup_secs
        );
        let _ = writeln!(
            s,
            "kill:         kill -9 {} at offset {} (the command took {:.1} ms)",
            self.kill_pid, self.offset_at_kill, self.kill_cmd_ms
        );
        let _ = writeln!(s, "drop noticed: {}", q(&self.dropped));
        let _ = writeln!(s, "resubscribed: {}", q(&self.resubscribed));
        let _ = writeln!(s, "recovered:    {}", q(&self.recovered));
        // The steps of the attempt that succeeded (backoff delays and failed attempts are
        // the rest of the time to `resubscribed`).
        let _ = writeln!(
            s,
            "  tcp connect:  {}; {} took >= {} ms (SYN dropped by the listener, resent)",
            q(&self.tcp),
            self.slow_connects,
            SLOW_CONNECT.as_millis()
        );
        let _ = writeln!(s, "  upgrade:      {} (to the welcome)", q(&self.upgrade));
        let _ = writeln!(s, "  subscribe:    {} (to subscribed)", q(&self.subscribe));
        let _ = writeln!(
            s,
            "all:          {}",
            match self.all_recovered_secs {
                Some(t) => format!("all {} recovered {:.3} s after the kill", self.clients, t),
                None => format!(
                    "only {} of {} recovered",
                    self.recovered_clients, self.clients
                ),
            }
        );
        let _ = writeln!(
            s,
            "reconnects:   {:.0}/s over the whole recovery, peak {:.0}/s (100 ms window); \
             {} attempts, {} failed{}",
            self.reconnect_rate,
            self.reconnect_peak_rate,
            self.attempts,
            self.failed_attempts,
            self.first_failure
                .as_ref()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default()
        );
        let nodes: Vec<String> = self
            .ws
            .iter()
            .zip(&self.final_nodes)
            .map(|(u, n)| format!("{u}: {n}"))
            .collect();
        let _ = writeln!(s, "ended on:     {}", nodes.join(", "));
        let _ = writeln!(
            s,
            "replayed:     {} missed messages (mean {:.1}, max {} per client)",
            self.replayed,
            self.replayed as f64 / self.clients.max(1) as f64,
            self.replayed_max
        );
        let o = &self.offsets;
        let _ = writeln!(
            s,
            "integrity:    {} offsets checked: gaps {} ({} skipped), repeats {}, missing {}, \
             epoch changes {}; recovered:false {}; early drops {}; gave up {}; unexpected frames {}",
            o.checked,
            o.gaps,
            o.skipped,
            o.repeats,
            o.missing,
            self.epoch_changes,
            self.not_recovered,
            self.early_drops,
            self.gave_up,
            self.unexpected
        );
        let t = &self.tally;
        let _ = writeln!(
            s,
            "publishes:    {} accepted of {} in {:.1} s ({:.1}/s), errors {}; last offset {}; \
             drain {:.2} s{}, {} clients behind",
            t.accepted,
            t.attempted,
            t.secs,
            per_sec(t.accepted, t.secs),
            t.errors,
            t.last_offset,
            self.drain_secs,
            if self.drained { "" } else { " (timed out)" },
            self.behind_at_end
        );
        for (pid, u) in &self.nodes {
            let _ = match u {
                Ok((cpu, rss)) => writeln!(
                    s,
                    "node pid {pid}: cpu {cpu:.2} s in the {:.2} s from the kill to the last \
                     recovery (reconnects, history reads and the live stream) = {:.0} µs per \
                     client; rss {:.1} MiB",
                    self.recovery_window_secs,
                    cpu * 1e6 / self.clients.max(1) as f64,
                    *rss as f64 / 1024.0
                ),
                Err(e) => writeln!(s, "node pid {pid}: unreadable ({e})"),
            };
        }
        if let Some(cpu) = self.generator_cpu_secs {
            let _ = writeln!(s, "generator: cpu {cpu:.2} s in the same window");
        }
        if let Some(m) = &self.machine {
            let ours: f64 = self
                .nodes
                .iter()
                .filter_map(|(_, u)| u.as_ref().ok().map(|(cpu, _)| *cpu))
                .chain(self.generator_cpu_secs)
                .sum();
            let _ = writeln!(
                s,
                "machine: {} in the same window; other processes (Redis included) {:.2} cores",
                m.busy_text(),
                m.other_cores(ours)
            );
        }
        stats::write_result(&mut s, 14, &self.failures());
        s
    }

    /// The report as one JSON object.
    pub fn json(&self) -> Value {
        let q = LatencySummary::json_without_p999;
        let v = json!({
            "scenario": "recover",
            "clients": self.clients,
            "ws": self.ws,
            "channel": self.channel,
            "target_rate": self.target_rate,
            "backoff_ms": [self.backoff.0, self.backoff.1],
            "setup_secs": self.setup_secs,
            "kill_pid": self.kill_pid,
            "kill_cmd_ms": self.kill_cmd_ms,
            "offset_at_kill": self.offset_at_kill,
            "dropped_ms": q(&self.dropped),
            "resubscribed_ms": q(&self.resubscribed),
            "recovered_ms": q(&self.recovered),
            "reconnect_phases_ms": {
                "tcp_connect": q(&self.tcp),
                "slow_tcp_connects": self.slow_connects,
                "upgrade_welcome": q(&self.upgrade),
                "subscribe": q(&self.subscribe),
            },
            "recovered_clients": self.recovered_clients,
            "all_recovered_secs": self.all_recovered_secs,
            "reconnects_per_sec": self.reconnect_rate,
            "reconnects_peak_per_sec": self.reconnect_peak_rate,
            "attempts": self.attempts,
            "failed_attempts": self.failed_attempts,
            "first_failure": self.first_failure,
            "final_nodes": self.final_nodes,
            "replayed": self.replayed,
            "replayed_max": self.replayed_max,
            "offsets": offsets_json(&self.offsets, self.clients),
            "epoch_changes": self.epoch_changes,
            "not_recovered": self.not_recovered,
            "unrecovered_missed": self.unrecovered_missed,
            "early_drops": self.early_drops,
            "gave_up": self.gave_up,
            "unexpected_frames": self.unexpected,
        });
        // Two objects: one `json!` this large exceeds the macro recursion limit.
        let more = json!({
            "publishes_attempted": self.tally.attempted,
            "publishes_accepted": self.tally.accepted,
            "publish_errors": self.tally.errors,
            "first_publish_error": self.tally.first_error,
            "epochs": self.tally.epochs,
            "last_offset": self.tally.last_offset,
            "behind_at_end": self.behind_at_end,
            "drain_secs": self.drain_secs,
            "drained": self.drained,
            "recovery_window_secs": self.recovery_window_secs,
            "nodes": self.nodes.iter().map(|(pid, u)| match u {
                Ok((cpu, rss)) => json!({"pid": pid, "cpu_secs": cpu, "rss_kb": rss}),
                Err(e) => json!({"pid": pid, "error": e}),
            }).collect::<Vec<_>>(),
            "generator_cpu_secs": self.generator_cpu_secs,
            "machine_busy_cores": self.machine.map(|m| m.busy_cores()),
            "failures": self.failures(),
            "ok": self.failures().is_empty(),
        });
        if let (Value::Object(mut all), Value::Object(more)) = (v, more) {
            all.extend(more);
            Value::Object(all)
        } else {
            unreachable!("json! objects are objects")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("50ms"), Ok(Duration::from_millis(50)));
        assert_eq!(parse_duration("0.5s"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration(" 2 "), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5 s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("2d").is_err());
        assert!(parse_duration("inf").is_err());
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let b = Backoff {
            min: Duration::from_millis(50),
            max: Duration::from_millis(500),
        };
        assert_eq!(b.delay(0, 0.0), Duration::from_millis(50));
        assert_eq!(b.delay(0, 1.0), Duration::from_millis(100));
        assert_eq!(b.delay(1, 1.0), Duration::from_millis(200));
        assert_eq!(b.delay(2, 1.0), Duration::from_millis(400));
        assert_eq!(b.delay(3, 1.0), Duration::from_millis(500));
        assert_eq!(b.delay(40, 0.5), Duration::from_millis(275));
        let mut rng = Rng::new(7);
        for attempt in 0..10 {
            let d = b.delay(attempt, rng.unit());
            assert!(d >= b.min && d <= b.max, "{d:?}");
        }
    }

    #[test]
    fn jitter_is_uniform_enough() {
        let mut rng = Rng::new(42);
        let xs: Vec<f64> = (0..10_000).map(|_| rng.unit()).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
    }

    #[test]
    fn subscribed_replies() {
        let v = json!({"type":"subscribed","id":1,"channel":"hist:a","epoch":"f3a9","offset":43,"recovered":true});
        assert_eq!(
            parse_subscribed(&v).unwrap(),
            Subscribed {
                epoch: "f3a9".into(),
                offset: 43,
                recovered: true
            }
        );
        let fresh = json!({"type":"subscribed","id":1,"channel":"hist:a","epoch":"e","offset":0});
        assert!(!parse_subscribed(&fresh).unwrap().recovered);
        let plain = json!({"type":"subscribed","id":1,"channel":"plain:a"});
        assert!(
            parse_subscribed(&plain)
                .unwrap_err()
                .to_string()
                .contains("history")
        );
        assert!(parse_subscribed(&json!({"type":"error"})).is_err());
        let bad = json!({"type":"subscribed","epoch":"e","offset":1,"recovered":"yes"});
        assert!(parse_subscribed(&bad).is_err());
    }

    #[test]
    fn peak_rates() {
        assert_eq!(peak_rate(&[], 0.1), 0.0);
        assert_eq!(peak_rate(&[0.5], 0.1), 10.0);
        // Three within 100 ms, then two more.
        let times = [0.00, 0.03, 0.09, 0.15, 0.30];
        assert!((peak_rate(&times, 0.1) - 30.0).abs() < 1e-9);
        assert!((peak_rate(&times, 1.0) - 5.0).abs() < 1e-9);
    }
}
