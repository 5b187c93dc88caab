//! What a run measures: latency histograms ([`latency`]), deliveries as subscribers see them
//! ([`deliveries`]), publishes as publishers see them ([`publishes`]), history offsets
//! ([`offsets`]), CPU and memory of the processes and the machine ([`procstat`], [`usage`]),
//! and the nodes' own metrics ([`scrape`]).

pub mod deliveries;
pub mod latency;
pub mod offsets;
pub mod procstat;
pub mod publishes;
pub mod scrape;
pub mod usage;
