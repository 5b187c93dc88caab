//! The `fanout` scenario: many subscribers on one channel, a steady stream of publishes; and
//! the machinery it shares with `rooms` (many channels, a few subscribers each) and `ramp`
//! (fanout at rising rates).
//!
//! It measures what a gateway is for: how many deliveries per second a cluster sustains, how
//! late they arrive, and what each delivery costs the nodes in CPU, while checking the
//! channel's contract (no loss, no duplicates, per-publisher order).
//!
//! The run: connect and subscribe everyone (bounded concurrency); publish at the target rate
//! for `--duration` seconds, the first `--warmup` of which are not measured; stop publishing
//! and wait until every subscriber has every publisher's last accepted message (or
//! `--drain-timeout`); then count. Loss is per subscriber: measured publishes accepted minus
//! measured messages received. A message is "measured" when its send time `t` is at or after
//! the end of the warm-up, a rule publishers and subscribers apply to the same number.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, ensure};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::clients::fleet::{self, Spawned};
use crate::clients::payload::{self, BodyBuilder};
use crate::clients::protocol::ProtocolOpts;
use crate::clients::publisher::{Pace, Publisher, Until};
use crate::clients::subscriber::Control;
use crate::clients::ws::read_buffer_size;
use crate::measure::deliveries::{self, Outcome, Shared};
use crate::measure::latency::{Latency, ShardedLatency};
use crate::measure::procstat;
use crate::measure::publishes::{Tally, drain_targets};
use crate::measure::scrape;
use crate::measure::usage::{Snapshot, Window};
use crate::report::Report;
use crate::scenarios::{RunOpts, checks};

/// Options shared by the scenarios that publish through the server API (`fanout`, `rooms`,
/// `ramp`).
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// WebSocket URL of a node (repeat for several); subscribers are spread round-robin.
    #[arg(long = "ws", required = true, value_name = "URL")]
    pub ws: Vec<String>,
    /// Internal listener of a node (repeat for several); publishes rotate over them.
    #[arg(long = "api", required = true, value_name = "URL")]
    pub api: Vec<String>,
    /// Size in bytes of each published `data` object.
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Pid of a node, to report its CPU per delivery and memory (repeat; give them in the
    /// order of `--ws` to get per-node figures).
    #[arg(long = "node-pid", value_name = "PID")]
    pub node_pids: Vec<u32>,
    /// Pid of the Redis server, to report its CPU per publish (history makes each publish
    /// a Lua script there).
    #[arg(long, value_name = "PID")]
    pub redis_pid: Option<u32>,
    #[command(flatten)]
    pub protocol: ProtocolOpts,
    #[command(flatten)]
    pub run: RunOpts,
}

/// The one channel of `fanout` and `ramp`, and how many subscribe to it.
#[derive(Debug, Clone, clap::Args)]
pub struct OneChannel {
    /// Number of subscriber connections.
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Channel every subscriber subscribes to.
    #[arg(long, default_value = "bench")]
    pub channel: String,
}

/// Options of `switchboard-bench fanout`.
#[derive(Debug, Clone, clap::Args)]
pub struct Opts {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub target: OneChannel,
    /// Publishes per second, all publishers together.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Length of the publishing phase in seconds, warm-up included.
    #[arg(long, default_value_t = 20.0)]
    pub duration: f64,
    /// Seconds at the start of publishing that are not measured.
    #[arg(long, default_value_t = 3.0)]
    pub warmup: f64,
    /// Publisher tasks sharing the rate, each with its own sequence and connections.
    #[arg(long, default_value_t = 4)]
    pub publishers: u32,
}

/// One measured run of publishers and subscribers: `fanout` is one channel, `rooms` many.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// `fanout` or `rooms`, for the report.
    pub name: &'static str,
    /// The channels; subscribers `i * per_channel ..` of channel `i` are consecutive, so with
    /// round-robin nodes every channel spans the nodes.
    pub channels: Vec<String>,
    /// Subscribers per channel.
    pub per_channel: usize,
    /// Publishes per second over all channels.
    pub rate: f64,
    /// Publishing time, warm-up included, seconds.
    pub duration: f64,
    /// Unmeasured start of publishing, seconds.
    pub warmup: f64,
    /// Publisher tasks.
    pub publishers: u32,
}

