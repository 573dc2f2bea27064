//! Messaging: everything that talks to Kafka.
//!
//! - [`envelope`]: the JSON envelope and its record form.
//! - [`partitioner`]: Java-compatible murmur2, so every producer agrees on
//!   where an order's events go.
//! - [`producer`]: per-partition batching with a bound on queued records and
//!   a deadline on every publish.
//! - [`consumer`]: the hand-rolled, per-partition consume loop that commits
//!   offsets to Postgres in the same transaction as the effect.
//! - [`parked`]: disputes that name a payment not stored yet wait, and are
//!   applied with that payment or dead-lettered after `DISPUTE_PAYMENT_WAIT`.
//!
//! rskafka 0.6 retries broker calls forever by default and has no request
//! timeout; [`Kafka`] builds its client with a bounded backoff and every call
//! here is wrapped in [`bounded`].

pub mod assignment;
pub mod consumer;
pub mod dlq;
pub mod envelope;
pub mod health;
pub mod parked;
pub mod partitioner;
pub mod producer;

use std::{future::Future, num::NonZeroU32, sync::Arc, time::Duration};

use rskafka::{
    BackoffConfig,
    client::{
        Client, ClientBuilder,
        controller::ControllerClient,
        error::{Error as RsError, ProtocolError},
        partition::{PartitionClient, UnknownTopicHandling},
    },
};

/// How often [`Kafka::wait_for_topic`] asks for metadata.
const TOPIC_POLL: Duration = Duration::from_millis(100);

/// A Kafka failure.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("{what} did not finish within {}", humantime::format_duration(*.after))]
    Timeout { what: &'static str, after: Duration },
    #[error("{what}: {source}")]
    Client {
        what: &'static str,
        #[source]
        source: RsError,
    },
    #[error("topic {topic} does not exist (`payhook topics` creates it)")]
    UnknownTopic { topic: String },
}

/// Runs a broker call with a deadline. rskafka keeps retrying internally
/// until its own backoff deadline; this is the hard stop.
pub async fn bounded<T>(
    what: &'static str,
    after: Duration,
    fut: impl Future<Output = Result<T, RsError>>,
) -> Result<T, KafkaError> {
    match tokio::time::timeout(after, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(KafkaError::Client { what, source }),
        Err(_) => Err(KafkaError::Timeout { what, after }),
    }
}

/// A connected Kafka client with the request timeout that bounds its calls.
#[derive(Clone, Debug)]
pub struct Kafka {
    client: Arc<Client>,
    request_timeout: Duration,
}

impl Kafka {
    /// Connects to the bootstrap brokers and reads the cluster's metadata.
    pub async fn connect(
        brokers: &[String],
        request_timeout: Duration,
    ) -> Result<Self, KafkaError> {
        // rskafka's default backoff never gives up. Give its internal retries
        // a deadline a little under ours, so a call fails with the broker's
        // own error rather than a bare timeout when it can.
        let backoff = BackoffConfig {
            init_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            base: 2.0,
            deadline: Some(request_timeout.mul_f64(0.8)),
        };
        let client = bounded(
            "connecting to the brokers",
            request_timeout,
            ClientBuilder::new(brokers.to_vec())
                .client_id("payhook")
                .backoff_config(backoff)
                .build(),
        )
        .await?;
        Ok(Self {
            client: Arc::new(client),
            request_timeout,
        })
    }

    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// The partition ids of `topic`, in order.
    pub async fn partitions(&self, topic: &str) -> Result<Vec<i32>, KafkaError> {
        let topics = bounded(
            "listing topics",
            self.request_timeout,
            self.client.list_topics(),
        )
        .await?;
        let mut parts = topics
            .into_iter()
            .find(|t| t.name == topic)
            .map(|t| t.partitions.into_iter().collect::<Vec<_>>())
            .ok_or_else(|| KafkaError::UnknownTopic {
                topic: topic.to_owned(),
            })?;
        parts.sort_unstable();
        Ok(parts)
    }

    /// The partition ids of `topic` once the broker's metadata lists it
    /// with at least `min_partitions` partitions, polling for at most
    /// `within`. A topic reaches the metadata a moment after its creation
    /// is acknowledged; this is how `payhook topics` and start-up wait for
    /// it. After `within`, the last error (usually
    /// [`KafkaError::UnknownTopic`]).
    pub async fn wait_for_topic(
        &self,
        topic: &str,
        min_partitions: usize,
        within: Duration,
    ) -> Result<Vec<i32>, KafkaError> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let e = match self.partitions(topic).await {
                Ok(p) if p.len() >= min_partitions.max(1) => return Ok(p),
                Ok(p) => KafkaError::UnknownTopic {
                    topic: format!(
                        "{topic} (only {} of {min_partitions} partitions are known yet)",
                        p.len()
                    ),
                },
                Err(e) => e,
            };
            let retry = matches!(e, KafkaError::UnknownTopic { .. });
            if !retry || tokio::time::Instant::now() + TOPIC_POLL > deadline {
                return Err(e);
            }
            tokio::time::sleep(TOPIC_POLL).await;
        }
    }

    /// A client bound to one partition's leader (its own connection).
    pub async fn partition_client(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<PartitionClient, KafkaError> {
        bounded(
            "connecting to the partition leader",
            self.request_timeout,
            self.client
                .partition_client(topic.to_owned(), partition, UnknownTopicHandling::Retry),
        )
        .await
    }

    /// The controller client, and the broker-side timeout for admin calls.
    fn controller(&self) -> Result<(ControllerClient, i32), KafkaError> {
        let controller = self
            .client
            .controller_client()
            .map_err(|source| KafkaError::Client {
                what: "finding the controller",
                source,
            })?;
        let timeout_ms = i32::try_from(self.request_timeout.as_millis()).unwrap_or(i32::MAX);
        Ok((controller, timeout_ms))
    }

    /// Creates `topic` with `partitions` partitions unless it exists.
    /// Returns whether it was created.
    pub async fn ensure_topic(
        &self,
        topic: &str,
        partitions: NonZeroU32,
        replication_factor: i16,
    ) -> Result<bool, KafkaError> {
        let (controller, timeout_ms) = self.controller()?;
        let partitions = i32::try_from(partitions.get()).unwrap_or(i32::MAX);
        match bounded(
            "creating a topic",
            self.request_timeout,
            controller.create_topic(topic, partitions, replication_factor, timeout_ms),
        )
        .await
        {
            Ok(()) => Ok(true),
            Err(KafkaError::Client {
                source:
                    RsError::ServerError {
                        protocol_error: ProtocolError::TopicAlreadyExists,
                        ..
                    },
                ..
            }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deletes a topic (tests and benches clean up after themselves).
    pub async fn delete_topic(&self, topic: &str) -> Result<(), KafkaError> {
        let (controller, timeout_ms) = self.controller()?;
        bounded(
            "deleting a topic",
            self.request_timeout,
            controller.delete_topic(topic, timeout_ms),
        )
        .await
    }
}
