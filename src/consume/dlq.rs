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
//! **Every dead letter fits.** The error message is an excerpt (at most
//! [`MAX_ERROR_MESSAGE`] bytes). A record too large to be copied whole into
//! the dead-letter topic (whose `max.message.bytes` the service reads at
//! start-up) keeps only a prefix of its value ([`TRUNCATED_VALUE_BYTES`]),
//! and then, if still too large, of its key, and drops its own headers;
//! what was cut is named and described, so an operator can fetch the
//! original from its source topic while it is retained:
//!
//! | header | value |
//! |---|---|
//! | `dlq.original.truncated` | what was cut: `value`, `key`, `headers`, comma-separated |
//! | `dlq.original.value.bytes` / `dlq.original.value.sha256` | the whole value's size and SHA-256 (hex) |
//! | `dlq.original.key.bytes` / `dlq.original.key.sha256` | the same, for the key |
//! | `dlq.original.headers.dropped` | how many of its headers were dropped |
//!
//! `payhook dlq replay` refuses a cut dead letter: it would publish the
//! prefix.
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

use sha2::{Digest, Sha256};

use super::classify::ErrorClass;
use crate::{
    domain::orders::SourcePosition,
    kafka::producer::batch_bytes,
    kafka::{Kafka, KafkaError, bounded, envelope::HEADER_EVENT_ID, log_bounds},
    logging::excerpt,
};

pub const H_SOURCE_TOPIC: &str = "dlq.source.topic";
pub const H_SOURCE_PARTITION: &str = "dlq.source.partition";
pub const H_SOURCE_OFFSET: &str = "dlq.source.offset";
pub const H_ERROR_CLASS: &str = "dlq.error.class";
pub const H_ERROR_MESSAGE: &str = "dlq.error.message";
pub const H_ATTEMPTS: &str = "dlq.attempts";
pub const H_FIRST_FAILURE: &str = "dlq.first_failure";
pub const H_ORIGINAL_TIMESTAMP: &str = "dlq.original.timestamp";
pub const H_TRUNCATED: &str = "dlq.original.truncated";
pub const H_VALUE_BYTES: &str = "dlq.original.value.bytes";
pub const H_VALUE_SHA256: &str = "dlq.original.value.sha256";
pub const H_KEY_BYTES: &str = "dlq.original.key.bytes";
pub const H_KEY_SHA256: &str = "dlq.original.key.sha256";
pub const H_HEADERS_DROPPED: &str = "dlq.original.headers.dropped";

/// Most bytes of the error message a dead letter carries.
pub const MAX_ERROR_MESSAGE: usize = 1024;

/// Bytes of a value (or key) kept when the whole does not fit.
pub const TRUNCATED_VALUE_BYTES: usize = 4096;

