//! The consumer: a hand-rolled loop per partition on rskafka's
//! `fetch_records`.
//!
//! For each partition, forever:
//! 1. fetch from the current position (bounded in time);
//! 2. decode the records, in order; a record that cannot be decoded is
//!    dead-lettered where it stands;
//! 3. apply runs of decoded records in **one transaction** each, which first
//!    moves the stored offset (`consumer_offsets`, fenced: it must hold the
//!    position this loop expects, and the row stays locked until commit),
//!    then writes the effects. Effect and acknowledgement commit or vanish
//!    together, so a crash at any point neither loses nor repeats an effect,
//!    and a consumer whose position is stale learns it before writing
//!    anything.
//!
//! # When a transaction fails
//!
//! The failing records are **isolated by halving**: the first half of the
//! failed run is tried alone; if it commits, the failure is in the second
//! half, which is halved in turn; if it fails, the first half is. Good
//! records on either side commit as they are found, and a bad record among
//! `n` is isolated in about `2·log2(n)` transactions. Only a record that
//! failed *on its own* is blamed:
//! - a **permanent** failure (see [`crate::error`]: the record's data) sends
//!   it to the dead-letter topic, with the error in the dead-letter headers,
//!   and the partition moves on at once;
//! - a **transient** failure (the database or broker, not the record)
//!   pauses the partition with backoff; its offset does not move. With
//!   `CONSUMER_MAX_ATTEMPTS` set, a record that failed that many times on its
//!   own is dead-lettered too.
//!
//! Only once the broker has acknowledged a dead letter does the stored offset
//! move past its record. Nothing is skipped silently.
//!
//! # When the log itself is the problem
//!
//! - **Offset out of range** (retention deleted records before they were
//!   applied, or the topic was re-created): the partition **stops**, logs the
//!   lost range, and reports itself stopped ([`super::health`]: metrics and
//!   `/readyz`). It never jumps on by itself. `payhook offsets reset` moves
//!   it deliberately; the stopped loop polls the stored offset and resumes
//!   from whatever the operator set.
//! - **A batch payhook cannot read** (compressed with lz4 or zstd, which the
//!   C-free rskafka build does not decode, or corrupt): the partition fetches
//!   one batch at a time up to it, applying everything before it, then stops
//!   the same way, naming the codec and the offset.
//!
//! Other partitions keep going: each loop is its own task.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};

use deadpool_postgres::{Pool, Transaction};
use rskafka::client::{
    error::{Error as RsError, ProtocolError, RequestError},
    partition::{OffsetAt, PartitionClient},
};
use rskafka::record::RecordAndOffset;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};
use uuid::Uuid;

use super::{
    classify::{Backoff, ErrorClass, ProcessError},
    committer::Committers,
    dlq::{self, Failure},
    health::ConsumerHealth,
};
use crate::{
    config::{ConsumerSettings, DatabaseSettings, KafkaSettings},
    db::{DbError, leases::Lease, offsets, store::PgStore},
    domain::{
        disputes::{ChargebackEvent, DisputeService},
        orders::{OrderService, Outcome, PaymentEvent, SourcePosition},
    },
    kafka::{
        Kafka, KafkaError, bounded,
        envelope::{Envelope, Event},
        producer::Producer,
    },
    metrics::{Metrics, RecordLabels},
};

/// How often a stopped partition looks for an operator's offset reset.
const STOPPED_POLL: Duration = Duration::from_secs(2);

/// Consecutive failed fetches after which the partition's connection is
/// rebuilt rather than reused.
const FETCH_FAILURES_BEFORE_RECONNECT: u32 = 3;

/// Settings for one topic's consumer.
#[derive(Clone, Debug)]
pub struct ConsumerConfig {
    pub group: String,
    pub topic: String,
    pub max_batch: usize,
    pub fetch_max_bytes: i32,
    pub fetch_max_wait: Duration,
    /// A busy partition's fetch waits up to `linger` for `fetch_min_bytes`
    /// (`CONSUMER_LINGER`, `KAFKA_FETCH_MIN_BYTES`).
    pub linger: Duration,
    pub fetch_min_bytes: i32,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Attempts after which a transient failure of one record is treated as
    /// permanent; `None` retries without limit.
    pub max_attempts: Option<u32>,
    /// How far after its acceptance an event's `occurred_at` may be
    /// (`OCCURRED_AT_MAX_FUTURE`, the edge's bound).
    pub occurred_at_max_future: Duration,
    /// Longest a transaction may take before the database counts as hung
    /// (`DATABASE_STATEMENT_TIMEOUT` + 1 s; a dead letter's transaction also
    /// gets `KAFKA_PUBLISH_TIMEOUT` for the broker's acknowledgement).
    pub db_deadline: Duration,
    pub publish_timeout: Duration,
}

