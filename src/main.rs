//! The `payhook` binary: parse the command line, set up logging, hand over to
//! [`payhook::app`].

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    process::ExitCode,
    time::Duration,
};

use clap::{Parser, Subcommand};
use payhook::{
    app,
    config::{
        Config,
        cli::{self, Settings},
    },
    http::probe,
    kafka::topics::Finding,
    logging,
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
        to: app::ResetTo,
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
        #[command(flatten)]
        settings: Settings<{ cli::KAFKA }>,
    },
}

/// The checked configuration, or exit 2 with every problem listed.
fn config<const S: u8>(settings: &Settings<S>) -> Result<Config, ExitCode> {
    settings.config().map_err(|e| {
        eprint!("{e}");
        ExitCode::from(2)
    })
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
        } => return healthcheck(url.as_deref(), *ready, *http_addr, *timeout),
    };
    let cfg = match cfg {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Command::Config(s) = &cli.command {
        for line in s.effective() {
            println!("{line}");
        }
        return ExitCode::SUCCESS;
    }
    logging::init(&cfg.log_filter, cfg.log_format);
    let rt = tokio::runtime::Runtime::new().expect("cannot start the tokio runtime");
    rt.block_on(async move {
        match cli.command {
            Command::Serve(_) => serve(cfg).await,
            Command::Migrate(_) => match app::migrate(&cfg).await {
                Ok(v) => {
                    info!(applied = ?v, "migrations up to date");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            },
            Command::Topics(_) => match app::create_topics(&cfg).await {
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
            Command::Status(_) => match app::fleet_status(&cfg).await {
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
                ..
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
            Command::Dlq(DlqCommand::List { full, .. }) => match app::dlq_list(&cfg).await {
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
                ..
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
            Command::Config(_) | Command::Healthcheck { .. } => unreachable!("handled above"),
        }
    })
}

/// `payhook healthcheck`: exit 0 on a 2xx, 1 otherwise (what Docker's
/// HEALTHCHECK expects).
fn healthcheck(url: Option<&str>, ready: bool, addr: SocketAddr, timeout: Duration) -> ExitCode {
    let url = match url {
        Some(u) => u.to_owned(),
        None => {
            let mut addr = addr;
            if addr.ip().is_unspecified() {
                addr.set_ip(match addr {
                    SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
                    SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
                });
            }
            let path = if ready { "/readyz" } else { "/healthz" };
            format!("http://{addr}{path}")
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("unhealthy: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(probe::probe(&url, timeout)) {
        Ok(status) => {
            println!("healthy: {url} answered {status}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("unhealthy: {url}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print_dead_letters(letters: &[payhook::consume::dlq::DeadLetter], full: bool) {
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
