//! `payhook topics`: creates the orders, disputes and dead-letter topics
//! unless they exist, and says what it thinks of each.

use std::time::Duration;

use tracing::{error, info, warn};

use super::OpsError;
use crate::{
    config::Config,
    kafka::{
        Kafka,
        topics::{self, Finding, TopicReport},
    },
};

/// How long `payhook topics` waits for the topics it created to show in the
/// broker's metadata.
const TOPICS_VISIBLE_WITHIN: Duration = Duration::from_secs(30);

/// Creates the three topics unless they exist, with the replication factor,
/// `min.insync.replicas` and retention of [`topics::create_topics`];
/// returns once the broker's metadata lists each with its partitions (so a
/// `serve` started right after finds them), with what it did and what it
/// thinks of each topic.
pub async fn create(cfg: &Config) -> Result<Vec<TopicReport>, OpsError> {
    let reports = topics::create_topics(&cfg.kafka, cfg.http.max_body_bytes).await?;
    let kafka = Kafka::from_config(&cfg.kafka).await?;
    for r in &reports {
        // A topic that existed already keeps the partitions it has.
        let expected = if r.created {
            cfg.kafka.partitions.get() as usize
        } else {
            1
        };
        kafka
            .wait_for_topic(&r.topic, expected, TOPICS_VISIBLE_WITHIN)
            .await?;
    }
    Ok(reports)
}

/// Logs each report and its findings (warnings as warnings).
pub fn print(reports: &[TopicReport], partitions: u32) {
    for t in reports {
        let what = if t.created {
            "created"
        } else {
            "exists (left as it is)"
        };
        info!(
            topic = %t.topic,
            partitions,
            replication_factor = t.replication_factor.unwrap_or_default(),
            min_insync_replicas = t.min_insync_replicas.as_deref().unwrap_or("?"),
            retention_ms = t.retention_ms.as_deref().unwrap_or("?"),
            "{what}"
        );
        for f in &t.findings {
            match f {
                Finding::Note(m) => info!("{m}"),
                Finding::Warn(m) => warn!("{m}"),
                Finding::Refuse(m) => error!("{m}"),
            }
        }
    }
}
