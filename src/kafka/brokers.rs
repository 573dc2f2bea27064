//! One produce request per broker, carrying every partition that has a
//! batch waiting.
//!
//! rskafka 0.6's `PartitionClient` sends one partition per produce
//! request. At the rates a provider sends, a partition has one or two
//! records waiting at a time, so that made one request (and one broker
//! request-handler pass, one log append with its own fsync bookkeeping,
//! one response) per one or two webhooks: the broker spent more CPU per
//! event than payhook. Here each broker has one sender ([`BrokerSender`])
//! with its own [`Connection`]: every batch the partition lanes handed it
//! since its last request goes in the next one, one request at a time.
//! The lane that finds no request in flight sends itself (no hand-off, no
//! extra wake-up when webhooks come one at a time); batches that arrive
//! while a request is in flight go together in the next, so the number of
//! requests per event falls as the load grows.
//!
//! What does not change (see `docs/guarantees.md`):
//! - **acks=all**: every request asks for `acks=-1`;
//! - **per-partition order**: a lane hands over its next batch only once
//!   the previous one is answered, so a request never carries two batches
//!   of one partition and a partition never has two batches in flight;
//! - **per-record acknowledgement**: each batch gets its own answer (the
//!   partition's error code, or the base offset of its records);
//! - **bounded work**: a sender holds at most one batch per lane, and every
//!   request (connecting included) is bounded by the request timeout, so
//!   every batch is answered within a bounded time.
//!
//! Where partitions are led comes from the cluster's metadata, read on an
//! [`Admin`] connection and cached; a batch that fails for any reason but a
//! refusal of the record itself forgets its partition's leader, so the next
//! batch asks again (the leader may have moved).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use kafka_protocol::{
    messages::{
        ProduceRequest, TopicName,
        produce_request::{PartitionProduceData, TopicProduceData},
    },
    protocol::StrBytes,
};
use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};
use tracing::{debug, warn};

use super::{
    KafkaError,
    admin::Admin,
    wire::{Connection, WireError},
};
use crate::{connect::KafkaTransport, metrics::Metrics};

/// The produce request version: v8 (Kafka 2.4 and later, 4.x included)
/// answers with the broker's error message per partition.
const PRODUCE_VERSION: i16 = 8;

/// A sender stops adding batches to a request once it holds this many
/// bytes of records (a batch that alone is larger still goes, alone). Far
/// under the broker's `socket.request.max.bytes` (100 MiB by default).
const MAX_REQUEST_BYTES: usize = 8 << 20;

/// Kafka's LEADER_NOT_AVAILABLE: what a batch gets when the metadata names
/// no leader (or no address for it); not a refusal, so the leader is asked
/// again.
const LEADER_NOT_AVAILABLE: i16 = 5;

/// Why a batch was not acknowledged, shared by every caller of its request.
pub type BatchError = Arc<KafkaError>;

/// One partition's encoded record batch, waiting for its broker's sender.
struct Job {
    topic: Arc<str>,
    partition: i32,
    records: Bytes,
    done: oneshot::Sender<Result<i64, BatchError>>,
}

/// The brokers of one cluster, as the producer sees them: where each
/// partition is led and a sender per broker.
pub struct Brokers {
    bootstrap: Arc<[String]>,
    transport: KafkaTransport,
    timeout: Duration,
    linger: Duration,
    metrics: Option<Metrics>,
    /// Leaders and broker addresses, from the last metadata read.
    leaders: Mutex<Leaders>,
    /// One metadata read at a time.
    refreshing: tokio::sync::Mutex<()>,
    senders: Mutex<HashMap<i32, Sender>>,
    /// Held by every broker sender (and its drain task): see
    /// [`super::producer::ProducerTasks`].
    alive: mpsc::Sender<()>,
}

#[derive(Default)]
struct Leaders {
    brokers: HashMap<i32, String>,
    partitions: HashMap<(Arc<str>, i32), i32>,
}

/// A broker's sender, as the lanes reach it.
struct Sender {
    addr: String,
    shared: Arc<BrokerSender>,
}

