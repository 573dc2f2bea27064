//! Durable topics: what `payhook topics` creates, and what `serve` checks
//! about the topics it finds.
//!
//! rskafka 0.6 creates topics without configuration and cannot read a
//! topic's configuration, so both go through payhook's own admin connection
//! ([`super::admin`]), with the same SASL/TLS settings as the data
//! connections.
//!
//! A 202 promises the record survives. With `acks=all` that holds through
//! one broker failure only when the topic has at least two replicas **and**
//! `min.insync.replicas` ≥ 2 (otherwise the leader alone may acknowledge a
//! write and then die). [`assess`] turns a topic's configuration into
//! findings: warnings for durability and retention, and a refusal when a
//! webhook payhook accepts could not fit in one message the broker accepts.

use std::time::Duration;

use tracing::{info, warn};

use super::{
    admin::{Admin, Created, TopicConfigs},
    envelope,
    wire::WireError,
};
use crate::{
    config::KafkaSettings,
    connect::{self, KafkaTransport},
};

/// What a topic is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Orders or disputes: webhooks wait here until applied.
    Source,
    /// The dead-letter topic: records that could not be applied, kept for
    /// an operator.
    DeadLetter,
}

/// Replication settings `payhook topics` uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replication {
    pub factor: i16,
    pub min_insync: i16,
}

impl Replication {
    /// `KAFKA_REPLICATION_FACTOR` (default 3, or the broker count if
    /// smaller) and `KAFKA_MIN_INSYNC_REPLICAS` (default factor − 1, at
    /// least 1).
    pub fn choose(kafka: &KafkaSettings, brokers: usize) -> Self {
        let brokers = i16::try_from(brokers.max(1)).unwrap_or(i16::MAX);
        let factor = kafka.replication_factor.unwrap_or(3.min(brokers));
        let min_insync = kafka.min_insync_replicas.unwrap_or((factor - 1).max(1));
        Self { factor, min_insync }
    }
}

/// The configuration entries a new topic of `role` gets. A dead-letter
/// topic gets `max.message.bytes` of `dead_letter_room` (room for the
/// largest record a source topic accepts, with the `dlq.*` headers).
pub fn topic_configs(
    kafka: &KafkaSettings,
    role: Role,
    r: Replication,
    dead_letter_room: Option<usize>,
) -> Vec<(&'static str, String)> {
    let mut v = vec![
        ("min.insync.replicas", r.min_insync.to_string()),
        // Compaction would keep only the last event per order id and
        // delete the rest before they are applied.
        ("cleanup.policy", "delete".to_owned()),
    ];
    if role == Role::DeadLetter {
        let ms = kafka
            .dlq_retention
            .map_or(-1, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        v.push(("retention.ms", ms.to_string()));
        if let Some(room) = dead_letter_room {
            v.push(("max.message.bytes", room.to_string()));
        }
    }
    v
}

/// One thing `serve` or `payhook topics` has to say about a topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finding {
    /// Worth knowing, nothing wrong.
    Note(String),
    /// Works, but can lose or stall records in some failure.
    Warn(String),
    /// payhook must not run against this topic as configured.
    Refuse(String),
}

/// Room for the `dlq.*` headers a dead letter adds to the original record
/// (source position, error class and message, attempts, first failure).
pub const DLQ_HEADERS_ALLOWANCE: usize = 4096;

/// What [`assess`] compares a topic against.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// How long a partition may stall before someone acts
    /// (`KAFKA_MIN_RETENTION`).
    pub min_retention: Duration,
    /// The largest record batch one accepted webhook can become
    /// ([`envelope::worst_case_batch_bytes`]).
    pub max_batch_bytes: usize,
}

impl Limits {
    /// `KAFKA_MIN_RETENTION`, and the largest batch a body of
    /// `max_body_bytes` (`HTTP_MAX_BODY_BYTES`) can become.
    pub fn new(kafka: &KafkaSettings, max_body_bytes: usize) -> Self {
        Self {
            min_retention: kafka.min_retention,
            max_batch_bytes: envelope::worst_case_batch_bytes(max_body_bytes),
        }
    }
}

