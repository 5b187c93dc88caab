//! Latency histograms and the report of a run.
//!
//! Subscribers record into a few histogram shards rather than one histogram each: a 3-digit
//! histogram up to a minute holds 17k counters (139 KiB, all touched when it is created), so
//! one per subscriber would cost the generator over a gigabyte at 10k subscribers. With as
//! many shards as several times the runtime threads, a shard's lock is almost never contended
//! and costs a few tens of nanoseconds against microseconds of socket work per delivery; the
//! shards are merged once, when the run is over.

use std::fmt::Write as _;
use std::sync::Mutex;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::offsets::OffsetCheck;
use crate::scrape::Bound;

/// End-to-end latency in microseconds: publisher's send time to subscriber's receive time.
pub struct Latency(Histogram<u64>);

/// Latency histograms shared by all subscribers, sharded to keep their locks uncontended.
pub struct ShardedLatency {
    shards: Vec<Mutex<Latency>>,
}

/// Latency quantiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LatencySummary {
    /// Number of recorded deliveries.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest recorded value (up to the histogram's ceiling of a minute).
    pub max: f64,
}

impl LatencySummary {
    /// The summary as JSON: `count`, `p50`, `p90`, `p99`, `p99_9`, `max`.
    pub fn json(&self) -> Value {
        json!({
            "count": self.count, "p50": self.p50, "p90": self.p90, "p99": self.p99,
            "p99_9": self.p999, "max": self.max,
        })
    }

    /// The summary as JSON without the 99.9th percentile: `count`, `p50`, `p90`, `p99`, `max`.
    pub fn json_without_p999(&self) -> Value {
        json!({"count": self.count, "p50": self.p50, "p90": self.p90, "p99": self.p99, "max": self.max})
    }
}

/// CPU time of a process over a window, seconds: all of it, and the part in user mode.
///
/// The rest is kernel time (system calls, and softirq work the kernel charged to the process:
/// on loopback that includes the receiving side's TCP processing, see the README).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuTime {
    /// utime + stime.
    pub total: f64,
    /// utime.
    pub user: f64,
}

impl CpuTime {
    /// stime: total - user.
    pub fn kernel(&self) -> f64 {
        (self.total - self.user).max(0.0)
    }
}

/// CPU and memory of one process over the measure window.
#[derive(Debug, Clone, Default)]
pub struct ProcUsage {
    /// What the process is (`node 1 (ws://...)`, `generator`).
    pub label: String,
    /// Its pid, when it is not the generator.
    pub pid: Option<u32>,
    /// Deliveries its CPU time is divided by.
    pub deliveries: u64,
    /// CPU seconds (user + system) in the measure window; `None` if it could not be read.
    pub cpu_secs: Option<f64>,
    /// The user-mode part of `cpu_secs`.
    pub user_secs: Option<f64>,
    /// Resident set size at the end of the window, KiB.
    pub rss_kb: u64,
    /// Peak resident set size, KiB.
    pub peak_rss_kb: u64,
    /// Why it could not be read, if so.
    pub error: Option<String>,
}

/// The whole machine's CPU over the measure window.
#[derive(Debug, Clone, Copy, Default)]
pub struct MachineUsage {
    /// CPU seconds spent running anything, all CPUs together.
    pub busy_secs: f64,
    /// CPU seconds available (busy + idle), all CPUs together.
    pub total_secs: f64,
    /// Wall-clock length of the window, seconds.
    pub window_secs: f64,
}

impl MachineUsage {
    /// Cores the machine has, as seen over the window.
    pub fn cores(&self) -> f64 {
        if self.window_secs > 0.0 {
            self.total_secs / self.window_secs
        } else {
            0.0
        }
    }

    /// Cores busy on average.
    pub fn busy_cores(&self) -> f64 {
        if self.window_secs > 0.0 {
            self.busy_secs / self.window_secs
        } else {
            0.0
        }
    }

    /// `B of C cores busy`, for the reports' `machine:` lines.
    pub fn busy_text(&self) -> String {
        format!("{:.2} of {:.2} cores busy", self.busy_cores(), self.cores())
    }

    /// Cores busy with processes other than `ours` (CPU seconds of the measured processes).
    pub fn other_cores(&self, ours: f64) -> f64 {
        if self.window_secs > 0.0 {
            ((self.busy_secs - ours) / self.window_secs).max(0.0)
        } else {
            0.0
        }
    }
}