/// A broker's batches waiting to go, and the one connection they go on.
///
/// Whoever finds the connection free sends: the lane that handed over a
/// batch sends the request itself when no other request is in flight (no
/// hand-off to another task, no extra wake-up), and takes every batch
/// waiting at that moment along. While a request is in flight, lanes only
/// add their batches and wait for their answer; whoever holds the
/// connection looks again after letting it go, and if batches are waiting a
/// drain task sends them, so the lane that sent can answer its own caller.
struct BrokerSender {
    pending: Mutex<Vec<Job>>,
    task: tokio::sync::Mutex<SenderTask>,
    /// A drain task is running (at most one).
    draining: std::sync::atomic::AtomicBool,
    /// Held by the drain task while it runs: see [`super::producer::ProducerTasks`].
    alive: mpsc::Sender<()>,
}

impl std::fmt::Debug for Brokers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Brokers")
            .field("bootstrap", &self.bootstrap)
            .finish_non_exhaustive()
    }
}

impl Brokers {
    pub fn new(
        bootstrap: Arc<[String]>,
        transport: KafkaTransport,
        timeout: Duration,
        linger: Duration,
        metrics: Option<Metrics>,
        alive: mpsc::Sender<()>,
    ) -> Self {
        Self {
            bootstrap,
            transport,
            timeout,
            linger,
            metrics,
            leaders: Mutex::default(),
            refreshing: tokio::sync::Mutex::new(()),
            senders: Mutex::default(),
            alive,
        }
    }

    /// Sends one partition's record batch with the next request to its
    /// leader and returns the offset of its first record. Finding the
    /// leader is bounded by `deadline`; the request itself by the request
    /// timeout, so this always returns.
    pub async fn produce(
        &self,
        topic: &Arc<str>,
        partition: i32,
        records: Bytes,
        deadline: Instant,
    ) -> Result<i64, BatchError> {
        let leader = match tokio::time::timeout_at(deadline, self.leader(topic, partition)).await {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => return Err(Arc::new(e)),
            Err(_) => {
                return Err(Arc::new(KafkaError::Timeout {
                    what: "finding the partition leader",
                    after: self.timeout,
                }));
            }
        };
        let (done, answer) = oneshot::channel();
        let job = Job {
            topic: Arc::clone(topic),
            partition,
            records,
            done,
        };
        let result = match self.sender(leader) {
            Some(sender) => {
                sender.add(job);
                sender.send_if_free().await;
                answer.await.unwrap_or_else(|_| Err(closed()))
            }
            None => Err(Arc::new(KafkaError::Produce {
                code: LEADER_NOT_AVAILABLE,
                message: Some(format!("broker {leader} is not in the metadata")),
            })),
        };
        if let Err(e) = &result
            && !e.refuses_record()
        {
            self.forget(topic, partition);
        }
        result
    }

    /// The leader of a partition: cached, or read from the metadata.
    async fn leader(&self, topic: &Arc<str>, partition: i32) -> Result<i32, KafkaError> {
        let key = (Arc::clone(topic), partition);
        if let Some(l) = self.cached(&key) {
            return Ok(l);
        }
        let _one = self.refreshing.lock().await;
        // Another lane may have read it while this one waited.
        if let Some(l) = self.cached(&key) {
            return Ok(l);
        }
        let mut admin = Admin::connect(&self.bootstrap, &self.transport, self.timeout).await?;
        let found = admin.leaders(topic).await?;
        let Some(found) = found else {
            return Err(KafkaError::UnknownTopic {
                topic: topic.to_string(),
            });
        };
        let mut leaders = self.lock_leaders();
        leaders.brokers = found.brokers;
        for (p, l) in found.partitions {
            match l {
                Some(l) => leaders.partitions.insert((Arc::clone(topic), p), l),
                None => leaders.partitions.remove(&(Arc::clone(topic), p)),
            };
        }
        leaders
            .partitions
            .get(&key)
            .copied()
            .ok_or(KafkaError::Produce {
                code: LEADER_NOT_AVAILABLE,
                message: Some(format!("partition {partition} of {topic} has no leader")),
            })
    }

    fn cached(&self, key: &(Arc<str>, i32)) -> Option<i32> {
        self.lock_leaders().partitions.get(key).copied()
    }

    fn forget(&self, topic: &Arc<str>, partition: i32) {
        self.lock_leaders()
            .partitions
            .remove(&(Arc::clone(topic), partition));
    }

