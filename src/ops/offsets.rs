//! `payhook offsets reset`: an operator's deliberate move of one partition's
//! stored offset, for a partition that stopped.

use super::OpsError;
use crate::{
    config::Config,
    db::{self, DbError},
    kafka::{Kafka, log_bounds},
};

/// Where `payhook offsets reset` moves a partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetTo {
    /// The first record still in the log.
    Earliest,
    /// The log end: everything in the log now is skipped.
    Latest,
    /// An offset between the two (inclusive).
    Offset(i64),
}

impl std::str::FromStr for ResetTo {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "earliest" => Ok(Self::Earliest),
            "latest" => Ok(Self::Latest),
            n => n
                .parse::<i64>()
                .ok()
                .filter(|o| *o >= 0)
                .map(Self::Offset)
                .ok_or_else(|| format!("expected earliest, latest or an offset, got {n:?}")),
        }
    }
}

/// What `payhook offsets reset` did (or, on a dry run, would do).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffsetReset {
    pub group: String,
    pub topic: String,
    pub partition: i32,
    /// The stored offset before.
    pub before: Option<i64>,
    /// The stored offset after.
    pub after: i64,
    /// The topic ID the stored offset belonged to before (`None`: not
    /// known, or no row), and the one it belongs to after: the broker's now.
    pub topic_id_before: Option<uuid::Uuid>,
    pub topic_id_after: uuid::Uuid,
    /// The log's bounds when it was decided.
    pub earliest: i64,
    pub latest: i64,
    /// `false` on a dry run.
    pub applied: bool,
}

/// `payhook offsets reset`: sets the stored offset of one partition, an
/// operator's deliberate decision for a partition that stopped (its offset
/// fell out of the log, its topic was re-created, its log's history
/// changed, a batch cannot be read). The new offset is a position in the
/// log the broker has now: the row adopts that log's topic ID, and forgets
/// the digest of the last record handled. The consumer group is the one
/// configured for the topic. A running consumer starts again from the new
/// offset within seconds.
pub async fn reset(
    cfg: &Config,
    topic: &str,
    partition: i32,
    to: ResetTo,
    dry_run: bool,
) -> Result<OffsetReset, OpsError> {
    let group = if topic == cfg.kafka.orders_topic {
        &cfg.kafka.orders_consumer_group
    } else if topic == cfg.kafka.disputes_topic {
        &cfg.kafka.disputes_consumer_group
    } else {
        return Err(OpsError::Invalid(format!(
            "{topic} is neither KAFKA_ORDERS_TOPIC ({}) nor KAFKA_DISPUTES_TOPIC ({})",
            cfg.kafka.orders_topic, cfg.kafka.disputes_topic
        )));
    };
    let kafka = Kafka::from_config(&cfg.kafka).await?;
    let partitions = kafka.partitions(topic).await?;
    if !partitions.contains(&partition) {
        return Err(OpsError::Invalid(format!(
            "{topic} has no partition {partition} (it has {})",
            partitions.len()
        )));
    }
    let topic_id = kafka.topic_id(topic).await?.ok_or_else(|| {
        OpsError::Invalid(format!(
            "the broker has no topic ID for {topic} (does it exist?)"
        ))
    })?;
    let client = kafka.partition_client(topic, partition).await?;
    let (earliest, latest) = log_bounds(&client, kafka.request_timeout()).await?;
    let after = match to {
        ResetTo::Earliest => earliest,
        ResetTo::Latest => latest,
        ResetTo::Offset(o) if (earliest..=latest).contains(&o) => o,
        ResetTo::Offset(o) => {
            return Err(OpsError::Invalid(format!(
                "offset {o} is outside the log of {topic}/{partition} ({earliest}..={latest})"
            )));
        }
    };
    let pool = db::pool_from_config(&cfg.database, 1)?;
    let conn = pool.get().await.map_err(DbError::from)?;
    let before = if dry_run {
        db::offsets::load_stored(&**conn, group, topic, partition).await?
    } else {
        db::offsets::reset(&**conn, group, topic, partition, after, Some(topic_id)).await?
    };
    Ok(OffsetReset {
        group: group.clone(),
        topic: topic.to_owned(),
        partition,
        before: before.as_ref().map(|s| s.next),
        after,
        topic_id_before: before.and_then(|s| s.topic_id),
        topic_id_after: topic_id,
        earliest,
        latest,
        applied: !dry_run,
    })
}

impl OffsetReset {
    /// One line: the log's bounds and the move.
    pub fn print(&self) {
        let verb = if self.applied { "moved" } else { "would move" };
        let before = self.before.map_or("(none)".into(), |o| o.to_string());
        println!(
            "{}/{} (group {}): log {}..{}; stored offset {verb} {before} -> {}",
            self.topic, self.partition, self.group, self.earliest, self.latest, self.after
        );
        let id_before = self
            .topic_id_before
            .map_or("(none)".into(), |i| i.to_string());
        if self.topic_id_before != Some(self.topic_id_after) {
            println!(
                "  topic ID {verb} {id_before} -> {} (the log the broker has now)",
                self.topic_id_after
            );
        }
    }
}
