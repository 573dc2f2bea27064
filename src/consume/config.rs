//! The settings of one consumed topic, gathered from the configuration's
//! sections once, so the partition loop, its sink and the committer read
//! one small struct.

use std::{sync::Arc, time::Duration};

use crate::{
    config::{ConsumerSettings, DatabaseSettings, FirstStart, KafkaSettings},
    kafka::{envelope::Remap, signing::Signer},
};

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
    /// `CONSUMER_FIRST_START`.
    pub first_start: FirstStart,
    /// `ENVELOPE_SIGNING_KEYS`: with keys, a record whose signature does
    /// not hold is dead-lettered before it is decoded.
    pub signer: Option<Signer>,
    /// The providers' mappings, to map a provider's payload again instead
    /// of trusting the record's `mapped` field; set by the service
    /// ([`Self::with_remap`]).
    pub remap: Option<Arc<dyn Remap>>,
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
            first_start: consumer.first_start,
            signer: Signer::from_config(kafka),
            remap: None,
        }
    }

    /// Maps providers' payloads again with `remap`.
    pub fn with_remap(mut self, remap: Arc<dyn Remap>) -> Self {
        self.remap = Some(remap);
        self
    }
}
