//! The partition loop: one task per owned partition, applying its records
//! in order, each exactly once.
//!
//! Forever, from the partition's position:
//! 1. fetch (bounded in time);
//! 2. decode the records, in order; a record that cannot be decoded is
//!    dead-lettered where it stands;
//! 3. apply runs of decoded records, each in **one fenced transaction**
//!    ([`super::unit`]: the stored offset moves first, then the effects, then
//!    the commit), so effect and acknowledgement commit or vanish together.
//!
//! # The state machine
//!
//! [`PartitionLoop::step`] does one step and says what comes next
//! ([`Next`]): go on, wait (a backoff, or the poll of a stopped partition),
//! or end. Where the loop stands is one value, [`PartitionState`]: its
//! [`Phase`] (starting, running, stopped and why), its [`Position`], how the
//! next fetch is shaped, the [`Halving`] search for a failing record, the
//! record being retried, and the backoff. The loop reaches Kafka through a
//! [`Log`] and Postgres through a [`Sink`]: the service's are
//! [`super::log::KafkaLog`] and [`super::sink::PgSink`]; the unit tests below
//! drive the same loop with scripted ones.
//!
//! # When a transaction fails
//!
//! The failing record is **isolated by halving** ([`super::halving`]). Only a
//! record that failed *on its own* is blamed:
//! - a **permanent** failure (see [`super::classify`]: the record's data)
//!   sends it to the dead-letter topic, with the error in the dead-letter
//!   headers, and the partition moves on at once;
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
//! The stored offset is a position in one log: the database keeps, with
//! it, the log's Kafka topic ID and the digest of the record just before
//! the position (the last one handled). The loop checks both:
//! - at start, the topic ID: a topic deleted and created again under the
//!   same name has another ID, and the partition **stops** ([`Stop::Recreated`]);
//! - on every fetch, which starts one record early, the digest: a log that
//!   no longer holds that record at that offset had its history changed
//!   (re-created, or truncated by an unclean leader election and written
//!   again), and the partition **stops** ([`Stop::HistoryChanged`]).
//!
//! A stopped partition logs why and which records may be missing, reports
//! itself stopped ([`super::health`]: metrics, `/readyz`, `/status`), and
//! waits for an operator: `payhook offsets reset` moves it deliberately
//! (adopting the topic ID the broker has now), and the stopped loop, which
//! polls the stored row, starts again from whatever the operator set.
//! Whatever the log does later, it never goes on by itself, with one
//! exception: an offset the broker calls out of range although the log's
//! bounds include it (a moment of a leader change, [`Stop::Unsettled`]) is
//! probed, and the loop resumes once the record before it is there again
//! and is the one it handled.
//!
//! - **Offset below the log start**: retention deleted records before they
//!   were applied ([`Stop::Deleted`]).
//! - **Offset beyond the log end**: the log was truncated or re-created
//!   ([`Stop::BeyondEnd`]).
//! - **A first start that cannot see offset 0**: a partition never consumed
//!   whose log no longer starts at 0 is reported (the deleted range is
//!   logged, `payhook_consumer_first_start_gap_records`, `/status`) and read
//!   from its first record; with `CONSUMER_FIRST_START=stop` it stops there
//!   instead ([`Stop::FirstStart`]).
//! - **A batch payhook cannot read** (compressed with lz4 or zstd, which the
//!   C-free rskafka build does not decode, or corrupt): the partition fetches
//!   one batch at a time up to it, applying everything before it, then stops
//!   the same way, naming the codec and the offset ([`Stop::Unreadable`]).
//!
//! Other partitions keep going: each loop is its own task.

