//! `switchboard-bench`: a load generator for Switchboard clusters.
//!
//! It drives real WebSocket subscribers and server-API publishers against running nodes and
//! reports throughput, loss, order, latency and the nodes' CPU per delivery. It is a separate
//! binary, not a test, so that it can be pointed at any deployment and held to its own cores
//! (`--runtime-threads`, `taskset`) while the nodes are measured.
//!
//! Exit status: 0 for a clean run, 1 when the run found a problem (loss, duplicates,
//! out-of-order, disconnects, publish errors, failed connections), 2 when it could not run at
//! all.

mod clients;
mod measure;
mod report;
mod scenarios;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use report::RunReport;
use scenarios::{chaos, connect, fanout, idle, ramp, recover, rooms};

/// Load generator for Switchboard clusters.
#[derive(Debug, Parser)]
// A later option overrides an earlier one, so scripts can give defaults that the caller's
// arguments (appended after them) replace.
#[command(version, about, args_override_self = true)]
struct Cli {
    /// Tokio worker threads of the generator (1 runs everything on one core).
    #[arg(long, global = true, default_value_t = 1)]
    runtime_threads: usize,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Many subscribers on one channel, publishes at a fixed rate: deliveries/s, latency,
    /// loss, duplicates, order, and the nodes' CPU per delivery.
    Fanout(fanout::Opts),
    /// Clients subscribed with history to a node that is then killed (SIGKILL): how long
    /// they take to reconnect elsewhere and recover every missed message, checking offsets.
    Recover(recover::Opts),
    /// Many channels with a few subscribers each, a total publish rate spread over them: the
    /// same report as `fanout`.
    Rooms(rooms::Opts),
    /// Many subscribed connections held on one node: connections/s while opening them,
    /// connect latency, the node's RSS per connection and CPU per accepted connection.
    Idle(idle::Opts),
    /// New connections per second on a node (upgrade and welcome, then close): handshake
    /// latency, errors, the node's CPU per accepted connection.
    Connect(connect::Opts),
    /// The fanout scenario at rising rates until loss appears or p99 passes a bound: every
    /// step's figures and the highest clean step.
    Ramp(ramp::Opts),
    /// A bounded fault soak: starts Redis and three nodes, kills and pauses them on a seeded
    /// schedule while publishers and recovering subscribers run, and accounts for every
    /// acknowledged message (delivered, repaired, signalled or lost).
    Chaos(chaos::Opts),
}

/// Boxes a scenario's result with its `--json` flag.
fn boxed<R: RunReport + 'static>(
    r: anyhow::Result<R>,
    json: bool,
) -> anyhow::Result<(Box<dyn RunReport>, bool)> {
    r.map(|r| (Box::new(r) as Box<dyn RunReport>, json))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let threads = cli.runtime_threads.max(1);
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match &cli.command {
            Command::Fanout(o) => boxed(fanout::run(o, threads).await, o.common.run.json),
            Command::Recover(o) => boxed(recover::run(o).await, o.run.json),
            Command::Rooms(o) => boxed(rooms::run(o, threads).await, o.common.run.json),
            Command::Idle(o) => boxed(idle::run(o).await, o.json),
            Command::Connect(o) => boxed(connect::run(o, threads).await, o.json),
            Command::Ramp(o) => boxed(ramp::run(o, threads).await, o.common.run.json),
            Command::Chaos(o) => boxed(chaos::run(o).await, o.json),
        }
    });
    match result {
        Ok((report, json)) => {
            print!("{}", report.render());
            if json {
                println!("{}", report.json());
            }
            let failures = report.failures();
            if failures.is_empty() {
                ExitCode::SUCCESS
            } else {
                eprintln!("FAILED: {}", failures.join("; "));
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
