//! The partition loop's decisions, driven through its two seams with a
//! scripted log and an in-memory sink: the real [`PartitionLoop`], step by
//! step. (The same loop against the real broker and database is in
//! `tests/it`: pipeline, stalls, dead letters, fleet.)

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
};

use serde_json::{json, value::RawValue};

use super::*;
use crate::{
    consume::{dlq, health::ConsumerHealth},
    kafka::envelope::{DecodeError, EventType},
    metrics::Metrics,
};

/// A valid payment envelope for order `ord_<n % 7>`.
fn payment_record(n: i64) -> Record {
    let body = json!({"provider_event_id": format!("evt_{n}"), "order_id": format!("ord_{}", n % 7),
                      "user_id": "usr_1", "status": "succeeded", "amount": 100, "currency": "EUR",
                      "occurred_at": "2026-01-01T10:00:00Z"});
    Envelope::new(
        EventType::OrderWebhook,
        &format!("ord_{}", n % 7),
        RawValue::from_string(body.to_string()).unwrap(),
    )
    .to_record()
}

fn poison_record() -> Record {
    Record {
        key: Some(b"ord_x".to_vec()),
        value: Some(b"not json".to_vec()),
        headers: Default::default(),
        timestamp: Utc::now(),
    }
}

/// The topic ID of the scripted topics (and of the stored rows that name
/// one).
const TOPIC: Uuid = Uuid::from_u128(0x1111);

/// A partition's log: records at offsets `earliest..end`, answered as the
/// broker would, with scripted failures first.
struct ScriptedLog {
    records: Vec<RecordAndOffset>,
    earliest: i64,
    topic_id: Uuid,
    /// Errors the next fetches return, in order, before any data.
    failures: VecDeque<FetchError>,
    /// From this offset on, batches cannot be decoded; one batch (one
    /// record here) at a time can be read up to it.
    unreadable_from: Option<i64>,
    /// Every fetch asked for: offset, bytes, wait.
    fetches: Vec<(i64, Range<i32>, i32)>,
    reconnects: u32,
}

impl ScriptedLog {
    fn with(records: Vec<Record>) -> Self {
        Self::starting_at(0, records)
    }

    fn starting_at(earliest: i64, records: Vec<Record>) -> Self {
        let records = records
            .into_iter()
            .zip(earliest..)
            .map(|(record, offset)| RecordAndOffset { record, offset })
            .collect();
        Self {
            records,
            earliest,
            topic_id: TOPIC,
            failures: VecDeque::new(),
            unreadable_from: None,
            fetches: Vec::new(),
            reconnects: 0,
        }
    }

    fn end(&self) -> i64 {
        self.earliest + self.records.len() as i64
    }
}

impl Log for ScriptedLog {
    async fn connect(&mut self) -> Result<(), KafkaError> {
        Ok(())
    }

    async fn reconnect(&mut self) -> Result<(), KafkaError> {
        self.reconnects += 1;
        Ok(())
    }

    async fn fetch(
        &mut self,
        offset: i64,
        bytes: Range<i32>,
        max_wait_ms: i32,
    ) -> Result<Fetched, FetchError> {
        self.fetches.push((offset, bytes.clone(), max_wait_ms));
        if let Some(e) = self.failures.pop_front() {
            return Err(e);
        }
        if offset < self.earliest || offset > self.end() {
            return Err(FetchError::OutOfRange);
        }
        let one_batch = bytes == (1..1);
        let mut from = usize::try_from(offset - self.earliest).unwrap();
        let mut to = self.records.len();
        if let Some(u) = self.unreadable_from {
            if offset >= u || (!one_batch && to > usize::try_from(u - self.earliest).unwrap()) {
                return Err(FetchError::Unreadable("unknown compression lz4".into()));
            }
        }
        if one_batch {
            to = (from + 1).min(to);
        }
        from = from.min(to);
        Ok(Fetched {
            records: self.records[from..to].to_vec(),
            high_watermark: self.end(),
        })
    }

    async fn bounds(&mut self) -> Result<(i64, i64), KafkaError> {
        Ok((self.earliest, self.end()))
    }

