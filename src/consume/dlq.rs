//! Dead letters: records that can never be applied, parked in their own topic.
//!
//! A dead letter keeps the original key, value and headers unchanged, and
//! adds headers that say where it came from and why it failed:
//!
//! | header | value |
//! |---|---|
//! | `dlq.source.topic` / `dlq.source.partition` / `dlq.source.offset` | where the record was |
//! | `dlq.error.class` | `permanent`, or `transient` when retries ran out (`CONSUMER_MAX_ATTEMPTS`) |
//! | `dlq.error.message` | the error, as logged |
//! | `dlq.attempts` | attempts made |
//! | `dlq.first_failure` | RFC 3339 time of the first failure |
//! | `dlq.original.timestamp` | RFC 3339 (milliseconds) timestamp of the original record |
//!
//! The dead letter's own record timestamp is the time it is written, not the
//! original's: topic retention (`retention.ms`) counts from a record's
//! timestamp, so a dead letter stamped with an old original's time could be
//! deleted as soon as it is written. The original's time is kept in
//! `dlq.original.timestamp`.
//!
//! The consumer moves its offset past a record only after the broker has
//! acknowledged its dead letter; dying between the two repeats the dead
//! letter, never loses it. `payhook dlq list` shows them; `payhook dlq replay`
//! sends chosen ones back to their source topic (harmless for events already
//! applied: events are idempotent by `provider_event_id`). A replayed record
//! is stamped with the time of the replay, for the same reason: it is a new
//! record in its source topic and must outlive that topic's retention until
//! it is consumed. What the pipeline needs of the original time travels
//! inside the envelope (`timestamp`, when the webhook was accepted), which is
//! replayed byte for byte.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use rskafka::record::{Record, RecordAndOffset};
use uuid::Uuid;

use super::classify::ErrorClass;
use crate::{
    domain::orders::SourcePosition,
    kafka::{Kafka, KafkaError, bounded, envelope::HEADER_EVENT_ID, log_bounds},
};

pub const H_SOURCE_TOPIC: &str = "dlq.source.topic";
pub const H_SOURCE_PARTITION: &str = "dlq.source.partition";
pub const H_SOURCE_OFFSET: &str = "dlq.source.offset";
pub const H_ERROR_CLASS: &str = "dlq.error.class";
pub const H_ERROR_MESSAGE: &str = "dlq.error.message";
pub const H_ATTEMPTS: &str = "dlq.attempts";
pub const H_FIRST_FAILURE: &str = "dlq.first_failure";
pub const H_ORIGINAL_TIMESTAMP: &str = "dlq.original.timestamp";

/// Why and where a record failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub source: SourcePosition,
    pub class: ErrorClass,
    pub message: String,
    pub attempts: u32,
    pub first_failure: DateTime<Utc>,
}

fn class_name(c: ErrorClass) -> &'static str {
    match c {
        ErrorClass::Permanent => "permanent",
        ErrorClass::Transient => "transient",
    }
}

/// The dead letter for `original`: same key, value and headers, plus the
/// `dlq.*` headers, stamped with the time it is written (now).
pub fn dead_letter(original: &Record, f: &Failure) -> Record {
    let mut headers = original.headers.clone();
    let mut put = |k: &str, v: String| {
        headers.insert(k.to_owned(), v.into_bytes());
    };
    put(H_SOURCE_TOPIC, f.source.topic.clone());
    put(H_SOURCE_PARTITION, f.source.partition.to_string());
    put(H_SOURCE_OFFSET, f.source.offset.to_string());
    put(H_ERROR_CLASS, class_name(f.class).to_owned());
    put(H_ERROR_MESSAGE, f.message.clone());
    put(H_ATTEMPTS, f.attempts.to_string());
    put(
        H_FIRST_FAILURE,
        f.first_failure.to_rfc3339_opts(SecondsFormat::Millis, true),
    );
    put(
        H_ORIGINAL_TIMESTAMP,
        original
            .timestamp
            .to_rfc3339_opts(SecondsFormat::Millis, true),
    );
    Record {
        key: original.key.clone(),
        value: original.value.clone(),
        headers,
        timestamp: Utc::now(),
    }
}

/// A dead letter as read back from its topic.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    /// Position in the dead-letter topic.
    pub partition: i32,
    pub offset: i64,
    pub record: Record,
}

