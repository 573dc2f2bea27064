//! What the consumer tells the outside world, one function per event.
//!
//! Each event of a partition's life (started, committed, retrying,
//! dead-lettered, stopped, ...) is one method here that writes its log line,
//! moves its metrics and reports to [`ConsumerHealth`] (which `/readyz`,
//! `/status` and the partition gauges read). The partition loop then reads
//! as decisions only, and an event's telemetry can be checked in one place
//! (the idea of vector's `internal_events`).

use std::time::Duration;

use tracing::{debug, error, info, warn};

use super::{classify::ErrorClass, health::ConsumerHealth};
use crate::logging::{EXCERPT_BYTES, excerpt};
use crate::{
    domain::orders::Outcome,
    metrics::{Metrics, RecordLabels},
};

/// An error as a log line or `/readyz` shows it: errors may quote input
/// (a record's fields, a value the database refused), so an excerpt.
fn shown(error: &dyn std::fmt::Display) -> String {
    excerpt(&error.to_string(), 4 * EXCERPT_BYTES).into_owned()
}

/// The name of an error class, as logs and metric labels carry it.
pub fn class_name(c: ErrorClass) -> &'static str {
    match c {
        ErrorClass::Transient => "transient",
        ErrorClass::Permanent => "permanent",
    }
}

/// Events of one consumed topic (the committer's transactions).
#[derive(Clone, Debug)]
pub struct TopicEvents {
    metrics: Metrics,
    topic: String,
}

impl TopicEvents {
    pub fn new(metrics: &Metrics, topic: &str) -> Self {
        Self {
            metrics: metrics.clone(),
            topic: topic.to_owned(),
        }
    }

    fn records(&self, outcome: &'static str, n: usize) {
        if n > 0 {
            self.metrics
                .records
                .get_or_create(&RecordLabels {
                    topic: self.topic.clone(),
                    outcome,
                })
                .inc_by(n as u64);
        }
    }

    /// A consumer transaction ended: `payhook_consumer_transactions_total`.
    pub fn transaction(&self, committed: bool) {
        self.metrics
            .transactions
            .get_or_create(&RecordLabels {
                topic: self.topic.clone(),
                outcome: if committed { "commit" } else { "rollback" },
            })
            .inc();
    }
}

/// Events of one partition consumer.
#[derive(Clone, Debug)]
pub struct PartitionEvents {
    topic_events: TopicEvents,
    health: ConsumerHealth,
    topic: String,
    partition: i32,
}

impl PartitionEvents {
    pub fn new(metrics: &Metrics, health: &ConsumerHealth, topic: &str, partition: i32) -> Self {
        Self {
            topic_events: TopicEvents::new(metrics, topic),
            health: health.clone(),
            topic: topic.to_owned(),
            partition,
        }
    }

    /// The topic's events (transactions are counted per topic).
    pub fn topic(&self) -> &TopicEvents {
        &self.topic_events
    }

    /// The loop found its position and starts fetching at `offset`. Its
    /// counters exist from now on, at 0.
    pub fn started(&self, offset: i64) {
        let (topic, partition) = (&self.topic, self.partition);
        self.health.started(topic, partition, offset);
        info!(%topic, partition, offset, "partition consumer started");
        self.topic_events.metrics.consumer_started(topic);
    }

    /// The loop cannot connect or read its position yet.
    pub fn start_failed(&self, error: &dyn std::fmt::Display) {
        let (topic, partition) = (&self.topic, self.partition);
        let error = shown(error);
        warn!(%topic, partition, %error, "cannot start partition consumer; retrying");
        self.health.failing(topic, partition, error);
    }

    /// The loop ends (shutdown, or the lease moved on).
    pub fn ended(&self, offset: i64) {
        let (topic, partition) = (&self.topic, self.partition);
        info!(%topic, partition, offset, "partition consumer stopped");
    }

    /// A fetch answered: the log ends at `high_watermark`.
    pub fn fetched(&self, high_watermark: i64) {
        self.health
            .fetched(&self.topic, self.partition, high_watermark);
    }