/// Changes of a node's own counters over the measure window (see [`crate::scrape`]).
#[derive(Debug, Clone, Default)]
pub struct NodeCounters {
    /// The node's `--api` URL.
    pub api: String,
    /// Counter name and increase, in [`crate::scrape::COUNTERS`] order; `None` if the node's
    /// `/metrics` could not be read.
    pub deltas: Option<Vec<(&'static str, f64)>>,
}

/// The nodes' own delivery latency over the measure window, from the increase of their
/// `switchboard_delivery_latency_seconds` histograms (see [`crate::scrape`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct NodeLatency {
    /// `--api` nodes asked.
    pub nodes: usize,
    /// Nodes whose histogram was read at both ends of the window.
    pub nodes_read: usize,
    /// Deliveries the histograms counted over the window.
    pub count: u64,
    /// The bucket holding the median; `None` without deliveries.
    pub p50: Option<Bound>,
    /// The bucket holding the 99th percentile.
    pub p99: Option<Bound>,
}

impl NodeLatency {
    /// The report line (without its `node-side latency:` label).
    pub fn describe(&self) -> String {
        if self.nodes_read == 0 {
            return format!(
                "no switchboard_delivery_latency_seconds histogram read from the {} node(s)' \
                 /metrics (missing, or /metrics unreadable)",
                self.nodes
            );
        }
        let from = if self.nodes_read == self.nodes {
            "from the nodes' histograms".to_owned()
        } else {
            format!(
                "from the histograms of {} of {} nodes",
                self.nodes_read, self.nodes
            )
        };
        match (self.p50, self.p99) {
            (Some(p50), Some(p99)) => format!(
                "p50 {}, p99 {} (n={}, {from})",
                bound_text(p50),
                bound_text(p99),
                self.count
            ),
            _ => format!("no deliveries counted (n=0, {from})"),
        }
    }

    /// The JSON object: `p50_le_ms` / `p99_le_ms` are the upper bounds of the buckets
    /// holding the quantiles, in ms; when a quantile is in the `+Inf` bucket its `_le_ms` is
    /// null and `_above_ms` names the largest finite bound.
    pub fn json(&self) -> Value {
        let le = |b: Option<Bound>| match b {
            Some(Bound::AtMost(s)) => Some(s * 1e3),
            _ => None,
        };
        let above = |b: Option<Bound>| match b {
            Some(Bound::Above(s)) => Some(s * 1e3),
            _ => None,
        };
        json!({
            "nodes": self.nodes,
            "nodes_read": self.nodes_read,
            "count": self.count,
            "p50_le_ms": le(self.p50),
            "p99_le_ms": le(self.p99),
            "p50_above_ms": above(self.p50),
            "p99_above_ms": above(self.p99),
        })
    }
}

/// `<= 2.5 ms`, `> 10000 ms`.
fn bound_text(b: Bound) -> String {
    match b {
        Bound::AtMost(s) => format!("<= {} ms", bound_ms(s)),
        Bound::Above(s) => format!("> {} ms", bound_ms(s)),
    }
}