    fn lock_leaders(&self) -> std::sync::MutexGuard<'_, Leaders> {
        self.leaders.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `broker`'s sender, made on first use and made anew when the
    /// broker's address changed.
    fn sender(&self, broker: i32) -> Option<Arc<BrokerSender>> {
        let addr = self.lock_leaders().brokers.get(&broker)?.clone();
        let mut senders = self.senders.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = senders.get(&broker)
            && s.addr == addr
        {
            return Some(Arc::clone(&s.shared));
        }
        let shared = Arc::new(BrokerSender {
            pending: Mutex::default(),
            task: tokio::sync::Mutex::new(SenderTask {
                broker,
                addr: addr.clone(),
                transport: self.transport.clone(),
                timeout: self.timeout,
                linger: Linger::new(self.linger),
                metrics: self.metrics.clone(),
                conn: None,
            }),
            draining: std::sync::atomic::AtomicBool::new(false),
            alive: self.alive.clone(),
        });
        senders.insert(
            broker,
            Sender {
                addr,
                shared: Arc::clone(&shared),
            },
        );
        Some(shared)
    }
}

impl BrokerSender {
    fn add(&self, job: Job) {
        self.lock_pending().push(job);
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, Vec<Job>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn has_pending(&self) -> bool {
        !self.lock_pending().is_empty()
    }

    /// The oldest batches waiting whose records fit in `room` bytes
    /// together; with `first_alone`, the oldest goes even when it alone
    /// does not fit. The rest stay.
    fn take(&self, room: usize, first_alone: bool) -> Vec<Job> {
        let mut pending = self.lock_pending();
        let mut bytes = 0;
        let fit = pending
            .iter()
            .position(|j| {
                bytes += j.records.len();
                bytes > room
            })
            .unwrap_or(pending.len());
        let n = if first_alone {
            fit.max(1).min(pending.len())
        } else {
            fit
        };
        pending.drain(..n).collect()
    }

    /// Sends one request with what is waiting, unless a request is in
    /// flight (its sender will look again when it is done). Then, if more
    /// is waiting, leaves it to the drain task.
    async fn send_if_free(self: &Arc<Self>) {
        let Ok(mut task) = self.task.try_lock() else {
            return;
        };
        task.round(self).await;
        drop(task);
        // A lane that added its batch while the request was in flight found
        // the connection taken and left it to whoever held it: here.
        if self.has_pending() {
            self.drain();
        }
    }

    /// Starts the drain task unless it runs: it sends until nothing waits.
    fn drain(self: &Arc<Self>) {
        use std::sync::atomic::Ordering;
        if self.draining.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let _alive = me.alive.clone();
            loop {
                {
                    let mut task = me.task.lock().await;
                    while me.has_pending() {
                        task.round(&me).await;
                    }
                }
                me.draining.store(false, Ordering::Release);
                // A batch added after the last look, while the connection
                // was still held, found it taken: look once more.
                if !me.has_pending() || me.draining.swap(true, Ordering::AcqRel) {
                    return;
                }
            }
        });
    }
}

fn closed() -> BatchError {
    Arc::new(KafkaError::SenderStopped)
}

struct SenderTask {
    broker: i32,
    addr: String,
    transport: KafkaTransport,
    timeout: Duration,
    linger: Linger,
    metrics: Option<Metrics>,
    conn: Option<Connection>,
}

impl SenderTask {
    /// One produce request with the batches waiting (lingering for more
    /// first, when [`Linger`] says so); nothing when none wait.
    async fn round(&mut self, from: &BrokerSender) {
        let mut jobs = from.take(MAX_REQUEST_BYTES, true);
        if jobs.is_empty() {
            return;
        }
        let bytes: usize = jobs.iter().map(|j| j.records.len()).sum();
        if bytes < MAX_REQUEST_BYTES
            && let Some(until) = self.linger.until()
        {
            tokio::time::sleep_until(until).await;
            let more = from.take(MAX_REQUEST_BYTES - bytes, false);
            self.linger.gathered(more.len());
            jobs.extend(more);
        }
        self.send(jobs).await;
    }