/// Judges one topic's replication factor (from metadata) and configuration
/// (from DescribeConfigs, effective values).
pub fn assess(
    topic: &str,
    role: Role,
    replication_factor: Option<i16>,
    configs: &TopicConfigs,
    limits: Limits,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let num = |k: &str| configs.get(k).and_then(|v| v.trim().parse::<i64>().ok());
    if let Some(rf) = replication_factor {
        if rf < 2 {
            out.push(Finding::Warn(format!(
                "topic {topic} has replication factor {rf}: one broker failure can lose records \
                 payhook already acknowledged with 202 (recreate it with 3 replicas, or add \
                 replicas with kafka-reassign-partitions.sh)"
            )));
        }
    }
    match num("min.insync.replicas") {
        Some(isr) if isr < 2 => out.push(Finding::Warn(format!(
            "topic {topic} has min.insync.replicas={isr}: the leader alone may acknowledge a \
             write, so one broker failure can lose records payhook already acknowledged with \
             202 (fix: kafka-configs.sh --bootstrap-server <broker> --alter --entity-type topics \
             --entity-name {topic} --add-config min.insync.replicas=2)"
        ))),
        _ => {}
    }
    if role == Role::Source {
        let min_ms = i64::try_from(limits.min_retention.as_millis()).unwrap_or(i64::MAX);
        if let Some(ms) = num("retention.ms").filter(|ms| *ms >= 0 && *ms < min_ms) {
            out.push(Finding::Warn(format!(
                "topic {topic} deletes records after {} (retention.ms={ms}), sooner than \
                 KAFKA_MIN_RETENTION={}: a partition stalled that long loses webhooks that were \
                 acknowledged but not yet applied",
                humantime::format_duration(Duration::from_millis(ms.unsigned_abs())),
                humantime::format_duration(limits.min_retention),
            )));
        }
        if let Some(bytes) = num("retention.bytes").filter(|b| *b >= 0) {
            out.push(Finding::Warn(format!(
                "topic {topic} deletes records once a partition holds {bytes} bytes \
                 (retention.bytes): a stalled partition under load loses webhooks that were \
                 acknowledged but not yet applied"
            )));
        }
        if configs
            .get("cleanup.policy")
            .is_some_and(|p| p.contains("compact"))
        {
            out.push(Finding::Warn(format!(
                "topic {topic} has cleanup.policy={}: compaction keeps only the last record per \
                 order id and can delete events before they are applied",
                configs["cleanup.policy"]
            )));
        }
    }
    match configs.get("compression.type").map(String::as_str) {
        Some(c @ ("lz4" | "zstd")) => out.push(Finding::Warn(format!(
            "topic {topic} has compression.type={c}: the broker recompresses every record with \
             {c}, which payhook's C-free Kafka client cannot read (it reads uncompressed, gzip \
             and snappy); set compression.type=producer, uncompressed, gzip or snappy"
        ))),
        Some("producer") => out.push(Finding::Note(format!(
            "topic {topic} has compression.type=producer: records stay as each producer \
             compressed them; payhook writes them uncompressed, and reads only uncompressed, \
             gzip and snappy, so any other producer to this topic must not use lz4 or zstd"
        ))),
        _ => {}
    }
    if let Some(max) = num("max.message.bytes") {
        let need = limits.max_batch_bytes
            + match role {
                Role::Source => 0,
                Role::DeadLetter => DLQ_HEADERS_ALLOWANCE,
            };
        if usize::try_from(max).is_ok_and(|m| m < need) {
            out.push(Finding::Refuse(format!(
                "topic {topic} accepts messages of at most {max} bytes (max.message.bytes), but \
                 a webhook of HTTP_MAX_BODY_BYTES becomes up to {need} bytes in its envelope: \
                 payhook would acknowledge webhooks the broker then refuses. Lower \
                 HTTP_MAX_BODY_BYTES or raise max.message.bytes to at least {need}"
            )));
        }
    }
    out
}

/// What `payhook topics` did with one topic.
#[derive(Debug)]
pub struct TopicReport {
    pub topic: String,
    pub role: Role,
    pub created: bool,
    /// As the broker reports it (smallest over the partitions).
    pub replication_factor: Option<i16>,
    /// As the broker reports it.
    pub min_insync_replicas: Option<String>,
    /// As the broker reports it (`-1`: kept forever).
    pub retention_ms: Option<String>,
    /// What [`assess`] says about the topic as it now is.
    pub findings: Vec<Finding>,
}

/// The three topics of `kafka`, with their roles.
pub fn topics_of(kafka: &KafkaSettings) -> [(&str, Role); 3] {
    [
        (kafka.orders_topic.as_str(), Role::Source),
        (kafka.disputes_topic.as_str(), Role::Source),
        (kafka.dlq_topic.as_str(), Role::DeadLetter),
    ]
}

