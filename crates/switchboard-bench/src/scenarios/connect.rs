//! The `connect` scenario: new connections per second on one node.
//!
//! `--concurrency` workers open connections to the `--ws` node(s) as fast as they can until
//! `--connections` have been tried; each attempt is a TCP connect, the WebSocket upgrade (JSON
//! subprotocol) and the `welcome` frame, and then, by default, a polite close (close frame,
//! wait for the node's close, at most a second), so the node's figure includes tearing a
//! connection down and the run is not bounded by file descriptors. With `--keep-open` the
//! connections are held until the end instead (then at most about the fd limit).
//!
//! Reported: connections per second (successful attempts over the whole phase, closes
//! included), handshake latency (connect to `welcome`) and its TCP part, errors by kind, the
//! node's CPU time per accepted connection over the phase (from `/proc/PID/stat` of
//! `--node-pid`), and the generator's own CPU: when it used about all of its runtime threads
//! the generator, not the node, set the rate.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::ensure;
use tokio::time::Instant;

use crate::clients::ws::{self, Ws};
use crate::measure::latency::{Latency, micros};
use crate::measure::procstat;
use crate::measure::usage::{Snapshot, Window};
use crate::report::ConnectReport;
use crate::scenarios::checks;

/// Options of `switchboard-bench connect`.
#[derive(Debug, Clone, clap::Args)]
pub struct Opts {
    /// WebSocket URL of the node (repeat for several: attempts rotate over them).
    #[arg(long = "ws", required = true, value_name = "URL")]
    pub ws: Vec<String>,
    /// Pid of a node, to report its CPU per accepted connection (repeat, in `--ws` order).
    #[arg(long = "node-pid", value_name = "PID")]
    pub node_pids: Vec<u32>,
    /// Connections to open.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// Connection attempts in flight at once.
    #[arg(long, default_value_t = 128)]
    pub concurrency: usize,
    /// Hold every connection until the end instead of closing it after the welcome.
    #[arg(long)]
    pub keep_open: bool,
    /// Seconds allowed for one attempt (connect, upgrade, welcome).
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
    /// Print the result as one JSON object too (the last line of stdout).
    #[arg(long)]
    pub json: bool,
}

/// What one worker did.
#[derive(Default)]
struct WorkerTally {
    ok: u64,
    handshake: Latency,
    tcp: Latency,
    errors: BTreeMap<String, u64>,
    first_error: Option<String>,
    held: Vec<Ws>,
}

/// Runs the scenario; `Err` only when it could not be set up.
pub async fn run(opts: &Opts, runtime_threads: usize) -> anyhow::Result<ConnectReport> {
    ensure!(opts.connections > 0, "--connections must be at least 1");
    ensure!(opts.concurrency > 0, "--concurrency must be at least 1");
    checks::check_positive(&[("--timeout", opts.timeout)])?;
    let in_use = if opts.keep_open {
        opts.connections
    } else {
        opts.concurrency
    };
    checks::check_open_files(in_use, 0, "connections")?;
    checks::check_pids(opts.node_pids.iter().copied())?;
    let (clk_tck, _) = procstat::clock_ticks_per_sec();

    let urls: Arc<Vec<String>> = Arc::new(opts.ws.clone());
    let next = Arc::new(AtomicUsize::new(0));
    let before = Snapshot::take(&opts.node_pids);
    let started = Instant::now();
    let workers: Vec<_> = (0..opts.concurrency.min(opts.connections))
        .map(|_| {
            let (urls, next) = (urls.clone(), next.clone());
            let (n, keep_open) = (opts.connections, opts.keep_open);
            let timeout = Duration::from_secs_f64(opts.timeout);
            tokio::spawn(worker(urls, next, n, keep_open, timeout))
        })
        .collect();
    let mut progress = tokio::time::interval(Duration::from_secs(1));
    progress.tick().await;
    let mut tallies = Vec::with_capacity(workers.len());
    for w in workers {
        let mut w = std::pin::pin!(w);
        loop {
            tokio::select! {
                t = &mut w => {
                    tallies.push(t.map_err(|e| anyhow::anyhow!("worker panicked: {e}"))?);
                    break;
                }
                _ = progress.tick() => eprintln!(
                    "connect: {} of {} attempts started",
                    next.load(Ordering::Relaxed).min(opts.connections),
                    opts.connections
                ),
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let after = Snapshot::take(&opts.node_pids);
    let window = Window::between(&before, &after, clk_tck);

    let mut handshake = Latency::new();
    let mut tcp = Latency::new();
    let mut errors = BTreeMap::<String, u64>::new();
    let mut report = ConnectReport {
        ws: opts.ws.clone(),
        connections: opts.connections,
        concurrency: opts.concurrency,
        keep_open: opts.keep_open,
        secs,
        nodes: window
            .nodes
            .iter()
            .map(|(pid, u)| (*pid, u.as_ref().map(|(cpu, _)| *cpu).map_err(Clone::clone)))
            .collect(),
        node_rss_kb: window
            .nodes
            .first()
            .and_then(|(_, u)| u.as_ref().ok().map(|(_, s)| s.rss_kb)),
        generator_cpu_secs: window.my_cpu_secs(),
        runtime_threads,
        machine: window.machine,
        ..ConnectReport::default()
    };
    for t in &mut tallies {
        report.ok += t.ok;
        handshake.merge(&t.handshake);
        tcp.merge(&t.tcp);
        for (k, n) in &t.errors {
            *errors.entry(k.clone()).or_default() += n;
        }
        if report.first_error.is_none() {
            report.first_error = t.first_error.take();
        }
    }
    report.errors = errors.into_iter().collect();
    report.handshake = handshake.summary();
    report.tcp = tcp.summary();
    // Held connections close only now, outside the measured phase.
    drop(tallies);
    Ok(report)
}

/// Takes attempt numbers from `next` until `n` have been taken.
async fn worker(
    urls: Arc<Vec<String>>,
    next: Arc<AtomicUsize>,
    n: usize,
    keep_open: bool,
    timeout: Duration,
) -> WorkerTally {
    let mut t = WorkerTally::default();
    let config = ws::small_config();
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= n {
            return t;
        }
        let url = &urls[i % urls.len()];
        let started = std::time::Instant::now();
        let attempt = tokio::time::timeout(timeout, ws::open_timed(url, config)).await;
        match attempt {
            Ok(Ok((mut ws, tcp))) => {
                t.ok += 1;
                t.handshake.record(micros(started.elapsed()));
                t.tcp.record(micros(tcp));
                if keep_open {
                    t.held.push(ws);
                } else {
                    ws::close_and_wait(&mut ws).await;
                }
            }
            Ok(Err(e)) => t.error(e.to_string(), format!("{url}: {e:#}")),
            Err(_) => t.error(
                "timed out".to_owned(),
                format!("{url}: timed out after {timeout:?}"),
            ),
        }
    }
}

impl WorkerTally {
    fn error(&mut self, kind: String, full: String) {
        *self.errors.entry(kind).or_default() += 1;
        self.first_error.get_or_insert(full);
    }
}