/// Kafka's default `max.message.bytes`, assumed for a dead-letter topic
/// whose configuration cannot be read.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1_048_588;

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
/// `dlq.*` headers, stamped with the time it is written (now), and never
/// larger than `max_bytes` (the dead-letter topic's `max.message.bytes`; see
/// the module doc for what is cut when the original does not fit).
pub fn dead_letter(original: &Record, f: &Failure, max_bytes: usize) -> Record {
    let mut dlq = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        dlq.insert(k.to_owned(), v.into_bytes());
    };
    put(H_SOURCE_TOPIC, f.source.topic.clone());
    put(H_SOURCE_PARTITION, f.source.partition.to_string());
    put(H_SOURCE_OFFSET, f.source.offset.to_string());
    put(H_ERROR_CLASS, class_name(f.class).to_owned());
    put(
        H_ERROR_MESSAGE,
        excerpt(&f.message, MAX_ERROR_MESSAGE).into_owned(),
    );
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
    let mut headers = original.headers.clone();
    headers.extend(dlq.clone());
    let mut letter = Record {
        key: original.key.clone(),
        value: original.value.clone(),
        headers,
        timestamp: Utc::now(),
    };
    let fits = |r: &Record| batch_bytes([r]) <= max_bytes;
    let mut cut: Vec<&str> = Vec::new();
    let shorten = |part: Option<&mut Option<Vec<u8>>>,
                   bytes_header: &str,
                   sha_header: &str,
                   headers: &mut BTreeMap<String, Vec<u8>>| {
        if let Some(Some(whole)) = part {
            if whole.len() > TRUNCATED_VALUE_BYTES {
                headers.insert(
                    bytes_header.to_owned(),
                    whole.len().to_string().into_bytes(),
                );
                headers.insert(
                    sha_header.to_owned(),
                    hex::encode(Sha256::digest(&whole[..])).into_bytes(),
                );
                whole.truncate(TRUNCATED_VALUE_BYTES);
                return true;
            }
        }
        false
    };
    if !fits(&letter)
        && shorten(
            Some(&mut letter.value),
            H_VALUE_BYTES,
            H_VALUE_SHA256,
            &mut letter.headers,
        )
    {
        cut.push("value");
    }
    if !fits(&letter)
        && shorten(
            Some(&mut letter.key),
            H_KEY_BYTES,
            H_KEY_SHA256,
            &mut letter.headers,
        )
    {
        cut.push("key");
    }
    if !fits(&letter) {
        // The record's own headers go; ours stay.
        let dropped = original.headers.len();
        let mut only_ours: BTreeMap<String, Vec<u8>> = letter
            .headers
            .iter()
            .filter(|(k, _)| k.starts_with("dlq."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        only_ours.insert(
            H_HEADERS_DROPPED.to_owned(),
            dropped.to_string().into_bytes(),
        );
        letter.headers = only_ours;
        cut.push("headers");
    }
    if !cut.is_empty() {
        letter
            .headers
            .insert(H_TRUNCATED.to_owned(), cut.join(",").into_bytes());
    }
    letter
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

    /// What was cut from the original to make the dead letter fit (`value`,
    /// `key`, `headers`), if anything.
    pub fn truncated(&self) -> Option<&str> {
        self.header(H_TRUNCATED)
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
            record: dead_letter(&original, &f, DEFAULT_MAX_MESSAGE_BYTES),
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

    #[test]
    fn a_record_too_large_for_the_dead_letter_topic_becomes_a_dead_letter_that_fits() {
        let value = vec![b'v'; 1_048_400];
        let mut headers = BTreeMap::new();
        headers.insert("foreign".to_owned(), vec![b'h'; 2000]);
        let original = Record {
            key: Some(b"ord_big".to_vec()),
            value: Some(value.clone()),
            headers,
            timestamp: Utc::now(),
        };
        let f = Failure {
            source: SourcePosition {
                topic: "payments.orders".into(),
                partition: 0,
                offset: 7,
            },
            class: ErrorClass::Permanent,
            // An error that quotes the input, whole.
            message: format!("unknown envelope type {:?}", "t".repeat(1_000_000)),
            attempts: 1,
            first_failure: Utc::now(),
        };
        let max = DEFAULT_MAX_MESSAGE_BYTES;
        let letter = dead_letter(&original, &f, max);
        assert!(batch_bytes([&letter]) <= max, "{}", batch_bytes([&letter]));
        let d = DeadLetter {
            partition: 0,
            offset: 0,
            record: letter,
        };
        assert_eq!(d.truncated(), Some("value"));
        assert_eq!(
            d.record.value.as_ref().unwrap().len(),
            TRUNCATED_VALUE_BYTES
        );
        assert_eq!(d.record.headers[H_VALUE_BYTES], b"1048400");
        assert_eq!(
            d.record.headers[H_VALUE_SHA256],
            hex::encode(Sha256::digest(&value)).into_bytes()
        );
        assert_eq!(d.source_offset(), Some(7));
        assert_eq!(d.record.headers["foreign"].len(), 2000, "headers kept");
        let msg = d.error_message().unwrap();
        assert!(msg.len() <= MAX_ERROR_MESSAGE + 32, "{}", msg.len());
        assert!(msg.ends_with(" bytes)"), "{msg}");

        // A small record is copied whole, untouched.
        let small = Record {
            value: Some(b"{}".to_vec()),
            ..original.clone()
        };
        let letter = dead_letter(&small, &f, max);
        assert_eq!(letter.value, small.value);
        assert!(!letter.headers.contains_key(H_TRUNCATED));

        // A tiny dead-letter topic: value, key and the record's headers go.
        let huge_key = Record {
            key: Some(vec![b'k'; 20_000]),
            ..original
        };
        let letter = dead_letter(&huge_key, &f, 10_000);
        assert!(
            batch_bytes([&letter]) <= 10_000,
            "{}",
            batch_bytes([&letter])
        );
        assert_eq!(letter.headers[H_TRUNCATED], b"value,key,headers");
        assert_eq!(letter.headers[H_KEY_BYTES], b"20000");
        assert!(!letter.headers.contains_key("foreign"));
    }
}