impl ConsumerConfig {
    /// The service's settings for consuming `topic` as `group`: the
    /// consumer's own section, the fetch and publish settings of the Kafka
    /// section, the database's deadline, and the edge's `occurred_at` bound.
    pub fn new(
        group: &str,
        topic: &str,
        consumer: &ConsumerSettings,
        kafka: &KafkaSettings,
        db: &DatabaseSettings,
        occurred_at_max_future: Duration,
    ) -> Self {
        Self {
            group: group.to_owned(),
            topic: topic.to_owned(),
            max_batch: consumer.max_batch,
            fetch_max_bytes: kafka.fetch_max_bytes,
            fetch_max_wait: kafka.fetch_max_wait,
            linger: consumer.linger,
            fetch_min_bytes: kafka.fetch_min_bytes,
            backoff_min: consumer.retry_backoff_min,
            backoff_max: consumer.retry_backoff_max,
            max_attempts: consumer.max_attempts,
            occurred_at_max_future,
            db_deadline: crate::db::Session::from_config(db).client_deadline(),
            publish_timeout: kafka.publish_timeout,
        }
    }
}

/// What a consumer shares with the rest of the service.
#[derive(Clone, Debug)]
pub struct Shared {
    /// This process, as the lease tables know it.
    pub member: Uuid,
    pub kafka: Kafka,
    pub pool: Pool,
    pub dead_letters: DeadLetters,
    pub metrics: Metrics,
    pub health: ConsumerHealth,
    /// Where runs of events are committed, combined with other partitions'
    /// ([`super::committer`]); [`Committers::none`] commits each alone.
    pub committers: Committers,
}

/// Consumes one partition, held under `lease`, until `stop` is cancelled
/// (it then finishes its current transaction) or the lease turns out to be
/// lost (a commit is fenced). [`super::assignment`] decides which partitions
/// this process consumes and runs one of these for each.
pub async fn consume_partition(
    shared: Shared,
    cfg: Arc<ConsumerConfig>,
    lease: Lease,
    stop: CancellationToken,
) {
    PartitionConsumer {
        shared,
        cfg,
        lease,
        shutdown: stop,
    }
    .run()
    .await
}

/// Sleeps, or returns `true` early if shutdown was requested.
async fn sleep_or_shutdown(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

struct PartitionConsumer {
    shared: Shared,
    cfg: Arc<ConsumerConfig>,
    /// The lease this loop consumes under; every commit presents its epoch.
    lease: Lease,
    shutdown: CancellationToken,
}

/// Where the dead letters go.
#[derive(Clone, Debug)]
pub struct DeadLetters {
    pub producer: Producer,
    pub topic: String,
}

/// The one record (by offset) that failed on its own, and since when.
#[derive(Clone, Copy, Debug)]
struct FailureState {
    offset: i64,
    attempts: u32,
    first_failure: DateTime<Utc>,
}

/// A run of offsets `[from, to)` known to hold a record that fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Suspect {
    from: i64,
    to: i64,
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

    /// Someone else moved the stored offset (a fenced write, an operator's
    /// reset): trust the database.
    fn resume_from(&mut self, found: Option<i64>) {
        self.stored = found;
        if let Some(f) = found {
            self.next = f;
        }
    }
}

/// Why a partition waits for an operator.
#[derive(Clone, Debug)]
enum Stop {
    /// The position is outside the log.
    OutOfRange,
    /// A batch at the position cannot be read.
    Unreadable,
}

/// How a run of records went.
enum Applied {
    /// Committed; the position moved.
    Committed,
    /// The stored offset was not where we thought (an operator moved it);
    /// resume from what it is.
    Moved(Option<i64>),
    /// The lease is no longer ours: stop consuming this partition.
    LeaseLost,
    Failed(ProcessError),
}

/// What the partition loop does after processing a fetch.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    /// Everything fetched was handled; fetch more.
    Go,
    /// A transient failure (logged): back off, then re-fetch from the
    /// position, which never moved past an unapplied record.
    Pause,
    /// The lease was lost: end the loop; the partition is someone else's.
    Lost,
}

/// The error, if `e` says the fetched data could not be decoded (a codec
/// this build lacks, or a corrupt batch) rather than that the broker or the
/// network failed.
fn unreadable(e: &KafkaError) -> Option<String> {
    match e {
        KafkaError::Client {
            source:
                RsError::Request(
                    inner @ (RequestError::ReadError(_) | RequestError::ReadVersionedError(_)),
                ),
            ..
        } => Some(inner.to_string()),
        _ => None,
    }
}