impl Scenario {
    /// The `fanout` scenario of `opts` (one channel).
    pub fn fanout(opts: &Opts) -> Self {
        Self::one_channel(
            &opts.target,
            opts.rate,
            opts.duration,
            opts.warmup,
            opts.publishers,
        )
    }

    /// A `fanout` run on `target`'s channel: `rate` publishes/s for `duration` seconds, the
    /// first `warmup` of them unmeasured, by `publishers` tasks.
    pub fn one_channel(
        target: &OneChannel,
        rate: f64,
        duration: f64,
        warmup: f64,
        publishers: u32,
    ) -> Self {
        Self {
            name: "fanout",
            channels: vec![target.channel.clone()],
            per_channel: target.subscribers,
            rate,
            duration,
            warmup,
            publishers,
        }
    }

    /// Number of subscribers.
    pub fn subscribers(&self) -> usize {
        self.channels.len() * self.per_channel
    }
}

/// Latency histogram shards per runtime thread: enough that two threads rarely want the same
/// shard at once.
const LATENCY_SHARDS_PER_THREAD: usize = 8;

/// Runs the `fanout` scenario and returns its report; `Err` only when it could not be set up.
pub async fn run(opts: &Opts, runtime_threads: usize) -> anyhow::Result<Report> {
    measure(&opts.common, &Scenario::fanout(opts), runtime_threads).await
}