    async fn topic_id(&mut self) -> Result<Option<Uuid>, KafkaError> {
        Ok(Some(self.topic_id))
    }
}

/// One transaction the sink saw.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Tx {
    offsets: Range<i64>,
    combine: bool,
    committed: bool,
}

/// The database: a stored offset, fenced like the real one, and records
/// that fail whenever a transaction holds them.
#[derive(Default)]
struct MemorySink {
    stored: Mutex<Option<Stored>>,
    failing: Mutex<HashMap<i64, ErrorClass>>,
    lease_lost: Mutex<bool>,
    /// The dead-letter topic refuses every dead letter (too large).
    refuse_dead_letters: Mutex<bool>,
    txs: Mutex<Vec<Tx>>,
    /// Offsets dead-lettered, with the error class their letter carries.
    dead: Mutex<Vec<(i64, String)>>,
    /// Offsets of every event applied, in commit order.
    applied: Mutex<Vec<i64>>,
    /// Permanent failures name their record, as a pin conflict does.
    named: Mutex<bool>,
}

impl MemorySink {
    fn failing(pairs: &[(i64, ErrorClass)]) -> Self {
        let s = Self::default();
        s.failing.lock().unwrap().extend(pairs.iter().copied());
        s
    }

    /// The row at `next` of the scripted topic, as a reset leaves it.
    fn at(next: i64) -> Self {
        let s = Self::default();
        s.set(next, Some(TOPIC));
        s
    }

    /// What an operator's reset writes.
    fn set(&self, next: i64, topic_id: Option<Uuid>) {
        *self.stored.lock().unwrap() = Some(Stored {
            next,
            topic_id,
            digest: None,
        });
    }

    /// As `db::offsets::advance`: the lease, the expected offset and the
    /// topic ID (or none yet) are checked; the move writes all three.
    fn fence(&self, a: Advance) -> Result<(), ProcessError> {
        if *self.lease_lost.lock().unwrap() {
            return Err(ProcessError::LeaseLost { epoch: 1 });
        }
        let mut stored = self.stored.lock().unwrap();
        let found = stored.as_ref().map(|s| s.next);
        let same_topic = stored
            .as_ref()
            .is_none_or(|s| s.topic_id.is_none_or(|t| t == a.topic_id));
        if found != a.expected || !same_topic {
            return Err(ProcessError::Fenced {
                expected: a.expected,
                found,
            });
        }
        *stored = Some(Stored {
            next: a.next,
            topic_id: Some(a.topic_id),
            digest: Some(a.digest),
        });
        Ok(())
    }

    fn dead(&self) -> Vec<i64> {
        self.dead.lock().unwrap().iter().map(|d| d.0).collect()
    }
}

fn offset_of(e: &Event) -> i64 {
    match e {
        Event::Payment(p) => p.source.offset,
        Event::Chargeback(c) => c.source.offset,
        Event::PendingChargeback(d) => d.event.source.offset,
    }
}

impl Sink for MemorySink {
    async fn stored(&self) -> Result<Option<Stored>, DbError> {
        Ok(self.stored.lock().unwrap().clone())
    }

    async fn apply(
        &self,
        advance: Advance,
        events: Vec<Event>,
        combine: bool,
    ) -> Result<Outcome, ProcessError> {
        let next = advance.next;
        let offsets: Vec<i64> = events.iter().map(offset_of).collect();
        let first = offsets[0];
        let failing = self.failing.lock().unwrap().clone();
        let fails = offsets
            .iter()
            .find_map(|o| failing.get(o).map(|c| (*o, *c)));
        self.txs.lock().unwrap().push(Tx {
            offsets: first..next,
            combine,
            committed: fails.is_none(),
        });
        if fails.is_none() {
            self.fence(advance)?;
        } else if *self.lease_lost.lock().unwrap() {
            return Err(ProcessError::LeaseLost { epoch: 1 });
        }
        match fails {
            Some((offset, ErrorClass::Permanent)) if *self.named.lock().unwrap() => {
                Err(ProcessError::Db(DbError::Conflict(Box::new(
                    crate::domain::orders::Conflict {
                        order_id: "ord".into(),
                        field: "amount",
                        pinned: "1".into(),
                        found: "2".into(),
                        event: "generic event e".into(),
                        read_at: Box::new(SourcePosition {
                            topic: "t".into(),
                            partition: 0,
                            offset,
                        }),
                    },
                ))))
            }
            Some((offset, ErrorClass::Permanent)) => Err(ProcessError::Decode {
                offset,
                source: DecodeError::NoValue,
            }),
            Some((_, ErrorClass::Transient)) => Err(ProcessError::Db(DbError::Timeout {
                what: "a scripted transaction",
                after: Duration::from_secs(1),
            })),
            None => {
                self.applied.lock().unwrap().extend(&offsets);
                Ok(Outcome {
                    stored: offsets.len(),
                    ..Outcome::default()
                })
            }
        }
    }