/// A bucket bound in seconds as milliseconds without trailing zeros: 0.00025 -> `0.25`.
pub fn bound_ms(secs: f64) -> String {
    let t = format!("{:.3}", secs * 1e3);
    t.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Everything a fan-out (or rooms) run measured.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// `fanout` or `rooms`.
    pub scenario: &'static str,
    /// Number of subscribers.
    pub subscribers: usize,
    /// Number of channels (subscribers are spread evenly over them).
    pub channels: usize,
    /// Number of `--ws` nodes.
    pub ws_nodes: usize,
    /// Number of `--api` nodes.
    pub api_nodes: usize,
    /// Number of publisher tasks.
    pub publishers: usize,
    /// The channel (the first one, with several).
    pub channel: String,
    /// Target publishes per second.
    pub target_rate: f64,
    /// Size of each published `data`, bytes.
    pub payload: usize,
    /// Seconds spent connecting and subscribing everyone.
    pub setup_secs: f64,
    /// Length of the measure window (publishing after the warm-up), seconds.
    pub measure_secs: f64,
    /// Length of the window over which CPU was read (the measure window and the drain).
    pub window_secs: f64,
    /// Publishes attempted over the whole run, warm-up included.
    pub publishes_attempted: u64,
    /// Publishes accepted (2xx) in the measure window.
    pub publishes_measured: u64,
    /// Publishes answered with a non-2xx status, by status.
    pub publish_status_errors: Vec<(u16, u64)>,
    /// Publishes without an answer (connection failure or timeout).
    pub publish_transport_errors: u64,
    /// The first publish error seen, for the report.
    pub first_publish_error: Option<String>,
    /// Scheduled publishes skipped because a publisher was more than 100 ms behind.
    pub publishes_skipped: u64,
    /// Time from sending a measured publish to its 2xx answer.
    pub publish_latency: LatencySummary,
    /// Deliveries of measured messages, all subscribers together.
    pub deliveries: u64,
    /// Deliveries that the measured publishes should have produced.
    pub expected_deliveries: u64,
    /// Measured messages some subscriber never received.
    pub lost: u64,
    /// Deliveries whose seq equalled the previous one of the same publisher.
    pub duplicated: u64,
    /// Deliveries whose seq was below the previous one of the same publisher.
    pub out_of_order: u64,
    /// Subscribers the server disconnected (or that failed) during the run.
    pub disconnected: u64,
    /// A few of their reasons.
    pub disconnect_reasons: Vec<String>,
    /// `error` replies and unexpected frames seen by subscribers.
    pub unexpected_frames: u64,
    /// Offset checks of all subscribers together, when the channel has history.
    pub offsets: Option<OffsetCheck>,
    /// Subscribers whose offsets were checked.
    pub offset_subscribers: usize,
    /// Seconds from the last publish until every subscriber had the last message.
    pub drain_secs: f64,
    /// Whether the drain completed before its timeout.
    pub drained: bool,
    /// Latency of measured deliveries.
    pub latency: LatencySummary,
    /// The nodes' own delivery latency over the window, when their `/metrics` were read.
    pub node_latency: Option<NodeLatency>,
    /// The nodes given with `--node-pid`.
    pub nodes: Vec<ProcUsage>,
    /// The generator itself.
    pub generator: ProcUsage,
    /// The Redis server, when `--redis-pid` was given.
    pub redis: Option<ProcUsage>,
    /// The whole machine over the window, when `/proc/stat` was readable.
    pub machine: Option<MachineUsage>,
    /// The nodes' own counters, one entry per `--api` node.
    pub node_counters: Vec<NodeCounters>,
    /// Generator runtime threads.
    pub runtime_threads: usize,
    /// Clock ticks per second used to convert CPU times.
    pub clk_tck: u64,
    /// Whether `clk_tck` was read from the kernel (else assumed 100).
    pub clk_tck_read: bool,
}

impl Latency {
    /// An empty histogram: 1 µs to 60 s at 3 significant digits; larger values are clamped.
    pub fn new() -> Self {
        Self(Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds"))
    }

    /// Records one latency.
    pub fn record(&mut self, us: u64) {
        self.0.saturating_record(us.max(1));
    }

    /// Adds another task's histogram into this one.
    pub fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides, so this cannot fail.
        let _ = self.0.add(&other.0);
    }

    /// Quantiles in milliseconds.
    pub fn summary(&self) -> LatencySummary {
        let ms = |us: u64| us as f64 / 1000.0;
        if self.0.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: self.0.len(),
            p50: ms(self.0.value_at_quantile(0.5)),
            p90: ms(self.0.value_at_quantile(0.9)),
            p99: ms(self.0.value_at_quantile(0.99)),
            p999: ms(self.0.value_at_quantile(0.999)),
            max: ms(self.0.max()),
        }
    }
}

impl std::fmt::Debug for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Latency({:?})", self.summary())
    }
}

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl ShardedLatency {
    /// `shards` empty histograms (at least one).
    pub fn new(shards: usize) -> Self {
        Self {
            shards: (0..shards.max(1))
                .map(|_| Mutex::new(Latency::new()))
                .collect(),
        }
    }

    /// Records one latency in the shard picked by `key` (e.g. the subscriber's index).
    pub fn record(&self, key: usize, us: u64) {
        let shard = &self.shards[key % self.shards.len()];
        // A poisoned shard only means another subscriber panicked mid-record: keep counting.
        shard.lock().unwrap_or_else(|p| p.into_inner()).record(us);
    }

    /// All shards merged.
    pub fn merged(&self) -> Latency {
        let mut all = Latency::new();
        for shard in &self.shards {
            all.merge(&shard.lock().unwrap_or_else(|p| p.into_inner()));
        }
        all
    }
}

impl ProcUsage {
    /// CPU microseconds per delivery, when both are known.
    pub fn us_per_delivery(&self) -> Option<f64> {
        let cpu = self.cpu_secs?;
        (self.deliveries > 0).then(|| cpu * 1e6 / self.deliveries as f64)
    }

    /// User-mode CPU microseconds per delivery.
    pub fn user_us_per_delivery(&self) -> Option<f64> {
        let user = self.user_secs?;
        (self.deliveries > 0).then(|| user * 1e6 / self.deliveries as f64)
    }

    /// Kernel-mode CPU microseconds per delivery: total - user.
    pub fn kernel_us_per_delivery(&self) -> Option<f64> {
        Some((self.us_per_delivery()? - self.user_us_per_delivery()?).max(0.0))
    }

