//! The producer: one lane per partition, batching concurrent webhooks into
//! shared produce requests.
//!
//! Why not rskafka's `BatchProducer`: it flushes in background tasks with no
//! limit on how many are in flight, so two batches for one partition can be
//! in flight at once and a retried first batch can land after the second —
//! breaking per-order ordering — and nothing bounds its memory. Here each
//! partition has one lane: a bounded queue and a task that has **one batch
//! in flight at a time**. While it is in flight new records queue up and go
//! together in the next batch, so batching grows with load by itself.
//! Before forming a batch, a lane yields once so handlers that are ready to
//! publish can join it.
//!
//! A lane hands its batch to its leader's sender ([`super::brokers`]), which
//! sends one produce request per broker carrying every partition with a
//! batch waiting, lingering up to `KAFKA_LINGER` for more while that
//! gathers any.
//!
//! A webhook is answered 202 only when the broker acknowledged its batch
//! (every produce request asks for acks=all, see [`super::brokers`]). Every
//! publish has a deadline:
//! waiting for queue space and for the acknowledgement together take at most
//! `publish_timeout`, after which the caller answers 503.

use std::{
    collections::HashMap,
    num::NonZeroU32,
    sync::{Arc, RwLock, Weak},
    time::Duration,
};

use futures::future::BoxFuture;
use rskafka::record::Record;
use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{
    Kafka, KafkaError,
    brokers::{self, Brokers},
    partitioner::partition_for_key,
};
use crate::metrics::Metrics;

/// Largest record batch a lane builds, counted as [`batch_bytes`] counts
/// (an upper bound of its encoded size), under the broker's default
/// `message.max.bytes` (1 MiB, which applies to a whole batch). A record that
/// alone is larger still goes, alone: whether the broker takes it is the
/// broker's `message.max.bytes` to decide (its refusal is a 503 for that
/// webhook only), and `HTTP_MAX_BODY_BYTES` is checked against that limit
/// with [`max_batch_bytes_for_body`].
pub const MAX_BATCH_BYTES: usize = 900 * 1024;

/// The fixed part of a v2 record batch: base offset (8), length (4),
/// leader epoch (4), magic (1), CRC (4), attributes (2), last offset delta
/// (4), first and max timestamps (8 + 8), producer id (8) and epoch (2),
/// base sequence (4), record count (4).
pub const BATCH_OVERHEAD: usize = 61;

/// An upper bound of one record's encoded size inside a batch: its key,
/// value and headers plus the most their varints can take (length 5,
/// attributes 1, timestamp delta 10, offset delta 5, key and value lengths
/// 5 + 5, header count 5, and 5 + 5 per header).
pub fn record_bytes(r: &Record) -> usize {
    r.approximate_size() + 36 + 10 * r.headers.len()
}

/// An upper bound of the encoded size of a batch of `records`.
pub fn batch_bytes<'a>(records: impl IntoIterator<Item = &'a Record>) -> usize {
    BATCH_OVERHEAD + records.into_iter().map(record_bytes).sum::<usize>()
}

/// The largest batch a webhook body of `body_len` bytes can make on its own:
/// the worst-case envelope around it (longest order id, every character of
/// it escaped, the longer type name, a timestamp with nanoseconds), in a
/// batch of one. The start-up check compares this for `HTTP_MAX_BODY_BYTES`
/// with the broker's maximum message size.
pub fn max_batch_bytes_for_body(body_len: usize) -> usize {
    use crate::domain::types::MAX_ID_BYTES;
    // {"event_id":"<36>","key":"<id, each byte escaped: 2x>","type":"<15>",
    //  "payload":<body>,"timestamp":"<at most 35>"}
    let value = r#"{"event_id":"","key":"","type":"","payload":,"timestamp":""}"#.len()
        + 36
        + 2 * MAX_ID_BYTES
        + "dispute.webhook".len()
        + body_len
        + 35;
    // Headers `event_id` (a UUID) and `type`; the key is the order id.
    let headers = "event_id".len() + 36 + "type".len() + "dispute.webhook".len();
    BATCH_OVERHEAD + MAX_ID_BYTES + value + headers + 36 + 2 * 10
}

