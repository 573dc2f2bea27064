//! The consumer: a hand-rolled loop per partition on rskafka's
//! `fetch_records`.
//!
//! For each partition, forever:
//! 1. fetch from the current position (bounded in time);
//! 2. decode the records, in order; stop at the first one that cannot be
//!    decoded;
//! 3. apply the decoded prefix in **one transaction** that also moves the
//!    stored offset (`consumer_offsets`) past them — the effect and the
//!    acknowledgement commit or vanish together, so a crash at any point
//!    neither loses nor repeats an effect;
//! 4. on a transient failure (see [`crate::error`]), pause with backoff and
//!    retry the same records. The position never moves past a record that
//!    was not applied.
//!
//! A record that can never be decoded — or, with `CONSUMER_MAX_ATTEMPTS` set,
//! one that keeps failing — goes to the dead-letter topic ([`super::dlq`]);
//! only once the broker has acknowledged the dead letter does the stored
//! offset move past it. Nothing is skipped silently. Other partitions keep
//! going: each loop is its own task.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};

use deadpool_postgres::Pool;
use rskafka::client::{
    error::{Error as RsError, ProtocolError},
    partition::{OffsetAt, PartitionClient},
};
use rskafka::record::RecordAndOffset;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::{
    Kafka, KafkaError, bounded,
    dlq::{self, Failure},
    envelope::{Envelope, Event},
    producer::Producer,
};
use crate::{
    db::{DbError, offsets, store::PgStore},
    domain::{
        disputes::{ChargebackEvent, DisputeService},
        orders::{OrderService, PaymentEvent, SourcePosition},
    },
    error::{Backoff, ErrorClass, ProcessError},
    metrics::{Metrics, PartitionLabels, RecordLabels},
};

/// Settings for one topic's consumer.
#[derive(Clone, Debug)]
pub struct ConsumerConfig {
    pub group: String,
    pub topic: String,
    pub max_batch: usize,
    pub fetch_max_bytes: i32,
    pub fetch_max_wait: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Attempts after which a transient failure of one record is treated as
    /// permanent; `None` retries without limit.
    pub max_attempts: Option<u32>,
}

impl ConsumerConfig {
    /// The service's settings for consuming `topic` as `group`.
    pub fn from_config(cfg: &crate::config::Config, group: &str, topic: &str) -> Self {
        Self {
            group: group.to_owned(),
            topic: topic.to_owned(),
            max_batch: cfg.consumer_max_batch,
            fetch_max_bytes: cfg.fetch_max_bytes,
            fetch_max_wait: cfg.fetch_max_wait,
            backoff_min: cfg.retry_backoff_min,
            backoff_max: cfg.retry_backoff_max,
            max_attempts: cfg.consumer_max_attempts,
        }
    }
}

/// Consumes every partition of `cfg.topic` until `shutdown` is cancelled.
/// Each partition stops after finishing its current transaction.
pub async fn run(
    kafka: Kafka,
    pool: Pool,
    cfg: ConsumerConfig,
    dead_letters: DeadLetters,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let cfg = Arc::new(cfg);
    let mut backoff = Backoff::new(cfg.backoff_min, cfg.backoff_max);
    let partitions = loop {
        match kafka.partitions(&cfg.topic).await {
            Ok(p) => break p,
            Err(e) => {
                warn!(topic = %cfg.topic, error = %e, "cannot list partitions; retrying");
                if sleep_or_shutdown(backoff.next_delay(), &shutdown).await {
                    return;
                }
            }
        }
    };
    info!(topic = %cfg.topic, group = %cfg.group, partitions = partitions.len(), "consuming");
    metrics.consumer_started(&cfg.topic);
    let mut tasks = JoinSet::new();
    for partition in partitions {
        let p = PartitionConsumer {
            kafka: kafka.clone(),
            pool: pool.clone(),
            cfg: Arc::clone(&cfg),
            dead_letters: dead_letters.clone(),
            metrics: metrics.clone(),
            partition,
            shutdown: shutdown.clone(),
        };
        tasks.spawn(p.run());
    }
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r {
            error!(topic = %cfg.topic, error = %e, "partition consumer task failed");
        }
    }
}