async fn admin(kafka: &KafkaSettings) -> Result<Admin, super::KafkaError> {
    let transport: KafkaTransport = connect::kafka_security(&kafka.security())?;
    Ok(Admin::connect(&kafka.brokers, &transport, kafka.request_timeout).await?)
}

/// `payhook topics`: creates each topic with `KAFKA_PARTITIONS`
/// partitions, the replication factor and `min.insync.replicas` of
/// [`Replication::choose`], `cleanup.policy=delete`, and (dead-letter topic)
/// `KAFKA_DLQ_RETENTION`. Topics that exist are left as they are, and
/// judged like `serve` judges them.
pub async fn create_topics(
    kafka: &KafkaSettings,
    max_body_bytes: usize,
) -> Result<Vec<TopicReport>, super::KafkaError> {
    let mut admin = admin(kafka).await?;
    let brokers = admin.broker_count().await?;
    let replication = Replication::choose(kafka, brokers);
    if usize::try_from(replication.factor).is_ok_and(|f| f > brokers) {
        return Err(WireError::Broker {
            what: "planning the topics",
            error: format!(
                "KAFKA_REPLICATION_FACTOR={} but the cluster has {brokers} broker(s)",
                replication.factor
            ),
            message: None,
        }
        .into());
    }
    let partitions = i32::try_from(kafka.partitions.get()).unwrap_or(i32::MAX);
    let limits = Limits::new(kafka, max_body_bytes);
    let mut out = Vec::new();
    // Source topics first: the dead-letter topic is made with room for the
    // largest record they accept.
    let mut sources_max: Option<usize> = None;
    for (topic, role) in topics_of(kafka) {
        let room = sources_max.map(|m| m + DLQ_HEADERS_ALLOWANCE);
        let configs = topic_configs(kafka, role, replication, room);
        let created = admin
            .create_topic(topic, partitions, replication.factor, &configs)
            .await?;
        // A topic created a moment ago may not be known to every broker
        // yet: ask again for a while.
        let deadline = tokio::time::Instant::now() + kafka.request_timeout;
        let (rf, now) = loop {
            let rf = admin.replication_factor(topic).await?;
            match admin.describe_topic_configs(topic).await {
                Ok(c) if rf.is_some() => break (rf, c),
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e.into()),
                _ if tokio::time::Instant::now() >= deadline => break (rf, TopicConfigs::new()),
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        if role == Role::Source {
            let max = now
                .get("max.message.bytes")
                .and_then(|v| v.trim().parse::<usize>().ok());
            sources_max = sources_max.max(max);
        }
        out.push(TopicReport {
            topic: topic.to_owned(),
            role,
            created: created == Created::Now,
            replication_factor: rf,
            min_insync_replicas: now.get("min.insync.replicas").cloned(),
            retention_ms: now.get("retention.ms").cloned(),
            findings: assess(topic, role, rf, &now, limits),
        });
    }
    Ok(out)
}

/// Every configuration entry of `topic`, with its effective value, read
/// with these brokers and security settings.
pub async fn describe_topic_configs(
    kafka: &KafkaSettings,
    topic: &str,
) -> Result<TopicConfigs, super::KafkaError> {
    Ok(admin(kafka).await?.describe_topic_configs(topic).await?)
}

/// Why `serve` will not start.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct Refused(pub Vec<String>);

/// What `serve`'s start-up check found.
#[derive(Debug, Default)]
pub struct Checked {
    pub findings: Vec<Finding>,
    /// The dead-letter topic's `max.message.bytes`, when it could be read.
    pub dlq_max_message_bytes: Option<usize>,
}

/// The dead-letter topic's own finding: whether it has room for the
/// largest record a source topic accepts, with the `dlq.*` headers.
fn assess_dead_letter_room(
    dlq: &str,
    dlq_max: Option<i64>,
    sources_max: Option<i64>,
) -> Option<Finding> {
    let (dlq_max, sources_max) = (dlq_max?, sources_max?);
    let need = sources_max + DLQ_HEADERS_ALLOWANCE as i64;
    (dlq_max < need).then(|| {
        Finding::Warn(format!(
            "topic {dlq} accepts messages of at most {dlq_max} bytes (max.message.bytes), less \
             than the largest record a source topic accepts ({sources_max}) plus the dead-letter \
             headers: the dead letter of such a record will carry a prefix of its value (with \
             its size and SHA-256) instead of all of it. Raise max.message.bytes to at least \
             {need} to keep every record whole"
        ))
    })
}

/// `serve`'s start-up check of its three topics: logs every warning, and
/// refuses when a finding says payhook must not run. Where the
/// configuration cannot be read (a broker without DescribeConfigs, missing
/// ACLs), it warns once and goes on.
pub async fn check_at_startup(
    kafka: &KafkaSettings,
    max_body_bytes: usize,
) -> Result<Checked, Refused> {
    let limits = Limits::new(kafka, max_body_bytes);
    let mut admin = match admin(kafka).await {
        Ok(a) => a,
        Err(e) => {
            warn!(error = %e, "cannot check the topics' durability settings; going on unchecked");
            return Ok(Checked::default());
        }
    };
    let mut all = Vec::new();
    let (mut dlq_max, mut sources_max) = (None, None::<i64>);
    for (topic, role) in topics_of(kafka) {
        let rf = admin.replication_factor(topic).await;
        let configs = admin.describe_topic_configs(topic).await;
        let (rf, configs) = match (rf, configs) {
            (Ok(rf), Ok(c)) => (rf, c),
            (Err(e), _) | (_, Err(e)) => {
                warn!(%topic, error = %e, "cannot read the topic's configuration; its durability, retention, compression and size limit are not checked");
                return Ok(Checked {
                    findings: all,
                    dlq_max_message_bytes: None,
                });
            }
        };
        let max = configs
            .get("max.message.bytes")
            .and_then(|v| v.trim().parse::<i64>().ok());
        match role {
            Role::Source => sources_max = sources_max.max(max),
            Role::DeadLetter => dlq_max = max,
        }
        let mut found = assess(topic, role, rf, &configs, limits);
        if role == Role::DeadLetter {
            found.extend(assess_dead_letter_room(topic, dlq_max, sources_max));
        }
        for f in found {
            match &f {
                Finding::Note(m) => info!("{m}"),
                Finding::Warn(m) => warn!("{m}"),
                Finding::Refuse(m) => tracing::error!("{m}"),
            }
            all.push(f);
        }
    }
    let refusals: Vec<String> = all
        .iter()
        .filter_map(|f| match f {
            Finding::Refuse(m) => Some(m.clone()),
            _ => None,
        })
        .collect();
    if refusals.is_empty() {
        Ok(Checked {
            findings: all,
            dlq_max_message_bytes: dlq_max.and_then(|m| usize::try_from(m).ok()),
        })
    } else {
        Err(Refused(refusals))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> KafkaSettings {
        let map = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        crate::config::Config::from_map(&map).unwrap().kafka
    }

    fn configs(pairs: &[(&str, &str)]) -> TopicConfigs {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<HashMap<_, _>>()
    }

    const LIMITS: Limits = Limits {
        min_retention: Duration::from_secs(7 * 86_400),
        max_batch_bytes: 300_000,
    };

    /// What a healthy topic looks like to DescribeConfigs.
    fn healthy() -> Vec<(&'static str, &'static str)> {
        vec![
            ("min.insync.replicas", "2"),
            ("retention.ms", "604800000"),
            ("retention.bytes", "-1"),
            ("cleanup.policy", "delete"),
            ("compression.type", "gzip"),
            ("max.message.bytes", "1048588"),
        ]
    }

    #[test]
    fn replication_defaults_follow_the_cluster() {
        let c = cfg(&[]);
        assert_eq!(
            Replication::choose(&c, 1),
            Replication {
                factor: 1,
                min_insync: 1
            }
        );
        assert_eq!(
            Replication::choose(&c, 2),
            Replication {
                factor: 2,
                min_insync: 1
            }
        );
        assert_eq!(
            Replication::choose(&c, 5),
            Replication {
                factor: 3,
                min_insync: 2
            }
        );
        let c = cfg(&[
            ("KAFKA_REPLICATION_FACTOR", "5"),
            ("KAFKA_MIN_INSYNC_REPLICAS", "3"),
        ]);
        assert_eq!(
            Replication::choose(&c, 5),
            Replication {
                factor: 5,
                min_insync: 3
            }
        );
    }

    #[test]
    fn dead_letters_are_kept_long_and_nothing_is_compacted() {
        let c = cfg(&[]);
        let r = Replication {
            factor: 3,
            min_insync: 2,
        };
        let dlq = topic_configs(&c, Role::DeadLetter, r, Some(1_052_684));
        assert!(dlq.contains(&("retention.ms", (365 * 86_400_000i64).to_string())));
        assert!(dlq.contains(&("min.insync.replicas", "2".into())));
        assert!(dlq.contains(&("max.message.bytes", "1052684".into())));
        let src = topic_configs(&c, Role::Source, r, Some(1));
        assert!(!src.iter().any(|(k, _)| *k == "max.message.bytes"));
        assert!(src.contains(&("cleanup.policy", "delete".into())));
        assert!(!src.iter().any(|(k, _)| *k == "retention.ms"));
        let forever = topic_configs(
            &cfg(&[("KAFKA_DLQ_RETENTION", "forever")]),
            Role::DeadLetter,
            r,
            None,
        );
        assert!(forever.contains(&("retention.ms", "-1".into())));
    }

    #[test]
    fn a_dead_letter_topic_without_room_for_the_largest_record_is_warned_about() {
        assert_eq!(
            assess_dead_letter_room("q", Some(1_052_684), Some(1_048_588)),
            None
        );
        let f = assess_dead_letter_room("q", Some(1_048_588), Some(1_048_588));
        assert!(
            matches!(&f, Some(Finding::Warn(m)) if m.contains("prefix") && m.contains("1052684")),
            "{f:?}"
        );
        assert_eq!(assess_dead_letter_room("q", None, Some(1)), None);
    }

    #[test]
    fn a_healthy_topic_has_nothing_to_say() {
        let f = assess("t", Role::Source, Some(3), &configs(&healthy()), LIMITS);
        assert!(f.is_empty(), "{f:?}");
    }

    #[test]
    fn a_single_replica_topic_is_warned_about_twice() {
        let mut c = healthy();
        c[0] = ("min.insync.replicas", "1");
        let f = assess("t", Role::Source, Some(1), &configs(&c), LIMITS);
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(matches!(&f[0], Finding::Warn(m) if m.contains("replication factor 1")));
        assert!(matches!(&f[1], Finding::Warn(m) if m.contains("min.insync.replicas=1")));
    }

    #[test]
    fn short_retention_size_retention_and_compaction_warn_on_source_topics_only() {
        let mut c = healthy();
        c[1] = ("retention.ms", "3600000");
        c[2] = ("retention.bytes", "1000000");
        c[3] = ("cleanup.policy", "compact,delete");
        let f = assess("t", Role::Source, Some(3), &configs(&c), LIMITS);
        assert_eq!(f.len(), 3, "{f:?}");
        assert!(matches!(&f[0], Finding::Warn(m) if m.contains("after 1h")));
        assert!(matches!(&f[1], Finding::Warn(m) if m.contains("retention.bytes")));
        assert!(matches!(&f[2], Finding::Warn(m) if m.contains("compact")));
        assert!(assess("d", Role::DeadLetter, Some(3), &configs(&c), LIMITS).is_empty());
    }

    #[test]
    fn lz4_and_zstd_warn_and_producer_is_explained() {
        for codec in ["lz4", "zstd"] {
            let mut c = healthy();
            c[4] = ("compression.type", codec);
            let f = assess("t", Role::Source, Some(3), &configs(&c), LIMITS);
            assert!(
                matches!(&f[..], [Finding::Warn(m)] if m.contains(codec) && m.contains("cannot read")),
                "{f:?}"
            );
        }
        let mut c = healthy();
        c[4] = ("compression.type", "producer");
        let f = assess("t", Role::Source, Some(3), &configs(&c), LIMITS);
        assert!(
            matches!(&f[..], [Finding::Note(m)] if m.contains("as each producer")),
            "{f:?}"
        );
    }

    #[test]
    fn a_message_limit_below_the_largest_envelope_refuses() {
        let mut c = healthy();
        c[5] = ("max.message.bytes", "299999");
        let f = assess("t", Role::Source, Some(3), &configs(&c), LIMITS);
        assert!(
            matches!(&f[..], [Finding::Refuse(m)] if m.contains("300000") && m.contains("HTTP_MAX_BODY_BYTES")),
            "{f:?}"
        );
        c[5] = ("max.message.bytes", "300000");
        assert!(assess("t", Role::Source, Some(3), &configs(&c), LIMITS).is_empty());
    }
}
