//! Wiring: build the pieces from a [`Config`], run them, stop them in order.
//!
//! `serve` = HTTP server + producer + one consumer per topic + the sweep of
//! disputes waiting for their payment. Shutdown order:
//! stop accepting and let in-flight requests finish (they get their true
//! answer), then let the producer send and answer what it has queued, then
//! let each partition consumer finish its current transaction.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use deadpool_postgres::Pool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    config::{Config, WebhookAuth},
    consume::{
        committer::Committers,
        dlq::{self, DeadLetter},
        fleet,
        health::ConsumerHealth,
        partition::{self as consumer, ConsumerConfig, DeadLetters},
    },
    db::{self, DbError},
    http::{self, AppState, Endpoint, routes::ServiceProbe},
    kafka::{
        Kafka, KafkaError,
        producer::{Producer, ProducerConfig, ProducerTasks, PublishError, Published},
        topics::{self, TopicReport},
    },
    metrics::Metrics,
    providers::signature::Verifier,
};

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("database: {0}")]
    Db(#[from] DbError),
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("kafka topics: {0}")]
    Topics(#[from] topics::Refused),
    #[error(
        "the database's encoding is {encoding}, not UTF8: Postgres would refuse webhooks \
         whose text that encoding cannot hold. Create the database with ENCODING 'UTF8'"
    )]
    DatabaseEncoding { encoding: String },
    #[error(
        "{var} is empty: an endpoint without a secret would accept forged webhooks. \
         Set at least one secret, or WEBHOOK_VERIFY=off for local use only"
    )]
    NoWebhookSecret { var: &'static str },
    #[error("{0}")]
    Invalid(String),
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// Every step of the shutdown finished.
    Cleanly,
    /// `SHUTDOWN_TIMEOUT` ran out first. Nothing acknowledged is lost (the
    /// offsets of unfinished work were not stored), but work was cut short.
    TimedOut,
}

/// A built, not yet running, service.
#[derive(Debug)]
pub struct Application {
    cfg: Config,
    listener: TcpListener,
    state: Arc<AppState>,
    kafka: Kafka,
    pool: Pool,
    /// For dead letters (the HTTP side holds its own handle).
    producer: Producer,
    producer_tasks: ProducerTasks,
    health: ConsumerHealth,
    /// This process in the consumer fleet (`consumer_members`).
    member: uuid::Uuid,
    /// `ADMIN_ADDR`, when set.
    admin_listener: Option<TcpListener>,
}