impl DeadLetter {
    fn header(&self, k: &str) -> Option<&str> {
        self.record
            .headers
            .get(k)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    pub fn source_topic(&self) -> Option<&str> {
        self.header(H_SOURCE_TOPIC)
    }

    pub fn source_partition(&self) -> Option<i32> {
        self.header(H_SOURCE_PARTITION)?.parse().ok()
    }

    pub fn source_offset(&self) -> Option<i64> {
        self.header(H_SOURCE_OFFSET)?.parse().ok()
    }

    pub fn error_class(&self) -> Option<&str> {
        self.header(H_ERROR_CLASS)
    }

    pub fn error_message(&self) -> Option<&str> {
        self.header(H_ERROR_MESSAGE)
    }

    pub fn attempts(&self) -> Option<u32> {
        self.header(H_ATTEMPTS)?.parse().ok()
    }

    pub fn first_failure(&self) -> Option<&str> {
        self.header(H_FIRST_FAILURE)
    }

    /// The original record's timestamp (older dead letters lack it).
    pub fn original_timestamp(&self) -> Option<DateTime<Utc>> {
        DateTime::parse_from_rfc3339(self.header(H_ORIGINAL_TIMESTAMP)?)
            .ok()
            .map(|t| t.to_utc())
    }

    /// The envelope's event id, when the record had one.
    pub fn event_id(&self) -> Option<Uuid> {
        self.header(HEADER_EVENT_ID)?.parse().ok()
    }

    pub fn key(&self) -> String {
        self.record
            .key
            .as_deref()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default()
    }

    /// The record as it was before it failed: key, value and original
    /// headers, without the `dlq.*` ones, stamped now (see the module doc:
    /// a replayed record must outlive its topic's retention).
    pub fn original(&self) -> Record {
        let headers: BTreeMap<String, Vec<u8>> = self
            .record
            .headers
            .iter()
            .filter(|(k, _)| !k.starts_with("dlq."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Record {
            key: self.record.key.clone(),
            value: self.record.value.clone(),
            headers,
            timestamp: Utc::now(),
        }
    }
}

/// Reads every dead letter in `topic`, partition by partition, in offset
/// order.
pub async fn read_all(kafka: &Kafka, topic: &str) -> Result<Vec<DeadLetter>, KafkaError> {
    let t = kafka.request_timeout();
    let mut out = Vec::new();
    for partition in kafka.partitions(topic).await? {
        let client = kafka.partition_client(topic, partition).await?;
        let (mut at, end) = log_bounds(&client, t).await?;
        while at < end {
            let (records, _) = bounded(
                "fetching dead letters",
                t,
                client.fetch_records(at, 1..4 * 1024 * 1024, 100),
            )
            .await?;
            let Some(last) = records.last().map(|r| r.offset) else {
                break;
            };
            for RecordAndOffset { record, offset } in records {
                out.push(DeadLetter {
                    partition,
                    offset,
                    record,
                });
            }
            at = last + 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letter_keeps_the_record_and_says_why() {
        let mut headers = BTreeMap::new();
        headers.insert(
            "event_id".to_owned(),
            b"0193a0c4-0000-7000-8000-000000000001".to_vec(),
        );
        headers.insert("type".to_owned(), b"order.webhook".to_vec());
        let original = Record {
            key: Some(b"ord_1".to_vec()),
            value: Some(b"not json".to_vec()),
            headers,
            timestamp: DateTime::parse_from_rfc3339("2025-01-02T03:04:05.678Z")
                .unwrap()
                .to_utc(),
        };
        let f = Failure {
            source: SourcePosition {
                topic: "payments.orders".into(),
                partition: 2,
                offset: 41,
            },
            class: ErrorClass::Permanent,
            message: "value is not a valid envelope".into(),
            attempts: 1,
            first_failure: DateTime::parse_from_rfc3339("2026-11-26T10:00:00Z")
                .unwrap()
                .with_timezone(&Utc),
        };
        let before = Utc::now();
        let dl = DeadLetter {
            partition: 0,
            offset: 7,
            record: dead_letter(&original, &f),
        };
        // Stamped when written; the original's time in a header.
        assert!(dl.record.timestamp >= before, "{}", dl.record.timestamp);
        assert_eq!(
            dl.record.headers[H_ORIGINAL_TIMESTAMP],
            b"2025-01-02T03:04:05.678Z"
        );
        assert_eq!(dl.original_timestamp(), Some(original.timestamp));
        assert_eq!(dl.record.key, original.key);
        assert_eq!(dl.record.value, original.value);
        assert_eq!(dl.source_topic(), Some("payments.orders"));
        assert_eq!(dl.source_partition(), Some(2));
        assert_eq!(dl.source_offset(), Some(41));
        assert_eq!(dl.error_class(), Some("permanent"));
        assert_eq!(dl.error_message(), Some("value is not a valid envelope"));
        assert_eq!(dl.attempts(), Some(1));
        assert_eq!(dl.first_failure(), Some("2026-11-26T10:00:00.000Z"));
        assert_eq!(dl.key(), "ord_1");
        assert!(dl.event_id().is_some());
        let back = dl.original();
        assert_eq!(back.headers, original.headers);
        assert_eq!(back.value, original.value);
        // A replay is a new record in its topic: stamped now too.
        assert!(back.timestamp >= before);
    }
}
