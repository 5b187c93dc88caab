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

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::clients::backoff::{Backoff, Redial, parse_duration};
use crate::clients::fleet::{self, Start};
use crate::clients::payload::{self, BodyBuilder};
use crate::clients::subscriber::{self, Control, Ended, Session};
use crate::clients::ws::{self, Phases, Subscribed, Ws, parse_subscribed};
use crate::measure::offsets::OffsetCheck;
use crate::measure::procstat;
use crate::measure::publishes::publish_with_history;
use crate::measure::usage::{Snapshot, Window};
use crate::report::{ClientOutcome, RecoverReport};
use crate::scenarios::{RunOpts, checks};

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
    #[command(flatten)]
    pub run: RunOpts,
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

/// One client's state: the [`Session`] its connections are read into.
struct Client {
    shared: Arc<Shared>,
    out: ClientOutcome,
    epoch: String,
    /// The offset the current recovery must reach.
    recover_target: Option<u64>,
    /// Whether the client lost its connection after the kill and has not settled yet.
    recovering: bool,
    settled: bool,
    drain_target: Option<u64>,
    finished: bool,
}

/// Connects to `url` and subscribes, with `recover` when given.
async fn handshake(
    shared: &Shared,
    url: &str,
    recover: Option<(&str, u64)>,
) -> anyhow::Result<(Ws, Subscribed, Phases)> {
    let cmd = ws::subscribe_command(&shared.channel, recover);
    let (ws, reply, phases) = ws::connect_and_subscribe(url, shared.ws_config, cmd).await?;
    Ok((ws, parse_subscribed(&reply)?, phases))
}

async fn run_client(
    (index, setup, ready, mut control): Start<Control<u64>>,
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
    let mut redial = Redial::new(shared.urls.clone(), 0, shared.backoff, seed);
    let mut client = Client {
        shared,
        out: ClientOutcome {
            check: OffsetCheck::after(sub.offset),
            ..ClientOutcome::default()
        },
        epoch: sub.epoch,
        recover_target: None,
        recovering: false,
        settled: false,
        drain_target: None,
        finished: false,
    };
    loop {
        match subscriber::read(&mut ws, &mut control, &mut client).await {
            Ended::Stop => return client.out,
            Ended::Dropped(reason) => {
                client.dropped(reason);
                match client.reconnect(&mut redial, &mut control).await {
                    Some(new) => ws = new,
                    None => break,
                }
            }
        }
    }
    // Gave up, or told to stop while reconnecting.
    client.finish();
    if client.out.ended.is_some() {
        subscriber::wait_for_stop(&mut control, &mut client).await;
    }
    client.out
}

impl Session for Client {
    type Target = u64;

    fn drain(&mut self, t: u64) {
        self.drain_target = Some(t);
        self.progress();
    }

    fn text(&mut self, frame: &[u8]) {
        if frame.starts_with(ws::MESSAGE_PREFIX) {
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

    fn binary(&mut self) {
        self.out.unexpected += 1;
    }
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
    async fn reconnect(
        &mut self,
        redial: &mut Redial,
        control: &mut mpsc::Receiver<Control<u64>>,
    ) -> Option<Ws> {
        let deadline = Instant::now() + self.shared.recover_timeout;
        loop {
            let wake = redial.wake();
            if wake > deadline {
                self.out.ended = Some(format!(
                    "gave up after {} reconnect attempts; first error: {}",
                    redial.attempts(),
                    self.out.first_failure.as_deref().unwrap_or("-")
                ));
                self.settle();
                return None;
            }
            if !subscriber::pause_until(wake, control, self).await {
                return None;
            }
            let node = redial.attempt();
            let url = redial.url().clone();
            self.out.attempts += 1;
            let recover = Some((self.epoch.as_str(), self.out.check.last));
            let result = tokio::time::timeout(
                self.shared.setup_timeout,
                handshake(&self.shared, &url, recover),
            )
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")));
            let (ws, sub, phases) = match result {
                Ok(x) => x,
                Err(e) => {
                    self.out.failed_attempts += 1;
                    self.out
                        .first_failure
                        .get_or_insert_with(|| format!("{url}: {e:#}"));
                    continue;
                }
            };
            redial.succeeded();
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

/// Runs the scenario; `Err` only when it could not be set up.
pub async fn run(opts: &Opts) -> anyhow::Result<RecoverReport> {
    validate(opts)?;
    let (clk_tck, _) = procstat::clock_ticks_per_sec();
    checks::check_pids(std::iter::once(opts.kill_pid).chain(opts.node_pids.iter().copied()))?;
    let endpoints = checks::endpoints(&opts.api, opts.run.api_key.as_deref())?;
    let shared = Arc::new(Shared {
        channel: opts.channel.clone(),
        urls: opts.ws.iter().map(|u| Arc::from(u.as_str())).collect(),
        ws_config: ws::small_config(),
        setup_timeout: Duration::from_secs_f64(opts.run.setup_timeout),
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
    let clients = fleet::spawn_all(
        opts.clients,
        opts.run.connect_concurrency,
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

    let api_clients = checks::api_clients(
        &endpoints,
        Duration::from_secs_f64(opts.run.publish_timeout),
    )
    .await?;
    let stop = Arc::new(AtomicBool::new(false));
    let last_offset = Arc::new(AtomicU64::new(0));
    let publisher = tokio::spawn(publish_with_history(
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
    let (drained, drain_secs) = fleet::wait_count(
        &shared.finished,
        clients.len(),
        Duration::from_secs_f64(opts.run.drain_timeout),
    )
    .await;
    let outcomes = fleet::stop_all(clients, Control::Stop).await?;

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
    report.add_outcomes(&outcomes);
    Ok(report)
}

fn validate(opts: &Opts) -> anyhow::Result<()> {
    ensure!(opts.clients > 0, "--clients must be at least 1");
    ensure!(
        opts.rate > 0.0 && opts.rate.is_finite(),
        "--rate must be positive"
    );
    ensure!(
        opts.run.connect_concurrency > 0,
        "--connect-concurrency must be at least 1"
    );
    ensure!(
        opts.backoff_min > Duration::ZERO && opts.backoff_max >= opts.backoff_min,
        "--backoff-min must be above zero and at most --backoff-max"
    );
    checks::check_positive(&[
        ("--before", opts.before),
        ("--after", opts.after),
        ("--setup-timeout", opts.run.setup_timeout),
        ("--drain-timeout", opts.run.drain_timeout),
        ("--publish-timeout", opts.run.publish_timeout),
    ])?;
    checks::check_open_files(opts.clients, opts.api.len(), "clients")
}
