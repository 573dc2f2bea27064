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
    /// Create the orders, disputes and dead-letter topics (KAFKA_PARTITIONS
    /// partitions); topics that exist are left alone.
    Topics,
    /// Inspect and replay dead letters (KAFKA_DLQ_TOPIC).
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Print the consumer fleet from Postgres: members, their last
    /// heartbeat, which partitions each owns, each partition's stored offset,
    /// log end and lag.
    Status,
    /// Move a consumer's stored position deliberately.
    #[command(subcommand)]
    Offsets(OffsetsCommand),
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
        to: app::ResetTo,
        /// Show what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
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
                    for (topic, created) in v {
                        let what = if created { "created" } else { "exists" };
                        info!(%topic, partitions = cfg.partitions, "{what}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            },
            Command::Status => match app::fleet_status(&cfg).await {
                Ok(s) => {
                    print_status(&s);
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            },
            Command::Offsets(OffsetsCommand::Reset {
                topic,
                partition,
                to,
                dry_run,
            }) => match app::offsets_reset(&cfg, &topic, partition, to, dry_run).await {
                Ok(r) => {
                    let verb = if r.applied { "moved" } else { "would move" };
                    let before = r.before.map_or("(none)".into(), |o| o.to_string());
                    println!(
                        "{}/{} (group {}): log {}..{}; stored offset {verb} {before} -> {}",
                        r.topic, r.partition, r.group, r.earliest, r.latest, r.after
                    );
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

fn print_status(s: &app::FleetStatus) {
    let short = |id: &uuid::Uuid| id.simple().to_string()[..8].to_owned();
    println!("members");
    println!(
        "  {:<10} {:<28} {:<7} {:<22} {:>8}",
        "member", "name", "state", "last heartbeat", "owns"
    );
    for m in &s.members {
        let owns = s
            .partitions
            .iter()
            .filter(|(p, _)| p.lease_valid && p.owner == Some(m.member_id))
            .count();
        println!(
            "  {:<10} {:<28} {:<7} {:<22} {:>8}",
            short(&m.member_id),
            m.name,
            if m.alive { "alive" } else { "expired" },
            m.heartbeat_at.format("%Y-%m-%d %H:%M:%S%.3f"),
            owns
        );
    }
    println!("partitions");
    println!(
        "  {:<20} {:<28} {:>4} {:<10} {:>6} {:>12} {:>12} {:>10}",
        "group", "topic", "part", "owner", "epoch", "stored", "log end", "lag"
    );
    for (p, end) in &s.partitions {
        let owner = match p.owner {
            Some(o) if p.lease_valid => short(&o),
            Some(o) => format!("{}(exp)", &short(&o)[..4]),
            None => "-".into(),
        };
        let opt = |v: Option<i64>| v.map_or("-".into(), |v| v.to_string());
        let lag = end.map(|e| e - p.stored_offset.unwrap_or(0));
        println!(
            "  {:<20} {:<28} {:>4} {:<10} {:>6} {:>12} {:>12} {:>10}",
            p.group,
            p.topic,
            p.partition,
            owner,
            p.epoch,
            opt(p.stored_offset),
            opt(*end),
            opt(lag)
        );
    }
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
