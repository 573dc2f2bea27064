//! Wiring: build the pieces from a [`Config`], run them, stop them in order.
//!
//! `serve` = HTTP server + producer + one consumer per topic. Shutdown order:
//! stop accepting and let in-flight requests finish (they get their true
//! answer), then let the producer send and answer what it has queued, then
//! let each partition consumer finish its current transaction.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use deadpool_postgres::Pool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    config::Config,
    db::{self, DbError},
    http::{self, AppState},
    messaging::{
        Kafka, KafkaError,
        consumer::{self, ConsumerConfig},
        producer::{Producer, ProducerConfig, ProducerTasks},
    },
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
}

/// How long start-up waits for the database before giving up.
const DB_TIMEOUT: Duration = Duration::from_secs(5);

/// A built, not yet running, service.
#[derive(Debug)]
pub struct Application {
    cfg: Config,
    listener: TcpListener,
    state: Arc<AppState>,
    kafka: Kafka,
    pool: Pool,
    producer_tasks: ProducerTasks,
}

impl Application {
    /// Binds the listener, connects to Postgres and Kafka, applies
    /// migrations (unless disabled) and starts the producer.
    pub async fn build(cfg: Config) -> Result<Self, StartError> {
        let pool = db::pool(&cfg.database_url, cfg.database_pool_size, DB_TIMEOUT)?;
        if cfg.run_migrations {
            let applied = db::migrations::run(&pool).await?;
            if !applied.is_empty() {
                info!(?applied, "migrations applied");
            }
        } else {
            db::ping(&pool).await?;
        }
        let kafka = Kafka::connect(&cfg.kafka_brokers, cfg.kafka_request_timeout).await?;
        let (producer, producer_tasks) = Producer::start(
            &kafka,
            &[&cfg.orders_topic, &cfg.disputes_topic],
            ProducerConfig {
                linger: cfg.linger,
                queue_per_partition: cfg.producer_queue,
                publish_timeout: cfg.publish_timeout,
            },
        )
        .await?;
        let listener =
            TcpListener::bind(cfg.http_addr)
                .await
                .map_err(|source| StartError::Bind {
                    addr: cfg.http_addr,
                    source,
                })?;
        let state = Arc::new(AppState {
            producer,
            orders_topic: cfg.orders_topic.clone(),
            disputes_topic: cfg.disputes_topic.clone(),
            max_body_bytes: cfg.http_max_body_bytes,
            retry_after: cfg.http_retry_after,
        });
        Ok(Self {
            cfg,
            listener,
            state,
            kafka,
            pool,
            producer_tasks,
        })
    }

    /// The address actually bound (port 0 becomes a real port).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Runs until `shutdown` is cancelled, then stops in order within
    /// `SHUTDOWN_TIMEOUT`.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) {
        let Self {
            cfg,
            listener,
            state,
            kafka,
            pool,
            producer_tasks,
        } = self;
        let consumers = CancellationToken::new();
        let mut consumer_tasks = tokio::task::JoinSet::new();
        for (group, topic) in [
            (&cfg.orders_consumer_group, &cfg.orders_topic),
            (&cfg.disputes_consumer_group, &cfg.disputes_topic),
        ] {
            let ccfg = ConsumerConfig {
                group: group.clone(),
                topic: topic.clone(),
                max_batch: cfg.consumer_max_batch,
                fetch_max_bytes: cfg.fetch_max_bytes,
                fetch_max_wait: cfg.fetch_max_wait,
                backoff_min: cfg.retry_backoff_min,
                backoff_max: cfg.retry_backoff_max,
            };
            consumer_tasks.spawn(consumer::run(
                kafka.clone(),
                pool.clone(),
                ccfg,
                consumers.clone(),
            ));
        }
        info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "payhook serving");

        let grace = cfg.shutdown_timeout;
        let stop = async {
            http::serve(listener, state, shutdown.clone(), grace).await;
            // Every handler is gone, and with them every producer handle: the
            // lanes send what is queued, answer it, and end.
            producer_tasks.drained().await;
            info!("producer drained");
            consumers.cancel();
            while consumer_tasks.join_next().await.is_some() {}
            info!("consumers stopped");
        };
        // `serve` only returns after `shutdown`, so the deadline is counted
        // from the moment shutdown begins.
        let deadline = async {
            shutdown.cancelled().await;
            tokio::time::sleep(grace).await;
        };
        tokio::select! {
            _ = stop => info!("payhook stopped"),
            _ = deadline => warn!("shutdown took longer than {}; exiting", humantime::format_duration(grace)),
        }
    }
}

/// `payhook migrate`.
pub async fn migrate(cfg: &Config) -> Result<Vec<i32>, StartError> {
    let pool = db::pool(&cfg.database_url, 1, DB_TIMEOUT)?;
    Ok(db::migrations::run(&pool).await?)
}

/// `payhook topics`: creates both topics unless they exist; returns each
/// topic with whether it was created now.
pub async fn create_topics(cfg: &Config) -> Result<Vec<(String, bool)>, StartError> {
    let kafka = Kafka::connect(&cfg.kafka_brokers, cfg.kafka_request_timeout).await?;
    let mut out = Vec::new();
    for topic in [&cfg.orders_topic, &cfg.disputes_topic] {
        let created = kafka
            .ensure_topic(topic, cfg.partitions, cfg.replication_factor)
            .await?;
        out.push((topic.clone(), created));
    }
    Ok(out)
}
