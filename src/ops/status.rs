//! `payhook status`: the consumer fleet as Postgres knows it (members, their
//! heartbeats, who owns which partition at which epoch, each partition's
//! stored offset) with each partition's log end from the broker.

use rskafka::client::partition::OffsetAt;

use super::OpsError;
use crate::{
    config::Config,
    db::{self, DbError},
    kafka::{Kafka, bounded},
};

/// What `payhook status` prints: the fleet as Postgres knows it, with each
/// partition's log end from the broker.
#[derive(Debug)]
pub struct FleetStatus {
    pub members: Vec<db::leases::MemberRow>,
    /// Each partition with its log end (`None` if the broker did not say).
    pub partitions: Vec<(db::leases::PartitionRow, Option<i64>)>,
}

/// `payhook status`.
pub async fn fleet(cfg: &Config) -> Result<FleetStatus, OpsError> {
    let pool = db::pool_from_config(&cfg.database, 1)?;
    let conn = pool.get().await.map_err(DbError::from)?;
    let (members, rows) = db::leases::fleet(&**conn).await?;
    let kafka = Kafka::from_config(&cfg.kafka).await;
    let mut partitions = Vec::with_capacity(rows.len());
    for row in rows {
        let end = match &kafka {
            Ok(k) => match k.partition_client(&row.topic, row.partition).await {
                Ok(c) => bounded(
                    "reading the latest offset",
                    k.request_timeout(),
                    c.get_offset(OffsetAt::Latest),
                )
                .await
                .ok(),
                Err(_) => None,
            },
            Err(_) => None,
        };
        partitions.push((row, end));
    }
    Ok(FleetStatus {
        members,
        partitions,
    })
}

/// The members, then every partition with its owner, stored offset, log
/// end and lag.
pub fn print(s: &FleetStatus) {
    let short = |id: &uuid::Uuid| id.simple().to_string()[..8].to_owned();
    println!("members");
    println!(
        "  {:<10} {:<28} {:<7} {:<22} {:>8}",
        "member", "name", "state", "last heartbeat", "owns"
    );
    for m in &s.members {
        let owns = s
            .partitions
            .iter()
            .filter(|(p, _)| p.lease_valid && p.owner == Some(m.member_id))
            .count();
        println!(
            "  {:<10} {:<28} {:<7} {:<22} {:>8}",
            short(&m.member_id),
            m.name,
            if m.alive { "alive" } else { "expired" },
            m.heartbeat_at.format("%Y-%m-%d %H:%M:%S%.3f"),
            owns
        );
    }
    println!("partitions");
    println!(
        "  {:<20} {:<28} {:>4} {:<10} {:>6} {:>12} {:>12} {:>10}",
        "group", "topic", "part", "owner", "epoch", "stored", "log end", "lag"
    );
    for (p, end) in &s.partitions {
        let owner = match p.owner {
            Some(o) if p.lease_valid => short(&o),
            Some(o) => format!("{}(exp)", &short(&o)[..4]),
            None => "-".into(),
        };
        let opt = |v: Option<i64>| v.map_or("-".into(), |v| v.to_string());
        let lag = end.map(|e| e - p.stored_offset.unwrap_or(0));
        println!(
            "  {:<20} {:<28} {:>4} {:<10} {:>6} {:>12} {:>12} {:>10}",
            p.group,
            p.topic,
            p.partition,
            owner,
            p.epoch,
            opt(p.stored_offset),
            opt(*end),
            opt(lag)
        );
    }
}