fn is_out_of_range(e: &KafkaError) -> bool {
    matches!(
        e,
        KafkaError::Client {
            source: RsError::ServerError {
                protocol_error: ProtocolError::OffsetOutOfRange,
                ..
            },
            ..
        }
    )
}

impl PartitionConsumer {
    async fn run(self) {
        let mut backoff = Backoff::new(self.cfg.backoff_min, self.cfg.backoff_max);
        let topic = self.cfg.topic.clone();
        let partition = self.lease.partition;
        let health = self.shared.health.clone();
        // Connect and find the starting position, retrying until both work.
        let (mut client, mut pos) = loop {
            match self.start().await {
                Ok(v) => break v,
                Err(e) => {
                    warn!(%topic, partition, error = %e, "cannot start partition consumer; retrying");
                    health.failing(&topic, partition, e.to_string());
                    if sleep_or_shutdown(backoff.next_delay(), &self.shutdown).await {
                        return;
                    }
                }
            }
        };
        backoff.reset();
        health.started(&topic, partition, pos.next);
        info!(%topic, partition, offset = pos.next, "partition consumer started");
        self.shared.metrics.consumer_started(&topic);
        let ms = |d: Duration| i32::try_from(d.as_millis()).unwrap_or(i32::MAX);
        let (max_wait_ms, linger_ms) = (ms(self.cfg.fetch_max_wait), ms(self.cfg.linger));
        let fetch_deadline =
            self.shared.kafka.request_timeout() + self.cfg.fetch_max_wait.max(self.cfg.linger);
        // Whether the last fetch brought records: then the next one lingers
        // (see `fetch_shape`).
        let mut busy = false;
        let mut failure: Option<FailureState> = None;
        let mut suspect: Option<Suspect> = None;
        let mut stopped: Option<Stop> = None;
        // After a fetch could not be read: fetch one batch at a time, so
        // everything before the unreadable batch is still applied.
        let mut one_batch = false;
        let mut fetch_failures = 0u32;

        while !self.shutdown.is_cancelled() {
            if let Some(stop) = stopped.clone() {
                if sleep_or_shutdown(STOPPED_POLL, &self.shutdown).await {
                    break;
                }
                match self.stored_offset().await {
                    Ok(found) if found != pos.stored => {
                        info!(%topic, partition, from = pos.next, to = ?found,
                              "stored offset was moved (payhook offsets reset); resuming");
                        pos.resume_from(found);
                        stopped = None;
                        one_batch = false;
                        suspect = None;
                        failure = None;
                        health.resumed(&topic, partition, pos.next);
                    }
                    Ok(_) => {}
                    Err(e) => warn!(%topic, partition, error = %e, "cannot read the stored offset"),
                }
                if matches!(stop, Stop::OutOfRange) && stopped.is_some() {
                    // A leader change can make an offset briefly look out of
                    // range; if it is back, go on without anyone's help.
                    let probe = bounded(
                        "fetching",
                        fetch_deadline,
                        client.fetch_records(pos.next, 1..2, 0),
                    )
                    .await;
                    if probe.is_ok() {
                        info!(%topic, partition, offset = pos.next, "offset is in range again; resuming");
                        stopped = None;
                        health.resumed(&topic, partition, pos.next);
                    }
                }
                continue;
            }

            let (bytes, wait_ms) = fetch_shape(
                one_batch,
                busy && linger_ms > 0,
                self.cfg.fetch_min_bytes,
                self.cfg.fetch_max_bytes,
                (max_wait_ms, linger_ms),
            );
            // Fetching changes nothing, so it may be abandoned at shutdown.
            let fetched = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                r = bounded("fetching", fetch_deadline,
                        client.fetch_records(pos.next, bytes, wait_ms)) => r,
            };
            let (records, high_watermark) = match fetched {
                Ok(v) => v,
                Err(e) if is_out_of_range(&e) => {
                    let reason = self.out_of_range(&client, pos).await;
                    error!(%topic, partition, offset = pos.next, reason = %reason,
                           "partition stopped: its offset is outside the log");
                    health.stopped(&topic, partition, reason);
                    stopped = Some(Stop::OutOfRange);
                    continue;
                }
                Err(e) if unreadable(&e).is_some() => {
                    let why = unreadable(&e).unwrap_or_default();
                    if !one_batch {
                        // Apply what comes before the unreadable batch first.
                        warn!(%topic, partition, offset = pos.next, error = %why,
                              "a fetched batch cannot be read; fetching one batch at a time");
                        one_batch = true;
                        continue;
                    }
                    let reason = format!(
                        "the record batch at offset {} cannot be read: {why}. payhook's \
                         default (C-free) build reads uncompressed, gzip and snappy batches \
                         only; see README, 'Compression'",
                        pos.next
                    );
                    error!(%topic, partition, offset = pos.next, error = %why,
                           "partition stopped: a record batch cannot be read");
                    health.stopped(&topic, partition, reason);
                    stopped = Some(Stop::Unreadable);
                    continue;
                }
                Err(e) => {
                    warn!(%topic, partition, offset = pos.next, error = %e, "fetch failed; retrying");
                    health.failing(&topic, partition, e.to_string());
                    fetch_failures += 1;
                    if fetch_failures >= FETCH_FAILURES_BEFORE_RECONNECT {
                        // Do not trust a connection that keeps failing: the
                        // leader may have moved, or the socket be half-open.
                        let fresh = async {
                            let kafka = self.shared.kafka.reconnect().await?;
                            kafka
                                .partition_client(&self.cfg.topic, self.lease.partition)
                                .await
                        };
                        match fresh.await {
                            Ok(c) => {
                                info!(%topic, partition, "reconnected to the partition leader");
                                client = c;
                                fetch_failures = 0;
                            }
                            Err(e) => warn!(%topic, partition, error = %e, "cannot reconnect yet"),
                        }
                    }
                    if sleep_or_shutdown(backoff.next_delay(), &self.shutdown).await {
                        break;
                    }
                    continue;
                }
            };
            fetch_failures = 0;
            busy = !records.is_empty() && !one_batch;
            one_batch = false;
            health.fetched(&topic, partition, high_watermark);
            match self
                .process(&records, &mut pos, &mut failure, &mut suspect)
                .await
            {
                Flow::Go => {
                    if failure.is_none() {
                        backoff.reset();
                    }
                }
                Flow::Pause => {
                    if sleep_or_shutdown(backoff.next_delay(), &self.shutdown).await {
                        break;
                    }
                }
                Flow::Lost => {
                    warn!(%topic, partition, epoch = self.lease.epoch,
                          "lease lost (taken over or expired); stopping this partition");
                    break;
                }
            }
        }
        info!(%topic, partition, offset = pos.next, "partition consumer stopped");
    }

    /// Applies fetched records in order: decodable runs in transactions,
    /// undecodable records to the dead-letter topic, failing runs isolated
    /// by halving (see the module doc). Returns `Err(())` when the partition
    /// must pause (already logged); the caller backs off, then re-fetches
    /// from `pos`, which never moved past an unapplied record.
    async fn process(
        &self,
        records: &[RecordAndOffset],
        pos: &mut Position,
        failure: &mut Option<FailureState>,
        suspect: &mut Option<Suspect>,
    ) -> Flow {
        let topic = &self.cfg.topic;
        let partition = self.lease.partition;
        let mut i = records.partition_point(|r| r.offset < pos.next);
        // Shutdown is honoured between transactions: the current one
        // finishes, the rest of the fetched records wait for next time.
        while i < records.len() && !self.shutdown.is_cancelled() {
            let limit = chunk_limit(&records[i..], *suspect, self.cfg.max_batch);
            let (chunk, poison) = self.decode(&records[i..], limit);

            if chunk.is_empty() {
                // records[i] itself cannot be decoded: dead-letter it.
                let e = poison.expect("an empty chunk means the first record failed to decode");
                let flow = self.give_up(&records[i], &e, 1, Utc::now(), pos).await;
                if flow != Flow::Go {
                    return flow;
                }
                *failure = None;
                i += 1;
                continue;
            }

            let n = chunk.len();
            let first = records[i].offset;
            let next = records[i + n - 1].offset + 1;
            match self.apply(pos.stored, next, chunk, suspect.is_none()).await {
                Applied::Committed => {
                    pos.committed(next);
                    self.shared.health.advanced(topic, partition, next);
                    *failure = None;
                    // The failure, if any, is after this run.
                    *suspect = suspect.and_then(|s| {
                        let rest = Suspect {
                            from: next,
                            to: s.to,
                        };
                        (rest.from < rest.to).then_some(rest)
                    });
                    i += n;
                }
                Applied::Moved(found) => {
                    pos.resume_from(found);
                    *suspect = None;
                    *failure = None;
                    return Flow::Pause;
                }
                Applied::LeaseLost => return Flow::Lost,
                Applied::Failed(e) => {
                    let class = e.class();
                    self.shared
                        .metrics
                        .retries
                        .get_or_create(&RecordLabels {
                            topic: topic.clone(),
                            outcome: class_name(class),
                        })
                        .inc();
                    if n > 1 {
                        // Somewhere in this run: try its first half next.
                        warn!(%topic, partition, offset = first, records = n, error = %e, class = class_name(class),
                              "applying records failed; isolating the failing record");
                        *suspect = Some(Suspect {
                            from: first,
                            to: next,
                        });
                        self.shared.health.failing(topic, partition, e.to_string());
                        match class {
                            // The data is at fault: halve at once.
                            ErrorClass::Permanent => continue,
                            ErrorClass::Transient => return Flow::Pause,
                        }
                    }
                    // This one record failed on its own.
                    *suspect = None;
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
                    if class == ErrorClass::Permanent || self.over_limit(f.attempts) {
                        let flow = self
                            .give_up(&records[i], &e, f.attempts, f.first_failure, pos)
                            .await;
                        if flow != Flow::Go {
                            return flow;
                        }
                        i += 1;
                        continue;
                    }
                    warn!(%topic, partition, offset = first, attempts = f.attempts, error = %e,
                          class = class_name(class), "applying a record failed; will retry it");
                    self.shared.health.failing(topic, partition, e.to_string());
                    *failure = Some(f);
                    return Flow::Pause;
                }
            }
        }
        Flow::Go
    }

    /// Decodes up to `limit` records from the start of `records`, stopping
    /// before the first one that cannot be decoded (returned as the error).
    fn decode(
        &self,
        records: &[RecordAndOffset],
        limit: usize,
    ) -> (Vec<Event>, Option<ProcessError>) {
        let mut chunk = Vec::with_capacity(limit.min(records.len()));
        for r in records.iter().take(limit) {
            let source = SourcePosition {
                topic: self.cfg.topic.clone(),
                partition: self.lease.partition,
                offset: r.offset,
            };
            let decoded = Envelope::decode(r.record.value.as_deref())
                .and_then(|e| e.into_event_within(source, self.cfg.occurred_at_max_future));
            match decoded {
                Ok(ev) => chunk.push(ev),
                Err(source) => {
                    return (
                        chunk,
                        Some(ProcessError::Decode {
                            offset: r.offset,
                            source,
                        }),
                    );
                }
            }
        }
        (chunk, None)
    }

    fn count(&self, outcome: &'static str, n: usize) {
        if n > 0 {
            self.shared
                .metrics
                .records
                .get_or_create(&RecordLabels {
                    topic: self.cfg.topic.clone(),
                    outcome,
                })
                .inc_by(n as u64);
        }
    }

    fn over_limit(&self, attempts: u32) -> bool {
        self.cfg.max_attempts.is_some_and(|m| attempts >= m)
    }

    /// Dead-letters a record that can never be applied (or whose retries ran
    /// out) and steps over it.
    async fn give_up(
        &self,
        record: &RecordAndOffset,
        e: &ProcessError,
        attempts: u32,
        first_failure: DateTime<Utc>,
        pos: &mut Position,
    ) -> Flow {
        let f = Failure {
            source: SourcePosition {
                topic: self.cfg.topic.clone(),
                partition: self.lease.partition,
                offset: record.offset,
            },
            class: e.class(),
            message: e.to_string(),
            attempts,
            first_failure,
        };
        self.dead_letter_and_skip(record, f, pos).await
    }

    /// Publishes the dead letter and moves the stored offset past the
    /// record, in that order, inside one fenced transaction: the lease is
    /// checked and locked first, so only the partition's owner ever writes a
    /// dead letter, and the offset moves only once the broker has
    /// acknowledged it. A crash in between repeats the dead letter on
    /// restart; it never loses it.
    async fn dead_letter_and_skip(
        &self,
        record: &RecordAndOffset,
        f: Failure,
        pos: &mut Position,
    ) -> Flow {
        let topic = &self.cfg.topic;
        let partition = self.lease.partition;
        let offset = record.offset;
        let event_id = record
            .record
            .headers
            .get(crate::kafka::envelope::HEADER_EVENT_ID)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        let order_id = record
            .record
            .key
            .as_deref()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default();
        error!(%topic, partition, offset, %event_id, %order_id, class = class_name(f.class), attempts = f.attempts,
               error = %f.message, dlq = %self.shared.dead_letters.topic,
               "record cannot be applied; sending it to the dead-letter topic");
        let letter = dlq::dead_letter(&record.record, &f);
        let dl = &self.shared.dead_letters;
        let publish = async {
            dl.producer
                .publish(&dl.topic, letter)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        let r = with_deadline(
            self.cfg.db_deadline + self.cfg.publish_timeout,
            fenced(
                &self.shared.pool,
                self.shared.member,
                &self.lease,
                pos.stored,
                offset + 1,
                Work::Publish(publish),
            ),
        )
        .await;
        self.count_transaction(r.is_ok());
        match self.outcome(r, offset + 1) {
            Applied::Committed => {
                pos.committed(offset + 1);
                self.shared.health.advanced(topic, partition, offset + 1);
                self.count("dead_lettered", 1);
                Flow::Go
            }
            Applied::Moved(found) => {
                pos.resume_from(found);
                Flow::Pause
            }
            Applied::LeaseLost => Flow::Lost,
            Applied::Failed(e) => {
                warn!(%topic, partition, offset, error = %e,
                      "dead letter or its offset not stored; partition stays on the record");
                self.shared.health.failing(topic, partition, e.to_string());
                Flow::Pause
            }
        }
    }

    async fn start(&self) -> Result<(PartitionClient, Position), ProcessError> {
        let kafka = &self.shared.kafka;
        let client = kafka
            .partition_client(&self.cfg.topic, self.lease.partition)
            .await?;
        let stored = self.stored_offset().await?;
        let next = match stored {
            Some(o) => o,
            None => {
                bounded(
                    "reading the earliest offset",
                    kafka.request_timeout(),
                    client.get_offset(OffsetAt::Earliest),
                )
                .await?
            }
        };
        Ok((client, Position { next, stored }))
    }

    async fn stored_offset(&self) -> Result<Option<i64>, DbError> {
        crate::db::bounded("reading the stored offset", self.cfg.db_deadline, async {
            let conn = self.shared.pool.get().await?;
            offsets::load(
                &**conn,
                &self.cfg.group,
                &self.cfg.topic,
                self.lease.partition,
            )
            .await
        })
        .await
    }

    /// The position fell outside the log: says which records are out of
    /// reach and what an operator can do. Nothing moves here.
    async fn out_of_range(&self, client: &PartitionClient, pos: Position) -> String {
        let t = self.shared.kafka.request_timeout();
        let (earliest, latest) = tokio::join!(
            bounded(
                "reading the earliest offset",
                t,
                client.get_offset(OffsetAt::Earliest)
            ),
            bounded(
                "reading the latest offset",
                t,
                client.get_offset(OffsetAt::Latest)
            ),
        );
        let reset = format!(
            "`payhook offsets reset --topic {} --partition {} --to earliest|latest|OFFSET` moves it on",
            self.cfg.topic, self.lease.partition
        );
        match (earliest, latest) {
            (Ok(earliest), _) if pos.next < earliest => format!(
                "offset {} is below the log start {earliest}: records {}..={} were deleted \
                 (retention) before they were applied; nothing was skipped. {reset}",
                pos.next,
                pos.next,
                earliest - 1
            ),
            (_, Ok(latest)) if pos.next > latest => format!(
                "offset {} is beyond the log end {latest} (was the topic deleted and \
                 re-created?); nothing was skipped. {reset}",
                pos.next
            ),
            (Ok(earliest), Ok(latest)) => format!(
                "the broker says offset {} is out of range, yet the log spans \
                 {earliest}..{latest}; retrying while stopped. {reset}",
                pos.next
            ),
            (Err(e), _) | (_, Err(e)) => format!(
                "the broker says offset {} is out of range, and the log's bounds cannot be \
                 read ({e}). {reset}",
                pos.next
            ),
        }
    }

    /// Applies `chunk` (in order) and moves the stored offset from
    /// `expected` to `next`, in one fenced transaction.
    ///
    /// With `combine` (not while isolating a failure), the run goes to the
    /// topic's committer and may share its transaction with other
    /// partitions' runs; the outcome is the one it would have had alone.
    async fn apply(
        &self,
        expected: Option<i64>,
        next: i64,
        chunk: Vec<Event>,
        combine: bool,
    ) -> Applied {
        let chunk = if combine {
            match self
                .shared
                .committers
                .commit(&self.lease, expected, next, chunk)
                .await
            {
                Ok(r) => return self.outcome(r, next),
                Err(chunk) => chunk,
            }
        } else {
            chunk
        };
        let r = with_deadline(
            self.cfg.db_deadline,
            fenced(
                &self.shared.pool,
                self.shared.member,
                &self.lease,
                expected,
                next,
                Work::<std::future::Ready<_>>::Events(chunk),
            ),
        )
        .await;
        self.count_transaction(r.is_ok());
        self.outcome(r, next)
    }

    fn count_transaction(&self, committed: bool) {
        count_transaction(&self.shared.metrics, &self.cfg.topic, committed);
    }

    /// Counts a transaction's outcome and sorts it.
    fn outcome(&self, r: Result<Outcome, ProcessError>, next: i64) -> Applied {
        let topic = &self.cfg.topic;
        let partition = self.lease.partition;
        match r {
            Ok(stats) => {
                self.count("applied", stats.stored);
                self.count("duplicate", stats.duplicates);
                debug!(%topic, partition, offset = next - 1, stored = stats.stored,
                       duplicates = stats.duplicates, "records committed");
                Applied::Committed
            }
            Err(ProcessError::Fenced { found, .. }) => {
                warn!(%topic, partition, ?found, "stored offset was moved; resuming from it");
                Applied::Moved(found)
            }
            Err(ProcessError::LeaseLost { .. }) => Applied::LeaseLost,
            Err(e) => Applied::Failed(e),
        }
    }
}

