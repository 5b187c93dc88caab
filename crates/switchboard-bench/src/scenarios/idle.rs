//! The `idle` scenario: many subscribed connections held on one node, to measure what an idle
//! connection costs it (memory) and what accepting one costs (CPU).
//!
//! N connections open to one node, `--connect-concurrency` at a time; each reads the welcome,
//! subscribes to one channel and waits for `subscribed`. Connection `i` subscribes to channel
//! `PREFIX-(i mod C)`, C = `--channels` (100 by default: a realistic mix of shared
//! subscriptions; `--channels` equal to `--connections` gives each connection a channel of its
//! own, which costs the node one channel entry per connection as well). Nothing is published.
//! With `--protocol pusher` the connections are Pusher connections (connection established,
//! `pusher:subscribe`, subscription succeeded), to the same node.
//! The connections are then held for `--hold` seconds while the generator keeps reading (it
//! answers the node's heartbeat pings), and every connection that ends meanwhile is counted.
//!
//! From `/proc/PID` of `--node-pid`: RSS before the first connection, after the last one
//! subscribed, and at the end of the hold; **RSS per connection** = (RSS at the end - RSS
//! before) / connections; and the node's CPU time over the connect phase divided by the
//! connections accepted (upgrade, welcome, subscribe and `subscribed` included).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::ensure;
use tokio::time::Instant;

use crate::clients::fleet;
use crate::clients::protocol::ProtocolOpts;
use crate::clients::subscriber::Control;
use crate::clients::ws;
use crate::measure::deliveries::{self, Outcome, Shared};
use crate::measure::latency::{Latency, ShardedLatency, micros};
use crate::measure::procstat;
use crate::measure::usage::{Snapshot, Window};
use crate::report::{IdleReport, NodeFigures};
use crate::scenarios::checks;
use crate::scenarios::rooms::channel_names;

/// Options of `switchboard-bench idle`.
#[derive(Debug, Clone, clap::Args)]
pub struct Opts {
    /// WebSocket URL of the node.
    #[arg(long = "ws", value_name = "URL")]
    pub ws: String,
    /// Pid of the node, to read its memory and CPU time.
    #[arg(long = "node-pid", value_name = "PID")]
    pub node_pid: Option<u32>,
    /// Number of connections to open and hold.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// Number of channels the connections subscribe to (round-robin).
    #[arg(long, default_value_t = 100)]
    pub channels: usize,
    /// Channels are named PREFIX-0 .. PREFIX-(channels - 1).
    #[arg(long, default_value = "idle")]
    pub channel_prefix: String,
    /// Seconds to hold every connection once all are subscribed.
    #[arg(long, default_value_t = 10.0)]
    pub hold: f64,
    /// Connections being set up at once.
    #[arg(long, default_value_t = 200)]
    pub connect_concurrency: usize,
    /// Seconds allowed for one connection to connect and subscribe.
    #[arg(long, default_value_t = 10.0)]
    pub setup_timeout: f64,
    #[command(flatten)]
    pub protocol: ProtocolOpts,
    /// Print the result as one JSON object too (the last line of stdout).
    #[arg(long)]
    pub json: bool,
}