impl Application {
    /// Checks that every endpoint can verify signatures (unless
    /// `WEBHOOK_VERIFY=off`), binds the listener, connects to Postgres and
    /// Kafka, applies migrations (unless disabled) and starts the producer.
    pub async fn build(cfg: Config) -> Result<Self, StartError> {
        // Checked first, before anything connects: an unverifiable endpoint
        // must never serve.
        let (orders_verifier, chargebacks_verifier) = verifiers(&cfg)?;
        let pool = db::pool_from_config(&cfg, cfg.database_pool_size)?;
        // Everything the edge accepts must be storable, which it only is in
        // a UTF8 database.
        let encoding = db::server_encoding(&pool).await?;
        if !encoding.eq_ignore_ascii_case("UTF8") {
            return Err(StartError::DatabaseEncoding { encoding });
        }
        if cfg.run_migrations {
            let applied = db::migrations::run(&pool).await?;
            if !applied.is_empty() {
                info!(?applied, "migrations applied");
            }
        } else {
            db::ping(&pool).await?;
        }
        let kafka = Kafka::from_config(&cfg).await?;
        let metrics = Metrics::new();
        // Durability, retention, compression and size limits of the three
        // topics: warnings are logged; a webhook size the broker would
        // refuse stops start-up.
        topics::check_at_startup(&cfg).await?;
        let (producer, producer_tasks) = Producer::start(
            &kafka,
            &[&cfg.orders_topic, &cfg.disputes_topic, &cfg.dlq_topic],
            ProducerConfig::from_config(&cfg).with_metrics(&metrics),
        )
        .await?;
        let listener =
            TcpListener::bind(cfg.http_addr)
                .await
                .map_err(|source| StartError::Bind {
                    addr: cfg.http_addr,
                    source,
                })?;
        let admin_listener = match cfg.admin_addr {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Bind { addr, source })?,
            ),
            None => None,
        };
        let member = uuid::Uuid::new_v4();
        let health = ConsumerHealth::new(cfg.consumer_stall_after, metrics.clone());
        let state = Arc::new(AppState {
            publisher: Arc::new(producer.clone()),
            readiness: Arc::new(ServiceProbe {
                kafka: kafka.clone(),
                pool: pool.clone(),
                topic: cfg.orders_topic.clone(),
                health: health.clone(),
                member,
            }),
            orders: Endpoint {
                topic: cfg.orders_topic.clone(),
                verifier: orders_verifier,
            },
            chargebacks: Endpoint {
                topic: cfg.disputes_topic.clone(),
                verifier: chargebacks_verifier,
            },
            max_body_bytes: cfg.http_max_body_bytes,
            request_timeout: cfg.http_request_timeout,
            retry_after: cfg.http_retry_after,
            occurred_at_max_future: cfg.occurred_at_max_future,
            metrics,
            ops_on_public: admin_listener.is_none(),
            providers: crate::providers::Endpoints::from_config(&cfg),
        });
        Ok(Self {
            cfg,
            listener,
            state,
            kafka,
            pool,
            producer,
            producer_tasks,
            health,
            member,
            admin_listener,
        })
    }

    /// This process's member id in the consumer fleet.
    pub fn member_id(&self) -> uuid::Uuid {
        self.member
    }

    /// The admin listener's address, when `ADMIN_ADDR` is set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// The address actually bound (port 0 becomes a real port).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Runs until `shutdown` is cancelled, then stops in order within
    /// `SHUTDOWN_TIMEOUT`. Returns whether everything stopped in time.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> Stopped {
        let Self {
            cfg,
            listener,
            state,
            kafka,
            pool,
            producer,
            producer_tasks,
            health,
            member,
            admin_listener,
        } = self;
        let metrics = state.metrics.clone();
        let consumers = CancellationToken::new();
        let mut consumer_tasks = tokio::task::JoinSet::new();
        let consumer_configs = [
            (&cfg.orders_consumer_group, &cfg.orders_topic),
            (&cfg.disputes_consumer_group, &cfg.disputes_topic),
        ]
        .map(|(group, topic)| ConsumerConfig::from_config(&cfg, group, topic))
        .to_vec();
        let shared = consumer::Shared {
            member,
            kafka: kafka.clone(),
            pool: pool.clone(),
            dead_letters: DeadLetters {
                producer: producer.clone(),
                topic: cfg.dlq_topic.clone(),
            },
            metrics: metrics.clone(),
            health: health.clone(),
            committers: if cfg.consumer_enabled
                && std::env::var_os("PAYHOOK_NO_COMMITTER").is_none()
            {
                Committers::start(&pool, member, &metrics, &consumer_configs)
            } else {
                Committers::none()
            },
        };
        if cfg.consumer_enabled {
            consumer_tasks.spawn(fleet::run(
                shared,
                consumer_configs,
                member_name(),
                cfg.consumer_lease_ttl,
                consumers.clone(),
            ));
            // Disputes whose payment never arrived are dead-lettered.
            consumer_tasks.spawn(
                crate::consume::waiting::Sweeper {
                    pool: pool.clone(),
                    producer: producer.clone(),
                    dlq_topic: cfg.dlq_topic.clone(),
                    wait: cfg.dispute_payment_wait,
                    interval: cfg.dispute_sweep_interval,
                    metrics: metrics.clone(),
                }
                .run(consumers.clone()),
            );
        } else {
            // An ingest-only replica: it takes no leases, so the fleet's
            // consumers never count it as a member.
            drop((shared, consumer_configs));
            info!(
                "consumers disabled (CONSUMER_ENABLED=false): this process only accepts webhooks"
            );
        }
        // The partition gauges follow the consumers' health every second.
        consumer_tasks.spawn({
            let (health, stop) = (health.clone(), consumers.clone());
            async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                while tokio::select! { _ = stop.cancelled() => false, _ = tick.tick() => true } {
                    health.refresh_metrics();
                }
            }
        });
        // The consumers hold their own handles; this one must go, or the
        // producer would never drain at shutdown.
        drop(producer);
        info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "payhook serving");

        let grace = cfg.shutdown_timeout;
        let stop = async {
            // In-flight requests finish and get their true answer.
            let limits = http::Limits {
                header_timeout: cfg.http_header_timeout,
                max_connections: cfg.http_max_connections,
            };
            let admin = admin_listener.map(|l| {
                tokio::spawn(http::serve(
                    l,
                    Arc::clone(&state),
                    limits,
                    shutdown.clone(),
                    grace,
                    http::Surface::Admin,
                ))
            });
            http::serve(
                listener,
                state,
                limits,
                shutdown.clone(),
                grace,
                http::Surface::Public,
            )
            .await;
            if let Some(admin) = admin {
                let _ = admin.await;
            }
            // Each partition finishes its current transaction (or dead
            // letter) and stops.
            consumers.cancel();
            while consumer_tasks.join_next().await.is_some() {}
            info!("consumers stopped");
            // Every handler and consumer is gone, and with them every
            // producer handle: the lanes send what is queued, answer it, end.
            producer_tasks.drained().await;
            info!("producer drained");
        };
        // `serve` only returns after `shutdown`, so the deadline is counted
        // from the moment shutdown begins.
        let deadline = async {
            shutdown.cancelled().await;
            tokio::time::sleep(grace).await;
        };
        tokio::select! {
            _ = stop => {
                info!("payhook stopped");
                Stopped::Cleanly
            }
            _ = deadline => {
                warn!("shutdown took longer than {}; exiting", humantime::format_duration(grace));
                Stopped::TimedOut
            }
        }
    }
}