/// The byte range and wait of the next fetch, `(max_wait_ms, linger_ms)`
/// being `KAFKA_FETCH_MAX_WAIT` and `CONSUMER_LINGER`:
/// - after a fetch that brought records (`lingering`), the broker holds the
///   fetch until `min_bytes` have arrived or the linger has passed, so a
///   steady trickle is applied in one transaction per linger instead of one
///   per record (fewer fetches, transactions and commits per event);
/// - after an empty fetch, a long poll that returns with the first byte, so
///   an event that arrives alone is applied at once;
/// - while reading one batch at a time (after an unreadable fetch), exactly
///   that.
fn fetch_shape(
    one_batch: bool,
    lingering: bool,
    min_bytes: i32,
    max_bytes: i32,
    (max_wait_ms, linger_ms): (i32, i32),
) -> (std::ops::Range<i32>, i32) {
    if one_batch {
        (1..1, max_wait_ms)
    } else if lingering {
        (min_bytes.min(max_bytes)..max_bytes, linger_ms)
    } else {
        (1..max_bytes, max_wait_ms)
    }
}

/// How many records the next transaction takes: all that fit in a batch,
/// or, while isolating a failure, the first half of the suspect run (one
/// record once the run is down to one).
fn chunk_limit(rest: &[RecordAndOffset], suspect: Option<Suspect>, max_batch: usize) -> usize {
    match suspect {
        Some(s) if rest.first().is_some_and(|r| r.offset == s.from) => {
            let in_run = rest.iter().take_while(|r| r.offset < s.to).count();
            (in_run / 2).max(1)
        }
        _ => max_batch.max(1),
    }
}