    async fn send(&mut self, jobs: Vec<Job>) {
        if let Some(m) = &self.metrics {
            m.producer_request_partitions.observe(jobs.len() as f64);
        }
        let req = request(&jobs, self.timeout);
        let started = Instant::now();
        let answer = tokio::time::timeout(self.timeout, self.call(&req)).await;
        let answer = match answer {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => return self.fail(jobs, e.into()),
            Err(_) => {
                return self.fail(
                    jobs,
                    KafkaError::Timeout {
                        what: "producing",
                        after: self.timeout,
                    },
                );
            }
        };
        debug!(
            broker = self.broker,
            partitions = jobs.len(),
            took_us = started.elapsed().as_micros() as u64,
            "produce request answered"
        );
        let mut answers: Vec<(&str, i32, Result<i64, BatchError>)> = Vec::new();
        for t in &answer.responses {
            for p in &t.partition_responses {
                let r = if p.error_code == 0 {
                    Ok(p.base_offset)
                } else {
                    let message = p
                        .error_message
                        .as_ref()
                        .map(|m| m.as_str().to_owned())
                        .or_else(|| {
                            p.record_errors.first().and_then(|r| {
                                r.batch_index_error_message
                                    .as_ref()
                                    .map(|m| m.as_str().to_owned())
                            })
                        });
                    Err(Arc::new(KafkaError::Produce {
                        code: p.error_code,
                        message,
                    }))
                };
                answers.push((t.name.0.as_str(), p.index, r));
            }
        }
        let mut unanswered = Vec::new();
        let mut resolved = Vec::with_capacity(jobs.len());
        for j in jobs {
            let found = answers
                .iter()
                .position(|(t, p, _)| *t == &*j.topic && *p == j.partition);
            match found {
                Some(i) => resolved.push((j.done, answers.swap_remove(i).2)),
                None => unanswered.push(j),
            }
        }
        for (done, r) in resolved {
            let _ = done.send(r);
        }
        if !unanswered.is_empty() {
            // A broker that answers a request without one of its partitions
            // is not one to keep talking to on this connection.
            self.fail(
                unanswered,
                KafkaError::Admin(WireError::Protocol {
                    what: "producing",
                    reason: "the answer does not name every partition of the request".into(),
                }),
            );
        }
    }

    async fn call(
        &mut self,
        req: &ProduceRequest,
    ) -> Result<kafka_protocol::messages::ProduceResponse, WireError> {
        if self.conn.is_none() {
            let conn =
                Connection::open(&self.addr, &self.transport, self.timeout, "payhook").await?;
            self.conn = Some(conn);
        }
        let conn = self.conn.as_mut().expect("set above");
        conn.call("producing", PRODUCE_VERSION, req).await
    }

    /// Answers every job with `e` and closes the connection: the next
    /// request starts on a new one (after a timeout, an answer may still
    /// be on its way on the old one).
    fn fail(&mut self, jobs: Vec<Job>, e: KafkaError) {
        warn!(broker = self.broker, addr = %self.addr, partitions = jobs.len(), error = %e, "produce request failed");
        self.conn = None;
        let e = Arc::new(e);
        for j in jobs {
            let _ = j.done.send(Err(Arc::clone(&e)));
        }
    }
}

/// `KAFKA_LINGER`, adapted to the load: how long a sender waits for more
/// batches before it sends a request.
///
/// Waiting pays only when other partitions' batches arrive meanwhile; a
/// lone caller (one webhook at a time) would only wait. So the sender
/// lingers while its lingers gather something, and stops once
/// [`Linger::PATIENCE`] lingers in a row gathered nothing; it then tries
/// again every [`Linger::PROBE`]th request, so rising load turns it back on.
#[derive(Debug)]
struct Linger {
    linger: Duration,
    /// Lingers in a row that gathered nothing.
    idle: u32,
    /// Requests sent without lingering since the last linger.
    skipped: u32,
}

impl Linger {
    const PATIENCE: u32 = 4;
    const PROBE: u32 = 128;

    fn new(linger: Duration) -> Self {
        Self {
            linger,
            idle: 0,
            skipped: 0,
        }
    }

    /// Until when this request lingers, or `None` to send it now.
    fn until(&mut self) -> Option<Instant> {
        if self.linger.is_zero() {
            return None;
        }
        if self.idle >= Self::PATIENCE && self.skipped < Self::PROBE {
            self.skipped += 1;
            return None;
        }
        self.skipped = 0;
        Some(Instant::now() + self.linger)
    }

    /// A linger gathered `n` more batches.
    fn gathered(&mut self, n: usize) {
        self.idle = if n == 0 {
            self.idle.saturating_add(1)
        } else {
            0
        };
    }
}

