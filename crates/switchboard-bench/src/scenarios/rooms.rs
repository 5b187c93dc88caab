//! The `rooms` scenario: many channels with a few subscribers each (the chat pattern), a total
//! publish rate spread evenly over them.
//!
//! Subscribers `i * k .. (i + 1) * k` subscribe to channel `i` (`PREFIX-i`), and subscribers
//! go round-robin over the `--ws` nodes, so every channel with `k >= 2` has subscribers on
//! more than one node and each publish crosses the backplane. The publish slots take the
//! channels in turn. Everything else (publishers, drain, integrity checks, CPU per delivery)
//! is the `fanout` machinery; a subscriber should receive every measured publish accepted on
//! its own channel.

use crate::report::Report;
use crate::scenarios::fanout::{self, Common, Scenario};

/// Options of `switchboard-bench rooms`.
#[derive(Debug, Clone, clap::Args)]
pub struct Opts {
    #[command(flatten)]
    pub common: Common,
    /// Number of channels (rooms).
    #[arg(long, default_value_t = 1000)]
    pub channels: usize,
    /// Subscribers per channel.
    #[arg(long, default_value_t = 5)]
    pub per_channel: usize,
    /// Channels are named PREFIX-0 .. PREFIX-(channels - 1).
    #[arg(long, default_value = "room")]
    pub channel_prefix: String,
    /// Publishes per second, over all channels together.
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// Length of the publishing phase in seconds, warm-up included.
    #[arg(long, default_value_t = 20.0)]
    pub duration: f64,
    /// Seconds at the start of publishing that are not measured.
    #[arg(long, default_value_t = 3.0)]
    pub warmup: f64,
    /// Publisher tasks sharing the rate (each waits for every answer, so a high rate needs
    /// several).
    #[arg(long, default_value_t = 16)]
    pub publishers: u32,
}

/// The scenario of `opts`.
pub fn scenario(opts: &Opts) -> Scenario {
    Scenario {
        name: "rooms",
        channels: channel_names(&opts.channel_prefix, opts.channels),
        per_channel: opts.per_channel,
        rate: opts.rate,
        duration: opts.duration,
        warmup: opts.warmup,
        publishers: opts.publishers,
    }
}

/// `PREFIX-0` .. `PREFIX-(n - 1)`.
pub fn channel_names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// Runs the scenario; `Err` only when it could not be set up.
pub async fn run(opts: &Opts, runtime_threads: usize) -> anyhow::Result<Report> {
    anyhow::ensure!(
        opts.channels > 0 && opts.per_channel > 0,
        "--channels and --per-channel must be at least 1"
    );
    fanout::measure(&opts.common, &scenario(opts), runtime_threads).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(channel_names("room", 3), ["room-0", "room-1", "room-2"]);
        assert!(channel_names("r", 0).is_empty());
    }
}