fn class_name(c: ErrorClass) -> &'static str {
    match c {
        ErrorClass::Transient => "transient",
        ErrorClass::Permanent => "permanent",
    }
}

/// Counts one consumer transaction of `topic` in
/// `payhook_consumer_transactions_total`, by whether it committed.
pub(super) fn count_transaction(metrics: &Metrics, topic: &str, committed: bool) {
    metrics
        .transactions
        .get_or_create(&RecordLabels {
            topic: topic.to_owned(),
            outcome: if committed { "commit" } else { "rollback" },
        })
        .inc();
}

/// A transaction with a client-side deadline: a database that stops
/// answering without closing the connection is a transient failure after
/// `after`, not a partition stuck for the kernel's keepalive time.
pub(super) async fn with_deadline(
    after: Duration,
    tx: impl Future<Output = Result<Outcome, ProcessError>>,
) -> Result<Outcome, ProcessError> {
    match tokio::time::timeout(after, tx).await {
        Ok(r) => r,
        Err(_) => Err(ProcessError::Db(DbError::Timeout {
            what: "a consumer transaction",
            after,
        })),
    }
}

/// The fenced transaction: moves the stored offset from `expected` to
/// `next` **first**, which requires this member's lease at its epoch and
/// locks the lease and offset rows until commit, then runs `work` (the
/// effects, or publishing a dead letter), then commits. A consumer whose
/// lease or position is stale finds out before doing anything.
pub(super) async fn fenced<P>(
    pool: &Pool,
    member: Uuid,
    lease: &Lease,
    expected: Option<i64>,
    next: i64,
    work: Work<P>,
) -> Result<Outcome, ProcessError>
where
    P: Future<Output = Result<(), String>>,
{
    let mut conn = pool.get().await.map_err(DbError::from)?;
    let tx = conn.transaction().await.map_err(DbError::from)?;
    // On error, dropping `tx` rolls back; nothing was written.
    fence(&tx, member, lease, expected, next).await?;
    let outcome = match work {
        Work::Events(chunk) => apply_events(&tx, chunk).await?,
        Work::Publish(publish) => {
            publish.await.map_err(ProcessError::DeadLetter)?;
            Outcome::default()
        }
    };
    tx.commit().await.map_err(DbError::from)?;
    Ok(outcome)
}

