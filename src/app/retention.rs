//! The payload retention job: every `PAYLOAD_RETENTION_INTERVAL`, clear the
//! stored provider payloads older than `PAYLOAD_RETENTION`
//! ([`crate::db::retention`] says what is cleared and what is kept). It runs
//! in every process that runs consumers; several at once share the rows.

use std::time::Duration;

use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{db, metrics::Metrics};

/// The job, as `serve` runs it.
#[derive(Clone, Debug)]
pub struct PayloadRetention {
    pub pool: Pool,
    /// `PAYLOAD_RETENTION`.
    pub older_than: Duration,
    /// `PAYLOAD_RETENTION_INTERVAL`.
    pub interval: Duration,
    /// Bound on each database step.
    pub db_deadline: Duration,
    pub metrics: Metrics,
}

impl PayloadRetention {
    /// Clears old payloads now and every `interval` until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while tokio::select! { _ = shutdown.cancelled() => false, _ = tick.tick() => true } {
            let counter = &self.metrics.payloads_cleared;
            match db::retention::clear_payloads(
                &self.pool,
                self.older_than,
                self.db_deadline,
                |n| {
                    counter.inc_by(n);
                },
            )
            .await
            {
                Ok(0) => {}
                Ok(n) => info!(
                    cleared = n,
                    retention = %humantime::format_duration(self.older_than),
                    "stored provider payloads older than PAYLOAD_RETENTION cleared"
                ),
                Err(e) => warn!(error = %e, "clearing old stored payloads failed; will retry"),
            }
        }
    }
}
