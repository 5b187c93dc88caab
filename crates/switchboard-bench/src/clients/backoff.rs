//! The small shared tools of every client: the duration parser of the options, the seeded
//! random generator, and the jittered exponential backoff with which a client goes round the
//! nodes after losing its connection.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// Parses a duration: `250ms`, `1.5s`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, scale) = if let Some(ms) = s.strip_suffix("ms") {
        (ms, 1e-3)
    } else if let Some(secs) = s.strip_suffix('s') {
        (secs, 1.0)
    } else {
        (s, 1.0)
    };
    let n: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: expected a duration like 50ms, 0.5s or 2"))?;
    if !n.is_finite() || n < 0.0 || n * scale > 86_400.0 {
        return Err(format!("{s:?}: out of range (0 to one day)"));
    }
    Ok(Duration::from_secs_f64(n * scale))
}

/// Jittered exponential backoff.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Smallest delay.
    pub min: Duration,
    /// Largest delay.
    pub max: Duration,
}

impl Backoff {
    /// The delay before attempt `attempt` (0 for the first) given `unit` in `[0, 1)`: uniform
    /// between `min` and `min(max, min × 2^(attempt+1))`.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let ceiling = self
            .min
            .saturating_mul(1u32 << (attempt + 1).min(20))
            .min(self.max)
            .max(self.min);
        self.min + (ceiling - self.min).mul_f64(unit.clamp(0.0, 1.0))
    }
}

/// A small pseudo-random generator (SplitMix64): jitter needs no more, and no dependency.
/// Seeded, so the `chaos` scenario can replay its fault schedule.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator whose sequence is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Where and when a client tries its next reconnect: each attempt goes to the node after the
/// previous one's, round and round, after a [`Backoff`] delay that grows with every attempt
/// since the last successful one.
#[derive(Debug, Clone)]
pub struct Redial {
    urls: Vec<Arc<str>>,
    node: usize,
    backoff: Backoff,
    rng: Rng,
    attempt: u32,
}

impl Redial {
    /// Starts on node `node` of `urls`; the jitter is drawn from a generator seeded `seed`.
    pub fn new(urls: Vec<Arc<str>>, node: usize, backoff: Backoff, seed: u64) -> Self {
        Self {
            urls,
            node,
            backoff,
            rng: Rng::new(seed),
            attempt: 0,
        }
    }

    /// The node (index) of the current connection or attempt.
    pub fn node(&self) -> usize {
        self.node
    }

    /// Its URL.
    pub fn url(&self) -> &Arc<str> {
        &self.urls[self.node]
    }

    /// Attempts since the last success.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// When the next attempt is due (one draw of the jitter); call [`Redial::attempt`] when it
    /// starts.
    pub fn wake(&mut self) -> Instant {
        Instant::now() + self.backoff.delay(self.attempt, self.rng.unit())
    }

    /// Moves to the next node and counts an attempt; returns the node.
    pub fn attempt(&mut self) -> usize {
        self.node = (self.node + 1) % self.urls.len();
        self.attempt = self.attempt.saturating_add(1);
        self.node
    }

    /// The connection is up again: the next loss starts from the smallest delay.
    pub fn succeeded(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("50ms"), Ok(Duration::from_millis(50)));
        assert_eq!(parse_duration("0.5s"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration(" 2 "), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5 s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("2d").is_err());
        assert!(parse_duration("inf").is_err());
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let b = Backoff {
            min: Duration::from_millis(50),
            max: Duration::from_millis(500),
        };
        assert_eq!(b.delay(0, 0.0), Duration::from_millis(50));
        assert_eq!(b.delay(0, 1.0), Duration::from_millis(100));
        assert_eq!(b.delay(1, 1.0), Duration::from_millis(200));
        assert_eq!(b.delay(2, 1.0), Duration::from_millis(400));
        assert_eq!(b.delay(3, 1.0), Duration::from_millis(500));
        assert_eq!(b.delay(40, 0.5), Duration::from_millis(275));
        let mut rng = Rng::new(7);
        for attempt in 0..10 {
            let d = b.delay(attempt, rng.unit());
            assert!(d >= b.min && d <= b.max, "{d:?}");
        }
    }

    #[test]
    fn jitter_is_uniform_enough() {
        let mut rng = Rng::new(42);
        let xs: Vec<f64> = (0..10_000).map(|_| rng.unit()).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
    }
}