/// The first statement of every effect transaction: moves the stored offset
/// from `expected` to `next` if this member still holds `lease` at its
/// epoch, and locks both rows until commit; otherwise says why not.
pub(super) async fn fence(
    tx: &Transaction<'_>,
    member: Uuid,
    lease: &Lease,
    expected: Option<i64>,
    next: i64,
) -> Result<(), ProcessError> {
    match offsets::advance(tx, member, lease, expected, next).await? {
        Ok(()) => Ok(()),
        Err(offsets::Fenced::Lease) => Err(ProcessError::LeaseLost { epoch: lease.epoch }),
        Err(offsets::Fenced::Offset(found)) => Err(ProcessError::Fenced { expected, found }),
    }
}

/// What a fenced transaction does between its fence and its commit.
pub(super) enum Work<P> {
    /// Apply these events.
    Events(Vec<Event>),
    /// Publish a dead letter and wait for the broker's acknowledgement.
    Publish(P),
}

/// The effects of a run of events, inside the fenced transaction.
pub(super) async fn apply_events(
    tx: &Transaction<'_>,
    chunk: Vec<Event>,
) -> Result<Outcome, DbError> {
    let mut payments: Vec<PaymentEvent> = Vec::new();
    let mut chargebacks: Vec<ChargebackEvent> = Vec::new();
    let mut pending = Vec::new();
    for ev in chunk {
        match ev {
            Event::Payment(p) => payments.push(p),
            Event::Chargeback(c) => chargebacks.push(c),
            Event::PendingChargeback(d) => pending.push(d),
        }
    }
    let mut store = PgStore::new(tx);
    let a = OrderService
        .process_payment_webhooks(&mut store, &payments)
        .await?;
    // Disputes that name a payment, not an order: resolved (or parked) now,
    // and those that waited for these payments released.
    let settled = super::waiting::settle(tx, &payments, pending).await?;
    chargebacks.extend(settled.resolved);
    let b = DisputeService
        .process_chargebacks(&mut store, &chargebacks)
        .await?;
    for p in &payments {
        debug!(event_id = %p.event_id, order_id = %p.webhook.order_id, topic = %p.source.topic,
               partition = p.source.partition, offset = p.source.offset, "payment applied");
    }
    for c in &chargebacks {
        debug!(event_id = %c.event_id, order_id = %c.webhook.order_id, topic = %c.source.topic,
               partition = c.source.partition, offset = c.source.offset, "chargeback applied");
    }
    Ok(Outcome {
        stored: a.stored + b.stored,
        duplicates: a.duplicates + b.duplicates,
        changed: a.changed + b.changed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rskafka::record::Record;

    fn records(offsets: std::ops::Range<i64>) -> Vec<RecordAndOffset> {
        offsets
            .map(|offset| RecordAndOffset {
                record: Record {
                    key: None,
                    value: None,
                    headers: Default::default(),
                    timestamp: Utc::now(),
                },
                offset,
            })
            .collect()
    }

    /// Simulates the halving over `n` records of which `bad` fail: the
    /// transactions it takes until every record is committed or blamed.
    fn isolate(n: i64, bad: &[i64], max_batch: usize) -> (usize, Vec<i64>) {
        let all = records(0..n);
        let (mut i, mut suspect, mut txs, mut blamed) = (0usize, None, 0, Vec::new());
        while i < all.len() {
            let limit = chunk_limit(&all[i..], suspect, max_batch).min(all.len() - i);
            let (first, next) = (all[i].offset, all[i + limit - 1].offset + 1);
            txs += 1;
            if bad.iter().any(|b| (first..next).contains(b)) {
                if limit > 1 {
                    suspect = Some(Suspect {
                        from: first,
                        to: next,
                    });
                    continue;
                }
                suspect = None;
                blamed.push(first);
                txs += 1; // the dead letter's offset commit
            } else {
                suspect = suspect.and_then(|s: Suspect| {
                    (next < s.to).then_some(Suspect {
                        from: next,
                        to: s.to,
                    })
                });
            }
            i += limit;
        }
        (txs, blamed)
    }

    #[test]
    fn halving_isolates_exactly_the_bad_records_in_few_transactions() {
        let (txs, blamed) = isolate(2000, &[1500], 2000);
        assert_eq!(blamed, vec![1500]);
        // 1 failed batch, ~2·log2(2000) while halving, the dead letter, the rest.
        assert!(txs <= 2 * 11 + 3, "{txs} transactions");
        let (_, blamed) = isolate(2000, &[0, 1, 999, 1999], 2000);
        assert_eq!(blamed, vec![0, 1, 999, 1999]);
        let (txs, blamed) = isolate(10, &[], 4);
        assert_eq!((txs, blamed), (3, vec![]));
    }
}
