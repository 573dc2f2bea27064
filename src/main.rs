//! The `payhook` binary: parse the command line, set up logging, hand over to
//! [`payhook::app`].

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use payhook::{app, config::Config};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// Payment webhooks over HTTP, queued in Kafka, applied to Postgres exactly
/// once, in order per order. Configuration comes from the environment; see
/// `.env.example`.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve HTTP and consume both topics until SIGINT or SIGTERM.
    Serve,
    /// Apply the database migrations in `sql/` and exit.
    Migrate,
    /// Create the orders and disputes topics (KAFKA_PARTITIONS partitions);
    /// topics that exist are left alone.
    Topics,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rskafka=warn".into()),
        )
        .init();
    let cfg = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let rt = tokio::runtime::Runtime::new().expect("cannot start the tokio runtime");
    rt.block_on(async move {
        match cli.command {
            Command::Serve => serve(cfg).await,
            Command::Migrate => match app::migrate(&cfg).await {
                Ok(v) => {
                    info!(applied = ?v, "migrations up to date");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            },
            Command::Topics => match app::create_topics(&cfg).await {
                Ok(v) => {
                    for (topic, created) in v {
                        let what = if created { "created" } else { "exists" };
                        info!(%topic, partitions = cfg.partitions, "{what}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            },
        }
    })
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    error!("{e}");
    ExitCode::FAILURE
}

async fn serve(cfg: Config) -> ExitCode {
    let app = match app::Application::build(cfg).await {
        Ok(a) => a,
        Err(e) => return fail(e),
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(on_signals(shutdown.clone()));
    app.run_until_stopped(shutdown).await;
    ExitCode::SUCCESS
}

/// First SIGINT/SIGTERM: graceful shutdown. Second: exit at once.
async fn on_signals(shutdown: CancellationToken) {
    wait_for_signal().await;
    info!("shutting down (send the signal again to exit at once)");
    shutdown.cancel();
    wait_for_signal().await;
    warn!("second signal: exiting now");
    std::process::exit(130);
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        }
        _ => {
            error!("cannot install signal handlers; only Ctrl-C stops payhook");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}