use std::{future::Future, ops::Range, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use rskafka::record::{Record, RecordAndOffset};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{
    classify::{Backoff, ErrorClass, ProcessError},
    config::ConsumerConfig,
    dlq::Failure,
    events::PartitionEvents,
    halving::{Blame, Halving},
};
use crate::{
    config::FirstStart,
    db::{
        DbError,
        offsets::{Advance, Stored},
    },
    domain::orders::{Outcome, SourcePosition},
    kafka::{
        KafkaError,
        envelope::{Checks, DecodeError, Envelope, Event, HEADER_EVENT_ID},
        record_digest,
    },
};

/// SHA-256 of a record ([`record_digest`]).
pub type Digest = [u8; 32];

/// How often a stopped partition looks for an operator's offset reset.
pub const STOPPED_POLL: Duration = Duration::from_secs(2);

/// Consecutive failed fetches after which the partition's connection is
/// rebuilt rather than reused.
pub const FETCH_FAILURES_BEFORE_RECONNECT: u32 = 3;

/// Times the broker may refuse one dead letter for what it is (too large,
/// invalid) before the partition stops: sending it again gets the same
/// answer.
pub const DEAD_LETTER_REFUSALS_BEFORE_STOP: u32 = 3;

/// What one fetch brought.
#[derive(Debug, Default)]
pub struct Fetched {
    pub records: Vec<RecordAndOffset>,
    /// The offset after the log's last record.
    pub high_watermark: i64,
}

/// Why a fetch brought nothing.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The position is outside the log.
    #[error("the offset is out of range")]
    OutOfRange,
    /// A record batch at the position cannot be decoded (a codec this
    /// build lacks, or corruption), though the broker answered.
    #[error("a record batch cannot be read: {0}")]
    Unreadable(String),
    /// The broker or the network; time may heal it.
    #[error(transparent)]
    Failed(#[from] KafkaError),
}

/// The partition's log, as the loop reads it (the fetch seam).
pub trait Log: Send {
    /// Connects to the partition's leader.
    fn connect(&mut self) -> impl Future<Output = Result<(), KafkaError>> + Send;

    /// Drops the connection and makes a new one, after repeated failures
    /// (the leader may have moved, or the socket be half-open).
    fn reconnect(&mut self) -> impl Future<Output = Result<(), KafkaError>> + Send;

    /// Records from `offset` on: at most `bytes.end` bytes, the broker
    /// waiting up to `max_wait_ms` for `bytes.start` of them.
    fn fetch(
        &mut self,
        offset: i64,
        bytes: Range<i32>,
        max_wait_ms: i32,
    ) -> impl Future<Output = Result<Fetched, FetchError>> + Send;

    /// The first offset still in the log, and the offset after its last
    /// record.
    fn bounds(&mut self) -> impl Future<Output = Result<(i64, i64), KafkaError>> + Send;

    /// The topic ID the brokers have for the topic now; `None` when the
    /// topic does not exist.
    fn topic_id(&mut self) -> impl Future<Output = Result<Option<Uuid>, KafkaError>> + Send;
}

/// Where the partition's records go (the database seam). Every method that
/// moves the stored offset is fenced: it fails with
/// [`ProcessError::Fenced`] when the database does not hold `expected`, and
/// with [`ProcessError::LeaseLost`] when the lease is no longer this loop's.
pub trait Sink: Send + Sync {
    /// The partition's stored offset, with its log's topic ID and the digest
    /// of the record before it.
    fn stored(&self) -> impl Future<Output = Result<Option<Stored>, DbError>> + Send;

    /// Applies `events` and moves the stored offset as `advance` says, in
    /// one transaction. With `combine`, the run may share its transaction
    /// with other partitions' runs ([`super::committer`]); the outcome is the
    /// one it would have had alone.
    fn apply(
        &self,
        advance: Advance,
        events: Vec<Event>,
        combine: bool,
    ) -> impl Future<Output = Result<Outcome, ProcessError>> + Send;

    /// Publishes the dead letter of `original` (which failed as `failure`
    /// says; see [`super::dlq::dead_letter`]) to the dead-letter topic and, once
    /// the broker has acknowledged it, moves the stored offset as `advance`
    /// says, in one transaction.
    fn dead_letter(
        &self,
        advance: Advance,
        original: &Record,
        failure: &Failure,
    ) -> impl Future<Output = Result<(), ProcessError>> + Send;

    /// The dead-letter topic, as the logs name it.
    fn dead_letter_topic(&self) -> &str;
}

/// Where a partition stands: the next offset to fetch, what the database
/// holds (the fence for the next commit), and what the loop knows of the
/// record before the position.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Position {
    pub next: i64,
    pub stored: Option<i64>,
    /// The topic ID the stored row names.
    pub stored_topic: Option<Uuid>,
    /// The digest of the record at `next - 1`, when known.
    pub tail: Option<Digest>,
}