/// Sleeps, or returns `true` early if shutdown was requested.
async fn sleep_or_shutdown(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

struct PartitionConsumer {
    kafka: Kafka,
    pool: Pool,
    cfg: Arc<ConsumerConfig>,
    dead_letters: DeadLetters,
    metrics: Metrics,
    partition: i32,
    shutdown: CancellationToken,
}

/// Where the dead letters go.
#[derive(Clone, Debug)]
pub struct DeadLetters {
    pub producer: Producer,
    pub topic: String,
}

/// The record (by offset) that keeps failing, and since when.
#[derive(Clone, Copy, Debug)]
struct FailureState {
    offset: i64,
    attempts: u32,
    first_failure: DateTime<Utc>,
}

/// Where a partition stands: the next offset to fetch, and what the database
/// holds (the fence for the next commit).
#[derive(Clone, Copy, Debug)]
struct Position {
    next: i64,
    stored: Option<i64>,
}

impl Position {
    /// The database now holds `next`.
    fn committed(&mut self, next: i64) {
        *self = Self {
            next,
            stored: Some(next),
        };
    }

    /// Someone else moved the stored offset (a fenced write): trust the
    /// database.
    fn resume_from(&mut self, found: Option<i64>) {
        self.stored = found;
        if let Some(f) = found {
            self.next = f;
        }
    }
}

impl PartitionConsumer {
    async fn run(self) {
        let mut backoff = Backoff::new(self.cfg.backoff_min, self.cfg.backoff_max);
        let topic = self.cfg.topic.clone();
        let partition = self.partition;
        // Connect and find the starting position, retrying until both work.
        let (client, mut pos) = loop {
            match self.start().await {
                Ok(v) => break v,
                Err(e) => {
                    warn!(%topic, partition, error = %e, "cannot start partition consumer; retrying");
                    if sleep_or_shutdown(backoff.next_delay(), &self.shutdown).await {
                        return;
                    }
                }
            }
        };
        backoff.reset();
        info!(%topic, partition, offset = pos.next, "partition consumer started");
        self.metrics.partition_started(&topic, partition, pos.next);
        let max_wait_ms = i32::try_from(self.cfg.fetch_max_wait.as_millis()).unwrap_or(i32::MAX);
        let mut failure: Option<FailureState> = None;
        let fetch_deadline = self.kafka.request_timeout() + self.cfg.fetch_max_wait;

        while !self.shutdown.is_cancelled() {
            // Fetching changes nothing, so it may be abandoned at shutdown.
            let fetched = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                r = bounded("fetching", fetch_deadline,
                        client.fetch_records(pos.next, 1..self.cfg.fetch_max_bytes, max_wait_ms)) => r,
            };
            let (records, high_watermark) = match fetched {
                Ok(v) => v,
                Err(KafkaError::Client {
                    source:
                        RsError::ServerError {
                            protocol_error: ProtocolError::OffsetOutOfRange,
                            ..
                        },
                    ..
                }) => {
                    match self.reset_out_of_range(&client, pos.next).await {
                        Ok(next) => pos.next = next,
                        Err(e) => {
                            warn!(%topic, partition, error = %e, "cannot read offsets; retrying");
                            if sleep_or_shutdown(backoff.next_delay(), &self.shutdown).await {
                                break;
                            }
                        }
                    }
                    continue;
                }
                Err(e) => {
                    warn!(%topic, partition, offset = pos.next, error = %e, "fetch failed; retrying");
                    if sleep_or_shutdown(backoff.next_delay(), &self.shutdown).await {
                        break;
                    }
                    continue;
                }
            };
            let outcome = self.process(&records, &mut pos, &mut failure).await;
            let labels = self.partition_labels();
            self.metrics
                .next_offset
                .get_or_create(&labels)
                .set(pos.next);
            self.metrics
                .lag
                .get_or_create(&labels)
                .set((high_watermark - pos.next).max(0));
            if outcome.is_err() && sleep_or_shutdown(backoff.next_delay(), &self.shutdown).await {
                break;
            }
            if failure.is_none() {
                backoff.reset();
            }
        }
        info!(%topic, partition, offset = pos.next, "partition consumer stopped");
    }

    /// Applies fetched records in order: decodable runs in transactions,
    /// undecodable records to the dead-letter topic. Returns `Err(())` after
    /// a failure (already logged); the caller pauses, then re-fetches from
    /// `pos`, which never moved past an unapplied record.
    async fn process(
        &self,
        records: &[RecordAndOffset],
        pos: &mut Position,
        failure: &mut Option<FailureState>,
    ) -> Result<(), ()> {
        let topic = &self.cfg.topic;
        let partition = self.partition;
        let mut i = records.partition_point(|r| r.offset < pos.next);
        // Shutdown is honoured between transactions: the current one
        // finishes, the rest of the fetched records wait for next time.
        while i < records.len() && !self.shutdown.is_cancelled() {
            // After a batch failed, retry one record at a time: the good
            // records before the failing one commit, and attempts are
            // counted against the record that actually fails.
            let retrying = failure
                .as_ref()
                .is_some_and(|f| f.offset == records[i].offset);
            let limit = if retrying { 1 } else { self.cfg.max_batch };
            let mut chunk = Vec::new();
            let mut poison = None;
            for r in &records[i..] {
                if chunk.len() == limit {
                    break;
                }
                let source = SourcePosition {
                    topic: topic.clone(),
                    partition,
                    offset: r.offset,
                };
                match Envelope::decode(r.record.value.as_deref()).and_then(|e| e.into_event(source))
                {
                    Ok(ev) => chunk.push(ev),
                    Err(source) => {
                        poison = Some(ProcessError::Decode {
                            offset: r.offset,
                            source,
                        });
                        break;
                    }
                }
            }

            if chunk.is_empty() {
                // records[i] itself cannot be decoded: dead-letter it.
                let e = poison.expect("an empty chunk means the first record failed to decode");
                debug_assert_eq!(e.class(), ErrorClass::Permanent);
                let f = Failure {
                    source: SourcePosition {
                        topic: topic.clone(),
                        partition,
                        offset: records[i].offset,
                    },
                    class: e.class(),
                    message: e.to_string(),
                    attempts: 1,
                    first_failure: Utc::now(),
                };
                self.dead_letter_and_skip(&records[i], f, pos).await?;
                *failure = None;
                i += 1;
                continue;
            }

            let n = chunk.len();
            let first = records[i].offset;
            let next = records[i + n - 1].offset + 1;
            match apply(
                &self.pool,
                &self.cfg.group,
                topic,
                partition,
                pos.stored,
                next,
                chunk,
            )
            .await
            {
                Ok(stats) => {
                    self.count("applied", stats.stored);
                    self.count("duplicate", stats.duplicates);
                    debug!(%topic, partition, offset = first, next, stored = stats.stored, duplicates = stats.duplicates, "batch committed");
                    pos.committed(next);
                    *failure = None;
                    i += n;
                }
                Err(ProcessError::Fenced { found, .. }) => {
                    warn!(%topic, partition, ?found, "stored offset moved under us; resuming from it");
                    pos.resume_from(found);
                    return Err(());
                }
                Err(e) => {
                    self.metrics
                        .retries
                        .get_or_create(&RecordLabels {
                            topic: topic.clone(),
                            outcome: match e.class() {
                                ErrorClass::Transient => "transient",
                                ErrorClass::Permanent => "permanent",
                            },
                        })
                        .inc();
                    let f = match failure.take() {
                        Some(mut f) if f.offset == first => {
                            f.attempts += 1;
                            f
                        }
                        _ => FailureState {
                            offset: first,
                            attempts: 1,
                            first_failure: Utc::now(),
                        },
                    };
                    warn!(%topic, partition, offset = first, records = n, attempts = f.attempts,
                          error = %e, class = ?e.class(), "applying records failed; will retry them");
                    if n == 1 && self.over_limit(f.attempts) {
                        // Retries ran out for this one record.
                        let dl = Failure {
                            source: SourcePosition {
                                topic: topic.clone(),
                                partition,
                                offset: first,
                            },
                            class: ErrorClass::Transient,
                            message: e.to_string(),
                            attempts: f.attempts,
                            first_failure: f.first_failure,
                        };
                        *failure = Some(f);
                        self.dead_letter_and_skip(&records[i], dl, pos).await?;
                        *failure = None;
                        i += 1;
                        continue;
                    }
                    *failure = Some(f);
                    return Err(());
                }
            }
        }
        Ok(())
    }

    fn count(&self, outcome: &'static str, n: usize) {
        if n > 0 {
            self.metrics
                .records
                .get_or_create(&RecordLabels {
                    topic: self.cfg.topic.clone(),
                    outcome,
                })
                .inc_by(n as u64);
        }
    }

    fn partition_labels(&self) -> PartitionLabels {
        PartitionLabels {
            topic: self.cfg.topic.clone(),
            partition: self.partition,
        }
    }

    fn over_limit(&self, attempts: u32) -> bool {
        self.cfg.max_attempts.is_some_and(|m| attempts >= m)
    }

    /// Publishes the dead letter, waits for the broker's acknowledgement,
    /// then moves the stored offset past the record. A crash in between
    /// repeats the dead letter on restart; it never loses it.
    async fn dead_letter_and_skip(
        &self,
        record: &RecordAndOffset,
        f: Failure,
        pos: &mut Position,
    ) -> Result<(), ()> {
        let topic = &self.cfg.topic;
        let partition = self.partition;
        let offset = record.offset;
        let event_id = record
            .record
            .headers
            .get(super::envelope::HEADER_EVENT_ID)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        let order_id = record
            .record
            .key
            .as_deref()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default();
        error!(%topic, partition, offset, %event_id, %order_id, class = ?f.class, attempts = f.attempts,
               error = %f.message, dlq = %self.dead_letters.topic,
               "record cannot be applied; sending it to the dead-letter topic");
        let letter = dlq::dead_letter(&record.record, &f);
        if let Err(e) = self
            .dead_letters
            .producer
            .publish(&self.dead_letters.topic, letter)
            .await
        {
            warn!(%topic, partition, offset, error = %e, "dead letter not acknowledged; partition stays on the record");
            return Err(());
        }
        match apply(
            &self.pool,
            &self.cfg.group,
            topic,
            partition,
            pos.stored,
            offset + 1,
            Vec::new(),
        )
        .await
        {
            Ok(_) => {
                pos.committed(offset + 1);
                self.count("dead_lettered", 1);
                Ok(())
            }
            Err(ProcessError::Fenced { found, .. }) => {
                warn!(%topic, partition, ?found, "stored offset moved under us; resuming from it");
                pos.resume_from(found);
                Err(())
            }
            Err(e) => {
                warn!(%topic, partition, offset, error = %e, "dead letter sent but offset not stored; will repeat it");
                Err(())
            }
        }
    }

    async fn start(&self) -> Result<(PartitionClient, Position), ProcessError> {
        let client = self
            .kafka
            .partition_client(&self.cfg.topic, self.partition)
            .await?;
        let conn = self.pool.get().await.map_err(DbError::from)?;
        let stored =
            offsets::load(&**conn, &self.cfg.group, &self.cfg.topic, self.partition).await?;
        let next = match stored {
            Some(o) => o,
            None => {
                bounded(
                    "reading the earliest offset",
                    self.kafka.request_timeout(),
                    client.get_offset(OffsetAt::Earliest),
                )
                .await?
            }
        };
        Ok((client, Position { next, stored }))
    }

    /// The position fell outside the log. Below the log start, records were
    /// removed by retention before we applied them: that is data loss
    /// upstream of us, so it is logged as an error, and consumption resumes at
    /// the earliest record still there. Above the end (the topic was
    /// recreated), resume at the start too; events are idempotent.
    async fn reset_out_of_range(
        &self,
        client: &PartitionClient,
        at: i64,
    ) -> Result<i64, KafkaError> {
        let t = self.kafka.request_timeout();
        let earliest = bounded(
            "reading the earliest offset",
            t,
            client.get_offset(OffsetAt::Earliest),
        )
        .await?;
        let latest = bounded(
            "reading the latest offset",
            t,
            client.get_offset(OffsetAt::Latest),
        )
        .await?;
        error!(topic = %self.cfg.topic, partition = self.partition, offset = at, earliest, latest,
               "stored offset is outside the log; resuming from the earliest record");
        Ok(earliest)
    }
}

