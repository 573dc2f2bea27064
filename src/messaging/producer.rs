//! The producer: one lane per partition, batching concurrent webhooks into
//! shared produce requests.
//!
//! Why not rskafka's `BatchProducer`: it flushes in background tasks with no
//! limit on how many are in flight, so two batches for one partition can be
//! in flight at once and a retried first batch can land after the second —
//! breaking per-order ordering — and nothing bounds its memory. Here each
//! partition has one lane: a bounded queue and a task that sends **one
//! request at a time**. While a request is in flight new records queue up and
//! go together in the next one, so batching grows with load by itself. Before
//! sending, a lane yields once so handlers that are ready to publish can join
//! the batch; it waits `linger` (default 0) for more only if asked to. A
//! timer-based linger costs every idle webhook up to 2 ms (tokio's timer has
//! millisecond ticks) and the bench showed it buys no throughput here.
//!
//! A webhook is answered 202 only when the broker acknowledged its batch
//! (rskafka always produces with acks=all). Every publish has a deadline:
//! waiting for queue space and for the acknowledgement together take at most
//! `publish_timeout`, after which the caller answers 503.

use std::{collections::HashMap, num::NonZeroU32, sync::Arc, time::Duration};

use futures::future::BoxFuture;
use rskafka::{
    client::partition::{Compression, PartitionClient},
    record::Record,
};
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinSet,
    time::Instant,
};
use tracing::{debug, warn};

use super::{Kafka, KafkaError, bounded, partitioner::partition_for_key};

/// Largest produce request we build, under the broker's default
/// `message.max.bytes` (1 MiB) with room for framing.
const MAX_BATCH_BYTES: usize = 900 * 1024;

/// Where an acknowledged record landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Published {
    pub partition: i32,
    pub offset: i64,
}

/// Why a record was not acknowledged. The record may or may not have reached
/// the broker; the caller must not claim it did (and a retry by the provider
/// is harmless: events are idempotent by `provider_event_id`).
#[derive(Clone, Debug, thiserror::Error)]
pub enum PublishError {
    #[error("the broker did not acknowledge within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("the broker refused the record: {0}")]
    Broker(Arc<KafkaError>),
    #[error("the producer is shutting down")]
    Closed,
    #[error("no producer for topic {0}")]
    UnknownTopic(String),
}

/// Producer settings.
#[derive(Clone, Copy, Debug)]
pub struct ProducerConfig {
    pub linger: Duration,
    pub queue_per_partition: usize,
    pub publish_timeout: Duration,
}

impl ProducerConfig {
    /// The service's settings (`KAFKA_LINGER`, `KAFKA_PRODUCER_QUEUE`,
    /// `KAFKA_PUBLISH_TIMEOUT`).
    pub fn from_config(cfg: &crate::config::Config) -> Self {
        Self {
            linger: cfg.linger,
            queue_per_partition: cfg.producer_queue,
            publish_timeout: cfg.publish_timeout,
        }
    }
}

/// Where webhooks are published: what the HTTP layer needs from a producer.
///
/// [`Producer`] is the real one. The trait exists so the HTTP layer can be
/// driven in-process by property tests with a fake that records what it was
/// given, and so those tests can prove that a refused request published
/// nothing.
pub trait Publish: Send + Sync + std::fmt::Debug {
    /// Publishes `record` to `topic` and resolves once it is acknowledged.
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        record: Record,
    ) -> BoxFuture<'a, Result<Published, PublishError>>;
}

impl Publish for Producer {
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        record: Record,
    ) -> BoxFuture<'a, Result<Published, PublishError>> {
        Box::pin(Producer::publish(self, topic, record))
    }
}

struct Pending {
    record: Record,
    ack: oneshot::Sender<Result<Published, PublishError>>,
}