impl Position {
    /// The database now holds `next` of the log `topic_id`, after the
    /// record whose digest is `tail`.
    fn committed(&mut self, next: i64, topic_id: Uuid, tail: Digest) {
        *self = Self {
            next,
            stored: Some(next),
            stored_topic: Some(topic_id),
            tail: Some(tail),
        };
    }

    /// The stored row as the loop last knew it.
    fn row(&self) -> Option<(i64, Option<Uuid>)> {
        self.stored.map(|n| (n, self.stored_topic))
    }
}

/// Why a partition waits for an operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Retention deleted records before they were applied.
    Deleted,
    /// The position is beyond the log's end: it was truncated or re-created.
    BeyondEnd,
    /// The broker says the position is out of range although the log's
    /// bounds include it: probed, and resumed once the same history is
    /// readable there.
    Unsettled,
    /// The topic was deleted and created again: another topic ID.
    Recreated,
    /// The log no longer holds, before the position, the record the loop
    /// handled there.
    HistoryChanged,
    /// Never consumed, the log no longer starts at 0, and
    /// `CONSUMER_FIRST_START=stop`.
    FirstStart,
    /// The dead-letter topic refuses a record's dead letter for what it is.
    DeadLetterRefused,
    /// A batch at the position cannot be read.
    Unreadable,
}

/// What the loop is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Connecting and reading its position.
    Starting,
    /// Fetching and applying.
    Running,
    /// Waiting for an operator (or for the log to come back in range).
    Stopped(Stop),
}

/// The one record (by offset) that failed on its own and is being retried.
#[derive(Clone, Copy, Debug)]
struct Retrying {
    offset: i64,
    attempts: u32,
    first_failure: DateTime<Utc>,
}

/// Everything the loop knows about where it stands.
#[derive(Clone, Debug)]
pub struct PartitionState {
    pub phase: Phase,
    pub position: Position,
    /// The topic ID the broker had when the loop started (nil before).
    pub topic_id: Uuid,
    /// The last fetch brought records: the next one lingers (see
    /// [`fetch_shape`]).
    lingering: bool,
    /// A fetch could not be read: fetch one batch at a time, so everything
    /// before the unreadable batch is still applied.
    one_batch: bool,
    halving: Halving,
    retrying: Option<Retrying>,
    fetch_failures: u32,
    /// Consecutive refusals of the dead letter of the record at the
    /// position.
    dead_letter_refusals: u32,
    backoff: Backoff,
}

impl PartitionState {
    fn new(backoff: Backoff) -> Self {
        Self {
            phase: Phase::Starting,
            position: Position::default(),
            topic_id: Uuid::nil(),
            lingering: false,
            one_batch: false,
            halving: Halving::default(),
            retrying: None,
            fetch_failures: 0,
            dead_letter_refusals: 0,
            backoff,
        }
    }
}

/// What the loop does after a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Go on at once.
    Continue,
    /// Wait this long (shutdown cuts it short), then go on.
    Wait(Duration),
    /// End the loop: the lease is gone, or shutdown was requested.
    End,
}

/// How a transaction went.
enum Applied {
    Committed(Outcome),
    /// The stored offset was not where the loop thought (an operator moved
    /// it): resume from what it is.
    Moved(Option<i64>),
    /// The lease is no longer this loop's.
    LeaseLost,
    Failed(ProcessError),
}

fn sort(r: Result<Outcome, ProcessError>) -> Applied {
    match r {
        Ok(outcome) => Applied::Committed(outcome),
        Err(ProcessError::Fenced { found, .. }) => Applied::Moved(found),
        Err(ProcessError::LeaseLost { .. }) => Applied::LeaseLost,
        Err(e) => Applied::Failed(e),
    }
}

/// One partition's consumer.
pub struct PartitionLoop<L, S> {
    log: L,
    sink: S,
    cfg: Arc<ConsumerConfig>,
    partition: i32,
    /// The lease's epoch, as the logs name it when the lease is lost.
    epoch: i64,
    events: PartitionEvents,
    shutdown: CancellationToken,
    state: PartitionState,
}

