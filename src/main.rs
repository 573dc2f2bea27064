//! The `payhook` binary: parse the command line, set up logging, hand over to
//! [`payhook::app`] (`serve`) or [`payhook::ops`] (every other command).

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use payhook::{
    app,
    config::{
        Config,
        cli::{self, Settings},
    },
    logging, ops,
};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// Payment webhooks over HTTP, queued in Kafka, applied to Postgres exactly
/// once, in order per order.
///
/// Every setting is a flag and an environment variable (the flag wins);
/// `payhook <command> --help` lists them with their defaults.
#[derive(Debug, Parser)]
#[command(version = payhook::version::LONG, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve HTTP and consume both topics until SIGINT or SIGTERM.
    Serve(#[command(flatten)] Settings<{ cli::ALL }>),
    /// Apply the database migrations in `sql/` and exit.
    Migrate(#[command(flatten)] Settings<{ cli::DATABASE }>),
    /// Create the orders, disputes and dead-letter topics (KAFKA_PARTITIONS
    /// partitions); topics that exist are left alone.
    Topics(#[command(flatten)] Settings<{ cli::KAFKA }>),
    /// Inspect and replay dead letters (KAFKA_DLQ_TOPIC).
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Print the consumer fleet from Postgres: members, their last
    /// heartbeat, which partitions each owns, each partition's stored offset,
    /// log end and lag.
    Status(#[command(flatten)] Settings<{ cli::KAFKA_AND_DATABASE }>),
    /// Move a consumer's stored position deliberately.
    #[command(subcommand)]
    Offsets(OffsetsCommand),
    /// Check the configuration and print every setting's effective value
    /// (secrets redacted); exit 2 if any is invalid.
    Config(#[command(flatten)] Settings<{ cli::ALL }>),
    /// Probe a running payhook's /healthz (or /readyz): exit 0 on a 2xx
    /// answer, 1 otherwise. For container health checks: needs no shell or
    /// curl.
    Healthcheck {
        /// URL to probe [default: http://<HTTP_ADDR>/healthz, with an
        /// unspecified address (0.0.0.0, ::) probed on loopback]
        #[arg(long)]
        url: Option<String>,
        /// Probe /readyz (broker and database answer) instead of /healthz.
        #[arg(long)]
        ready: bool,
        /// The address payhook listens on.
        #[arg(long, env = "HTTP_ADDR", default_value = "127.0.0.1:8080")]
        http_addr: SocketAddr,
        /// Longest wait for the answer.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}

#[derive(Debug, Subcommand)]
enum OffsetsCommand {
    /// Set the stored offset of one partition, for a partition that stopped
    /// (its offset fell out of the log, or a batch cannot be read). Records
    /// between the old and the new offset are NOT applied: look at them
    /// first. A running payhook resumes from the new offset within seconds.
    Reset {
        /// The orders or disputes topic (its configured consumer group is
        /// used).
        #[arg(long)]
        topic: String,
        #[arg(long)]
        partition: i32,
        /// `earliest` (first record still in the log), `latest` (the log
        /// end) or an offset in between.
        #[arg(long)]
        to: ops::offsets::ResetTo,
        /// Show what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        settings: Settings<{ cli::KAFKA_AND_DATABASE }>,
    },
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// Show every dead letter: where it came from, why it failed, when.
    List {
        /// Print full error messages instead of cutting them at 80 characters.
        #[arg(long)]
        full: bool,
        #[command(flatten)]
        settings: Settings<{ cli::KAFKA }>,
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
        /// With ENVELOPE_SIGNING_KEYS: also replay, signed anew, dead letters
        /// whose record is unsigned or signed with a key no longer listed
        /// (only once you know they are genuine).
        #[arg(long)]
        resign: bool,
        #[command(flatten)]
        settings: Settings<{ cli::KAFKA }>,
    },
}

/// The checked configuration and what to warn about, or exit 2 with every
/// problem listed.
fn config<const S: u8>(settings: &Settings<S>) -> Result<(Config, Vec<String>), ExitCode> {
    match settings.config() {
        Ok(cfg) => {
            let warnings = settings.warnings(&cfg);
            Ok((cfg, warnings))
        }
        Err(e) => {
            eprint!("{e}");
            Err(ExitCode::from(2))
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cfg = match &cli.command {
        Command::Serve(s) | Command::Config(s) => config(s),
        Command::Migrate(s) => config(s),
        Command::Topics(s)
        | Command::Dlq(DlqCommand::List { settings: s, .. })
        | Command::Dlq(DlqCommand::Replay { settings: s, .. }) => config(s),
        Command::Offsets(OffsetsCommand::Reset { settings: s, .. }) | Command::Status(s) => {
            config(s)
        }
        Command::Healthcheck {
            url,
            ready,
            http_addr,
            timeout,
        } => return ops::healthcheck::run(url.as_deref(), *ready, *http_addr, *timeout),
    };
    let (cfg, warnings) = match cfg {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Command::Config(s) = &cli.command {
        for line in s.effective() {
            println!("{line}");
        }
        for w in &warnings {
            eprintln!("warning: {w}");
        }
        return ExitCode::SUCCESS;
    }
    logging::init(&cfg.process.log_filter, cfg.process.log_format);
    for w in &warnings {
        warn!("{w}");
    }
    let rt = tokio::runtime::Runtime::new().expect("cannot start the tokio runtime");
    rt.block_on(async move {
        match cli.command {
            Command::Serve(_) => serve(cfg).await,
            Command::Migrate(_) => match ops::migrate(&cfg).await {
                Ok(v) => {
                    info!(applied = ?v, "migrations up to date");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            },
            Command::Topics(_) => match ops::topics::create(&cfg).await {
                Ok(reports) => {
                    ops::topics::print(&reports, cfg.kafka.partitions.get());
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            },
            Command::Status(_) => match ops::status::fleet(&cfg).await {
                Ok(s) => {
                    ops::status::print(&s);
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            },
            Command::Offsets(OffsetsCommand::Reset {
                topic,
                partition,
                to,
                dry_run,
                ..
            }) => match ops::offsets::reset(&cfg, &topic, partition, to, dry_run).await {
                Ok(r) => {
                    r.print();
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            },
            Command::Dlq(DlqCommand::List { full, .. }) => match ops::dlq::list(&cfg).await {
                Ok(letters) => {
                    ops::dlq::print(&letters, full);
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
                resign,
                ..
            }) => {
                let sel = ops::dlq::ReplaySelection {
                    event_ids,
                    partition,
                    from,
                    to,
                    resign,
                };
                match ops::dlq::replay(&cfg, &sel, dry_run).await {
                    Ok(done) => {
                        ops::dlq::print_replayed(&done);
                        ExitCode::SUCCESS
                    }
                    Err(e) => fail(e),
                }
            }
            Command::Config(_) | Command::Healthcheck { .. } => unreachable!("handled above"),
        }
    })
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    error!("{e}");
    ExitCode::FAILURE
}

async fn serve(cfg: Config) -> ExitCode {
    // Installed before anything starts: a SIGTERM from the moment the
    // process runs is a graceful stop, never the default kill (an
    // orchestrator may stop a pod that is still starting).
    let signals = Signals::install();
    let app = match app::Application::build(cfg).await {
        Ok(a) => a,
        Err(e) => return fail(e),
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(on_signals(signals, shutdown.clone()));
    match app.run_until_stopped(shutdown).await {
        app::Stopped::Cleanly => ExitCode::SUCCESS,
        app::Stopped::TimedOut => ExitCode::FAILURE,
    }
}

/// First SIGINT/SIGTERM: graceful shutdown. Second: exit at once.
async fn on_signals(mut signals: Signals, shutdown: CancellationToken) {
    signals.next().await;
    info!("shutting down (send the signal again to exit at once)");
    shutdown.cancel();
    signals.next().await;
    warn!("second signal: exiting now");
    std::process::exit(130);
}

/// SIGTERM and SIGINT, caught from the moment [`Signals::install`] runs.
struct Signals {
    #[cfg(unix)]
    streams: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    #[cfg(unix)]
    fn install() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(term), Ok(int)) => Self {
                streams: Some((term, int)),
            },
            _ => {
                error!("cannot install signal handlers; only Ctrl-C stops payhook");
                Self { streams: None }
            }
        }
    }

    #[cfg(not(unix))]
    fn install() -> Self {
        Self {}
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        if let Some((term, int)) = &mut self.streams {
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}