    /// ` (user 0.71, kernel 6.31` when the split is known: the caller closes it.
    fn split(&self) -> String {
        match (self.user_us_per_delivery(), self.kernel_us_per_delivery()) {
            (Some(u), Some(k)) => format!(" (user {u:.2}, kernel {k:.2}; "),
            _ => " (".to_owned(),
        }
    }

    fn line(&self) -> String {
        let mut s = format!("{}: ", self.label);
        if let Some(e) = &self.error {
            let _ = write!(s, "unreadable ({e})");
            return s;
        }
        match (self.cpu_secs, self.us_per_delivery()) {
            (Some(cpu), Some(per)) => {
                let _ = write!(
                    s,
                    "cpu {cpu:.2} s = {per:.2} µs/delivery{}{} deliveries)",
                    self.split(),
                    self.deliveries
                );
            }
            (Some(cpu), None) => {
                let _ = write!(s, "cpu {cpu:.2} s (no deliveries)");
            }
            _ => s.push_str("cpu unknown"),
        }
        let _ = write!(
            s,
            ", rss {:.1} MiB (peak {:.1} MiB)",
            self.rss_kb as f64 / 1024.0,
            self.peak_rss_kb as f64 / 1024.0
        );
        s
    }

    fn json(&self) -> Value {
        json!({
            "label": self.label,
            "pid": self.pid,
            "deliveries": self.deliveries,
            "cpu_secs": self.cpu_secs,
            "cpu_us_per_delivery": self.us_per_delivery(),
            "user_secs": self.user_secs,
            "user_us_per_delivery": self.user_us_per_delivery(),
            "kernel_us_per_delivery": self.kernel_us_per_delivery(),
            "rss_kb": self.rss_kb,
            "peak_rss_kb": self.peak_rss_kb,
            "error": self.error,
        })
    }
}

impl Report {
    /// Publish errors of any kind.
    pub fn publish_errors(&self) -> u64 {
        self.publish_transport_errors
            + self
                .publish_status_errors
                .iter()
                .map(|(_, n)| n)
                .sum::<u64>()
    }

    /// CPU seconds of the nodes, Redis and the generator over the window (those known).
    pub fn measured_cpu_secs(&self) -> f64 {
        self.nodes
            .iter()
            .chain(&self.redis)
            .chain(std::iter::once(&self.generator))
            .filter_map(|u| u.cpu_secs)
            .sum()
    }

    /// Measured publishes per second.
    pub fn publish_rate(&self) -> f64 {
        per_sec(self.publishes_measured, self.measure_secs)
    }

    /// Measured deliveries per second.
    pub fn delivery_rate(&self) -> f64 {
        per_sec(self.deliveries, self.measure_secs)
    }

    /// CPU microseconds per delivery of all `--node-pid` nodes together, when all were read.
    pub fn nodes_us_per_delivery(&self) -> Option<f64> {
        let cpu: Option<f64> = self.nodes.iter().map(|n| n.cpu_secs).sum();
        cpu.filter(|_| self.deliveries > 0 && !self.nodes.is_empty())
            .map(|cpu| cpu * 1e6 / self.deliveries as f64)
    }

    /// User-mode CPU microseconds per delivery of all `--node-pid` nodes together.
    pub fn nodes_user_us_per_delivery(&self) -> Option<f64> {
        let user: Option<f64> = self.nodes.iter().map(|n| n.user_secs).sum();
        user.filter(|_| self.deliveries > 0 && !self.nodes.is_empty())
            .map(|user| user * 1e6 / self.deliveries as f64)
    }

    /// Kernel-mode CPU microseconds per delivery of all `--node-pid` nodes together.
    pub fn nodes_kernel_us_per_delivery(&self) -> Option<f64> {
        Some((self.nodes_us_per_delivery()? - self.nodes_user_us_per_delivery()?).max(0.0))
    }

    /// Cores the nodes together used over the CPU window.
    pub fn nodes_cores(&self) -> Option<f64> {
        let cpu: Option<f64> = self.nodes.iter().map(|n| n.cpu_secs).sum();
        cpu.filter(|_| self.window_secs > 0.0 && !self.nodes.is_empty())
            .map(|cpu| cpu / self.window_secs)
    }

    /// Cores the generator used over the CPU window.
    pub fn generator_cores(&self) -> Option<f64> {
        self.generator
            .cpu_secs
            .filter(|_| self.window_secs > 0.0)
            .map(|cpu| cpu / self.window_secs)
    }