/// Sleeps, or returns `true` early if shutdown was requested.
async fn sleep_or_shutdown(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

impl<L: Log, S: Sink> PartitionLoop<L, S> {
    pub fn new(
        log: L,
        sink: S,
        cfg: Arc<ConsumerConfig>,
        partition: i32,
        epoch: i64,
        events: PartitionEvents,
        shutdown: CancellationToken,
    ) -> Self {
        let backoff = Backoff::new(cfg.backoff_min, cfg.backoff_max);
        Self {
            log,
            sink,
            cfg,
            partition,
            epoch,
            events,
            shutdown,
            state: PartitionState::new(backoff),
        }
    }

    /// Where the loop stands.
    pub fn state(&self) -> &PartitionState {
        &self.state
    }

    /// Runs until shutdown (the current transaction finishes first) or
    /// until the lease is lost.
    pub async fn run(mut self) {
        while !self.shutdown.is_cancelled() {
            match self.step().await {
                Next::Continue => {}
                Next::Wait(d) => {
                    if sleep_or_shutdown(d, &self.shutdown).await {
                        break;
                    }
                }
                Next::End => break,
            }
        }
        if self.state.phase != Phase::Starting {
            self.events.ended(self.state.position.next);
        }
    }

    /// One step of the state machine.
    pub async fn step(&mut self) -> Next {
        match self.state.phase {
            Phase::Starting => self.start().await,
            Phase::Stopped(stop) => self.poll_stopped(stop).await,
            Phase::Running => self.fetch_and_apply().await,
        }
    }

    fn pause(&mut self) -> Next {
        Next::Wait(self.state.backoff.next_delay())
    }

    fn lost(&self) -> Next {
        self.events.lease_lost(self.epoch);
        Next::End
    }

    fn stop(&mut self, why: Stop, what: &'static str, reason: String) -> Next {
        self.events.stopped(self.state.position.next, what, reason);
        self.state.phase = Phase::Stopped(why);
        Next::Wait(STOPPED_POLL)
    }

    /// Connects, reads the stored row and the broker's topic ID, and finds
    /// the starting position: the stored offset, or the log's first record
    /// for a partition never consumed.
    async fn start(&mut self) -> Next {
        let found = async {
            self.log.connect().await?;
            let stored = self.sink.stored().await?;
            let topic_id = self.log.topic_id().await?;
            let first = match stored {
                Some(_) => None,
                None => Some(self.log.bounds().await?.0),
            };
            Ok::<_, ProcessError>((stored, topic_id, first))
        };
        let (stored, topic_id, first) = match found.await {
            Ok((stored, Some(id), first)) => (stored, id, first),
            Ok((_, None, _)) => {
                let e = format!("topic {} does not exist (yet)", self.cfg.topic);
                self.events.start_failed(&e);
                return self.pause();
            }
            Err(e) => {
                self.events.start_failed(&e);
                return self.pause();
            }
        };
        self.state.topic_id = topic_id;
        self.state.phase = Phase::Running;
        self.state.one_batch = false;
        self.state.halving.reset();
        self.state.retrying = None;
        self.state.backoff.reset();
        match (stored, first) {
            (Some(s), _) => {
                self.state.position = Position {
                    next: s.next,
                    stored: Some(s.next),
                    stored_topic: s.topic_id,
                    tail: s.digest,
                };
                self.events.started(s.next);
                match s.topic_id {
                    Some(old) if old != topic_id => {
                        let reason = self.recreated(old, topic_id);
                        self.stop(Stop::Recreated, "its topic was re-created", reason)
                    }
                    _ => Next::Continue,
                }
            }
            (None, first) => {
                let earliest = first.unwrap_or(0);
                self.state.position = Position {
                    next: earliest,
                    ..Position::default()
                };
                self.events.started(earliest);
                if earliest == 0 {
                    return Next::Continue;
                }
                let reason = format!(
                    "{}/{} was never consumed and its log starts at offset {earliest}: records \
                     0..={} were deleted (retention) before payhook first read them",
                    self.cfg.topic,
                    self.partition,
                    earliest - 1
                );
                match self.cfg.first_start {
                    FirstStart::Earliest => {
                        self.events.first_start_gap(earliest, &reason);
                        Next::Continue
                    }
                    FirstStart::Stop => {
                        let reason =
                            format!("{reason}. CONSUMER_FIRST_START=stop: {}", self.reset_hint());
                        self.stop(Stop::FirstStart, "its log no longer starts at 0", reason)
                    }
                }
            }
        }
    }

    /// How an operator moves a stopped partition on.
    fn reset_hint(&self) -> String {
        format!(
            "`payhook offsets reset --topic {} --partition {} --to earliest|latest|OFFSET` \
             moves it (add --dry-run to see the change first)",
            self.cfg.topic, self.partition
        )
    }

    fn recreated(&self, old: Uuid, now: Uuid) -> String {
        let pos = self.state.position;
        format!(
            "topic {} was re-created: stored offsets belong to topic ID {old}, the broker now \
             has {now}. The stored offset {} is a position in the old log; nothing of the new \
             log was applied from it, and nothing will be until an operator decides: {} \
             (`--to earliest` applies the new log from its start and adopts its topic ID)",
            self.cfg.topic,
            pos.next,
            self.reset_hint()
        )
    }

    /// A stopped partition: starts again once an operator moved its stored
    /// offset, or (only after [`Stop::Unsettled`]) once its position is
    /// readable again in the same history.
    async fn poll_stopped(&mut self, stop: Stop) -> Next {
        let pos = self.state.position;
        match self.sink.stored().await {
            Ok(found) if found.as_ref().map(|s| (s.next, s.topic_id)) != pos.row() => {
                self.state.phase = Phase::Starting;
                self.events
                    .reset_by_operator(pos.next, found.as_ref().map(|s| s.next));
                return Next::Continue;
            }
            Ok(_) => {}
            Err(e) => self.events.stored_offset_unreadable(&e),
        }
        if stop == Stop::Unsettled && self.same_history_readable().await {
            self.state.phase = Phase::Running;
            self.events.back_in_range(pos.next);
            return Next::Continue;
        }
        Next::Wait(STOPPED_POLL)
    }

    /// Whether the log holds, again, the record before the position that the
    /// loop handled (or, when it knows none, whether the position is
    /// readable in a topic of the same ID).
    async fn same_history_readable(&mut self) -> bool {
        let pos = self.state.position;
        match pos.tail {
            Some(d) if pos.next > 0 => match self.log.fetch(pos.next - 1, 1..2, 0).await {
                Ok(f) => f
                    .records
                    .iter()
                    .any(|r| r.offset == pos.next - 1 && record_digest(&r.record) == d),
                Err(_) => false,
            },
            _ => {
                self.log.fetch(pos.next, 1..2, 0).await.is_ok()
                    && matches!(self.log.topic_id().await, Ok(Some(id)) if id == self.state.topic_id)
            }
        }
    }

    async fn fetch_and_apply(&mut self) -> Next {
        let ms = |d: Duration| i32::try_from(d.as_millis()).unwrap_or(i32::MAX);
        let linger_ms = ms(self.cfg.linger);
        let (bytes, max_wait_ms) = fetch_shape(
            self.state.one_batch,
            self.state.lingering && linger_ms > 0,
            self.cfg.fetch_min_bytes,
            self.cfg.fetch_max_bytes,
            (ms(self.cfg.fetch_max_wait), linger_ms),
        );
        let pos = self.state.position;
        // Read from the record before the position, to recognise it: the
        // log's history is the one the loop applied only if that record is
        // still there. (Not while reading one batch at a time past an
        // unreadable one: that batch might be the record's alone.)
        let verify = pos.tail.filter(|_| pos.next > 0 && !self.state.one_batch);
        let from = if verify.is_some() {
            pos.next - 1
        } else {
            pos.next
        };
        // Fetching changes nothing, so it may be abandoned at shutdown.
        let fetched = tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => return Next::End,
            r = self.log.fetch(from, bytes, max_wait_ms) => r,
        };
        match fetched {
            Ok(Fetched {
                records,
                high_watermark,
            }) => {
                if let Some(d) = verify {
                    let at = pos.next - 1;
                    match records.iter().find(|r| r.offset >= at) {
                        Some(r) if r.offset == at && record_digest(&r.record) == d => {}
                        Some(r) if r.offset == at => {
                            return self.history_changed("another record".into()).await;
                        }
                        Some(r) => {
                            let found = format!("no record (the next one is at {})", r.offset);
                            return self.history_changed(found).await;
                        }
                        None => {
                            let found = format!("no record (its log ends at {high_watermark})");
                            return self.history_changed(found).await;
                        }
                    }
                }
                self.state.fetch_failures = 0;
                self.state.lingering =
                    records.iter().any(|r| r.offset >= pos.next) && !self.state.one_batch;
                self.state.one_batch = false;
                self.events.fetched(high_watermark);
                let next = self.process(&records).await;
                if next == Next::Continue && self.state.retrying.is_none() {
                    self.state.backoff.reset();
                }
                next
            }
            Err(FetchError::OutOfRange) => self.out_of_range(from).await,
            Err(FetchError::Unreadable(why)) if !self.state.one_batch => {
                // Apply what comes before the unreadable batch first.
                self.events.unreadable_batch(pos.next, &why);
                self.state.one_batch = true;
                Next::Continue
            }
            Err(FetchError::Unreadable(why)) => {
                let reason = format!(
                    "the record batch at offset {} cannot be read: {why}. payhook's \
                     default (C-free) build reads uncompressed, gzip and snappy batches \
                     only; see docs/guarantees.md, 'Compression'. {}",
                    pos.next,
                    self.reset_hint()
                );
                self.stop(Stop::Unreadable, "a record batch cannot be read", reason)
            }
            Err(FetchError::Failed(e)) => {
                self.events.fetch_failed(from, &e);
                self.state.fetch_failures += 1;
                if self.state.fetch_failures >= FETCH_FAILURES_BEFORE_RECONNECT {
                    // Do not trust a connection that keeps failing.
                    match self.log.reconnect().await {
                        Ok(()) => {
                            self.events.reconnected(Ok(()));
                            self.state.fetch_failures = 0;
                        }
                        Err(e) => self.events.reconnected(Err(&e)),
                    }
                }
                self.pause()
            }
        }
    }

    /// The log no longer holds, at `next - 1`, the record the loop handled
    /// there; `found` says what it holds instead.
    async fn history_changed(&mut self, found: String) -> Next {
        if let Ok(Some(id)) = self.log.topic_id().await {
            if id != self.state.topic_id {
                let reason = self.recreated(self.state.topic_id, id);
                return self.stop(Stop::Recreated, "its topic was re-created", reason);
            }
        }
        let at = self.state.position.next - 1;
        let reason = format!(
            "the log of {}/{} no longer holds, at offset {at}, the record payhook handled \
             there: it holds {found}. Its history changed under the consumer (an unclean \
             leader election truncated it and other records took those offsets); records \
             of the new history from offset {at} on may never have been applied. Nothing \
             was skipped. {}",
            self.cfg.topic,
            self.partition,
            self.reset_hint()
        );
        self.stop(Stop::HistoryChanged, "the log's history changed", reason)
    }

    /// Applies fetched records in order: decodable runs in transactions,
    /// undecodable records to the dead-letter topic, failing runs isolated
    /// by halving. [`Next::Wait`] when the partition must pause (the caller
    /// backs off, then re-fetches from the position, which never moved past
    /// an unapplied record).
    async fn process(&mut self, records: &[RecordAndOffset]) -> Next {
        let mut i = records.partition_point(|r| r.offset < self.state.position.next);
        // Shutdown is honoured between transactions: the current one
        // finishes, the rest of the fetched records wait for next time.
        while i < records.len() && !self.shutdown.is_cancelled() {
            let limit = self
                .state
                .halving
                .next_len(&records[i..], self.cfg.max_batch);
            let (chunk, poison) = self.decode(&records[i..], limit);

            if chunk.is_empty() {
                // records[i] itself cannot be decoded: dead-letter it.
                let e = poison.expect("an empty chunk means the first record failed to decode");
                let next = self.give_up(&records[i], &e, 1, Utc::now()).await;
                if next != Next::Continue {
                    return next;
                }
                self.state.retrying = None;
                i += 1;
                continue;
            }

            let n = chunk.len();
            let first = records[i].offset;
            let last = &records[i + n - 1];
            let next = last.offset + 1;
            let combine = !self.state.halving.isolating();
            let advance = self.advance(next, &last.record);
            match sort(self.sink.apply(advance, chunk, combine).await) {
                Applied::Committed(outcome) => {
                    self.state
                        .position
                        .committed(next, advance.topic_id, advance.digest);
                    self.events.committed(next, &outcome);
                    self.state.retrying = None;
                    self.state.halving.committed(next);
                    i += n;
                }
                Applied::Moved(found) => return self.moved(found),
                Applied::LeaseLost => return self.lost(),
                Applied::Failed(e) => {
                    let class = e.class();
                    self.events.apply_failed(class);
                    match self.state.halving.failed(
                        first,
                        next,
                        n,
                        e.names_record(&self.cfg.topic, self.partition),
                    ) {
                        Blame::Run => {
                            self.events.run_failed(first, n, class, &e);
                            match class {
                                // The data is at fault: halve at once.
                                ErrorClass::Permanent => continue,
                                ErrorClass::Transient => return self.pause(),
                            }
                        }
                        Blame::Record => {
                            let r = match self.state.retrying.take() {
                                Some(mut r) if r.offset == first => {
                                    r.attempts += 1;
                                    r
                                }
                                _ => Retrying {
                                    offset: first,
                                    attempts: 1,
                                    first_failure: Utc::now(),
                                },
                            };
                            if class == ErrorClass::Permanent || self.over_limit(r.attempts) {
                                let next =
                                    self.give_up(&records[i], &e, r.attempts, r.first_failure);
                                let next = next.await;
                                if next != Next::Continue {
                                    return next;
                                }
                                i += 1;
                                continue;
                            }
                            self.events.record_retrying(first, r.attempts, class, &e);
                            self.state.retrying = Some(r);
                            return self.pause();
                        }
                    }
                }
            }
        }
        Next::Continue
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
                partition: self.partition,
                offset: r.offset,
            };
            let decoded = self.check_signature(&r.record).and_then(|()| {
                Envelope::decode(r.record.value.as_deref())?.checked(
                    source,
                    Checks {
                        max_future: self.cfg.occurred_at_max_future,
                        record_timestamp: Some(r.record.timestamp),
                        remap: self.cfg.remap.as_deref(),
                    },
                )
            });
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

    /// With `ENVELOPE_SIGNING_KEYS`, the record must carry a signature of
    /// one of them (checked before anything reads the value).
    fn check_signature(&self, record: &Record) -> Result<(), DecodeError> {
        match &self.cfg.signer {
            Some(signer) => Ok(signer.verify(record)?),
            None => Ok(()),
        }
    }

    /// The fenced move of a commit that ends with `last`, at `next`.
    fn advance(&self, next: i64, last: &Record) -> Advance {
        Advance {
            expected: self.state.position.stored,
            next,
            topic_id: self.state.topic_id,
            digest: record_digest(last),
        }
    }

    /// A commit was fenced: the stored row is not what the loop thought (an
    /// operator moved it). Start again from what the database holds.
    fn moved(&mut self, found: Option<i64>) -> Next {
        self.events.moved(found);
        self.state.phase = Phase::Starting;
        self.pause()
    }

    fn over_limit(&self, attempts: u32) -> bool {
        self.cfg.max_attempts.is_some_and(|m| attempts >= m)
    }

    /// Dead-letters a record that can never be applied (or whose retries ran
    /// out) and steps over it: the dead letter is published and the stored
    /// offset moves past the record in one fenced transaction, so only the
    /// partition's owner ever writes a dead letter, and the offset moves
    /// only once the broker has acknowledged it. A crash in between repeats
    /// the dead letter on restart; it never loses it.
    async fn give_up(
        &mut self,
        record: &RecordAndOffset,
        e: &ProcessError,
        attempts: u32,
        first_failure: DateTime<Utc>,
    ) -> Next {
        let offset = record.offset;
        let f = Failure {
            source: SourcePosition {
                topic: self.cfg.topic.clone(),
                partition: self.partition,
                offset,
            },
            class: e.class(),
            message: e.to_string(),
            attempts,
            first_failure,
        };
        let event_id = record.record.headers.get(HEADER_EVENT_ID);
        self.events.dead_lettering(
            offset,
            &lossy(event_id.map(Vec::as_slice)),
            &lossy(record.record.key.as_deref()),
            f.class,
            attempts,
            &f.message,
            self.sink.dead_letter_topic(),
        );
        let advance = self.advance(offset + 1, &record.record);
        let r = self.sink.dead_letter(advance, &record.record, &f).await;
        match sort(r.map(|()| Outcome::default())) {
            Applied::Committed(_) => {
                self.state
                    .position
                    .committed(offset + 1, advance.topic_id, advance.digest);
                self.state.dead_letter_refusals = 0;
                self.events.dead_lettered(offset + 1);
                Next::Continue
            }
            Applied::Moved(found) => self.moved(found),
            Applied::LeaseLost => self.lost(),
            Applied::Failed(e @ ProcessError::DeadLetter { refused: true, .. }) => {
                self.events.dead_letter_failed(offset, &e);
                self.state.dead_letter_refusals += 1;
                if self.state.dead_letter_refusals < DEAD_LETTER_REFUSALS_BEFORE_STOP {
                    return self.pause();
                }
                self.state.dead_letter_refusals = 0;
                let reason = format!(
                    "the dead-letter topic refused the dead letter of offset {offset} {} times: \
                     {e}. The record is neither applied nor skipped. Check the dead-letter \
                     topic ({}): its max.message.bytes, its ACLs; then restart payhook to try \
                     again, or {}",
                    DEAD_LETTER_REFUSALS_BEFORE_STOP,
                    self.sink.dead_letter_topic(),
                    self.reset_hint()
                );
                self.stop(
                    Stop::DeadLetterRefused,
                    "its dead letter is refused",
                    reason,
                )
            }
            Applied::Failed(e) => {
                self.events.dead_letter_failed(offset, &e);
                self.pause()
            }
        }
    }

    /// A fetch from `from` was refused as out of range: finds out why, and
    /// stops, saying which records are out of reach and what an operator can
    /// do. Nothing moves here, with one exception: when only the record
    /// before the position was deleted (retention), in a topic of the same
    /// ID, the loop reads on from the position without comparing it.
    async fn out_of_range(&mut self, from: i64) -> Next {
        let next = self.state.position.next;
        if let Ok(Some(id)) = self.log.topic_id().await {
            if id != self.state.topic_id {
                let reason = self.recreated(self.state.topic_id, id);
                return self.stop(Stop::Recreated, "its topic was re-created", reason);
            }
        }
        let reset = self.reset_hint();
        match self.log.bounds().await {
            Ok((earliest, _)) if from < next && earliest == next => {
                self.state.position.tail = None;
                Next::Continue
            }
            Ok((earliest, _)) if next < earliest => {
                let reason = format!(
                    "offset {next} is below the log start {earliest}: records {next}..={} were \
                     deleted (retention) before they were applied; nothing was skipped. {reset}",
                    earliest - 1
                );
                self.stop(Stop::Deleted, "its offset is below the log start", reason)
            }
            Ok((_, latest)) if next > latest => {
                let reason = format!(
                    "offset {next} is beyond the log end {latest}: the log was truncated (an \
                     unclean leader election) or re-created, and records it holds, or will \
                     hold, from offset {latest} on may be another history that was never \
                     applied. Nothing was skipped, and the partition does not go on by itself \
                     whatever the log end does later. {reset}"
                );
                self.stop(Stop::BeyondEnd, "its offset is beyond the log end", reason)
            }
            Ok((earliest, latest)) => {
                let reason = format!(
                    "the broker says offset {from} is out of range, yet the log spans \
                     {earliest}..{latest}; probing while stopped. {reset}"
                );
                self.stop(Stop::Unsettled, "the broker refused its offset", reason)
            }
            Err(e) => {
                let reason = format!(
                    "the broker says offset {from} is out of range, and the log's bounds \
                     cannot be read ({e}); probing while stopped. {reset}"
                );
                self.stop(Stop::Unsettled, "the broker refused its offset", reason)
            }
        }
    }
}

/// Bytes from a record (a header, the key) as text for a log line: an
/// excerpt.
fn lossy(b: Option<&[u8]>) -> String {
    b.map(|b| crate::logging::excerpt_bytes(b, crate::logging::EXCERPT_BYTES))
        .unwrap_or_default()
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
) -> (Range<i32>, i32) {
    if one_batch {
        (1..1, max_wait_ms)
    } else if lingering {
        (min_bytes.min(max_bytes)..max_bytes, linger_ms)
    } else {
        (1..max_bytes, max_wait_ms)
    }
}

#[cfg(test)]
mod tests;