/// The produce request for `jobs`: acks=all, one entry per topic (in order
/// of first appearance), one partition entry per job.
fn request(jobs: &[Job], timeout: Duration) -> ProduceRequest {
    let mut topics: Vec<TopicProduceData> = Vec::new();
    for j in jobs {
        let data = PartitionProduceData::default()
            .with_index(j.partition)
            .with_records(Some(j.records.clone()));
        match topics.iter_mut().find(|t| t.name.0.as_str() == &*j.topic) {
            Some(t) => t.partition_data.push(data),
            None => topics.push(
                TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from_string(j.topic.to_string())))
                    .with_partition_data(vec![data]),
            ),
        }
    }
    ProduceRequest::default()
        .with_acks(-1)
        // The broker gives up waiting for its replicas a little before this
        // client gives up on the answer, so its reason arrives.
        .with_timeout_ms(i32::try_from(timeout.mul_f64(0.8).as_millis()).unwrap_or(i32::MAX))
        .with_topic_data(topics)
}

/// Encodes `records` as one uncompressed v2 record batch (as rskafka
/// does), offsets counted from 0 and the records' own timestamps.
pub fn encode_batch(records: Vec<rskafka::record::Record>) -> Result<Bytes, KafkaError> {
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };
    let records: Vec<Record> = records
        .into_iter()
        .enumerate()
        .map(|(i, r)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // Only the batch's base sequence is written, from the first
            // record's: -1, as a producer without idempotence sends. The
            // encoder keeps records in one batch while offset - sequence is
            // the same for each.
            sequence: (i as i32).wrapping_sub(1),
            timestamp: r.timestamp.timestamp_millis(),
            key: r.key.map(Bytes::from),
            value: r.value.map(Bytes::from),
            headers: r
                .headers
                .into_iter()
                .map(|(k, v)| (StrBytes::from_string(k), Some(Bytes::from(v))))
                .collect(),
        })
        .collect();
    let mut buf = bytes::BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(&mut buf, &records, &options).map_err(|e| {
        KafkaError::Admin(WireError::Protocol {
            what: "encoding a record batch",
            reason: e.to_string(),
        })
    })?;
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::{TimeZone, Utc};
    use kafka_protocol::records::RecordBatchDecoder;

    use super::*;

    fn record(i: u8) -> rskafka::record::Record {
        rskafka::record::Record {
            key: Some(vec![b'k', i]),
            value: Some(vec![i; 10 + usize::from(i)]),
            headers: BTreeMap::from([("type".to_owned(), vec![b't', i])]),
            timestamp: Utc
                .timestamp_millis_opt(1_700_000_000_000 + i64::from(i))
                .unwrap(),
        }
    }

    #[test]
    fn a_batch_is_one_record_batch_with_every_record_in_order() {
        let records: Vec<_> = (0..5).map(record).collect();
        let mut encoded = encode_batch(records.clone()).unwrap();
        let infos = RecordBatchDecoder::decode_batch_info(&mut encoded.clone()).unwrap();
        // One batch, not one per record: the broker appends it at once.
        assert_eq!(infos.len(), 1, "{infos:?}");
        let set = RecordBatchDecoder::decode(&mut encoded).unwrap();
        assert_eq!(set.records.len(), 5);
        for (i, (got, sent)) in set.records.iter().zip(&records).enumerate() {
            assert_eq!(got.offset, i as i64);
            assert_eq!(got.producer_id, -1);
            assert_eq!(got.key.as_deref(), sent.key.as_deref());
            assert_eq!(got.value.as_deref(), sent.value.as_deref());
            assert_eq!(got.timestamp, sent.timestamp.timestamp_millis());
            let headers: Vec<(&str, &[u8])> = got
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_deref().unwrap()))
                .collect();
            assert_eq!(headers, [("type", sent.headers["type"].as_slice())]);
        }
        // No idempotence: the batch's base sequence is -1 (bytes 53..57 of
        // a v2 batch header).
        let bytes = encode_batch(records).unwrap();
        assert_eq!(&bytes[53..57], (-1i32).to_be_bytes());
    }

    #[test]
    fn a_request_carries_each_batch_under_its_topic_with_acks_all() {
        let job = |topic: &str, partition| Job {
            topic: topic.into(),
            partition,
            records: Bytes::from(vec![partition as u8]),
            done: oneshot::channel().0,
        };
        let jobs = [job("a", 0), job("b", 3), job("a", 2)];
        let req = request(&jobs, Duration::from_secs(10));
        assert_eq!(req.acks, -1);
        assert_eq!(req.timeout_ms, 8_000);
        let got: Vec<(&str, Vec<(i32, u8)>)> = req
            .topic_data
            .iter()
            .map(|t| {
                (
                    t.name.0.as_str(),
                    t.partition_data
                        .iter()
                        .map(|p| (p.index, p.records.as_ref().unwrap()[0]))
                        .collect(),
                )
            })
            .collect();
        assert_eq!(got, [("a", vec![(0, 0), (2, 2)]), ("b", vec![(3, 3)])]);
    }

    #[test]
    fn a_request_takes_the_oldest_batches_that_fit_and_a_large_one_alone() {
        let (alive, _tasks) = mpsc::channel(1);
        let sender = BrokerSender {
            pending: Mutex::default(),
            task: tokio::sync::Mutex::new(SenderTask {
                broker: 1,
                addr: "127.0.0.1:9".into(),
                transport: KafkaTransport::plaintext(),
                timeout: Duration::from_secs(1),
                linger: Linger::new(Duration::ZERO),
                metrics: None,
                conn: None,
            }),
            draining: std::sync::atomic::AtomicBool::new(false),
            alive,
        };
        let job = |partition: i32, len: usize| Job {
            topic: "t".into(),
            partition,
            records: Bytes::from(vec![0; len]),
            done: oneshot::channel().0,
        };
        let parts = |jobs: Vec<Job>| jobs.iter().map(|j| j.partition).collect::<Vec<_>>();
        assert!(sender.take(MAX_REQUEST_BYTES, true).is_empty());
        for (p, len) in [(0, 10), (1, 20), (2, 30), (3, 5)] {
            sender.add(job(p, len));
        }
        // Oldest first, while they fit together; the rest stay, in order.
        assert_eq!(parts(sender.take(30, false)), [0, 1]);
        assert_eq!(parts(sender.take(29, false)), Vec::<i32>::new());
        // A batch larger than the room goes alone when it is first.
        assert_eq!(parts(sender.take(29, true)), [2]);
        assert_eq!(parts(sender.take(MAX_REQUEST_BYTES, true)), [3]);
    }

    #[test]
    fn the_linger_stops_when_it_gathers_nothing_and_probes_to_come_back() {
        let mut l = Linger::new(Duration::from_millis(2));
        // Lingers that gather keep it on.
        for _ in 0..100 {
            assert!(l.until().is_some());
            l.gathered(3);
        }
        // PATIENCE lingers in a row gathering nothing turn it off...
        for _ in 0..Linger::PATIENCE {
            assert!(l.until().is_some());
            l.gathered(0);
        }
        // ...for PROBE requests, then one probe.
        for _ in 0..Linger::PROBE {
            assert!(l.until().is_none());
        }
        assert!(l.until().is_some());
        // The probe gathered nothing: off again, for another PROBE.
        l.gathered(0);
        assert!(l.until().is_none());
        for _ in 1..Linger::PROBE {
            assert!(l.until().is_none());
        }
        // This probe gathers: on again at once, for every request.
        assert!(l.until().is_some());
        l.gathered(1);
        for _ in 0..10 {
            assert!(l.until().is_some());
            l.gathered(1);
        }
        // A linger of 0 never waits.
        let mut zero = Linger::new(Duration::ZERO);
        assert!(zero.until().is_none());
    }

    #[test]
    fn only_refusals_of_the_record_itself_are_final() {
        use kafka_protocol::ResponseError as R;
        let refused = [
            R::CorruptMessage,
            R::MessageTooLarge,
            R::InvalidTopicException,
            R::RecordListTooLarge,
            R::TopicAuthorizationFailed,
            R::InvalidRecord,
        ];
        for code in 1..=120i16 {
            let Some(name) = R::try_from_code(code) else {
                continue;
            };
            let e = KafkaError::Produce {
                code,
                message: None,
            };
            assert_eq!(e.refuses_record(), refused.contains(&name), "{name:?}");
        }
    }
}
