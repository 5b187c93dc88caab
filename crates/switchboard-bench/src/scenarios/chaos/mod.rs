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

pub mod accounting;
mod cluster;
pub mod faults;
pub mod subscriber;
pub mod traffic;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, ensure};
use tokio::sync::Mutex;
use tokio::time::Instant;

use self::accounting::account;
use self::cluster::{Cluster, redis_command};
use self::faults::{FaultKind, FaultRecord, Planned, parse_faults, schedule};
use self::subscriber::{SubShared, run_subscriber};
use self::traffic::{BURST_PUBLISHERS, Chan, PubLog, PubShared, WS_PUBLISHERS};
use crate::clients::backoff::{Backoff, parse_duration};
use crate::clients::fleet;
use crate::clients::payload::{self, BodyBuilder};
use crate::clients::subscriber::Control;
use crate::report::ChaosReport;
use crate::scenarios::checks;

/// Microseconds since the start of the run: the one clock of every record.
#[derive(Debug, Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    /// Now.
    pub fn us(self) -> u64 {
        self.at(Instant::now())
    }

    /// The time `t`.
    pub fn at(self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.0).as_micros()).unwrap_or(u64::MAX)
    }
}

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
    checks::check_positive(&[
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
    checks::check_open_files(opts.subscribers, 64, "subscribers")
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
    let spawned = fleet::spawn_all(opts.subscribers, 20, "subscribers", true, |start| {
        run_subscriber(start, sub_shared.clone())
    })
    .await?;
    let subscribers = spawned.handles;

    let pub_shared = Arc::new(PubShared {
        clock,
        bodies: Arc::new(
            channels
                .iter()
                .map(|c| BodyBuilder::new(&c.name, opts.payload))
                .collect(),
        ),
        channels: channels.clone(),
        endpoints: cluster.api_endpoints()?,
        timeout: opts.publish_timeout,
    });
    let started = Instant::now();
    let end = started + Duration::from_secs_f64(opts.duration);
    let mut publishers = Vec::new();
    for id in 0..opts.publishers {
        let rate = opts.rate / f64::from(opts.publishers);
        publishers.push(tokio::spawn(traffic::api_publisher(
            id,
            Some(rate),
            None,
            end,
            pub_shared.clone(),
            seed,
        )));
    }
    for i in 0..opts.ws_publishers {
        publishers.push(tokio::spawn(traffic::ws_publisher(
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
    let (marker_log, markers) = traffic::publish_markers(&pub_shared, settle_deadline).await?;
    pubs.push(marker_log);
    let markers = Arc::new(markers);
    for s in &subscribers {
        let _ = s.control.send(Control::Drain(markers.clone())).await;
    }
    let left = settle_deadline.saturating_duration_since(Instant::now());
    let (settled, _) = fleet::wait_count(&sub_shared.finished, opts.subscribers, left).await;
    let settle_secs = settle_started.elapsed().as_secs_f64();
    eprintln!(
        "chaos: {} of {} subscribers have their marker after {settle_secs:.2} s of settling",
        sub_shared.finished.load(Ordering::Acquire),
        opts.subscribers
    );
    let subs = fleet::stop_all(subscribers, Control::Stop).await?;

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
    r.add_traffic(&pubs, &subs, opts.details);
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
                handles.push(tokio::spawn(traffic::api_publisher(
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
