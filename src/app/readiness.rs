//! The service's answer to `/readyz` and `/status`: the [`Readiness`] the
//! HTTP layer asks, implemented over the broker, the pool and the partition
//! consumers' health. It lives with the wiring because it owns handles to
//! all three; the HTTP layer only knows the trait.

use std::time::Duration;

use deadpool_postgres::Pool;
use futures::future::BoxFuture;
use serde_json::json;

use crate::{
    consume::health::{ConsumerHealth, PartitionReport},
    http::routes::Readiness,
    kafka::Kafka,
};

/// How long each readiness check may take.
const READY_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The real probe. Readiness asks only what taking webhooks needs: the
/// broker answers a metadata request within [`READY_CHECK_TIMEOUT`]. A
/// database outage does not make a replica unready (Kafka holds the
/// webhooks meanwhile); it shows in `/status`, with the partitions.
#[derive(Clone, Debug)]
pub struct ServiceProbe {
    pub kafka: Kafka,
    pub pool: Pool,
    /// This process in the consumer fleet.
    pub member: uuid::Uuid,
    /// A topic whose metadata is asked for.
    pub topic: String,
    /// What the partition consumers report.
    pub health: ConsumerHealth,
}

impl Readiness for ServiceProbe {
    fn down(&self) -> BoxFuture<'_, Vec<(&'static str, String)>> {
        Box::pin(async move {
            let kafka =
                tokio::time::timeout(READY_CHECK_TIMEOUT, self.kafka.partitions(&self.topic)).await;
            match kafka {
                Ok(Ok(_)) => Vec::new(),
                Ok(Err(e)) => vec![("kafka", e.to_string())],
                Err(_) => vec![("kafka", format!("no answer within {READY_CHECK_TIMEOUT:?}"))],
            }
        })
    }

    fn unhealthy_partitions(&self) -> Vec<PartitionReport> {
        self.health.unhealthy()
    }

    fn status(&self) -> BoxFuture<'_, serde_json::Value> {
        Box::pin(async move {
            let db = tokio::time::timeout(READY_CHECK_TIMEOUT, crate::db::ping(&self.pool)).await;
            let database = match db {
                Ok(Ok(())) => "ok".to_owned(),
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {READY_CHECK_TIMEOUT:?}"),
            };
            let partitions = self.health.report();
            let count =
                |f: fn(&PartitionReport) -> bool| partitions.iter().filter(|p| f(p)).count();
            json!({
                "member_id": self.member,
                "database": database,
                "owned": partitions.len(),
                "stalled": count(|p| p.stalled),
                "stopped": count(|p| p.stopped.is_some()),
                "partitions": partitions,
            })
        })
    }
}