/// Runs a scenario and returns its report; `Err` only when the run could not be set up.
pub async fn measure(
    opts: &Common,
    sc: &Scenario,
    runtime_threads: usize,
) -> anyhow::Result<Report> {
    validate(opts, sc)?;
    let (clk_tck, clk_tck_read) = procstat::clock_ticks_per_sec();
    checks::check_pids(opts.node_pids.iter().chain(&opts.redis_pid).copied())?;
    let endpoints = checks::endpoints(&opts.api, opts.run.api_key.as_deref())?;
    let redis_pid: Vec<u32> = opts.redis_pid.into_iter().collect();

    let shared = Arc::new(Shared {
        protocol: opts.protocol.protocol,
        channels: sc.channels.clone(),
        publishers: sc.publishers as usize,
        warmup_end_us: AtomicU64::new(u64::MAX),
        finished: AtomicUsize::new(0),
        setup_timeout: Duration::from_secs_f64(opts.run.setup_timeout),
        ws_config: WebSocketConfig::default().read_buffer_size(read_buffer_size(opts.payload)),
        latency: ShardedLatency::new(LATENCY_SHARDS_PER_THREAD * runtime_threads),
    });

    let setup_started = Instant::now();
    let subscribers = spawn_subscribers(opts, sc, &shared).await?.handles;
    let setup_secs = setup_started.elapsed().as_secs_f64();
    eprintln!(
        "{} subscribers ready in {setup_secs:.2} s",
        sc.subscribers()
    );

    // Open every publisher connection before the clock starts.
    let bodies = Arc::new(
        sc.channels
            .iter()
            .map(|c| BodyBuilder::new(&opts.protocol.publish_channel(c), opts.payload))
            .collect::<Vec<_>>(),
    );
    let publish_timeout = Duration::from_secs_f64(opts.run.publish_timeout);
    let mut client_sets = Vec::new();
    for _ in 0..sc.publishers {
        client_sets.push(checks::api_clients(&endpoints, publish_timeout).await?);
    }

    let start = Instant::now();
    let warmup_end_us = payload::now_us() + (sc.warmup * 1e6) as u64;
    shared.warmup_end_us.store(warmup_end_us, Ordering::Relaxed);
    let warmup_end = start + Duration::from_secs_f64(sc.warmup);
    let end = start + Duration::from_secs_f64(sc.duration);
    eprintln!(
        "publishing {:.1}/s over {} channel(s) for {:.1} s ({:.1} s warm-up), subscribers on \
         the {} protocol",
        sc.rate,
        sc.channels.len(),
        sc.duration,
        sc.warmup,
        opts.protocol.protocol.as_str()
    );
    let publishers: Vec<JoinHandle<Tally>> = client_sets
        .into_iter()
        .enumerate()
        .map(|(id, clients)| {
            let id = id as u32;
            let pace = Pace::Slots {
                publishers: sc.publishers,
                rate: sc.rate,
                start,
            };
            let until = Until {
                end: Some(end),
                ..Until::default()
            };
            let tally = Tally::new(id, bodies.len(), warmup_end_us);
            tokio::spawn(Publisher::new(id, clients, bodies.clone()).run(pace, until, tally))
        })
        .collect();

    tokio::time::sleep_until(warmup_end).await;
    let before = Snapshot::take(&opts.node_pids);
    let redis_before = Snapshot::take(&redis_pid);
    let counters_before = scrape::read_all(&endpoints).await;
    let mut tallies = Vec::new();
    for p in publishers {
        tallies.push(p.await.context("publisher task panicked")?);
    }
    // Measured messages are those sent in [warm-up end, end): rates are over that window.
    let measure_secs = sc.duration - sc.warmup;

    // Drain: wait until every subscriber has every publisher's last accepted message on its
    // channel.
    let targets = drain_targets(&tallies, sc.channels.len());
    for (i, s) in subscribers.iter().enumerate() {
        let _ = s
            .control
            .try_send(Control::Drain(targets[i / sc.per_channel].clone()));
    }
    let (drained, drain_secs) = fleet::wait_count(
        &shared.finished,
        subscribers.len(),
        Duration::from_secs_f64(opts.run.drain_timeout),
    )
    .await;
    let after = Snapshot::take(&opts.node_pids);
    let redis_after = Snapshot::take(&redis_pid);
    let counters_after = scrape::read_all(&endpoints).await;
    let outcomes = fleet::stop_all(subscribers, Control::Stop).await?;

    let window = Window::between(&before, &after, clk_tck);
    let mut report = Report {
        scenario: sc.name,
        protocol: opts.protocol.protocol,
        subscribers: sc.subscribers(),
        channels: sc.channels.len(),
        ws_nodes: opts.ws.len(),
        api_nodes: opts.api.len(),
        publishers: sc.publishers as usize,
        channel: sc.channels[0].clone(),
        target_rate: sc.rate,
        payload: opts.payload,
        setup_secs,
        measure_secs,
        window_secs: window.secs,
        drain_secs,
        drained,
        runtime_threads,
        clk_tck,
        clk_tck_read,
        machine: window.machine,
        ..Report::default()
    };
    add_publishers(&mut report, &tallies);
    let per_node = add_subscribers(&mut report, &outcomes, &tallies, opts.ws.len());
    report.latency = shared.latency.merged().summary();
    add_usage(&mut report, opts, &per_node, &window);
    if let Some(pid) = opts.redis_pid {
        let redis = Window::between(&redis_before, &redis_after, clk_tck);
        report.redis = Some(redis.node_usage(0, format!("redis pid {pid}"), report.deliveries));
    }
    report.node_counters = scrape::counter_deltas(&opts.api, &counters_before, &counters_after);
    report.node_latency = Some(scrape::node_latency(&counters_before, &counters_after));
    Ok(report)
}

fn validate(opts: &Common, sc: &Scenario) -> anyhow::Result<()> {
    ensure!(sc.subscribers() > 0, "there must be at least 1 subscriber");
    ensure!(sc.publishers > 0, "--publishers must be at least 1");
    ensure!(
        opts.run.connect_concurrency > 0,
        "--connect-concurrency must be at least 1"
    );
    ensure!(
        sc.warmup >= 0.0 && sc.duration > sc.warmup,
        "--duration must be longer than --warmup"
    );
    checks::check_positive(&[
        ("--rate", sc.rate),
        ("--setup-timeout", opts.run.setup_timeout),
        ("--drain-timeout", opts.run.drain_timeout),
        ("--publish-timeout", opts.run.publish_timeout),
    ])?;
    for c in &sc.channels {
        opts.protocol.check_channel("channel", c)?;
    }
    for url in &opts.ws {
        opts.protocol.ws_url(url)?;
    }
    checks::check_open_files(
        sc.subscribers(),
        sc.publishers as usize * opts.api.len(),
        "subscribers",
    )
}

