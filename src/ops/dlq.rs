//! `payhook dlq list` and `payhook dlq replay`: the dead letters, and
//! sending chosen ones back to their source topic.

use std::time::Duration;

use super::OpsError;
use crate::{
    config::Config,
    consume::dlq::{self, DeadLetter},
    kafka::{
        Kafka, KafkaError,
        producer::{Producer, ProducerConfig, PublishError, Published},
        signing::Signer,
    },
};

/// `payhook dlq list`: every dead letter, in topic order.
pub async fn list(cfg: &Config) -> Result<Vec<DeadLetter>, OpsError> {
    let kafka = Kafka::from_config(&cfg.kafka).await?;
    Ok(dlq::read_all(&kafka, &cfg.kafka.dlq_topic).await?)
}

/// Which dead letters `payhook dlq replay` sends back.
#[derive(Clone, Debug, Default)]
pub struct ReplaySelection {
    /// Dead letters whose envelope has one of these event ids.
    pub event_ids: Vec<uuid::Uuid>,
    /// Dead letters in this dead-letter partition...
    pub partition: Option<i32>,
    /// ...at offsets `from..=to` of the dead-letter topic.
    pub from: Option<i64>,
    pub to: Option<i64>,
    /// With `ENVELOPE_SIGNING_KEYS`, also replay (and sign anew) dead
    /// letters whose record's signature does not hold: unsigned, or signed
    /// with a key no longer listed. The operator vouches for them.
    pub resign: bool,
}

impl ReplaySelection {
    pub fn is_empty(&self) -> bool {
        self.event_ids.is_empty()
            && self.partition.is_none()
            && self.from.is_none()
            && self.to.is_none()
    }

    pub fn matches(&self, d: &DeadLetter) -> bool {
        let by_id = !self.event_ids.is_empty()
            && d.event_id().is_some_and(|id| self.event_ids.contains(&id));
        let by_range = (self.partition.is_some() || self.from.is_some() || self.to.is_some())
            && self.partition.is_none_or(|p| p == d.partition)
            && self.from.is_none_or(|f| d.offset >= f)
            && self.to.is_none_or(|t| d.offset <= t);
        by_id || by_range
    }
}

/// What happened to one selected dead letter.
#[derive(Debug)]
pub struct Replayed {
    pub letter: DeadLetter,
    /// Where it landed in its source topic; `None` on a dry run.
    pub published: Option<Published>,
}

/// `payhook dlq replay`: re-publishes the selected dead letters (original
/// key, value and headers) to their source topics, in dead-letter order.
pub async fn replay(
    cfg: &Config,
    selection: &ReplaySelection,
    dry_run: bool,
) -> Result<Vec<Replayed>, ReplayError> {
    if selection.is_empty() {
        return Err(ReplayError::NothingSelected);
    }
    let kafka = Kafka::from_config(&cfg.kafka).await?;
    let chosen: Vec<DeadLetter> = dlq::read_all(&kafka, &cfg.kafka.dlq_topic)
        .await?
        .into_iter()
        .filter(|d| selection.matches(d))
        .collect();
    let signer = Signer::from_config(&cfg.kafka);
    let mut topics: Vec<String> = Vec::new();
    for d in &chosen {
        if let Some(what) = d.truncated() {
            return Err(ReplayError::Truncated {
                partition: d.partition,
                offset: d.offset,
                what: what.to_owned(),
            });
        }
        let t = d.source_topic().ok_or(ReplayError::NoSource {
            partition: d.partition,
            offset: d.offset,
        })?;
        // Only payhook's own topics: a dead letter's headers are data, and
        // may name any topic.
        if t != cfg.kafka.orders_topic && t != cfg.kafka.disputes_topic {
            return Err(ReplayError::ForeignTopic {
                partition: d.partition,
                offset: d.offset,
                topic: shown(t, 64),
            });
        }
        // What is replayed is signed anew: it must have been signed by
        // payhook before, unless the operator vouches for it.
        if let Some(signer) = &signer
            && !selection.resign
            && let Err(fault) = signer.verify(&d.original())
        {
            return Err(ReplayError::Unverified {
                partition: d.partition,
                offset: d.offset,
                reason: fault.to_string(),
            });
        }
        if !topics.iter().any(|x| x == t) {
            topics.push(t.to_owned());
        }
    }
    if dry_run || chosen.is_empty() {
        return Ok(chosen
            .into_iter()
            .map(|letter| Replayed {
                letter,
                published: None,
            })
            .collect());
    }
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let (producer, lanes) = Producer::start(
        &kafka,
        &names,
        ProducerConfig {
            linger: Duration::ZERO,
            queue_per_partition: 64,
            publish_timeout: cfg.kafka.publish_timeout,
            metadata_refresh: Duration::from_secs(30),
            metrics: None,
        },
    )
    .await?;
    let mut out = Vec::new();
    // One at a time, in order: replayed events keep their relative order.
    for letter in chosen {
        let topic = letter.source_topic().unwrap_or_default().to_owned();
        let mut record = letter.original();
        if let Some(signer) = &signer {
            signer.sign(&mut record);
        }
        let published = producer.publish(&topic, record).await?;
        out.push(Replayed {
            letter,
            published: Some(published),
        });
    }
    drop(producer);
    lanes.drained().await;
    Ok(out)
}