/// Runs the scenario; `Err` only when it could not be set up.
pub async fn run(opts: &Opts) -> anyhow::Result<IdleReport> {
    ensure!(opts.connections > 0, "--connections must be at least 1");
    ensure!(opts.channels > 0, "--channels must be at least 1");
    ensure!(
        opts.connect_concurrency > 0,
        "--connect-concurrency must be at least 1"
    );
    ensure!(
        opts.hold >= 0.0 && opts.hold.is_finite(),
        "--hold must be zero or more"
    );
    checks::check_positive(&[("--setup-timeout", opts.setup_timeout)])?;
    let channels = channel_names(&opts.channel_prefix, opts.channels);
    for c in &channels {
        opts.protocol.check_channel("--channel-prefix", c)?;
    }
    let url: Arc<str> = Arc::from(opts.protocol.ws_url(&opts.ws)?);
    checks::check_open_files(opts.connections, 0, "connections")?;
    checks::check_pids(opts.node_pid)?;
    let (clk_tck, _) = procstat::clock_ticks_per_sec();
    let pids: Vec<u32> = opts.node_pid.into_iter().collect();

    let shared = Arc::new(Shared {
        protocol: opts.protocol.protocol,
        channels,
        publishers: 0,
        warmup_end_us: AtomicU64::new(u64::MAX),
        finished: AtomicUsize::new(0),
        setup_timeout: Duration::from_secs_f64(opts.setup_timeout),
        ws_config: ws::small_config(),
        latency: ShardedLatency::new(1),
    });
    let n_channels = opts.channels;

    let before = Snapshot::take(&pids);
    let started = Instant::now();
    let spawned = fleet::spawn_all(
        opts.connections,
        opts.connect_concurrency,
        "connections",
        false,
        |start| {
            let channel = start.0 % n_channels;
            deliveries::run(start, 0, channel, url.clone(), shared.clone())
        },
    )
    .await?;
    let connect_secs = started.elapsed().as_secs_f64();
    let connected_at = Snapshot::take(&pids);
    eprintln!(
        "{} of {} subscribed in {connect_secs:.2} s; holding {:.1} s",
        opts.connections - spawned.failed,
        opts.connections,
        opts.hold
    );

    // Subscribed connections that end on their own count themselves in `finished` (those
    // that failed their setup never get that far).
    let hold_end = Instant::now() + Duration::from_secs_f64(opts.hold);
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(hold_end) => break,
            _ = tick.tick() => eprintln!(
                "holding: {} connections ended so far",
                shared.finished.load(Ordering::Acquire)
            ),
        }
    }
    let after = Snapshot::take(&pids);
    let outcomes = fleet::stop_all(spawned.handles, Control::Stop).await?;

    let connect = Window::between(&before, &connected_at, clk_tck);
    let hold = Window::between(&connected_at, &after, clk_tck);
    let mut report = IdleReport {
        ws: url.to_string(),
        protocol: opts.protocol.protocol,
        connections: opts.connections,
        channels: opts.channels,
        failed: spawned.failed,
        first_error: spawned.first_error,
        connect_secs,
        hold_secs: hold.secs,
        generator_connect_cpu_secs: connect.my_cpu_secs(),
        generator_rss_kb: hold.me.as_ref().map_or(0, |(_, s)| s.rss_kb),
        machine: connect.machine,
        node: node_figures(&before, &connect, &hold),
        ..IdleReport::default()
    };
    add_outcomes(&mut report, &outcomes);
    Ok(report)
}

fn node_figures(
    before: &Snapshot,
    connect: &Window,
    hold: &Window,
) -> Option<Result<NodeFigures, String>> {
    let first = before.nodes().next()?;
    let (Some((pid, c)), Some((_, h))) = (connect.nodes.first(), hold.nodes.first()) else {
        return None;
    };
    Some(match (first, c, h) {
        (Ok(b), Ok((connect_cpu, c)), Ok((hold_cpu, h))) => Ok(NodeFigures {
            pid: *pid,
            rss_before_kb: b.rss_kb,
            rss_connected_kb: c.rss_kb,
            rss_after_kb: h.rss_kb,
            peak_rss_kb: h.peak_rss_kb,
            connect_cpu_secs: connect_cpu.total,
            connect_user_secs: connect_cpu.user,
            hold_cpu_secs: hold_cpu.total,
        }),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => Err(e.clone()),
    })
}

fn add_outcomes(r: &mut IdleReport, outcomes: &[Outcome]) {
    let mut latency = Latency::new();
    for o in outcomes.iter().filter(|o| o.ready) {
        r.connected += 1;
        latency.record(micros(o.setup));
        r.unexpected_frames += o.unexpected;
        if let Some(reason) = &o.ended {
            r.disconnects += 1;
            if r.disconnect_reasons.len() < 5 {
                r.disconnect_reasons.push(reason.clone());
            }
        }
    }
    r.connect_latency = latency.summary();
}