/// Cheap to clone; every clone feeds the same lanes.
#[derive(Clone)]
pub struct Producer {
    topics: Arc<HashMap<String, Vec<mpsc::Sender<Pending>>>>,
    publish_timeout: Duration,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("topics", &self.topics.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// The lane tasks; await [`ProducerTasks::drained`] after the last
/// [`Producer`] clone is dropped to know every queued record was answered.
#[derive(Debug)]
pub struct ProducerTasks(JoinSet<()>);

impl ProducerTasks {
    pub async fn drained(mut self) {
        while self.0.join_next().await.is_some() {}
    }
}

impl Producer {
    /// Starts one lane per partition of each topic.
    pub async fn start(
        kafka: &Kafka,
        topics: &[&str],
        cfg: ProducerConfig,
    ) -> Result<(Self, ProducerTasks), KafkaError> {
        let mut tasks = JoinSet::new();
        let mut map = HashMap::new();
        for &topic in topics {
            let partitions = kafka.partitions(topic).await?;
            // The partitioner maps keys onto 0..n; a topic whose partitions
            // are not exactly that would send records nowhere.
            if partitions.iter().enumerate().any(|(i, p)| *p as usize != i) {
                return Err(KafkaError::UnknownTopic {
                    topic: format!("{topic} (partitions are not 0..n: {partitions:?})"),
                });
            }
            let mut lanes = Vec::with_capacity(partitions.len());
            for p in partitions {
                let (tx, rx) = mpsc::channel(cfg.queue_per_partition);
                lanes.push(tx);
                let lane = Lane {
                    kafka: kafka.clone(),
                    topic: topic.to_owned(),
                    partition: p,
                    client: None,
                    linger: cfg.linger,
                    call_timeout: cfg.publish_timeout,
                };
                tasks.spawn(lane.run(rx));
            }
            map.insert(topic.to_owned(), lanes);
        }
        Ok((
            Self {
                topics: Arc::new(map),
                publish_timeout: cfg.publish_timeout,
            },
            ProducerTasks(tasks),
        ))
    }

    /// Publishes one record to the partition its key hashes to, and waits for
    /// the broker's acknowledgement (at most `publish_timeout`).
    pub async fn publish(&self, topic: &str, record: Record) -> Result<Published, PublishError> {
        let deadline = Instant::now() + self.publish_timeout;
        let lanes = self
            .topics
            .get(topic)
            .ok_or_else(|| PublishError::UnknownTopic(topic.to_owned()))?;
        let n = NonZeroU32::new(u32::try_from(lanes.len()).unwrap_or(u32::MAX))
            .ok_or_else(|| PublishError::UnknownTopic(topic.to_owned()))?;
        let key = record.key.as_deref().unwrap_or_default();
        let partition = partition_for_key(key, n);
        let lane = &lanes[partition as usize];
        let (ack, answer) = oneshot::channel();
        let timeout = PublishError::Timeout(self.publish_timeout);
        match tokio::time::timeout_at(deadline, lane.send(Pending { record, ack })).await {
            Err(_) => return Err(timeout),
            Ok(Err(_)) => return Err(PublishError::Closed),
            Ok(Ok(())) => {}
        }
        match tokio::time::timeout_at(deadline, answer).await {
            Err(_) => Err(timeout),
            Ok(Err(_)) => Err(PublishError::Closed),
            Ok(Ok(result)) => result,
        }
    }
}

struct Lane {
    kafka: Kafka,
    topic: String,
    partition: i32,
    client: Option<PartitionClient>,
    linger: Duration,
    call_timeout: Duration,
}

impl Lane {
    async fn run(mut self, mut rx: mpsc::Receiver<Pending>) {
        let mut batch: Vec<Pending> = Vec::new();
        // Ends when every sender is gone and the queue is empty: everything
        // that was queued has been sent and answered.
        while let Some(first) = rx.recv().await {
            let mut bytes = first.record.approximate_size();
            batch.push(first);
            // Let every task that is ready to run (handlers about to publish)
            // run once first: their records join this batch at no timer cost.
            tokio::task::yield_now().await;
            if !self.linger.is_zero() {
                let until = Instant::now() + self.linger;
                while bytes < MAX_BATCH_BYTES {
                    match tokio::time::timeout_at(until, rx.recv()).await {
                        Ok(Some(p)) => {
                            bytes += p.record.approximate_size();
                            batch.push(p);
                        }
                        Ok(None) | Err(_) => break,
                    }
                }
            }
            while bytes < MAX_BATCH_BYTES {
                match rx.try_recv() {
                    Ok(p) => {
                        bytes += p.record.approximate_size();
                        batch.push(p);
                    }
                    Err(_) => break,
                }
            }
            // A caller that stopped waiting has already answered its client
            // with an error; sending its record anyway would only make a
            // duplicate for the provider's retry.
            batch.retain(|p| !p.ack.is_closed());
            if batch.is_empty() {
                continue;
            }
            let (records, acks): (Vec<Record>, Vec<_>) =
                batch.drain(..).map(|p| (p.record, p.ack)).unzip();
            let n = records.len();
            match self.send(records).await {
                Ok(offsets) => {
                    debug!(topic = %self.topic, partition = self.partition, offset = offsets.first().copied(), records = n, "batch acknowledged");
                    for (ack, offset) in acks.into_iter().zip(offsets) {
                        let _ = ack.send(Ok(Published {
                            partition: self.partition,
                            offset,
                        }));
                    }
                }
                Err(e) => {
                    warn!(topic = %self.topic, partition = self.partition, records = n, error = %e, "produce failed");
                    // Reconnect on the next batch: the leader may have moved.
                    self.client = None;
                    let e = PublishError::Broker(Arc::new(e));
                    for ack in acks {
                        let _ = ack.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    async fn send(&mut self, records: Vec<Record>) -> Result<Vec<i64>, KafkaError> {
        let deadline = Instant::now() + self.call_timeout;
        if self.client.is_none() {
            let c = tokio::time::timeout_at(
                deadline,
                self.kafka.partition_client(&self.topic, self.partition),
            )
            .await
            .map_err(|_| KafkaError::Timeout {
                what: "connecting to the partition leader",
                after: self.call_timeout,
            })??;
            self.client = Some(c);
        }
        let client = self.client.as_ref().expect("set above");
        let left = deadline.saturating_duration_since(Instant::now());
        let offsets = bounded(
            "producing",
            left,
            client.produce(records, Compression::NoCompression),
        )
        .await?;
        Ok(offsets)
    }
}