/// How this process is named in `payhook status`: host and pid.
fn member_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "payhook".into());
    format!("{host}:{}", std::process::id())
}

/// Each endpoint's verifier, or `None` for both when `WEBHOOK_VERIFY=off`
/// (said loudly in the log).
fn verifiers(cfg: &Config) -> Result<(Option<Verifier>, Option<Verifier>), StartError> {
    if !cfg.webhook_verify {
        warn!(
            "WEBHOOK_VERIFY=off: webhook signatures are NOT checked; anyone who can reach \
             this port can post forged payment events. For local use only, never in production"
        );
        return Ok((None, None));
    }
    let one = |auth: &WebhookAuth, var| {
        Verifier::new(auth.scheme, auth.secrets.clone(), cfg.webhook_tolerance)
            .map(Some)
            .ok_or(StartError::NoWebhookSecret { var })
    };
    Ok((
        one(&cfg.webhook_orders(), "WEBHOOK_ORDERS_SECRETS")?,
        one(&cfg.webhook_chargebacks(), "WEBHOOK_CHARGEBACKS_SECRETS")?,
    ))
}

/// `payhook migrate`.
pub async fn migrate(cfg: &Config) -> Result<Vec<i32>, StartError> {
    let pool = db::pool_from_config(cfg, 1)?;
    Ok(db::migrations::run(&pool).await?)
}

/// How long `payhook topics` waits for the topics it created to show in the
/// broker's metadata.
const TOPICS_VISIBLE_WITHIN: Duration = Duration::from_secs(30);

/// `payhook topics`: creates the three topics unless they exist, with the
/// replication factor, `min.insync.replicas` and retention of
/// [`topics::create_topics`]; returns once the broker's metadata lists each
/// with its partitions (so a `serve` started right after finds them), with
/// what it did and what it thinks of each topic.
pub async fn create_topics(cfg: &Config) -> Result<Vec<TopicReport>, StartError> {
    let reports = topics::create_topics(cfg).await?;
    let kafka = Kafka::from_config(cfg).await?;
    for r in &reports {
        // A topic that existed already keeps the partitions it has.
        let expected = if r.created {
            cfg.partitions.get() as usize
        } else {
            1
        };
        kafka
            .wait_for_topic(&r.topic, expected, TOPICS_VISIBLE_WITHIN)
            .await?;
    }
    Ok(reports)
}

/// What `payhook status` prints: the fleet as Postgres knows it, with each
/// partition's log end from the broker.
#[derive(Debug)]
pub struct FleetStatus {
    pub members: Vec<db::leases::MemberRow>,
    /// Each partition with its log end (`None` if the broker did not say).
    pub partitions: Vec<(db::leases::PartitionRow, Option<i64>)>,
}

/// `payhook status`.
pub async fn fleet_status(cfg: &Config) -> Result<FleetStatus, StartError> {
    let pool = db::pool_from_config(cfg, 1)?;
    let conn = pool.get().await.map_err(DbError::from)?;
    let (members, rows) = db::leases::fleet(&**conn).await?;
    let kafka = Kafka::from_config(cfg).await;
    let mut partitions = Vec::with_capacity(rows.len());
    for row in rows {
        let end = match &kafka {
            Ok(k) => match k.partition_client(&row.topic, row.partition).await {
                Ok(c) => crate::kafka::bounded(
                    "reading the latest offset",
                    k.request_timeout(),
                    c.get_offset(rskafka::client::partition::OffsetAt::Latest),
                )
                .await
                .ok(),
                Err(_) => None,
            },
            Err(_) => None,
        };
        partitions.push((row, end));
    }
    Ok(FleetStatus {
        members,
        partitions,
    })
}