/// Applies `chunk` (in order) and moves the stored offset from `expected` to
/// `next`, in one transaction. With an empty chunk it only moves the offset:
/// that is how a dead-lettered record is stepped over.
async fn apply(
    pool: &Pool,
    group: &str,
    topic: &str,
    partition: i32,
    expected: Option<i64>,
    next: i64,
    chunk: Vec<Event>,
) -> Result<crate::domain::orders::Outcome, ProcessError> {
    let mut payments: Vec<PaymentEvent> = Vec::new();
    let mut chargebacks: Vec<ChargebackEvent> = Vec::new();
    for ev in chunk {
        match ev {
            Event::Payment(p) => payments.push(p),
            Event::Chargeback(c) => chargebacks.push(c),
        }
    }
    let mut conn = pool.get().await.map_err(DbError::from)?;
    let tx = conn.transaction().await.map_err(DbError::from)?;
    let mut store = PgStore::new(&tx);
    let a = OrderService
        .process_payment_webhooks(&mut store, &payments)
        .await?;
    let b = DisputeService
        .process_chargebacks(&mut store, &chargebacks)
        .await?;
    match offsets::advance(&*tx, group, topic, partition, expected, next).await? {
        Ok(()) => {}
        Err(found) => {
            // Dropping `tx` rolls everything back.
            return Err(ProcessError::Fenced { expected, found });
        }
    }
    tx.commit().await.map_err(DbError::from)?;
    for p in &payments {
        debug!(event_id = %p.event_id, order_id = %p.webhook.order_id, topic = %p.source.topic, partition = p.source.partition, offset = p.source.offset, "payment applied");
    }
    for c in &chargebacks {
        debug!(event_id = %c.event_id, order_id = %c.webhook.order_id, topic = %c.source.topic, partition = c.source.partition, offset = c.source.offset, "chargeback applied");
    }
    Ok(crate::domain::orders::Outcome {
        stored: a.stored + b.stored,
        duplicates: a.duplicates + b.duplicates,
        changed: a.changed + b.changed,
    })
}