    /// A fetch failed for a reason time may heal.
    pub fn fetch_failed(&self, offset: i64, error: &dyn std::fmt::Display) {
        let (topic, partition) = (&self.topic, self.partition);
        let error = shown(error);
        warn!(%topic, partition, offset, %error, "fetch failed; retrying");
        self.health.failing(topic, partition, error);
    }

    /// After repeated fetch failures, a new connection to the leader.
    pub fn reconnected(&self, result: Result<(), &dyn std::fmt::Display>) {
        let (topic, partition) = (&self.topic, self.partition);
        match result {
            Ok(()) => info!(%topic, partition, "reconnected to the partition leader"),
            Err(error) => {
                let error = shown(error);
                warn!(%topic, partition, %error, "cannot reconnect yet")
            }
        }
    }

    /// A fetched batch could not be read; the loop reads one batch at a time
    /// up to it.
    pub fn unreadable_batch(&self, offset: i64, why: &str) {
        let (topic, partition) = (&self.topic, self.partition);
        let why = excerpt(why, 4 * EXCERPT_BYTES);
        warn!(%topic, partition, offset, error = %why,
              "a fetched batch cannot be read; fetching one batch at a time");
    }

    /// A run committed: the position is now `next`.
    pub fn committed(&self, next: i64, outcome: &Outcome) {
        let (topic, partition) = (&self.topic, self.partition);
        self.topic_events.records("applied", outcome.stored);
        self.topic_events.records("duplicate", outcome.duplicates);
        debug!(%topic, partition, offset = next - 1, stored = outcome.stored,
               duplicates = outcome.duplicates, "records committed");
        self.health.advanced(topic, partition, next);
    }

    /// A transaction was fenced: the stored offset is `found`, not what the
    /// loop expected (an operator moved it).
    pub fn moved(&self, found: Option<i64>) {
        let (topic, partition) = (&self.topic, self.partition);
        warn!(%topic, partition, ?found, "stored offset was moved; resuming from it");
    }

    /// A run of `records` failed; the loop halves it to find the record.
    pub fn run_failed(
        &self,
        offset: i64,
        records: usize,
        class: ErrorClass,
        error: &dyn std::fmt::Display,
    ) {
        let (topic, partition) = (&self.topic, self.partition);
        let error = shown(error);
        warn!(%topic, partition, offset, records, %error, class = class_name(class),
              "applying records failed; isolating the failing record");
        self.health.failing(topic, partition, error);
    }

    /// One record failed on its own for the `attempts`-th time and will be
    /// retried after a pause.
    pub fn record_retrying(
        &self,
        offset: i64,
        attempts: u32,
        class: ErrorClass,
        error: &dyn std::fmt::Display,
    ) {
        let (topic, partition) = (&self.topic, self.partition);
        let error = shown(error);
        warn!(%topic, partition, offset, attempts, %error, class = class_name(class),
              "applying a record failed; will retry it");
        self.health.failing(topic, partition, error);
    }

    /// A transaction of this partition failed (`payhook_consumer_retries_total`
    /// by class): what follows is halving, a pause or a dead letter.
    pub fn apply_failed(&self, class: ErrorClass) {
        self.topic_events
            .metrics
            .retries
            .get_or_create(&RecordLabels {
                topic: self.topic.clone(),
                outcome: class_name(class),
            })
            .inc();
    }

    /// A record is about to be dead-lettered.
    #[allow(clippy::too_many_arguments)]
    pub fn dead_lettering(
        &self,
        offset: i64,
        event_id: &str,
        order_id: &str,
        class: ErrorClass,
        attempts: u32,
        error: &str,
        dlq: &str,
    ) {
        let (topic, partition) = (&self.topic, self.partition);
        let (event_id, order_id) = (
            excerpt(event_id, EXCERPT_BYTES),
            excerpt(order_id, EXCERPT_BYTES),
        );
        let error = excerpt(error, 4 * EXCERPT_BYTES);
        error!(%topic, partition, offset, %event_id, %order_id, class = class_name(class), attempts,
               %error, %dlq, "record cannot be applied; sending it to the dead-letter topic");
    }