/// Where `payhook offsets reset` moves a partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetTo {
    /// The first record still in the log.
    Earliest,
    /// The log end: everything in the log now is skipped.
    Latest,
    /// An offset between the two (inclusive).
    Offset(i64),
}

impl std::str::FromStr for ResetTo {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "earliest" => Ok(Self::Earliest),
            "latest" => Ok(Self::Latest),
            n => n
                .parse::<i64>()
                .ok()
                .filter(|o| *o >= 0)
                .map(Self::Offset)
                .ok_or_else(|| format!("expected earliest, latest or an offset, got {n:?}")),
        }
    }
}

/// What `payhook offsets reset` did (or, on a dry run, would do).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffsetReset {
    pub group: String,
    pub topic: String,
    pub partition: i32,
    /// The stored offset before.
    pub before: Option<i64>,
    /// The stored offset after.
    pub after: i64,
    /// The log's bounds when it was decided.
    pub earliest: i64,
    pub latest: i64,
    /// `false` on a dry run.
    pub applied: bool,
}

/// `payhook offsets reset`: sets the stored offset of one partition, an
/// operator's deliberate decision for a partition that stopped (its offset
/// fell out of the log, or a batch cannot be read). The consumer group is
/// the one configured for the topic. A running consumer resumes from the
/// new offset within seconds.
pub async fn offsets_reset(
    cfg: &Config,
    topic: &str,
    partition: i32,
    to: ResetTo,
    dry_run: bool,
) -> Result<OffsetReset, StartError> {
    let group = if topic == cfg.orders_topic {
        &cfg.orders_consumer_group
    } else if topic == cfg.disputes_topic {
        &cfg.disputes_consumer_group
    } else {
        return Err(StartError::Invalid(format!(
            "{topic} is neither KAFKA_ORDERS_TOPIC ({}) nor KAFKA_DISPUTES_TOPIC ({})",
            cfg.orders_topic, cfg.disputes_topic
        )));
    };
    let kafka = Kafka::from_config(cfg).await?;
    let partitions = kafka.partitions(topic).await?;
    if !partitions.contains(&partition) {
        return Err(StartError::Invalid(format!(
            "{topic} has no partition {partition} (it has {})",
            partitions.len()
        )));
    }
    let client = kafka.partition_client(topic, partition).await?;
    let (earliest, latest) = crate::kafka::log_bounds(&client, kafka.request_timeout()).await?;
    let after = match to {
        ResetTo::Earliest => earliest,
        ResetTo::Latest => latest,
        ResetTo::Offset(o) if (earliest..=latest).contains(&o) => o,
        ResetTo::Offset(o) => {
            return Err(StartError::Invalid(format!(
                "offset {o} is outside the log of {topic}/{partition} ({earliest}..={latest})"
            )));
        }
    };
    let pool = db::pool_from_config(cfg, 1)?;
    let conn = pool.get().await.map_err(DbError::from)?;
    let before = if dry_run {
        db::offsets::load(&**conn, group, topic, partition).await?
    } else {
        db::offsets::reset(&**conn, group, topic, partition, after).await?
    };
    Ok(OffsetReset {
        group: group.clone(),
        topic: topic.to_owned(),
        partition,
        before,
        after,
        earliest,
        latest,
        applied: !dry_run,
    })
}

/// `payhook dlq list`: every dead letter, in topic order.
pub async fn dlq_list(cfg: &Config) -> Result<Vec<DeadLetter>, StartError> {
    let kafka = Kafka::from_config(cfg).await?;
    Ok(dlq::read_all(&kafka, &cfg.dlq_topic).await?)
}

/// Which dead letters `payhook dlq replay` sends back.
#[derive(Clone, Debug, Default)]
pub struct ReplaySelection {
    /// Dead letters whose envelope has one of these event ids.
    pub event_ids: Vec<uuid::Uuid>,
    /// Dead letters in this dead-letter partition...
    pub partition: Option<i32>,
    /// ...at offsets `from..=to` of the dead-letter topic.
    pub from: Option<i64>,
    pub to: Option<i64>,
}

impl ReplaySelection {
    pub fn is_empty(&self) -> bool {
        self.event_ids.is_empty()
            && self.partition.is_none()
            && self.from.is_none()
            && self.to.is_none()
    }

