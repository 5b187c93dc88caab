//! The `switchboard` binary: configuration, logging, signals, then a node.

mod config;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use config::LogFormat;
use switchboard_backplane::BackplaneError;
use switchboard_gateway::{Node, NodeError};
use tokio::signal::unix::{SignalKind, signal};

/// Exit code for a bad configuration (EX_USAGE), a node id held by another
/// live node included.
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let config = match config::load_from_process() {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            eprintln!(
                "switchboard: {} bad setting(s); not starting (see --help)",
                errors.len()
            );
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_logging(config.log_format, &config.log_level);

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        // A setting whose fault shows only when used (an unparsable key): a
        // configuration error like the others, reported before listening.
        Err(e) if matches!(e.downcast_ref(), Some(NodeError::Config { .. })) => {
            eprintln!("error: {e}");
            eprintln!("switchboard: 1 bad setting(s); not starting (see --help)");
            ExitCode::from(EXIT_CONFIG)
        }
        // Another live node holds this id: a configuration fault too.
        Err(e)
            if matches!(
                e.downcast_ref(),
                Some(NodeError::Backplane(BackplaneError::NodeIdInUse { .. }))
            ) =>
        {
            tracing::error!(error = %e, "not running: duplicate node id");
            eprintln!("error: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(e) => {
            tracing::error!(error = %e, "node failed");
            eprintln!("switchboard: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: config::Config) -> anyhow::Result<()> {
    // Signal handlers first: a SIGTERM that arrives once the node listens must
    // drain it, never kill it.
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let prometheus = switchboard_gateway::metrics::install_prometheus()?;
    let node = Node::bind(config.node, Some(prometheus)).await?;
    // Scripts and tests read the real ports from this line (port 0 works).
    println!(
        "switchboard listening public={} internal={}",
        node.public_addr(),
        node.internal_addr()
    );
    std::io::stdout().flush()?;
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM received"),
            _ = interrupt.recv() => tracing::info!("SIGINT received"),
        }
    };
    node.run(shutdown).await?;
    Ok(())
}

fn init_logging(format: LogFormat, filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