    async fn dead_letter(
        &self,
        advance: Advance,
        original: &Record,
        failure: &Failure,
    ) -> Result<(), ProcessError> {
        let letter = dlq::dead_letter(original, failure, dlq::DEFAULT_MAX_MESSAGE_BYTES);
        if *self.refuse_dead_letters.lock().unwrap() {
            return Err(ProcessError::DeadLetter {
                message: "the broker refused the record: MessageTooLarge".into(),
                refused: true,
            });
        }
        self.fence(advance)?;
        let class = String::from_utf8(letter.headers[dlq::H_ERROR_CLASS].clone()).unwrap();
        self.dead.lock().unwrap().push((advance.next - 1, class));
        Ok(())
    }

    fn dead_letter_topic(&self) -> &str {
        "dlq"
    }
}

fn config(max_batch: usize, max_attempts: Option<u32>) -> Arc<ConsumerConfig> {
    Arc::new(ConsumerConfig {
        group: "g".into(),
        topic: "t".into(),
        max_batch,
        fetch_max_bytes: 4 << 20,
        fetch_max_wait: Duration::from_millis(250),
        linger: Duration::from_millis(20),
        fetch_min_bytes: 256 << 10,
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_secs(1),
        max_attempts,
        occurred_at_max_future: Duration::from_secs(86_400),
        db_deadline: Duration::from_secs(5),
        publish_timeout: Duration::from_secs(5),
        first_start: FirstStart::Earliest,
        signer: None,
        remap: None,
    })
}

struct Harness {
    lp: PartitionLoop<ScriptedLog, MemorySink>,
    health: ConsumerHealth,
}

fn harness(log: ScriptedLog, sink: MemorySink, cfg: Arc<ConsumerConfig>) -> Harness {
    let health = ConsumerHealth::new(Duration::from_secs(60), Metrics::new());
    let events = PartitionEvents::new(&Metrics::new(), &health, "t", 0);
    let lp = PartitionLoop::new(log, sink, cfg, 0, 1, events, CancellationToken::new());
    Harness { lp, health }
}

impl Harness {
    /// Steps until the position reaches `end` or `limit` steps were taken;
    /// returns every step's answer.
    async fn until(&mut self, end: i64, limit: usize) -> Vec<Next> {
        let mut seen = Vec::new();
        while seen.len() < limit
            && !(self.lp.state.phase == Phase::Running && self.lp.state.position.next >= end)
        {
            seen.push(self.lp.step().await);
        }
        seen
    }

    fn txs(&self) -> Vec<Tx> {
        self.lp.sink.txs.lock().unwrap().clone()
    }

    fn stopped_reason(&self) -> Option<String> {
        self.health.report().into_iter().find_map(|r| r.stopped)
    }
}

fn records(n: i64) -> Vec<Record> {
    (0..n).map(payment_record).collect()
}

