//! Reads a few counters from each node's `/metrics`, before and after the measure window.
//!
//! The generator's own counts say what clients saw; the node's counters say what it thinks it
//! did. Printing both side by side catches a node that drops messages silently (delivered
//! less than received), kicks slow consumers, or fails to reach the backplane, and it costs
//! two requests per node. A node without `/metrics` (or one that fails to answer) is simply
//! left out of the report.
//!
//! The same two readings give the nodes' own delivery latency histogram
//! ([`DELIVERY_LATENCY`]): the increase of its cumulative bucket counts over the window, summed
//! over the nodes, bounds the node-side quantiles by bucket. The generator's end-to-end
//! latency includes its own queueing (it reads every subscriber's socket on few threads); the
//! nodes' histogram does not.

use std::time::Duration;

use crate::clients::http::{ApiClient, ApiEndpoint};

/// The counters compared, as named in docs/ARCHITECTURE.md, "Metrics" (summed over labels).
pub const COUNTERS: [&str; 7] = [
    "switchboard_messages_delivered_total",
    "switchboard_backplane_received_total",
    "switchboard_backplane_published_total",
    "switchboard_slow_consumer_disconnects_total",
    "switchboard_backplane_errors_total",
    "switchboard_backplane_reconnects_total",
    "switchboard_disconnects_total",
];

/// The nodes' histogram of the time from an envelope's publish to its write to a client.
pub const DELIVERY_LATENCY: &str = "switchboard_delivery_latency_seconds";

/// One reading of one node's `/metrics`.
#[derive(Debug, Clone, PartialEq)]
pub struct Metrics {
    /// [`COUNTERS`], in order.
    pub counters: [f64; COUNTERS.len()],
    /// The [`DELIVERY_LATENCY`] buckets, `None` when the node does not export them.
    pub latency: Option<Buckets>,
}

/// One node's reading; `None` where the node did not answer.
pub type Reading = Option<Metrics>;

/// Reads [`COUNTERS`] and the [`DELIVERY_LATENCY`] buckets from every node.
pub async fn read_all(endpoints: &[ApiEndpoint]) -> Vec<Reading> {
    let mut out = Vec::with_capacity(endpoints.len());
    for e in endpoints {
        let mut client = ApiClient::new(e.clone(), Duration::from_secs(2));
        let reading = match client.get("/metrics").await {
            Ok((status, body)) if status.is_success() => {
                Some(parse_metrics(&String::from_utf8_lossy(&body)))
            }
            _ => None,
        };
        out.push(reading);
    }
    out
}

/// The counters and the latency buckets from the text of a `/metrics` answer.
pub fn parse_metrics(text: &str) -> Metrics {
    Metrics {
        counters: COUNTERS.map(|name| sum_metric(text, name)),
        latency: Buckets::parse(text, DELIVERY_LATENCY),
    }
}

/// Cumulative counts of a Prometheus histogram: (upper bound `le` in seconds, count of
/// observations at most that), ascending by bound; the `+Inf` bucket, when present, is last
/// (bound `f64::INFINITY`) and counts every observation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Buckets(pub Vec<(f64, f64)>);

/// Where a quantile lies, from bucket counts: at most a bucket's upper bound, or above the
/// largest finite bound (in the `+Inf` bucket). Seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Bound {
    /// The quantile is at most this.
    AtMost(f64),
    /// The quantile is above this (the largest finite bound; 0 if there is none).
    Above(f64),
}