/// A batch being built: records in queue order, never over
/// [`MAX_BATCH_BYTES`] unless it holds a single record.
struct Batch {
    records: Vec<Pending>,
    bytes: usize,
    limit: usize,
}

impl Batch {
    /// A batch starts with any one record, however large.
    fn start(first: Pending, limit: usize) -> Self {
        Self {
            bytes: BATCH_OVERHEAD + record_bytes(&first.record),
            records: vec![first],
            limit,
        }
    }

    fn is_full(&self) -> bool {
        self.bytes >= self.limit
    }

    /// Adds `p` if the batch stays within its limit once `p` is in it;
    /// otherwise hands it back, to start the next batch.
    fn push(&mut self, p: Pending) -> Result<(), Pending> {
        let size = record_bytes(&p.record);
        if self.bytes + size > self.limit {
            return Err(p);
        }
        self.bytes += size;
        self.records.push(p);
        Ok(())
    }
}

/// How long [`Producer::start`] waits for a topic to appear in the broker's
/// metadata before failing with "topic ... does not exist".
pub const TOPIC_WAIT: Duration = Duration::from_secs(10);

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

impl PublishError {
    /// Whether the broker refused the record for what it is (too large, or
    /// invalid, or a topic this client may not write): sending it again
    /// gets the same answer. Timeouts, a leader moving, a full queue are
    /// not refusals.
    pub fn refused(&self) -> bool {
        matches!(self, Self::Broker(e) if e.refuses_record())
    }
}

/// Producer settings.
#[derive(Clone, Debug)]
pub struct ProducerConfig {
    pub linger: Duration,
    pub queue_per_partition: usize,
    pub publish_timeout: Duration,
    /// How often topics are checked for new partitions
    /// (`KAFKA_METADATA_REFRESH`).
    pub metadata_refresh: Duration,
    /// Where the lanes report queue wait, request time and batch size
    /// (none: not reported).
    pub metrics: Option<Metrics>,
}

impl ProducerConfig {
    /// The service's settings (`KAFKA_LINGER`, `KAFKA_PRODUCER_QUEUE`,
    /// `KAFKA_PUBLISH_TIMEOUT`).
    pub fn from_config(kafka: &crate::config::KafkaSettings) -> Self {
        Self {
            linger: kafka.linger,
            queue_per_partition: kafka.producer_queue,
            publish_timeout: kafka.publish_timeout,
            metadata_refresh: kafka.metadata_refresh,
            metrics: None,
        }
    }