#[tokio::test]
async fn halving_blames_exactly_the_bad_records_in_few_transactions() {
    let mut h = harness(
        ScriptedLog::with(records(2000)),
        MemorySink::failing(&[(1500, ErrorClass::Permanent)]),
        config(2000, None),
    );
    let steps = h.until(2000, 100).await;
    assert_eq!(h.lp.state.position.next, 2000);
    assert_eq!(h.lp.sink.dead(), vec![1500]);
    // A permanent failure is the record's: halving goes on at once, the
    // partition never pauses for it.
    assert!(steps.iter().all(|s| *s == Next::Continue), "{steps:?}");
    // 1 failed batch, ~2·log2(2000) while halving, the rest (the dead
    // letter's transaction is the sink's own).
    let txs = h.txs();
    assert!(txs.len() <= 2 * 11 + 2, "{} transactions", txs.len());
    // While isolating, no transaction is shared with other partitions.
    assert!(txs[0].combine && txs[1..txs.len() - 1].iter().all(|t| !t.combine));
    // Every good record applied once, in order.
    let applied = h.lp.sink.applied.lock().unwrap().clone();
    let want: Vec<i64> = (0..2000).filter(|o| *o != 1500).collect();
    assert_eq!(applied, want);

    let bad = [0, 1, 999, 1999];
    let pairs: Vec<(i64, ErrorClass)> = bad.iter().map(|o| (*o, ErrorClass::Permanent)).collect();
    let mut h = harness(
        ScriptedLog::with(records(2000)),
        MemorySink::failing(&pairs),
        config(2000, None),
    );
    h.until(2000, 200).await;
    assert_eq!(h.lp.sink.dead(), bad.to_vec());

    let mut h = harness(
        ScriptedLog::with(records(10)),
        MemorySink::default(),
        config(4, None),
    );
    h.until(10, 20).await;
    let ranges: Vec<Range<i64>> = h.txs().into_iter().map(|t| t.offsets).collect();
    assert_eq!(ranges, vec![0..4, 4..8, 8..10]);
}

/// A partition where one record in ten contradicts its order: each is
/// reached by name, in about three transactions, not by halving.
#[tokio::test]
async fn records_a_failure_names_are_set_apart_in_a_few_transactions_each() {
    let bad: Vec<i64> = (0..2000).filter(|o| o % 10 == 7).collect();
    let pairs: Vec<(i64, ErrorClass)> = bad.iter().map(|o| (*o, ErrorClass::Permanent)).collect();
    let run = |named: bool| {
        let pairs = pairs.clone();
        async move {
            let sink = MemorySink::failing(&pairs);
            *sink.named.lock().unwrap() = named;
            let mut h = harness(ScriptedLog::with(records(2000)), sink, config(2000, None));
            h.until(2000, 5000).await;
            assert_eq!(h.lp.state.position.next, 2000);
            let applied = h.lp.sink.applied.lock().unwrap().clone();
            let want: Vec<i64> = (0..2000).filter(|o| o % 10 != 7).collect();
            assert_eq!(applied, want);
            let txs = h.txs();
            // Records re-applied in transactions that failed.
            let wasted: i64 = txs
                .iter()
                .filter(|t| !t.committed)
                .map(|t| t.offsets.end - t.offsets.start)
                .sum();
            (h.lp.sink.dead(), txs.len(), wasted)
        }
    };
    let (dead, named_txs, named_wasted) = run(true).await;
    assert_eq!(dead, bad);
    // Per bad record: the failed run, the run before it, itself alone.
    assert!(named_txs <= 3 * bad.len() + 1, "{named_txs} transactions");
    // The first full batch, then short runs while they are dense: about
    // twice the gap per failure, not a full batch.
    assert!(
        named_wasted <= 2000 + 25 * bad.len() as i64,
        "{named_wasted} records in failed transactions"
    );
    let (dead, halving_txs, halving_wasted) = run(false).await;
    assert_eq!(dead, bad);
    assert!(halving_txs > 2 * named_txs, "{halving_txs} vs {named_txs}");
    assert!(
        halving_wasted > 10 * named_wasted,
        "{halving_wasted} vs {named_wasted}"
    );
}

