//! The scenarios, one module each: options, the run, and the figures gathered into the
//! scenario's report (rendered by [`crate::report`]). [`checks`] holds what every scenario
//! checks before it starts.

pub mod chaos;
pub mod checks;
pub mod connect;
pub mod fanout;
pub mod idle;
pub mod ramp;
pub mod recover;
pub mod rooms;

/// Options of every scenario whose clients subscribe and publish through the server API
/// (`fanout`, `rooms`, `ramp`, `recover`).
#[derive(Debug, Clone, clap::Args)]
pub struct RunOpts {
    /// Connections being set up at once (`recover`: before the kill; its reconnects are not
    /// limited).
    #[arg(long, default_value_t = 200)]
    pub connect_concurrency: usize,
    /// Seconds allowed for one client to connect and subscribe (`recover`: also one
    /// reconnect attempt).
    #[arg(long, default_value_t = 10.0)]
    pub setup_timeout: f64,
    /// Seconds to wait, after the last publish, for every client to receive it.
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