    /// The dead letter was acknowledged and the position moved past it.
    pub fn dead_lettered(&self, next: i64) {
        self.topic_events.records("dead_lettered", 1);
        self.health.advanced(&self.topic, self.partition, next);
    }

    /// Publishing a dead letter or storing its offset failed; the loop stays
    /// on the record.
    pub fn dead_letter_failed(&self, offset: i64, error: &dyn std::fmt::Display) {
        let (topic, partition) = (&self.topic, self.partition);
        let error = shown(error);
        warn!(%topic, partition, offset, %error,
              "dead letter or its offset not stored; partition stays on the record");
        self.health.failing(topic, partition, error);
    }

    /// The partition stopped and waits for an operator.
    pub fn stopped(&self, offset: i64, what: &'static str, reason: String) {
        let (topic, partition) = (&self.topic, self.partition);
        error!(%topic, partition, offset, reason = %reason, "partition stopped: {what}");
        self.health.stopped(topic, partition, reason);
    }

    /// The stored offset was moved while the partition was stopped: it
    /// starts again from the database's row.
    pub fn reset_by_operator(&self, from: i64, to: Option<i64>) {
        let (topic, partition) = (&self.topic, self.partition);
        info!(%topic, partition, from, to = ?to,
              "stored offset was moved (payhook offsets reset); starting again from it");
        self.health.resumed(topic, partition, to.unwrap_or(from));
    }

    /// A partition never consumed starts at `earliest > 0`: the records
    /// before it were deleted before payhook read them.
    pub fn first_start_gap(&self, earliest: i64, reason: &str) {
        let (topic, partition) = (&self.topic, self.partition);
        warn!(%topic, partition, earliest, "{reason}; starting at the first record still in the log \
               (CONSUMER_FIRST_START=earliest)");
        self.topic_events
            .metrics
            .first_start_gap
            .get_or_create(&crate::metrics::PartitionLabels {
                topic: topic.clone(),
                partition,
            })
            .set(earliest);
        self.health.notice(topic, partition, reason.to_owned());
    }

    /// The offset the partition stopped on is readable again.
    pub fn back_in_range(&self, offset: i64) {
        let (topic, partition) = (&self.topic, self.partition);
        info!(%topic, partition, offset, "offset is in range again; resuming");
        self.health.resumed(topic, partition, offset);
    }

    /// While stopped, the stored offset could not be read.
    pub fn stored_offset_unreadable(&self, error: &dyn std::fmt::Display) {
        let (topic, partition) = (&self.topic, self.partition);
        let error = shown(error);
        warn!(%topic, partition, %error, "cannot read the stored offset");
    }

    /// The lease was taken over or expired: the loop ends.
    pub fn lease_lost(&self, epoch: i64) {
        let (topic, partition) = (&self.topic, self.partition);
        warn!(%topic, partition, epoch,
              "lease lost (taken over or expired); stopping this partition");
    }
}

/// Events of the sweep of disputes waiting for their payment.
#[derive(Clone, Debug)]
pub struct WaitingEvents {
    metrics: Metrics,
}

impl WaitingEvents {
    pub fn new(metrics: &Metrics) -> Self {
        Self {
            metrics: metrics.clone(),
        }
    }

    /// A waiting dispute was dead-lettered (its payment never came).
    pub fn dead_lettered(&self, n: usize) {
        self.metrics.parked_disputes_dead_lettered.inc_by(n as u64);
    }

    /// How many disputes wait, and for how long the oldest has.
    pub fn waiting(&self, n: i64, oldest: Duration) {
        self.metrics.parked_disputes.set(n);
        self.metrics
            .parked_dispute_oldest_seconds
            .set(i64::try_from(oldest.as_secs()).unwrap_or(i64::MAX));
    }
}