impl Buckets {
    /// The `NAME_bucket{...,le="X",...} COUNT` samples of histogram `name`, counts summed
    /// over the other labels; `None` when there is none.
    pub fn parse(text: &str, name: &str) -> Option<Buckets> {
        let prefix = format!("{name}_bucket{{");
        let mut b = Buckets::default();
        let mut any = false;
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some(rest) = line.strip_prefix(prefix.as_str()) else {
                continue;
            };
            let Some((labels, value)) = rest.rsplit_once('}') else {
                continue;
            };
            let (Some(le), Some(count)) = (
                label_value(labels, "le").and_then(parse_le),
                value
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<f64>().ok()),
            ) else {
                continue;
            };
            b.add_count(le, count);
            any = true;
        }
        any.then_some(b)
    }

    fn add_count(&mut self, le: f64, count: f64) {
        match self.0.iter().position(|(b, _)| *b >= le) {
            Some(i) if self.0[i].0 == le => self.0[i].1 += count,
            Some(i) => self.0.insert(i, (le, count)),
            None => self.0.push((le, count)),
        }
    }

    /// Adds another histogram's counts, bound by bound (e.g. another node's).
    pub fn add(&mut self, other: &Buckets) {
        for &(le, count) in &other.0 {
            self.add_count(le, count);
        }
    }

    /// The increase from `before` to `self`; `None` when they do not have the same bounds or
    /// a count went down (the node restarted in between).
    pub fn since(&self, before: &Buckets) -> Option<Buckets> {
        if self.0.len() != before.0.len() {
            return None;
        }
        self.0
            .iter()
            .zip(&before.0)
            .map(|(&(le, a), &(le_b, b))| (le == le_b && a >= b).then_some((le, a - b)))
            .collect::<Option<Vec<_>>>()
            .map(Buckets)
    }

    /// Observations counted: the `+Inf` bucket's count (the largest count without it).
    pub fn count(&self) -> f64 {
        self.0.iter().map(|(_, c)| *c).fold(0.0, f64::max)
    }

    /// The bucket that holds quantile `q` (0 < q <= 1): the first whose cumulative count
    /// reaches rank ceil(q × count). `None` without observations.
    pub fn quantile(&self, q: f64) -> Option<Bound> {
        let n = self.count();
        if n <= 0.0 {
            return None;
        }
        // Less a hair, so that 0.99 × 2000 = 1979.9999.. or 1980.0000..1 both give 1980.
        let rank = (q * n - 1e-9).ceil().max(1.0);
        let largest_finite = self
            .0
            .iter()
            .map(|(le, _)| *le)
            .filter(|le| le.is_finite())
            .fold(0.0, f64::max);
        let (le, _) = self.0.iter().find(|(_, c)| *c >= rank)?;
        Some(if le.is_finite() {
            Bound::AtMost(*le)
        } else {
            Bound::Above(largest_finite)
        })
    }
}

/// The increase of the [`DELIVERY_LATENCY`] buckets over a window, summed over the nodes
/// read at both ends, and how many nodes that was.
pub fn latency_since(before: &[Reading], after: &[Reading]) -> (Option<Buckets>, usize) {
    let mut sum: Option<Buckets> = None;
    let mut nodes = 0;
    for (b, a) in before.iter().zip(after) {
        let (Some(b), Some(a)) = (
            b.as_ref().and_then(|m| m.latency.as_ref()),
            a.as_ref().and_then(|m| m.latency.as_ref()),
        ) else {
            continue;
        };
        if let Some(d) = a.since(b) {
            sum.get_or_insert_default().add(&d);
            nodes += 1;
        }
    }
    (sum, nodes)
}

/// Changes of a node's own counters over the measure window .
#[derive(Debug, Clone, Default)]
pub struct NodeCounters {
    /// The node's `--api` URL.
    pub api: String,
    /// Counter name and increase, in [`COUNTERS`] order; `None` if the node's
    /// `/metrics` could not be read.
    pub deltas: Option<Vec<(&'static str, f64)>>,
}

/// The nodes' own delivery latency over the measure window, from the increase of their
/// `switchboard_delivery_latency_seconds` histograms .
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

/// The nodes' delivery latency over a window, from the increase of their histograms between
/// two readings of every node.
pub fn node_latency(before: &[Reading], after: &[Reading]) -> NodeLatency {
    let (buckets, nodes_read) = latency_since(before, after);
    let buckets = buckets.unwrap_or_default();
    NodeLatency {
        nodes: before.len(),
        nodes_read,
        count: buckets.count() as u64,
        p50: buckets.quantile(0.5),
        p99: buckets.quantile(0.99),
    }
}

/// Each node's counter increases between two readings; `apis` names the nodes.
pub fn counter_deltas(apis: &[String], before: &[Reading], after: &[Reading]) -> Vec<NodeCounters> {
    apis.iter()
        .zip(before.iter().zip(after))
        .map(|(api, pair)| NodeCounters {
            api: api.clone(),
            deltas: match pair {
                (Some(b), Some(a)) => Some(
                    COUNTERS
                        .iter()
                        .zip(b.counters.iter().zip(&a.counters))
                        .map(|(name, (b, a))| (*name, a - b))
                        .collect(),
                ),
                _ => None,
            },
        })
        .collect()
}

/// The value of label `key` in `k1="v1",k2="v2"` (no escapes expected in the values we need).
fn label_value<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    let mut rest = labels;
    loop {
        let (k, after) = rest.split_once("=\"")?;
        let (v, tail) = after.split_once('"')?;
        if k.trim_start_matches([',', ' ']) == key {
            return Some(v);
        }
        rest = tail;
    }
}

