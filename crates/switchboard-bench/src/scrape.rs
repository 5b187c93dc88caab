//! Reads a few counters from each node's `/metrics`, before and after the measure window.
//!
//! The generator's own counts say what clients saw; the node's counters say what it thinks it
//! did. Printing both side by side catches a node that drops messages silently (delivered
//! less than received), kicks slow consumers, or fails to reach the backplane, and it costs
//! two requests per node. A node without `/metrics` (or one that fails to answer) is simply
//! left out of the report.

use std::time::Duration;

use crate::http::{ApiClient, ApiEndpoint};

/// The counters compared, as named in NODE-CONTRACT.md (summed over labels).
pub const COUNTERS: [&str; 7] = [
    "switchboard_messages_delivered_total",
    "switchboard_backplane_received_total",
    "switchboard_backplane_published_total",
    "switchboard_slow_consumer_disconnects_total",
    "switchboard_backplane_errors_total",
    "switchboard_backplane_reconnects_total",
    "switchboard_disconnects_total",
];

/// One reading of [`COUNTERS`] from one node; `None` where the node did not answer.
pub type Reading = Option<[f64; COUNTERS.len()]>;

/// Reads [`COUNTERS`] from every node.
pub async fn read_all(endpoints: &[ApiEndpoint]) -> Vec<Reading> {
    let mut out = Vec::with_capacity(endpoints.len());
    for e in endpoints {
        let mut client = ApiClient::new(e.clone(), Duration::from_secs(2));
        let reading = match client.get("/metrics").await {
            Ok((status, body)) if status.is_success() => {
                let text = String::from_utf8_lossy(&body);
                Some(COUNTERS.map(|name| sum_metric(&text, name)))
            }
            _ => None,
        };
        out.push(reading);
    }
    out
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
}