    pub fn matches(&self, d: &DeadLetter) -> bool {
        let by_id = !self.event_ids.is_empty()
            && d.event_id().is_some_and(|id| self.event_ids.contains(&id));
        let by_range = (self.partition.is_some() || self.from.is_some() || self.to.is_some())
            && self.partition.is_none_or(|p| p == d.partition)
            && self.from.is_none_or(|f| d.offset >= f)
            && self.to.is_none_or(|t| d.offset <= t);
        by_id || by_range
    }
}

/// What happened to one selected dead letter.
#[derive(Debug)]
pub struct Replayed {
    pub letter: DeadLetter,
    /// Where it landed in its source topic; `None` on a dry run.
    pub published: Option<Published>,
}

/// `payhook dlq replay`: re-publishes the selected dead letters (original
/// key, value and headers) to their source topics, in dead-letter order.
pub async fn dlq_replay(
    cfg: &Config,
    selection: &ReplaySelection,
    dry_run: bool,
) -> Result<Vec<Replayed>, ReplayError> {
    if selection.is_empty() {
        return Err(ReplayError::NothingSelected);
    }
    let kafka = Kafka::from_config(cfg).await?;
    let chosen: Vec<DeadLetter> = dlq::read_all(&kafka, &cfg.dlq_topic)
        .await?
        .into_iter()
        .filter(|d| selection.matches(d))
        .collect();
    let mut topics: Vec<String> = Vec::new();
    for d in &chosen {
        let t = d.source_topic().ok_or(ReplayError::NoSource {
            partition: d.partition,
            offset: d.offset,
        })?;
        if !topics.iter().any(|x| x == t) {
            topics.push(t.to_owned());
        }
    }
    if dry_run || chosen.is_empty() {
        return Ok(chosen
            .into_iter()
            .map(|letter| Replayed {
                letter,
                published: None,
            })
            .collect());
    }
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let (producer, lanes) = Producer::start(
        &kafka,
        &names,
        ProducerConfig {
            linger: Duration::ZERO,
            queue_per_partition: 64,
            publish_timeout: cfg.publish_timeout,
            metadata_refresh: Duration::from_secs(30),
            metrics: None,
        },
    )
    .await?;
    let mut out = Vec::new();
    // One at a time, in order: replayed events keep their relative order.
    for letter in chosen {
        let topic = letter.source_topic().unwrap_or_default().to_owned();
        let published = producer.publish(&topic, letter.original()).await?;
        out.push(Replayed {
            letter,
            published: Some(published),
        });
    }
    drop(producer);
    lanes.drained().await;
    Ok(out)
}

/// Why a replay did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("select dead letters with --event-id or --partition/--from/--to")]
    NothingSelected,
    #[error("dead letter {partition}/{offset} has no dlq.source.topic header")]
    NoSource { partition: i32, offset: i64 },
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("publishing: {0}")]
    Publish(#[from] PublishError),
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> Config {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_map(&map).unwrap()
    }

    #[tokio::test]
    async fn an_endpoint_without_a_secret_refuses_to_start() {
        // Nothing is reachable at this address: the refusal comes before any
        // connection is tried.
        let base = [("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")];
        let e = Application::build(cfg(&base)).await.unwrap_err();
        assert!(
            matches!(
                e,
                StartError::NoWebhookSecret {
                    var: "WEBHOOK_ORDERS_SECRETS"
                }
            ),
            "{e}"
        );
        let mut only_orders = base.to_vec();
        only_orders.push((
            "WEBHOOK_ORDERS_SECRETS",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        ));
        let e = Application::build(cfg(&only_orders)).await.unwrap_err();
        assert!(
            matches!(
                e,
                StartError::NoWebhookSecret {
                    var: "WEBHOOK_CHARGEBACKS_SECRETS"
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("WEBHOOK_VERIFY=off"), "{e}");
    }

    #[test]
    fn verification_off_verifies_nothing() {
        let (o, c) = verifiers(&cfg(&[("WEBHOOK_VERIFY", "off")])).unwrap();
        assert!(o.is_none() && c.is_none());
        let (o, c) = verifiers(&cfg(&[
            (
                "WEBHOOK_ORDERS_SECRETS",
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            ),
            ("WEBHOOK_CHARGEBACKS_SCHEME", "stripe"),
            (
                "WEBHOOK_CHARGEBACKS_SECRETS",
                "whsec_stripe_test_secret_0123456789",
            ),
        ]))
        .unwrap();
        assert_eq!(
            o.unwrap().scheme(),
            crate::providers::signature::Scheme::Standard
        );
        assert_eq!(
            c.unwrap().scheme(),
            crate::providers::signature::Scheme::Stripe
        );
    }
}