#[tokio::test]
async fn a_transient_failure_pauses_with_growing_backoff_and_never_moves_past_the_record() {
    let mut h = harness(
        ScriptedLog::with(records(6)),
        MemorySink::failing(&[(3, ErrorClass::Transient)]),
        config(100, None),
    );
    let steps = h.until(6, 40).await;
    // It never got past offset 3, and nothing was dead-lettered.
    assert_eq!(h.lp.state.position.next, 3);
    assert!(h.lp.sink.dead().is_empty());
    let waits: Vec<Duration> = steps
        .iter()
        .filter_map(|s| match s {
            Next::Wait(d) => Some(*d),
            _ => None,
        })
        .collect();
    assert!(waits.len() > 20, "{steps:?}");
    // Full jitter under a ceiling that doubles: min·2^n, at most the max.
    for (n, d) in waits.iter().enumerate() {
        let ceiling =
            (Duration::from_millis(10) * 2u32.pow(n.min(20) as u32)).min(Duration::from_secs(1));
        assert!(
            *d >= Duration::from_millis(10) && *d <= ceiling,
            "pause {n}: {d:?}"
        );
    }
    assert!(
        waits.iter().any(|d| *d > Duration::from_millis(20)),
        "{waits:?}"
    );

    // Healed: everything from the record on is applied, once, in order.
    h.lp.sink.failing.lock().unwrap().clear();
    h.until(6, 10).await;
    assert_eq!(*h.lp.sink.applied.lock().unwrap(), vec![0, 1, 2, 3, 4, 5]);
    // ...and the backoff starts from the bottom again.
    assert_eq!(h.lp.state.backoff.attempts(), 0);
}

#[tokio::test]
async fn a_record_that_keeps_failing_is_dead_lettered_after_max_attempts() {
    let mut h = harness(
        ScriptedLog::with(records(6)),
        MemorySink::failing(&[(3, ErrorClass::Transient)]),
        config(100, Some(3)),
    );
    h.until(6, 40).await;
    assert_eq!(h.lp.state.position.next, 6);
    let dead = h.lp.sink.dead.lock().unwrap().clone();
    assert_eq!(dead, vec![(3, "transient".to_owned())]);
    // Three transactions held record 3 alone, the last of which gave up.
    let alone = h.txs().iter().filter(|t| t.offsets == (3..4)).count();
    assert_eq!(alone, 3);
    assert_eq!(*h.lp.sink.applied.lock().unwrap(), vec![0, 1, 2, 4, 5]);
}

#[tokio::test]
async fn an_undecodable_record_is_dead_lettered_where_it_stands() {
    let mut rs = records(5);
    rs[2] = poison_record();
    let mut h = harness(
        ScriptedLog::with(rs),
        MemorySink::default(),
        config(100, None),
    );
    let steps = h.until(5, 10).await;
    assert!(steps.iter().all(|s| *s == Next::Continue), "{steps:?}");
    let dead = h.lp.sink.dead.lock().unwrap().clone();
    assert_eq!(dead, vec![(2, "permanent".to_owned())]);
    let ranges: Vec<Range<i64>> = h.txs().into_iter().map(|t| t.offsets).collect();
    assert_eq!(ranges, vec![0..2, 3..5]);
}