/// `0.005`, `1e-3`, `+Inf`.
fn parse_le(v: &str) -> Option<f64> {
    match v {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        v => v.parse().ok().filter(|x: &f64| !x.is_nan()),
    }
}

/// Sum of every sample of metric `name` (any labels) in Prometheus text format.
fn sum_metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            // `name{..} v`, `name v`; not `name_suffix v`.
            let rest = match rest.as_bytes().first()? {
                b'{' => &rest[rest.find('}')? + 1..],
                b' ' | b'\t' => rest,
                _ => return None,
            };
            rest.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_samples_across_labels() {
        let text = "# HELP switchboard_disconnects_total Disconnects.\n\
                    # TYPE switchboard_disconnects_total counter\n\
                    switchboard_disconnects_total{reason=\"client_closed\"} 10\n\
                    switchboard_disconnects_total{reason=\"slow_consumer\"} 2\n\
                    switchboard_disconnects_total_extra 100\n\
                    switchboard_messages_delivered_total 1.5e3\n";
        assert_eq!(sum_metric(text, "switchboard_disconnects_total"), 12.0);
        assert_eq!(
            sum_metric(text, "switchboard_messages_delivered_total"),
            1500.0
        );
        assert_eq!(sum_metric(text, "switchboard_channels"), 0.0);
    }

    const BOUNDS: [&str; 17] = [
        "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1",
        "0.25", "0.5", "1", "2.5", "5", "10", "+Inf",
    ];

    /// A node's histogram text with these cumulative counts, one per bound of [`BOUNDS`].
    fn histogram(counts: [u64; 17]) -> String {
        let mut t = format!("# TYPE {DELIVERY_LATENCY} histogram\n");
        for (le, c) in BOUNDS.iter().zip(counts) {
            t.push_str(&format!("{DELIVERY_LATENCY}_bucket{{le=\"{le}\"}} {c}\n"));
        }
        t.push_str(&format!(
            "{DELIVERY_LATENCY}_sum 1.5\n{DELIVERY_LATENCY}_count {}\n",
            counts[16]
        ));
        t
    }

    fn reading(text: &str) -> Reading {
        Some(parse_metrics(text))
    }

    #[test]
    fn parses_histogram_buckets() {
        let text = "switchboard_delivery_latency_seconds_bucket{node=\"a\",le=\"0.001\"} 3\n\
                    switchboard_delivery_latency_seconds_bucket{le=\"+Inf\",node=\"a\"} 5\n\
                    switchboard_delivery_latency_seconds_bucket{node=\"b\",le=\"0.001\"} 1\n\
                    switchboard_delivery_latency_seconds_bucket{node=\"b\",le=\"1e-4\"} 1\n\
                    switchboard_delivery_latency_seconds_bucket{node=\"b\",le=\"+Inf\"} 2\n\
                    switchboard_delivery_latency_seconds_count 7\n\
                    switchboard_backplane_lag_seconds_bucket{le=\"0.001\"} 99\n";
        let b = Buckets::parse(text, DELIVERY_LATENCY).unwrap();
        assert_eq!(b.0, vec![(0.0001, 1.0), (0.001, 4.0), (f64::INFINITY, 7.0)]);
        assert_eq!(b.count(), 7.0);
        assert_eq!(
            Buckets::parse("switchboard_connections 3\n", DELIVERY_LATENCY),
            None
        );
        assert_eq!(Buckets::parse(text, "switchboard_nope"), None);
        let m = parse_metrics(&histogram([0; 17]));
        assert_eq!(m.latency.unwrap().0.len(), 17);
        assert_eq!(m.counters, [0.0; COUNTERS.len()]);
    }

    #[test]
    fn quantiles_from_bucket_deltas_over_nodes() {
        // Node 1: 100 before; 1,000 more in the window, 900 of them <= 1 ms, 90 <= 2.5 ms,
        // 10 <= 5 ms. Node 2: 1,000 more, all <= 0.5 ms.
        let mut a1 = [0; 17];
        let mut b1 = [0; 17];
        for (i, c) in b1.iter_mut().enumerate() {
            *c = if i >= 3 { 100 } else { 0 };
        }
        for (i, c) in a1.iter_mut().enumerate() {
            *c = b1[i]
                + match i {
                    0..=2 => 0,
                    3 => 900,
                    4 => 990,
                    _ => 1000,
                };
        }
        let mut a2 = [0; 17];
        for c in a2.iter_mut().skip(2) {
            *c = 1000;
        }
        let before = [reading(&histogram(b1)), reading(&histogram([0; 17]))];
        let after = [reading(&histogram(a1)), reading(&histogram(a2))];
        let (d, nodes) = latency_since(&before, &after);
        let d = d.unwrap();
        assert_eq!((nodes, d.count()), (2, 2000.0));
        // 1,000 <= 0.5 ms, 1,900 <= 1 ms, 1,990 <= 2.5 ms, 2,000 <= 5 ms.
        assert_eq!(d.quantile(0.5), Some(Bound::AtMost(0.0005)));
        assert_eq!(d.quantile(0.51), Some(Bound::AtMost(0.001)));
        assert_eq!(d.quantile(0.99), Some(Bound::AtMost(0.0025)));
        assert_eq!(d.quantile(0.999), Some(Bound::AtMost(0.005)));
        assert_eq!(d.quantile(1.0), Some(Bound::AtMost(0.005)));
    }

    #[test]
    fn quantile_edge_cases() {
        // No observations in the window.
        let same = [reading(&histogram([7; 17]))];
        let (d, nodes) = latency_since(&same, &same);
        assert_eq!(nodes, 1);
        assert_eq!(d.as_ref().unwrap().count(), 0.0);
        assert_eq!(d.unwrap().quantile(0.99), None);
        assert_eq!(Buckets::default().quantile(0.5), None);
        // Everything above the largest finite bound.
        let mut inf = [0; 17];
        inf[16] = 40;
        let d = Buckets::parse(&histogram(inf), DELIVERY_LATENCY).unwrap();
        assert_eq!(d.quantile(0.5), Some(Bound::Above(10.0)));
        assert_eq!(d.quantile(0.99), Some(Bound::Above(10.0)));
        // Only a +Inf bucket.
        let only = Buckets(vec![(f64::INFINITY, 3.0)]);
        assert_eq!(only.quantile(0.5), Some(Bound::Above(0.0)));
        // Everything in the first bucket.
        let d = Buckets::parse(&histogram([5; 17]), DELIVERY_LATENCY).unwrap();
        assert_eq!(d.quantile(0.99), Some(Bound::AtMost(0.0001)));
        // A node without the histogram, one that did not answer, and one that restarted
        // (counts went down) are left out.
        let with = reading(&histogram([1; 17]));
        let without = reading("switchboard_connections 1\n");
        let (d, nodes) = latency_since(&[without.clone(), None], &[without, with.clone()]);
        assert_eq!((d, nodes), (None, 0));
        let (d, nodes) = latency_since(&[reading(&histogram([9; 17]))], &[with]);
        assert_eq!((d, nodes), (None, 0));
    }
}
