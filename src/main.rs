//! The `payhook` binary: parse the command line, set up logging, hand over to
//! [`payhook::app`].

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use payhook::{app, config::Config, messaging::topics::Finding};
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
    /// Create the orders, disputes and dead-letter topics (KAFKA_PARTITIONS
    /// partitions); topics that exist are left alone.
    Topics,
    /// Inspect and replay dead letters (KAFKA_DLQ_TOPIC).
    #[command(subcommand)]
    Dlq(DlqCommand),
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// Show every dead letter: where it came from, why it failed, when.
    List {
        /// Print full error messages instead of cutting them at 80 characters.
        #[arg(long)]
        full: bool,
    },
    /// Re-publish selected dead letters, unchanged, to their source topics.
    /// Replaying an event that was already applied is harmless.
    Replay {
        /// Select by the envelope's event id (repeatable).
        #[arg(long = "event-id")]
        event_ids: Vec<uuid::Uuid>,
        /// Select by dead-letter partition...
        #[arg(long)]
        partition: Option<i32>,
        /// ...and dead-letter offsets from (inclusive)...
        #[arg(long)]
        from: Option<i64>,
        /// ...to (inclusive).
        #[arg(long)]
        to: Option<i64>,
        /// Show what would be replayed; publish nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rskafka=warn,tokio_postgres=warn".into()),
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
                    for t in v {
                        let what = if t.created {
                            "created"
                        } else {
                            "exists (left as it is)"
                        };
                        info!(
                            topic = %t.topic,
                            partitions = cfg.partitions,
                            replication_factor = t.replication_factor.unwrap_or_default(),
                            min_insync_replicas = t.min_insync_replicas.as_deref().unwrap_or("?"),
                            retention_ms = t.retention_ms.as_deref().unwrap_or("?"),
                            "{what}"
                        );
                        for f in t.findings {
                            match f {
                                Finding::Note(m) => info!("{m}"),
                                Finding::Warn(m) => warn!("{m}"),
                                Finding::Refuse(m) => error!("{m}"),
                            }
                        }
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            },
            Command::Dlq(DlqCommand::List { full }) => match app::dlq_list(&cfg).await {
                Ok(letters) => {
                    print_dead_letters(&letters, full);
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            },
            Command::Dlq(DlqCommand::Replay {
                event_ids,
                partition,
                from,
                to,
                dry_run,
            }) => {
                let sel = app::ReplaySelection {
                    event_ids,
                    partition,
                    from,
                    to,
                };
                match app::dlq_replay(&cfg, &sel, dry_run).await {
                    Ok(done) => {
                        for r in &done {
                            let d = &r.letter;
                            match r.published {
                                Some(p) => println!(
                                    "replayed {}/{} -> {} partition {} offset {}",
                                    d.partition,
                                    d.offset,
                                    d.source_topic().unwrap_or("?"),
                                    p.partition,
                                    p.offset
                                ),
                                None => println!(
                                    "would replay {}/{} -> {}",
                                    d.partition,
                                    d.offset,
                                    d.source_topic().unwrap_or("?")
                                ),
                            }
                        }
                        println!("{} dead letter(s) selected", done.len());
                        ExitCode::SUCCESS
                    }
                    Err(e) => fail(e),
                }
            }
        }
    })
}

fn print_dead_letters(letters: &[payhook::messaging::dlq::DeadLetter], full: bool) {
    println!(
        "{:<12} {:<28} {:<10} {:>8}  {:<24} {:<36} {:<16} error",
        "dlq p/off", "source topic/p/off", "class", "attempts", "first failure", "event id", "key"
    );
    for d in letters {
        let source = format!(
            "{}/{}/{}",
            d.source_topic().unwrap_or("?"),
            d.source_partition().map_or("?".into(), |p| p.to_string()),
            d.source_offset().map_or("?".into(), |o| o.to_string())
        );
        let mut msg = d.error_message().unwrap_or("").to_owned();
        if !full && msg.chars().count() > 80 {
            msg = msg.chars().take(79).collect::<String>() + "…";
        }
        println!(
            "{:<12} {:<28} {:<10} {:>8}  {:<24} {:<36} {:<16} {}",
            format!("{}/{}", d.partition, d.offset),
            source,
            d.error_class().unwrap_or("?"),
            d.attempts().map_or("?".into(), |a| a.to_string()),
            d.first_failure().unwrap_or("?"),
            d.event_id().map_or("-".into(), |e| e.to_string()),
            d.key(),
            msg
        );
    }
    println!("{} dead letter(s)", letters.len());
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
    match app.run_until_stopped(shutdown).await {
        app::Stopped::Cleanly => ExitCode::SUCCESS,
        app::Stopped::TimedOut => ExitCode::FAILURE,
    }
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