    /// The same, reporting to `metrics`.
    pub fn with_metrics(self, metrics: &Metrics) -> Self {
        Self {
            metrics: Some(metrics.clone()),
            ..self
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
    queued_at: Instant,
}

/// Cheap to clone; every clone feeds the same lanes.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Inner>,
    publish_timeout: Duration,
}

/// Each topic's lanes, in partition order. The list of a topic only ever
/// grows (partitions added at runtime, see [`refresh`]); publishing takes a
/// snapshot of it.
type Lanes = Arc<[mpsc::Sender<Pending>]>;

struct Inner {
    topics: RwLock<HashMap<String, Lanes>>,
    /// Cancelled when the last [`Producer`] clone goes, so the metadata
    /// refresh stops and the lanes can drain.
    closed: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.closed.cancel();
    }
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let topics = self.inner.topics.read().unwrap_or_else(|p| p.into_inner());
        f.debug_struct("Producer")
            .field("topics", &topics.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Every lane (and the metadata refresh) holds a clone of one sender that
/// never sends: await [`ProducerTasks::drained`] after the last [`Producer`]
/// clone is dropped to know every queued record was answered.
#[derive(Debug)]
pub struct ProducerTasks(mpsc::Receiver<()>);

impl ProducerTasks {
    pub async fn drained(mut self) {
        while self.0.recv().await.is_some() {}
    }
}

/// Starts a lane for each of `partitions` of `topic`.
fn spawn_lanes(
    brokers: &Arc<Brokers>,
    topic: &str,
    partitions: impl IntoIterator<Item = i32>,
    cfg: &ProducerConfig,
    alive: &mpsc::Sender<()>,
) -> Vec<mpsc::Sender<Pending>> {
    partitions
        .into_iter()
        .map(|p| {
            let (tx, rx) = mpsc::channel(cfg.queue_per_partition);
            let lane = Lane {
                brokers: Arc::clone(brokers),
                topic: topic.into(),
                partition: p,
                call_timeout: cfg.publish_timeout,
                metrics: cfg.metrics.clone(),
            };
            let alive = alive.clone();
            tokio::spawn(async move {
                lane.run(rx).await;
                drop(alive);
            });
            tx
        })
        .collect()
}

/// Partitions added to a topic at runtime get lanes here, every
/// `cfg.metadata_refresh`, until the producer is dropped. Keys then hash over
/// the new count, as with any Kafka producer (see docs/guarantees.md, "Partitions").
async fn refresh(
    inner: Weak<Inner>,
    closed: CancellationToken,
    kafka: Kafka,
    brokers: Arc<Brokers>,
    cfg: ProducerConfig,
    alive: mpsc::Sender<()>,
) {
    loop {
        tokio::select! {
            _ = closed.cancelled() => return,
            _ = tokio::time::sleep(cfg.metadata_refresh) => {}
        }
        let Some(inner) = inner.upgrade() else { return };
        let names: Vec<String> = {
            let topics = inner.topics.read().unwrap_or_else(|p| p.into_inner());
            topics.keys().cloned().collect()
        };
        for topic in names {
            let Ok(partitions) = kafka.partitions(&topic).await else {
                continue;
            };
            let known = {
                let topics = inner.topics.read().unwrap_or_else(|p| p.into_inner());
                topics.get(&topic).map_or(0, |l| l.len())
            };
            if partitions.len() <= known || !is_dense(&partitions) {
                continue;
            }
            let added = spawn_lanes(
                &brokers,
                &topic,
                partitions[known..].iter().copied(),
                &cfg,
                &alive,
            );
            let mut topics = inner.topics.write().unwrap_or_else(|p| p.into_inner());
            if let Some(lanes) = topics.get_mut(&topic) {
                let grown: Vec<_> = lanes.iter().cloned().chain(added).collect();
                *lanes = grown.into();
                info!(%topic, partitions = lanes.len(), "new partitions: publishing to them too");
            }
        }
    }
}

/// Whether partition ids are exactly `0..n` (the partitioner maps keys
/// onto that).
fn is_dense(partitions: &[i32]) -> bool {
    partitions.iter().enumerate().all(|(i, p)| *p as usize == i)
}

impl Producer {
    /// Starts one lane per partition of each topic, and the metadata
    /// refresh that adds lanes for partitions added later.
    pub async fn start(
        kafka: &Kafka,
        topics: &[&str],
        cfg: ProducerConfig,
    ) -> Result<(Self, ProducerTasks), KafkaError> {
        let (alive, tasks) = mpsc::channel(1);
        let brokers = Arc::new(kafka.brokers(
            cfg.publish_timeout,
            cfg.linger,
            cfg.metrics.clone(),
            alive.clone(),
        ));
        let mut map = HashMap::new();
        for &topic in topics {
            // A topic created a moment ago may not be in the metadata yet.
            let partitions = kafka.wait_for_topic(topic, 1, TOPIC_WAIT).await?;
            // The partitioner maps keys onto 0..n; a topic whose partitions
            // are not exactly that would send records nowhere.
            if !is_dense(&partitions) {
                return Err(KafkaError::UnknownTopic {
                    topic: format!("{topic} (partitions are not 0..n: {partitions:?})"),
                });
            }
            let lanes = spawn_lanes(&brokers, topic, partitions, &cfg, &alive);
            map.insert(topic.to_owned(), lanes.into());
        }
        let publish_timeout = cfg.publish_timeout;
        let inner = Arc::new(Inner {
            topics: RwLock::new(map),
            closed: CancellationToken::new(),
        });
        tokio::spawn(refresh(
            Arc::downgrade(&inner),
            inner.closed.clone(),
            kafka.clone(),
            brokers,
            cfg,
            alive,
        ));
        Ok((
            Self {
                inner,
                publish_timeout,
            },
            ProducerTasks(tasks),
        ))
    }

    /// Publishes one record to the partition its key hashes to, and waits for
    /// the broker's acknowledgement (at most `publish_timeout`).
    pub async fn publish(&self, topic: &str, record: Record) -> Result<Published, PublishError> {
        let deadline = Instant::now() + self.publish_timeout;
        let lanes: Lanes = {
            let topics = self.inner.topics.read().unwrap_or_else(|p| p.into_inner());
            topics
                .get(topic)
                .cloned()
                .ok_or_else(|| PublishError::UnknownTopic(topic.to_owned()))?
        };
        let n = NonZeroU32::new(u32::try_from(lanes.len()).unwrap_or(u32::MAX))
            .ok_or_else(|| PublishError::UnknownTopic(topic.to_owned()))?;
        let key = record.key.as_deref().unwrap_or_default();
        let partition = partition_for_key(key, n);
        let lane = &lanes[partition as usize];
        let (ack, answer) = oneshot::channel();
        let timeout = PublishError::Timeout(self.publish_timeout);
        match tokio::time::timeout_at(
            deadline,
            lane.send(Pending {
                record,
                ack,
                queued_at: Instant::now(),
            }),
        )
        .await
        {
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
    brokers: Arc<Brokers>,
    topic: Arc<str>,
    partition: i32,
    call_timeout: Duration,
    metrics: Option<Metrics>,
}

impl Lane {
    async fn run(self, mut rx: mpsc::Receiver<Pending>) {
        // The record that did not fit the last batch: it starts the next.
        let mut carried: Option<Pending> = None;
        // Ends when every sender is gone and the queue is empty: everything
        // that was queued has been sent and answered.
        loop {
            let first = match carried.take() {
                Some(p) => p,
                None => match rx.recv().await {
                    Some(p) => p,
                    None => break,
                },
            };
            let mut batch = Batch::start(first, MAX_BATCH_BYTES);
            // Let every task that is ready to run (handlers about to publish)
            // run once first: their records join this batch at no timer cost.
            tokio::task::yield_now().await;
            while carried.is_none() && !batch.is_full() {
                match rx.try_recv() {
                    Ok(p) => carried = batch.push(p).err(),
                    Err(_) => break,
                }
            }
            let mut batch = batch.records;
            // A caller that stopped waiting has already answered its client
            // with an error; sending its record anyway would only make a
            // duplicate for the provider's retry.
            batch.retain(|p| !p.ack.is_closed());
            if batch.is_empty() {
                continue;
            }
            let sent_at = Instant::now();
            if let Some(m) = &self.metrics {
                for p in &batch {
                    m.producer_queue_seconds
                        .observe((sent_at - p.queued_at).as_secs_f64());
                }
                m.producer_batch_records.observe(batch.len() as f64);
            }
            let (records, acks): (Vec<Record>, Vec<_>) =
                batch.drain(..).map(|p| (p.record, p.ack)).unzip();
            let n = records.len();
            let sent = self.send(records).await;
            let took = sent_at.elapsed();
            if let Some(m) = &self.metrics {
                m.producer_request_seconds.observe(took.as_secs_f64());
            }
            match sent {
                Ok(offsets) => {
                    debug!(topic = %self.topic, partition = self.partition, offset = offsets.first().copied(),
                           records = n, took_us = took.as_micros() as u64, "batch acknowledged");
                    for (ack, offset) in acks.into_iter().zip(offsets) {
                        let _ = ack.send(Ok(Published {
                            partition: self.partition,
                            offset,
                        }));
                    }
                }
                Err(e) => {
                    warn!(topic = %self.topic, partition = self.partition, records = n, error = %e, "produce failed");
                    for ack in acks {
                        let _ = ack.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    /// Hands the batch to its leader's sender and waits for the answer:
    /// the offset of each record, in order.
    async fn send(&self, records: Vec<Record>) -> Result<Vec<i64>, PublishError> {
        let n = records.len() as i64;
        let encoded =
            brokers::encode_batch(records).map_err(|e| PublishError::Broker(Arc::new(e)))?;
        let deadline = Instant::now() + self.call_timeout;
        let base = self
            .brokers
            .produce(&self.topic, self.partition, encoded, deadline)
            .await
            .map_err(PublishError::Broker)?;
        Ok((base..base + n).collect())
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};
    use serde_json::value::RawValue;

    use super::*;
    use crate::kafka::envelope::{Envelope, EventType};

    fn pending(value_len: usize) -> Pending {
        let (ack, _) = oneshot::channel();
        Pending {
            record: Record {
                key: Some(b"ord_1".to_vec()),
                value: Some(vec![b'x'; value_len]),
                headers: Default::default(),
                timestamp: Utc::now(),
            },
            ack,
            queued_at: Instant::now(),
        }
    }

    /// Batches formed the way a lane forms them, from a queue of records.
    fn batches(sizes: &[usize], limit: usize) -> Vec<Vec<usize>> {
        let mut out = Vec::new();
        let mut queue = sizes.iter().map(|&n| pending(n));
        let mut carried = None;
        while let Some(first) = carried.take().or_else(|| queue.next()) {
            let mut batch = Batch::start(first, limit);
            while carried.is_none() && !batch.is_full() {
                match queue.next() {
                    Some(p) => carried = batch.push(p).err(),
                    None => break,
                }
            }
            let bytes = batch_bytes(batch.records.iter().map(|p| &p.record));
            assert_eq!(bytes, batch.bytes);
            assert!(
                bytes <= limit || batch.records.len() == 1,
                "a batch of {} records is {bytes} bytes, over {limit}",
                batch.records.len()
            );
            out.push(
                batch
                    .records
                    .iter()
                    .map(|p| p.record.value.as_ref().map_or(0, Vec::len))
                    .collect(),
            );
        }
        out
    }

    #[test]
    fn a_batch_never_exceeds_its_limit_and_keeps_queue_order() {
        let per_record = record_bytes(&pending(0).record);
        // Exactly full: three records of 100 bytes fit a limit made for them.
        let limit = BATCH_OVERHEAD + 3 * (per_record + 100);
        assert_eq!(
            batches(&[100; 7], limit),
            [vec![100; 3], vec![100; 3], vec![100]]
        );
        // One byte less and only two fit.
        assert_eq!(batches(&[100; 4], limit - 1), [vec![100; 2], vec![100; 2]]);
        // A record larger than the limit goes alone, in its place.
        assert_eq!(
            batches(&[10, 5000, 10, 10], 1000),
            [vec![10], vec![5000], vec![10, 10]]
        );
        // Many sizes: never over, nothing lost, order kept.
        let sizes: Vec<usize> = (0..2000).map(|i| (i * 7919) % 3000).collect();
        let formed = batches(&sizes, 20_000);
        assert_eq!(formed.concat(), sizes);
        assert!(formed.len() > 100);
    }

    #[test]
    fn the_worst_case_envelope_fits_the_stated_bound() {
        for body_len in [2usize, 400, 262_144] {
            let body = format!(r#""{}""#, "x".repeat(body_len - 2));
            // The longest order id, every byte of it escaped in the JSON.
            let key = "\"".repeat(crate::domain::types::MAX_ID_BYTES);
            let mut env = Envelope::new(
                EventType::DisputeWebhook,
                &key,
                RawValue::from_string(body).unwrap(),
            );
            env.timestamp = DateTime::parse_from_rfc3339("2026-11-26T10:00:00.123456789Z")
                .unwrap()
                .to_utc();
            let record = env.to_record();
            let size = batch_bytes([&record]);
            let bound = max_batch_bytes_for_body(body_len);
            assert!(size <= bound, "{size} > {bound}");
            // Tight: the bound is not a blanket over-estimate.
            assert!(bound - size < 64, "{bound} - {size}");
        }
    }
}