#[tokio::test]
async fn out_of_range_stops_until_an_operator_moves_the_offset() {
    // The log starts at 10 (retention deleted 0..10); the stored offset is 5.
    let recs: Vec<Record> = (10..20).map(payment_record).collect();
    let mut h = harness(
        ScriptedLog::starting_at(10, recs),
        MemorySink::at(5),
        config(100, None),
    );
    assert_eq!(h.lp.step().await, Next::Continue);
    assert_eq!(h.lp.state.position.next, 5);
    assert_eq!(h.lp.step().await, Next::Wait(STOPPED_POLL));
    assert_eq!(h.lp.state.phase, Phase::Stopped(Stop::Deleted));
    let reason = h.stopped_reason().expect("reported stopped");
    assert!(reason.contains("below the log start 10"), "{reason}");
    assert!(reason.contains("records 5..=9 were deleted"), "{reason}");
    // Stopped, it stays stopped: nothing applied, the position unmoved.
    for _ in 0..3 {
        assert_eq!(h.lp.step().await, Next::Wait(STOPPED_POLL));
    }
    assert_eq!(h.lp.state.position.next, 5);
    assert!(h.txs().is_empty());
    // The operator's reset: it starts again from there.
    h.lp.sink.set(10, Some(TOPIC));
    assert_eq!(h.lp.step().await, Next::Continue);
    assert_eq!(h.lp.step().await, Next::Continue);
    assert_eq!(h.lp.state.phase, Phase::Running);
    assert_eq!(h.stopped_reason(), None);
    h.until(20, 5).await;
    assert_eq!(
        *h.lp.sink.applied.lock().unwrap(),
        (10..20).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn an_offset_that_is_readable_again_in_the_same_history_resumes_by_itself() {
    let mut log = ScriptedLog::with(records(3));
    log.failures.push_back(FetchError::OutOfRange);
    let mut h = harness(log, MemorySink::default(), config(100, None));
    h.lp.step().await;
    assert_eq!(h.lp.step().await, Next::Wait(STOPPED_POLL));
    assert_eq!(h.lp.state.phase, Phase::Stopped(Stop::Unsettled));
    // The probe at the position succeeds (a leader change had made it look
    // out of range).
    assert_eq!(h.lp.step().await, Next::Continue);
    assert_eq!(h.lp.state.phase, Phase::Running);
    h.until(3, 5).await;
    assert_eq!(h.lp.state.position.next, 3);
}

#[tokio::test]
async fn an_unreadable_batch_applies_everything_before_it_then_stops() {
    let mut log = ScriptedLog::with(records(10));
    log.unreadable_from = Some(6);
    let mut h = harness(log, MemorySink::default(), config(100, None));
    let steps = h.until(10, 30).await;
    assert_eq!(*steps.last().unwrap(), Next::Wait(STOPPED_POLL));
    assert_eq!(h.lp.state.phase, Phase::Stopped(Stop::Unreadable));
    assert_eq!(h.lp.state.position.next, 6);
    assert_eq!(
        *h.lp.sink.applied.lock().unwrap(),
        (0..6).collect::<Vec<_>>()
    );
    let reason = h.stopped_reason().expect("reported stopped");
    assert!(reason.contains("offset 6 cannot be read"), "{reason}");
    // One batch at a time up to it.
    assert!(h.lp.log.fetches.iter().any(|f| f.1 == (1..1)));
    // And it stays stopped: no operator moved it.
    assert_eq!(h.lp.step().await, Next::Wait(STOPPED_POLL));
    assert_eq!(h.lp.state.position.next, 6);
}

#[tokio::test]
async fn a_busy_partition_lingers_and_an_idle_one_long_polls() {
    let mut h = harness(
        ScriptedLog::with(records(3)),
        MemorySink::default(),
        config(100, None),
    );
    for _ in 0..4 {
        h.lp.step().await;
    }
    let f = &h.lp.log.fetches;
    let (max, min) = (4 << 20, 256 << 10);
    // Idle: the first byte ends the wait. After records: wait for
    // KAFKA_FETCH_MIN_BYTES, at most CONSUMER_LINGER. After a fetch that
    // brought nothing new: idle again. Once a record was handled, every
    // fetch starts at it, to recognise it.
    assert_eq!(
        f.as_slice(),
        &[(0, 1..max, 250), (2, min..max, 20), (2, 1..max, 250)]
    );
}

#[tokio::test]
async fn repeated_fetch_failures_rebuild_the_connection() {
    let mut log = ScriptedLog::with(records(1));
    for _ in 0..FETCH_FAILURES_BEFORE_RECONNECT {
        log.failures
            .push_back(FetchError::Failed(KafkaError::Timeout {
                what: "fetching",
                after: Duration::from_secs(1),
            }));
    }
    let mut h = harness(log, MemorySink::default(), config(100, None));
    h.lp.step().await;
    for n in 1..=FETCH_FAILURES_BEFORE_RECONNECT {
        assert!(matches!(h.lp.step().await, Next::Wait(_)));
        let want = u32::from(n == FETCH_FAILURES_BEFORE_RECONNECT);
        assert_eq!(h.lp.log.reconnects, want, "after {n} failures");
    }
    h.until(1, 3).await;
    assert_eq!(h.lp.state.position.next, 1);
}

#[tokio::test]
async fn a_lost_lease_ends_the_loop_and_an_operator_move_is_followed() {
    let mut h = harness(
        ScriptedLog::with(records(5)),
        MemorySink::default(),
        config(100, None),
    );
    h.lp.step().await;
    // Someone moved the stored offset to 3 after the loop read it: the
    // commit is fenced, and the loop starts again from the database's row.
    h.lp.sink.set(3, Some(TOPIC));
    assert!(matches!(h.lp.step().await, Next::Wait(_)));
    assert_eq!(h.lp.state.phase, Phase::Starting);
    h.until(5, 5).await;
    assert_eq!(*h.lp.sink.applied.lock().unwrap(), vec![3, 4]);

    let mut h = harness(
        ScriptedLog::with(records(5)),
        MemorySink::default(),
        config(100, None),
    );
    h.lp.step().await;
    *h.lp.sink.lease_lost.lock().unwrap() = true;
    assert_eq!(h.lp.step().await, Next::End);
    assert!(h.lp.sink.applied.lock().unwrap().is_empty());
}

/// The log's records at `range` in another history: same offsets, other
/// records (a topic re-created, or an unclean leader election).
fn other_history(n: i64) -> Vec<Record> {
    (0..n).map(|i| payment_record(1000 + i)).collect()
}

#[tokio::test]
async fn a_recreated_topic_stops_the_partition_until_an_operator_decides() {
    // 40 applied in the old log; the topic is re-created (another ID) and
    // 100 new records are written before the consumer starts again.
    let mut old = harness(
        ScriptedLog::with(records(40)),
        MemorySink::default(),
        config(100, None),
    );
    old.until(40, 10).await;
    let sink = std::mem::take(&mut old.lp.sink);
    let mut log = ScriptedLog::with(other_history(100));
    log.topic_id = Uuid::from_u128(0x2222);
    let mut h = harness(log, sink, config(100, None));
    assert_eq!(h.lp.step().await, Next::Wait(STOPPED_POLL));
    assert_eq!(h.lp.state.phase, Phase::Stopped(Stop::Recreated));
    let reason = h.stopped_reason().unwrap();
    assert!(
        reason.contains("was re-created")
            && reason.contains(&TOPIC.to_string())
            && reason.contains(&Uuid::from_u128(0x2222).to_string()),
        "{reason}"
    );
    // Whatever the log does, it stays stopped and applies nothing.
    for _ in 0..5 {
        assert_eq!(h.lp.step().await, Next::Wait(STOPPED_POLL));
    }
    assert_eq!(h.lp.sink.applied.lock().unwrap().len(), 40);
    // The operator's reset to the new log's start, adopting its ID.
    h.lp.sink.set(0, Some(Uuid::from_u128(0x2222)));
    h.until(100, 10).await;
    let applied = h.lp.sink.applied.lock().unwrap().clone();
    assert_eq!(applied.len(), 140, "every new record applied, none skipped");
    assert_eq!(&applied[40..], (0..100).collect::<Vec<_>>().as_slice());
}

#[tokio::test]
async fn a_log_whose_history_changed_under_a_running_consumer_stops_it() {
    let mut h = harness(
        ScriptedLog::with(records(40)),
        MemorySink::default(),
        config(100, None),
    );
    h.until(40, 10).await;
    // Same topic ID, another history at the same offsets (an unclean leader
    // election truncated the log, then other records were written).
    h.lp.log.records = ScriptedLog::with(other_history(60)).records;
    assert_eq!(h.lp.step().await, Next::Wait(STOPPED_POLL));
    assert_eq!(h.lp.state.phase, Phase::Stopped(Stop::HistoryChanged));
    let reason = h.stopped_reason().unwrap();
    assert!(
        reason.contains("offset 39") && reason.contains("another record"),
        "{reason}"
    );
    for _ in 0..3 {
        assert_eq!(h.lp.step().await, Next::Wait(STOPPED_POLL));
    }
    assert_eq!(h.lp.sink.applied.lock().unwrap().len(), 40);
    assert_eq!(h.lp.state.position.next, 40);
}

#[tokio::test]
async fn an_offset_beyond_the_log_end_never_resumes_by_itself() {
    let mut h = harness(
        ScriptedLog::with(records(40)),
        MemorySink::default(),
        config(100, None),
    );
    h.until(40, 10).await;
    // The log is truncated to 10 records...
    h.lp.log.records.truncate(10);
    assert_eq!(h.lp.step().await, Next::Wait(STOPPED_POLL));
    assert_eq!(h.lp.state.phase, Phase::Stopped(Stop::BeyondEnd));
    let reason = h.stopped_reason().unwrap();
    assert!(reason.contains("beyond the log end 10"), "{reason}");
    // ...then grows past the old position with other records: still
    // stopped, nothing applied.
    h.lp.log.records = ScriptedLog::with(other_history(100)).records;
    for _ in 0..5 {
        assert_eq!(h.lp.step().await, Next::Wait(STOPPED_POLL));
    }
    assert_eq!(h.lp.sink.applied.lock().unwrap().len(), 40);
}

#[tokio::test]
async fn a_first_start_that_cannot_see_offset_0_says_so_or_stops() {
    let recs = || (5..8).map(payment_record).collect::<Vec<_>>();
    // Default: starts at the first record still there, and says which were
    // deleted.
    let mut h = harness(
        ScriptedLog::starting_at(5, recs()),
        MemorySink::default(),
        config(100, None),
    );
    h.until(8, 5).await;
    assert_eq!(*h.lp.sink.applied.lock().unwrap(), vec![5, 6, 7]);
    let notice = h.health.report()[0].notice.clone().unwrap();
    assert!(notice.contains("records 0..=4 were deleted"), "{notice}");

    // CONSUMER_FIRST_START=stop: stops until an operator sets a position.
    let mut cfg = (*config(100, None)).clone();
    cfg.first_start = FirstStart::Stop;
    let mut h = harness(
        ScriptedLog::starting_at(5, recs()),
        MemorySink::default(),
        Arc::new(cfg),
    );
    assert_eq!(h.lp.step().await, Next::Wait(STOPPED_POLL));
    assert_eq!(h.lp.state.phase, Phase::Stopped(Stop::FirstStart));
    assert!(
        h.stopped_reason()
            .unwrap()
            .contains("CONSUMER_FIRST_START=stop")
    );
    assert_eq!(h.lp.step().await, Next::Wait(STOPPED_POLL));
    h.lp.sink.set(5, Some(TOPIC));
    h.until(8, 5).await;
    assert_eq!(*h.lp.sink.applied.lock().unwrap(), vec![5, 6, 7]);
}

#[tokio::test]
async fn when_retention_takes_only_the_record_before_the_position_it_reads_on() {
    let mut h = harness(
        ScriptedLog::with(records(10)),
        MemorySink::default(),
        config(100, None),
    );
    h.until(10, 5).await;
    // Retention deletes 0..=9: the log starts at the position, 10.
    let mut log = ScriptedLog::starting_at(10, (10..15).map(payment_record).collect());
    log.topic_id = TOPIC;
    h.lp.log = log;
    h.until(15, 5).await;
    assert_eq!(h.lp.state.phase, Phase::Running);
    assert_eq!(
        *h.lp.sink.applied.lock().unwrap(),
        (0..15).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_dead_letter_the_broker_keeps_refusing_stops_the_partition_loudly() {
    let mut rs = records(4);
    rs[1] = poison_record();
    let sink = MemorySink::default();
    *sink.refuse_dead_letters.lock().unwrap() = true;
    let mut h = harness(ScriptedLog::with(rs), sink, config(100, None));
    let steps = h.until(4, 4).await;
    // Started, then paused and retried, and after the bound stopped, with
    // the reason.
    let n = DEAD_LETTER_REFUSALS_BEFORE_STOP as usize;
    assert_eq!(steps.len(), 1 + n, "{steps:?}");
    assert!(
        steps[1..n]
            .iter()
            .all(|s| matches!(s, Next::Wait(d) if *d < STOPPED_POLL)),
        "{steps:?}"
    );
    assert_eq!(steps[n], Next::Wait(STOPPED_POLL));
    assert_eq!(h.lp.state.phase, Phase::Stopped(Stop::DeadLetterRefused));
    let reason = h.stopped_reason().unwrap();
    assert!(
        reason.contains("refused the dead letter of offset 1"),
        "{reason}"
    );
    // Nothing after the record applied, nothing skipped.
    assert_eq!(*h.lp.sink.applied.lock().unwrap(), vec![0]);
    assert_eq!(h.lp.state.position.next, 1);
    for _ in 0..3 {
        assert_eq!(h.lp.step().await, Next::Wait(STOPPED_POLL));
    }
}