/// Why a replay did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("select dead letters with --event-id or --partition/--from/--to")]
    NothingSelected,
    #[error("dead letter {partition}/{offset} has no dlq.source.topic header")]
    NoSource { partition: i32, offset: i64 },
    #[error(
        "dead letter {partition}/{offset} holds only part of its record (cut: {what}; the \
         original was too large for the dead-letter topic): replaying it would publish the \
         part. Fetch the original from its source topic at the offset its dlq.source.* \
         headers name, while it is retained"
    )]
    Truncated {
        partition: i32,
        offset: i64,
        what: String,
    },
    #[error(
        "dead letter {partition}/{offset} names source topic {topic:?}, which is neither \
         KAFKA_ORDERS_TOPIC nor KAFKA_DISPUTES_TOPIC: payhook replays only to its own topics"
    )]
    ForeignTopic {
        partition: i32,
        offset: i64,
        topic: String,
    },
    #[error(
        "dead letter {partition}/{offset}: {reason}. Replaying signs it anew; if you know it is \
         genuine, replay it with --resign"
    )]
    Unverified {
        partition: i32,
        offset: i64,
        reason: String,
    },
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("publishing: {0}")]
    Publish(#[from] PublishError),
}

/// A table of dead letters; error messages cut at 80 characters unless
/// `full`.
pub fn print(letters: &[DeadLetter], full: bool) {
    println!(
        "{:<12} {:<28} {:<10} {:>8}  {:<24} {:<36} {:<16} error",
        "dlq p/off", "source topic/p/off", "class", "attempts", "first failure", "event id", "key"
    );
    for d in letters {
        let source = format!(
            "{}/{}/{}",
            shown(d.source_topic().unwrap_or("?"), 64),
            d.source_partition().map_or("?".into(), |p| p.to_string()),
            d.source_offset().map_or("?".into(), |o| o.to_string())
        );
        let mut msg = shown(d.error_message().unwrap_or(""), usize::MAX);
        if !full && msg.chars().count() > 80 {
            msg = msg.chars().take(79).collect::<String>() + "…";
        }
        println!(
            "{:<12} {:<28} {:<10} {:>8}  {:<24} {:<36} {:<16} {}",
            format!("{}/{}", d.partition, d.offset),
            source,
            shown(d.error_class().unwrap_or("?"), 16),
            d.attempts().map_or("?".into(), |a| a.to_string()),
            shown(d.first_failure().unwrap_or("?"), 40),
            d.event_id().map_or("-".into(), |e| e.to_string()),
            shown(&d.key(), 256),
            msg
        );
    }
    println!("{} dead letter(s)", letters.len());
}

/// `text` as one line a terminal shows as it is: control characters (line
/// breaks, escape sequences, bidi overrides) escaped, at most `max` chars.
/// A dead letter's key, headers and error hold what a writer sent.
pub fn shown(text: &str, max: usize) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == max {
            out.push('…');
            break;
        }
        let bidi = matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        if c.is_control() || bidi {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// What a replay did (or, on a dry run, would do), one line each.
pub fn print_replayed(done: &[Replayed]) {
    for r in done {
        let d = &r.letter;
        match r.published {
            Some(p) => println!(
                "replayed {}/{} -> {} partition {} offset {}",
                d.partition,
                d.offset,
                shown(d.source_topic().unwrap_or("?"), 64),
                p.partition,
                p.offset
            ),
            None => println!(
                "would replay {}/{} -> {}",
                d.partition,
                d.offset,
                shown(d.source_topic().unwrap_or("?"), 64)
            ),
        }
    }
    println!("{} dead letter(s) selected", done.len());
}