/// Spawns every subscriber of `sc` and waits until all are subscribed; the first failure
/// fails the run (see [`fleet::spawn_all`]).
async fn spawn_subscribers(
    opts: &Common,
    sc: &Scenario,
    shared: &Arc<Shared>,
) -> anyhow::Result<Spawned<Control<Arc<Vec<u64>>>, Outcome>> {
    let urls = opts
        .ws
        .iter()
        .map(|u| opts.protocol.ws_url(u).map(Arc::<str>::from))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let per_channel = sc.per_channel.max(1);
    fleet::spawn_all(
        sc.subscribers(),
        opts.run.connect_concurrency,
        "subscribers",
        true,
        |start| {
            let i = start.0;
            let node = i % urls.len();
            deliveries::run(
                start,
                node,
                i / per_channel,
                urls[node].clone(),
                shared.clone(),
            )
        },
    )
    .await
}

fn add_publishers(report: &mut Report, tallies: &[Tally]) {
    let mut statuses = std::collections::BTreeMap::<u16, u64>::new();
    let mut answers = Latency::new();
    for t in tallies {
        answers.merge(&t.answer_latency);
        report.publishes_attempted += t.attempted;
        report.publishes_measured += t.accepted_measured;
        report.publish_transport_errors += t.transport_errors;
        report.publishes_skipped += t.skipped;
        for (code, n) in &t.status_errors {
            *statuses.entry(*code).or_default() += n;
        }
        if report.first_publish_error.is_none() {
            report.first_publish_error.clone_from(&t.first_error);
        }
    }
    report.publish_status_errors = statuses.into_iter().collect();
    report.publish_latency = answers.summary();
}

/// Adds up the subscribers' outcomes; returns deliveries per `--ws` node. A subscriber should
/// have received every measured publish accepted on its channel.
fn add_subscribers(
    report: &mut Report,
    outcomes: &[Outcome],
    tallies: &[Tally],
    ws_nodes: usize,
) -> Vec<u64> {
    let mut per_node = vec![0u64; ws_nodes];
    let mut measured = vec![0u64; report.channels.max(1)];
    for t in tallies {
        for (m, c) in measured.iter_mut().zip(&t.by_channel) {
            *m += c.accepted_measured;
        }
    }
    for o in outcomes {
        let expected = measured.get(o.channel).copied().unwrap_or(0);
        report.expected_deliveries += expected;
        report.deliveries += o.received;
        report.lost += expected.saturating_sub(o.received);
        report.duplicated += o.duplicated;
        report.out_of_order += o.out_of_order;
        report.unexpected_frames += o.unexpected;
        per_node[o.node] += o.received;
        if let Some(check) = &o.offsets {
            report.offsets.get_or_insert_default().add(check);
            report.offset_subscribers += 1;
        }
        if let Some(reason) = &o.ended {
            report.disconnected += 1;
            if report.disconnect_reasons.len() < 5 {
                report
                    .disconnect_reasons
                    .push(format!("node {}: {reason}", o.node + 1));
            }
        }
    }
    per_node
}

/// CPU and memory of the nodes and the generator over the measure window. A node's CPU is
/// divided by its own subscribers' deliveries when the pids line up with `--ws`, else by all.
fn add_usage(report: &mut Report, opts: &Common, per_node: &[u64], window: &Window) {
    let by_node = opts.node_pids.len() == opts.ws.len();
    for (i, &pid) in opts.node_pids.iter().enumerate() {
        let (label, deliveries) = if by_node {
            (
                format!("node {} pid {pid} ({})", i + 1, opts.ws[i]),
                per_node[i],
            )
        } else {
            (format!("node pid {pid}"), report.deliveries)
        };
        report.nodes.push(window.node_usage(i, label, deliveries));
    }
    report.generator = window.my_usage(report.deliveries);
}
