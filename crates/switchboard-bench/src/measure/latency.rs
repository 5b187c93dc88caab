//! Latency histograms.
//!
//! Subscribers record into a few histogram shards rather than one histogram each: a 3-digit
//! histogram up to a minute holds 17k counters (139 KiB, all touched when it is created), so
//! one per subscriber would cost the generator over a gigabyte at 10k subscribers. With as
//! many shards as several times the runtime threads, a shard's lock is almost never contended
//! and costs a few tens of nanoseconds against microseconds of socket work per delivery; the
//! shards are merged once, when the run is over.

use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

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

/// A duration in whole microseconds, as histograms record it.
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn peak_rates() {
        assert_eq!(peak_rate(&[], 0.1), 0.0);
        assert_eq!(peak_rate(&[0.5], 0.1), 10.0);
        // Three within 100 ms, then two more.
        let times = [0.00, 0.03, 0.09, 0.15, 0.30];
        assert!((peak_rate(&times, 0.1) - 30.0).abs() < 1e-9);
        assert!((peak_rate(&times, 1.0) - 5.0).abs() < 1e-9);
    }
}
