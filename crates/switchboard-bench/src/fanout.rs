//! The `fanout` scenario: many subscribers on one channel, a steady stream of publishes.
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

use anyhow::{Context, bail, ensure};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::http::{ApiClient, ApiEndpoint};
use crate::payload::{self, BodyBuilder};
use crate::procstat::{self, Proc, Sample};
use crate::publisher::{self, Plan, Tally};
use crate::scrape::{self, COUNTERS};
use crate::stats::{MachineUsage, NodeCounters, ProcUsage, Report, ShardedLatency};
use crate::subscriber::{self, Control, Outcome, Shared};

/// Options of `switchboard-bench fanout`.
#[derive(Debug, Clone, clap::Args)]
pub struct Opts {
    /// WebSocket URL of a node (repeat for several); subscribers are spread round-robin.
    #[arg(long = "ws", required = true, value_name = "URL")]
    pub ws: Vec<String>,
    /// Internal listener of a node (repeat for several); publishes rotate over them.
    #[arg(long = "api", required = true, value_name = "URL")]
    pub api: Vec<String>,
    /// Number of subscriber connections.
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Channel every subscriber subscribes to.
    #[arg(long, default_value = "bench")]
    pub channel: String,
    /// Publishes per second, all publishers together.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Length of the publishing phase in seconds, warm-up included.
    #[arg(long, default_value_t = 20.0)]
    pub duration: f64,
    /// Seconds at the start of publishing that are not measured.
    #[arg(long, default_value_t = 3.0)]
    pub warmup: f64,
    /// Size in bytes of each published `data` object.
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Publisher tasks sharing the rate, each with its own sequence and connections.
    #[arg(long, default_value_t = 4)]
    pub publishers: u32,
    /// Pid of a node, to report its CPU per delivery and memory (repeat; give them in the
    /// order of `--ws` to get per-node figures).
    #[arg(long = "node-pid", value_name = "PID")]
    pub node_pids: Vec<u32>,
    /// Pid of the Redis server, to report its CPU per publish (history makes each publish
    /// a Lua script there).
    #[arg(long, value_name = "PID")]
    pub redis_pid: Option<u32>,
    /// Connections being set up at once.
    #[arg(long, default_value_t = 200)]
    pub connect_concurrency: usize,
    /// Seconds allowed for one subscriber to connect and subscribe.
    #[arg(long, default_value_t = 10.0)]
    pub setup_timeout: f64,
    /// Seconds to wait, after the last publish, for every subscriber to receive it.
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

/// Latency histogram shards per runtime thread: enough that two threads rarely want the same
/// shard at once.
const LATENCY_SHARDS_PER_THREAD: usize = 8;

/// A subscriber task and the way to talk to it.
struct SubscriberHandle {
    control: mpsc::Sender<Control>,
    task: JoinHandle<Outcome>,
}

/// Runs the scenario and returns its report; `Err` only when the run could not be set up.
pub async fn run(opts: &Opts, runtime_threads: usize) -> anyhow::Result<Report> {
    validate(opts)?;
    let (clk_tck, clk_tck_read) = procstat::clock_ticks_per_sec();
    for &pid in opts.node_pids.iter().chain(&opts.redis_pid) {
        Proc::Pid(pid)
            .sample()
            .with_context(|| format!("--node-pid {pid}: cannot read /proc/{pid}"))?;
    }
    let endpoints = opts
        .api
        .iter()
        .map(|u| ApiEndpoint::parse(u, opts.api_key.as_deref()))
        .collect::<anyhow::Result<Vec<_>>>()?;

    let shared = Arc::new(Shared {
        channel: opts.channel.clone(),
        publishers: opts.publishers as usize,
        warmup_end_us: AtomicU64::new(u64::MAX),
        finished: AtomicUsize::new(0),
        setup_timeout: Duration::from_secs_f64(opts.setup_timeout),
        ws_config: WebSocketConfig::default().read_buffer_size(read_buffer_size(opts.payload)),
        latency: ShardedLatency::new(LATENCY_SHARDS_PER_THREAD * runtime_threads),
    });

    let setup_started = Instant::now();
    let subscribers = spawn_subscribers(opts, &shared).await?;
    let setup_secs = setup_started.elapsed().as_secs_f64();
    eprintln!(
        "{} subscribers ready in {setup_secs:.2} s",
        opts.subscribers
    );

    // Open every publisher connection before the clock starts.
    let body = Arc::new(BodyBuilder::new(&opts.channel, opts.payload));
    let publish_timeout = Duration::from_secs_f64(opts.publish_timeout);
    let mut client_sets = Vec::new();
    for _ in 0..opts.publishers {
        let mut clients = Vec::new();
        for e in &endpoints {
            let mut c = ApiClient::new(e.clone(), publish_timeout);
            c.connect().await?;
            clients.push(c);
        }
        client_sets.push(clients);
    }

    let start = Instant::now();
    let warmup_end_us = payload::now_us() + (opts.warmup * 1e6) as u64;
    shared.warmup_end_us.store(warmup_end_us, Ordering::Relaxed);
    let warmup_end = start + Duration::from_secs_f64(opts.warmup);
    let end = start + Duration::from_secs_f64(opts.duration);
    eprintln!(
        "publishing {:.1}/s for {:.1} s ({:.1} s warm-up)",
        opts.rate, opts.duration, opts.warmup
    );
    let publishers: Vec<JoinHandle<Tally>> = client_sets
        .into_iter()
        .enumerate()
        .map(|(id, clients)| {
            let plan = Plan {
                id: id as u32,
                publishers: opts.publishers,
                rate: opts.rate,
                start,
                end,
                warmup_end_us,
                body: body.clone(),
            };
            tokio::spawn(publisher::run(plan, clients))
        })
        .collect();

    tokio::time::sleep_until(warmup_end).await;
    let before = sample_all(&opts.node_pids);
    let redis_before = opts.redis_pid.map(|pid| Proc::Pid(pid).sample());
    let machine_before = procstat::machine_ticks().ok();
    let window_started = Instant::now();
    let counters_before = scrape::read_all(&endpoints).await;
    let mut tallies = Vec::new();
    for p in publishers {
        tallies.push(p.await.context("publisher task panicked")?);
    }
    // Measured messages are those sent in [warm-up end, end): rates are over that window.
    let measure_secs = opts.duration - opts.warmup;

    // Drain: wait until every subscriber has every publisher's last accepted message.
    let last_seqs = Arc::new(
        tallies
            .iter()
            .map(|t| t.last_accepted_seq)
            .collect::<Vec<_>>(),
    );
    let drain_started = Instant::now();
    for s in &subscribers {
        let _ = s.control.try_send(Control::Drain(last_seqs.clone()));
    }
    let drain_deadline = drain_started + Duration::from_secs_f64(opts.drain_timeout);
    let drained = loop {
        if shared.finished.load(Ordering::Acquire) >= subscribers.len() {
            break true;
        }
        if Instant::now() >= drain_deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let drain_secs = drain_started.elapsed().as_secs_f64();
    let after = sample_all(&opts.node_pids);
    let redis_after = opts.redis_pid.map(|pid| Proc::Pid(pid).sample());
    let machine_after = procstat::machine_ticks().ok();
    let window_secs = window_started.elapsed().as_secs_f64();
    let counters_after = scrape::read_all(&endpoints).await;

    for s in &subscribers {
        let _ = s.control.try_send(Control::Stop);
    }
    let mut outcomes = Vec::with_capacity(subscribers.len());
    for s in subscribers {
        outcomes.push(s.task.await.context("subscriber task panicked")?);
    }

    let mut report = Report {
        subscribers: opts.subscribers,
        ws_nodes: opts.ws.len(),
        api_nodes: opts.api.len(),
        publishers: opts.publishers as usize,
        channel: opts.channel.clone(),
        target_rate: opts.rate,
        payload: opts.payload,
        setup_secs,
        measure_secs,
        drain_secs,
        drained,
        runtime_threads,
        clk_tck,
        clk_tck_read,
        machine: machine_before
            .zip(machine_after)
            .map(|(b, a)| MachineUsage {
                busy_secs: a.busy.saturating_sub(b.busy) as f64 / clk_tck as f64,
                total_secs: a.total.saturating_sub(b.total) as f64 / clk_tck as f64,
                window_secs,
            }),
        ..Report::default()
    };
    add_publishers(&mut report, &tallies);
    let per_node = add_subscribers(&mut report, &outcomes, opts.ws.len());
    report.latency = shared.latency.merged().summary();
    add_usage(&mut report, opts, &per_node, &before, &after, clk_tck);
    if let (Some(pid), Some(b), Some(a)) = (opts.redis_pid, redis_before, redis_after) {
        report.redis = Some(match (b, a) {
            (Ok(b), Ok(a)) => ProcUsage {
                label: format!("redis pid {pid}"),
                pid: Some(pid),
                deliveries: report.deliveries,
                cpu_secs: Some(a.cpu_ticks.saturating_sub(b.cpu_ticks) as f64 / clk_tck as f64),
                rss_kb: a.rss_kb,
                peak_rss_kb: a.peak_rss_kb,
                error: None,
            },
            (Err(e), _) | (_, Err(e)) => ProcUsage {
                label: format!("redis pid {pid}"),
                pid: Some(pid),
                error: Some(e.to_string()),
                ..ProcUsage::default()
            },
        });
    }
    report.node_counters = opts
        .api
        .iter()
        .zip(counters_before.iter().zip(&counters_after))
        .map(|(api, pair)| NodeCounters {
            api: api.clone(),
            deltas: match pair {
                (Some(b), Some(a)) => Some(
                    COUNTERS
                        .iter()
                        .zip(b.iter().zip(a))
                        .map(|(name, (b, a))| (*name, a - b))
                        .collect(),
                ),
                _ => None,
            },
        })
        .collect();
    Ok(report)
}

fn validate(opts: &Opts) -> anyhow::Result<()> {
    ensure!(opts.subscribers > 0, "--subscribers must be at least 1");
    ensure!(
        opts.rate > 0.0 && opts.rate.is_finite(),
        "--rate must be positive"
    );
    ensure!(opts.publishers > 0, "--publishers must be at least 1");
    ensure!(
        opts.connect_concurrency > 0,
        "--connect-concurrency must be at least 1"
    );
    ensure!(
        opts.warmup >= 0.0 && opts.duration > opts.warmup,
        "--duration must be longer than --warmup"
    );
    for (name, v) in [
        ("--setup-timeout", opts.setup_timeout),
        ("--drain-timeout", opts.drain_timeout),
        ("--publish-timeout", opts.publish_timeout),
    ] {
        ensure!(v > 0.0 && v.is_finite(), "{name} must be positive");
    }
    if !valid_channel(&opts.channel) {
        bail!("--channel must be 1-255 bytes of A-Z a-z 0-9 _ - . : @ / =");
    }
    if let Some(limit) = procstat::open_files_limit() {
        let needed = (opts.subscribers + opts.publishers as usize * opts.api.len() + 64) as u64;
        ensure!(
            needed <= limit,
            "{} subscribers need about {needed} open files but the limit is {limit}: raise it (ulimit -n)",
            opts.subscribers
        );
    }
    Ok(())
}

/// PROTOCOL.md §3: 1 to 255 bytes of `A-Z a-z 0-9 _ - . : @ / =`.
fn valid_channel(name: &str) -> bool {
    (1..=255).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:@/=".contains(&b))
}

/// A read buffer that holds one whole message frame; tungstenite zero-fills the buffer's
/// free space on every read, so its 128 KiB default would cost both memory and CPU.
fn read_buffer_size(payload: usize) -> usize {
    (payload + 512).next_power_of_two().clamp(4096, 128 * 1024)
}

/// Spawns every subscriber and waits until all are subscribed. On the first failure, stops
/// the others and fails the run.
async fn spawn_subscribers(
    opts: &Opts,
    shared: &Arc<Shared>,
) -> anyhow::Result<Vec<SubscriberHandle>> {
    let setup = Arc::new(Semaphore::new(opts.connect_concurrency));
    let (ready_tx, mut ready_rx) = mpsc::channel(opts.subscribers);
    let urls: Vec<Arc<str>> = opts.ws.iter().map(|u| Arc::from(u.as_str())).collect();
    let handles: Vec<SubscriberHandle> = (0..opts.subscribers)
        .map(|i| {
            let node = i % urls.len();
            let (control, control_rx) = mpsc::channel(2);
            let task = tokio::spawn(subscriber::run(
                i,
                node,
                urls[node].clone(),
                shared.clone(),
                setup.clone(),
                ready_tx.clone(),
                control_rx,
            ));
            SubscriberHandle { control, task }
        })
        .collect();
    drop(ready_tx);

    let mut ready = 0;
    let mut progress = tokio::time::interval(Duration::from_secs(1));
    progress.tick().await;
    while ready < opts.subscribers {
        tokio::select! {
            r = ready_rx.recv() => match r {
                Some(Ok(())) => ready += 1,
                Some(Err(e)) => {
                    for h in &handles {
                        h.task.abort();
                    }
                    bail!("subscriber setup failed after {ready} succeeded: {e}");
                }
                None => bail!("subscriber tasks ended during setup"),
            },
            _ = progress.tick() => eprintln!("subscribed {ready}/{}", opts.subscribers),
        }
    }
    Ok(handles)
}

/// Samples every node and the generator; a node that is gone yields an error string.
fn sample_all(pids: &[u32]) -> (Vec<Result<Sample, String>>, Result<Sample, String>) {
    let nodes = pids
        .iter()
        .map(|&pid| {
            Proc::Pid(pid)
                .sample()
                .map_err(|e| format!("pid {pid}: {e}"))
        })
        .collect();
    (nodes, Proc::Me.sample().map_err(|e| e.to_string()))
}

fn add_publishers(report: &mut Report, tallies: &[Tally]) {
    let mut statuses = std::collections::BTreeMap::<u16, u64>::new();
    for t in tallies {
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
}

/// Adds up the subscribers' outcomes; returns deliveries per `--ws` node.
fn add_subscribers(report: &mut Report, outcomes: &[Outcome], ws_nodes: usize) -> Vec<u64> {
    let mut per_node = vec![0u64; ws_nodes];
    for o in outcomes {
        report.deliveries += o.received;
        report.lost += report.publishes_measured.saturating_sub(o.received);
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
    report.expected_deliveries = report.publishes_measured * outcomes.len() as u64;
    per_node
}

type Samples = (Vec<Result<Sample, String>>, Result<Sample, String>);

/// CPU and memory of the nodes and the generator over the measure window. A node's CPU is
/// divided by its own subscribers' deliveries when the pids line up with `--ws`, else by all.
fn add_usage(
    report: &mut Report,
    opts: &Opts,
    per_node: &[u64],
    before: &Samples,
    after: &Samples,
    clk_tck: u64,
) {
    let by_node = opts.node_pids.len() == opts.ws.len();
    let usage = |label: String,
                 pid: Option<u32>,
                 deliveries: u64,
                 b: &Result<Sample, String>,
                 a: &Result<Sample, String>| {
        let mut u = ProcUsage {
            label,
            pid,
            deliveries,
            ..ProcUsage::default()
        };
        match (b, a) {
            (Ok(b), Ok(a)) => {
                u.cpu_secs = Some(a.cpu_ticks.saturating_sub(b.cpu_ticks) as f64 / clk_tck as f64);
                u.rss_kb = a.rss_kb;
                u.peak_rss_kb = a.peak_rss_kb;
            }
            (Err(e), _) | (_, Err(e)) => u.error = Some(e.clone()),
        }
        u
    };
    for (i, &pid) in opts.node_pids.iter().enumerate() {
        let (label, deliveries) = if by_node {
            (
                format!("node {} pid {pid} ({})", i + 1, opts.ws[i]),
                per_node[i],
            )
        } else {
            (format!("node pid {pid}"), report.deliveries)
        };
        report.nodes.push(usage(
            label,
            Some(pid),
            deliveries,
            &before.0[i],
            &after.0[i],
        ));
    }
    report.generator = usage(
        "generator".to_owned(),
        None,
        report.deliveries,
        &before.1,
        &after.1,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names() {
        assert!(valid_channel("chat:lobby/room=1@x_y-z.w"));
        assert!(!valid_channel(""));
        assert!(!valid_channel("a b"));
        assert!(!valid_channel("a\"b"));
        assert!(!valid_channel(&"a".repeat(256)));
    }

    #[test]
    fn read_buffer_fits_a_frame() {
        assert_eq!(read_buffer_size(64), 4096);
        assert_eq!(read_buffer_size(5000), 8192);
        assert_eq!(read_buffer_size(1 << 20), 128 * 1024);
    }
}