    /// What went wrong, one line each; empty for a clean run. A non-empty list makes the
    /// process exit non-zero.
    pub fn failures(&self) -> Vec<String> {
        let mut f = Vec::new();
        if self.lost > 0 {
            f.push(format!("{} deliveries lost", self.lost));
        }
        if self.duplicated > 0 {
            f.push(format!("{} duplicate deliveries", self.duplicated));
        }
        if self.out_of_order > 0 {
            f.push(format!("{} out-of-order deliveries", self.out_of_order));
        }
        if self.disconnected > 0 {
            f.push(format!("{} subscribers disconnected", self.disconnected));
        }
        if self.publish_errors() > 0 {
            f.push(format!("{} publish errors", self.publish_errors()));
        }
        if self.publishes_measured == 0 {
            f.push("nothing was published in the measure window".to_owned());
        }
        if let Some(o) = &self.offsets {
            f.extend(offset_failures(o));
        }
        f
    }

    /// The human-readable report.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let l = &self.latency;
        let what = if self.channels > 1 {
            format!(
                "{} channels × {} subscribers ({} in all) on {} node(s), channels {:?}...",
                self.channels,
                self.subscribers / self.channels,
                self.subscribers,
                self.ws_nodes,
                self.channel
            )
        } else {
            format!(
                "{} subscribers on {} node(s), channel {:?}",
                self.subscribers, self.ws_nodes, self.channel
            )
        };
        let _ = writeln!(
            s,
            "{}: {what}, {} publisher(s) over {} API node(s), target {:.1}/s, payload {} B",
            self.scenario, self.publishers, self.api_nodes, self.target_rate, self.payload
        );
        let _ = writeln!(
            s,
            "setup:       {} connected and subscribed in {:.2} s ({:.0}/s)",
            self.subscribers,
            self.setup_secs,
            per_sec(self.subscribers as u64, self.setup_secs)
        );
        let _ = writeln!(
            s,
            "publishes:   {:.1}/s ({} accepted in the {:.2} s measure window; {} attempted in all), \
             errors {}, skipped {}",
            self.publish_rate(),
            self.publishes_measured,
            self.measure_secs,
            self.publishes_attempted,
            self.publish_errors(),
            self.publishes_skipped
        );
        let p = &self.publish_latency;
        let _ = writeln!(
            s,
            "publish ms:  p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}  (API call to its answer)",
            p.p50, p.p90, p.p99, p.max
        );
        if self.publish_errors() > 0 {
            let statuses: Vec<String> = self
                .publish_status_errors
                .iter()
                .map(|(c, n)| format!("{c}: {n}"))
                .collect();
            let _ = writeln!(
                s,
                "             by status [{}], transport {}; first: {}",
                statuses.join(", "),
                self.publish_transport_errors,
                self.first_publish_error.as_deref().unwrap_or("-")
            );
        }
        let _ = writeln!(
            s,
            "deliveries:  {:.0}/s ({} of {} expected)",
            self.delivery_rate(),
            self.deliveries,
            self.expected_deliveries
        );
        let _ = writeln!(
            s,
            "integrity:   lost {}, duplicated {}, out-of-order {}, disconnected {}, unexpected frames {}; \
             drain {:.2} s{}",
            self.lost,
            self.duplicated,
            self.out_of_order,
            self.disconnected,
            self.unexpected_frames,
            self.drain_secs,
            if self.drained { "" } else { " (timed out)" }
        );
        for r in &self.disconnect_reasons {
            let _ = writeln!(s, "             disconnect: {r}");
        }
        if let Some(o) = &self.offsets {
            let _ = writeln!(
                s,
                "offsets:     {} checked on {} subscriber(s): gaps {} ({} offsets skipped), \
                 repeats {}, missing {}",
                o.checked, self.offset_subscribers, o.gaps, o.skipped, o.repeats, o.missing
            );
        }
        let _ = writeln!(
            s,
            "latency ms:  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  (n={})",
            l.p50, l.p90, l.p99, l.p999, l.max, l.count
        );
        if let Some(n) = &self.node_latency {
            let _ = writeln!(s, "node-side latency: {}", n.describe());
        }
        for n in &self.nodes {
            let _ = writeln!(s, "{}", n.line());
        }
        if self.nodes.len() > 1
            && let (Some(per), Some(cores)) = (self.nodes_us_per_delivery(), self.nodes_cores())
        {
            let split = match (
                self.nodes_user_us_per_delivery(),
                self.nodes_kernel_us_per_delivery(),
            ) {
                (Some(u), Some(k)) => format!(" (user {u:.2} µs, kernel {k:.2} µs)"),
                _ => String::new(),
            };
            let _ = writeln!(
                s,
                "nodes total: {per:.2} µs/delivery{split}, {cores:.2} cores over the {:.2} s window",
                self.window_secs
            );
        }
        if let Some(r) = &self.redis {
            let _ = write!(s, "{}", r.line());
            match r.cpu_secs.filter(|_| self.publishes_measured > 0) {
                Some(cpu) => {
                    let _ = writeln!(
                        s,
                        "; {:.1} µs/publish",
                        cpu * 1e6 / self.publishes_measured as f64
                    );
                }
                None => s.push('\n'),
            }
        }
        for n in &self.node_counters {
            let _ = match &n.deltas {
                Some(d) => {
                    let parts: Vec<String> = d
                        .iter()
                        .map(|(name, v)| format!("{} +{v}", short_name(name)))
                        .collect();
                    writeln!(s, "node metrics {}: {}", n.api, parts.join(", "))
                }
                None => writeln!(s, "node metrics {}: /metrics unreadable", n.api),
            };
        }
        let _ = writeln!(
            s,
            "{} ({} runtime thread(s))",
            self.generator.line(),
            self.runtime_threads
        );
        if let Some(m) = &self.machine {
            let _ = writeln!(
                s,
                "machine:     {} over the window; other processes {:.2} cores",
                m.busy_text(),
                m.other_cores(self.measured_cpu_secs())
            );
        }
        let _ = writeln!(
            s,
            "cpu times in clock ticks of 1/{} s ({})",
            self.clk_tck,
            if self.clk_tck_read {
                "read from /proc/self/auxv"
            } else {
                "assumed"
            }
        );
        write_result(&mut s, 13, &self.failures());
        s
    }

    /// The report as one JSON object.
    pub fn json(&self) -> Value {
        let mut v = json!({
            "subscribers": self.subscribers,
            "ws_nodes": self.ws_nodes,
            "api_nodes": self.api_nodes,
            "publishers": self.publishers,
            "channel": self.channel,
            "target_rate": self.target_rate,
            "payload": self.payload,
            "setup_secs": self.setup_secs,
            "measure_secs": self.measure_secs,
            "publishes_attempted": self.publishes_attempted,
            "publishes_measured": self.publishes_measured,
            "publishes_per_sec": self.publish_rate(),
            "publish_errors": self.publish_errors(),
            "publish_status_errors": self.publish_status_errors.iter()
                .map(|(c, n)| (c.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "publish_transport_errors": self.publish_transport_errors,
            "publishes_skipped": self.publishes_skipped,
            "deliveries": self.deliveries,
            "expected_deliveries": self.expected_deliveries,
            "deliveries_per_sec": self.delivery_rate(),
            "lost": self.lost,
            "duplicated": self.duplicated,
            "out_of_order": self.out_of_order,
            "disconnected": self.disconnected,
            "unexpected_frames": self.unexpected_frames,
            "offsets": self.offsets.as_ref().map(|o| offsets_json(o, self.offset_subscribers)),
            "drain_secs": self.drain_secs,
            "drained": self.drained,
            "latency_ms": self.latency.json(),
            "nodes": self.nodes.iter().map(ProcUsage::json).collect::<Vec<_>>(),
            "generator": self.generator.json(),
            "redis": self.redis.as_ref().map(|r| {
                let mut v = r.json();
                v["cpu_us_per_publish"] = json!(r.cpu_secs
                    .filter(|_| self.publishes_measured > 0)
                    .map(|cpu| cpu * 1e6 / self.publishes_measured as f64));
                v
            }),
            "node_counters": self.node_counters.iter().map(|n| json!({
                "api": n.api,
                "deltas": n.deltas.as_ref().map(|d| d.iter()
                    .map(|(name, v)| ((*name).to_owned(), json!(v)))
                    .collect::<serde_json::Map<_, _>>()),
            })).collect::<Vec<_>>(),
            "machine": self.machine.map(|m| json!({
                "cores": m.cores(),
                "busy_cores": m.busy_cores(),
                "other_cores": m.other_cores(self.measured_cpu_secs()),
            })),
            "runtime_threads": self.runtime_threads,
            "clk_tck": self.clk_tck,
            "clk_tck_read": self.clk_tck_read,
            "failures": self.failures(),
            "ok": self.failures().is_empty(),
        });
        // Added one by one: one `json!` this large exceeds the macro recursion limit.
        for (key, value) in [
            ("scenario", json!(self.scenario)),
            ("channels", json!(self.channels)),
            (
                "nodes_cpu_us_per_delivery",
                json!(self.nodes_us_per_delivery()),
            ),
            (
                "nodes_user_us_per_delivery",
                json!(self.nodes_user_us_per_delivery()),
            ),
            (
                "nodes_kernel_us_per_delivery",
                json!(self.nodes_kernel_us_per_delivery()),
            ),
            (
                "node_latency",
                json!(self.node_latency.as_ref().map(NodeLatency::json)),
            ),
            ("nodes_cores", json!(self.nodes_cores())),
            ("window_secs", json!(self.window_secs)),
            ("generator_cores", json!(self.generator_cores())),
            (
                "publish_latency_ms",
                self.publish_latency.json_without_p999(),
            ),
        ] {
            v[key] = value;
        }
        v
    }
}

/// What an offset check found wrong, one line each.
pub fn offset_failures(o: &OffsetCheck) -> Vec<String> {
    let mut f = Vec::new();
    if o.gaps > 0 {
        f.push(format!(
            "{} offset gaps ({} offsets skipped)",
            o.gaps, o.skipped
        ));
    }
    if o.repeats > 0 {
        f.push(format!("{} repeated or late offsets", o.repeats));
    }
    if o.missing > 0 {
        f.push(format!("{} messages without an offset", o.missing));
    }
    f
}

/// An offset check as JSON.
pub fn offsets_json(o: &OffsetCheck, subscribers: usize) -> Value {
    json!({
        "subscribers": subscribers,
        "checked": o.checked,
        "gaps": o.gaps,
        "skipped": o.skipped,
        "repeats": o.repeats,
        "missing": o.missing,
    })
}

/// `switchboard_messages_delivered_total` -> `messages_delivered`, for the human report.
fn short_name(name: &str) -> &str {
    let name = name.strip_prefix("switchboard_").unwrap_or(name);
    name.strip_suffix("_total").unwrap_or(name)
}

/// Appends a report's last line, `result: OK` or `result: FAILED: ...` (the failures joined by
/// `; `), with the label `result:` padded to `label_width` to line up with the report's other
/// labels.
pub fn write_result(s: &mut String, label_width: usize, failures: &[String]) {
    let label = "result:";
    if failures.is_empty() {
        let _ = writeln!(s, "{label:<label_width$}OK");
    } else {
        let _ = writeln!(s, "{label:<label_width$}FAILED: {}", failures.join("; "));
    }
}

/// `n` events over `secs` seconds as a rate; 0 for an empty window.
pub fn per_sec(n: u64, secs: f64) -> f64 {
    if secs > 0.0 { n as f64 / secs } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_lines_keep_each_report_s_padding() {
        let mut s = String::new();
        write_result(&mut s, 13, &[]);
        write_result(&mut s, 14, &["a".to_owned(), "b".to_owned()]);
        write_result(&mut s, 8, &[]);
        assert_eq!(
            s,
            "result:      OK\nresult:       FAILED: a; b\nresult: OK\n"
        );
    }

    #[test]
    fn latency_json_with_and_without_p999() {
        let l = LatencySummary {
            count: 3,
            p50: 1.0,
            p90: 2.0,
            p99: 3.0,
            p999: 4.0,
            max: 5.0,
        };
        assert_eq!(
            l.json(),
            json!({"count": 3, "p50": 1.0, "p90": 2.0, "p99": 3.0, "p99_9": 4.0, "max": 5.0})
        );
        assert_eq!(
            l.json_without_p999(),
            json!({"count": 3, "p50": 1.0, "p90": 2.0, "p99": 3.0, "max": 5.0})
        );
    }

    #[test]
    fn merged_quantiles() {
        let mut a = Latency::new();
        let mut b = Latency::new();
        for us in 1..=500 {
            a.record(us * 10);
        }
        for us in 501..=1000 {
            b.record(us * 10);
        }
        b.record(0); // clamped to 1 µs, not rejected
        a.merge(&b);
        let s = a.summary();
        let sharded = ShardedLatency::new(3);
        for us in 1..=1000 {
            sharded.record(us as usize, us * 10);
        }
        sharded.record(7, 0);
        assert_eq!(sharded.merged().summary(), s);
        assert_eq!(s.count, 1001);
        assert!((s.p50 - 5.0).abs() < 0.01, "{s:?}");
        assert!((s.p99 - 9.9).abs() < 0.02, "{s:?}");
        assert!((s.max - 10.0).abs() < 0.01, "{s:?}");
        assert_eq!(Latency::new().summary(), LatencySummary::default());
    }

    #[test]
    fn failures_name_what_went_wrong() {
        let ok = Report {
            publishes_measured: 10,
            ..Report::default()
        };
        assert!(ok.failures().is_empty());
        let bad = Report {
            publishes_measured: 10,
            lost: 2,
            out_of_order: 1,
            publish_status_errors: vec![(503, 4)],
            ..Report::default()
        };
        let f = bad.failures().join("; ");
        assert!(
            f.contains("2 deliveries lost") && f.contains("1 out-of-order"),
            "{f}"
        );
        assert!(f.contains("4 publish errors"), "{f}");
        assert!(!f.contains("duplicate"), "{f}");
        assert!(!f.contains("offset"), "{f}");
        let gaps = Report {
            publishes_measured: 10,
            offsets: Some(OffsetCheck {
                checked: 10,
                gaps: 1,
                skipped: 3,
                ..OffsetCheck::default()
            }),
            ..Report::default()
        };
        assert_eq!(gaps.failures(), ["1 offset gaps (3 offsets skipped)"]);
    }

    #[test]
    fn cpu_per_delivery() {
        let u = ProcUsage {
            deliveries: 1_000_000,
            cpu_secs: Some(2.5),
            ..ProcUsage::default()
        };
        assert_eq!(u.us_per_delivery(), Some(2.5));
        assert!(u.json()["cpu_us_per_delivery"].as_f64().is_some());
        assert_eq!(u.user_us_per_delivery(), None);
        assert!(u.line().contains("2.50 µs/delivery (1000000 deliveries)"));
        let split = ProcUsage {
            user_secs: Some(0.5),
            ..u
        };
        assert_eq!(split.user_us_per_delivery(), Some(0.5));
        assert_eq!(split.kernel_us_per_delivery(), Some(2.0));
        assert!(
            split
                .line()
                .contains("2.50 µs/delivery (user 0.50, kernel 2.00; 1000000 deliveries)"),
            "{}",
            split.line()
        );
        assert_eq!(split.json()["kernel_us_per_delivery"], 2.0);
        let node = |user| ProcUsage {
            deliveries: 500_000,
            cpu_secs: Some(1.0),
            user_secs: user,
            ..ProcUsage::default()
        };
        let r = Report {
            deliveries: 1_000_000,
            window_secs: 2.0,
            nodes: vec![node(Some(0.25)), node(Some(0.5))],
            ..Report::default()
        };
        assert_eq!(r.nodes_us_per_delivery(), Some(2.0));
        assert_eq!(r.nodes_user_us_per_delivery(), Some(0.75));
        assert_eq!(r.nodes_kernel_us_per_delivery(), Some(1.25));
        assert!(
            r.render().contains(
                "nodes total: 2.00 µs/delivery (user 0.75 µs, kernel 1.25 µs), 1.00 cores"
            ),
            "{}",
            r.render()
        );
        assert_eq!(r.json()["nodes_kernel_us_per_delivery"], 1.25);
        let partial = Report {
            nodes: vec![node(Some(0.25)), node(None)],
            ..r
        };
        assert_eq!(partial.nodes_user_us_per_delivery(), None);
        assert_eq!(partial.nodes_kernel_us_per_delivery(), None);
    }

    #[test]
    fn node_latency_lines() {
        let n = NodeLatency {
            nodes: 2,
            nodes_read: 2,
            count: 450_000,
            p50: Some(Bound::AtMost(0.0025)),
            p99: Some(Bound::AtMost(0.005)),
        };
        assert_eq!(
            n.describe(),
            "p50 <= 2.5 ms, p99 <= 5 ms (n=450000, from the nodes' histograms)"
        );
        assert_eq!(n.json()["p99_le_ms"], 5.0);
        assert!(n.json()["p99_above_ms"].is_null());
        let slow = NodeLatency {
            nodes_read: 1,
            p50: Some(Bound::AtMost(0.00025)),
            p99: Some(Bound::Above(10.0)),
            ..n
        };
        assert_eq!(
            slow.describe(),
            "p50 <= 0.25 ms, p99 > 10000 ms (n=450000, from the histograms of 1 of 2 nodes)"
        );
        assert!(slow.json()["p99_le_ms"].is_null());
        assert_eq!(slow.json()["p99_above_ms"], 10000.0);
        let empty = NodeLatency {
            count: 0,
            p50: None,
            p99: None,
            ..n
        };
        assert!(empty.describe().starts_with("no deliveries counted (n=0"));
        let missing = NodeLatency {
            nodes: 2,
            ..NodeLatency::default()
        };
        assert!(
            missing
                .describe()
                .contains("no switchboard_delivery_latency_seconds")
        );
        let r = Report {
            publishes_measured: 1,
            node_latency: Some(missing),
            ..Report::default()
        };
        assert!(
            r.render()
                .contains("node-side latency: no switchboard_delivery_latency_seconds")
        );
        assert!(r.failures().is_empty());
        assert_eq!(r.json()["node_latency"]["nodes_read"], 0);
        assert!(Report::default().json()["node_latency"].is_null());
    }
}
